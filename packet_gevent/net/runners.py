"""Shared runners: connections' callbacks run in a few greenlets, not one each.

The default handler mode.  Each connection's socket is read by a libev io
watcher in the hub, which queues ``(transport, bytes)`` on the hub's
:class:`Dispatcher`; once per loop turn (not per message) the hub switches
into the dispatcher's current *runner* greenlet, which runs every queued
callback in order and switches back when the queue is empty.  Posted calls
(timers, worker replies, ``defer`` results, ``next_turn``) go through the
same queue, so a connection's callbacks keep their order.

A callback may still block cooperatively.  The next time the hub dispatches,
it finds the runner parked inside a call: that connection is then *held* by
the blocked runner (its read watcher stopped, so its later data waits in the
kernel, in order) and a fresh runner from a small free list takes over the
queue.  Whatever is queued for a held connection meanwhile goes to its own
mailbox; when the blocked callback returns, its runner runs that mailbox,
releases the connection (restarting its reads) and parks on the free list.
Greenlets beyond the current runner therefore exist only for callbacks that
really block, and an idle connection costs no greenlet at all.

What changes for handlers: ``gevent.getcurrent()`` inside a callback is the
runner running it, shared with other connections (and ``gevent.local`` with
it).  Handlers that need a greenlet of their own declare
``greenlet_per_connection = True`` (transport.Transport's actor loop).
"""
from __future__ import annotations

import collections
import logging
import threading
from typing import Any, Callable, Deque, Optional, Tuple

import greenlet

from .transport import CALLBACK_ERRORS, CLOSED, OPEN, READ_SIZE, Transport, _WOULD_BLOCK

__all__ = ["Dispatcher", "SharedTransport", "dispatcher_for"]

logger = logging.getLogger("packet_gevent.net.connection")

_raw_switch = greenlet.greenlet.switch
_getcurrent = greenlet.getcurrent

#: Runners kept parked for reuse after the callbacks that held them return.
#: More blocked callbacks than this at once still work: the extra runners
#: finish and end instead of parking.
MAX_FREE_RUNNERS = 64

#: A queued entry: (transport, bytes read) or (transport, (fn, args)).
Entry = Tuple["SharedTransport", Any]

_local = threading.local()


def dispatcher_for(hub: Any) -> "Dispatcher":
    """The dispatcher of ``hub`` (one per hub, i.e. per thread)."""
    dispatcher = getattr(_local, "dispatcher", None)
    if dispatcher is None or dispatcher.hub is not hub:
        dispatcher = _local.dispatcher = Dispatcher(hub)
    return dispatcher


class Dispatcher:
    """The hub's queue of connection callbacks and the runners that run them."""

    __slots__ = ("hub", "loop", "queue", "runner", "running", "flush_pending", "free")

    def __init__(self, hub: Any) -> None:
        self.hub = hub
        self.loop = hub.loop
        self.queue: Deque[Entry] = collections.deque()
        #: The current runner: the next flush switches into it.
        self.runner = self._new_runner()
        #: The transport whose callback the current runner is inside (None
        #: when it is parked idle).  Seen from the hub, set means "blocked".
        self.running: Optional[SharedTransport] = None
        self.flush_pending = False
        self.free: list = []

    def _new_runner(self) -> Any:
        return greenlet.greenlet(self._main, parent=self.hub)

    def schedule(self) -> None:
        """Make sure a flush runs this loop turn (call after queueing)."""
        if not self.flush_pending:
            self.flush_pending = True
            self.loop.run_callback(self.flush)

    def flush(self) -> None:  # in the hub
        self.flush_pending = False
        while True:
            # The runner comes back here when the queue is empty, or when a
            # call blocks (gevent switches to the hub): then it keeps that
            # connection and a fresh runner goes on with the queue at once.
            if self.running is not None:
                self._take_over()
            if not self.queue:
                return
            _raw_switch(self.runner)

    def _take_over(self) -> None:  # in the hub
        """The current runner is parked inside a call: it keeps that connection, a fresh one the queue."""
        transport = self.running
        transport.held_by = self.runner
        watcher = transport.read_watcher
        if watcher is not None and not transport.busy_stopped:
            # Its later data waits in the kernel, in order (backpressure).
            watcher.stop()
            transport.busy_stopped = True
        self.running = None
        self.runner = self.free.pop() if self.free else self._new_runner()

    def _main(self, *_: Any) -> None:
        me = _getcurrent()
        queue, hub = self.queue, self.hub
        transport = None
        try:
            while True:
                # The hot loop: run what is queued while this is the current runner.
                while queue:
                    transport, item = queue.popleft()
                    if transport.held_by is not None or transport.state is CLOSED:
                        if not transport._admit(item):
                            continue
                    self.running = transport
                    try:
                        if item.__class__ is bytes:
                            transport.on_data(item)
                        else:
                            item[0](*item[1])
                    except CALLBACK_ERRORS as exc:
                        transport._callback_failed(transport.on_data if item.__class__ is bytes
                                                   else item[0], exc)
                    if self.runner is not me:
                        # The call blocked and another runner took over meanwhile.
                        transport._finish_held()
                        break
                    self.running = None
                transport = None
                if self.runner is me:
                    _raw_switch(hub)  # idle until the next flush
                elif len(self.free) < MAX_FREE_RUNNERS:
                    self.free.append(me)
                    _raw_switch(hub)  # parked until _take_over makes it current again
                else:
                    return
        except BaseException as exc:
            self._runner_died(me, transport, exc)
            raise

    def _runner_died(self, me: Any, transport: Optional["SharedTransport"], exc: BaseException) -> None:
        """A BaseException left a runner (a stop's GreenletExit, SystemExit...): keep the rest going."""
        if self.runner is me:
            self.running = None
            self.runner = self.free.pop() if self.free else self._new_runner()
            if self.queue:
                self.schedule()
        if transport is None:
            return
        if transport.held_by is me:
            transport.held_by = None
        if isinstance(exc, greenlet.GreenletExit) and not transport.unbind_done:
            # Killed by a reactor stop that ran out of patience.
            from ..errors import PacketError
            transport._close(PacketError("a callback was still blocked when Reactor.stop's grace "
                                         "period ended; the connection was closed under it"))
            transport._run_unbind()
        else:
            transport._release()


