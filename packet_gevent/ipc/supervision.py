"""Watching a child from the master: when it is over, how soon to restart it, how set-up fails.

Used by both kinds of children, workers and pool processes:

* :class:`ChildLink` joins a child's two ends, its exit (the reaper of
  :class:`~packet_gevent.ipc.process.ChildProcess`) and the EOF of its
  :class:`~packet_gevent.ipc.channel.Channel`, into one ``on_gone`` call, made
  once, in the hub, after both, so that the messages the child sent before
  it died are handled before what it owed is failed.  The two events
  normally come together (a SIGKILLed worker's pending request is answered
  2-4 ms after the kill); when one is missing the child gets
  :data:`EXIT_WAIT` / :data:`EOF_WAIT`.
* :class:`Backoff` spaces the restarts of one slot: at once after a healthy
  run, doubling while the child keeps dying young.
* the set-up failure protocol: a child whose set-up (``worker_init``, a
  pool ``initializer``) raised sends ``(INIT_FAILED, traceback text)``
  (:func:`init_failed_message`) and exits with :data:`EXIT_INIT_FAILED`.
"""
from __future__ import annotations

import logging
import traceback
from typing import Any, Callable, Optional, Tuple

import gevent

__all__ = ["ChildLink", "Backoff", "EXIT_WAIT", "EOF_WAIT", "INIT_FAILED", "EXIT_INIT_FAILED",
           "init_failed_message"]

logger = logging.getLogger(__name__)

#: After a child's channel reached EOF, how long it gets to exit before SIGKILL
#: (it closed its channel: it is of no more use).
EXIT_WAIT = 1.0
#: After a child exited, how long to wait for EOF on its channel, so messages
#: it sent before dying are handled first.  Only a grandchild that inherited
#: the socket could hold the EOF back.
EOF_WAIT = 0.5

#: Message kind, child -> master: its set-up raised; the payload is the traceback text.
INIT_FAILED = "init_failed"
#: Exit status of a child whose set-up (``worker_init``, ``initializer``) raised.
EXIT_INIT_FAILED = 3


def init_failed_message() -> Tuple[str, str]:
    """The message a child sends when its set-up raised (call in the ``except`` block)."""
    return INIT_FAILED, traceback.format_exc()


class ChildLink:
    """One child seen from the master: its channel and its exit, ending in one ``on_gone()``.

    Starts receiving on ``channel``: each message goes to ``on_message(obj)``
    in the hub.  ``on_gone()`` runs once, in the hub, when the child has
    exited and its channel is closed, or :data:`EOF_WAIT` after the exit
    when the EOF does not come.  A channel that fails (a bad frame, a
    message that cannot be unpickled) or reaches EOF while the child lives
    on gets the child killed, with the reason in ``cause``.
    """

    __slots__ = ("child", "channel", "cause", "eof", "exited", "gone", "expecting_exit",
                 "_on_gone", "_timer", "_label")

    def __init__(self, child: Any, channel: Any, label: str, *,
                 on_message: Callable[[Any], Any], on_gone: Callable[[], Any]) -> None:
        self.child = child
        self.channel = channel
        self.cause: Optional[str] = None   # why we killed it (or told it to stop), if we did
        self.eof = False
        self.exited = False
        self.gone = False                  # on_gone ran
        self.expecting_exit = False        # told to exit: an EOF is no reason to kill it
        self._on_gone = on_gone
        self._timer: Any = None
        self._label = label
        channel.start(on_message, self._on_close)
        child.on_exit(self._on_exit)

    @property
    def over(self) -> bool:
        """True once the channel closed or the child exited: it takes no new work."""
        return self.eof or self.exited

    # -- what the owner does ------------------------------------------------------------
    def kill(self, cause: str) -> None:
        """SIGKILL the child; ``cause`` is kept unless one is already."""
        if self.cause is None:
            self.cause = cause
        self.child.kill()

    def expect_exit(self, grace: float, cause: str) -> None:
        """The child was asked to exit: SIGKILL it if it has not ``grace`` seconds later."""
        self.expecting_exit = True
        self.cause = cause
        if not self.exited:
            self._arm(grace, self._kill_late, f"{cause}; killed: it had not exited {grace} s later")

    def close(self) -> None:
        """Stop the timer and close the channel (after ``on_gone``, or to drop the child)."""
        self._cancel_timer()
        self.channel.close()

    # -- events (in the hub) --------------------------------------------------------------
    def _on_close(self, exc: Optional[BaseException]) -> None:
        if self.eof or self.gone:
            return
        self.eof = True
        if self.exited:
            self._report()
        elif exc is not None:
            cause = f"it sent a message the master cannot read ({type(exc).__name__}: {exc})"
            logger.error("%s (pid %d): %s; killing it", self._label, self.child.pid, cause)
            self.kill(cause)
        elif not self.expecting_exit:
            self._arm(EXIT_WAIT, self._kill_late,
                      f"it closed its channel but had not exited {EXIT_WAIT} s later")

    def _on_exit(self, _child: Any = None) -> None:
        if self.exited:
            return
        self.exited = True
        if self.eof:
            self._report()
        else:
            self._arm(EOF_WAIT, self._report)

    def _report(self) -> None:
        self._cancel_timer()
        if not self.gone:
            self.gone = True
            # Drop the owner's callback (it holds the owner, which holds this
            # link): the cycle would keep a dead child's objects until a full
            # gc collection, rare in a long-lived master.
            on_gone, self._on_gone = self._on_gone, _nothing
            on_gone()

    def _kill_late(self, cause: str) -> None:
        self.cause = cause
        self.child.kill()

    def _arm(self, seconds: float, fn: Callable[..., Any], *args: Any) -> None:
        self._cancel_timer()
        self._timer = gevent.get_hub().loop.timer(seconds)
        self._timer.start(fn, *args)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.close()
            self._timer = None


def _nothing() -> None:
    """A gone link's on_gone."""


class Backoff:
    """Restart delays of one slot (a worker process, a pool process).

    :meth:`delay` is called at each death with how long the child lived.
    A death after ``reset`` seconds or more of life starts the count again;
    deaths in a row before that double the delay from ``base`` up to
    ``maximum``, so a crash loop costs little.  ``first``, when given, is
    the delay of the first death of a count, the one after a healthy run
    included (workers: 0, a Packet worker that crashes once comes back at
    once); without it a death after a healthy run restarts at once and the
    first young one waits ``base`` (pool processes, whose young deaths
    mostly mean a broken task or initializer).
    """

    __slots__ = ("base", "maximum", "reset", "first", "failures")

    def __init__(self, base: float, maximum: float, reset: float, *,
                 first: Optional[float] = None) -> None:
        self.base = base
        self.maximum = maximum
        self.reset = reset
        self.first = first
        self.failures = 0       # young deaths in a row

    def delay(self, lived: float) -> float:
        """Seconds to wait before restarting a child that died after ``lived`` seconds."""
        if lived >= self.reset:
            self.failures = 0
            if self.first is None:
                return 0.0
        failures = self.failures
        self.failures = failures + 1
        if self.first is not None:
            if failures == 0:
                return self.first
            failures -= 1
        return min(self.maximum, self.base * 2 ** failures)

    def failed(self) -> None:
        """Count a failed restart (the fork itself raised) as one more death."""
        self.failures += 1
