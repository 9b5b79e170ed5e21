"""Adversarial edge cases of the reactor layer: races between the hub and a
connection's greenlet, stop/close/reconnect orderings, timers after close,
slot accounting under max_connections, TLS close after writing."""
import gevent
import gevent.event
import pytest

from packet_gevent import Connection, Reactor
from tests.conftest import client, receive_all_over_tls, recv_exactly, recv_until_closed, wait_for


def test_stop_returns_when_it_has_to_kill_a_blocked_callback():
    # A callback blocked past the grace is killed with GreenletExit; the
    # greenlet that called stop() must still get control back.
    started = gevent.event.Event()
    unbound = gevent.event.Event()

    class Stuck(Connection):
        def receive_data(self, data):
            started.set()
            gevent.sleep(60)

        def unbind(self, reason=None):
            unbound.set()

    r = Reactor(stop_grace=0.1)
    r.start()
    server = r.start_server("127.0.0.1", 0, Stuck)
    sock = client(server)
    sock.sendall(b"x")
    assert started.wait(5)
    stopper = gevent.spawn(r.stop, 0.1)
    stopper.join(5)
    sock.close()
    assert stopper.dead, "stop() never returned after killing a blocked callback"
    assert unbound.is_set()
    assert not r.connections


def test_reconnect_from_unbind_keeps_the_new_connection_registered(reactor):
    server = reactor.start_server("127.0.0.1", 0, Connection)
    completed = gevent.event.Event()

    class Again(Connection):
        rounds = 0

        def connection_completed(self):
            Again.rounds += 1
            if Again.rounds == 1:
                self.close_connection()
            else:
                completed.set()

        def unbind(self, reason=None):
            if Again.rounds == 1:
                self.reconnect("127.0.0.1", server.port)

    conn = reactor.connect("127.0.0.1", server.port, Again)
    assert completed.wait(5)
    assert reactor.connections.get(conn.signature) is conn, \
        "the old connection's end unregistered the reconnected one"
    assert reactor.deliver(conn.signature, lambda: None)


def test_stop_from_a_run_in_hub_callback(reactor):
    unbound = gevent.event.Event()

    class Hubby(Connection):
        run_in_hub = True

        def receive_data(self, data):
            self.reactor.stop(timeout=1)

        def unbind(self, reason=None):
            unbound.set()

    server = reactor.start_server("127.0.0.1", 0, Hubby)
    sock = client(server)
    sock.sendall(b"stop")
    assert unbound.wait(5), "stop() from a run_in_hub callback did not close the connection"
    assert reactor.wait(5)
    sock.close()


def test_stop_from_a_callback_while_already_stopping_does_not_block_it():
    # stop() is in progress (waiting for a busy callback); that callback calls
    # stop() too: it must return at once, not wait for itself until killed.
    inside = gevent.event.Event()
    go = gevent.event.Event()
    returned = gevent.event.Event()

    class Busy(Connection):
        def receive_data(self, data):
            inside.set()
            go.wait(5)
            self.reactor.stop()
            returned.set()

    r = Reactor(stop_grace=3.0)
    r.start()
    server = r.start_server("127.0.0.1", 0, Busy)
    sock = client(server)
    sock.sendall(b"x")
    assert inside.wait(5)
    stopper = gevent.spawn(r.stop)
    gevent.sleep(0)  # stop() is now draining
    go.set()
    assert returned.wait(1), "stop() called from a callback during a stop blocked that callback"
    stopper.join(5)
    assert stopper.dead
    sock.close()


def test_periodic_timer_added_in_unbind_does_not_tick_forever(reactor):
    server = reactor.start_server("127.0.0.1", 0, Connection)
    timers = []
    done = gevent.event.Event()

    class Late(Connection):
        def connection_completed(self):
            self.close_connection()

        def unbind(self, reason=None):
            timers.append(self.add_periodic_timer(0.01, lambda: None))
            done.set()

    reactor.connect("127.0.0.1", server.port, Late)
    assert done.wait(5)
    with gevent.Timeout(5, AssertionError("timer of a closed connection still active")):
        while timers[0].active:
            gevent.sleep(0.01)
    assert timers[0].fired == 0


def test_handler_constructor_that_raises_does_not_leak_a_connection_slot(reactor):
    served = gevent.event.Event()

    class Picky(Connection):
        made = 0

        def __init__(self):
            Picky.made += 1
            if Picky.made == 1:
                raise RuntimeError("first construction fails")

        def receive_data(self, data):
            self.send_data(data)
            served.set()

    server = reactor.start_server("127.0.0.1", 0, Picky, max_connections=1)
    first = client(server)
    assert recv_until_closed(first, timeout=5) == b""
    first.close()
    second = client(server)
    second.sendall(b"hi")
    assert recv_exactly(second, 2, timeout=5) == b"hi"
    assert server.connection_count == 1
    second.close()


