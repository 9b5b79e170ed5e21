"""What users of a forking app rely on: no fork-under-threads warning from our fork, and
Ctrl-C / SIGTERM to the whole process group stop a worker app as gracefully as SIGTERM to
the master (every request in flight answered, children stopped by the master, exit 0)."""
import os
import select
import signal
import socket
import subprocess
import sys
import textwrap
import time

import gevent
import gevent.event
import gevent.os
import pytest

from packet_gevent import Worker
from tests.conftest import ROOT, alive, wait_for

FORK_AFTER_THREAD = """
    import os, warnings
    import gevent.socket
    from packet_gevent import ForkPool
    gevent.socket.getaddrinfo("127.0.0.1", 80)   # starts gevent's resolver/threadpool thread
    threads = len(os.listdir("/proc/self/task"))
    assert threads > 1, threads
    filters = list(warnings.filters)
    pool = ForkPool(1)
    print(pool.submit(abs, -3).result(timeout=20), threads)
    pool.shutdown(wait=True, timeout=10)
    assert warnings.filters == filters   # the user's filters are untouched
"""


@pytest.mark.parametrize("flag", ["default", "error::DeprecationWarning", "error"])
def test_forking_after_gevent_started_a_thread_does_not_warn(flag):
    result = subprocess.run([sys.executable, "-W", flag, "-c", textwrap.dedent(
        FORK_AFTER_THREAD)], cwd=ROOT, capture_output=True, text=True, timeout=60,
        env=dict(os.environ, PYTHONPATH=ROOT))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.split()[0] == "3"
    assert "multi-threaded" not in result.stderr and "DeprecationWarning" not in result.stderr, \
        result.stderr


APP = '''
import os, sys, time
import gevent
from packet_gevent import Connection, Reactor, Worker

class SlowWorker(Worker):
    worker_name = "slow_worker"

    def receive_data(self, request):
        os.write(2, f"started W {request['data']}\\n".encode())  # one write: no interleaving
        def later():
            gevent.sleep(0.8)
            self.reply(request, request["data"] * 2)
        gevent.spawn(later)


def slow_double(n):
    os.write(2, f"started P {n}\\n".encode())
    time.sleep(0.8)
    return n * 2


class Client(Connection):
    def receive_data(self, data):
        kind, n = data.decode().split()
        if kind == "W":
            self.ask_worker("slow_worker", data=int(n))
        else:
            self.defer(slow_double, int(n),
                       callback=lambda result: self.send_data(f"= {result}\\n".encode()))

    def worker_receive(self, reply):
        if reply["type"] != "response":
            self.send_data(f"error {reply.get('error')}\\n".encode())
        else:
            self.send_data(f"= {reply['data']}\\n".encode())


def setup(reactor):
    server = reactor.start_server("127.0.0.1", 0, Client)
    # Forked once serving, i.e. after Reactor.run installed its SIGINT/SIGTERM handlers
    # (as workers from WORKER_ROOT are): the children inherit those watchers.
    def start_children():
        reactor.start_worker(SlowWorker)
        reactor.pool.submit(abs, 1).result()   # the pool's processes exist from here on
        print("port", server.port, flush=True)
    reactor.next_turn(start_children)

Reactor.run(setup, pool_size=2, stop_grace=10)
print("exited cleanly", flush=True)
'''


def _group_members(pgid):
    members = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                members.append(int(name))
    return members