class SharedTransport(Transport):
    """A Transport whose callbacks run in the hub's shared runners.  Internal."""

    __slots__ = ("dispatcher", "held_by", "first_item", "unbind_item")

    def _init_actor(self) -> None:
        self.dispatcher = dispatcher_for(self.hub)
        #: The runner parked inside a blocked callback of this connection.
        self.held_by: Any = None
        self.first_item: Any = None
        self.unbind_item: Any = None
        #: Calls queued while held, created on first use (idle connections stay small).
        self.mailbox: Optional[Deque[Any]] = None

    # What code outside sees of the actor: the greenlet running (or blocked
    # in) this connection's callback, and whether none is.
    @property  # type: ignore[override]
    def greenlet(self) -> Any:
        if self.held_by is not None:
            return self.held_by
        dispatcher = self.dispatcher
        return dispatcher.runner if dispatcher.running is self else None

    @property  # type: ignore[override]
    def idle(self) -> bool:
        return self.held_by is None and self.dispatcher.running is not self

    def pending(self) -> bool:
        if Transport.pending(self):
            return True
        queue = self.dispatcher.queue
        return bool(queue) and any(entry[0] is self for entry in queue)

    def start(self, first: Callable[[], Any], may_block: bool = False) -> None:
        """Queue ``first`` (post_init...); it may block: a runner then holds this connection."""
        self.first_item = item = (first, ())
        dispatcher = self.dispatcher
        dispatcher.queue.append((self, item))
        dispatcher.schedule()

    def post(self, fn: Callable[..., Any], args: tuple = ()) -> bool:
        """Run ``fn(*args)`` in a runner, after what is queued for this connection.

        Returns False (and drops the call) when the connection has ended.
        """
        if self.unbind_done or self.state is CLOSED:
            return False
        dispatcher = self.dispatcher
        dispatcher.queue.append((self, (fn, args)))
        dispatcher.schedule()
        return True

    def _on_readable(self) -> None:  # in the hub
        if self.held_by is not None:
            # A callback of ours is blocked: stop reading until it returns.
            self.read_watcher.stop()
            self.busy_stopped = True
            return
        try:
            data = self.sock.recv(READ_SIZE)
        except _WOULD_BLOCK:
            return
        except OSError as exc:
            self._abort(exc)
            return
        if data:
            if self.idle_timeout:
                self.last_activity = self.loop.now()
            dispatcher = self.dispatcher
            dispatcher.queue.append((self, data))
            if not dispatcher.flush_pending:
                dispatcher.flush_pending = True
                self.loop.run_callback(dispatcher.flush)
        else:
            self._abort(None)

    def _admit(self, item: Any) -> bool:
        """A queued item of a held or closed connection: run it now (True), keep it or drop it."""
        if self.state is CLOSED and item is not self.first_item and item is not self.unbind_item:
            return False  # a close drops what was queued (post_init and unbind excepted)
        if self.held_by is not None:
            if self.mailbox is None:
                self.mailbox = collections.deque()
            self.mailbox.append(item)
            return False
        return True

    def _finish_held(self) -> None:
        """In the runner whose blocked callback returned: run what waited for it, then release."""
        mailbox = self.mailbox
        while mailbox:
            item = mailbox.popleft()
            if self.state is CLOSED and item is not self.first_item and item is not self.unbind_item:
                continue
            try:
                if item.__class__ is bytes:
                    self.on_data(item)
                else:
                    item[0](*item[1])
            except CALLBACK_ERRORS as exc:
                self._callback_failed(self.on_data if item.__class__ is bytes else item[0], exc)
        self._release()

    def _release(self) -> None:
        self.held_by = None
        self.mailbox = None
        if self.busy_stopped and not self.user_paused and self.state is OPEN \
                and self.read_watcher is not None:
            self.busy_stopped = False
            self.read_watcher.start(self._on_readable)

    def _arrange_unbind(self) -> None:
        if self.mailbox:
            self.mailbox.clear()
        self.unbind_item = item = (self._unbind_once, ())
        dispatcher = self.dispatcher
        dispatcher.queue.append((self, item))
        dispatcher.schedule()

    def _unbind_once(self) -> None:
        if not self.unbind_done:
            self._run_unbind()
