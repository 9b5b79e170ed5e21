"""connect(reconnect_policy=...): reconnect with back-off, over real sockets on 127.0.0.1 and ::1."""
import socket

import gevent
import gevent.event
import gevent.queue
import gevent.socket
import pytest

from packet_gevent import Connection, ReconnectPolicy

FAST = ReconnectPolicy(initial_delay=0.02, factor=2.0, max_delay=0.08, jitter=0.0)


def free_port(host):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    probe = socket.socket(family, socket.SOCK_STREAM)
    probe.bind((host, 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there now: connects are refused
    return port


class Client(Connection):
    def __init__(self):
        self.events = gevent.queue.Queue()
        self.post_inits = 0

    def post_init(self):
        self.post_inits += 1

    def connection_completed(self):
        self.events.put("connected")

    def unbind(self, reason=None):
        self.events.put(("unbind", type(reason).__name__ if reason is not None else None,
                         self.reconnect_failures))


def test_policy_delays_grow_to_the_maximum_with_jitter_inside_its_bounds():
    policy = ReconnectPolicy(initial_delay=1, factor=3, max_delay=20, jitter=0)
    assert [policy.delay(n) for n in range(5)] == [1, 3, 9, 20, 20]
    jittery = ReconnectPolicy(initial_delay=1, factor=2, max_delay=8, jitter=0.25)
    assert all(0.75 <= jittery.delay(0) <= 1.25 for _ in range(100))
    with pytest.raises(ValueError):
        ReconnectPolicy(factor=0.5)
    with pytest.raises(ValueError):
        ReconnectPolicy(max_tries=0)


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_retries_until_the_server_comes_then_after_a_loss_and_close_connection_ends_it(reactor, host):
    port = free_port(host)
    conn = reactor.connect(host, port, Client, reconnect_policy=FAST)
    # Refused three times in a row: the count grows.
    assert [conn.events.get(timeout=5) for _ in range(3)] == [
        ("unbind", "ConnectionRefusedError", n) for n in (1, 2, 3)]
    accepted = gevent.queue.Queue()

    class Server(Connection):
        def connection_completed(self):
            accepted.put(self)

    server = reactor.start_server(host, port, Server)
    while True:  # refusals already under way may still come in before the success
        event = conn.events.get(timeout=5)
        if event == "connected":
            break
        assert event[:2] == ("unbind", "ConnectionRefusedError")
    accepted.get(timeout=5).close_connection()  # the server drops it: the client comes back
    assert conn.events.get(timeout=5) == ("unbind", None, 0)
    assert conn.events.get(timeout=5) == "connected"
    assert conn.post_inits == 1  # the same instance, set up once
    conn.close_connection()  # on purpose: no more attempts
    assert conn.events.get(timeout=5) == ("unbind", None, 0)
    gevent.sleep(0.3)  # several maximum delays: nothing may happen (no event to wait for)
    assert conn.events.empty() and accepted.qsize() == 1
    reactor.stop_server(server)


def test_max_tries_gives_up_and_reactor_stop_cancels_a_pending_retry():
    from packet_gevent import Reactor
    r = Reactor(stop_grace=1.0)
    r.start()
    port = free_port("127.0.0.1")
    conn = r.connect("127.0.0.1", port, Client,
                     reconnect_policy={"initial_delay": 0.01, "max_delay": 0.02, "jitter": 0, "max_tries": 3})
    assert [conn.events.get(timeout=5)[2] for _ in range(3)] == [1, 2, 3]
    gevent.sleep(0.2)  # ten maximum delays: given up
    assert conn.events.empty()

    slow = r.connect("127.0.0.1", port, Client, reconnect_policy=ReconnectPolicy(initial_delay=30))
    assert slow.events.get(timeout=5)[:2] == ("unbind", "ConnectionRefusedError")
    assert len(r._timers) == 1  # the retry, 30 s away
    r.stop(timeout=1.0)
    assert not r._timers and slow.events.empty()
