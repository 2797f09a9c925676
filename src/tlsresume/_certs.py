"""Throwaway certificates from trustme, written to files for OpenSSL."""

import os
from dataclasses import dataclass

DEFAULT_NAMES = ("localhost", "127.0.0.1")


@dataclass
class Certificates:
    """Paths of a CA certificate, a certificate chain and its key."""

    cafile: str
    certfile: str
    keyfile: str
    ca: object = None  # the trustme.CA that issued the certificate


def make_certificates(directory, *names, key_type="rsa"):
    """Write a new trustme CA and a certificate it issued for ``names``.

    ``names`` default to localhost and 127.0.0.1; ``key_type`` is 'rsa'
    (RSA-2048) or 'ecdsa'.  Files in ``directory``: ca.pem, cert.pem
    (the chain) and key.pem (created 0600).  Returns the paths as
    :class:`Certificates`.
    """
    import trustme

    kinds = {"rsa": trustme.KeyType.RSA, "ecdsa": trustme.KeyType.ECDSA}
    if key_type not in kinds:
        raise ValueError(f"key_type must be 'rsa' or 'ecdsa', not "
                         f"{key_type!r}")
    ca = trustme.CA(key_type=kinds[key_type])
    cert = ca.issue_cert(*(names or DEFAULT_NAMES),
                         key_type=kinds[key_type])
    files = Certificates(os.path.join(directory, "ca.pem"),
                         os.path.join(directory, "cert.pem"),
                         os.path.join(directory, "key.pem"), ca)
    ca.cert_pem.write_to_path(files.cafile)
    with open(files.certfile, "wb") as f:
        f.writelines(pem.bytes() for pem in cert.cert_chain_pems)
    fd = os.open(files.keyfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
                 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(cert.private_key_pem.bytes())
    return files
