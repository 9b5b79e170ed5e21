"""Packet's workers end to end: real worker processes, real loopback sockets.

The fixture workers live in tests/worker_dirs/basic.  A small line protocol
(``AskServer``) lets a plain client drive ``ask_worker`` from a connection and
read the replies that reach its ``worker_receive``.
"""
import json
import logging
import os
import signal
import socket

import gevent
import gevent.event
import greenlet
import pytest

from packet_gevent import (Callback, Connection, FrameError, InvalidWorker, MetaPimp, Reactor,
                           SerializationError, WorkerCrashed, WorkerError)
from packet_gevent.workers import manager as workers_module
from .conftest import wait_for

HERE = os.path.dirname(os.path.abspath(__file__))
BASIC = os.path.join(HERE, "worker_dirs", "basic")


class AskServer(Connection):
    """Each line is JSON {"worker", "data", "key"?}: asked of that worker; replies come back as JSON lines."""

    def post_init(self):
        self.buffer = b""

    def receive_data(self, data):
        self.buffer += data
        *lines, self.buffer = self.buffer.split(b"\n")
        for line in lines:
            ask = json.loads(line)
            try:
                self.ask_worker(ask["worker"], data=ask["data"], worker_key=ask.get("key"))
            except InvalidWorker as exc:
                self.send_data(json.dumps({"type": "invalid", "error": str(exc)}).encode() + b"\n")

    def worker_receive(self, reply):
        reply = {k: reply.get(k) for k in ("type", "data", "error", "traceback", "via")}
        self.send_data(json.dumps(reply).encode() + b"\n")


class LineClient:
    def __init__(self, server):
        self.sock = gevent.socket.create_connection(("127.0.0.1", server.port), timeout=10)
        self.buffer = b""

    def ask(self, worker, data, key=None):
        self.sock.sendall(json.dumps({"worker": worker, "data": data, "key": key}).encode() + b"\n")

    def line(self, timeout=10.0):
        with gevent.Timeout(timeout, AssertionError("no reply line before timeout")):
            while b"\n" not in self.buffer:
                chunk = self.sock.recv(65536)
                assert chunk, "server closed the connection"
                self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)

    def close(self):
        self.sock.close()


@pytest.fixture
def wreactor():
    r = Reactor(worker_root=BASIC, stop_grace=2.0)
    r.start()
    try:
        yield r
    finally:
        r.stop(timeout=2.0)


@pytest.fixture
def served(wreactor):
    server = wreactor.start_server("127.0.0.1", 0, AskServer)
    clients = []

    def connect():
        c = LineClient(server)
        clients.append(c)
        return c
    yield wreactor, connect
    for c in clients:
        c.close()


def ask(reactor, worker, data, key=None, timeout=10.0, **extra):
    """Ask from outside any connection; wait for the reply."""
    result = gevent.event.AsyncResult()
    reactor.ask_worker(worker, data=data, worker_key=key, callback=result.set, **extra)
    return result.get(timeout=timeout)


