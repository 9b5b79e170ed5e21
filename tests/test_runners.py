"""Shared runners (net/runners.py): blocking callbacks, order, backpressure, and the per-connection mode."""
import gevent
import gevent.event
import pytest

from packet_gevent import Connection
from packet_gevent.net.runners import MAX_FREE_RUNNERS, HubTransport, SharedTransport, dispatcher_for
from packet_gevent.net.transport import Transport
from tests.conftest import client, recv_exactly, wait_for


class Gate(Connection):
    """Echoes; a chunk starting with b"B" blocks until ``release`` is set (first chunk only)."""

    release = None
    blocked = None
    log = None

    def receive_data(self, data):
        self.log.append(data)
        if data.startswith(b"B") and not self.blocked.is_set():
            self.blocked.set()
            self.release.wait(10)
        self.send_data(data)


def gate_class(**extra):
    return type("TestGate", (Gate,), {"release": gevent.event.Event(), "blocked": gevent.event.Event(),
                                      "log": [], **extra})


def test_default_mode_shares_runners_and_the_flag_gives_a_greenlet_each(reactor):
    seen = []

    class Shared(Connection):
        def receive_data(self, data):
            seen.append(("shared", type(self._transport), gevent.getcurrent() is self._transport.greenlet))
            self.send_data(data)

    class Own(Shared):
        greenlet_per_connection = True

        def receive_data(self, data):
            seen.append(("own", gevent.getcurrent()))
            self.send_data(data)

    shared = reactor.start_server("127.0.0.1", 0, Shared)
    own = reactor.start_server("127.0.0.1", 0, Own)
    socks = [client(shared), client(shared), client(own), client(own)]
    for sock in socks:
        for _ in range(2):  # two round trips each: the second must run in the same greenlet for Own
            sock.sendall(b"x")
            assert recv_exactly(sock, 1) == b"x"
    assert [s for s in seen if s[0] == "shared"] == [("shared", SharedTransport, True)] * 4
    own_greenlets = [s[1] for s in seen if s[0] == "own"]
    assert own_greenlets[0] is own_greenlets[1] and own_greenlets[2] is own_greenlets[3]
    assert own_greenlets[0] is not own_greenlets[2]
    for sock in socks:
        sock.close()


def test_a_blocked_callback_holds_only_its_connection_and_keeps_its_order(reactor):
    handler = gate_class()
    server = reactor.start_server("127.0.0.1", 0, handler)
    slow, fast = client(server), client(server)
    slow.sendall(b"B1")
    assert handler.blocked.wait(5)
    slow.sendall(b"-2")  # arrives while B1 blocks: must wait, and come after it
    for i in range(20):  # the other connection is served meanwhile
        fast.sendall(b"f%02d" % i)
        assert recv_exactly(fast, 3) == b"f%02d" % i
    assert handler.log[0] == b"B1" and b"-2" not in handler.log
    handler.release.set()
    assert recv_exactly(slow, 4) == b"B1-2"
    slow.close()
    fast.close()


def test_posted_calls_wait_behind_a_blocked_callback_in_order(reactor):
    order = []
    release = gevent.event.Event()
    blocked = gevent.event.Event()
    done = gevent.event.Event()

    class Poster(Connection):
        def receive_data(self, data):
            order.append("data")
            self.next_turn(order.append, "next_turn")
            self.add_timer(0.001, self.last)
            blocked.set()
            release.wait(10)
            order.append("data returns")

        def last(self):
            order.append("timer")
            done.set()

    server = reactor.start_server("127.0.0.1", 0, Poster)
    sock = client(server)
    sock.sendall(b"go")
    assert blocked.wait(5)
    gevent.sleep(0.05)  # let the next_turn and the timer fire while the callback blocks
    assert order == ["data"]
    release.set()
    assert done.wait(5)
    assert order == ["data", "data returns", "next_turn", "timer"]
    sock.close()


