"""The WSGI server over real sockets: http.client (in a real thread) and raw gevent sockets.

The server runs in this process, on the hub.  Blocking stdlib clients run in
gevent's threadpool (real OS threads), so they never block the hub; raw
malformed requests use cooperative gevent sockets.
"""
import hashlib
import http.client
import os
import socket

import gevent
import gevent.event
import gevent.socket
import pytest

from packet_gevent import Reactor
from packet_gevent.http import Limits, WSGIServer
from packet_gevent.http import body as body_module
from tests.conftest import recv_until_closed

BACKENDS = ["httptools", "h11"]


def fd_count():
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def make_server():
    """make_server(app, **options) -> WSGIServer on a fresh reactor; stopped at teardown,
    with no file descriptor left behind."""
    in_thread(lambda: None)  # the hub's threadpool opens its own fds on first use
    before = fd_count()
    reactors = []

    def make(app, **options):
        reactor = Reactor(stop_grace=2.0)
        reactors.append(reactor)
        server = WSGIServer(app, "127.0.0.1", 0, reactor=reactor, **options)
        return server.start()

    yield make
    for reactor in reactors:
        reactor.stop(timeout=2.0)
    gevent.sleep(0)
    assert fd_count() <= before, "the server left file descriptors open"


def in_thread(fn, *args):
    """Run a blocking client function in a real thread; wait for it cooperatively."""
    return gevent.get_hub().threadpool.spawn(fn, *args).get(timeout=20)


def echo_app(environ, start_response):
    body = environ["wsgi.input"].read()
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("X-Path", environ["PATH_INFO"]),
                              ("X-Port", environ.get("REMOTE_PORT", ""))])
    return [b"%s %s %d %s" % (environ["REQUEST_METHOD"].encode(), environ["PATH_INFO"].encode(),
                              len(body), hashlib.sha1(body).hexdigest().encode())]


def raw(server, timeout=10.0):
    return gevent.socket.create_connection(("127.0.0.1", server.port), timeout=timeout)


def read_response(sock, buf=b""):
    """Read one response (Content-Length framed) from a raw socket: (head, body, rest)."""
    with gevent.Timeout(10, AssertionError("no complete response")):
        while b"\r\n\r\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                raise AssertionError(f"connection closed; got {buf!r}")
            buf += chunk
        head, _, rest = buf.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        while len(rest) < length:
            chunk = sock.recv(65536)
            if not chunk:
                raise AssertionError("connection closed mid-body")
            rest += chunk
    return head.decode("latin-1"), rest[:length], rest[length:]


def status_of(head):
    return int(head.split(" ", 2)[1])


def assert_alive(server):
    """The server still answers a fresh client."""
    sock = raw(server)
    try:
        sock.sendall(b"GET /alive HTTP/1.1\r\nHost: t\r\n\r\n")
        head, body, _ = read_response(sock)
        assert status_of(head) == 200, head
    finally:
        sock.close()


# -- the basics, with http.client --------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_keep_alive_serves_many_requests_on_one_connection(make_server, backend):
    server = make_server(echo_app, backend=backend)

    def client():
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        ports = set()
        bodies = []
        for i in range(5):
            conn.request("POST", f"/r{i}", body=b"x" * i)
            response = conn.getresponse()
            bodies.append(response.read())
            ports.add(response.getheader("X-Port"))
        conn.close()
        return ports, bodies

    ports, bodies = in_thread(client)
    assert len(ports) == 1  # one TCP connection carried all five
    assert [b.split()[:3] for b in bodies] == [[b"POST", b"/r%d" % i, b"%d" % i] for i in range(5)]


