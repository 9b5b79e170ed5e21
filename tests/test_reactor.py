"""Reactor and Connection over real loopback sockets (issue 2)."""
import logging
import socket
import threading

import gevent
import gevent.event
import gevent.socket

from packet_gevent import Connection, Reactor
from tests.conftest import client, recv_exactly, recv_until_closed, run_script, wait_for


class Recorder(Connection):
    """Records every callback, in order."""

    def post_init(self):
        self.events = ["post_init"]
        self.done = gevent.event.Event()

    def connection_completed(self):
        self.events.append("connection_completed")

    def receive_data(self, data):
        self.events.append(("data", data))
        self.send_data(data)

    def unbind(self, reason=None):
        self.events.append(("unbind", reason))
        self.done.set()


class QuietRecorder(Recorder):
    """Records like Recorder but does not echo (for the client side)."""

    events = ()  # until post_init runs on the next loop turn

    def receive_data(self, data):
        self.events.append(("data", data))


def test_callback_order_for_accepted_connection(reactor):
    instances = []

    def on_instance(conn):
        conn.events.append("on_instance")
        instances.append(conn)

    server = reactor.start_server("127.0.0.1", 0, Recorder, on_instance)
    assert server.port > 0
    sock = client(server)
    sock.sendall(b"hello")
    assert recv_exactly(sock, 5) == b"hello"
    sock.close()
    wait_for(lambda: instances, message="an instance")
    assert instances[0].done.wait(5)
    assert instances[0].events == ["post_init", "on_instance", "connection_completed",
                                   ("data", b"hello"), ("unbind", None)]


def test_callback_order_for_outgoing_connection(reactor):
    server = reactor.start_server("127.0.0.1", 0, Recorder)
    seen = []
    conn = reactor.connect("127.0.0.1", server.port, QuietRecorder,
                           on_instance=lambda c: c.events.append("on_instance"))
    assert isinstance(conn, QuietRecorder)
    conn.add_timer(0.05, lambda: (seen.append("sent"), conn.send_data(b"ping")))
    wait_for(lambda: ("data", b"ping") in getattr(conn, "events", []), message="echo back")
    conn.close_connection()
    assert conn.done.wait(5)
    assert conn.events == ["post_init", "on_instance", "connection_completed",
                           ("data", b"ping"), ("unbind", None)]
    assert conn.get_peername()[1] == server.port


def test_plain_class_handler_is_mixed_in_packet_style(reactor):
    class Echo:  # a Packet user's plain class
        def receive_data(self, data):
            self.send_data(data.upper())

    server = reactor.start_server("127.0.0.1", 0, Echo)
    sock = client(server)
    sock.sendall(b"abc")
    assert recv_exactly(sock, 3) == b"ABC"
    sock.close()


