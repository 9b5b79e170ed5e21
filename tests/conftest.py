"""Shared fixtures: a started reactor, loopback clients, subprocess scripts."""
import os
import subprocess
import sys
import textwrap

import gevent
import gevent.socket
import pytest

from packet_gevent import Reactor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def reactor():
    r = Reactor(stop_grace=2.0)
    r.start()
    try:
        yield r
    finally:
        r.stop(timeout=2.0)


def client(server, timeout=10.0):
    """A gevent (cooperative) client socket connected to ``server``."""
    sock = gevent.socket.create_connection((server.host, server.port), timeout=timeout)
    return sock


def recv_exactly(sock, n, timeout=10.0):
    chunks = []
    got = 0
    with gevent.Timeout(timeout, AssertionError(f"received {got} of {n} bytes before timeout")):
        while got < n:
            chunk = sock.recv(min(65536, n - got))
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
    return b"".join(chunks)


def recv_until_closed(sock, timeout=10.0):
    chunks = []
    with gevent.Timeout(timeout, AssertionError("peer did not close before timeout")):
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


def wait_for(predicate, timeout=5.0, message="condition"):
    """Wait cooperatively for ``predicate()``; fail with ``message`` after ``timeout``.

    Used only where no event exists to wait on (e.g. state in another process).
    """
    with gevent.Timeout(timeout, AssertionError(f"timed out waiting for {message}")):
        while not predicate():
            gevent.sleep(0.002)


def run_script(code, timeout=30.0, env=None):
    """Run ``code`` in a fresh interpreter (cwd = project root); return CompletedProcess."""
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = ROOT + os.pathsep + full_env.get("PYTHONPATH", "")
    if env:
        full_env.update(env)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def alive(pid):
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def assert_gone(pids, timeout=5.0):
    wait_for(lambda: not any(alive(pid) for pid in pids), timeout,
             f"pool processes {pids} to exit")


@pytest.fixture
def pool():
    """A ForkPool of 2; at teardown it is shut down and its processes must be gone."""
    from packet_gevent import ForkPool
    p = ForkPool(2)
    try:
        yield p
    finally:
        pids = p.pids()
        p.shutdown(wait=True, timeout=5)
        assert_gone(pids)