def test_tls_close_after_writing_delivers_the_chunk_in_flight(reactor, tls_contexts):
    payload = bytes(range(256)) * 16384  # 4 MiB: sendall of it blocks on a reader

    class Sender(Connection):
        def connection_completed(self):
            self.send_data(payload)
            # Until the writer greenlet has taken the chunk (no event exists for it).
            wait_for(lambda: not self._transport.outbuf, message="writer to take the chunk")
            self.close_connection_after_writing()

    assert receive_all_over_tls(reactor, tls_contexts, Sender) == payload


class Ordered(Connection):
    """Records callbacks; unbind relies on state set up in post_init (Packet style)."""

    def post_init(self):
        self.events = ["post_init"]
        self.unbound = gevent.event.Event()

    def connection_completed(self):
        self.events.append("connection_completed")

    def unbind(self, reason=None):
        self.events.append("unbind")
        self.unbound.set()


def test_connect_closed_before_it_starts_runs_post_init_then_unbind_once(reactor):
    server = reactor.start_server("127.0.0.1", 0, Connection)
    # From a non-hub greenlet: the connection's greenlet has not started yet.
    conn = reactor.connect("127.0.0.1", server.port, Ordered)
    conn.close_connection()
    wait_for(lambda: hasattr(conn, "unbound"), message="post_init")
    assert conn.unbound.wait(5)
    gevent.sleep(0.05)  # a second unbind or a late connect would show here
    assert conn.events == ["post_init", "unbind"]
    assert conn.signature not in reactor.connections


def test_tls_connection_closed_during_handshake_stays_closed(reactor, tls_contexts):
    import socket
    import ssl
    server_ctx, client_ctx = tls_contexts
    server = reactor.start_server("127.0.0.1", 0, Ordered, ssl_context=server_ctx)
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    wait_for(lambda: reactor.connections, message="the server to accept")
    (conn,) = reactor.connections.values()
    conn.close_connection()  # while its greenlet is blocked in the handshake
    result = {}

    def handshake():  # a real thread: the stdlib blocking handshake must not block the hub
        try:
            tls = client_ctx.wrap_socket(raw, server_hostname="localhost")
            result["data"] = tls.recv(10)
        except (OSError, ssl.SSLError) as exc:
            result["error"] = exc

    import threading
    thread = threading.Thread(target=handshake, daemon=True)
    thread.start()
    with gevent.Timeout(5, AssertionError("client handshake thread hung")):
        while thread.is_alive():
            gevent.sleep(0.005)
    raw.close()
    assert conn.unbound.wait(5), "a connection closed during its TLS handshake never unbound"
    assert "connection_completed" not in conn.events
    assert result.get("data", b"") == b""


def test_server_stop_accepting_is_not_undone_when_a_connection_ends(reactor):
    import socket
    server = reactor.start_server("127.0.0.1", 0, Ordered, max_connections=2)
    first = client(server)
    second = client(server)
    wait_for(lambda: server.connection_count == 2, message="two connections accepted")
    server.stop_accepting()
    conns = list(reactor.connections.values())
    first.close()
    assert any(c.unbound.wait(5) for c in conns)
    accepted_before = server.accepted
    third = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    gevent.sleep(0.2)  # would it be accepted? (absence of an event: bounded wait)
    assert server.accepted == accepted_before, "stop_accepting() was undone by a connection ending"
    third.close()
    second.close()


class Greeter(Connection):
    """Sends a greeting from post_init, before an outgoing connect has completed."""

    def post_init(self):
        self.send_data(b"hello from post_init")


class Collector(Connection):
    got = None

    def post_init(self):
        self.data = []
        self.unbound = gevent.event.Event()

    def receive_data(self, data):
        self.data.append(data)
        if len(b"".join(self.data)) >= 20:
            self.close_connection()

    def unbind(self, reason=None):
        Collector.got = b"".join(self.data)
        self.unbound.set()


def test_send_data_in_post_init_of_outgoing_connection_is_not_lost(reactor):
    instances = []
    server = reactor.start_server("127.0.0.1", 0, Collector, on_instance=instances.append)
    reactor.connect("127.0.0.1", server.port, Greeter)
    wait_for(lambda: instances, message="the server to accept")
    assert instances[0].unbound.wait(5)
    assert Collector.got == b"hello from post_init"


