"""Build script for the tlsresume._openssl cffi module (API mode).

setuptools runs it through ``cffi_modules`` in setup.py.  It reads the
declarations and the C glue from this folder, finds OpenSSL's headers and
libraries, and stops with one clear message when they are missing or too
old.

Choosing another OpenSSL at build time:

``TLSRESUME_OPENSSL_DIR``
    an installation prefix holding ``include/openssl/ssl.h`` and
    ``lib/`` (or ``lib64/``) with libssl and libcrypto; the library
    directory is also recorded as the run-time search path.
``TLSRESUME_OPENSSL_INCLUDE`` / ``TLSRESUME_OPENSSL_LIB``
    the two directories separately, when they do not share a prefix.
"""

import os
import re
import sys

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
MINIMUM = (0x10101000, "1.1.1")
INSTALL_HINT = (
    "tlsresume needs OpenSSL (1.1.1 or newer) with its development "
    "headers to build.\n"
    "  Debian/Ubuntu: apt-get install libssl-dev\n"
    "  Fedora/RHEL:   dnf install openssl-devel\n"
    "  macOS:         brew install openssl@3\n"
    "or point TLSRESUME_OPENSSL_DIR at an OpenSSL installation prefix "
    "(see csrc/build.py)."
)


def _read(name):
    with open(os.path.join(HERE, name), encoding="utf-8") as f:
        return f.read()


def _version_string():
    text = _read(os.path.join("..", "src", "tlsresume", "_version.py"))
    return re.search(r'__version__\s*=\s*"([^"]+)"', text).group(1)


def _candidate_prefixes():
    prefixes = []
    if sys.platform == "darwin":
        prefixes += ["/opt/homebrew/opt/openssl@3", "/usr/local/opt/openssl@3",
                     "/opt/homebrew/opt/openssl", "/usr/local/opt/openssl"]
    prefixes += ["/usr/local", "/usr"]
    return prefixes


def _locate():
    """Return (include_dirs, library_dirs, runtime_dirs) for OpenSSL."""
    include = os.environ.get("TLSRESUME_OPENSSL_INCLUDE")
    lib = os.environ.get("TLSRESUME_OPENSSL_LIB")
    prefix = os.environ.get("TLSRESUME_OPENSSL_DIR")
    if prefix:
        include = include or os.path.join(prefix, "include")
        if not lib:
            lib = os.path.join(prefix, "lib")
            if not os.path.isdir(lib):
                lib = os.path.join(prefix, "lib64")
    chosen = bool(include or lib)

    if include is None:
        for candidate in _candidate_prefixes():
            path = os.path.join(candidate, "include")
            if os.path.exists(os.path.join(path, "openssl", "ssl.h")):
                include = path
                if candidate not in ("/usr", "/usr/local"):
                    lib = lib or os.path.join(candidate, "lib")
                break

    if include is None or not os.path.exists(
        os.path.join(include, "openssl", "ssl.h")
    ):
        where = f" (looked in {include})" if include else ""
        raise SystemExit(f"OpenSSL headers not found{where}.\n{INSTALL_HINT}")

    _check_version(include)
    include_dirs = [include]
    library_dirs = [lib] if lib else []
    runtime_dirs = [lib] if (lib and chosen) else []
    return include_dirs, library_dirs, runtime_dirs


def _check_version(include):
    path = os.path.join(include, "openssl", "opensslv.h")
    text = ""
    if os.path.exists(path):
        with open(path, encoding="latin-1") as f:
            text = f.read()
    number = None
    major = re.search(r"#\s*define\s+OPENSSL_VERSION_MAJOR\s+(\d+)", text)
    if major:
        number = int(major.group(1)) << 28
    else:
        legacy = re.search(
            r"#\s*define\s+OPENSSL_VERSION_NUMBER\s+0x([0-9a-fA-F]+)", text
        )
        if legacy:
            number = int(legacy.group(1), 16)
    if "LIBRESSL_VERSION_NUMBER" in text:
        raise SystemExit(
            "tlsresume needs OpenSSL; LibreSSL headers were found in "
            f"{include}.\n{INSTALL_HINT}"
        )
    if number is not None and number < MINIMUM[0]:
        raise SystemExit(
            f"tlsresume needs OpenSSL {MINIMUM[1]} or newer; the headers "
            f"in {include} are older (0x{number:08x}).\n{INSTALL_HINT}"
        )


include_dirs, library_dirs, runtime_dirs = _locate()

ffibuilder = FFI()
ffibuilder.cdef(_read("openssl.cdef.h") + _read("client.cdef.h"))
ffibuilder.set_source(
    "tlsresume._openssl",
    _read("openssl.glue.c") + _read("client.glue.c"),
    libraries=["ssl", "crypto"],
    include_dirs=include_dirs,
    library_dirs=library_dirs,
    runtime_library_dirs=runtime_dirs,
    define_macros=[
        ("TLSRESUME_VERSION_STRING", f'"{_version_string()}"'),
    ],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
