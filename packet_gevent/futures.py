"""Futures that block only the calling greenlet, and gevent-style results on top of them.

:class:`Future` is a ``concurrent.futures.Future`` whose ``result()`` and
``exception()`` wait on a gevent event, so under plain (unpatched) gevent a
greenlet waiting on a pool task leaves the hub and every other greenlet
running (the stdlib future waits on a ``threading.Condition``, which blocks
the whole hub; fork-under-gevent.md, trap 4).  The pool completes futures in
the hub; done callbacks run there too, so they must not block.

Compatibility:

* ``concurrent.futures.wait`` / ``as_completed`` work under ``patch_all()``
  and from other threads.  Under plain gevent, call them from the hub's
  thread and they block the hub (and so never see the future complete): use
  :func:`wait` / :func:`as_completed` from this module, or ``gevent.wait`` /
  ``gevent.iwait`` (futures have ``rawlink``), instead.
* ``result()`` from another thread works (gevent events wake waiters in
  other threads).
* :class:`TaskResult` is what ``ForkPool.spawn`` / ``apply_async`` return:
  the ``gevent.event.AsyncResult`` API (``get``, ``ready``, ``successful``,
  ``value``, ``exception``, ``link``...) over a Future.  Like AsyncResult,
  ``get(timeout=...)`` raises ``gevent.Timeout`` when the wait runs out.
"""
from __future__ import annotations

import concurrent.futures
import logging
import time
from concurrent.futures._base import (CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED, PENDING,
                                      RUNNING, CancelledError)
from typing import Any, Callable, Iterable, Iterator, List, NamedTuple, Optional, Set

import gevent
import gevent.event
import gevent.queue
from gevent import Timeout

__all__ = ["Future", "TaskResult", "wait", "as_completed", "DoneAndNotDone"]

logger = logging.getLogger(__name__)

_DONE_STATES = (CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED)


class Future(concurrent.futures.Future):
    """A ``concurrent.futures.Future`` that waits cooperatively.

    ``running()`` is True from the moment the task was sent to a process
    (it may still be queued there).  ``cancel()`` also works on a running
    task of a :class:`~packet_gevent.ForkPool`: its process is killed and
    replaced, and the future is cancelled (True is returned).
    """

    def __init__(self, owner: Any = None) -> None:
        super().__init__()
        self._owner = owner          # the pool: told about cancel()
        self._gevent_event: Optional[gevent.event.Event] = None
        self._links: Optional[List[Callable[[Any], Any]]] = None

    # -- waiting -----------------------------------------------------------------------
    def _wait_done(self, timeout: Optional[float]) -> None:
        if self._state in _DONE_STATES:
            return
        event = self._gevent_event
        if event is None:
            event = self._gevent_event = gevent.event.Event()
            if self._state in _DONE_STATES:  # completed from another thread meanwhile
                event.set()
        if gevent.getcurrent() is gevent.get_hub():
            raise RuntimeError(
                "cannot wait for a pool task in the hub (a done callback, rawlink or "
                "watcher callback): wait from a greenlet, or use add_done_callback")
        event.wait(timeout)

    def result(self, timeout: Optional[float] = None) -> Any:
        """The task's result; raise its exception, CancelledError, or TimeoutError.

        Blocks only the calling greenlet, for at most ``timeout`` seconds.
        """
        if self._state != FINISHED:
            self._wait_done(timeout)
        return super().result(0)

    def exception(self, timeout: Optional[float] = None) -> Optional[BaseException]:
        if self._state != FINISHED:
            self._wait_done(timeout)
        return super().exception(0)

    # -- completion ------------------------------------------------------------------------
    def _wake(self) -> None:
        event = self._gevent_event
        if event is not None:
            event.set()
        links = self._links
        if links:
            self._links = None
            for link in links:
                try:
                    link(self)
                except Exception:
                    logger.exception("rawlink callback %r of %r raised", link, self)

    def set_result(self, result: Any) -> None:
        super().set_result(result)
        self._wake()

    def set_exception(self, exception: Optional[BaseException]) -> None:
        super().set_exception(exception)
        self._wake()

    def cancel(self) -> bool:
        """Cancel the task: queued, sent to a process, or running (its process is killed).

        Returns False only when the task has already finished.
        """
        with self._condition:
            if self._state == FINISHED:
                return False
            if self._state in (CANCELLED, CANCELLED_AND_NOTIFIED):
                return True
            was_running = self._state == RUNNING
            self._state = CANCELLED
            self._condition.notify_all()
        owner = self._owner
        if owner is not None:
            owner._future_cancelled(self, was_running)
        # Notify concurrent.futures.wait()/as_completed() now: no executor
        # will pick this future up again to call set_running_or_notify_cancel.
        super().set_running_or_notify_cancel()
        self._wake()
        self._invoke_callbacks()
        return True

    def _start_running(self) -> bool:
        """PENDING -> RUNNING (the task was sent to a process); False if it was cancelled."""
        if self._state == PENDING:
            self._state = RUNNING
            return True
        return False

    # -- gevent.wait() / gevent.iwait() protocol ------------------------------------------------
    def rawlink(self, callback: Callable[[Any], Any]) -> None:
        """Call ``callback(self)`` in the hub when done (at once, from the hub, if done)."""
        if self._state in _DONE_STATES:
            gevent.get_hub().loop.run_callback(callback, self)
            return
        if self._links is None:
            self._links = []
        self._links.append(callback)

    def unlink(self, callback: Callable[[Any], Any]) -> None:
        if self._links:
            try:
                self._links.remove(callback)
            except ValueError:
                pass

    def ready(self) -> bool:
        return self._state in _DONE_STATES


