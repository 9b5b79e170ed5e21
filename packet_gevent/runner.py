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
blocks, the calls posted after it wait.  A call that raises is logged with
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
    """Runs posted calls in order in one greenlet of its own (never in the hub)."""

    __slots__ = ("what", "queue", "hub", "loop", "greenlet", "idle", "wake_pending", "__weakref__")

    def __init__(self, what: str = "call") -> None:
        #: What the calls are, for the log line when one raises.
        self.what = what
        self.queue: Deque[Item] = collections.deque()
        self.hub = gevent.get_hub()
        self.loop = self.hub.loop
        self.greenlet = greenlet.greenlet(self._main, parent=self.hub)
        self.idle = True           # waiting for work (or not started yet)
        self.wake_pending = False  # a loop callback will switch into it

    def post(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` after the calls posted before it."""
        if self.idle and not self.queue and _getcurrent() is self.hub:
            _raw_switch(self.greenlet, (fn, args))
            return
        self.queue.append((fn, args))
        if self.idle and not self.wake_pending:
            self.wake_pending = True
            self.loop.run_callback(self._wake)

    @property
    def busy(self) -> bool:
        """True while a call runs (or blocks) or calls are queued."""
        return not self.idle or bool(self.queue)

    def _wake(self) -> None:  # in the hub
        self.wake_pending = False
        if self.idle and self.queue:
            _raw_switch(self.greenlet, None)

    def _main(self, item: Optional[Item]) -> None:
        queue, hub = self.queue, self.hub
        try:
            while True:
                self.idle = False
                if item is not None:
                    self._call(item)
                while queue:
                    self._call(queue.popleft())
                self.idle = True
                item = _raw_switch(hub)
        except greenlet.GreenletExit:
            raise  # the runner was dropped (garbage collected)
        except BaseException:
            # SystemExit/KeyboardInterrupt from a call: it goes on to the hub
            # as from any greenlet; later calls get a fresh greenlet.
            self.greenlet = greenlet.greenlet(self._main, parent=self.hub)
            self.idle = True
            if self.queue and not self.wake_pending:
                self.wake_pending = True
                self.loop.run_callback(self._wake)
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
