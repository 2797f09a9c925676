"""The tlsresume command: --version, demo, connect, serve."""

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

import tlsresume
from tlsresume.cli import main, parse_hostport, summarise
from tlsresume.testing import local_server

from rawtls import FakeServer, speak_http

TLSRESUME = [sys.executable, "-m", "tlsresume"]


def words(output):
    """The NEW/REUSED word of each connection line."""
    found = []
    for line in output.splitlines():
        for word in ("REUSED SESSION", "NEW SESSION"):
            if line.startswith(word):
                found.append(word)
    return found


FIXED = ["NEW SESSION"] + ["REUSED SESSION"] * 4


def test_version_names_tlsresume_and_openssl():
    out = subprocess.run(TLSRESUME + ["--version"], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0
    assert tlsresume.__version__ in out.stdout
    assert tlsresume.openssl_version() in out.stdout


def test_demo_resumes_on_both_versions():
    out = subprocess.run(TLSRESUME + ["demo"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    per_connection = [line for line in lines
                      if line in ("NEW SESSION", "REUSED SESSION")]
    assert per_connection == FIXED + FIXED
    summaries = [line for line in lines if "resumed," in line]
    assert [s.split(":")[0] for s in summaries] == ["TLS 1.3", "TLS 1.2"]
    for line in summaries:
        assert "4 of 5 resumed" in line
        assert "NEW SESSION" not in line and "REUSED SESSION" not in line


@pytest.mark.parametrize("tls", ["1.2", "1.3"])
def test_connect_against_own_server(capsys, tls):
    with local_server() as srv:
        code = main(["connect", f"127.0.0.1:{srv.port}", "--tls", tls,
                     "--cafile", srv.cafile])
    out = capsys.readouterr().out
    assert code == 0
    assert words(out) == FIXED
    assert f"TLSv{tls}" in out


@pytest.mark.parametrize("tls,no_ticket", [
    ("1.3", False), ("1.2", False), ("1.2", True)])
def test_connect_against_s_server(capsys, s_server, tls, no_ticket):
    peer = s_server(tls=tls, no_ticket=no_ticket)
    code = main(["connect", f"localhost:{peer.port}", "--cafile",
                 peer.cafile, "-n", "5"])
    assert code == 0
    assert words(capsys.readouterr().out) == FIXED


def test_connect_without_server_resumption(capsys, s_server):
    peer = s_server(tls="1.2", no_ticket=True, no_cache=True)
    code = main(["connect", f"localhost:{peer.port}", "--cafile",
                 peer.cafile])
    assert code == 0
    assert words(capsys.readouterr().out) == ["NEW SESSION"] * 5


def test_connect_servername_and_insecure(capsys, s_server):
    peer = s_server(tls="1.3")
    assert main(["connect", f"127.0.0.1:{peer.port}", "--servername",
                 "localhost", "--cafile", peer.cafile, "-n", "2"]) == 0
    assert main(["connect", f"127.0.0.1:{peer.port}", "--insecure",
                 "-n", "2"]) == 0
    assert words(capsys.readouterr().out) == ["NEW SESSION",
                                              "REUSED SESSION"] * 2


def failing(capsys, argv):
    start = time.monotonic()
    code = main(argv)
    elapsed = time.monotonic() - start
    captured = capsys.readouterr()
    assert code == 1
    assert captured.out == ""
    err = captured.err.strip().splitlines()
    assert len(err) == 1, err
    return err[0], elapsed


def test_connect_refused(capsys, unused_port):
    message, _ = failing(capsys, ["connect", f"127.0.0.1:{unused_port}"])
    assert "could not connect" in message
    assert "refused" in message.lower()


def test_connect_timeout(capsys):
    # A listener whose backlog takes the TCP connection but never answers.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        message, elapsed = failing(capsys, [
            "connect", f"127.0.0.1:{port}", "--insecure", "--timeout",
            "0.5"])
    assert "no answer within 0.5 s" in message
    assert elapsed < 3


def test_connect_not_tls(capsys):
    with FakeServer(speak_http) as fake:
        message, _ = failing(capsys, ["connect", f"127.0.0.1:{fake.port}",
                                      "--insecure", "--timeout", "5"])
    assert "TLS protocol error" in message


def test_connect_untrusted_certificate(capsys, s_server, other_certs):
    peer = s_server(tls="1.3")
    message, _ = failing(capsys, ["connect", f"localhost:{peer.port}",
                                  "--cafile", other_certs.cafile])
    assert "certificate verification failed" in message


@pytest.mark.parametrize("target", ["localhost", "localhost:", ":443",
                                    "localhost:99999", "[::1]443"])
def test_connect_bad_target(capsys, target):
    message, _ = failing(capsys, ["connect", target])
    assert "HOST:PORT" in message or "port" in message


def test_parse_hostport():
    assert parse_hostport("example.org:443") == ("example.org", 443)
    assert parse_hostport("[::1]:4433") == ("::1", 4433)


def test_serve_then_connect(tmp_path, unused_port):
    cafile = tmp_path / "ca.pem"
    proc = subprocess.Popen(
        TLSRESUME + ["serve", "--port", str(unused_port), "--tls", "1.3",
                     "--write-ca", str(cafile)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        banner = proc.stdout.readline()
        assert f"127.0.0.1:{unused_port}" in banner
        lines = []
        tlsresume.example.run("localhost", unused_port,
                              cafile=str(cafile), emit=lines.append)
        assert lines == FIXED
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        finally:
            proc.kill()
    assert proc.returncode == 0, proc.stderr.read()
    assert os.path.getsize(cafile) > 0


def test_serve_refuses_half_a_certificate(capsys, certs):
    message, _ = failing(capsys, ["serve", "--cert", certs.certfile])
    assert "--cert and --key" in message


@pytest.mark.parametrize("port", ["70000", "-1"])
def test_serve_bad_port(capsys, port):
    # Was an OverflowError traceback from bind().
    message, _ = failing(capsys, ["serve", "--port", port])
    assert "invalid port" in message


@pytest.mark.parametrize("target", [
    "localhost:\u00b2", "localhost:\uff14\uff14\uff13",
    "localhost:\u0664\u0664\u0663"])
def test_connect_non_ascii_port_digits(capsys, target):
    # '²' passed isdigit() and int() then failed with "invalid literal";
    # fullwidth or Arabic-Indic digits were taken as port 443.
    message, _ = failing(capsys, ["connect", target])
    assert "expected HOST:PORT" in message


@given(st.text(max_size=30))
def test_parse_hostport_fuzz(text):
    try:
        host, port = parse_hostport(text)
    except ValueError as exc:
        assert "HOST:PORT" in str(exc) or "port out of range" in str(exc)
    else:
        assert host and 0 < port < 65536
        assert text.rpartition(":")[2].isascii()
        assert int(text.rpartition(":")[2]) == port


@pytest.mark.parametrize("count", ["0", "-3"])
def test_connect_count_below_one(capsys, unused_port, count):
    # Printed nothing and exited 0.
    message, _ = failing(capsys, ["connect", f"127.0.0.1:{unused_port}",
                                  "-n", count])
    assert "--count" in message


def test_serve_cleans_up_when_the_ca_cannot_be_written(capsys, tmp_path,
                                                       monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    tempfile.tempdir = None  # make tempfile read TMPDIR again
    try:
        message, _ = failing(capsys, [
            "serve", "--port", "0", "--write-ca",
            str(tmp_path / "missing" / "ca.pem")])
    finally:
        tempfile.tempdir = None
    assert "missing" in message
    assert [p.name for p in tmp_path.iterdir()] == []


def test_serve_on_a_busy_port_writes_no_ca(capsys, tmp_path):
    cafile = tmp_path / "ca.pem"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        message, _ = failing(capsys, ["serve", "--port", str(port),
                                      "--write-ca", str(cafile)])
    assert "cannot listen" in message
    assert not cafile.exists()


def test_summary_line_says_faster_or_slower():
    line = summarise("TLS 1.3", [(False, 0.004), (True, 0.001),
                                 (True, 0.001)])
    assert line == ("TLS 1.3: 2 of 3 resumed, full handshake 4.00 ms, "
                    "resumed 1.00 ms median, 4.0x faster")
    # On a loaded machine the one full handshake may be the quick one.
    line = summarise("TLS 1.2", [(False, 0.001), (True, 0.002)])
    assert line.endswith("resumed 2.00 ms median, 2.0x slower "
                         "(is the machine busy?)")
    assert summarise("TLS 1.2", [(False, 0.001)]) == (
        "TLS 1.2: 0 of 1 resumed, full handshake 1.00 ms")