def test_send_data_in_post_init_over_tls_both_ways_is_not_lost(reactor, tls_contexts):
    server_ctx, client_ctx = tls_contexts
    accepted = []
    server = reactor.start_server("127.0.0.1", 0, Greeter, ssl_context=server_ctx)
    conn = reactor.connect("127.0.0.1", server.port, Collector, ssl_context=client_ctx,
                           server_hostname="localhost")
    wait_for(lambda: hasattr(conn, "unbound"), message="post_init")
    assert conn.unbound.wait(5)
    assert Collector.got == b"hello from post_init"
    server2 = reactor.start_server("127.0.0.1", 0, Collector, ssl_context=server_ctx,
                                   on_instance=accepted.append)
    reactor.connect("127.0.0.1", server2.port, Greeter, ssl_context=client_ctx,
                    server_hostname="localhost")
    wait_for(lambda: accepted, message="the TLS server to accept")
    assert accepted[0].unbound.wait(5)
    assert Collector.got == b"hello from post_init"


def test_close_after_writing_while_connecting_flushes_then_closes(reactor):
    instances = []

    class Bye(Connection):
        def post_init(self):
            self.send_data(b"hello from post_init")
            self.close_connection_after_writing()

    class Drain(Collector):
        def receive_data(self, data):
            self.data.append(data)  # the peer closes, not us

    server = reactor.start_server("127.0.0.1", 0, Drain, on_instance=instances.append)
    reactor.connect("127.0.0.1", server.port, Bye)
    wait_for(lambda: instances, message="the server to accept")
    assert instances[0].unbound.wait(5)
    assert Collector.got == b"hello from post_init"


def _greenlets_running(method_name, owner):
    import gc
    return [g for g in gc.get_objects()
            if isinstance(g, gevent.Greenlet) and not g.dead
            and getattr(getattr(g, "_run", None), "__self__", None) is owner
            and getattr(g._run, "__name__", "") == method_name]


def test_tls_reader_greenlet_ends_when_closed_while_paused(reactor, tls_contexts):
    server_ctx, client_ctx = tls_contexts
    accepted = []

    class PauseThenClose(Ordered):
        def receive_data(self, data):
            self.pause_reading()
            self.close_connection()

    server = reactor.start_server("127.0.0.1", 0, PauseThenClose, ssl_context=server_ctx,
                                  on_instance=accepted.append)
    reactor.connect("127.0.0.1", server.port, Greeter, ssl_context=client_ctx,
                    server_hostname="localhost")
    wait_for(lambda: accepted, message="the TLS server to accept")
    assert accepted[0].unbound.wait(5)
    transport = accepted[0]._transport
    wait_for(lambda: not _greenlets_running("_tls_reader", transport),
             message="the TLS reader greenlet of a closed connection to end")
    wait_for(lambda: not _greenlets_running("_tls_writer", transport),
             message="the TLS writer greenlet of a closed connection to end")


def test_reactor_run_gives_back_python_signal_handling_when_it_returns():
    from tests.conftest import run_script
    result = run_script("""
        import os, signal
        from packet_gevent import Reactor
        def setup(r):
            r.add_timer(0.01, lambda: os.kill(os.getpid(), signal.SIGTERM))
        Reactor.run(setup)
        print("returned", flush=True)
        try:
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(100):
                pass
        except KeyboardInterrupt:
            print("KeyboardInterrupt", flush=True)
    """, timeout=30)
    assert "returned" in result.stdout, result.stderr
    assert "KeyboardInterrupt" in result.stdout, \
        f"SIGINT after Reactor.run returned killed the process (rc={result.returncode})"


def test_reconnect_in_unbind_during_stop_does_not_outlive_the_reactor():
    r = Reactor(stop_grace=0.5)
    r.start()
    server = r.start_server("127.0.0.1", 0, Connection)
    completed = gevent.event.Event()
    unbinds = []

    class Persistent(Connection):  # Packet's usual client: reconnect when dropped
        def connection_completed(self):
            completed.set()

        def unbind(self, reason=None):
            unbinds.append(reason)
            self.reconnect("127.0.0.1", server.port)

    conn = r.connect("127.0.0.1", server.port, Persistent)
    assert completed.wait(5)
    stopper = gevent.spawn(r.stop)
    stopper.join(10)
    assert stopper.dead
    gevent.sleep(0.1)  # a reconnect slipping through would connect here
    assert not r.connections
    assert not conn.connected and conn._transport.state == "closed"
    assert len(unbinds) == 1


