"""UDP (open_datagram_socket) over real sockets on 127.0.0.1 and ::1."""
import errno
import os
import socket

import gevent
import gevent.event
import gevent.queue
import gevent.socket
import pytest

from packet_gevent import Connection, ReactorError

FAMILIES = [pytest.param(("127.0.0.1", socket.AF_INET, 65507), id="ipv4"),
            pytest.param(("::1", socket.AF_INET6, 65527), id="ipv6")]


class Echo(Connection):
    def post_init(self):
        self.unbound = gevent.event.AsyncResult()

    def receive_data(self, data):
        self.send_data(b"%d:" % len(data) + data[:16])

    def unbind(self, reason=None):
        self.unbound.set(reason)


def udp_client(family, timeout=10.0):
    sock = gevent.socket.socket(family, socket.SOCK_DGRAM)
    sock.settimeout(timeout)
    sock.bind(("127.0.0.1" if family == socket.AF_INET else "::1", 0))
    return sock


@pytest.mark.parametrize("spec", FAMILIES)
def test_datagrams_are_answered_to_their_sender_and_the_largest_arrives_whole(reactor, spec):
    host, family, largest = spec
    conn = reactor.open_datagram_socket(host, 0, Echo)
    address = conn.get_sockname()
    assert address[0] == host and address[1] > 0
    a, b = udp_client(family), udp_client(family)
    for sock in (a, b):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    a.sendto(b"from a", address[:2])
    assert a.recvfrom(100)[0] == b"6:from a"
    big = os.urandom(largest)  # gevent's DatagramServer would cut this at 8,192 bytes
    b.sendto(big, address[:2])
    assert b.recvfrom(100)[0] == b"%d:" % largest + big[:16]
    assert conn.get_peername()[:2] == b.getsockname()[:2]
    a.close()
    b.close()
    conn.close_connection()
    assert conn.unbound.get(timeout=5) is None
    assert conn.get_sockname() is None


def test_send_datagram_goes_anywhere_and_send_data_before_any_sender_is_an_error(reactor):
    errors = gevent.queue.Queue()
    target = udp_client(socket.AF_INET)

    class Sender(Connection):
        def post_init(self):
            try:
                self.send_data(b"to whom?")
            except ReactorError as exc:
                errors.put(exc)
            self.send_datagram(b"hello there", "127.0.0.1", target.getsockname()[1])
            self.send_datagram(b"by name", "localhost", target.getsockname()[1])

    conn = reactor.open_datagram_socket("127.0.0.1", 0, Sender)
    assert "send_datagram" in str(errors.get(timeout=5))
    got = sorted(target.recvfrom(100) for _ in range(2))
    assert [data for data, _ in got] == [b"by name", b"hello there"]
    assert {addr for _, addr in got} == {conn.get_sockname()}
    target.close()
    conn.close_connection()


def test_a_blocking_callback_keeps_order_and_each_datagram_its_own_sender(reactor):
    release = gevent.event.Event()
    seen = []

    class Slow(Connection):
        def receive_data(self, data):
            sender = self.get_peername()
            if data == b"first":
                release.wait(5)  # blocks this handler only; the others queue in the kernel
            seen.append((data, sender))
            self.send_data(b"done " + data)

    conn = reactor.open_datagram_socket("127.0.0.1", 0, Slow)
    address = conn.get_sockname()
    clients = [udp_client(socket.AF_INET) for _ in range(3)]
    for i, sock in enumerate(clients):
        sock.sendto([b"first", b"second", b"third"][i], address)
    # A timer of the reactor still runs while the handler blocks.
    fired = gevent.event.Event()
    reactor.add_timer(0.01, fired.set)
    assert fired.wait(5) and seen == []
    release.set()
    for sock, word in zip(clients, [b"first", b"second", b"third"]):
        assert sock.recvfrom(100)[0] == b"done " + word
    assert [data for data, _ in seen] == [b"first", b"second", b"third"]
    assert [sender for _, sender in seen] == [sock.getsockname() for sock in clients]
    for sock in clients:
        sock.close()
    conn.close_connection()


def test_reactor_stop_unbinds_a_datagram_socket_and_releases_its_fd():
    from packet_gevent import Reactor
    before = len(os.listdir("/proc/self/fd"))
    r = Reactor(stop_grace=1.0)
    r.start()
    conn = r.open_datagram_socket("::1", 0, Echo)
    assert len(os.listdir("/proc/self/fd")) == before + 1
    r.stop(timeout=1.0)
    assert conn.unbound.get(timeout=5) is None
    assert len(os.listdir("/proc/self/fd")) == before
    with pytest.raises(ReactorError):
        r.open_datagram_socket("127.0.0.1", 0, Echo)


def test_a_run_in_hub_datagram_handler_answers_from_the_hub(reactor):
    class Fast(Connection):
        run_in_hub = True

        def receive_data(self, data):
            self.send_data(data[::-1])

    conn = reactor.open_datagram_socket("::1", 0, Fast)
    sock = udp_client(socket.AF_INET6)
    for word in (b"abc", b"hello"):
        sock.sendto(word, conn.get_sockname()[:2])
        assert sock.recvfrom(100)[0] == word[::-1]
    sock.close()
    conn.close_connection()


def test_a_datagram_over_the_udp_limit_is_refused_to_the_caller(reactor):
    errors = gevent.queue.Queue()

    class TooBig(Connection):
        def post_init(self):
            try:
                self.send_datagram(b"x" * 70000, "127.0.0.1", 9)
            except OSError as exc:
                errors.put(exc)

    conn = reactor.open_datagram_socket("127.0.0.1", 0, TooBig)
    exc = errors.get(timeout=5)
    assert exc.errno == errno.EMSGSIZE
    assert conn.connected  # the socket lives on
    conn.close_connection()