def proc_gone(pid):
    """True when pid no longer runs (absent, or a zombie someone else must reap)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


# ------------------------------------------------------------ several workers
def test_auto_loaded_workers_run_and_no_auto_load_ones_do_not(wreactor):
    running = {name for name, _key in wreactor.workers.running_workers()}
    assert running == {"echo_worker", "double_worker", "pool_worker", "proxied_worker"}
    with pytest.raises(InvalidWorker, match="lazy_worker.*not running"):
        wreactor.ask_worker("lazy_worker", data=1)


def test_several_workers_answer_the_asking_connection(served):
    reactor, connect = served
    a, b = connect(), connect()
    a.ask("echo_worker", ["echo", "from a"])
    b.ask("double_worker", 21)
    a.ask("double_worker", "ab")
    b.ask("echo_worker", ["echo", "from b"])
    # Replies from two different workers may arrive in either order.
    replies_a = [a.line(), a.line()]
    replies_b = [b.line(), b.line()]
    assert {"type": "response", "data": "from a", "error": None, "traceback": None,
            "via": None} in replies_a
    assert sorted(str(r["data"]) for r in replies_a) == ["abab", "from a"]
    assert sorted(str(r["data"]) for r in replies_b) == ["42", "from b"]


def test_replies_to_one_connection_keep_order_across_a_pool(served):
    reactor, connect = served
    a, b = connect(), connect()
    delays = [0.02, 0, 0.01, 0, 0.03, 0, 0, 0.01] * 3
    for delay in delays:
        a.ask("pool_worker", delay)
        b.ask("pool_worker", delay)
    replies_a = [a.line() for _ in delays]
    replies_b = [b.line() for _ in delays]
    assert all(r["type"] == "response" for r in replies_a + replies_b)
    # One connection's requests stay on one process while any is pending (order),
    # and the two connections were spread over different processes.
    pids_a = {r["data"][0] for r in replies_a}
    pids_b = {r["data"][0] for r in replies_b}
    assert len(pids_a) == 1 and len(pids_b) == 1 and pids_a != pids_b


def test_pool_spreads_concurrent_requests_over_its_processes(wreactor):
    pids = wreactor.workers.pids("pool_worker")
    assert len(pids) == 3 and len(set(pids)) == 3
    results = [gevent.event.AsyncResult() for _ in range(3)]
    for result in results:
        wreactor.ask_worker("pool_worker", data=0.3, callback=result.set)
    answered = {result.get(timeout=10)["data"][0] for result in results}
    assert answered == set(pids)


def test_a_reply_for_a_connection_that_has_gone_is_dropped(served, caplog):
    reactor, connect = served
    a = connect()
    a.ask("echo_worker", ["sleep", 0.2])
    wait_for(lambda: reactor.workers.pending_count() == 1, message="the request to be pending")
    a.close()
    with caplog.at_level(logging.DEBUG, logger="packet_gevent.workers.manager"):
        wait_for(lambda: reactor.workers.pending_count() == 0, message="the reply")
        wait_for(lambda: "it has gone" in caplog.text, message="the debug log")
    b = connect()  # the reactor is fine
    b.ask("echo_worker", ["echo", 1])
    assert b.line()["data"] == 1


# -------------------------------------------------------------- callbacks
def test_callback_gets_the_reply_instead_of_worker_receive(wreactor):
    got = gevent.event.AsyncResult()
    wreactor.ask_worker("echo_worker", data=("echo", "cb"), callback=Callback(got.set))
    reply = got.get(timeout=10)
    assert reply["type"] == "response" and reply["data"] == "cb"
    assert isinstance(reply["callback_signature"], int)


def test_callbacks_without_a_connection_run_in_reply_order_outside_the_hub(wreactor):
    seen = []
    done = gevent.event.Event()

    def got(reply):
        seen.append((reply["data"], greenlet.getcurrent()))
        if len(seen) == 50:
            done.set()
    for i in range(50):
        wreactor.ask_worker("echo_worker", data=("echo", i), callback=got)
    assert done.wait(10)
    assert [data for data, _ in seen] == list(range(50))
    assert all(glet is not gevent.get_hub() for _, glet in seen)


def test_a_callback_may_ask_again_and_wait_for_that_reply(wreactor):
    final = gevent.event.AsyncResult()

    def outer(reply):
        inner = gevent.event.AsyncResult()
        wreactor.ask_worker("double_worker", data=reply["data"], callback=inner.set)
        final.set(inner.get(timeout=5)["data"])
    wreactor.ask_worker("double_worker", data=3, callback=outer)
    assert final.get(timeout=10) == 12


def test_callback_from_a_connection_runs_in_its_greenlet(wreactor):
    seen = gevent.event.AsyncResult()

    class Asker(Connection):
        def connection_completed(self):
            self.ask_worker("echo_worker", data=("echo", 5), callback=self.got)

        def got(self, reply):
            seen.set((reply["data"], greenlet.getcurrent() is self._transport.greenlet))

        def worker_receive(self, reply):
            seen.set("worker_receive must not be called when a callback is given")

    server = wreactor.start_server("127.0.0.1", 0, Asker)
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    try:
        assert seen.get(timeout=10) == (5, True)
    finally:
        sock.close()


# ------------------------------------------------- errors inside receive_data
def test_exception_in_receive_data_is_an_error_reply_and_the_worker_lives_on(served):
    reactor, connect = served
    a = connect()
    pid = reactor.workers.pids("echo_worker")[0]
    a.ask("echo_worker", ["raise", "boom"])
    reply = a.line()
    assert reply["type"] == "error"
    assert reply["error"] == "ValueError: asked to raise: boom"
    assert "Traceback" in reply["traceback"] and "echo_worker.py" in reply["traceback"]
    a.ask("echo_worker", ["pid", None])
    assert a.line()["data"] == pid


def test_error_reply_carries_an_exception_for_callbacks(wreactor):
    reply = ask(wreactor, "echo_worker", ("raise", "x"))
    assert isinstance(reply["exception"], WorkerError)
    assert "asked to raise" in reply["exception"].remote_traceback


def test_routing_keys_are_filled_in_and_a_request_is_answered_once(served):
    reactor, connect = served
    a = connect()
    a.ask("echo_worker", ["fresh_dict", "filled"])
    assert a.line()["data"] == "filled"
    a.ask("echo_worker", ["twice", None])
    a.ask("echo_worker", ["echo", "next"])
    assert a.line()["data"] == 1
    assert a.line()["data"] == "next"  # the second answer to one request was dropped


def test_unpicklable_request_raises_serialization_error(wreactor):
    with pytest.raises(SerializationError, match="cannot be pickled"):
        wreactor.ask_worker("echo_worker", data=("echo", lambda: 1), callback=lambda r: None)
    assert wreactor.workers.pending_count() == 0
    assert ask(wreactor, "echo_worker", ("echo", 2))["data"] == 2


def test_max_message_size_applies_both_ways():
    reactor = Reactor(worker_root=BASIC, max_message_size=64 * 1024, stop_grace=2.0).start()
    try:
        with pytest.raises(FrameError, match="max_message_size"):
            reactor.ask_worker("echo_worker", data=("echo", b"x" * 100_000), callback=lambda r: None)
        assert reactor.workers.pending_count() == 0
        # A reply over the limit fails in the worker: an error reply instead.
        reply = ask(reactor, "echo_worker", ("big", 100_000))
        assert reply["type"] == "error" and "max_message_size" in reply["error"]
        assert ask(reactor, "echo_worker", ("big", 10))["data"] == b"x" * 10
    finally:
        reactor.stop(timeout=2.0)


def test_a_message_the_master_cannot_read_replaces_the_worker(wreactor):
    pid = wreactor.workers.pids("echo_worker")[0]
    reply = ask(wreactor, "echo_worker", ("bad_message", None))
    assert reply["type"] == "error"
    # Killed, or it saw its channel close and exited first: either way, said why.
    assert reply["error"].startswith(f"worker echo_worker (pid {pid}) ")
    assert ": it sent a message the master cannot read (SerializationError" in reply["error"]
    wait_for(lambda: wreactor.workers.pids("echo_worker") not in ([], [pid]), message="the restart")
    assert ask(wreactor, "echo_worker", ("echo", 1))["data"] == 1


def test_a_request_the_worker_cannot_read_ends_it_with_exit_code_1(wreactor):
    pid = wreactor.workers.pids("echo_worker")[0]
    # Defined after the fork: the worker cannot unpickle an instance of it.
    late = type("DefinedAfterTheFork", (), {"__module__": __name__})
    globals()["DefinedAfterTheFork"] = late
    try:
        reply = ask(wreactor, "echo_worker", ("echo", late()))
    finally:
        del globals()["DefinedAfterTheFork"]
    assert reply["type"] == "error"
    assert reply["error"] == f"worker echo_worker (pid {pid}) exited with code 1"
    wait_for(lambda: wreactor.workers.pids("echo_worker") not in ([], [pid]), message="the restart")
    assert ask(wreactor, "echo_worker", ("echo", 1))["data"] == 1


def test_untracked_messages_get_no_request_id_and_replies_route_by_signature(wreactor):
    got = gevent.event.AsyncResult()

    class Notifier(Connection):
        def connection_completed(self):
            got.set(self.ask_worker("echo_worker", data="ping", type="notify"))

        def worker_receive(self, reply):
            got.set(reply)

    server = wreactor.start_server("127.0.0.1", 0, Notifier)
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    try:
        assert got.get(timeout=10) is None  # ask_worker returned no request id
        got = gevent.event.AsyncResult()
        reply = got.get(timeout=10)
        assert reply["data"] == "ping" and "request_id" not in reply
        assert wreactor.workers.pending_count() == 0
    finally:
        sock.close()


# ------------------------------------------------ worker_key, start, delete
def test_no_auto_load_start_worker_with_keys_and_delete_worker(wreactor, caplog):
    pimp_a = wreactor.start_worker(worker="lazy_worker", worker_key="a", color="red")
    wreactor.start_worker(worker="lazy_worker", worker_key="b", color="blue")
    reply_a = ask(wreactor, "lazy_worker", "x", key="a")["data"]
    reply_b = ask(wreactor, "lazy_worker", "y", key="b")["data"]
    assert reply_a["key"] == "a" and reply_a["options"]["color"] == "red" and reply_a["data"] == "x"
    assert reply_b["key"] == "b" and reply_b["options"]["color"] == "blue"
    assert reply_a["pid"] != reply_b["pid"]
    with pytest.raises(InvalidWorker):
        wreactor.ask_worker("lazy_worker", data=1)  # no instance without a key
    # Starting a running key again: a no-op with a warning.
    with caplog.at_level(logging.WARNING, logger="packet_gevent.workers.manager"):
        assert wreactor.start_worker(worker="lazy_worker", worker_key="a") is pimp_a
    assert "already running" in caplog.text
    assert wreactor.workers.pids("lazy_worker", "a") == [reply_a["pid"]]
    wreactor.delete_worker(worker="lazy_worker", worker_key="a")
    with pytest.raises(InvalidWorker, match="not running"):
        wreactor.ask_worker("lazy_worker", data=1, worker_key="a")
    wait_for(lambda: proc_gone(reply_a["pid"]), message="the deleted worker to exit")
    assert ask(wreactor, "lazy_worker", "still", key="b")["data"]["data"] == "still"
    with pytest.raises(InvalidWorker):
        wreactor.delete_worker(worker="lazy_worker", worker_key="a")


def test_start_worker_can_set_the_pool_size(wreactor):
    wreactor.start_worker(worker="lazy_worker", worker_key="p", pool_size=2)
    pids = wreactor.workers.pids("lazy_worker", "p")
    assert len(set(pids)) == 2
    reply = ask(wreactor, "lazy_worker", "z", key="p")["data"]
    assert reply["pid"] in pids and "pool_size" not in reply["options"]


def test_start_worker_of_unknown_class_raises(wreactor):
    with pytest.raises(InvalidWorker, match="no worker class named 'nope'"):
        wreactor.start_worker(worker="nope")


def test_delete_worker_answers_what_it_was_asked_first(wreactor):
    wreactor.start_worker(worker="lazy_worker", worker_key="d")
    result = gevent.event.AsyncResult()
    wreactor.ask_worker("lazy_worker", data="before", worker_key="d", callback=result.set)
    wreactor.delete_worker(worker="lazy_worker", worker_key="d")
    assert result.get(timeout=10)["data"]["data"] == "before"


# ---------------------------------------------------- worker -> worker
def test_worker_to_worker_request_and_reply(served):
    reactor, connect = served
    a = connect()
    a.ask("echo_worker", ["forward", 21])
    assert a.line()["data"] == ["doubled", 42]
    a.ask("echo_worker", ["forward_missing", 1])
    reply = a.line()
    assert reply["type"] == "error" and "no_such_worker" in reply["error"] and "not running" in reply["error"]


# --------------------------------------------------- status, result, proxy
def test_status_goes_to_result_hash_and_result_is_kept(wreactor):
    assert ask(wreactor, "echo_worker", ("status", {"load": 3}))["data"] == "stored"
    assert wreactor.result_hash["echo_worker"] == {"load": 3}
    wreactor.start_worker(worker="lazy_worker", worker_key="k1")
    assert ask(wreactor, "echo_worker", ("result", [1, 2]))["data"] == "sent"
    assert wreactor.workers.pimp("echo_worker").last_result == [1, 2]


def test_status_with_worker_key_is_stored_under_the_key(wreactor, tmp_path):
    wreactor.start_worker(worker="echo_worker", worker_key="sk")
    assert ask(wreactor, "echo_worker", ("status", "busy"), key="sk")["data"] == "stored"
    assert wreactor.result_hash["sk"] == "busy"


def test_custom_proxy_routes_the_replies(served):
    reactor, connect = served
    pimp = reactor.workers.pimp("proxied_worker")
    assert type(pimp).__name__ == "UpperHandler" and isinstance(pimp, MetaPimp)
    a = connect()
    a.ask("proxied_worker", "hello")
    reply = a.line()
    assert reply["data"] == "HELLO" and reply["via"] == "upper_handler"
    assert pimp.routed == 1


# ------------------------------------------------------ the worker's reactor
def test_worker_runs_its_own_reactor_server_and_timers(wreactor):
    port = ask(wreactor, "echo_worker", ("serve", None))["data"]
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        sock.sendall(b"abc")
        assert sock.recv(3) == b"ABC"
    finally:
        sock.close()
    assert ask(wreactor, "echo_worker", ("timer", 0.05))["data"] == "timer fired"


def test_worker_log_goes_through_the_master(wreactor, caplog):
    with caplog.at_level(logging.INFO, logger="packet_gevent.workers.echo_worker"):
        assert ask(wreactor, "echo_worker", ("log", None))["data"] == "logged"
        wait_for(lambda: "hello from" in caplog.text, message="the worker's log line")
    record = next(r for r in caplog.records if "hello from" in r.getMessage())
    assert record.name == "packet_gevent.workers.echo_worker"


def test_worker_inherits_no_listening_socket_or_client_connection(served):
    reactor, connect = served
    a = connect()
    a.ask("echo_worker", ["fds", None])
    fds = a.line()["data"]
    pid = reactor.workers.pids("echo_worker")[0]
    sockets = []
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"):
                sockets.append(fd)
        except FileNotFoundError:
            pass  # the listdir's own descriptor
    # Its channel only: not the master's listener, client connection or the
    # other workers' channel ends (process.py's tests cover the hub reset).
    assert len(sockets) == 1, f"the worker should hold only its channel socket, has {sockets}"


# ----------------------------------------------------------------- faults
def _errors_after_kill(reactor, connect, sig_or_exit):
    a = connect()
    pid = reactor.workers.pids("echo_worker")[0]
    for i in range(5):
        a.ask("echo_worker", ["sleep", 30])
    wait_for(lambda: reactor.workers.pending_count() == 5, message="5 requests in flight")
    if isinstance(sig_or_exit, int):
        os.kill(pid, sig_or_exit)
    replies = [a.line() for _ in range(5)]
    return a, pid, replies


def test_sigkill_with_requests_in_flight_each_gets_one_error_and_the_worker_comes_back(served, caplog):
    reactor, connect = served
    with caplog.at_level(logging.ERROR, logger="packet_gevent.workers.manager"):
        a, pid, replies = _errors_after_kill(reactor, connect, signal.SIGKILL)
    expected = f"worker echo_worker (pid {pid}) killed by signal 9 (SIGKILL)"
    assert [r["type"] for r in replies] == ["error"] * 5
    assert all(r["error"] == expected for r in replies)
    assert expected in caplog.text and "restarting" in caplog.text
    wait_for(lambda: reactor.workers.pids("echo_worker") not in ([], [pid]), message="the restart")
    a.ask("echo_worker", ["pid", None])
    reply = a.line()  # the very next line: no duplicate answers came before it
    assert reply["type"] == "response" and reply["data"] != pid
    assert reactor.workers.pending_count() == 0


def test_os_exit_in_a_worker_fails_its_request_with_the_exit_code(wreactor):
    pid = wreactor.workers.pids("echo_worker")[0]
    reply = ask(wreactor, "echo_worker", ("exit", 7))
    assert reply["type"] == "error"
    assert reply["error"] == f"worker echo_worker (pid {pid}) exited with code 7"
    assert isinstance(reply["exception"], WorkerCrashed) and reply["exception"].exitcode == 7
    wait_for(lambda: wreactor.workers.pids("echo_worker") not in ([], [pid]), message="the restart")
    assert ask(wreactor, "echo_worker", ("echo", "back"))["data"] == "back"


def test_requests_asked_while_the_worker_is_down_wait_for_the_restart(wreactor, monkeypatch):
    monkeypatch.setattr(workers_module, "RESTART_FIRST_DELAY", 0.3)
    pid = wreactor.workers.pids("echo_worker")[0]
    assert ask(wreactor, "echo_worker", ("exit", 1))["type"] == "error"
    assert wreactor.workers.pids("echo_worker") == []  # down, restart pending
    queued = gevent.event.AsyncResult()
    wreactor.ask_worker("echo_worker", data=("pid", None), callback=queued.set)
    assert wreactor.workers.pending_count() == 1
    reply = queued.get(timeout=10)
    assert reply["type"] == "response" and reply["data"] not in (pid, None)
    # Past the bound, an error at once.
    assert ask(wreactor, "echo_worker", ("exit", 1))["type"] == "error"
    wreactor.workers.max_queued = 0
    reply = ask(wreactor, "echo_worker", ("pid", None))
    assert reply["type"] == "error" and "is down" in reply["error"]


def test_without_restart_a_dead_worker_is_gone(caplog):
    reactor = Reactor(worker_root=BASIC, restart_workers=False, stop_grace=2.0).start()
    try:
        assert ask(reactor, "echo_worker", ("exit", 2))["type"] == "error"
        with pytest.raises(InvalidWorker):
            reactor.ask_worker("echo_worker", data=("echo", 1))
        # worker_init raising: the request sent meanwhile gets the error.
        reactor.start_worker(worker="lazy_worker", worker_key="f", fail_init=True)
        with caplog.at_level(logging.ERROR, logger="packet_gevent.workers.manager"):
            reply = ask(reactor, "lazy_worker", "x", key="f")
        assert reply["type"] == "error" and "exited with code 3" in reply["error"]
        assert "worker_init raised" in caplog.text and "failed on purpose" in caplog.text
        assert "not restarted (restart_workers=False)" in caplog.text
    finally:
        reactor.stop(timeout=2.0)


def test_reactor_stop_answers_pending_requests_and_ends_the_workers():
    reactor = Reactor(worker_root=BASIC, stop_grace=2.0).start()
    pids = [pid for name, key in reactor.workers.running_workers() for pid in reactor.workers.pids(name, key)]
    result = gevent.event.AsyncResult()
    reactor.ask_worker("echo_worker", data=("sleep", 30), callback=result.set)
    started = gevent.get_hub().loop.now()
    reactor.stop(timeout=0.5)
    assert gevent.get_hub().loop.now() - started < 5
    reply = result.get(timeout=1)
    assert reply["type"] == "error"
    assert reply["error"].endswith("killed by signal 9 (SIGKILL): stopped with the reactor; "
                                   "killed: it had not exited 0.5 s later")
    assert reactor.workers.pending_count() == 0
    wait_for(lambda: all(proc_gone(pid) for pid in pids), timeout=2, message="every worker gone")


def test_an_exception_in_receive_data_is_logged_once_at_error_with_its_traceback_in_the_master(
        wreactor, caplog):
    with caplog.at_level(logging.DEBUG):
        reply = ask(wreactor, "echo_worker", ("raise", "boom"))
        assert reply["type"] == "error" and "asked to raise: boom" in reply["error"]
    # The worker sends the log line before the reply, on the same channel.
    records = [r for r in caplog.records if "asked to raise: boom" in r.getMessage()]
    assert len(records) == 1
    record = records[0]
    assert record.levelno == logging.ERROR and record.process == os.getpid()
    assert record.name == "packet_gevent.workers.echo_worker"
    assert "Traceback (most recent call last)" in record.getMessage()
    assert "receive_data raised on a 'request' message" in record.getMessage()