def test_big_send_data_returns_at_once_and_arrives_intact_to_slow_reader(reactor):
    payload = bytes(range(256)) * (5 * 1024 * 1024 // 256)  # 5 MiB
    report = {}

    class Pusher(Connection):
        def connection_completed(self):
            self.send_data(payload)
            report["queued_after_send"] = self.get_outbound_data_size()
            self.close_connection_after_writing()

    server = reactor.start_server("127.0.0.1", 0, Pusher)
    sock = client(server)
    wait_for(lambda: "queued_after_send" in report, message="send_data to return")
    # send_data returned while bytes were still queued in user space: it did
    # not wait for the slow reader.
    assert report["queued_after_send"] > 0
    received = []
    total = 0
    with gevent.Timeout(20):
        while True:
            chunk = sock.recv(4096)  # a slow reader: small reads, with pauses
            if not chunk:
                break
            if len(received) % 64 == 0:
                gevent.sleep(0.001)
            received.append(chunk)
            total += len(chunk)
    assert total == len(payload)
    assert b"".join(received) == payload


def test_close_connection_after_writing_delivers_everything(reactor):
    class Writer(Connection):
        def receive_data(self, data):
            for i in range(1000):
                self.send_data(b"line %04d\n" % i)
            self.close_connection_after_writing()
            self.send_data(b"dropped after close request\n")

    server = reactor.start_server("127.0.0.1", 0, Writer)
    sock = client(server)
    sock.sendall(b"go")
    data = recv_until_closed(sock)
    assert data == b"".join(b"line %04d\n" % i for i in range(1000))


def test_unbind_called_once_and_send_after_close_is_dropped(reactor, caplog):
    unbinds = []
    closed = gevent.event.Event()

    class Closer(Connection):
        def receive_data(self, data):
            self.close_connection()
            self.send_data(b"too late")  # dropped with a debug log, no exception
            self.close_connection()

        def unbind(self):  # Packet style: no reason argument
            unbinds.append(self.signature)
            closed.set()

    server = reactor.start_server("127.0.0.1", 0, Closer)
    with caplog.at_level(logging.DEBUG, logger="packet_gevent"):
        sock = client(server)
        sock.sendall(b"x")
        assert recv_until_closed(sock) == b""
        assert closed.wait(5)
    gevent.sleep(0.05)
    assert len(unbinds) == 1
    assert any("dropped" in r.getMessage() for r in caplog.records)


def test_exception_in_callback_is_logged_and_ends_only_that_connection(reactor, caplog):
    class Fragile(Connection):
        def receive_data(self, data):
            if data.startswith(b"boom"):
                raise RuntimeError("handler bug")
            self.send_data(data)

        def unbind(self, reason=None):
            self.reason = reason

    instances = []
    server = reactor.start_server("127.0.0.1", 0, Fragile, instances.append)
    good = client(server)
    bad = client(server)
    with caplog.at_level(logging.ERROR, logger="packet_gevent"):
        bad.sendall(b"boom")
        assert recv_until_closed(bad) == b""
    assert any("handler bug" in (r.exc_text or "") or r.exc_info for r in caplog.records)
    wait_for(lambda: any(isinstance(getattr(c, "reason", None), RuntimeError) for c in instances),
             message="unbind with the error")
    good.sendall(b"still here")
    assert recv_exactly(good, 10) == b"still here"


def test_timers_fire_once_periodically_and_cancel(reactor):
    fired = []
    done = gevent.event.Event()
    one_shot = reactor.add_timer(0.01, fired.append, "once")
    cancelled = reactor.add_timer(0.02, fired.append, "never")
    reactor.cancel_timer(cancelled)
    later = gevent.event.Event()
    reactor.add_timer(0.03, later.set)  # fires after the cancelled one would have
    ticks = []

    def tick():
        ticks.append(1)
        if len(ticks) == 5:
            periodic.cancel()
            done.set()

    periodic = reactor.add_periodic_timer(0.005, tick)
    assert done.wait(5) and later.wait(5)
    assert fired == ["once"]
    assert len(ticks) == 5
    assert not one_shot.active and not periodic.active


def test_periodic_timer_skips_ticks_while_its_callback_blocks(reactor):
    running = []
    overlaps = []
    release = gevent.event.Event()

    def slow():
        if running:
            overlaps.append(1)
        running.append(1)
        release.wait(5)  # blocks cooperatively across several ticks
        running.pop()

    timer = reactor.add_periodic_timer(0.005, slow)
    wait_for(lambda: timer.skipped >= 3, message="skipped ticks")
    release.set()
    timer.cancel()
    assert overlaps == []
    assert timer.fired >= 1


def test_next_turn_runs_once(reactor):
    calls = []
    turned = gevent.event.Event()

    def first(value):
        calls.append(value)
        reactor.next_turn(turned.set)  # runs on a later turn, after a repeat would have

    reactor.next_turn(first, 1)
    assert turned.wait(5)
    assert calls == [1]


def test_connection_timers_run_in_the_connection_greenlet_in_order(reactor):
    seen = []
    done = gevent.event.Event()

    class Timed(Connection):
        def connection_completed(self):
            self.me = gevent.getcurrent()
            self.add_timer(0.01, self.step, "timer")
            self.next_turn(self.step, "next_turn")

        def step(self, what):
            seen.append((what, gevent.getcurrent() is self.me))
            if len(seen) == 2:
                done.set()

    server = reactor.start_server("127.0.0.1", 0, Timed)
    sock = client(server)
    assert done.wait(5)
    assert seen == [("next_turn", True), ("timer", True)]
    sock.close()


def test_connect_to_closed_port_calls_unbind_with_reason(reactor):
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there now
    conn = reactor.connect("127.0.0.1", port, Recorder)
    wait_for(lambda: hasattr(conn, "done") and conn.done.is_set(), message="unbind")
    assert conn.events[0] == "post_init"
    assert "connection_completed" not in conn.events
    assert isinstance(conn.events[-1][1], ConnectionRefusedError)
    assert isinstance(conn.connect_error, ConnectionRefusedError)


def test_dns_failure_is_reported_through_unbind(reactor):
    conn = reactor.connect("no-such-host.invalid", 80, Recorder, connect_timeout=5)
    wait_for(lambda: hasattr(conn, "done") and conn.done.is_set(), timeout=15, message="unbind")
    assert "connection_completed" not in conn.events
    assert isinstance(conn.connect_error, OSError)


def test_reconnect_reuses_the_handler_instance(reactor):
    server = reactor.start_server("127.0.0.1", 0, Recorder)
    conn = reactor.connect("127.0.0.1", server.port, Recorder)
    wait_for(lambda: conn.connected, message="connected")
    assert reactor.reconnect("127.0.0.1", server.port, conn) is conn  # no-op while connected
    first_signature = conn.signature
    conn.close_connection()
    assert conn.done.wait(5)
    conn.done.clear()
    reactor.reconnect("127.0.0.1", server.port, conn)
    wait_for(lambda: conn.connected, message="reconnected")
    assert conn.signature != first_signature
    assert conn.events.count("connection_completed") == 2
    assert conn.events.count("post_init") == 1


def test_hundred_connections_block_concurrently_in_receive_data(reactor):
    state = {"now": 0, "max": 0}
    release = gevent.event.Event()

    class Sleeper(Connection):
        def receive_data(self, data):
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
            release.wait(10)  # blocks this connection only
            gevent.sleep(0.001)
            state["now"] -= 1
            self.send_data(data)

    server = reactor.start_server("127.0.0.1", 0, Sleeper)
    socks = [client(server) for _ in range(100)]
    for i, sock in enumerate(socks):
        sock.sendall(b"%03d" % i)
    wait_for(lambda: state["max"] == 100, message="100 callbacks in flight")
    release.set()
    for i, sock in enumerate(socks):
        assert recv_exactly(sock, 3) == b"%03d" % i
        sock.close()


def test_send_and_receive_objects_with_json_codec(reactor):
    received = []

    class ObjectEcho(Connection):
        def receive_object(self, obj):
            received.append(obj)
            self.send_object({"echo": obj})

    class ObjectClient(Connection):
        def connection_completed(self):
            self.send_object({"n": 1, "items": [1, 2, "three"]})

        def receive_object(self, obj):
            self.reply = obj
            self.close_connection()

    server = reactor.start_server("127.0.0.1", 0, ObjectEcho)
    conn = reactor.connect("127.0.0.1", server.port, ObjectClient)
    wait_for(lambda: hasattr(conn, "reply"), message="object reply")
    assert conn.reply == {"echo": {"n": 1, "items": [1, 2, "three"]}}


def test_send_object_side_refuses_a_pickle_payload_and_closes(reactor):
    import pickle

    from packet_gevent.framing import encode_frame

    class ObjectServer(Connection):
        def receive_object(self, obj):
            self.got = obj

        def unbind(self, reason=None):
            self.reason = reason

    instances = []
    server = reactor.start_server("127.0.0.1", 0, ObjectServer, instances.append)
    sock = client(server)
    sock.sendall(encode_frame(pickle.dumps({"evil": True})))
    assert recv_until_closed(sock) == b""
    wait_for(lambda: instances and hasattr(instances[0], "reason"), message="unbind")
    assert not hasattr(instances[0], "got")
    assert "pickle" in str(instances[0].reason).lower() or instances[0].reason is not None


def test_after_connection_hooks_class_and_instance_level(reactor):
    class HookedReactor(Reactor):
        def log_connection(self, handler, sock):
            self.class_hooked.append(handler.signature)

    HookedReactor.after_connection("log_connection")
    r = HookedReactor()
    r.class_hooked = []
    instance_hooked = []
    r.after_connection(lambda handler, sock: instance_hooked.append(sock.fileno() >= 0))
    r.start()
    try:
        server = r.start_server("127.0.0.1", 0, Recorder)
        sock = client(server)
        sock.sendall(b"x")
        assert recv_exactly(sock, 1) == b"x"
        assert len(r.class_hooked) == 1 and instance_hooked == [True]
        assert Reactor._class_after_connection == []  # the base class is untouched
    finally:
        r.stop(timeout=2)


def test_two_reactors_serve_independently_on_one_hub():
    r1, r2 = Reactor(), Reactor()
    s1 = r1.start_server("127.0.0.1", 0, Recorder)
    s2 = r2.start_server("127.0.0.1", 0, Recorder)
    r1.start()
    r2.start()
    try:
        c1, c2 = client(s1), client(s2)
        c1.sendall(b"one")
        c2.sendall(b"two")
        assert recv_exactly(c1, 3) == b"one"
        assert recv_exactly(c2, 3) == b"two"
        r1.stop(timeout=2)
        assert recv_until_closed(c1) == b""
        c2.sendall(b"still")
        assert recv_exactly(c2, 5) == b"still"
    finally:
        r1.stop(timeout=2)
        r2.stop(timeout=2)


def test_reactor_started_in_another_thread_runs_on_that_threads_hub():
    ready = threading.Event()
    stop = threading.Event()
    box = {}

    def thread_main():
        r = Reactor()
        server = r.start_server("127.0.0.1", 0, Recorder)
        r.start()
        box["port"] = server.port
        box["hub"] = gevent.get_hub()
        ready.set()
        while not stop.is_set():
            gevent.sleep(0.01)
        r.stop(timeout=2)
        gevent.get_hub().destroy(destroy_loop=True)  # a thread's hub: its loop's fds go with it

    t = threading.Thread(target=thread_main, daemon=True)
    t.start()
    assert ready.wait(10)
    try:
        assert box["hub"] is not gevent.get_hub()
        sock = socket.create_connection(("127.0.0.1", box["port"]), timeout=5)
        sock.sendall(b"threaded")
        assert sock.recv(100) == b"threaded"
        sock.close()
    finally:
        stop.set()
        t.join(10)
    assert not t.is_alive()


def test_unix_socket_server(reactor, tmp_path):
    path = str(tmp_path / "echo.sock")
    reactor.start_unix_server(path, Recorder)
    sock = gevent.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    sock.sendall(b"unix")
    assert recv_exactly(sock, 4) == b"unix"
    conn = reactor.connect(path, None, QuietRecorder)
    conn.add_timer(0.01, conn.send_data, b"hi")
    wait_for(lambda: ("data", b"hi") in conn.events, message="unix echo")
    sock.close()


def test_tls_server_and_client(reactor, tls_contexts):
    server_ctx, client_ctx = tls_contexts
    client_ctx.check_hostname = False
    server = reactor.start_server("127.0.0.1", 0, Recorder, ssl_context=server_ctx)
    conn = reactor.connect("127.0.0.1", server.port, QuietRecorder, ssl_context=client_ctx)
    wait_for(lambda: conn.connected, message="TLS handshake")
    conn.send_data(b"secret" * 10000)
    wait_for(lambda: sum(len(e[1]) for e in conn.events if e[0] == "data") == 60000,
             message="TLS echo of 60 kB")
    assert b"".join(e[1] for e in conn.events if e[0] == "data") == b"secret" * 10000
    conn.close_connection()
    assert conn.done.wait(5)


def test_idle_timeout_closes_silent_connection(reactor):
    instances = []
    server = reactor.start_server("127.0.0.1", 0, Recorder, instances.append, idle_timeout=0.1)
    sock = client(server)
    sock.sendall(b"x")
    assert recv_exactly(sock, 1) == b"x"
    assert recv_until_closed(sock, timeout=5) == b""
    from packet_gevent import IdleTimeout
    assert isinstance(instances[0].events[-1][1], IdleTimeout)


def test_max_connections_keeps_extra_clients_waiting_in_backlog(reactor):
    instances = []
    server = reactor.start_server("127.0.0.1", 0, Recorder, instances.append, max_connections=2)
    a, b = client(server), client(server)
    for s in (a, b):
        s.sendall(b"1")
        assert recv_exactly(s, 1) == b"1"
    c = client(server)  # the kernel completes the handshake; we do not accept yet
    c.sendall(b"waiting")
    gevent.sleep(0.1)
    assert server.connection_count == 2 and len(instances) == 2
    a.close()
    assert recv_exactly(c, 7) == b"waiting"  # accepted once a slot freed
    assert len(instances) == 3


def test_pause_reading_and_write_watermarks(reactor):
    events = []

    class Flow(Connection):
        def connection_completed(self):
            self.set_write_watermarks(high=64 * 1024, low=8 * 1024)
            self.pause_reading()
            self.send_data(b"z" * (16 * 1024 * 1024))

        def pause_writing(self):
            events.append("pause_writing")

        def resume_writing(self):
            events.append("resume_writing")
            self.resume_reading()

        def receive_data(self, data):
            events.append(("data", data))

    server = reactor.start_server("127.0.0.1", 0, Flow)
    sock = client(server)
    sock.sendall(b"early")
    wait_for(lambda: "pause_writing" in events, message="pause_writing")
    gevent.sleep(0.05)
    assert ("data", b"early") not in events  # reading is paused
    assert recv_exactly(sock, 16 * 1024 * 1024) == b"z" * (16 * 1024 * 1024)
    wait_for(lambda: ("data", b"early") in events, message="data after resume_reading")
    assert events.index("pause_writing") < events.index("resume_writing") < events.index(("data", b"early"))


def test_reactor_run_stops_on_sigterm_and_unbinds_connections():
    code = """
        import os, signal, socket, sys, threading
        from packet_gevent import Connection, Reactor
        unbound = []
        class H(Connection):
            def receive_data(self, data):
                self.send_data(data)
            def unbind(self, reason=None):
                unbound.append(reason)
        def setup(r):
            s = r.start_server("127.0.0.1", 0, H)
            def poke():
                c = socket.create_connection(("127.0.0.1", s.port))
                c.sendall(b"x"); assert c.recv(1) == b"x"
                os.kill(os.getpid(), signal.SIGTERM)
                c.recv(1)
            threading.Thread(target=poke, daemon=True).start()
        Reactor.run(setup)
        print("unbound", unbound)
    """
    result = run_script(code, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "unbound [None]" in result.stdout


def test_works_under_patch_all_with_blocking_stdlib_calls():
    code = """
        from gevent import monkey; monkey.patch_all()
        import socket, threading, time
        from packet_gevent import Connection, Reactor
        state = {"now": 0, "max": 0}
        class Upstream(Connection):
            def receive_data(self, data):
                self.send_data(b"up:" + data)
        class Blocking(Connection):
            def receive_data(self, data):
                state["now"] += 1; state["max"] = max(state["max"], state["now"])
                time.sleep(0.2)                                  # patched: cooperative
                s = socket.create_connection(("127.0.0.1", UP))  # patched socket
                s.sendall(data); reply = s.recv(100); s.close()
                state["now"] -= 1
                self.send_data(reply)
        r = Reactor()
        up = r.start_server("127.0.0.1", 0, Upstream); UP = up.port
        srv = r.start_server("127.0.0.1", 0, Blocking)
        r.start()
        clients = [socket.create_connection(("127.0.0.1", srv.port)) for _ in range(20)]
        for i, c in enumerate(clients): c.sendall(b"%02d" % i)
        replies = [c.recv(100) for c in clients]
        assert replies == [b"up:%02d" % i for i in range(20)], replies
        r.stop(timeout=2)
        print("max concurrency", state["max"])
    """
    result = run_script(code, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "max concurrency 20" in result.stdout


def test_importing_packet_gevent_patches_nothing():
    code = """
        import os, socket, time, multiprocessing.popen_fork as pf
        before = (socket.socket, time.sleep, os.fork, pf.Popen.poll)
        import packet_gevent, packet_gevent.net.reactor
        from gevent import monkey
        after = (socket.socket, time.sleep, os.fork, pf.Popen.poll)
        assert before == after
        assert not monkey.is_anything_patched()
        print("clean")
    """
    result = run_script(code, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "clean" in result.stdout


def test_run_in_hub_handler_echoes_and_uses_timers(reactor):
    class HubEcho(Connection):
        run_in_hub = True

        def connection_completed(self):
            self.add_timer(0.01, self.send_data, b"tick:")

        def receive_data(self, data):
            self.send_data(data)

    server = reactor.start_server("127.0.0.1", 0, HubEcho)
    sock = client(server)
    assert recv_exactly(sock, 5) == b"tick:"
    sock.sendall(b"fast")
    assert recv_exactly(sock, 4) == b"fast"
    sock.close()


def test_run_in_hub_handler_that_blocks_is_closed_with_a_logged_error(reactor, caplog):
    reasons = []

    class Liar(Connection):
        run_in_hub = True

        def receive_data(self, data):
            gevent.sleep(0.01)  # not allowed in the hub

        def unbind(self, reason=None):
            reasons.append(reason)

    server = reactor.start_server("127.0.0.1", 0, Liar)
    sock = client(server)
    with caplog.at_level(logging.ERROR, logger="packet_gevent"):
        sock.sendall(b"x")
        assert recv_until_closed(sock) == b""
    wait_for(lambda: reasons, message="unbind")
    assert "BlockingSwitchOutError" in type(reasons[0]).__name__ or "blocking" in str(reasons[0]).lower()
    assert any("closing the connection" in r.getMessage() for r in caplog.records)
