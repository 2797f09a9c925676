"""Exceptions raised by tlsresume.

Every OpenSSL failure becomes a :class:`TLSError` (an :class:`OSError`)
whose message carries OpenSSL's error queue; the queue is always left
empty.  Results of ``SSL_get_error`` map to the subclasses below.
"""

from ._binding import ffi, lib


class TLSError(OSError):
    """Base class of every tlsresume error.

    ``errors`` holds the OpenSSL error queue entries as tuples
    ``(code, library, reason, text)``; it may be empty.
    """

    def __init__(self, message, errors=()):
        super().__init__(message)
        self.errors = list(errors)

    def __str__(self):
        return self.args[0] if self.args else ""


class OpenSSLError(TLSError):
    """An OpenSSL call failed outside of reading or writing a connection."""


class ConfigurationError(OpenSSLError, ValueError):
    """OpenSSL refused a setting or file (a CA, certificate or key)."""


class WantReadError(TLSError):
    """The operation needs more data from the peer (SSL_ERROR_WANT_READ)."""


class WantWriteError(TLSError):
    """The operation needs to write (SSL_ERROR_WANT_WRITE)."""


class ZeroReturnError(TLSError):
    """The peer closed the TLS connection with close_notify."""


class SyscallError(TLSError):
    """A system call failed under TLS (SSL_ERROR_SYSCALL with errno)."""


class UnexpectedEOFError(SyscallError):
    """The peer closed the TCP connection without close_notify."""


class ProtocolError(TLSError):
    """A TLS protocol failure (SSL_ERROR_SSL): alert, bad record, ..."""


class CertificateVerifyError(ProtocolError):
    """The peer's certificate did not verify.

    ``verify_code`` is OpenSSL's X509_V_ERR_* number and
    ``verify_message`` its text.
    """

    def __init__(self, message, errors=(), verify_code=0, verify_message=""):
        super().__init__(message, errors)
        self.verify_code = verify_code
        self.verify_message = verify_message


class TLSTimeoutError(TLSError, TimeoutError):
    """The peer did not answer within the connection's timeout."""


class ConnectError(TLSError):
    """The TCP connection could not be made (refused, unreachable, ...)."""


class SessionError(TLSError, ValueError):
    """A session handle was misused: closed, or offered to another
    configuration or peer."""


def drain_errors():
    """Empty OpenSSL's error queue and return its entries, oldest first."""
    entries = []
    buf = ffi.new("char[256]")
    while True:
        code = lib.ERR_get_error()
        if code == 0:
            return entries
        lib.ERR_error_string_n(code, buf, len(buf))
        entries.append((
            code,
            _text(lib.ERR_lib_error_string(code)),
            _text(lib.ERR_reason_error_string(code)),
            ffi.string(buf).decode("ascii", "replace"),
        ))


def _text(ptr):
    if ptr == ffi.NULL:
        return ""
    return ffi.string(ptr).decode("ascii", "replace")


def describe(entries):
    """Format drained queue entries as 'library: reason; ...'."""
    parts = []
    for code, library, reason, text in entries:
        if library or reason:
            reason = reason or f"reason {lib.ERR_GET_REASON(code)}"
            parts.append(f"{library or 'unknown library'}: {reason}")
        else:
            parts.append(text)
    return "; ".join(parts)


def raise_openssl(what, cls=OpenSSLError):
    """Drain the error queue and raise ``cls`` naming ``what`` failed.

    ``cls=ValueError`` (bad settings or files) raises
    :class:`ConfigurationError`, which is both a ValueError and a
    :class:`TLSError` carrying the queue.
    """
    if cls is ValueError:
        cls = ConfigurationError
    entries = drain_errors()
    detail = describe(entries)
    message = f"{what} failed" + (f": {detail}" if detail else "")
    raise cls(message, entries)


def check(result, what, cls=OpenSSLError):
    """Raise unless an OpenSSL call returned a true value (1, non-NULL)."""
    if not result:
        raise_openssl(what, cls)
    return result
