"""Shared runners: connections' callbacks run in a few greenlets, not one each.

The default handler mode (net/transport.py keeps the socket and send queue).
A readable socket's libev io watcher calls ``deque.append`` on the hub's
:class:`Dispatcher` (its ``ready`` queue: no Python frame in the hub per
message); once per loop turn, from a prepare watcher, the hub switches into
the dispatcher's current *runner* greenlet, which reads every ready socket
and runs its callback, one after another, and switches back when nothing is
left.  Posted calls (timers, worker replies, ``defer`` results, ``next_turn``,
post_init, unbind) go through a second queue drained by the same runner, so a
connection's callbacks keep their order.

A callback may still block cooperatively.  gevent then switches to the hub,
which finds its runner parked inside a call: that connection is *held* by the
blocked runner (its read watcher stopped, so its later data waits in the
kernel, in order) and a fresh runner from a small free list takes over the
queues at once.  What is posted for a held connection meanwhile goes to its
own mailbox; when the blocked callback returns, its runner runs that mailbox,
releases the connection (restarting its reads) and parks on the free list.
Greenlets beyond the current runner therefore exist only for callbacks that
really block, and an idle connection costs no greenlet.

What changes for handlers: ``gevent.getcurrent()`` inside a callback is the
runner running it, shared with other connections (and ``gevent.local`` with
it).  Handlers that need a greenlet of their own declare
``greenlet_per_connection = True`` (transport.Transport's actor loop).
"""
from __future__ import annotations

import collections
import functools
import logging
import threading
from typing import Any, Callable, Deque, Optional, Tuple

import greenlet

from .transport import CALLBACK_ERRORS, CLOSED, OPEN, Transport, _WOULD_BLOCK, _os_read

__all__ = ["Dispatcher", "HubTransport", "SharedTransport", "dispatcher_for"]

logger = logging.getLogger("packet_gevent.net.connection")

_raw_switch = greenlet.greenlet.switch
_getcurrent = greenlet.getcurrent

#: Runners kept parked for reuse after the callbacks that held them return.
#: More blocked callbacks than this at once still work: the extra runners
#: finish and end instead of parking.
MAX_FREE_RUNNERS = 64

#: A queued entry: (transport, its on_data, bytes read) or
#: (transport, its _run_posted, (fn, args)): the runner calls entry[1](entry[2]).
Entry = Tuple["SharedTransport", Callable[[Any], Any], Any]

_local = threading.local()


def dispatcher_for(hub: Any) -> "Dispatcher":
    """The dispatcher of ``hub`` (one per hub, i.e. per thread)."""
    dispatcher = getattr(_local, "dispatcher", None)
    if dispatcher is None or dispatcher.hub is not hub:
        dispatcher = _local.dispatcher = Dispatcher(hub)
    return dispatcher


