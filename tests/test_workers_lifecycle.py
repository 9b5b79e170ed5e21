"""WorkerProcess: the odd endings (EOF without an exit, an exit without EOF) still answer requests."""
import os
import signal
import time

import gevent
import gevent.event
import pytest

from packet_gevent import Reactor, Worker
from packet_gevent.ipc import supervision
from .conftest import wait_for
from .test_workers import proc_gone


class ChannelCloser(Worker):
    """Closes its channel and lives on: the master must kill it."""

    def receive_data(self, request):
        if request["data"] == "close":
            self._pg_channel.close()
            gevent.sleep(30)


class GrandchildKeeper(Worker):
    """Forks a grandchild that inherits the channel, reports it, then exits: no EOF follows."""

    def receive_data(self, request):
        pid = os.fork()
        if pid == 0:  # the grandchild: holds the socket, runs no hub
            time.sleep(30)
            os._exit(0)
        self.send_result(pid)
        self._pg_channel.flush(timeout=5)
        os._exit(5)


@pytest.fixture
def reactor():
    r = Reactor(stop_grace=2.0).start()
    try:
        yield r
    finally:
        r.stop(timeout=2.0)


def _ask(reactor, name, data):
    result = gevent.event.AsyncResult()
    reactor.ask_worker(name, data=data, callback=result.set)
    return result


def test_a_worker_that_closes_its_channel_is_killed_after_exit_wait(reactor, monkeypatch):
    monkeypatch.setattr(supervision, "EXIT_WAIT", 0.2)
    reactor.start_worker(worker=ChannelCloser)
    pid = reactor.workers.pids("channel_closer")[0]
    started = time.monotonic()
    reply = _ask(reactor, "channel_closer", "close").get(timeout=10)
    assert time.monotonic() - started >= 0.2
    assert reply["type"] == "error"
    assert reply["error"] == (f"worker channel_closer (pid {pid}) killed by signal 9 (SIGKILL): "
                              f"it closed its channel but had not exited 0.2 s later")
    wait_for(lambda: proc_gone(pid), message="the killed worker to be reaped")


def test_an_exit_without_eof_answers_after_eof_wait(reactor, monkeypatch):
    monkeypatch.setattr(supervision, "EOF_WAIT", 0.2)
    pimp = reactor.start_worker(worker=GrandchildKeeper)
    pid = reactor.workers.pids("grandchild_keeper")[0]
    result = _ask(reactor, "grandchild_keeper", None)
    grandchild = None
    try:
        wait_for(lambda: pimp.last_result is not None, message="the grandchild's pid")
        grandchild = pimp.last_result
        reply = result.get(timeout=10)
        assert reply["type"] == "error"
        assert reply["error"] == f"worker grandchild_keeper (pid {pid}) exited with code 5"
    finally:
        if grandchild is not None:
            os.kill(grandchild, signal.SIGKILL)
    wait_for(lambda: proc_gone(grandchild), message="the grandchild to go")
