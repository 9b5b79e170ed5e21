"""One-shot and periodic timers on the hub's libev loop (no polling).

A timer's watcher fires in the hub; the hub never runs user code itself.  It
hands the callback to a *dispatch* function: the owning connection's mailbox
(so a connection's timers run in order with its other callbacks, in its
greenlet) or a fresh greenlet for reactor-level timers.  Either way the
callback may block cooperatively.

Periodic timers use libev's repeating timers, whose next due time is the
previous due time plus the interval, so they do not drift.  A periodic timer
whose callback is still running when the next tick is due skips that tick
(counted in ``skipped``) instead of running twice at once.  A periodic timer
of 0 seconds runs on every loop turn (EventMachine allows it): the loop then
never sleeps, so it costs a core while it lives.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Optional

__all__ = ["Timer", "TimerMethods"]

logger = logging.getLogger(__name__)

Dispatch = Callable[[Callable[..., Any], tuple], None]


class Timer:
    """A scheduled call.  Returned by ``add_timer`` / ``add_periodic_timer``.

    ``cancel()`` stops it (idempotent); ``active`` says whether it may still
    fire; ``fired`` and ``skipped`` count ticks run and ticks skipped.
    """

    __slots__ = ("interval", "periodic", "fired", "skipped", "_fn", "_args",
                 "_watcher", "_dispatch", "_running", "_on_done", "__weakref__")

    def __init__(self, loop: Any, seconds: float, fn: Callable[..., Any], args: tuple,
                 *, periodic: bool, dispatch: Dispatch,
                 on_done: Optional[Callable[["Timer"], None]] = None) -> None:
        if seconds < 0:
            raise ValueError(f"timer interval must be >= 0 seconds, got {seconds!r}")
        if not callable(fn):
            raise TypeError(f"timer callback must be callable, got {fn!r}")
        self.interval = float(seconds)
        self.periodic = periodic
        self.fired = 0
        self.skipped = 0
        self._fn = fn
        self._args = args
        self._dispatch = dispatch
        self._running = False
        self._on_done = on_done
        self._watcher = loop.timer(self.interval, self.interval if periodic else 0.0)
        self._watcher.start(self._tick)

    @property
    def active(self) -> bool:
        return self._watcher is not None

    def cancel(self) -> None:
        """Stop the timer; a callback already running finishes normally."""
        watcher = self._watcher
        if watcher is None:
            return
        self._watcher = None
        watcher.stop()
        watcher.close()
        if self._on_done is not None:
            self._on_done(self)

    def _tick(self) -> None:  # runs in the hub
        if not self.periodic:
            self.cancel()
        elif not self.interval:  # every turn: libev has no repeating 0 s timer
            self._watcher.start(self._tick)
        if self._running:
            self.skipped += 1
            return
        self._running = True
        if self._dispatch(self._run, ()) is False:
            # Its connection has ended (e.g. a timer added in unbind): it would
            # never run again, so stop it instead of ticking forever.
            self._running = False
            self.cancel()

    def _run(self) -> None:  # runs in a greenlet chosen by dispatch
        self.fired += 1
        try:
            self._fn(*self._args)
        finally:
            self._running = False

    def __repr__(self) -> str:
        kind = "periodic" if self.periodic else "one-shot"
        state = "active" if self.active else "done"
        return f"<Timer {kind} {self.interval}s {state} fn={self._fn!r}>"


class TimerMethods:
    """``add_timer`` / ``add_periodic_timer`` / ``cancel_timer`` for a class
    that defines ``_timer(seconds, fn, args, periodic=...)`` (where callbacks run)."""

    def add_timer(self, seconds: float, fn: Callable[..., Any], *args: Any) -> Timer:
        """Call ``fn(*args)`` once after ``seconds``."""
        return self._timer(seconds, fn, args, periodic=False)

    def add_periodic_timer(self, seconds: float, fn: Callable[..., Any], *args: Any) -> Timer:
        """Call ``fn(*args)`` every ``seconds`` (no drift; a tick is skipped while one still runs).

        ``seconds=0``: on every loop turn (the loop never sleeps while it lives)."""
        return self._timer(seconds, fn, args, periodic=True)

    def cancel_timer(self, timer: Timer) -> None:
        timer.cancel()

    def _timer(self, seconds: float, fn: Callable[..., Any], args: tuple, *, periodic: bool) -> Timer:
        raise NotImplementedError
