"""The network demos, run as a user would: ``python -m demos.<name>`` in a subprocess."""
import os
import signal
import socket
import subprocess
import sys

import pytest

from tests.conftest import ROOT


def start_demo(module, *args):
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.Popen([sys.executable, "-m", module, "--port", "0", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()  # "... listening on HOST:PORT"
    if "listening on" not in line:
        proc.kill()
        raise AssertionError(f"{module} did not start: {line!r} {proc.stderr.read()}")
    host, port = line.rsplit(" ", 1)[1].strip().rsplit(":", 1)
    return proc, host, int(port)


@pytest.mark.parametrize("module", ["demos.echo_server", "demos.http_client"])
def test_demo_help(module):
    result = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True,
                            text=True, timeout=30, env=dict(os.environ, PYTHONPATH=ROOT))
    assert result.returncode == 0
    assert "--port" in result.stdout


@pytest.mark.parametrize("extra", [[], ["--run-in-hub"]])
def test_echo_server_demo_echoes_and_stops_on_sigterm(extra):
    proc, host, port = start_demo("demos.echo_server", *extra)
    try:
        with socket.create_connection((host, port), timeout=10) as sock:
            for i in range(50):
                msg = b"Hello World %d\n" % i
                sock.sendall(msg)
                got = b""
                while len(got) < len(msg):
                    got += sock.recv(100)
                assert got == msg
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def test_http_client_demo_fetches_from_its_own_local_server():
    result = subprocess.run([sys.executable, "-m", "demos.http_client", "--log-level", "WARNING"],
                            cwd=ROOT, capture_output=True, text=True, timeout=30,
                            env=dict(os.environ, PYTHONPATH=ROOT))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1] == "HTTP/1.0 200 OK"
    assert "You asked: GET /hello HTTP/1.0" in result.stdout


def test_http_client_demo_reports_a_refused_connection():
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    result = subprocess.run([sys.executable, "-m", "demos.http_client", f"http://127.0.0.1:{port}/",
                             "--log-level", "WARNING"], cwd=ROOT, capture_output=True, text=True,
                            timeout=30, env=dict(os.environ, PYTHONPATH=ROOT))
    assert result.returncode == 1
    assert "ConnectionRefusedError" in result.stderr
