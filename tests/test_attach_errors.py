"""reactor.attach (an existing socket as a connection) and reactor.error_handler, over real sockets."""
import logging
import socket

import gevent
import gevent.event
import gevent.queue
import gevent.socket
import pytest

from packet_gevent import Connection
from tests.conftest import recv_exactly


class Echo(Connection):
    def post_init(self):
        self.unbound = gevent.event.AsyncResult()

    def receive_data(self, data):
        self.send_data(data.upper())

    def unbind(self, reason=None):
        self.unbound.set(reason)


def test_attach_a_socket_object_and_a_bare_fd(reactor):
    ours, theirs = socket.socketpair()
    conn = reactor.attach(ours, Echo)
    peer = gevent.socket.socket(fileno=theirs.detach())
    peer.sendall(b"attached")
    assert recv_exactly(peer, 8) == b"ATTACHED"
    conn.close_connection()
    assert conn.unbound.get(timeout=5) is None
    assert peer.recv(10) == b""  # the connection owned the socket and closed it
    peer.close()

    listener = socket.create_server(("::1", 0), family=socket.AF_INET6)
    client = gevent.socket.create_connection(("::1", listener.getsockname()[1]), timeout=10)
    accepted, _ = listener.accept()
    conn = reactor.attach(accepted.detach(), Echo)  # an fd number
    assert conn.get_peername()[:2] == client.getsockname()[:2]
    client.sendall(b"fd")
    assert recv_exactly(client, 2) == b"FD"
    client.close()
    assert conn.unbound.get(timeout=5) is None
    listener.close()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with pytest.raises(ValueError, match="open_datagram_socket"):
        reactor.attach(udp, Echo)
    udp.close()


def test_error_handler_gets_callback_and_timer_errors_instead_of_the_log(reactor, caplog):
    errors = gevent.queue.Queue()

    @reactor.error_handler
    def on_error(exc, conn):
        errors.put((type(exc).__name__, type(conn).__name__ if conn is not None else None))

    class Faulty(Echo):
        def receive_data(self, data):
            raise KeyError(data)

    instances = []
    server = reactor.start_server("127.0.0.1", 0, Faulty, instances.append)
    sock = gevent.socket.create_connection(("127.0.0.1", server.port), timeout=10)
    with caplog.at_level(logging.ERROR, logger="packet_gevent"):
        sock.sendall(b"boom")
        assert errors.get(timeout=5) == ("KeyError", "Faulty")
        assert isinstance(instances[0].unbound.get(timeout=5), KeyError)  # still ends that connection
        reactor.add_timer(0, lambda: 1 / 0)
        assert errors.get(timeout=5) == ("ZeroDivisionError", None)
    assert not [r for r in caplog.records if "raised" in r.getMessage()]
    reactor.error_handler(None)  # back to logging
    with caplog.at_level(logging.ERROR, logger="packet_gevent"):
        fired = gevent.event.Event()
        reactor.add_timer(0, lambda: (fired.set(), 1 / 0))
        assert fired.wait(5)
        gevent.sleep(0)
    assert any("timer callback" in r.getMessage() for r in caplog.records)
    sock.close()
