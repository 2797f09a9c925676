"""The build script's refusals: missing or too old OpenSSL headers."""

import os
import subprocess
import sys

import pytest

BUILD = os.path.join(os.path.dirname(__file__), "..", "csrc", "build.py")
pytestmark = pytest.mark.skipif(not os.path.exists(BUILD),
                                reason="needs the source tree")


def run_build(include_dir):
    env = dict(os.environ, TLSRESUME_OPENSSL_INCLUDE=str(include_dir),
               TLSRESUME_OPENSSL_LIB=str(include_dir))
    # Importing the script is enough: it locates OpenSSL before anything
    # is compiled.
    code = f"import runpy; runpy.run_path({BUILD!r}, run_name='build')"
    return subprocess.run([sys.executable, "-c", code], env=env,
                          capture_output=True, text=True, timeout=60)


def test_missing_headers_name_the_package(tmp_path):
    out = run_build(tmp_path)
    assert out.returncode != 0
    assert "OpenSSL headers not found" in out.stderr
    assert "libssl-dev" in out.stderr
    assert "openssl-devel" in out.stderr
    assert "openssl@3" in out.stderr
    assert "Traceback" not in out.stderr


def test_old_openssl_is_refused(tmp_path):
    headers = tmp_path / "openssl"
    headers.mkdir()
    (headers / "ssl.h").write_text("/* stand-in */\n")
    (headers / "opensslv.h").write_text(
        "# define OPENSSL_VERSION_NUMBER  0x1000214fL\n")
    out = run_build(tmp_path)
    assert out.returncode != 0
    assert "needs OpenSSL 1.1.1 or newer" in out.stderr
    assert "Traceback" not in out.stderr


def test_system_headers_are_accepted():
    out = subprocess.run(
        [sys.executable, "-c",
         f"import runpy; m = runpy.run_path({BUILD!r}, run_name='x'); "
         "print(m['include_dirs'])"],
        capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
