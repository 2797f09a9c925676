"""Turning SSL_get_error results into exceptions; socket helpers."""

import errno as errno_mod
import os
import socket
import sys

from ._binding import ffi, lib
from .errors import (
    CertificateVerifyError,
    ConnectError,
    ProtocolError,
    SyscallError,
    TLSTimeoutError,
    UnexpectedEOFError,
    WantReadError,
    WantWriteError,
    ZeroReturnError,
    describe,
    drain_errors,
)

_UNEXPECTED_EOF = lib.SSL_R_UNEXPECTED_EOF_WHILE_READING
_VERIFY_FAILED = lib.SSL_R_CERTIFICATE_VERIFY_FAILED
_TIMEOUT_ERRNOS = (errno_mod.EAGAIN, errno_mod.EWOULDBLOCK,
                   errno_mod.ETIMEDOUT)


def io_error(ssl, ret, what, timeout=None):
    """Build the exception for a failed SSL_connect/accept/read/write.

    Call it right after the failing call: it reads ``ffi.errno`` and
    drains OpenSSL's error queue.  ``ssl`` sockets are blocking with
    kernel timeouts (:func:`open_socket`), so "want read/write" means the
    timeout ran out.
    """
    saved_errno = ffi.errno
    code = lib.SSL_get_error(ssl, ret)
    entries = drain_errors()
    detail = describe(entries)
    reasons = {lib.ERR_GET_REASON(e[0]) for e in entries}

    if code in (lib.SSL_ERROR_WANT_READ, lib.SSL_ERROR_WANT_WRITE):
        if saved_errno in _TIMEOUT_ERRNOS or timeout:
            return TLSTimeoutError(
                f"{what}: no answer within {timeout:g} s" if timeout
                else f"{what}: timed out", entries)
        cls = (WantReadError if code == lib.SSL_ERROR_WANT_READ
               else WantWriteError)
        return cls(f"{what}: operation would block", entries)
    if code == lib.SSL_ERROR_ZERO_RETURN:
        return ZeroReturnError(f"{what}: the peer closed the TLS "
                               "connection (close_notify)", entries)
    if code == lib.SSL_ERROR_SYSCALL:
        if saved_errno in _TIMEOUT_ERRNOS and saved_errno != 0:
            return TLSTimeoutError(
                f"{what}: no answer within {timeout:g} s"
                if timeout else f"{what}: timed out", entries)
        if saved_errno == 0:
            return UnexpectedEOFError(
                f"{what}: the peer closed the connection without "
                "close_notify", entries)
        return SyscallError(
            f"{what}: {os.strerror(saved_errno)}"
            + (f" ({detail})" if detail else ""), entries)
    if code == lib.SSL_ERROR_SSL:
        if _UNEXPECTED_EOF in reasons:
            return UnexpectedEOFError(
                f"{what}: the peer closed the connection without "
                "close_notify", entries)
        verify = lib.SSL_get_verify_result(ssl)
        if _VERIFY_FAILED in reasons and verify != lib.X509_V_OK:
            text = ffi.string(
                lib.X509_verify_cert_error_string(verify)).decode()
            return CertificateVerifyError(
                f"{what}: certificate verification failed: {text}",
                entries, verify_code=verify, verify_message=text)
        return ProtocolError(
            f"{what}: TLS protocol error: {detail or 'no detail'}", entries)
    return ProtocolError(f"{what}: SSL_get_error returned {code}"
                         + (f" ({detail})" if detail else ""), entries)


def open_socket(host, port, timeout):
    """Connect a TCP socket, blocking, with kernel send/receive timeouts.

    Blocking sockets let each SSL_connect, SSL_read and SSL_write run as
    one C call with the GIL released; SO_RCVTIMEO/SO_SNDTIMEO bound each
    wait to ``timeout`` seconds.  See :func:`open_fd`.
    """
    sock, fd = open_fd(host, port, timeout)
    if sock is None:
        try:
            sock = socket.socket(fileno=fd)
        except BaseException:
            os.close(fd)
            raise
    return sock


_LINUX = sys.platform.startswith("linux")
# What a blocking connect() fails with when SO_SNDTIMEO runs out.
_CONNECT_TIMEOUT_ERRNOS = (errno_mod.EINPROGRESS, errno_mod.EAGAIN,
                           errno_mod.EWOULDBLOCK)
# host -> AF_INET or AF_INET6 for a numeric address, None for a name.
_FAMILIES = {}
_FAMILIES_KEPT = 1024


def _numeric_family(host):
    try:
        return _FAMILIES[host]
    except KeyError:
        pass
    except TypeError:
        return None
    family = None
    if isinstance(host, str):
        for candidate in (socket.AF_INET, socket.AF_INET6):
            try:
                socket.inet_pton(candidate, host)
            except OSError:
                continue
            family = candidate
            break
    if len(_FAMILIES) >= _FAMILIES_KEPT:
        _FAMILIES.clear()
    _FAMILIES[host] = family
    return family


def numeric_family(host):
    """AF_INET or AF_INET6 if ``host`` is a numeric address that the
    C connect path takes (on Linux), else None."""
    return _numeric_family(host) if _LINUX else None


def open_fd(host, port, timeout):
    """Connect like :func:`open_socket`; return ``(socket, descriptor)``.

    For a numeric address on Linux the connection is made in one C call
    and there is no socket object: ``(None, fd)``, and the caller owns
    (closes) the descriptor.  Otherwise ``(sock, sock.fileno())``.
    """
    family = numeric_family(host)
    if family is None:
        sock = open_by_name(host, port, timeout)
        return sock, sock.fileno()
    fd = lib.tlsresume_tcp_connect(family, host.encode("ascii"), port,
                                   timeout or 0.0)
    if fd < 0:
        raise tcp_error(host, port, ffi.errno, timeout)
    return None, fd


def tcp_error(host, port, err, timeout):
    """The exception for a C connect to ``host`` that failed with errno
    ``err``; a ConnectError has an OSError for ``err`` as its cause."""
    if err in _CONNECT_TIMEOUT_ERRNOS:
        return TLSTimeoutError(f"connecting to {host}:{port}: no answer "
                               f"within {timeout:g} s")
    cause = OSError(err, os.strerror(err))
    error = _connect_error(host, port, cause)
    error.__cause__ = cause
    return error


def _connect_error(host, port, exc):
    reason = exc.strerror or str(exc)
    return ConnectError(f"could not connect to {host}:{port}: {reason}")


def open_by_name(host, port, timeout):
    """A socket connected by name (or address), as :func:`open_socket`."""
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except socket.timeout:
        raise TLSTimeoutError(
            f"connecting to {host}:{port}: no answer within "
            f"{timeout:g} s") from None
    except OSError as exc:
        raise _connect_error(host, port, exc) from exc
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(True)
        set_timeouts(sock, timeout)
    except BaseException:
        sock.close()
        raise
    return sock


def set_timeouts(sock, timeout):
    """Set kernel send and receive timeouts on a blocking socket."""
    if lib.tlsresume_set_timeouts(sock.fileno(), timeout or 0.0) != 0:
        raise OSError(ffi.errno, os.strerror(ffi.errno))