def test_a_blocked_connection_is_not_read_so_tcp_pushes_back(reactor):
    handler = gate_class()
    server = reactor.start_server("127.0.0.1", 0, handler)
    sock = client(server)
    sock.sendall(b"B")
    assert handler.blocked.wait(5)
    sock.setblocking(False)
    sent = 0
    chunk = b"y" * 65536
    for _ in range(2000):  # bounded: the kernel buffers hold far less than 128 MiB
        try:
            sent += sock.send(chunk)
        except BlockingIOError:
            break
        gevent.sleep(0)  # let the server's hub run (it must not read this connection)
    else:
        pytest.fail("the server kept reading a connection whose callback is blocked")
    assert sum(map(len, handler.log)) == 1  # only the blocking chunk was read
    handler.release.set()
    sock.settimeout(10)
    # The blocked chunk's echo first, then everything sent meanwhile, in order.
    assert recv_exactly(sock, 1 + sent) == b"B" + b"y" * sent
    sock.close()


def test_runners_are_reused_after_blocking_callbacks(reactor):
    handler_release = gevent.event.Event()
    in_flight = {"now": 0, "max": 0}

    class Blocker(Connection):
        def receive_data(self, data):
            in_flight["now"] += 1
            in_flight["max"] = max(in_flight["max"], in_flight["now"])
            handler_release.wait(10)
            in_flight["now"] -= 1
            self.send_data(data)

    server = reactor.start_server("127.0.0.1", 0, Blocker)
    dispatcher = dispatcher_for(gevent.get_hub())
    socks = [client(server) for _ in range(MAX_FREE_RUNNERS + 10)]
    for sock in socks:
        sock.sendall(b"z")
    wait_for(lambda: in_flight["max"] == len(socks), message="every callback blocked at once")
    handler_release.set()
    for sock in socks:
        assert recv_exactly(sock, 1) == b"z"
    # Parked for reuse, bounded; the blocked greenlets beyond the bound ended.
    assert 0 < len(dispatcher.free) <= MAX_FREE_RUNNERS
    free_before = list(dispatcher.free)
    socks[0].sendall(b"again")
    assert recv_exactly(socks[0], 5) == b"again"
    assert set(map(id, dispatcher.free)) <= set(map(id, free_before)) | {id(dispatcher.runner)}
    for sock in socks:
        sock.close()


def test_run_in_hub_and_per_connection_handlers_keep_their_own_transport(reactor):
    kinds = []

    class Hub(Connection):
        run_in_hub = True

        def connection_completed(self):
            kinds.append(type(self._transport))

    class Own(Connection):
        greenlet_per_connection = True

        def connection_completed(self):
            kinds.append(type(self._transport))

    for handler in (Hub, Own):
        sock = client(reactor.start_server("127.0.0.1", 0, handler))
        wait_for(lambda: len(kinds) == (1 if handler is Hub else 2), message="connection_completed")
        sock.close()
    assert kinds == [HubTransport, Transport]


def test_runners_keep_serving_after_a_stop_killed_a_blocked_callback():
    from packet_gevent import Reactor
    started = gevent.event.Event()

    class Stuck(Connection):
        def receive_data(self, data):
            started.set()
            gevent.sleep(30)

    class Echo(Connection):
        def receive_data(self, data):
            self.send_data(data)

    first = Reactor(stop_grace=0.1)
    first.start()
    sock = client(first.start_server("127.0.0.1", 0, Stuck))
    sock.sendall(b"x")
    assert started.wait(5)
    first.stop(timeout=0.1)  # kills the runner still blocked in Stuck.receive_data
    sock.close()
    second = Reactor(stop_grace=1.0)
    second.start()
    try:
        server = second.start_server("127.0.0.1", 0, Echo)
        socks = [client(server) for _ in range(3)]
        for i, s in enumerate(socks):
            s.sendall(b"%d" % i)
            assert recv_exactly(s, 1) == b"%d" % i
            s.close()
    finally:
        second.stop(timeout=1.0)


@pytest.mark.parametrize("own_greenlet", [False, True], ids=["shared-runners", "greenlet-per-connection"])
def test_hundred_callbacks_sleeping_in_gevent_sleep_are_all_in_flight_at_once(reactor, own_greenlet):
    state = {"now": 0, "max": 0}

    class Sleeper(Connection):
        greenlet_per_connection = own_greenlet

        def receive_data(self, data):
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
            gevent.sleep(1.0)  # long enough for all 100 to arrive while the first still sleeps
            state["now"] -= 1
            self.send_data(data)

    server = reactor.start_server("127.0.0.1", 0, Sleeper)
    socks = [client(server) for _ in range(100)]
    for i, sock in enumerate(socks):
        sock.sendall(b"%03d" % i)
    for i, sock in enumerate(socks):
        assert recv_exactly(sock, 3) == b"%03d" % i
        sock.close()
    assert state["max"] == 100