class Dispatcher:
    """The hub's queues of connection callbacks and the runners that run them."""

    __slots__ = ("hub", "loop", "ready", "hub_ready", "queue", "runner", "running", "flush_pending",
                 "free", "prepare")

    def __init__(self, hub: Any) -> None:
        self.hub = hub
        self.loop = hub.loop
        #: Transports whose socket is readable: their io watcher appends them
        #: (deque.append called by libev, no Python frame in the hub); the
        #: runner reads them.
        self.ready: Deque[SharedTransport] = collections.deque()
        #: The same for run_in_hub handlers' transports: read and run in the hub.
        self.hub_ready: Deque[HubTransport] = collections.deque()
        #: Posted calls: (transport, its _run_posted, (fn, args)).
        self.queue: Deque[Entry] = collections.deque()
        #: The current runner: the next dispatch switches into it.
        self.runner = self._new_runner()
        #: The transport whose callback the current runner is inside (None
        #: when it is parked idle).  Seen from the hub, set means "blocked".
        self.running: Optional[SharedTransport] = None
        self.flush_pending = False
        self.free: list = []
        # Once per loop turn, before libev polls again: run what the io
        # watchers made ready during the turn (not referenced: it does not
        # keep the loop alive).
        self.prepare = self.loop.prepare(ref=False)
        self.prepare.start(self._on_prepare)

    def _new_runner(self) -> Any:
        return greenlet.greenlet(self._main, parent=self.hub)

    def schedule(self) -> None:
        """Make sure posted calls run this loop turn (call after queueing)."""
        if not self.flush_pending:
            self.flush_pending = True
            self.loop.run_callback(self.flush)

    def flush(self) -> None:  # in the hub, from run_callback
        self.flush_pending = False
        self._dispatch()

    def _on_prepare(self) -> None:  # in the hub, every loop turn
        if self.hub_ready:
            self._read_in_hub()
        if self.ready or self.queue:
            self._dispatch()

    def _read_in_hub(self) -> None:
        """Read the ready sockets of run_in_hub handlers and run their callbacks, here."""
        hub_ready, loop = self.hub_ready, self.loop
        while hub_ready:
            transport = hub_ready.popleft()
            if transport.state is not OPEN or transport.user_paused:
                continue  # closed, or paused, since its socket became readable
            try:
                data = _os_read(transport.fd, transport.read_size)
            except _WOULD_BLOCK:
                continue
            except OSError as exc:
                transport._abort(exc)
                continue
            if data:
                if len(data) >= transport.read_check:
                    data = transport._resize_read(data)
                if transport.idle_timeout:
                    transport.last_activity = loop.now()
                on_data = transport.on_data  # a local: see _run_queued
                try:
                    on_data(data)
                except CALLBACK_ERRORS as exc:
                    transport._callback_failed(on_data, exc)
            else:
                transport._abort(None)

    def _dispatch(self) -> None:  # in the hub
        while True:
            # The runner comes back here when the queues are empty, or when a
            # call blocks (gevent switches to the hub): then it keeps that
            # connection and a fresh runner goes on with the queues at once.
            if self.running is not None:
                self._take_over()
            if not self.ready and not self.queue:
                return
            _raw_switch(self.runner)

    def _take_over(self) -> None:  # in the hub
        """The current runner is parked inside a call: it keeps that connection, a fresh one the queue."""
        transport = self.running
        transport.held_by = self.runner
        transport.slow = True
        watcher = transport.read_watcher
        if watcher is not None and not transport.busy_stopped:
            # Its later data waits in the kernel, in order (backpressure).
            watcher.stop()
            transport.busy_stopped = True
        self.running = None
        self.runner = self.free.pop() if self.free else self._new_runner()

    def _main(self, *_: Any) -> None:
        me = _getcurrent()
        hub = self.hub
        while True:
            if self._run_queued(me):
                _raw_switch(hub)  # idle until the next dispatch
            elif len(self.free) < MAX_FREE_RUNNERS:
                self.free.append(me)
                _raw_switch(hub)  # parked until _take_over makes it current again
            else:
                return

    def _run_queued(self, me: Any) -> bool:
        """The hot loop: run what is queued; False if a call blocked and another runner took over."""
        queue, ready, loop = self.queue, self.ready, self.loop
        read = _os_read  # a local: the loop below runs once per message
        transport = None
        try:
            while True:
                while queue:
                    transport, fn, arg = queue.popleft()
                    if transport.slow:  # held by a blocked callback, or closed
                        if not transport._admit(fn, arg):
                            continue
                    self.running = transport
                    try:
                        fn(arg)
                    except CALLBACK_ERRORS as exc:
                        transport._callback_failed(fn, exc)
                    if self.runner is not me:
                        # The call blocked and another runner took over meanwhile.
                        transport._finish_held()
                        return False
                    self.running = None
                if not ready:
                    return True
                while ready:
                    transport = ready.popleft()
                    if transport.slow:  # held, paused or closed
                        transport._readable_while_slow()
                        continue
                    try:
                        data = read(transport.fd, transport.read_size)  # os.read: see transport.py
                    except _WOULD_BLOCK:
                        continue
                    except OSError as exc:
                        transport._abort(exc)
                        continue
                    if not data:
                        transport._abort(None)
                        continue
                    if len(data) >= transport.read_check:
                        data = transport._resize_read(data)
                    if transport.idle_timeout:
                        transport.last_activity = loop.now()
                    self.running = transport
                    # A local, not ``transport.on_data(data)``: a call through
                    # a slot is an unspecialised method load (~150 instructions).
                    on_data = transport.on_data
                    try:
                        on_data(data)
                    except CALLBACK_ERRORS as exc:
                        transport._callback_failed(on_data, exc)
                    if self.runner is not me:
                        transport._finish_held()
                        return False
                    self.running = None
                if not queue:
                    return True
        except BaseException as exc:
            self._runner_died(me, transport, exc)
            raise

    def _runner_died(self, me: Any, transport: Optional["SharedTransport"], exc: BaseException) -> None:
        """A BaseException left a runner (a stop's GreenletExit, SystemExit...): keep the rest going."""
        if self.runner is me:
            self.running = None
            self.runner = self.free.pop() if self.free else self._new_runner()
            if self.queue or self.ready:
                self.schedule()
        if transport is None:
            return
        if isinstance(exc, greenlet.GreenletExit) and not transport.unbind_done:
            # Killed by a reactor stop that ran out of patience.
            from ..errors import PacketError
            transport._close(PacketError("a callback was still blocked when Reactor.stop's grace "
                                         "period ended; the connection was closed under it"))
            transport._run_unbind()
        if transport.held_by is me:
            transport._release()


