"""stream_file_data / send_file_data over real sockets: sendfile, TLS chunks, backpressure, errors."""
import os

import gevent
import gevent.event
import gevent.socket
import gevent.ssl
import pytest

from packet_gevent import Connection
from tests.conftest import recv_exactly, recv_until_closed


@pytest.fixture
def huge_file(tmp_path):
    """More than the loopback socket buffers of both sides hold (they autotune to a few MiB)."""
    path = tmp_path / "huge.bin"
    data = bytes(range(256)) * (32 * 4096)  # 32 MiB
    path.write_bytes(data)
    return path, data


def slow_client(port):
    sock = gevent.socket.socket(gevent.socket.AF_INET, gevent.socket.SOCK_STREAM)
    sock.setsockopt(gevent.socket.SOL_SOCKET, gevent.socket.SO_RCVBUF, 64 * 1024)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    return sock


@pytest.fixture
def big_file(tmp_path):
    path = tmp_path / "data.bin"
    data = os.urandom(3 * 1024 * 1024 + 123)
    path.write_bytes(data)
    return path, data


class Streamer(Connection):
    path = None
    results = None

    def connection_completed(self):
        self.sent_before = b"header\n"
        self.send_data(self.sent_before)
        self.results.put(self.stream_file_data(self.path, callback=self.done))
        self.max_queued = 0

    def done(self, outcome):
        self.outcome = outcome
        self.close_connection_after_writing()


def serve(reactor, host, path, **options):
    results = gevent.queue.Queue()
    handler = type("S", (Streamer,), {"path": path, "results": results})
    instances = []
    server = reactor.start_server(host, 0, handler, instances.append, **options)
    return server, results, instances


import gevent.queue  # noqa: E402


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_a_file_streams_whole_after_what_was_sent_before_with_sendfile(reactor, big_file, host, monkeypatch):
    path, data = big_file
    calls = []
    real_sendfile = os.sendfile
    monkeypatch.setattr(os, "sendfile", lambda *a: calls.append(a[3]) or real_sendfile(*a))
    server, results, instances = serve(reactor, host, path)
    sock = gevent.socket.create_connection((host, server.port), timeout=10)
    assert recv_until_closed(sock) == b"header\n" + data
    assert results.get(timeout=5).get(timeout=5) == len(data)
    assert instances[0].outcome == len(data)
    assert calls and max(calls) <= 256 * 1024  # the kernel copied it, in bounded chunks
    sock.close()


def test_a_peer_that_does_not_read_holds_back_the_stream(reactor, huge_file):
    path, data = huge_file
    server, results, instances = serve(reactor, "127.0.0.1", path)
    sock = slow_client(server.port)
    result = results.get(timeout=5)
    gevent.sleep(0.3)  # the stream runs into the full socket and must wait, not queue the file
    conn = instances[0]
    assert not result.ready()
    assert conn.get_outbound_data_size() <= 16 * 1024 + 256 * 1024  # low watermark + one chunk
    got = recv_until_closed(sock, timeout=20)
    assert len(got) == 7 + len(data) and got == b"header\n" + data
    assert result.get(timeout=5) == len(data)
    sock.close()


def test_tls_streams_in_read_chunks_and_offset_count_pick_a_slice(reactor, big_file, tls_contexts):
    path, data = big_file
    server_ctx, client_ctx = tls_contexts
    client_ctx.check_hostname = False
    server, results, _ = serve(reactor, "127.0.0.1", path, ssl_context=server_ctx)
    sock = gevent.ssl.SSLSocket(sock=gevent.socket.create_connection(("127.0.0.1", server.port), timeout=10),
                                _context=client_ctx)
    got = b""
    with gevent.Timeout(10):
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            got += chunk
    assert got == b"header\n" + data
    sock.close()

    class Slice(Connection):
        def connection_completed(self):
            self.stream_file_data(path, offset=1000, count=5000,
                                  callback=lambda n: self.close_connection_after_writing())

    server = reactor.start_server("127.0.0.1", 0, Slice)
    plain = gevent.socket.create_connection(("127.0.0.1", server.port), timeout=10)
    assert recv_until_closed(plain) == data[1000:6000]
    plain.close()


def test_peer_gone_mid_stream_fails_the_result_and_closes_the_file(reactor, huge_file):
    path, _ = huge_file
    server, results, instances = serve(reactor, "127.0.0.1", path)
    before = len(os.listdir("/proc/self/fd"))
    sock = slow_client(server.port)
    result = results.get(timeout=5)
    assert recv_exactly(sock, 1000)
    sock.close()
    with pytest.raises(OSError):  # ConnectionError (closed) or the socket's own error
        result.get(timeout=10)
    assert not hasattr(instances[0], "outcome")  # the callback is dropped with its connection
    with gevent.Timeout(5):
        while len(os.listdir("/proc/self/fd")) > before:
            gevent.sleep(0.01)


def test_a_missing_file_raises_at_once(reactor, tmp_path):
    errors = gevent.queue.Queue()

    class Missing(Connection):
        def connection_completed(self):
            try:
                self.send_file_data(tmp_path / "nope")
            except FileNotFoundError as exc:
                errors.put(exc)

    server = reactor.start_server("127.0.0.1", 0, Missing)
    sock = gevent.socket.create_connection(("127.0.0.1", server.port), timeout=10)
    assert isinstance(errors.get(timeout=5), FileNotFoundError)
    sock.close()