def test_idle_timeout_does_not_cut_a_callback_that_is_still_working(reactor):
    class Slow(Connection):
        def receive_data(self, data):
            gevent.sleep(0.5)  # slow work (e.g. waiting on a worker), longer than the timeout
            self.send_data(data)

    server = reactor.start_server("127.0.0.1", 0, Slow, idle_timeout=0.2)
    sock = client(server)
    sock.sendall(b"question")
    assert recv_exactly(sock, 8, timeout=5) == b"question", \
        "the idle timeout closed a connection whose own callback was busy"
    # ...and a silent peer is still dropped once the server is idle.
    assert recv_until_closed(sock, timeout=5) == b""
    sock.close()


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_pause_reading_in_post_init_of_outgoing_connection_holds(reactor, tls_contexts, tls):
    server_ctx, client_ctx = tls_contexts if tls else (None, None)
    class Talker(Connection):
        def connection_completed(self):
            self.send_data(b"early bytes")

    got = []
    arrived = gevent.event.Event()

    class Paused(Connection):
        def post_init(self):
            self.pause_reading()  # before the connect completes

        def receive_data(self, data):
            got.append(data)
            arrived.set()

    server = reactor.start_server("127.0.0.1", 0, Talker, ssl_context=server_ctx)
    conn = reactor.connect("127.0.0.1", server.port, Paused, ssl_context=client_ctx,
                           server_hostname="localhost" if tls else None)
    wait_for(lambda: conn.connected, message="the connect")
    assert not arrived.wait(0.3), "data delivered although reading was paused from post_init"
    conn.resume_reading()
    assert arrived.wait(5)
    assert b"".join(got) == b"early bytes"


def test_gevent_timeout_escaping_a_callback_closes_only_that_connection(reactor):
    # gevent.Timeout is a BaseException: a callback that lets one escape must
    # still end its connection (unbind once, slot freed), not kill the greenlet
    # silently and raise into the hub.
    unbound = []

    class Impatient(Connection):
        def receive_data(self, data):
            with gevent.Timeout(0.01):
                gevent.sleep(5)

        def unbind(self, reason=None):
            unbound.append(reason)

    server = reactor.start_server("127.0.0.1", 0, Impatient, max_connections=1)
    sock = client(server)
    sock.sendall(b"x")
    assert recv_until_closed(sock, timeout=5) == b""
    sock.close()
    wait_for(lambda: unbound, message="unbind")
    assert len(unbound) == 1 and isinstance(unbound[0], gevent.Timeout)
    wait_for(lambda: server.connection_count == 0, message="the slot to be freed")
    assert not reactor.connections


def test_idle_timeout_covers_a_tls_handshake_that_never_comes(reactor, tls_contexts):
    server_ctx, _ = tls_contexts
    accepted = []
    server = reactor.start_server("127.0.0.1", 0, Ordered, ssl_context=server_ctx,
                                  idle_timeout=0.2, max_connections=1, on_instance=accepted.append)
    raw = gevent.socket.create_connection(("127.0.0.1", server.port), timeout=5)
    # A silent client must not hold the greenlet and the only slot forever.
    assert recv_until_closed(raw, timeout=5) == b"", "a silent TLS client was never dropped"
    raw.close()
    wait_for(lambda: server.connection_count == 0, message="the slot to be freed")
    assert not accepted  # never completed


# Regression guards for orderings that already held when reviewed.

def test_close_from_another_connections_greenlet_while_a_callback_blocks(reactor):
    blocked = gevent.event.Event()
    release = gevent.event.Event()
    victims = []

    class Victim(Ordered):
        def receive_data(self, data):
            victims.append(self)
            blocked.set()
            release.wait(5)
            self.send_data(b"too late")  # dropped: closed meanwhile

    class Killer(Connection):
        def receive_data(self, data):
            victims[0].close_connection()
            release.set()

    victim_server = reactor.start_server("127.0.0.1", 0, Victim)
    killer_server = reactor.start_server("127.0.0.1", 0, Killer)
    a = client(victim_server)
    a.sendall(b"x")
    assert blocked.wait(5)
    b = client(killer_server)
    b.sendall(b"kill")
    assert recv_until_closed(a, timeout=5) == b""
    assert victims[0].unbound.wait(5)
    assert victims[0].events.count("unbind") == 1
    a.close()
    b.close()


