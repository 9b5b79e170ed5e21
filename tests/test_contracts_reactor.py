"""EventMachine's run/stop contract on the core reactor: EM.run { EM.stop }, a failing setup,
calls scheduled after stop, periodic timers of 0 s."""
import socket
import time

import gevent
import gevent.event
import pytest

from packet_gevent import Connection, Reactor, ReactorError
from packet_gevent.net.reactor import Reactor as CoreReactor


class Quiet(Connection):
    pass


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("cls", [CoreReactor, Reactor])
def test_setup_that_stops_the_reactor_makes_run_return(cls):
    seen = []

    def setup(r):
        server = r.start_server("127.0.0.1", 0, Quiet)
        seen.append(server)
        r.stop()

    with gevent.Timeout(10):
        reactor = cls.run(setup)
    assert not reactor.running and reactor.wait(0)
    assert seen[0].listener.fileno() == -1   # closed by stop()
    with pytest.raises(ReactorError, match="runs once"):
        reactor.start()


def test_a_setup_that_raises_releases_its_listening_socket():
    port = _free_port()

    def setup(r):
        r.start_server("127.0.0.1", port, Quiet)
        raise RuntimeError("setup failed")

    for _ in range(2):   # the second run binds the same port again
        with pytest.raises(RuntimeError, match="setup failed"):
            CoreReactor.run(setup)
    with socket.create_server(("127.0.0.1", port)):   # free once more
        pass


def test_next_turn_and_timers_after_stop_are_dropped():
    r = CoreReactor().start()
    ran = []
    before = r.add_timer(0.05, ran.append, "timer before stop")
    r.stop(timeout=1)
    assert not before.active
    r.next_turn(ran.append, "next_turn")
    after = r.add_timer(0, ran.append, "timer")
    periodic = r.add_periodic_timer(0.001, ran.append, "periodic")
    assert not after.active and not periodic.active
    after.cancel()   # still a Timer: cancel is harmless
    gevent.sleep(0.1)
    assert ran == []


def test_periodic_timer_of_zero_seconds_runs_every_loop_turn():
    r = CoreReactor().start()
    try:
        done = gevent.event.Event()
        ticks = []

        def tick():
            ticks.append(1)
            if len(ticks) == 50:
                done.set()

        timer = r.add_periodic_timer(0, tick)
        assert done.wait(5)
        timer.cancel()
        count = len(ticks)
        gevent.sleep(0.05)
        assert len(ticks) == count and timer.fired == count
    finally:
        r.stop(timeout=1)


def test_negative_intervals_are_still_refused():
    r = CoreReactor()
    with pytest.raises(ValueError, match=">= 0"):
        r.add_periodic_timer(-1, lambda: None)


def _slow_triple(n):
    import time
    time.sleep(0.5)
    return n * 3


class Deferring(Connection):
    def receive_data(self, data):
        self.defer(_slow_triple, int(data), callback=self.answer)

    def answer(self, result):
        self.send_data(f"= {result}\n".encode())


def test_stop_waits_for_a_defer_in_flight_and_delivers_its_result():
    r = Reactor(pool_size=1).start()
    try:
        server = r.start_server("127.0.0.1", 0, Deferring)
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as client:
            client.sendall(b"7")
            with gevent.Timeout(5):   # the task is submitted before stop begins
                while not len(r.pool):
                    gevent.sleep(0.005)
            stopper = gevent.spawn(r.stop, 5.0)
            answer = _read_line(client)
            stopper.join(10)
        assert answer == "= 21\n"
    finally:
        r.stop(timeout=5)


def _read_line(sock):
    import gevent.socket
    buf = b""
    while not buf.endswith(b"\n"):
        gevent.socket.wait_read(sock.fileno(), timeout=10)
        chunk = sock.recv(100)
        if not chunk:
            break
        buf += chunk
    return buf.decode()


class Collect(Connection):
    instances = []

    def post_init(self):
        Collect.instances.append(self)
        self.ended = gevent.event.AsyncResult()

    def unbind(self, reason=None):
        self.ended.set(reason)


def _accepted(server_port, reactor):
    Collect.instances = []
    client = socket.create_connection(("127.0.0.1", server_port), timeout=10)
    with gevent.Timeout(5):
        while not Collect.instances:
            gevent.sleep(0.002)
    return client, Collect.instances[0]


def test_send_data_takes_bytes_like_and_str_and_refuses_the_rest_by_name():
    r = CoreReactor().start()
    try:
        server = r.start_server("127.0.0.1", 0, Collect)
        client, conn = _accepted(server.port, r)
        with client:
            with pytest.raises(TypeError, match=r"not int: 5; send str\(value\).encode\(\)"):
                conn.send_data(5)
            with pytest.raises(TypeError, match="not dict; encode it first"):
                conn.send_data({"a": 1})
            with pytest.raises(TypeError, match="not NoneType"):
                conn.send_data(None)
            import array
            conn.send_data(bytearray(b"ab"))
            conn.send_data(memoryview(b"cd"))
            conn.send_data(array.array("B", b"ef"))
            conn.send_data("é\n")             # str: UTF-8
            assert _read_line(client).encode() == b"abcdef\xc3\xa9\n"   # no NUL bytes before
            assert not conn.ended.ready()     # a refused send loses nothing and closes nothing
    finally:
        r.stop(timeout=1)


