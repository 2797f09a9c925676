"""PeerKey: which peer and configuration a session belongs to."""

import hashlib


class PeerKey:
    """``host:port`` plus a digest of everything that decides whether a
    session may be offered: the server name sent and verified, whether
    the certificate is verified, the trust anchors, the client
    certificate, the TLS version bounds and the ALPN list.

    Equal keys may share sessions; any difference keeps them apart.  The
    key holds only the host, the port and a digest, never secrets.
    """

    __slots__ = ("host", "port", "digest", "_hash", "_slot")

    def __init__(self, host, port, digest):
        object.__setattr__(self, "host", str(host))
        object.__setattr__(self, "port", int(port))
        object.__setattr__(self, "digest", str(digest))
        # What SessionCache files the key under: a tuple hashes and
        # compares in C, and the class in it keeps other keys apart.
        slot = (PeerKey, self.host, self.port, self.digest)
        object.__setattr__(self, "_slot", slot)
        object.__setattr__(self, "_hash", hash(slot))

    @classmethod
    def build(cls, host, port, config):
        """Make a key from a peer and a tuple of configuration facts.

        ``config`` may hold strings, numbers, booleans, None and bytes;
        only its digest is kept.
        """
        h = hashlib.blake2b(digest_size=8)
        h.update(repr(config).encode("utf-8", "surrogateescape"))
        return cls(host, port, h.hexdigest())

    def __setattr__(self, name, value):
        raise AttributeError("PeerKey is immutable")

    def __eq__(self, other):
        if not isinstance(other, PeerKey):
            return NotImplemented
        return (self.port == other.port and self.host == other.host
                and self.digest == other.digest)

    def __hash__(self):
        return self._hash

    def __str__(self):
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}#{self.digest[:8]}"

    def __repr__(self):
        return f"<PeerKey {self}>"

    def __reduce__(self):
        return (PeerKey, (self.host, self.port, self.digest))
