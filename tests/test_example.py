"""The port of the classic C example, against both servers."""

import gc
import subprocess
import sys
import time

import pytest

from tlsresume import example, live_sessions
from tlsresume.errors import ConnectError
from tlsresume.testing import local_server

FIXED = ["NEW SESSION"] + ["REUSED SESSION"] * 4
NEVER = ["NEW SESSION"] * 5


def lines_of(host, port, **options):
    lines = []
    example.run(host, port, emit=lines.append, **options)
    return lines


@pytest.mark.parametrize("tls", ["1.2", "1.3"])
@pytest.mark.parametrize("tickets", [True, False])
def test_resumes_against_own_server(tls, tickets):
    gc.collect()  # handles dropped by earlier tests must not count
    before = live_sessions()
    with local_server(tickets=tickets) as srv:
        assert lines_of("localhost", srv.port, tls=tls,
                        cafile=srv.cafile) == FIXED
    gc.collect()
    assert live_sessions() == before


@pytest.mark.parametrize("tls,no_ticket", [
    ("1.3", False), ("1.2", False), ("1.2", True)])
@pytest.mark.parametrize("www", [True, False])
def test_resumes_against_s_server(s_server, tls, no_ticket, www):
    peer = s_server(tls=tls, www=www, no_ticket=no_ticket)
    start = time.monotonic()
    assert lines_of("localhost", peer.port, tls=tls,
                    cafile=peer.cafile) == FIXED
    # The closing read must not stall on s_server.
    assert time.monotonic() - start < 3


def test_no_resumption_when_server_keeps_nothing(s_server):
    peer = s_server(tls="1.2", no_ticket=True, no_cache=True)
    assert lines_of("localhost", peer.port, tls="1.2",
                    cafile=peer.cafile) == NEVER


def test_as_written_never_resumes_tls13(s_server):
    peer = s_server(tls="1.3")
    assert lines_of("localhost", peer.port, tls="1.3", cafile=peer.cafile,
                    as_written=True) == NEVER


def test_as_written_resumes_tls12(s_server):
    peer = s_server(tls="1.2")
    assert lines_of("localhost", peer.port, tls="1.2", cafile=peer.cafile,
                    as_written=True) == FIXED


def test_nothing_listening_is_a_clear_error(unused_port):
    with pytest.raises(ConnectError, match="could not connect"):
        lines_of("127.0.0.1", unused_port, verify=False)


def test_module_prints_exactly_the_lines(s_server):
    peer = s_server(tls="1.3")
    out = subprocess.run(
        [sys.executable, "-m", "tlsresume.example", "localhost",
         str(peer.port), "--cafile", peer.cafile],
        capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == FIXED


def test_module_as_written_tls13(s_server):
    peer = s_server(tls="1.3")
    out = subprocess.run(
        [sys.executable, "-m", "tlsresume.example", "localhost",
         str(peer.port), "--cafile", peer.cafile, "--as-written"],
        capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == NEVER


def test_module_reports_failure(s_server, other_certs):
    peer = s_server(tls="1.3")
    out = subprocess.run(
        [sys.executable, "-m", "tlsresume.example", "localhost",
         str(peer.port), "--cafile", other_certs.cafile],
        capture_output=True, text=True, timeout=30)
    assert out.returncode == 1
    assert out.stdout == ""
    assert "certificate verification failed" in out.stderr


@pytest.mark.parametrize("argv,reason", [
    (["127.0.0.1", "70000"], "invalid port"),
    (["localhost", "70000"], "invalid port"),
    (["localhost", "-1"], "invalid port"),
    (["localhost", "0"], "invalid port"),
    (["localhost", "4433", "-n", "0"], "invalid count"),
    (["localhost", "4433", "-n", "-3"], "invalid count"),
])
def test_module_refuses_bad_arguments(argv, reason):
    # Port 70000 was an OverflowError traceback for an address, and for a
    # name a connection to port 4464 (getaddrinfo takes it modulo 65536);
    # a count below 1 printed nothing and exited 0.
    out = subprocess.run(
        [sys.executable, "-m", "tlsresume.example", *argv, "--insecure"],
        capture_output=True, text=True, timeout=30)
    assert out.returncode == 1, out
    assert out.stdout == ""
    assert out.stderr.count("\n") == 1 and reason in out.stderr, out.stderr