@pytest.mark.timeout(60)
@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_signal_to_the_process_group_stops_a_worker_app_gracefully(tmp_path, signame):
    script = tmp_path / "app.py"
    script.write_text(APP)
    app = subprocess.Popen([sys.executable, str(script)], cwd=ROOT, start_new_session=True,
                           env=dict(os.environ, PYTHONPATH=ROOT), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE)
    pgid = app.pid
    clients = []
    try:
        first = app.stdout.readline()
        assert first.startswith(b"port "), (first, app.stderr.read() if app.poll() is not None else "")
        port = int(first.split()[1])
        requests = [("W", 1), ("W", 2), ("P", 3), ("P", 4)]
        for kind, n in requests:
            sock = socket.create_connection(("127.0.0.1", port), timeout=20)
            sock.sendall(f"{kind} {n}".encode())
            clients.append(sock)
        seen = b""
        deadline = time.monotonic() + 15
        while seen.count(b"started") < len(requests):   # all in a worker or a pool process
            ready, _, _ = select.select([app.stderr], [], [], max(0, deadline - time.monotonic()))
            chunk = os.read(app.stderr.fileno(), 65536) if ready else b""
            assert chunk, f"not every request started within 15 s: {seen}"
            seen += chunk
        started = [line.split()[1:] for line in seen.decode().splitlines()
                   if line.startswith("started")]
        assert sorted(started) == sorted([k, str(n)] for k, n in requests)
        os.killpg(pgid, getattr(signal, signame))
        answers = []
        for sock in clients:
            sock.settimeout(8)
            try:
                answers.append(sock.makefile().readline())
            except OSError as exc:
                answers.append(repr(exc))
        out, err = (b.decode() for b in app.communicate(timeout=20))
    finally:
        for sock in clients:
            sock.close()
        if app.poll() is None:
            os.killpg(pgid, signal.SIGKILL)
            out, err = (b.decode() for b in app.communicate())
    assert answers == [f"= {n * 2}\n" for _kind, n in requests], err
    assert app.returncode == 0, err
    assert "exited cleanly" in out
    assert "killed by signal" not in err and "restarting" not in err and "Traceback" not in err, err
    assert _group_members(pgid) == []


class SlowDoubler(Worker):
    worker_name = "slow_doubler"

    def receive_data(self, request):
        gevent.sleep(0.3)
        self.reply(request, request["data"] * 2)


def test_a_worker_sigtermed_by_an_operator_answers_its_requests_and_is_not_restarted(caplog):
    import logging
    from packet_gevent import InvalidWorker, Reactor
    reactor = Reactor(stop_grace=5.0).start()
    try:
        reactor.start_worker(worker=SlowDoubler)
        pid = reactor.workers.pids("slow_doubler")[0]
        first = gevent.event.AsyncResult()
        reactor.ask_worker("slow_doubler", data=-1, callback=first.set)
        assert first.get(timeout=10)["data"] == -2      # it serves (its SIGTERM handler is set)
        results = [gevent.event.AsyncResult() for _ in range(3)]
        for n, result in enumerate(results):
            reactor.ask_worker("slow_doubler", data=n, callback=result.set)
        with caplog.at_level(logging.INFO, logger="packet_gevent"):
            os.kill(pid, signal.SIGTERM)
            replies = [result.get(timeout=10) for result in results]
            wait_for(lambda: not alive(pid), 10, "the worker to exit")
            gevent.sleep(0.3)                     # a restart would start at once (0 s)
        assert [(r["type"], r["data"]) for r in replies] == [("response", 0), ("response", 2),
                                                            ("response", 4)]
        text = caplog.text
        assert "received SIGTERM" in text and "not restarted" in text
        assert "restarting" not in text and "killed by signal" not in text
        assert reactor.workers.pids("slow_doubler") == []
        with pytest.raises(InvalidWorker):
            reactor.ask_worker("slow_doubler", data=9, callback=lambda reply: None)
    finally:
        reactor.stop(timeout=5)


class LateReplier(Worker):
    worker_name = "late_replier"

    def receive_data(self, request):
        gevent.sleep(request["data"])
        self.reply(request, "late" if request["data"] else "prompt")


