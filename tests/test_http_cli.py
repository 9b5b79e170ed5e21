"""``python -m packet_gevent.wsgi`` as a user runs it: a subprocess, real signals, http.client.

Nothing runs on this process's hub here, so the blocking stdlib client and
threads are used as they are.
"""
import http.client
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from tests.conftest import ROOT, alive


class ServerProcess:
    """The CLI in a subprocess; its log lines (stderr) are read by a thread into a queue."""

    def __init__(self, *args):
        env = dict(os.environ, PYTHONPATH=ROOT)
        self.proc = subprocess.Popen([sys.executable, "-m", "packet_gevent.wsgi", *args,
                                      "--bind", "127.0.0.1:0", "--graceful-timeout", "10"],
                                     cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines = queue.Queue()
        self.log = []
        threading.Thread(target=self._read, daemon=True).start()
        match = self.expect(r"listening on http://127\.0\.0\.1:(\d+)")
        self.port = int(match.group(1))

    def _read(self):
        for line in self.proc.stderr:
            self.log.append(line)
            self.lines.put(line)
        self.lines.put(None)

    def expect(self, pattern, timeout=15.0):
        """Wait for a log line matching ``pattern``; return the match."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                line = None
                if time.monotonic() < deadline:
                    continue
            if line is None:
                raise AssertionError(f"no log line matching {pattern!r}; log:\n{''.join(self.log)}")
            match = re.search(pattern, line)
            if match:
                return match

    def get(self, path="/", timeout=10):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, response.getheader("X-Pid"), response.read()
        finally:
            conn.close()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc.stderr.close()


@pytest.fixture
def start():
    servers = []

    def make(*args):
        server = ServerProcess(*args)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


def test_cli_help_and_bad_app():
    env = dict(os.environ, PYTHONPATH=ROOT)
    result = subprocess.run([sys.executable, "-m", "packet_gevent.wsgi", "--help"], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and "--processes" in result.stdout
    result = subprocess.run([sys.executable, "-m", "packet_gevent.wsgi", "no_such_module:app"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode != 0 and "cannot import 'no_such_module'" in result.stderr
    # Under a master: the first serving process fails, the master gives up (no fork loop).
    result = subprocess.run([sys.executable, "-m", "packet_gevent.wsgi", "no_such_module:app",
                             "--processes", "2", "--bind", "127.0.0.1:0"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 3 and "cannot import 'no_such_module'" in result.stderr
    assert result.stderr.count("serving process") <= 3


def test_sigterm_under_load_drains_with_no_lost_response(start):
    server = start("tests.http_apps:router", "--log-level", "INFO")
    server.get("/")
    results = []
    clients = 10

    def client():
        results.append(server.get("/gentle?0.5", timeout=20))

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for _ in range(clients):  # every request is in the app now
        server.expect(r"gentle start")
    server.proc.send_signal(signal.SIGTERM)
    for thread in threads:
        thread.join(20)
    assert [r[0] for r in results] == [200] * clients
    assert all(r[2] == b"gentle done" for r in results)
    assert server.proc.wait(15) == 0
    with pytest.raises(ConnectionRefusedError):
        server.get("/")


def test_a_killed_serving_process_is_replaced(start):
    server = start("tests.http_apps:router", "--processes", "2")
    pids = {int(server.expect(r"serving process (\d+) ready").group(1)) for _ in range(2)}
    assert len(pids) == 2 and server.proc.pid not in pids
    victim = min(pids)
    os.kill(victim, signal.SIGKILL)
    server.expect(rf"serving process {victim} killed by signal 9")
    replacement = int(server.expect(r"serving process (\d+) ready").group(1))
    assert replacement not in pids
    for _ in range(10):
        status, pid, _ = server.get("/")
        assert status == 200 and int(pid) in (pids - {victim}) | {replacement}
    assert not alive(victim)
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(15) == 0
    for pid in (pids - {victim}) | {replacement}:
        deadline = time.monotonic() + 5
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not alive(pid), f"serving process {pid} outlived its master"


def test_sighup_restarts_one_by_one_refusing_no_connection(start):
    server = start("tests.http_apps:router", "--processes", "2")
    old = {int(server.expect(r"serving process (\d+) ready").group(1)) for _ in range(2)}
    stop = threading.Event()
    outcomes = {"ok": 0, "errors": []}
    seen = set()

    def hammer():
        deadline = time.monotonic() + 30
        while not stop.is_set() and time.monotonic() < deadline and outcomes["ok"] < 20000:
            try:
                status, pid, _ = server.get("/")
                assert status == 200
                outcomes["ok"] += 1
                seen.add(int(pid))
            except Exception as exc:  # any refused/reset connection fails the test
                outcomes["errors"].append(repr(exc))

    threads = [threading.Thread(target=hammer) for _ in range(2)]
    for thread in threads:
        thread.start()
    server.proc.send_signal(signal.SIGHUP)
    for _ in range(2):
        server.expect(r"serving process \d+ replaced by \d+", timeout=30)
    before = outcomes["ok"]
    deadline = time.monotonic() + 10
    while outcomes["ok"] < before + 50 and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    for thread in threads:
        thread.join(20)
    assert outcomes["errors"] == []
    assert outcomes["ok"] > before
    assert seen - old, "no request was served by a new process"
    for pid in old:
        assert not alive(pid)


def test_backend_and_whole_app_offload_flags(start):
    server = start("tests.http_apps:hello", "--backend", "h11", "--offload",
                   "--offload-processes", "1")
    status, pid, body = server.get("/")
    assert status == 200 and body == b"Hello, World!"
    assert int(pid) != server.proc.pid  # answered by the serving process's fork pool
