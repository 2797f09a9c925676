"""Shared fixtures: certificates from trustme and `openssl s_server` peers."""

import socket
import subprocess
from dataclasses import dataclass

import pytest

import tlsresume
from tlsresume import testing


def pytest_report_header(config):
    return (f"tlsresume {tlsresume.__version__} on "
            f"{tlsresume.openssl_version()}")


@pytest.fixture(scope="session")
def certs(tmp_path_factory):
    """A CA and an RSA-2048 certificate for localhost and 127.0.0.1."""
    return testing.make_certificates(str(tmp_path_factory.mktemp("certs")),
                                   "localhost", "127.0.0.1", "::1")


@pytest.fixture(scope="session")
def other_certs(tmp_path_factory):
    """Another CA and a certificate for a name that is not localhost."""
    return testing.make_certificates(
        str(tmp_path_factory.mktemp("other-certs")), "not-localhost.example")


@dataclass
class SServer:
    host: str
    port: int
    cafile: str
    process: subprocess.Popen


@pytest.fixture
def s_server(certs, tmp_path):
    """Factory: start `openssl s_server` on a free loopback port.

    ``s_server(tls="1.3", www=True, no_ticket=False, no_cache=False,
    extra=())`` returns an SServer; every one started is stopped after
    the test.
    """
    started = []

    def start(tls="1.3", www=True, no_ticket=False, no_cache=False,
              extra=(), cert=None):
        cert = cert or certs
        options = ["-cert", cert.certfile, "-key", cert.keyfile,
                   "-tls1_3" if tls == "1.3" else "-tls1_2"]
        if www:
            options.append("-www")
        if no_ticket:
            options.append("-no_ticket")
        if no_cache:
            options.append("-no_cache")
        options += list(extra)
        log = tmp_path / f"s_server-{len(started)}.log"
        try:
            proc, port = testing.start_s_server(options, str(log))
        except testing.ToolError as exc:
            pytest.fail(str(exc))
        started.append(proc)
        return SServer("127.0.0.1", port, cert.cafile, proc)

    yield start
    for proc in started:
        testing.stop_s_server(proc)


@pytest.fixture
def unused_port():
    """A loopback port with nothing listening on it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