def test_exceptions_in_post_init_connection_completed_and_unbind_each_end_cleanly(reactor, caplog):
    reasons = {}

    def make(where):
        class Faulty(Connection):
            def post_init(self):
                if where == "post_init":
                    raise ValueError(where)

            def connection_completed(self):
                if where == "connection_completed":
                    raise ValueError(where)

            def unbind(self, reason=None):
                reasons[where] = reason
                if where == "unbind":
                    raise ValueError(where)
        return Faulty

    for where in ("post_init", "connection_completed"):
        server = reactor.start_server("127.0.0.1", 0, make(where), max_connections=1)
        sock = client(server)
        assert recv_until_closed(sock, timeout=5) == b""
        sock.close()
        wait_for(lambda: where in reasons, message=f"unbind after {where}")
        assert isinstance(reasons[where], ValueError)
        wait_for(lambda: server.connection_count == 0, message="the slot to be freed")
    server = reactor.start_server("127.0.0.1", 0, make("unbind"))
    sock = client(server)
    wait_for(lambda: server.connection_count == 1, message="accept")
    sock.close()
    wait_for(lambda: server.connection_count == 0, message="the slot to be freed")
    assert not reactor.connections
    assert "unbind of" in caplog.text


def test_plain_class_unbind_with_and_without_reason(reactor):
    seen = []

    class NoReason:
        def unbind(self):
            seen.append("no reason")

    class WithReason:
        def unbind(self, reason):
            seen.append(("reason", reason))

    for handler in (NoReason, WithReason):
        server = reactor.start_server("127.0.0.1", 0, handler)
        sock = client(server)
        wait_for(lambda: server.connection_count == 1, message="accept")
        sock.close()
        wait_for(lambda: server.connection_count == 0, message="unbind")
    assert seen == ["no reason", ("reason", None)]


def test_stop_called_twice_concurrently_both_return():
    r = Reactor(stop_grace=1.0)
    r.start()
    server = r.start_server("127.0.0.1", 0, Connection)
    sock = client(server)
    wait_for(lambda: server.connection_count == 1, message="accept")
    stoppers = [gevent.spawn(r.stop), gevent.spawn(r.stop)]
    gevent.joinall(stoppers, timeout=5)
    assert all(s.dead for s in stoppers)
    assert r.wait(0) and not r.connections
    assert recv_until_closed(sock, timeout=5) == b""
    sock.close()


def test_unix_server_never_deletes_a_regular_file_at_its_path(reactor, tmp_path):
    path = tmp_path / "not-a-socket.conf"
    path.write_text("precious")
    with pytest.raises(OSError, match="not a socket"):
        reactor.start_unix_server(str(path), Connection)
    assert path.read_text() == "precious"


def test_run_in_hub_call_posted_before_a_close_is_dropped_like_for_greenlet_handlers(reactor):
    accepted = []
    ran = []

    class Hubby(Ordered):
        run_in_hub = True

    server = reactor.start_server("127.0.0.1", 0, Hubby, on_instance=accepted.append)
    sock = client(server)
    wait_for(lambda: accepted, message="accept")
    conn = accepted[0]
    # From this (non-hub) greenlet: queued for the hub, then the connection closes.
    assert reactor.deliver(conn.signature, lambda: ran.append(conn.connected))
    conn.close_connection()
    assert conn.unbound.wait(5)
    assert ran == [], "a call delivered before the close ran on the closed connection"
    sock.close()


def test_connect_during_stop_is_refused_through_unbind_and_outlives_nothing():
    from packet_gevent import PacketError
    r = Reactor(stop_grace=1)
    server = r.start_server("127.0.0.1", 0, Connection)
    r.start()
    opened = []

    class Late(Connection):
        def unbind(self, reason=None):
            self.reason = reason

    class Stopper(Connection):
        def unbind(self, reason=None):
            opened.append(r.connect("127.0.0.1", server.port, Late))  # during stop()

    stopper = r.connect("127.0.0.1", server.port, Stopper)
    wait_for(lambda: stopper.connected, message="the first connection")
    r.stop(timeout=1)
    wait_for(lambda: opened and hasattr(opened[0], "reason"), message="unbind of the late connect")
    assert isinstance(opened[0].reason, PacketError) and "stopping" in str(opened[0].reason)
    assert not opened[0].connected and r.connections == {}


def test_connect_with_a_live_instance_raises_and_keeps_the_connection(reactor):
    from packet_gevent import PacketError
    server = reactor.start_server("127.0.0.1", 0, Connection)
    conn = reactor.connect("127.0.0.1", server.port, Connection)
    wait_for(lambda: conn.connected, message="connected")
    with pytest.raises(PacketError, match="still connected"):
        reactor.connect("127.0.0.1", server.port, conn)
    assert conn.connected