@pytest.mark.parametrize("backend", BACKENDS)
def test_pipelined_requests_are_answered_in_order(make_server, backend):
    def slow_first(environ, start_response):
        if environ["PATH_INFO"] == "/1":
            gevent.sleep(0.05)  # the app may block; later answers must still come after
        return echo_app(environ, start_response)

    server = make_server(slow_first, backend=backend)
    sock = raw(server)
    sock.sendall(b"GET /1 HTTP/1.1\r\nHost: t\r\n\r\n"
                 b"POST /2 HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc"
                 b"GET /3 HTTP/1.1\r\nHost: t\r\n\r\n")
    rest = b""
    paths = []
    for _ in range(3):
        head, body, rest = read_response(sock, rest)
        paths.append(body.split()[1])
    assert paths == [b"/1", b"/2", b"/3"]
    sock.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_chunked_upload(make_server, backend):
    server = make_server(echo_app, backend=backend)
    data = os.urandom(300_000)

    def client():
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        pieces = (data[i:i + 10_000] for i in range(0, len(data), 10_000))
        conn.request("PUT", "/up", body=pieces, encode_chunked=True,
                     headers={"Transfer-Encoding": "chunked"})
        response = conn.getresponse()
        result = response.status, response.read()
        conn.close()
        return result

    status, body = in_thread(client)
    assert status == 200
    assert body == b"PUT /up %d %s" % (len(data), hashlib.sha1(data).hexdigest().encode())


