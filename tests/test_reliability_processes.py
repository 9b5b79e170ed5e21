"""Reliability with processes (issue 5): restarts leak nothing, SIGTERM under load loses nothing."""
import os
import signal
import socket
import subprocess
import sys
import time

import gevent
import gevent.event

import packet_gevent.workers.manager as workers_module
from packet_gevent import Reactor
from tests.conftest import ROOT, wait_for

BASIC = os.path.join(os.path.dirname(__file__), "worker_dirs", "basic")


def children_of(pid):
    kids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(entry))
    return kids


def open_fds():
    return len(os.listdir("/proc/self/fd"))


def ask(reactor, name, data, key=None, timeout=10):
    result = gevent.event.AsyncResult()
    reactor.ask_worker(name, data=data, worker_key=key, callback=result.set)
    return result.get(timeout=timeout)


def test_two_hundred_worker_restarts_return_fds_and_children_to_baseline(monkeypatch):
    monkeypatch.setattr(workers_module, "RESTART_MIN_DELAY", 0.0)  # no backoff in a deliberate crash loop
    reactor = Reactor(BASIC, stop_grace=2)
    reactor.start()
    try:
        assert ask(reactor, "echo_worker", ("echo", 1))["data"] == 1
        baseline_fds = open_fds()
        baseline_children = len(children_of(os.getpid()))  # zombies would count too
        with gevent.Timeout(60, AssertionError("200 restarts did not finish within 60 s")):
            for i in range(100):  # 100 crashes (SIGKILL) and restarts
                pid = ask(reactor, "echo_worker", ("pid", None))["data"]
                os.kill(pid, signal.SIGKILL)
                wait_for(lambda: reactor.workers.pids("echo_worker") not in ([], [pid]),
                         message="the restarted worker")
                reply = ask(reactor, "echo_worker", ("echo", i))
                assert reply["type"] == "response" and reply["data"] == i
            for i in range(100):  # 100 runtime start/delete cycles
                reactor.start_worker(worker="lazy_worker", worker_key=i)
                assert ask(reactor, "lazy_worker", "hi", key=i)["data"]["key"] == i
                reactor.delete_worker(worker="lazy_worker", worker_key=i)
        wait_for(lambda: len(children_of(os.getpid())) == baseline_children, timeout=10,
                 message="children back to baseline")
        wait_for(lambda: open_fds() == baseline_fds, timeout=10, message="fds back to baseline")
    finally:
        reactor.stop(timeout=3)
    wait_for(lambda: children_of(os.getpid()) == [], timeout=10, message="no child after stop")


def test_sigterm_under_load_answers_every_request_and_exits_zero():
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.Popen([sys.executable, "-m", "demos.eval_server", "--port", "0",
                             "--log-level", "WARNING"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert "listening on" in line, proc.stderr.read()
        host, port = line.rsplit(" ", 1)[1].strip().rsplit(":", 1)
        clients = [socket.create_connection((host, int(port)), timeout=10) for _ in range(20)]
        files = [c.makefile("rb") for c in clients]
        for f in files:
            assert f.readline().startswith(b"wow")
        sent = [0] * len(clients)
        # Load: every client has 50 requests in flight when SIGTERM arrives.
        for i, c in enumerate(clients):
            c.sendall(b"".join(b"%d*2\n" % n for n in range(50)))
            sent[i] = 50
        proc.send_signal(signal.SIGTERM)
        for i, f in enumerate(files):
            answers = []
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                line = f.readline()
                if not line:
                    break  # the server closed this connection (after answering)
                answers.append(line)
            # Every request got exactly one answer, in order, before the close.
            assert answers == [b"= %d\n" % (n * 2) for n in range(50)], (i, answers[:3], len(answers))
        assert proc.wait(timeout=15) == 0
        # No worker survives the master.
        wait_for(lambda: children_of(proc.pid) == [], timeout=5, message="workers gone")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
