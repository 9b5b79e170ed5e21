"""Connection.defer: EventMachine's defer on the reactor's fork pool, over real loopback sockets."""
import logging
import os

import gevent
import gevent.event

from packet_gevent import Connection, Reactor
from tests.conftest import client, recv_exactly, wait_for
from tests.test_pool import nap


def square(x):
    return x * x


def fail(message):
    raise KeyError(message)


def pid_of():
    return os.getpid()


class DeferToWorkerReceive(Connection):
    """Each line "N" is squared in the pool; worker_receive writes the reply dict back."""

    def post_init(self):
        self.greenlets = []

    def receive_data(self, data):
        for line in data.decode().split():
            if line == "fail":
                self.defer(fail, "nope")
            else:
                self.defer(square, int(line))

    def worker_receive(self, reply):
        self.greenlets.append(gevent.getcurrent() is self._transport.greenlet)
        if reply["type"] == "response":
            self.send_data(f"{reply['data']}\n".encode())
        else:
            self.send_data(f"error {reply['error']} {'fail' in (reply['traceback'] or '')}\n".encode())


class DeferToCallback(Connection):
    def receive_data(self, data):
        self.defer(square, int(data), callback=self.answer)

    def answer(self, outcome):
        assert gevent.getcurrent() is self._transport.greenlet
        self.send_data(f"cb {outcome}\n".encode())


def test_defer_delivers_results_and_errors_to_worker_receive_in_order(reactor):
    instances = []
    server = reactor.start_server("127.0.0.1", 0, DeferToWorkerReceive, instances.append)
    sock = client(server)
    sock.sendall(b"3\n")
    assert recv_exactly(sock, 2) == b"9\n"
    sock.sendall(b"fail\n")
    line = recv_exactly(sock, len(b"error KeyError: 'nope' True\n"))
    assert line == b"error KeyError: 'nope' True\n"
    sock.close()
    assert instances[0].greenlets == [True, True]  # in the connection's greenlet
    # it ran in the pool, not in the reactor's process
    assert reactor.pool.submit(pid_of).result(timeout=10) != os.getpid()


def test_defer_runs_the_callback_in_the_connection_greenlet(reactor):
    instances = []
    server = reactor.start_server("127.0.0.1", 0, DeferToCallback, instances.append)
    sock = client(server)
    sock.sendall(b"7")
    assert recv_exactly(sock, 6) == b"cb 49\n"
    sock.close()


def test_defer_result_for_a_gone_connection_is_dropped(reactor, caplog):
    caplog.set_level(logging.DEBUG, logger="packet_gevent.packet")
    instances = []
    server = reactor.start_server("127.0.0.1", 0, Connection, instances.append)
    sock = client(server)
    wait_for(lambda: instances, message="the connection")
    conn = instances[0]
    future = conn.defer(nap, 0.3, "late")
    sock.close()
    wait_for(lambda: conn.signature not in reactor.connections, message="the connection to end")
    assert future.result(timeout=10) == "late"
    wait_for(lambda: "dropped" in caplog.text, message="the debug log line")


def test_reactor_stop_shuts_the_pool_down():
    reactor = Reactor(stop_grace=2.0, pool_size=2)
    reactor.start()
    try:
        assert reactor.pool.submit(square, 4).result(timeout=10) == 16
        pids = reactor.pool.pids()
        assert len(pids) == 2
    finally:
        reactor.stop(timeout=2.0)
    from tests.conftest import assert_gone
    assert_gone(pids)


class DeferOnConnect(Connection):
    """Defers square(7) as soon as it is connected; keeps the future for the test."""

    def connection_completed(self):
        self.future = self.defer(square, 7, callback=self.got)
        self.result = gevent.event.AsyncResult()

    def got(self, value):
        self.result.set(value)


def test_a_finished_defer_counts_as_pending_until_it_reaches_its_connection():
    # Between the task's end (the pool's count drops) and the result's arrival in the
    # connection's mailbox lies one loop callback: a graceful stop polling in that gap
    # saw nothing pending and closed the connection, dropping the result.
    reactor = Reactor(pool_size=1, stop_grace=5.0)
    server = reactor.start_server("127.0.0.1", 0, DeferOnConnect)
    reactor.start()
    sock = client(server)
    try:
        wait_for(lambda: reactor.connections, message="the connection")
        conn = next(iter(reactor.connections.values()))
        wait_for(lambda: hasattr(conn, "future"), message="the defer")
        pool_service = next(s for s in reactor._services if getattr(s, "pool", None) is reactor.pool)
        assert conn.future.result(timeout=10) == 49
        # resumed before the delivery callback ran: the pool has nothing left, the
        # result is not delivered yet, and the service still reports it as pending
        assert len(reactor.pool) == 0 and not conn.result.ready()
        assert pool_service.pending() == 1
        assert conn.result.get(timeout=5) == 49
        assert pool_service.pending() == 0
    finally:
        sock.close()
        reactor.stop(timeout=5)
