"""``python -m tlsresume.debug``: versions and paths for bug reports."""

import platform
import sys

from . import __version__
from ._binding import ffi, lib
from ._openssl import __file__ as _module_file


def report():
    """Return the report as a list of 'name: value' lines."""
    def text(ptr):
        return ffi.string(ptr).decode("utf-8", "replace")

    return [
        f"tlsresume: {__version__}",
        f"compiled module: {_module_file}",
        "OpenSSL at run time: "
        + text(lib.OpenSSL_version(lib.OPENSSL_VERSION)),
        f"OpenSSL headers at build: 0x{lib.OPENSSL_VERSION_NUMBER:08x}",
        f"OpenSSL directory: {text(lib.OpenSSL_version(lib.OPENSSL_DIR))}",
        f"default CA file: {text(lib.X509_get_default_cert_file())} "
        f"(${text(lib.X509_get_default_cert_file_env())})",
        f"default CA directory: {text(lib.X509_get_default_cert_dir())} "
        f"(${text(lib.X509_get_default_cert_dir_env())})",
        f"Python: {sys.version.split()[0]} "
        f"({platform.python_implementation()})",
        f"platform: {platform.platform()}",
    ]


if __name__ == "__main__":
    print("\n".join(report()))
