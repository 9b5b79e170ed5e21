"""SerialRunner: run posted calls one at a time, in order, in one long-lived greenlet.

The master side of the workers hands user code (worker proxies, reply
callbacks) to a runner instead of spawning a greenlet per message: creating
and starting a greenlet costs 8-13 us on this 2-core VM (``spawn_raw`` +
first switch; a switch pair into a live greenlet and back is 0.4 us), which
was the biggest single cost per reply.

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

__all__ = ["SerialRunner"]

logger = logging.getLogger(__name__)

_raw_switch = greenlet.greenlet.switch
_getcurrent = greenlet.getcurrent

Item = Tuple[Callable[..., Any], tuple]


class SerialRunner:
    """Runs posted calls in order in one greenlet of its own (never in the hub).

    ``hold_back=True``: a call that blocks holds back the calls posted after
    it (strict order, as a connection's callbacks).  ``hold_back=False``: the
    blocked call keeps its greenlet and a fresh one runs the calls after it,
    so a call may wait for the effect of a later one (a reply callback that
    asks another worker and waits for that reply) without a deadlock.
    """

    __slots__ = ("what", "hold_back", "queue", "hub", "loop", "greenlet", "idle", "wake_pending",
                 "check_pending", "__weakref__")

    def __init__(self, what: str = "call", *, hold_back: bool = True) -> None:
        #: What the calls are, for the log line when one raises.
        self.what = what
        self.hold_back = hold_back
        self.queue: Deque[Item] = collections.deque()
        self.hub = gevent.get_hub()
        self.loop = self.hub.loop
        self.greenlet = greenlet.greenlet(self._main, parent=self.hub)
        self.idle = True            # waiting for work (or not started yet)
        self.wake_pending = False   # a loop callback will switch into it
        self.check_pending = False  # a loop callback will check whether a call blocked

    def post(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` after the calls posted before it."""
        current = _getcurrent()
        if not self.idle and not self.hold_back and current is not self.greenlet:
            self._take_over()  # the runner is parked in a call that blocked
        if self.idle and not self.queue and current is self.hub:
            _raw_switch(self.greenlet, (fn, args))
            return
        self.queue.append((fn, args))
        self._schedule_wake()

    @property
    def busy(self) -> bool:
        """True while a call runs (or blocks) or calls are queued."""
        return not self.idle or bool(self.queue)

    def _schedule_wake(self) -> None:
        if self.idle and not self.wake_pending:
            self.wake_pending = True
            self.loop.run_callback(self._wake)

    def _wake(self) -> None:  # in the hub
        self.wake_pending = False
        if self.idle and self.queue:
            _raw_switch(self.greenlet, None)

    def _take_over(self) -> None:
        """Leave the blocked call its greenlet; a fresh one runs the queue from now on."""
        self.greenlet = greenlet.greenlet(self._main, parent=self.hub)
        self.idle = True

    def _check_blocked(self) -> None:  # in the hub
        self.check_pending = False
        # In the hub, a runner that is not idle is parked inside a call.
        if not self.idle and self.queue:
            self._take_over()
            self._schedule_wake()

    def _main(self, item: Optional[Item]) -> None:
        me = _getcurrent()
        queue, hub = self.queue, self.hub
        try:
            while True:
                self.idle = False
                while True:
                    if item is None:
                        if not queue:
                            break
                        item = queue.popleft()
                    if queue and not self.hold_back and not self.check_pending:
                        # Calls wait behind this one: if it blocks, hand them over.
                        self.check_pending = True
                        self.loop.run_callback(self._check_blocked)
                    self._call(item)
                    item = None
                    if self.greenlet is not me:
                        return  # taken over while the call blocked: done here
                self.idle = True
                item = _raw_switch(hub)
        except greenlet.GreenletExit:
            raise  # the runner was dropped (garbage collected)
        except BaseException:
            # SystemExit/KeyboardInterrupt from a call: it goes on to the hub
            # as from any greenlet; later calls get a fresh greenlet.
            if self.greenlet is me:
                self._take_over()
                if self.queue:
                    self._schedule_wake()
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