def test_ask_worker_timeout_answers_once_with_an_error_and_drops_the_late_reply():
    from packet_gevent import Reactor, WorkerTimeout
    reactor = Reactor(stop_grace=2.0).start()
    try:
        reactor.start_worker(worker=LateReplier)
        first, second = [], gevent.event.AsyncResult()
        answered = gevent.event.Event()
        reactor.ask_worker("late_replier", data=1.0, timeout=0.2,
                           callback=lambda reply: (first.append(reply), answered.set()))
        reactor.ask_worker("late_replier", data=0, callback=second.set)   # after the late reply
        assert answered.wait(0.9)          # by the timeout, before the worker's reply (1 s)
        assert first[0]["type"] == "error" and isinstance(first[0]["exception"], WorkerTimeout)
        assert "did not answer" in first[0]["error"] and "0.2 s" in first[0]["error"]
        assert second.get(timeout=10)["data"] == "prompt"
        assert len(first) == 1             # the late "late" reply was dropped
        assert reactor.workers.pending_count() == 0
        with pytest.raises(ValueError, match="> 0"):
            reactor.ask_worker("late_replier", data=0, timeout=0, callback=print)
    finally:
        reactor.stop(timeout=2)


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_ctrl_c_to_the_eval_demo_while_its_workers_start_is_graceful(signame):
    # The reproduction: Ctrl-C right after the demo serves, while its second worker
    # may still be setting up (the window where SIGINT used to pass through SIG_DFL).
    app = subprocess.Popen([sys.executable, "-W", "default", "-m", "demos.eval_server", "--port",
                            "0"], cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           start_new_session=True)
    try:
        line = app.stdout.readline()
        assert "listening on" in line, line
        host, port = line.rsplit(" ", 1)[1].strip().rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(b"1+2*3\n")
            reader = sock.makefile()
            assert reader.readline().startswith("wow")
            assert reader.readline() == "= 7\n"
            os.killpg(app.pid, getattr(signal, signame))
            out, err = app.communicate(timeout=20)
    finally:
        if app.poll() is None:
            os.killpg(app.pid, signal.SIGKILL)
            app.communicate()
    assert app.returncode == 0, err
    assert "killed by signal" not in err and "restarting" not in err, err
    assert "ResourceWarning" not in err and "not from the master" not in err, err
    assert _group_members(app.pid) == []


class Divider(Worker):
    worker_name = "divider"

    def receive_data(self, request):
        self.reply(request, 1 / request["data"])


def test_an_exception_in_receive_data_is_logged_once_at_error_in_the_master(caplog):
    import logging
    from packet_gevent import Reactor
    reactor = Reactor(stop_grace=2.0).start()
    try:
        reactor.start_worker(worker=Divider)
        reply = gevent.event.AsyncResult()
        with caplog.at_level(logging.INFO):
            reactor.ask_worker("divider", data=0, callback=reply.set)
            assert reply.get(timeout=10)["type"] == "error"
        errors = [r for r in caplog.records if r.levelno == logging.ERROR
                  and "receive_data raised" in r.getMessage()]
        assert len(errors) == 1, caplog.text
        assert "ZeroDivisionError" in errors[0].getMessage()
        assert "Traceback" in errors[0].getMessage()
    finally:
        reactor.stop(timeout=2)


class Echoer(Worker):
    worker_name = "echoer"

    def receive_data(self, request):
        self.reply(request, (request["data"], self.worker_options.get("tag")))


def test_start_worker_takes_packets_one_hash_and_explains_a_positional_options_dict():
    from packet_gevent import Reactor
    reactor = Reactor(stop_grace=2.0).start()
    try:
        with pytest.raises(TypeError, match=r"options are keywords in Python: start_worker\("
                                            r"worker='echoer', worker_key=\.\.\."):
            reactor.start_worker("echoer", {"tag": "x"})
        reactor.start_worker({"worker": Echoer, "worker_key": "k1", "tag": "packet"})
        reply = gevent.event.AsyncResult()
        reactor.ask_worker("echoer", data=1, worker_key="k1", callback=reply.set)
        assert reply.get(timeout=10)["data"] == (1, "packet")
    finally:
        reactor.stop(timeout=2)
