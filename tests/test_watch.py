"""reactor.watch (EventMachine's EM.watch): readiness of a descriptor the caller owns (a real pipe)."""
import os

import gevent
import gevent.event
import gevent.queue
import pytest

from packet_gevent import Connection, ReactorError


def test_readable_notifications_are_level_triggered_and_detach_leaves_the_fd_open(reactor):
    r, w = os.pipe()
    os.set_blocking(r, False)
    got = gevent.queue.Queue()

    class OneByteAtATime(Connection):  # a plain class: mixed in like any handler
        def notify_readable(self):
            got.put(os.read(r, 1))  # leaves the rest: called again while data is left

        def unbind(self, reason=None):
            got.put(("unbind", reason))

    conn = reactor.watch(r, OneByteAtATime)
    conn.set_notify_readable(True)
    assert conn.is_notify_readable() and conn.get_fd() == r
    os.write(w, b"abc")
    assert [got.get(timeout=5) for _ in range(3)] == [b"a", b"b", b"c"]
    conn.set_notify_readable(False)
    os.write(w, b"d")
    gevent.sleep(0.05)  # a notification would come within a loop turn (none may)
    assert got.empty()
    conn.set_notify_readable(True)
    assert got.get(timeout=5) == b"d"
    assert conn.detach() == r
    assert got.get(timeout=5) == ("unbind", None)
    os.fstat(r)  # still open: it is the caller's
    with pytest.raises(ReactorError):
        conn.send_data(b"x")
    os.close(r)
    os.close(w)


def test_writable_notification_and_reactor_stop_unbinds():
    from packet_gevent import Reactor
    r, w = os.pipe()
    wrote = gevent.event.Event()
    unbound = gevent.event.Event()

    class Writer:
        def notify_writable(self):
            os.write(w, b"ready")
            self.set_notify_writable(False)
            wrote.set()

        def unbind(self):
            unbound.set()

    reactor = Reactor(stop_grace=1.0)
    reactor.start()
    conn = reactor.watch(w, Writer)
    conn.set_notify_writable(True)
    assert wrote.wait(5)
    assert os.read(r, 5) == b"ready"
    reactor.stop(timeout=1.0)
    assert unbound.is_set()
    os.fstat(w)
    os.close(r)
    os.close(w)
