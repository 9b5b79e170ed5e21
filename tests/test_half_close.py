"""Half-close over real sockets: close_write() (SHUT_WR after the queue drains) and eof_received."""
import socket

import gevent
import gevent.event
import gevent.queue
import gevent.socket
import pytest

from packet_gevent import Connection
from tests.conftest import recv_until_closed


class CountThenAnswer(Connection):
    """Reads until the peer's EOF, then answers how much it got (needs the half-close)."""

    def post_init(self):
        self.got = 0
        self.unbound = gevent.event.AsyncResult()

    def receive_data(self, data):
        self.got += len(data)

    def eof_received(self):
        self.send_data(b"got %d bytes" % self.got)
        self.send_data(b"!" * 300000)  # more than the kernel takes at once: queued
        self.close_connection_after_writing()

    def unbind(self, reason=None):
        self.unbound.set(reason)


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_peer_half_close_calls_eof_received_and_the_answer_still_goes_out(reactor, host):
    instances = []
    server = reactor.start_server(host, 0, CountThenAnswer, instances.append)
    sock = gevent.socket.create_connection((host, server.port), timeout=10)
    sock.sendall(b"x" * 100000)
    sock.shutdown(socket.SHUT_WR)  # "that is all I send"; still reading
    answer = recv_until_closed(sock)
    assert answer == b"got 100000 bytes" + b"!" * 300000
    assert instances[0].unbound.get(timeout=5) is None
    sock.close()


def test_twisted_name_read_connection_lost_works_too(reactor):
    class Twisted(Connection):
        def read_connection_lost(self):
            self.send_data(b"bye")
            self.close_connection_after_writing()

    server = reactor.start_server("127.0.0.1", 0, Twisted)
    sock = gevent.socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.shutdown(socket.SHUT_WR)
    assert recv_until_closed(sock) == b"bye"
    sock.close()


def test_close_write_sends_eof_after_the_queue_and_keeps_reading(reactor):
    received = gevent.queue.Queue()
    unbound = gevent.event.AsyncResult()

    class Producer(Connection):
        def connection_completed(self):
            self.send_data(b"d" * 1_000_000)  # queued beyond what the kernel takes
            self.close_write()
            self.send_data(b"too late")  # dropped: our side is shut

        def receive_data(self, data):
            received.put(data)

        def unbind(self, reason=None):
            unbound.set(reason)

    server = reactor.start_server("127.0.0.1", 0, Producer)
    sock = gevent.socket.create_connection(("127.0.0.1", server.port), timeout=10)
    assert recv_until_closed(sock) == b"d" * 1_000_000  # all of it, then EOF
    sock.sendall(b"thanks")  # the server still reads
    assert received.get(timeout=5) == b"thanks"
    assert not unbound.ready()
    sock.close()
    assert unbound.get(timeout=5) is None


def test_both_sides_half_close_then_the_connection_closes(reactor):
    unbound = gevent.event.AsyncResult()

    class Both(Connection):
        def eof_received(self):
            self.send_data(b"last words")
            self.close_write()  # both directions done: closes

        def unbind(self, reason=None):
            unbound.set(reason)

    server = reactor.start_server("127.0.0.1", 0, Both)
    sock = gevent.socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.shutdown(socket.SHUT_WR)
    assert recv_until_closed(sock) == b"last words"
    assert unbound.get(timeout=5) is None
    sock.close()


def test_eof_received_of_a_run_in_hub_handler(reactor):
    class Fast(CountThenAnswer):
        run_in_hub = True

    instances = []
    server = reactor.start_server("127.0.0.1", 0, Fast, instances.append)
    sock = gevent.socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.sendall(b"y" * 1000)
    sock.shutdown(socket.SHUT_WR)
    assert recv_until_closed(sock) == b"got 1000 bytes" + b"!" * 300000
    assert instances[0].unbound.get(timeout=5) is None
    sock.close()
