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