def test_chunked_response_and_http10_close(make_server):
    def stream(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return (b"part%d;" % i for i in range(100))

    server = make_server(stream)

    def client():
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        conn.request("GET", "/")
        response = conn.getresponse()
        result = response.getheader("Transfer-Encoding"), response.read()
        conn.close()
        return result

    encoding, body = in_thread(client)
    assert encoding == "chunked"
    assert body == b"".join(b"part%d;" % i for i in range(100))
    # HTTP/1.0: no chunked encoding; the end of the body is the close.
    sock = raw(server)
    sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
    answer = recv_until_closed(sock)
    assert b"Transfer-Encoding" not in answer and b"Connection: close" in answer
    assert answer.endswith(b"part99;")
    sock.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_expect_100_continue(make_server, backend):
    server = make_server(echo_app, backend=backend)
    sock = raw(server)
    sock.sendall(b"POST /c HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
    with gevent.Timeout(5, AssertionError("no 100 Continue")):
        interim = sock.recv(100)
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    sock.sendall(b"hello")
    head, body, _ = read_response(sock)
    assert status_of(head) == 200 and body.startswith(b"POST /c 5 ")
    sock.close()


def test_expect_100_continue_refused_by_limit_sends_no_continue(make_server):
    server = make_server(echo_app, limits=Limits(max_body_size=10))
    sock = raw(server)
    sock.sendall(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 11\r\nExpect: 100-continue\r\n\r\n")
    answer = recv_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 413 ") and b"100 Continue" not in answer
    sock.close()


def test_head_has_headers_and_no_body(make_server):
    server = make_server(echo_app)

    def client():
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        conn.request("HEAD", "/h")
        response = conn.getresponse()
        result = response.status, response.getheader("Content-Length"), response.read()
        conn.request("GET", "/g")  # the connection is still in sync
        second = conn.getresponse().read()
        conn.close()
        return result, second

    (status, length, body), second = in_thread(client)
    assert status == 200 and int(length) > 0 and body == b""
    assert second.startswith(b"GET /g 0 ")


def test_file_wrapper_uses_sendfile(make_server, tmp_path, monkeypatch):
    path = tmp_path / "blob"
    data = os.urandom(2_000_000)
    path.write_bytes(data)
    calls = []
    real_sendfile = os.sendfile

    def counting_sendfile(*args):
        calls.append(args[3])
        return real_sendfile(*args)

    monkeypatch.setattr(body_module.os, "sendfile", counting_sendfile)

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return environ["wsgi.file_wrapper"](open(path, "rb"))

    server = make_server(app)

    def client():
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        conn.request("GET", "/f")
        response = conn.getresponse()
        result = response.getheader("Content-Length"), response.read()
        conn.close()
        return result

    length, body = in_thread(client)
    assert int(length) == len(data) and body == data
    assert calls, "os.sendfile was not used for a regular file"


# -- bounded memory: streaming both ways -----------------------------------------------

def test_large_upload_is_not_read_before_the_app_asks(make_server):
    first_piece = gevent.event.Event()
    go_on = gevent.event.Event()
    result = {}

    def app(environ, start_response):
        stream = environ["wsgi.input"]
        digest = hashlib.sha1()
        piece = stream.read(65536)
        digest.update(piece)
        first_piece.set()
        go_on.wait(10)
        total = len(piece)
        while True:
            piece = stream.read(65536)
            if not piece:
                break
            total += len(piece)
            digest.update(piece)
        result["total"], result["sha1"] = total, digest.hexdigest()
        start_response("200 OK", [])
        return [b"ok"]

    server = make_server(app, limits=Limits(max_body_size=None))
    size = 64 * 1024 * 1024
    block = os.urandom(1024 * 1024)
    sock = raw(server)
    sock.sendall(b"POST /big HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % size + block)
    sent = len(block)
    sock.setblocking(False)
    with gevent.Timeout(10, AssertionError("the app never got the first piece")):
        first_piece.wait()
    # The app holds its body: the server must not read it, so the client's
    # sends stall once the kernel buffers are full, far below 64 MiB.
    stalled = False
    for _ in range(200):
        try:
            sent += sock.send(block)
        except BlockingIOError:
            stalled = True
            break
    assert stalled and sent < size // 4, f"server read ahead: the client pushed {sent} bytes"
    go_on.set()
    sock.setblocking(True)
    sock.settimeout(20)
    remaining = size - sent
    while remaining:
        n = min(len(block), remaining)
        sock.sendall(block[:n])
        remaining -= n
    head, body, _ = read_response(sock)
    assert status_of(head) == 200 and result["total"] == size
    sock.close()


def test_large_download_follows_the_reader(make_server):
    produced = [0]
    chunk = b"x" * 65536
    total_chunks = 1024  # 64 MiB

    def app(environ, start_response):
        start_response("200 OK", [("Content-Length", str(len(chunk) * total_chunks))])

        def body():
            for _ in range(total_chunks):
                produced[0] += 1
                yield chunk
        return body()

    server = make_server(app)
    sock = raw(server)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    sock.sendall(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n")
    with gevent.Timeout(10, AssertionError("no first byte")):
        received = sock.recv(1)
    # The client reads nothing more: the app's iterator must stop advancing.
    with gevent.Timeout(10, AssertionError("the producer never paused")):
        while True:
            before = produced[0]
            gevent.sleep(0.05)
            if produced[0] == before:
                break
    assert produced[0] * len(chunk) < 16 * 1024 * 1024, \
        f"{produced[0]} chunks produced for a client that reads nothing"
    with gevent.Timeout(10, AssertionError("no response head")):
        while b"\r\n\r\n" not in received:
            received += sock.recv(4096)
    body_size = len(received.partition(b"\r\n\r\n")[2])
    with gevent.Timeout(20, AssertionError("download did not finish")):
        while body_size < len(chunk) * total_chunks:
            data = sock.recv(1 << 20)
            assert data, "connection closed before the whole body"
            body_size += len(data)
    assert body_size == len(chunk) * total_chunks and produced[0] == total_chunks
    sock.close()


def test_a_streaming_app_stops_when_its_client_goes(make_server):
    produced = [0]
    stopped = gevent.event.Event()

    def app(environ, start_response):
        start_response("200 OK", [])

        def endless():
            try:
                while produced[0] < 100_000:  # bounded; the client leaves long before
                    produced[0] += 1
                    yield b"y" * 65536
            finally:
                stopped.set()
        return endless()

    server = make_server(app)
    sock = raw(server)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    sock.recv(65536)
    sock.close()
    with gevent.Timeout(10, AssertionError("the generator was never closed")):
        stopped.wait()
    assert produced[0] < 1000
    assert_alive(server)


# -- limits and bad input ----------------------------------------------------------------

LIMITS = Limits(max_request_line=200, max_header_size=1000, max_header_count=10, max_body_size=1000)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("request_bytes, status", [
    (b"GET /" + b"a" * 300 + b" HTTP/1.1\r\nHost: t\r\n\r\n", 414),
    (b"GET / HTTP/1.1\r\nHost: t\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(20)) + b"\r\n", 431),
    (b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: " + b"v" * 2000 + b"\r\n\r\n", 431),
    (b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 1001\r\n\r\n", 413),
    (b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
     + b"100\r\n" + b"z" * 256 + b"\r\n" + b"100\r\n" + b"z" * 256 + b"\r\n" * 1
     + b"100\r\n" + b"z" * 256 + b"\r\n" + b"100\r\n" + b"z" * 256 + b"\r\n0\r\n\r\n", 413),
    (b"GET / HTTP/1.1\r\nHost: t\r\nX: a\r\n folded\r\n\r\n", 400),
    (b"GET / HTTP/1.1\nHost: t\n\n", 400),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 tls hello\r\n\r\n", 400),
    (b"GET / HTTP/2.0\r\nHost: t\r\n\r\n", 505),
])
def test_limits_and_malformed_requests_get_their_status_and_close(make_server, backend,
                                                                  request_bytes, status):
    server = make_server(echo_app, backend=backend, limits=LIMITS)
    sock = raw(server)
    sock.sendall(request_bytes)
    answer = recv_until_closed(sock)  # closed after the answer
    sock.close()
    head = answer.split(b"\r\n\r\n")[0].decode("latin-1")
    assert status_of(head) == status, answer[:200]
    assert "Connection: close" in head
    assert_alive(server)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("attack", [
    # CL.TE: a front end using Content-Length would forward the smuggled request as body.
    b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 44\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n",
    # Two Content-Length values.
    b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nContent-Length: 38\r\n\r\n"
    b"GET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n",
    # The same value twice (h11 would merge them).
    b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n"
    b"GET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n",
    # Transfer-Encoding hidden behind obs-fold.
    b"POST / HTTP/1.1\r\nHost: t\r\nX: y\r\n Transfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n"
    b"GET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n",
    # A Transfer-Encoding we do not implement.
    b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: xchunked\r\n\r\n"
    b"GET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n",
])
def test_smuggling_attempts_are_refused(make_server, backend, attack):
    seen = []

    def app(environ, start_response):
        seen.append(environ["PATH_INFO"])
        return echo_app(environ, start_response)

    server = make_server(app, backend=backend)
    sock = raw(server)
    sock.sendall(attack)
    answer = recv_until_closed(sock)
    sock.close()
    assert answer.startswith((b"HTTP/1.1 400 ", b"HTTP/1.1 501 ")), answer[:200]
    assert answer.count(b"HTTP/1.1") == 1 and "/smuggled" not in seen and "/" not in seen
    assert_alive(server)


def test_a_bad_request_does_not_disturb_another_connection(make_server):
    server = make_server(echo_app)
    good = raw(server)
    good.sendall(b"GET /a HTTP/1.1\r\nHost: t\r\n\r\n")
    read_response(good)
    bad = raw(server)
    bad.sendall(b"NOT HTTP AT ALL\r\n\r\n")
    assert recv_until_closed(bad).startswith(b"HTTP/1.1 400 ")
    bad.close()
    good.sendall(b"GET /b HTTP/1.1\r\nHost: t\r\n\r\n")
    head, body, _ = read_response(good)
    assert body.startswith(b"GET /b ")
    good.close()


def test_app_errors_answer_500_or_cut_the_response(make_server):
    def app(environ, start_response):
        if environ["PATH_INFO"] == "/early":
            raise RuntimeError("boom")
        start_response("200 OK", [])

        def body():
            yield b"partial"
            raise RuntimeError("late boom")
        return body()

    server = make_server(app)
    sock = raw(server)
    sock.sendall(b"GET /early HTTP/1.1\r\nHost: t\r\n\r\n")
    answer = recv_until_closed(sock)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 500 ") and b"Connection: close" in answer
    sock = raw(server)
    sock.sendall(b"GET /late HTTP/1.1\r\nHost: t\r\n\r\n")
    answer = recv_until_closed(sock)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 200 ") and not answer.endswith(b"0\r\n\r\n")
    assert_alive(server)


# -- timeouts and the connection cap ------------------------------------------------------

def test_slowloris_is_cut_by_the_header_timeout(make_server):
    server = make_server(echo_app, header_timeout=0.5, keepalive_timeout=5)
    sock = raw(server)
    started = gevent.get_hub().loop.now()
    closed = gevent.event.Event()
    answer = []

    def reader():
        answer.append(recv_until_closed(sock, timeout=5))
        closed.set()

    gevent.spawn(reader)
    try:
        _trickle(sock, closed)
        closed.wait(5)
        elapsed = gevent.get_hub().loop.now() - started
    finally:
        sock.close()
    assert answer and answer[0].startswith(b"HTTP/1.1 408 "), answer
    # cut by the 0.5 s header timeout, long before the 16 s trickle would end
    # (the margin is for a loaded machine)
    assert elapsed < 4.0
    assert_alive(server)


def _trickle(sock, closed):
    trickle = b"GET / HTTP/1.1\r\nHost: t\r\n" + b"X-A: b\r\n" * 100
    for byte in trickle:  # one byte every 20 ms keeps any idle timeout at bay
        if closed.is_set():
            break
        try:
            sock.send(bytes([byte]))
        except OSError:
            break
        gevent.sleep(0.02)


def test_idle_keep_alive_connection_is_closed(make_server):
    server = make_server(echo_app, keepalive_timeout=0.3)
    sock = raw(server)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    _, _, rest = read_response(sock)
    assert recv_until_closed(sock, timeout=3) == rest == b""
    sock.close()


def test_trickling_body_is_cut_by_the_body_timeout(make_server):
    server = make_server(echo_app, body_timeout=0.3)
    sock = raw(server)
    sock.sendall(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nab")
    answer = recv_until_closed(sock, timeout=5)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 408 ")


def test_a_body_that_trickles_is_cut_by_min_body_rate(make_server):
    server = make_server(echo_app, body_timeout=0.3, min_body_rate=1000)
    sock = raw(server)
    sock.sendall(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n")
    answer = []

    def reader():
        answer.append(recv_until_closed(sock, timeout=5))

    reading = gevent.spawn(reader)
    for _ in range(100):  # 10 bytes every 50 ms: no read waits 0.3 s, but 200 B/s
        if reading.dead:
            break
        try:
            sock.send(b"x" * 10)
        except OSError:
            break
        gevent.sleep(0.05)
    reading.join(5)
    sock.close()
    assert answer and answer[0].startswith(b"HTTP/1.1 408 "), answer


def test_access_log(make_server, caplog):
    server = make_server(echo_app, access_log=True)
    with caplog.at_level("INFO", logger="packet_gevent.http.access"):
        sock = raw(server)
        sock.sendall(b"GET /logged?q=1 HTTP/1.1\r\nHost: t\r\n\r\n")
        read_response(sock)
        sock.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "packet_gevent.http.access"]
    assert len(lines) == 1 and '"GET /logged?q=1 HTTP/1.1" 200' in lines[0]


def test_max_connections_holds_extra_clients_in_the_backlog(make_server):
    server = make_server(echo_app, max_connections=2)
    first, second = raw(server), raw(server)
    for sock in (first, second):
        sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        read_response(sock)
    third = raw(server)  # connects (kernel backlog) but is not served yet
    third.sendall(b"GET /third HTTP/1.1\r\nHost: t\r\n\r\n")
    third.settimeout(0.3)
    with pytest.raises(socket.timeout):
        third.recv(1)
    third.settimeout(10)
    first.close()  # a slot frees: the third is accepted and answered
    head, body, _ = read_response(third)
    assert body.startswith(b"GET /third ")
    for sock in (second, third):
        sock.close()


def test_client_gone_mid_body_does_not_kill_the_server(make_server):
    server = make_server(echo_app)
    sock = raw(server)
    sock.sendall(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n" + b"a" * 1000)
    sock.close()
    assert_alive(server)


def test_unread_body_is_drained_and_the_next_pipelined_request_answered(make_server):
    def ignores_body(environ, start_response):
        start_response("200 OK", [("X-Path", environ["PATH_INFO"])])
        return [environ["PATH_INFO"].encode()]

    server = make_server(ignores_body)
    sock = raw(server)
    sock.sendall(b"POST /1 HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\n\r\n" + b"b" * 5000
                 + b"GET /2 HTTP/1.1\r\nHost: t\r\n\r\n")
    _, first, rest = read_response(sock)
    _, second, _ = read_response(sock, rest)
    assert (first, second) == (b"/1", b"/2")
    sock.close()


def test_an_unread_body_over_max_discard_closes_after_the_answer(make_server):
    def ignores_body(environ, start_response):
        start_response("200 OK", [])
        return [b"ignored"]

    server = make_server(ignores_body, max_discard=1000)
    sock = raw(server)
    sock.sendall(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n" + b"b" * 20000)
    answer = recv_until_closed(sock)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"ignored")


def test_head_of_a_file_gives_its_length_without_reading_it(make_server, tmp_path, monkeypatch):
    path = tmp_path / "blob"
    path.write_bytes(b"z" * 12345)
    monkeypatch.setattr(body_module.os, "sendfile", None)  # calling it would fail the request

    def app(environ, start_response):
        start_response("200 OK", [])
        if environ["PATH_INFO"] == "/f":
            return environ["wsgi.file_wrapper"](open(path, "rb"))
        return [b"other"]

    server = make_server(app)
    sock = raw(server)
    sock.sendall(b"HEAD /f HTTP/1.1\r\nHost: t\r\n\r\nGET /other HTTP/1.1\r\nHost: t\r\n"
                 b"Connection: close\r\n\r\n")
    answer = recv_until_closed(sock)
    sock.close()
    head, _, rest = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and b"Content-Length: 12345" in head
    assert rest.startswith(b"HTTP/1.1 200 ") and rest.endswith(b"\r\n\r\nother")


def test_serves_ipv6_loopback():
    reactor = Reactor(stop_grace=1.0)
    server = WSGIServer(echo_app, "::1", 0, reactor=reactor).start()
    try:
        sock = gevent.socket.create_connection(("::1", server.port), timeout=10)
        sock.sendall(b"GET /six HTTP/1.1\r\nHost: t\r\n\r\n")
        head, body, _ = read_response(sock)
        sock.close()
        assert status_of(head) == 200 and body.startswith(b"GET /six ")
    finally:
        reactor.stop(timeout=1.0)


def test_a_stop_lets_requests_in_flight_finish_with_connection_close():
    release = gevent.event.Event()
    entered = gevent.event.Event()

    def waits(environ, start_response):
        entered.set()
        release.wait(10)
        start_response("200 OK", [])
        return [b"finished"]

    reactor = Reactor(stop_grace=5.0)
    server = WSGIServer(waits, "127.0.0.1", 0, reactor=reactor).start()
    sock = raw(server)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    with gevent.Timeout(10, AssertionError("the request never reached the app")):
        entered.wait()
    stopping = gevent.spawn(server.stop)
    gevent.sleep(0)  # the stop has begun: nothing accepts any more
    with pytest.raises(ConnectionRefusedError):
        gevent.socket.create_connection(("127.0.0.1", server.port), timeout=5)
    release.set()
    answer = recv_until_closed(sock)
    sock.close()
    stopping.join(10)
    assert answer.startswith(b"HTTP/1.1 200 ") and b"Connection: close" in answer
    assert answer.endswith(b"finished") and not reactor.running


def test_under_monkey_patching_blocking_apps_and_clients_cooperate():
    from tests.conftest import run_script
    result = run_script("""
        from gevent import monkey; monkey.patch_all()
        import http.client, time
        import gevent
        from packet_gevent.http import WSGIServer

        def app(environ, start_response):
            time.sleep(0.2)   # patched: only this connection waits
            start_response("200 OK", [])
            return [environ["PATH_INFO"].encode()]

        server = WSGIServer(app, "127.0.0.1", 0).start()

        def get(path):
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
            conn.request("GET", path)
            body = conn.getresponse().read()
            conn.close()
            return body

        started = time.monotonic()
        jobs = [gevent.spawn(get, "/%d" % i) for i in range(10)]
        gevent.joinall(jobs, timeout=10, raise_error=True)
        elapsed = time.monotonic() - started
        server.stop(2)
        print(sorted(job.value for job in jobs) == [b"/%d" % i for i in range(10)], elapsed < 1.5)
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "True"], result.stdout + result.stderr


def test_accepted_sockets_have_tcp_nodelay(make_server):
    def app(environ, start_response):
        sock = environ["packet_gevent.connection"]._transport.sock
        start_response("200 OK", [])
        return [b"%d" % sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)]

    server = make_server(app)
    sock = raw(server)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    _, body, _ = read_response(sock)
    sock.close()
    assert body == b"1"


def test_garbage_after_a_body_read_by_the_app_fails_only_what_follows(make_server):
    first_part = gevent.event.Event()

    def app(environ, start_response):
        stream = environ["wsgi.input"]
        head = stream.read(5)
        first_part.set()
        rest = stream.read()  # arrives with garbage behind it, in one piece
        start_response("200 OK", [])
        return [head + rest]

    server = make_server(app)
    sock = raw(server)
    sock.sendall(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nhello")
    with gevent.Timeout(10, AssertionError("the app never read the first part")):
        first_part.wait()
    sock.sendall(b"world" + b"\x00garbage\r\n\r\n")
    answer = recv_until_closed(sock)
    sock.close()
    first, _, second = answer.partition(b"helloworld")
    assert first.startswith(b"HTTP/1.1 200 "), answer
    assert second.startswith(b"HTTP/1.1 400 "), answer