class SharedTransport(Transport):
    """A Transport whose callbacks run in the hub's shared runners.  Internal."""

    # _on_readable: the read watcher's callback, a partial that appends this
    # transport to the dispatcher's ready queue (a slot shadowing the method).
    __slots__ = ("dispatcher", "held_by", "slow", "first_item", "unbind_item", "_on_readable")

    def _init_actor(self) -> None:
        self.dispatcher = dispatcher = dispatcher_for(self.hub)
        self._on_readable = functools.partial(dispatcher.ready.append, self)
        #: The runner parked inside a blocked callback of this connection.
        self.held_by: Any = None
        #: Held (held_by set), paused (user_paused) or closed: what is queued
        #: for this connection takes the slow path (_admit, _readable_while_slow).
        self.slow = False
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
        dispatcher = self.dispatcher
        return self in dispatcher.ready or any(entry[0] is self for entry in dispatcher.queue)

    def start(self, first: Callable[[], Any], may_block: bool = False) -> None:
        """Queue ``first`` (post_init...); it may block: a runner then holds this connection."""
        self.first_item = item = (first, ())
        dispatcher = self.dispatcher
        dispatcher.queue.append((self, self._run_posted, item))
        dispatcher.schedule()

    def post(self, fn: Callable[..., Any], args: tuple = ()) -> bool:
        """Run ``fn(*args)`` in a runner, after what is queued for this connection.

        Returns False (and drops the call) when the connection has ended.
        """
        if self.unbind_done or self.state is CLOSED:
            return False
        dispatcher = self.dispatcher
        dispatcher.queue.append((self, self._run_posted, (fn, args)))
        dispatcher.schedule()
        return True

    def _run_posted(self, item: Tuple[Callable[..., Any], tuple]) -> None:
        fn, args = item
        try:
            fn(*args)
        except CALLBACK_ERRORS as exc:
            self._callback_failed(fn, exc)

    def pause_reading(self) -> None:
        Transport.pause_reading(self)
        self.slow = True

    def resume_reading(self) -> None:
        Transport.resume_reading(self)
        self._set_slow()

    def _set_slow(self) -> None:
        self.slow = self.held_by is not None or self.user_paused or self.state is CLOSED

    def _readable_while_slow(self) -> None:  # in a runner
        if self.held_by is not None and self.read_watcher is not None and not self.user_paused:
            # Made ready before it was held (attach while connecting): stop reading.
            self.read_watcher.stop()
            self.busy_stopped = True

    def _admit(self, fn: Callable[[Any], Any], arg: Any) -> bool:
        """A queued item of a held or closed connection: run it now (True), keep it or drop it."""
        if self.state is CLOSED and arg is not self.first_item and arg is not self.unbind_item:
            return False  # a close drops what was queued (post_init and unbind excepted)
        if self.held_by is not None:
            if self.mailbox is None:
                self.mailbox = collections.deque()
            self.mailbox.append((fn, arg))
            return False
        return True

    def _finish_held(self) -> None:
        """In the runner whose blocked callback returned: run what waited for it, then release."""
        while self.mailbox:  # re-read: a call that blocks again may get more queued behind it
            fn, arg = self.mailbox.popleft()
            if self.state is CLOSED and arg is not self.first_item and arg is not self.unbind_item:
                continue
            try:
                fn(arg)
            except CALLBACK_ERRORS as exc:
                self._callback_failed(fn, exc)
        self._release()

    def _release(self) -> None:
        self.held_by = None
        self._set_slow()
        self.mailbox = None
        if self.busy_stopped and not self.user_paused and self.state is OPEN \
                and self.read_watcher is not None:
            self.busy_stopped = False
            self.read_watcher.start(self._on_readable)

    def _arrange_unbind(self) -> None:
        if self.mailbox:
            self.mailbox.clear()
        self.slow = True
        self.unbind_item = item = (self._unbind_once, ())
        dispatcher = self.dispatcher
        dispatcher.queue.append((self, self._run_posted, item))
        dispatcher.schedule()

    def _unbind_once(self) -> None:
        if not self.unbind_done:
            self._run_unbind()


class HubTransport(Transport):
    """A run_in_hub handler's Transport: its read watcher queues it for the hub's batch read.  Internal."""

    # _on_readable_in_hub: the read watcher's callback, a partial appending this
    # transport to the dispatcher's hub_ready queue (a slot shadowing the method).
    __slots__ = ("_on_readable_in_hub",)

    def _init_actor(self) -> None:
        self.greenlet = None
        self.idle = True
        self.mailbox = None  # never used: callbacks run at once, in the hub
        self._on_readable_in_hub = functools.partial(dispatcher_for(self.hub).hub_ready.append, self)

    def _arrange_unbind(self) -> None:
        self.loop.run_callback(self._run_unbind)
