"""Loads the compiled module and checks it matches this source tree."""

from ._version import __version__

try:
    from ._openssl import ffi, lib
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError(
        "tlsresume's compiled module tlsresume._openssl is missing or "
        "broken; reinstall with 'pip install .' (it needs OpenSSL headers: "
        "Debian libssl-dev, Fedora openssl-devel, Homebrew openssl@3)"
    ) from exc

_built = ffi.string(lib.TLSRESUME_BUILD_VERSION).decode("ascii")
if _built != __version__:  # pragma: no cover - stale in-place build
    raise ImportError(
        f"tlsresume._openssl was built for tlsresume {_built} but the "
        f"Python code is {__version__}; rebuild with 'pip install .'"
    )

if lib.OpenSSL_version_num() < 0x10101000:  # pragma: no cover
    raise ImportError(
        "tlsresume needs OpenSSL 1.1.1 or newer at run time, found "
        + ffi.string(lib.OpenSSL_version(lib.OPENSSL_VERSION)).decode()
    )


def openssl_version():
    """Return the version text of the libssl tlsresume runs on."""
    return ffi.string(lib.OpenSSL_version(lib.OPENSSL_VERSION)).decode()


# One ex_data slot on every SSL that tlsresume creates, holding a cffi
# handle back to the Python Connection, so C callbacks find their owner.
SSL_EX_INDEX = lib.SSL_get_ex_new_index(
    0, ffi.NULL, ffi.NULL, ffi.NULL, ffi.NULL
)
if SSL_EX_INDEX < 0:  # pragma: no cover - only on allocation failure
    raise ImportError("OpenSSL could not allocate an SSL ex_data index")