# -- adaptive read size (transport.SMALL_READ / READ_SIZE) -------------------------------------

MODES = {
    "shared-runners": {},
    "run-in-hub": {"run_in_hub": True},
    "greenlet-per-connection": {"greenlet_per_connection": True},
}


def recorder_class(**extra):
    """Records (chunk, read size after it) per receive_data and acks each chunk with one b"."."""

    class Recorder(Connection):
        chunks = []
        reasons = []
        gone = gevent.event.Event()

        ack = True

        def receive_data(self, data):
            self.chunks.append((data, self._transport.read_size))
            if self.ack:
                self.send_data(b".")

        def unbind(self, reason=None):
            self.reasons.append(reason)
            self.gone.set()

    return type("Recorder", (Recorder,), {"chunks": [], "reasons": [], "gone": gevent.event.Event(), **extra})


@pytest.mark.parametrize("mode", list(MODES))
def test_reads_start_small_grow_for_a_big_message_without_splitting_it_and_shrink_back(reactor, mode):
    from packet_gevent.net.transport import READ_SIZE, SMALL_READ
    handler = recorder_class(**MODES[mode])
    server = reactor.start_server("127.0.0.1", 0, handler)
    sock = client(server)
    big = bytes(range(256)) * 16  # 4,096 bytes in one write: one segment on loopback
    for message in (b"small", big, b"again", b"x" * SMALL_READ, b"tail"):
        sock.sendall(message)
        assert recv_exactly(sock, 1) == b"."
    assert handler.chunks == [
        (b"small", SMALL_READ),
        (big, READ_SIZE),             # filled the small read: the rest was read at once, in the same chunk
        (b"again", SMALL_READ),       # shorter than a small read: small again
        (b"x" * SMALL_READ, READ_SIZE),  # exactly filled it (the extra read found nothing): big
        (b"tail", SMALL_READ),
    ]
    sock.close()
    assert handler.gone.wait(5)
    assert handler.reasons == [None]


@pytest.mark.parametrize("mode", list(MODES))
def test_a_reset_right_after_a_full_small_read_delivers_the_data_then_the_error(reactor, mode):
    import socket
    import struct
    from packet_gevent.net.transport import SMALL_READ
    handler = recorder_class(ack=False, **MODES[mode])  # no reply: a write would report the reset itself
    server = reactor.start_server("127.0.0.1", 0, handler)
    sock = socket.create_connection((server.host, server.port), timeout=5)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.sendall(b"r" * SMALL_READ)
    finally:
        sock.close()  # SO_LINGER 0: an RST right behind the data
    assert handler.gone.wait(5)
    assert b"".join(chunk for chunk, _ in handler.chunks) == b"r" * SMALL_READ
    # The read after the full one got ECONNRESET: it is reported after the data, not lost
    # (the kernel reports it once; a later read would see a clean EOF).
    assert len(handler.reasons) == 1 and isinstance(handler.reasons[0], ConnectionResetError)


@pytest.mark.parametrize("mode", list(MODES))
def test_bulk_data_survives_the_read_size_switching(reactor, mode):
    import hashlib

    class Echo(Connection):
        def receive_data(self, data):
            self.send_data(data)

    handler = type("Echo", (Echo,), dict(MODES[mode]))
    server = reactor.start_server("127.0.0.1", 0, handler)
    sock = client(server)
    # Sizes around the switch points, then a bulk run: every byte must come back in order.
    parts = [b"a" * n for n in (1, 478, 479, 480, 958, 65535, 65536, 65537, 12)] + [bytes(range(256)) * 8192]
    payload = b"".join(parts)
    sender = gevent.spawn(lambda: [sock.sendall(part) for part in parts])
    echoed = recv_exactly(sock, len(payload), timeout=20)
    sender.get(timeout=5)
    assert hashlib.sha256(echoed).digest() == hashlib.sha256(payload).digest()
    sock.close()
