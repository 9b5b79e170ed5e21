"""The greenlet + mailbox primitive (Mailbox), and SerialRunner: posted calls run in order in one greenlet.

The master side of the workers hands user code (worker proxies, reply
callbacks) to a runner instead of spawning a greenlet per message: creating
and starting a greenlet costs 8-13 us on this 2-core VM (``spawn_raw`` +
first switch), more than everything else a reply costs the master; a switch
pair into a live greenlet and back is 0.4 us.  :class:`Mailbox` is the
greenlet + mailbox core it is built on, shared with a worker's inbox.

``post(fn, *args)`` from the hub, while the runner is idle with nothing
queued, switches straight into its greenlet (the call runs at once, the hub
resumes when it finishes or blocks); from anywhere else the call is queued
and the greenlet woken by one loop callback per batch.  Calls run in post
order and never in the hub, so they may block cooperatively; while one
blocks, the calls posted after it wait for it, or (``hold_back=False``) run
in a fresh greenlet that takes over the runner.  A call that raises is logged with
its traceback and the runner goes on (a BaseException such as SystemExit
goes on to the hub, as from any greenlet, and a fresh greenlet takes over).
"""
from __future__ import annotations

import collections
import logging
from typing import Any, Callable, Deque, Optional, Tuple

import gevent
import greenlet

__all__ = ["SerialRunner", "Mailbox"]

logger = logging.getLogger(__name__)

_raw_switch = greenlet.greenlet.switch
_getcurrent = greenlet.getcurrent

Item = Tuple[Callable[..., Any], tuple]


class Mailbox:
    """Items for one greenlet (the *owner*), woken by one loop callback per batch.

    ``put`` (usually in the hub, e.g. from a read watcher) appends; if the
    owner waits in ``get`` the first ``put`` of a batch schedules one loop
    callback that switches into it, so every item one hub turn brings is
    handled in one wake-up.  No waiter object, no watcher start/stop per item.
    ``deliver`` hands an item to an owner that waits, from the hub, by
    switching into it at once (the SerialRunner's fast path).  Items are
    never None.  The core of :class:`SerialRunner` and of a worker's inbox.
    """

    __slots__ = ("items", "hub", "loop", "owner", "waiting", "wake_pending")

    def __init__(self, owner: Any = None) -> None:
        self.items: Deque[Any] = collections.deque()
        self.hub = gevent.get_hub()
        self.loop = self.hub.loop
        self.owner = _getcurrent() if owner is None else owner
        self.waiting = False        # the owner waits in get() (or has not started)
        self.wake_pending = False   # a loop callback will switch into the owner

    def put(self, item: Any) -> None:
        self.items.append(item)
        if self.waiting and not self.wake_pending:
            self.wake_pending = True
            self.loop.run_callback(self._wake)

    def deliver(self, item: Any) -> bool:
        """In the hub: switch into the waiting owner with ``item`` now; False if it is not idle."""
        if self.waiting and not self.items and _getcurrent() is self.hub:
            _raw_switch(self.owner, item)
            return True
        return False

    def _wake(self) -> None:  # in the hub
        self.wake_pending = False
        if self.waiting and self.items:
            _raw_switch(self.owner, None)

    def get(self) -> Any:
        """The next item (in the owner); waits cooperatively."""
        items = self.items
        while not items:
            self.waiting = True
            try:
                item = _raw_switch(self.hub)
            finally:
                self.waiting = False
            if item is not None:
                return item
        return items.popleft()


class SerialRunner:
    """Runs posted calls in order in one greenlet of its own (never in the hub).

    ``hold_back=True``: a call that blocks holds back the calls posted after
    it (strict order, as a connection's callbacks).  ``hold_back=False``: the
    blocked call keeps its greenlet and a fresh one runs the calls after it,
    so a call may wait for the effect of a later one (a reply callback that
    asks another worker and waits for that reply) without a deadlock.
    """

    __slots__ = ("what", "hold_back", "mailbox", "loop", "greenlet", "check_pending",
                 "__weakref__")

    def __init__(self, what: str = "call", *, hold_back: bool = True) -> None:
        #: What the calls are, for the log line when one raises.
        self.what = what
        self.hold_back = hold_back
        hub = gevent.get_hub()
        self.loop = hub.loop
        self.greenlet = greenlet.greenlet(self._main, parent=hub)
        self.mailbox = Mailbox(self.greenlet)
        self.mailbox.waiting = True  # a greenlet not started yet waits for its first call
        self.check_pending = False   # a loop callback will check whether a call blocked

    @property
    def queue(self) -> Deque[Item]:
        return self.mailbox.items

    @property
    def idle(self) -> bool:
        """Waiting for work (or not started yet)."""
        return self.mailbox.waiting

    def post(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` after the calls posted before it."""
        mailbox = self.mailbox
        if not mailbox.waiting and not self.hold_back and _getcurrent() is not self.greenlet:
            self._take_over()  # the runner is parked in a call that blocked
        if not mailbox.deliver((fn, args)):
            mailbox.put((fn, args))

    @property
    def busy(self) -> bool:
        """True while a call runs (or blocks) or calls are queued."""
        return not self.mailbox.waiting or bool(self.mailbox.items)

    def _take_over(self) -> None:
        """Leave the blocked call its greenlet; a fresh one runs the queue from now on."""
        mailbox = self.mailbox
        self.greenlet = mailbox.owner = greenlet.greenlet(self._main, parent=mailbox.hub)
        mailbox.waiting = True
        if mailbox.items and not mailbox.wake_pending:
            mailbox.wake_pending = True
            self.loop.run_callback(mailbox._wake)

    def _check_blocked(self) -> None:  # in the hub
        self.check_pending = False
        # In the hub, a runner that is not waiting is parked inside a call.
        if not self.mailbox.waiting and self.mailbox.items:
            self._take_over()

    def _main(self, item: Optional[Item]) -> None:
        me = _getcurrent()
        mailbox = self.mailbox
        queue = mailbox.items
        mailbox.waiting = False
        try:
            while True:
                if item is None:
                    item = mailbox.get()
                if queue and not self.hold_back and not self.check_pending:
                    # Calls wait behind this one: if it blocks, hand them over.
                    self.check_pending = True
                    self.loop.run_callback(self._check_blocked)
                self._call(item)
                item = None
                if self.greenlet is not me:
                    return  # taken over while the call blocked: done here
        except greenlet.GreenletExit:
            raise  # the runner was dropped (garbage collected)
        except BaseException:
            # SystemExit/KeyboardInterrupt from a call: it goes on to the hub
            # as from any greenlet; later calls get a fresh greenlet.
            if self.greenlet is me:
                self._take_over()
            raise

    def _call(self, item: Item) -> None:
        fn, args = item
        try:
            fn(*args)
        except Exception:
            logger.exception("%s %r raised", self.what, fn)

    def __repr__(self) -> str:
        state = "idle" if self.idle else "running"
        return f"<SerialRunner {self.what} {state} queued={len(self.queue)}>"
