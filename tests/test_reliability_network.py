"""Reliability of the network side (issue 5): backpressure, limits, leaks, bad input, logs."""
import os

import gevent
import gevent.event
import gevent.socket

from packet_gevent import Connection
from tests.conftest import client, recv_exactly, recv_until_closed, run_script, wait_for


def open_fds():
    return len(os.listdir("/proc/self/fd"))


class Producer(Connection):
    """Pushes ``total`` bytes, respecting pause_writing/resume_writing."""

    total = 256 * 1024 * 1024
    chunk = b"p" * 65536

    def post_init(self):
        self.sent = 0
        self.max_queued = 0
        self.paused = False

    def connection_completed(self):
        self.set_write_watermarks(high=256 * 1024, low=64 * 1024)
        self.produce()

    def produce(self):
        while not self.paused and self.sent < self.total and self.connected:
            self.send_data(self.chunk)
            self.sent += len(self.chunk)
            self.max_queued = max(self.max_queued, self.get_outbound_data_size())
        if self.sent >= self.total:
            self.close_connection_after_writing()

    def pause_writing(self):
        self.paused = True

    def resume_writing(self):
        self.paused = False
        self.produce()


def test_memory_bounded_by_watermark_when_client_reads_nothing(reactor):
    producers = []
    server = reactor.start_server("127.0.0.1", 0, Producer, producers.append)
    sock = client(server)
    wait_for(lambda: producers and producers[0].paused, message="producer paused by the watermark")
    gevent.sleep(0.2)  # the client still reads nothing: nothing more is queued
    producer = producers[0]
    assert producer.sent < 64 * 1024 * 1024  # it stopped long before 256 MiB
    assert producer.max_queued <= 256 * 1024 + 65536
    # Now read it all: the producer resumes each time the queue drains.
    total = 0
    with gevent.Timeout(60):
        while True:
            data = sock.recv(1 << 20)
            if not data:
                break
            total += len(data)
    assert total == Producer.total
    assert producer.max_queued <= 256 * 1024 + 65536


def test_ten_thousand_connect_disconnect_cycles_leave_no_fd_behind(reactor):
    unbinds = []

    class Counting(Connection):
        run_in_hub = False

        def receive_data(self, data):
            self.send_data(data)

        def unbind(self, reason=None):
            unbinds.append(1)

    server = reactor.start_server("127.0.0.1", 0, Counting)
    # Warm up lazily created fds (resolver, hub) before the baseline.
    s = client(server)
    s.close()
    wait_for(lambda: len(unbinds) == 1, message="warm-up unbind")
    baseline = open_fds()
    cycles = 10_000
    with gevent.Timeout(60, AssertionError("10,000 cycles did not finish in 60 s")):
        for i in range(cycles):
            s = gevent.socket.create_connection(("127.0.0.1", server.port))
            if i % 10 == 0:  # some talk first, some just vanish
                s.sendall(b"x")
                assert s.recv(1) == b"x"
            s.close()
    wait_for(lambda: len(unbinds) == cycles + 1, timeout=20, message="every unbind")
    assert server.connection_count == 0
    assert len(reactor.connections) == 0
    assert open_fds() == baseline


def test_oversized_object_from_client_gets_error_and_only_that_connection_closes(reactor):
    reasons = []

    class Objects(Connection):
        max_object_size = 1024

        def receive_object(self, obj):
            self.send_object({"ok": obj})

        def unbind(self, reason=None):
            reasons.append(reason)

    server = reactor.start_server("127.0.0.1", 0, Objects)
    good, bad = client(server), client(server)
    bad.sendall(b"%09d" % (10 * 1024 * 1024) + b"x" * 100)  # announces 10 MiB
    assert recv_until_closed(bad) == b""
    wait_for(lambda: reasons, message="unbind of the bad client")
    from packet_gevent import FrameError
    assert isinstance(reasons[0], FrameError)
    assert "1024" in str(reasons[0])
    good.sendall(b'000000002{}')
    reply = recv_exactly(good, 9 + len(b'{"ok":{}}'))
    assert reply.endswith(b'{"ok":{}}')