class TaskResult:
    """``gevent.event.AsyncResult``'s API over a pool :class:`Future` (``.future``)."""

    __slots__ = ("future", "__weakref__")

    def __init__(self, future: Future) -> None:
        self.future = future

    def __repr__(self) -> str:
        return f"<TaskResult {self.future!r}>"

    def ready(self) -> bool:
        return self.future._state in _DONE_STATES

    def successful(self) -> bool:
        future = self.future
        return future._state == FINISHED and future._exception is None

    @property
    def value(self) -> Any:
        """The result if the task succeeded, else None."""
        return self.future._result if self.successful() else None

    @property
    def exception(self) -> Optional[BaseException]:
        """The exception if the task failed or was cancelled, else None."""
        future = self.future
        if future._state in (CANCELLED, CANCELLED_AND_NOTIFIED):
            return CancelledError()
        return future._exception if future._state == FINISHED else None

    @property
    def exc_info(self) -> tuple:
        exc = self.exception
        return (type(exc), exc, exc.__traceback__) if exc is not None else ()

    def get(self, block: bool = True, timeout: Optional[float] = None) -> Any:
        """The result, or raise the task's exception; ``gevent.Timeout`` if the wait runs out."""
        future = self.future
        if future._state not in _DONE_STATES:
            if not block:
                raise Timeout()
            future._wait_done(timeout)
            if future._state not in _DONE_STATES:
                raise Timeout(timeout)
        return future.result(0)

    def get_nowait(self) -> Any:
        return self.get(block=False)

    def wait(self, timeout: Optional[float] = None) -> Any:
        """Wait until done (at most ``timeout``); return the value (None if it failed)."""
        self.future._wait_done(timeout)
        return self.value

    def cancel(self) -> bool:
        return self.future.cancel()

    def rawlink(self, callback: Callable[[Any], Any]) -> None:
        """Call ``callback(self)`` in the hub when done."""
        self.future.rawlink(_Relay(self, callback))

    def unlink(self, callback: Callable[[Any], Any]) -> None:
        self.future.unlink(_Relay(self, callback))

    def link(self, callback: Callable[[Any], Any]) -> None:
        """Call ``callback(self)`` in a new greenlet when done (it may block)."""
        self.rawlink(lambda result: gevent.spawn(callback, result))

    def link_value(self, callback: Callable[[Any], Any]) -> None:
        self.rawlink(lambda result: result.successful() and gevent.spawn(callback, result))

    def link_exception(self, callback: Callable[[Any], Any]) -> None:
        self.rawlink(lambda result: not result.successful() and gevent.spawn(callback, result))


class _Relay:
    """A rawlink callback on the future that calls ``callback(task_result)``; equal by callback."""

    __slots__ = ("result", "callback")

    def __init__(self, result: TaskResult, callback: Callable[[Any], Any]) -> None:
        self.result = result
        self.callback = callback

    def __call__(self, _future: Future) -> None:
        self.callback(self.result)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Relay) and other.callback == self.callback

    def __hash__(self) -> int:
        return hash(self.callback)


# -- cooperative wait() / as_completed() -----------------------------------------------------

class DoneAndNotDone(NamedTuple):
    done: Set[Future]
    not_done: Set[Future]


FIRST_COMPLETED = concurrent.futures.FIRST_COMPLETED
FIRST_EXCEPTION = concurrent.futures.FIRST_EXCEPTION
ALL_COMPLETED = concurrent.futures.ALL_COMPLETED


def wait(fs: Iterable[Future], timeout: Optional[float] = None,
         return_when: str = ALL_COMPLETED) -> DoneAndNotDone:
    """``concurrent.futures.wait`` for pool futures, blocking only the calling greenlet."""
    fs = set(fs)
    done = {f for f in fs if f._state in _DONE_STATES}
    not_done = fs - done

    def satisfied() -> bool:
        if not not_done:
            return True
        if return_when == FIRST_COMPLETED:
            return bool(done)
        if return_when == FIRST_EXCEPTION:
            return any(f._state != FINISHED or f._exception is not None for f in done)
        return False

    if satisfied():
        return DoneAndNotDone(done, not_done)
    deadline = None if timeout is None else time.monotonic() + timeout
    for future in as_completed(not_done, timeout):
        done.add(future)
        not_done.discard(future)
        if satisfied() or (deadline is not None and time.monotonic() >= deadline):
            break
    return DoneAndNotDone(done, not_done)


def as_completed(fs: Iterable[Future], timeout: Optional[float] = None) -> Iterator[Future]:
    """Yield futures as they finish; TimeoutError if ``timeout`` seconds pass first.

    Blocks only the calling greenlet.
    """
    pending = set(fs)
    queue: gevent.queue.SimpleQueue = gevent.queue.SimpleQueue()
    ready = [f for f in pending if f._state in _DONE_STATES]
    for future in ready:
        pending.discard(future)
        yield future
    for future in pending:
        future.rawlink(queue.put)
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while pending:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                future = queue.get(timeout=left)
            except gevent.queue.Empty:
                raise TimeoutError(f"{len(pending)} (of {len(pending) + len(ready)}) futures "
                                   f"unfinished after {timeout} s") from None
            if future in pending:
                pending.discard(future)
                yield future
    finally:
        for future in pending:
            future.unlink(queue.put)
