"""The layers hold: the core reactor imports no process code; services plug in one way."""
import gevent
import gevent.event

from packet_gevent import Connection, ReactorError
from packet_gevent.net.reactor import Reactor as CoreReactor

from tests.conftest import client, recv_until_closed, run_script


def test_core_reactor_imports_no_process_code():
    result = run_script("""
        import sys
        from packet_gevent.net.reactor import Reactor
        r = Reactor(); r.start(); r.stop(1)
        loaded = sorted(m for m in sys.modules if m.startswith(("packet_gevent.ipc",
                        "packet_gevent.workers", "packet_gevent.pool", "packet_gevent.packet")))
        print(loaded)
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


class Asker(Connection):
    def receive_data(self, data):
        try:
            self.ask_worker("anything", data=data)
        except ReactorError as exc:
            self.send_data(str(exc).encode())
            self.close_connection_after_writing()


def test_core_reactor_says_to_use_the_facade_for_workers():
    r = CoreReactor()
    server = r.start_server("127.0.0.1", 0, Asker)
    r.start()
    try:
        with client(server) as sock:
            sock.sendall(b"x")
            answer = recv_until_closed(sock)
        assert b"use packet_gevent.Reactor" in answer and b"ask_worker" in answer
    finally:
        r.stop(2)


class Recorder:
    def __init__(self, name, log, busy_for=0.0):
        self.name, self.log = name, log
        self.done = gevent.event.Event()
        if busy_for:
            gevent.spawn_later(busy_for, self.done.set)
        else:
            self.done.set()

    def start(self):
        self.log.append(("start", self.name))

    def pending(self):
        return 0 if self.done.is_set() else 1

    def stop(self, timeout):
        self.log.append(("stop", self.name, self.done.is_set()))


def test_services_start_with_the_reactor_are_waited_for_and_stop_in_reverse_order():
    log = []
    r = CoreReactor(stop_grace=5.0)
    r.add_service(Recorder("a", log))
    r.start()
    r.add_service(Recorder("b", log, busy_for=0.1))  # added while running: starts at once
    assert log == [("start", "a"), ("start", "b")]
    r.stop()
    # stop waited (within the grace) for b's pending work, then stopped b before a
    assert log[2:] == [("stop", "b", True), ("stop", "a", True)]
