"""proxy_incoming_to / stop_proxying over real sockets: both directions, backpressure, target gone."""
import socket

import gevent
import gevent.event
import gevent.queue
import gevent.server
import gevent.socket
import pytest

from packet_gevent import Connection
from tests.conftest import recv_exactly


class Front(Connection):
    """Accepted from the client; connects to the backend and proxies both ways."""

    backend_port = None
    fronts = None

    def post_init(self):
        self.own = gevent.queue.Queue()
        self.target_gone = gevent.event.Event()
        self.fronts.put(self)

    def connection_completed(self):
        back = self.connect("127.0.0.1", self.backend_port, Back)
        back.front = self

    def receive_data(self, data):  # only when not proxying
        self.own.put(data)

    def proxy_target_unbound(self):
        self.target_gone.set()


class Back(Connection):
    front = None

    def connection_completed(self):
        self.front.proxy_incoming_to(self)
        self.proxy_incoming_to(self.front)
        self.front.send_data(b"ready\n")


def start_front(reactor, backend_port):
    fronts = gevent.queue.Queue()
    handler = type("F", (Front,), {"backend_port": backend_port, "fronts": fronts})
    return reactor.start_server("127.0.0.1", 0, handler), fronts


def test_both_directions_through_a_proxy_then_the_target_goes_away(reactor):
    class Upper(Connection):
        def receive_data(self, data):
            if data == b"bye":
                self.close_connection()
            else:
                self.send_data(data.upper())

    backend = reactor.start_server("127.0.0.1", 0, Upper)
    front_server, fronts = start_front(reactor, backend.port)
    client = gevent.socket.create_connection(("127.0.0.1", front_server.port), timeout=10)
    assert recv_exactly(client, 6) == b"ready\n"
    front = fronts.get(timeout=5)
    for word in (b"hello", b"proxied", b"world"):
        client.sendall(word)
        assert recv_exactly(client, len(word)) == word.upper()
    assert front.own.empty()  # nothing went to receive_data
    client.sendall(b"bye")  # the backend closes: the front stops proxying
    assert front.target_gone.wait(5)
    client.sendall(b"mine again")
    assert front.own.get(timeout=5) == b"mine again"
    client.close()


def test_a_slow_target_makes_the_source_stop_reading_and_nothing_is_lost(reactor):
    release = gevent.event.Event()
    received = []
    done = gevent.event.Event()
    total = 24 * 1024 * 1024

    def slow_backend(sock, _address):  # reads nothing until released
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        release.wait(20)
        got = 0
        while got < total:
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            received.append(chunk)
            got += len(chunk)
        done.set()
        sock.close()

    backend = gevent.server.StreamServer(("127.0.0.1", 0), slow_backend)
    backend.start()
    try:
        front_server, fronts = start_front(reactor, backend.server_port)
        client = gevent.socket.create_connection(("127.0.0.1", front_server.port), timeout=10)
        assert recv_exactly(client, 6) == b"ready\n"
        front = fronts.get(timeout=5)
        payload = bytes(range(256)) * (total // 256)
        sender = gevent.spawn(client.sendall, payload)
        with gevent.Timeout(10):
            while not front._transport.user_paused:  # backpressure engages (no event to wait on)
                gevent.sleep(0.01)
        back = front._pg_proxy[0]
        assert back.get_outbound_data_size() <= back._transport.high_water + 65536
        assert not sender.dead  # the client is held back by TCP, not buffered by us
        release.set()
        assert done.wait(20)
        assert b"".join(received) == payload
        sender.join(5)
        client.close()
    finally:
        backend.stop()


def test_stop_proxying_and_bad_targets(reactor):
    from packet_gevent import ReactorError
    got = gevent.queue.Queue()

    class Sink(Connection):
        def receive_data(self, data):
            got.put((self.name, data))

    instances = []
    server = reactor.start_server("127.0.0.1", 0, Sink, instances.append)
    a = gevent.socket.create_connection(("127.0.0.1", server.port), timeout=10)
    b = gevent.socket.create_connection(("127.0.0.1", server.port), timeout=10)
    with gevent.Timeout(5):
        while len(instances) < 2:
            gevent.sleep(0.01)
    by_port = {conn.get_peername()[1]: conn for conn in instances}
    conn_a, conn_b = by_port[a.getsockname()[1]], by_port[b.getsockname()[1]]
    conn_a.name, conn_b.name = "a", "b"
    conn_a.proxy_incoming_to(conn_b)
    a.sendall(b"to b")
    assert recv_exactly(b, 4) == b"to b"
    conn_a.stop_proxying()
    a.sendall(b"own")
    assert got.get(timeout=5) == ("a", b"own")
    conn_b.close_connection()
    with pytest.raises(ReactorError):
        conn_a.proxy_incoming_to(conn_b)
    a.close()
    b.close()
