"""Smoke tests for the bench: the C client, and a tiny run of every client.

Figures are not checked (this machine's load decides them); what must
hold is that every client does its work, resumes when asked, and that
the JSON rows carry the fields the README and plots rely on.
"""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from tlsresume import bench

pytestmark = pytest.mark.skipif(bench.find_compiler() is None,
                                reason="no C compiler for c-reference")


@pytest.fixture(scope="module")
def c_client(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("cref"))
    return bench.compile_c_client(bench.default_c_source(), directory)


@pytest.mark.parametrize("read_ahead", ["0", "1"])
@pytest.mark.parametrize("tls", ["1.2", "1.3"])
def test_c_client_resumes_against_s_server(c_client, s_server, tls,
                                           read_ahead):
    server = s_server(tls=tls)
    out = subprocess.run(
        [c_client, "--host", server.host, "--port", str(server.port),
         "--servername", "localhost", "--tls", tls, "--cafile",
         server.cafile, "--mode", "resumed", "--connections", "20",
         "--threads", "2", "--read-ahead", read_ahead],
        capture_output=True, text=True, timeout=60, check=True)
    result = json.loads(out.stdout)
    assert result["connections"] == 40
    assert result["reused"] == 40
    assert result["openssl"].startswith("OpenSSL")
    # 40 handshakes cannot take less than 40 microseconds of CPU, nor
    # more CPU than two threads have in the time they ran.
    assert 40e-6 < result["cpu_seconds"] < 2 * result["seconds"] + 0.1
    assert result["server_cpu_seconds"] is None  # no --server-pid


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"),
                    reason="the server's CPU is read from Linux's /proc")
def test_c_client_reads_the_servers_cpu(c_client, s_server):
    server = s_server(tls="1.2")
    out = subprocess.run(
        [c_client, "--host", server.host, "--port", str(server.port),
         "--tls", "1.2", "--cafile", server.cafile, "--mode", "full",
         "--duration", "0.3", "--server-pid", str(server.process.pid)],
        capture_output=True, text=True, timeout=60, check=True)
    result = json.loads(out.stdout)
    # 0.3 s of full RSA-2048 handshakes keep s_server busy for more than
    # one 10 ms clock tick; it cannot use more than its one thread had.
    assert 0.01 <= result["server_cpu_seconds"] <= result["seconds"] + 0.1


@pytest.mark.parametrize("bad", [
    ["--port", "443x"], ["--port", "0"], ["--port", "70000"],
    ["--mode", "fast"], ["--duration", "nan"], ["--duration", "-1"],
    ["--threads", "0"], ["--connections", "1e3"], ["--read-ahead", "2"],
    ["--server-pid", "-5"], ["--tls", "1.1"], ["--frobnicate", "1"],
    ["--port"], ["--port", " 443"], ["--port", "+443"],
    ["--duration", "inf"], ["--timeout", "0"],
    ["--connections", "5", "--duration", "1"]])