def test_idle_timeout_counts_sends_a_server_streaming_to_a_silent_client_is_not_idle():
    from packet_gevent import IdleTimeout
    r = CoreReactor(idle_timeout=0.3).start()
    try:
        server = r.start_server("127.0.0.1", 0, Collect)
        client, conn = _accepted(server.port, r)
        with client:
            ticks = []

            def tick():
                ticks.append(1)
                conn.send_data(b".")
                if len(ticks) == 16:          # 16 x 0.05 s = 0.8 s, well over idle_timeout
                    streaming.cancel()
            streaming = r.add_periodic_timer(0.05, tick)
            received = b""
            while len(received) < 16:
                received += _read_some(client)
            assert not conn.ended.ready()     # alive while it sent, though the client is silent
            assert isinstance(conn.ended.get(timeout=5), IdleTimeout)   # idle once it stops
    finally:
        r.stop(timeout=1)


def _read_some(sock):
    import gevent.socket
    gevent.socket.wait_read(sock.fileno(), timeout=10)
    return sock.recv(100)


def test_a_port_in_use_names_host_and_port_and_what_to_do():
    import errno
    from packet_gevent import AddressInUse
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        r = CoreReactor()
        with pytest.raises(AddressInUse) as info:
            r.start_server("127.0.0.1", port, Quiet)
    assert isinstance(info.value, OSError) and info.value.errno == errno.EADDRINUSE
    assert f"127.0.0.1:{port}" in str(info.value) and "port 0" in str(info.value)


@pytest.mark.timeout(10)
def test_unix_probe_of_a_live_server_with_a_full_backlog_does_not_block(tmp_path):
    from packet_gevent import AddressInUse
    path = str(tmp_path / "busy.sock")
    busy = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    busy.bind(path)
    busy.listen(0)                      # never accepts
    fillers = []
    try:
        for _ in range(64):             # fill its backlog until connects would block
            filler = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            filler.setblocking(False)
            fillers.append(filler)
            if filler.connect_ex(path) != 0:
                break
        else:
            pytest.fail("the backlog never filled")
        started = time.monotonic()
        with pytest.raises(AddressInUse, match="in use by a live server"):
            CoreReactor().start_unix_server(path, Quiet)
        assert time.monotonic() - started < 1.0
    finally:
        for filler in fillers:
            filler.close()
        busy.close()


def test_a_stale_unix_socket_file_is_replaced(tmp_path):
    path = str(tmp_path / "stale.sock")
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(path)
    dead.close()                        # the file stays, nobody listens
    r = CoreReactor().start()
    try:
        r.start_unix_server(path, Quiet)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.settimeout(5)
            client.connect(path)
    finally:
        r.stop(timeout=1)


def test_reconnect_from_outside_waits_for_a_blocked_unbind():
    events = []
    release = gevent.event.Event()
    completed_twice = gevent.event.Event()

    class Kicker(Connection):       # the server closes every connection at once
        def post_init(self):
            self.close_connection()

    class Client(Connection):
        def connection_completed(self):
            events.append("connection_completed")
            if events.count("connection_completed") == 2:
                completed_twice.set()

        def unbind(self, reason=None):
            events.append("unbind starts")
            if events.count("unbind starts") == 1:
                release.wait(5)
            events.append("unbind ends")

    r = CoreReactor().start()
    try:
        server = r.start_server("127.0.0.1", 0, Kicker)
        client = r.connect("127.0.0.1", server.port, Client)
        with gevent.Timeout(5):
            while "unbind starts" not in events:
                gevent.sleep(0.002)
        r.reconnect("127.0.0.1", server.port, client)   # while unbind is blocked
        gevent.sleep(0.05)          # a reconnect that did not wait would complete by now
        assert events == ["connection_completed", "unbind starts"]
        release.set()
        assert completed_twice.wait(5)
        assert events[:4] == ["connection_completed", "unbind starts", "unbind ends",
                              "connection_completed"]
    finally:
        r.stop(timeout=1)


@pytest.mark.parametrize("bad", [lambda: None, lambda a, b: None, 42])
def test_a_wrong_on_instance_is_refused_at_start_server_and_connect_naming_it(bad):
    r = CoreReactor()
    with pytest.raises(TypeError, match="on_instance") as info:
        r.start_server("127.0.0.1", 0, Quiet, on_instance=bad)
    assert "instance" in str(info.value) and "_pg_" not in str(info.value)
    assert r.servers == []                       # nothing was bound
    with pytest.raises(TypeError, match="on_instance"):
        r.connect("127.0.0.1", 9, Quiet, on_instance=bad)
    assert r.connections == {}


def test_start_worker_of_an_unknown_name_without_a_worker_directory_says_what_to_do():
    from packet_gevent import InvalidWorker
    r = Reactor()
    with pytest.raises(InvalidWorker) as info:
        r.start_worker("foo_worker")
    text = str(info.value)
    assert "'foo_worker'" in text and "no worker directory" in text
    assert "worker_root=DIR" in text and "start_worker(worker=TheWorkerClass)" in text
    assert "None: []" not in text
    r.stop(timeout=1)
