"""Socket options, keepalive, bind_connect and IPv6 listeners/connections over real sockets (127.0.0.1, ::1)."""
import errno
import socket

import gevent
import gevent.event
import gevent.queue
import gevent.socket
import pytest

from packet_gevent import Connection, ReactorError
from tests.conftest import recv_exactly


class Opts(Connection):
    seen = None

    def post_init(self):
        # Accepted connections have their socket in post_init already.
        self.seen.put(("nodelay", self.get_sock_opt(socket.IPPROTO_TCP, socket.TCP_NODELAY)))
        self.enable_keepalive(idle=30, interval=5, count=3)
        self.set_sock_opt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32768)
        self.seen.put(("keepalive", [self.get_sock_opt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
                                     self.get_sock_opt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
                                     self.get_sock_opt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
                                     self.get_sock_opt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT)]))
        self.seen.put(("sndbuf", self.get_sock_opt(socket.SOL_SOCKET, socket.SO_SNDBUF)))
        self.disable_keepalive()
        self.seen.put(("off", self.get_sock_opt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)))
        self.seen.put(("family", self.get_sockname()[0]))

    def receive_data(self, data):
        self.send_data(data)


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_socket_options_and_keepalive_on_accepted_connections(reactor, host):
    seen = gevent.queue.Queue()
    server = reactor.start_server(host, 0, type("O", (Opts,), {"seen": seen}))
    sock = gevent.socket.create_connection((host, server.port), timeout=10)
    got = dict(seen.get(timeout=5) for _ in range(5))
    assert got["nodelay"] == 1  # we set TCP_NODELAY on every TCP connection
    assert got["keepalive"] == [1, 30, 5, 3]
    assert got["sndbuf"] >= 32768  # Linux doubles what is asked
    assert got["off"] == 0
    assert got["family"] == host
    sock.sendall(b"ping")
    assert recv_exactly(sock, 4) == b"ping"
    sock.close()


def test_ipv6_listener_and_outgoing_connection_and_ipv4_is_not_mixed_in(reactor):
    got = gevent.queue.Queue()

    class Client(Connection):
        def connection_completed(self):
            got.put(("peer", self.get_peername()[:2], "sock", self.get_sockname()[0]))
            self.send_data(b"over v6")

        def receive_data(self, data):
            got.put(data)

    class Echo(Connection):
        def receive_data(self, data):
            self.send_data(data)

    server = reactor.start_server("::1", 0, Echo)
    assert server.family == socket.AF_INET6 and server.host == "::1"
    conn = reactor.connect("::1", server.port, Client)
    assert got.get(timeout=5) == ("peer", ("::1", server.port), "sock", "::1")
    assert got.get(timeout=5) == b"over v6"
    conn.close_connection()
    # An IPv6 listener is IPv6-only (IPV6_V6ONLY): listen on both families with two servers.
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.port), timeout=2).close()


def test_socket_options_before_the_socket_exists_are_a_clear_error(reactor):
    errors = gevent.queue.Queue()

    class Early(Connection):
        def post_init(self):  # an outgoing connection is not connected yet here
            try:
                self.set_sock_opt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            except ReactorError as exc:
                errors.put(exc)

        def connection_completed(self):
            self.enable_keepalive()
            errors.put(self.get_sock_opt(socket.SOL_SOCKET, socket.SO_KEEPALIVE))

    listener = gevent.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    conn = reactor.connect("127.0.0.1", listener.getsockname()[1], Early)
    assert "connection_completed" in str(errors.get(timeout=5))
    assert errors.get(timeout=5) == 1
    conn.close_connection()
    listener.close()


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_bind_connect_connects_from_the_local_address_asked_for(reactor, host):
    peers = gevent.queue.Queue()

    class Server(Connection):
        def post_init(self):
            peers.put(self.get_peername()[:2])

    class Client(Connection):
        def connection_completed(self):
            peers.put(("client sockname", self.get_sockname()[:2]))

    server = reactor.start_server(host, 0, Server)
    # A free local port: bind one, read it, release it (the kernel does not hand it out again at once).
    probe = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    probe.bind((host, 0))
    local_port = probe.getsockname()[1]
    probe.close()
    conn = reactor.bind_connect(host, local_port, host, server.port, Client)
    got = {peers.get(timeout=5), peers.get(timeout=5)}
    assert got == {(host, local_port), ("client sockname", (host, local_port))}
    conn.close_connection()


def test_a_bind_address_that_cannot_be_bound_is_reported_through_unbind(reactor):
    reasons = gevent.queue.Queue()

    class Client(Connection):
        def unbind(self, reason=None):
            reasons.put(reason)

    server = reactor.start_server("127.0.0.1", 0, Connection)
    taken = socket.socket()
    try:
        taken.bind(("127.0.0.1", 0))  # bound (not listening): the connect cannot bind it again
        reactor.connect("127.0.0.1", server.port, Client, bind_address=taken.getsockname())
        reason = reasons.get(timeout=5)
    finally:
        taken.close()
    assert isinstance(reason, OSError) and reason.errno == errno.EADDRINUSE


def test_bind_address_is_checked_where_it_is_given(reactor):
    with pytest.raises(TypeError, match="bind_address must be a"):
        reactor.connect("127.0.0.1", 1, Connection, bind_address="127.0.0.1:0")
    with pytest.raises(ReactorError, match="UNIX socket"):
        reactor.connect("/tmp/x.sock", None, Connection, bind_address=("127.0.0.1", 0))