def test_malformed_frame_header_closes_connection_with_frame_error(reactor):
    reasons = []

    class Objects(Connection):
        def receive_object(self, obj):
            pass

        def unbind(self, reason=None):
            reasons.append(reason)

    server = reactor.start_server("127.0.0.1", 0, Objects)
    sock = client(server)
    sock.sendall(b"GET / HTTP/1.1\r\n\r\n")
    assert recv_until_closed(sock) == b""
    wait_for(lambda: reasons, message="unbind")
    assert "header" in str(reasons[0]).lower()


def test_vanished_client_mid_write_is_unbound_and_server_goes_on(reactor):
    reasons = []

    class Flood(Connection):
        def receive_data(self, data):
            self.send_data(b"f" * (8 * 1024 * 1024))

        def unbind(self, reason=None):
            reasons.append(reason)

    server = reactor.start_server("127.0.0.1", 0, Flood)
    sock = client(server)
    sock.sendall(b"go")
    sock.recv(1000)
    sock.setsockopt(gevent.socket.SOL_SOCKET, gevent.socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()  # RST: the peer vanished with data still queued for it
    wait_for(lambda: reasons, message="unbind after reset")
    other = client(server)
    other.sendall(b"go")
    assert len(recv_exactly(other, 8 * 1024 * 1024, timeout=20)) == 8 * 1024 * 1024


def test_full_disk_for_logs_does_not_stop_the_server(tmp_path):
    code = """
        import logging
        from gevent import socket   # a cooperative client in the same process as the reactor
        from packet_gevent import Connection, Reactor
        # Every log record goes to /dev/full: each write fails with ENOSPC.
        handler = logging.FileHandler("/dev/full")
        logging.getLogger().addHandler(handler)
        logging.getLogger().setLevel(logging.DEBUG)
        logging.raiseExceptions = False
        class Chatty(Connection):
            def receive_data(self, data):
                logging.getLogger("app").info("got %r", data)
                if data == b"boom":
                    raise RuntimeError("logged to a full disk")
                self.send_data(data)
        r = Reactor(); s = r.start_server("127.0.0.1", 0, Chatty); r.start()
        for i in range(3):
            c = socket.create_connection(("127.0.0.1", s.port), timeout=5)
            c.sendall(b"boom"); assert c.recv(10) == b""      # callback error: logged (fails), closed
            c = socket.create_connection(("127.0.0.1", s.port), timeout=5)
            c.sendall(b"ok%d" % i); assert c.recv(10) == b"ok%d" % i
        r.stop(timeout=2)
        print("served with a full log disk")
    """
    result = run_script(code, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "served with a full log disk" in result.stdout


def test_connect_timeout_reports_timeout_through_unbind(reactor):
    # A listener with a full backlog that never accepts: SYNs are dropped, so
    # connects hang until our timeout.
    import socket as stdsocket
    listener = stdsocket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(8):
        f = stdsocket.socket()
        f.setblocking(False)
        try:
            f.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        fillers.append(f)
    done = gevent.event.Event()

    class Waiting(Connection):
        def unbind(self, reason=None):
            self.reason = reason
            done.set()

    conn = reactor.connect("127.0.0.1", port, Waiting, connect_timeout=0.3)
    try:
        assert done.wait(10)
        assert isinstance(conn.reason, (TimeoutError, OSError))
    finally:
        for f in fillers:
            f.close()
        listener.close()


def test_max_outbound_size_closes_a_client_that_reads_nothing(reactor):
    from packet_gevent import OutboundOverflow
    reasons = []

    class Careless(Connection):
        max_outbound_size = 1024 * 1024

        def receive_data(self, data):
            for _ in range(200):  # ignores pause_writing: 200 x 64 KiB
                self.send_data(b"c" * 65536)

        def unbind(self, reason=None):
            reasons.append(reason)

    server = reactor.start_server("127.0.0.1", 0, Careless)
    sock = client(server)
    sock.sendall(b"go")
    wait_for(lambda: reasons, message="unbind")
    assert isinstance(reasons[0], OutboundOverflow)
    assert "max_outbound_size=1048576" in str(reasons[0])
