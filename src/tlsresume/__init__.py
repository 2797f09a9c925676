"""tlsresume: fast, safe client-side TLS session resumption on libssl.

``ffi`` and ``lib`` are the raw binding, with OpenSSL's own names.
:class:`ClientContext` and :class:`Session` are the safe layer above it.
"""

from ._binding import ffi, lib, openssl_version
from ._version import __version__
from .cache import SessionCache
from .client import ClientContext, Connection
from .errors import (
    CertificateVerifyError,
    ConfigurationError,
    ConnectError,
    OpenSSLError,
    ProtocolError,
    SessionError,
    SyscallError,
    TLSError,
    TLSTimeoutError,
    UnexpectedEOFError,
    WantReadError,
    WantWriteError,
    ZeroReturnError,
)
from .peerkey import PeerKey
from .server import Server
from .session import Session, live_sessions

__all__ = [
    "CertificateVerifyError",
    "ClientContext",
    "ConfigurationError",
    "ConnectError",
    "Connection",
    "OpenSSLError",
    "PeerKey",
    "ProtocolError",
    "Server",
    "Session",
    "SessionCache",
    "SessionError",
    "SyscallError",
    "TLSError",
    "TLSTimeoutError",
    "UnexpectedEOFError",
    "WantReadError",
    "WantWriteError",
    "ZeroReturnError",
    "__version__",
    "ffi",
    "lib",
    "live_sessions",
    "openssl_version",
]
