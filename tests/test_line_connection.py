"""LineConnection (EventMachine's LineText2) over real sockets on 127.0.0.1 and ::1."""
import socket

import gevent
import gevent.event
import gevent.queue
import gevent.socket
import pytest

from packet_gevent import LineConnection, LineText2, LineTooLong
from tests.conftest import recv_exactly, recv_until_closed

FAMILIES = [pytest.param("127.0.0.1", id="ipv4"), pytest.param("::1", id="ipv6")]


class Protocol(LineConnection):
    """Echoes lines as ``line: X``; ``DATA n`` reads an n-byte block; ``RAW`` switches to raw."""

    instances = []

    def post_init(self):
        self.unbound = gevent.event.AsyncResult()
        self.instances.append(self)

    def receive_line(self, line):
        if line.startswith(b"DATA "):
            self.set_binary_mode(int(line[5:]))
        elif line == b"RAW":
            self.set_raw_mode()
        else:
            self.send_data(b"line: " + line + b"\n")

    def receive_binary_data(self, data):
        if self.get_mode() == "raw":
            head, sep, rest = data.partition(b"|")
            self.send_data(b"raw: " + head + b"\n")
            if sep:
                self.set_line_mode(rest)  # the rest is lines again
        else:
            self.send_data(b"block %d: " % len(data) + data + b"\n")

    def receive_end_of_binary_data(self):
        self.send_data(b"end of block\n")

    def get_mode(self):
        return self._line_parser.mode

    def unbind(self, reason=None):
        self.unbound.set(reason)


def connect(server, host):
    return gevent.socket.create_connection((host, server.port), timeout=10)


def recv_lines(sock, count):
    f = sock.makefile("rb")
    try:
        with gevent.Timeout(10, AssertionError("lines did not come")):
            return [f.readline() for _ in range(count)]
    finally:
        f.close()


@pytest.mark.parametrize("host", FAMILIES)
def test_lines_cut_anywhere_arrive_whole_crlf_or_lf(reactor, host):
    server = reactor.start_server(host, 0, Protocol)
    sock = connect(server, host)
    for piece in (b"hel", b"lo\r", b"\nwor", b"ld\n\n"):
        sock.sendall(piece)
        gevent.sleep(0.01)  # let each piece go as its own segment
    assert recv_lines(sock, 3) == [b"line: hello\n", b"line: world\n", b"line: \n"]
    sock.close()


def test_binary_block_between_lines_even_with_delimiters_inside(reactor):
    server = reactor.start_server("127.0.0.1", 0, Protocol)
    sock = connect(server, "127.0.0.1")
    sock.sendall(b"DATA 8\nab\ncd\nefDATA 2\n")
    sock.sendall(b"xyafter\n")
    expected = (b"block 8: ab\ncd\nef\nend of block\n"
                b"block 2: xy\nend of block\nline: after\n")
    assert recv_exactly(sock, len(expected)) == expected
    sock.close()


def test_raw_mode_until_line_mode_with_the_rest_parsed_as_lines(reactor):
    server = reactor.start_server("127.0.0.1", 0, Protocol)
    sock = connect(server, "127.0.0.1")
    sock.sendall(b"RAW\n")
    sock.sendall(b"bytes\nwith\nnewlines|back\nagain\n")
    expected = b"raw: bytes\nwith\nnewlines\nline: back\nline: again\n"
    assert recv_exactly(sock, len(expected)) == expected
    sock.close()


class Limited(Protocol):
    max_line_length = 64
    delimiter = b"\r\n"


def test_line_over_the_limit_closes_that_connection_only_after_answering_earlier_lines(reactor):
    Protocol.instances = []
    server = reactor.start_server("127.0.0.1", 0, Limited)
    bad, good = connect(server, "127.0.0.1"), connect(server, "127.0.0.1")
    bad.sendall(b"first\r\n" + b"x" * 100)  # never ends
    assert recv_until_closed(bad) == b"line: first\n"
    by_port = {conn.get_peername()[1]: conn for conn in Protocol.instances}
    reason = by_port[bad.getsockname()[1]].unbound.get(timeout=5)
    assert isinstance(reason, LineTooLong) and "max_line_length" in str(reason)
    assert not by_port[good.getsockname()[1]].unbound.ready()
    good.sendall(b"still here\r\n")
    assert recv_lines(good, 1) == [b"line: still here\n"]
    good.close()
    bad.close()


def test_delimiter_can_change_mid_stream_and_lines_from_an_outgoing_connection(reactor):
    got = gevent.queue.Queue()

    class Client(LineText2):  # EventMachine's name for the same class
        delimiter = b"\x00"

        def receive_line(self, line):
            got.put(line)
            if line == b"switch":
                self.set_delimiter(b";")

    listener = gevent.socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    listener.bind(("::1", 0))
    listener.listen(1)
    conn = reactor.connect("::1", listener.getsockname()[1], Client)
    peer, _ = listener.accept()
    peer.sendall(b"a\x00switch\x00b;c;")
    with gevent.Timeout(5):
        assert [got.get() for _ in range(4)] == [b"a", b"switch", b"b", b"c"]
    assert conn.get_peername()[0] == "::1"
    conn.close_connection()
    peer.close()
    listener.close()


def test_a_run_in_hub_line_handler(reactor):
    class Fast(LineConnection):
        run_in_hub = True

        def receive_line(self, line):
            self.send_data(line.upper() + b"\n")

    server = reactor.start_server("127.0.0.1", 0, Fast)
    sock = connect(server, "127.0.0.1")
    sock.sendall(b"one\ntw")
    sock.sendall(b"o\n")
    assert recv_exactly(sock, 8) == b"ONE\nTWO\n"
    sock.close()


def test_a_connection_ending_mid_block_hands_over_the_partial_block_before_unbind(reactor):
    events = []

    class Recorder(LineConnection):
        created = gevent.event.AsyncResult()

        def post_init(self):
            self.unbound = gevent.event.AsyncResult()
            Recorder.created.set(self)

        def receive_line(self, line):
            events.append(("line", line))
            if line.startswith(b"DATA "):
                self.set_binary_mode(int(line[5:]))

        def receive_binary_data(self, data):
            events.append(("binary", data))

        def receive_end_of_binary_data(self):
            events.append(("end",))

        def unbind(self, reason=None):
            events.append(("unbind", reason))
            self.unbound.set(reason)

    server = reactor.start_server("127.0.0.1", 0, Recorder)
    sock = connect(server, "127.0.0.1")
    sock.sendall(b"DATA 3\nabcDATA 10\nhalf\nof")  # one whole block, then 7 of 10 bytes
    sock.close()
    assert Recorder.created.get(timeout=5).unbound.get(timeout=5) is None
    assert events == [("line", b"DATA 3"), ("binary", b"abc"), ("end",), ("line", b"DATA 10"),
                      ("binary", b"half\nof"), ("unbind", None)]