def test_c_client_refuses_bad_arguments(c_client, bad):
    argv = [c_client, "--host", "127.0.0.1", "--port", "1"]
    out = subprocess.run(argv + bad, capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 2, (bad, out.stderr)
    assert "usage" in out.stderr.lower()


@pytest.mark.parametrize("argv", [[], ["--host", "127.0.0.1"],
                                  ["--port", "4433"]])
def test_c_client_needs_host_and_port(c_client, argv):
    out = subprocess.run([c_client] + argv, capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 2
    assert "usage" in out.stderr.lower()


def test_c_client_gives_up_on_a_silent_server(c_client):
    # A listening socket that never accepts: the kernel completes the TCP
    # handshake, and nobody ever answers the ClientHello.
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        began = time.monotonic()
        out = subprocess.run(
            [c_client, "--host", "127.0.0.1", "--port", str(port),
             "--connections", "1", "--timeout", "0.3"],
            capture_output=True, text=True, timeout=30)
    assert out.returncode == 1
    assert "SSL_connect failed" in out.stderr
    assert time.monotonic() - began < 10


def test_c_client_full_mode_never_resumes(c_client, s_server):
    server = s_server(tls="1.2")
    out = subprocess.run(
        [c_client, "--host", server.host, "--port", str(server.port),
         "--tls", "1.2", "--cafile", server.cafile, "--mode", "full",
         "--connections", "5"],
        capture_output=True, text=True, timeout=60, check=True)
    result = json.loads(out.stdout)
    assert (result["connections"], result["reused"]) == (5, 0)


def test_c_client_reports_a_refused_connection(c_client, s_server):
    server = s_server(tls="1.2")
    server.process.kill()
    server.process.wait()
    out = subprocess.run(
        [c_client, "--host", server.host, "--port", str(server.port),
         "--connections", "1"],
        capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert "connect" in out.stderr


def test_missing_compiler_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("CC", "no-such-compiler-tlsresume")
    with pytest.raises(bench.BenchError, match="no C compiler"):
        bench.compile_c_client(bench.default_c_source(), str(tmp_path))


ROW_FIELDS = {"client", "server", "tls", "mode", "threads", "conn_per_s",
              "reused_fraction", "cpu_us_per_conn", "openssl"}


def test_tiny_run_writes_rows_for_every_client(tmp_path):
    pytest.importorskip("OpenSSL", reason="pyOpenSSL (in the test extra)")
    out = tmp_path / "bench.json"
    status = bench.main([
        "--rounds", "1", "--duration", "0.05", "--threads", "1,2",
        "--no-cache-bench", "--plain", "--json", str(out)])
    assert status == 0
    report = json.loads(out.read_text())

    rows = report["rows"]
    # 2 servers x 2 versions x 2 modes on one thread, plus resumed on
    # two threads against s_server for each version: per client.
    assert len(rows) == len(bench.CLIENTS) * (8 + 2)
    assert {r["client"] for r in rows} == set(bench.CLIENTS)
    for row in rows:
        assert ROW_FIELDS <= set(row), row
        assert row["error"] is None, row
        assert set(row["conn_per_s"]) == {"median", "min", "max"}
        assert row["conn_per_s"]["median"] > 0
        cpu = row["cpu_us_per_conn"]
        # Every connection costs the client some CPU; the server's is
        # read from Linux's /proc in clock ticks, so a short run may see
        # none.
        assert 0 < cpu["client"] < 1e6, row
        if os.path.exists("/proc/self/stat"):
            assert cpu["server"] is not None and cpu["server"] >= 0, row
        assert row["openssl"]
        if row["mode"] == "full":
            assert row["reused_fraction"] == 0.0, row
        else:
            # tlsresume's threads share one cache, and every connection
            # finds a session in it (a TLS 1.2 one stays when taken).
            assert row["reused_fraction"] == 1.0, row
    pyopenssl = next(r for r in rows if r["client"] == "pyopenssl")
    assert "bundled" in pyopenssl["openssl"]
    assert {t["target"] for t in report["targets"]}
    assert report["machine"]["cpus"] >= 1


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"),
                    reason="reads Linux's /proc")
def test_process_cpu_counts_this_process():
    # Clock ticks are coarse: burn well over one, then compare.
    before, clock = bench._process_cpu(os.getpid()), time.process_time()
    while time.process_time() - clock < 0.2:
        pass
    used = bench._process_cpu(os.getpid()) - before
    assert abs(used - (time.process_time() - clock)) < 0.05


def test_process_cpu_of_no_process_is_none():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert bench._process_cpu(proc.pid) is None


@pytest.mark.parametrize("argv, named", [
    (["--duration", "nan"], "--duration"),
    (["--duration", "inf"], "--duration"),
    (["--duration", "0"], "--duration"),
    (["--rounds", "0"], "--rounds"),
    (["--rounds", "x"], "--rounds"),
    (["--threads", "0"], "--threads"),
    (["--threads", "100000"], "--threads"),
    (["--threads", "abc"], "--threads"),
    (["--json", ""], "--json"),
    (["--json", "."], "--json"),
    (["--markdown", "/no/such/directory/r.md"], "--markdown"),
    (["--plot", "/no/such/directory/r.png"], "--plot"),
    (["--clients", "tlsresume,curl"], "--clients"),
])
def test_bad_options_stop_the_bench_before_it_runs(capsys, argv, named):
    began = time.monotonic()
    with pytest.raises(SystemExit) as exc:
        bench.main(argv + ["--plain"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {named}" in err, err
    assert "Traceback" not in err
    assert time.monotonic() - began < 5  # nothing was measured


def test_lists_keep_each_value_once():
    parse = bench._csv(bench.SERVERS)
    assert parse("s_server, s_server,tlsresume-server") == [
        "s_server", "tlsresume-server"]
    assert bench._csv(kind=bench._whole(1, 4))("2,1,2") == [2, 1]


def test_a_measurement_without_connections_is_shown_not_fatal():
    case = bench.Case("s_server", "1.2", "resumed", 1)
    empty = bench.Result("tlsresume", case,
                         [bench.Sample(0, 0.001, 0, 0.001, None)])
    results = {("tlsresume", case): empty}
    assert bench._fmt_rate(empty).endswith("(no connection made)")
    assert bench._median(results, "tlsresume", *vars(case).values()) is None
    checks = bench.targets(results, [1])
    assert all(check["met"] is None for check in checks)
    row = empty.row("OpenSSL")
    assert row["reused_fraction"] is None and row["connections"] == 0


def test_thread_counts_that_cannot_run_are_noted(tmp_path):
    out = tmp_path / "r.json"
    status = bench.main([
        "--clients", "tlsresume", "--servers", "tlsresume-server",
        "--tls", "1.3", "--modes", "resumed", "--threads", "1,4",
        "--rounds", "1", "--duration", "0.05", "--no-cache-bench",
        "--plain", "--json", str(out)])
    assert status == 0
    notes = json.loads(out.read_text())["notes"]
    assert any(n.startswith("threads 4 not measured") for n in notes), notes
