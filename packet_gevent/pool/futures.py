"""Futures that block only the calling greenlet, and gevent-style results on top of them.

:class:`Future` is a ``concurrent.futures.Future`` whose ``result()`` and
``exception()`` wait on a gevent event, so under plain (unpatched) gevent a
greenlet waiting on a pool task leaves the hub and every other greenlet
running (the stdlib future waits on a ``threading.Condition``, which blocks
the whole hub; fork-under-gevent.md, trap 4).  The pool completes futures in
the hub; done callbacks run there too, so they must not block.

Compatibility:

* ``concurrent.futures.wait`` / ``as_completed`` block only the calling
  greenlet on these futures, patched or not: the waiter they install on a
  future (``_waiters``) gets a gevent Event in place of its
  ``threading.Event`` (:class:`_WaiterList`).  :func:`wait` /
  :func:`as_completed` from this module, and ``gevent.wait`` /
  ``gevent.iwait`` (futures have ``rawlink``), do the same without the
  stdlib's locks.  No wait works from the hub itself (a done callback).
* ``result()`` from another thread works: a thread with a gevent hub parks
  the calling greenlet, one without waits on the stdlib's condition.
* :class:`TaskResult` is what ``ForkPool.spawn`` / ``apply_async`` return:
  the ``gevent.event.AsyncResult`` API (``get``, ``ready``, ``successful``,
  ``value``, ``exception``, ``link``...) over a Future.  Like AsyncResult,
  ``get(timeout=...)`` raises ``gevent.Timeout`` when the wait runs out.
"""
from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from concurrent.futures._base import (CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED, PENDING,
                                      RUNNING, CancelledError, InvalidStateError)
from typing import Any, Callable, Iterable, Iterator, List, NamedTuple, Optional, Set, Tuple

import gevent
import gevent.event
import gevent.queue
from gevent import Timeout
from gevent._hub_local import get_hub_if_exists
from gevent._waiter import Waiter
from gevent.monkey import get_original, is_module_patched
from greenlet import getcurrent

__all__ = ["Future", "TaskResult", "wait", "as_completed", "DoneAndNotDone"]

logger = logging.getLogger(__name__)

_DONE_STATES = (CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED)
#: What result(timeout) and as_completed raise: the builtin TimeoutError on
#: Python >= 3.11, concurrent.futures' own class (not a builtin subclass) on 3.10.
FutureTimeoutError = concurrent.futures.TimeoutError
#: Done as ``concurrent.futures.wait`` / ``as_completed`` count it: a future
#: CANCELLED but not yet notified (by its executor's set_running_or_notify_cancel)
#: is not done for them.
_NOTIFIED_STATES = (CANCELLED_AND_NOTIFIED, FINISHED)


# Guards the lazy creation of a future's threading.Condition and the state
# changes made while none exists.  The real lock (not gevent's, even under
# patch_all): it is only held for a few bytecodes and never across a switch.
_lazy_lock = get_original("_thread", "allocate_lock")()
_get_ident = get_original("_thread", "get_ident")


class Future(concurrent.futures.Future):
    """A ``concurrent.futures.Future`` that waits cooperatively.

    ``running()`` is True from the moment the task was sent to a process
    (it may still be queued there).  ``cancel()`` also works on a running
    task of a :class:`~packet_gevent.ForkPool`: its process is killed and
    replaced, and the future is cancelled (True is returned).

    Cheap to make: the ``threading.Condition``, waiter and callback lists of
    the stdlib future are created only when something uses them
    (``concurrent.futures.wait``, a foreign thread, ``add_done_callback``).
    A stdlib future costs ~0.8 us and a dozen GC-tracked objects; with
    20,000 tiny tasks in flight the garbage collector's passes over them
    cost a third of the pool's throughput (94k -> 137k tasks/s measured with
    the GC off).
    """

    _greenlet_waiters: Optional[List[Waiter]] = None
    _links: Optional[List[Tuple[Any, Callable[[Any], Any]]]] = None
    _cond: Optional[threading.Condition] = None      # the stdlib's, made on first use
    _waiter_list: Optional[list] = None
    _callbacks: Optional[List[Callable[[Any], Any]]] = None

    def __init__(self, owner: Any = None) -> None:  # no super().__init__(): lazy
        self._owner = owner          # told of cancel(): owner.task_cancelled(self, was_running)
        self._state = PENDING
        self._result = None
        self._exception: Optional[BaseException] = None

    # The stdlib's attributes, made when concurrent.futures.wait & co use them.
    @property
    def _condition(self) -> threading.Condition:
        with _lazy_lock:
            if self._cond is None:
                self._cond = threading.Condition()
            return self._cond

    @property
    def _waiters(self) -> list:
        with _lazy_lock:
            if self._waiter_list is None:
                self._waiter_list = _WaiterList()
            return self._waiter_list

    @property
    def _done_callbacks(self) -> list:
        with _lazy_lock:
            if self._callbacks is None:
                self._callbacks = []
            return self._callbacks

    def __repr__(self) -> str:
        state = {PENDING: "pending", RUNNING: "running", FINISHED: "finished"}.get(
            self._state, "cancelled")
        if self._state == FINISHED:
            outcome = (f" raised {type(self._exception).__name__}" if self._exception is not None
                       else f" returned {type(self._result).__name__}")
        else:
            outcome = ""
        return f"<{type(self).__name__} at {id(self):#x} state={state}{outcome}>"

    # -- state ------------------------------------------------------------------------
    def cancelled(self) -> bool:
        return self._state in (CANCELLED, CANCELLED_AND_NOTIFIED)

    def running(self) -> bool:
        return self._state == RUNNING

    def done(self) -> bool:
        return self._state in _DONE_STATES

    def ready(self) -> bool:
        return self._state in _DONE_STATES

    # -- waiting -----------------------------------------------------------------------
    def _wait_done(self, timeout: Optional[float]) -> None:
        """Park the calling greenlet until done or ``timeout``; the hub runs on.

        A gevent Waiter per waiting greenlet (~0.9 us a wait and wake-up
        against ~2.7 us for a gevent Event); it works from any thread's hub.
        A thread that runs no gevent hub waits on the stdlib's condition
        instead: it blocks only itself, and no hub (a loop and its
        descriptors that would outlive the thread) is made for it.
        """
        if self._state in _DONE_STATES:
            return
        if get_hub_if_exists() is None and not is_module_patched("threading"):
            cond = self._condition
            with cond:
                if self._state not in _DONE_STATES:
                    cond.wait(timeout)
            return
        hub = gevent.get_hub()
        if getcurrent() is hub:
            raise RuntimeError(
                "cannot wait for a pool task in the hub (a done callback, rawlink or "
                "watcher callback): wait from a greenlet, or use add_done_callback")
        waiter = Waiter(hub)
        with _lazy_lock:
            if self._state in _DONE_STATES:
                return
            if self._greenlet_waiters is None:
                self._greenlet_waiters = []
            self._greenlet_waiters.append(waiter)
        timer = None
        if timeout is not None:
            timer = hub.loop.timer(max(0.0, timeout))
            timer.start(waiter.switch, None)
        try:
            waiter.get()
        finally:
            if timer is not None:
                timer.close()
            with _lazy_lock:
                waiters = self._greenlet_waiters
                if waiters and waiter in waiters:
                    waiters.remove(waiter)

    def _outcome(self) -> Any:
        state = self._state
        if state == FINISHED:
            if self._exception is not None:
                try:
                    raise self._exception
                finally:
                    self = None  # type: ignore[assignment]  # no cycle via the traceback
            return self._result
        if state in (CANCELLED, CANCELLED_AND_NOTIFIED):
            raise CancelledError()
        raise FutureTimeoutError()

    def result(self, timeout: Optional[float] = None) -> Any:
        """The task's result; raise its exception, CancelledError, or TimeoutError.

        Blocks only the calling greenlet, for at most ``timeout`` seconds.
        """
        if self._state == FINISHED and self._exception is None:
            return self._result
        self._wait_done(timeout)
        return self._outcome()

    def exception(self, timeout: Optional[float] = None) -> Optional[BaseException]:
        self._wait_done(timeout)
        if self._state == FINISHED:
            return self._exception
        self._outcome()  # raises CancelledError or TimeoutError
        return None  # pragma: no cover

    # -- completion ------------------------------------------------------------------------
    def _finish(self, result: Any, exception: Optional[BaseException]) -> None:
        with _lazy_lock:
            cond = self._cond
            if cond is None:  # nobody can be waiting on a condition: publish here
                if self._state in _DONE_STATES:
                    raise InvalidStateError(f"{self._state}: {self!r}")
                self._result, self._exception, self._state = result, exception, FINISHED
        if cond is not None:  # the stdlib's protocol, for concurrent.futures.wait & co
            with cond:
                with _lazy_lock:
                    if self._state in _DONE_STATES:
                        raise InvalidStateError(f"{self._state}: {self!r}")
                    self._result, self._exception, self._state = result, exception, FINISHED
                for waiter in self._waiter_list or ():
                    if exception is None:
                        waiter.add_result(self)
                    else:
                        waiter.add_exception(self)
                cond.notify_all()
        self._wake()
        self._invoke_callbacks()

    def set_result(self, result: Any) -> None:
        self._finish(result, None)

    def set_exception(self, exception: Optional[BaseException]) -> None:
        self._finish(None, exception)

    def set_running_or_notify_cancel(self) -> bool:
        cond = self._condition
        with cond:
            with _lazy_lock:
                cancelled = self._state == CANCELLED
                if cancelled:
                    self._state = CANCELLED_AND_NOTIFIED
                    for waiter in self._waiter_list or ():
                        waiter.add_cancelled(self)
                elif self._state == PENDING:
                    self._state = RUNNING
                    return True
        if cancelled:
            self._wake()  # rawlinks wait for the notification, as wait() does
            return False
        raise RuntimeError(f"Future in unexpected state: {self!r}")

    def _wake(self, links: bool = True) -> None:
        """Resume the greenlets waiting in result() and (``links``) run the rawlinks."""
        with _lazy_lock:
            waiters, self._greenlet_waiters = self._greenlet_waiters, None
        if waiters:
            # Never switched to from here: the pool finishes its bookkeeping
            # before any waiting greenlet runs.
            for waiter in waiters:
                hub = waiter.hub
                if hub.thread_ident == _get_ident():
                    hub.loop.run_callback(waiter.switch, None)
                else:
                    hub.loop.run_callback_threadsafe(waiter.switch, None)
        pending = self._links if links else None
        if pending:  # like gevent's own objects: from a callback in the hub that linked
            self._links = None
            for hub, link in pending:
                if hub.thread_ident == _get_ident():
                    hub.loop.run_callback(self._run_link, link)
                else:
                    hub.loop.run_callback_threadsafe(self._run_link, link)

    def _run_link(self, link: Callable[[Any], Any]) -> None:
        try:
            link(self)
        except Exception:
            logger.exception("rawlink callback %r of %r raised", link, self)

    def add_done_callback(self, fn: Callable[[Any], Any]) -> None:
        """Call ``fn(self)`` when done (now, if done); in the hub when a pool completes it."""
        with _lazy_lock:
            if self._state not in _DONE_STATES:
                if self._callbacks is None:
                    self._callbacks = []
                self._callbacks.append(fn)
                return
        try:
            fn(self)
        except Exception:
            logger.exception("exception calling callback for %r", self)

    def _invoke_callbacks(self) -> None:
        # Read after the state became final (under the lock): no callback can
        # be added any more, so no lock is needed here.
        callbacks = self._callbacks
        if not callbacks:
            return
        self._callbacks = None
        for callback in callbacks:
            try:
                callback(self)
            except Exception:
                logger.exception("exception calling callback for %r", self)

    def cancel(self) -> bool:
        """Cancel the task: queued, sent to a process, or running (its process is killed).

        Returns False only when the task has already finished.  A future with
        no owner (made by hand, for another executor) follows the stdlib: a
        running one cannot be cancelled, and a cancelled one is done for
        ``wait`` / ``as_completed`` / rawlinks once its executor called
        ``set_running_or_notify_cancel()``.
        """
        owner = self._owner
        cond = self._cond
        if cond is not None:
            cond.acquire()
        try:
            with _lazy_lock:
                if self._state == FINISHED:
                    return False
                if self._state in (CANCELLED, CANCELLED_AND_NOTIFIED):
                    return True
                was_running = self._state == RUNNING
                if owner is None:
                    if was_running:
                        return False
                    self._state = CANCELLED
                    waiters = []
                else:
                    # Straight to "notified": no executor will pick this future
                    # up again to call set_running_or_notify_cancel.
                    self._state = CANCELLED_AND_NOTIFIED
                    waiters = list(self._waiter_list or ())
            for waiter in waiters:
                waiter.add_cancelled(self)
            if cond is not None:
                cond.notify_all()
        finally:
            if cond is not None:
                cond.release()
        if owner is not None:
            owner.task_cancelled(self, was_running)
        self._wake(links=owner is not None)
        self._invoke_callbacks()
        return True

    def _start_running(self) -> bool:
        """PENDING -> RUNNING (the task was sent to a process); False if it was cancelled."""
        with _lazy_lock:
            if self._state == PENDING:
                self._state = RUNNING
                return True
        return False

    def _requeue(self) -> None:
        """RUNNING -> PENDING: the process holding it died before it started; queued again."""
        with _lazy_lock:
            if self._state == RUNNING:
                self._state = PENDING

    # -- gevent.wait() / gevent.iwait() protocol ------------------------------------------------
    def rawlink(self, callback: Callable[[Any], Any]) -> None:
        """Call ``callback(self)`` in the hub when done (at once, from the hub, if done).

        A future cancelled by ``cancel()`` is done; one in the stdlib's
        CANCELLED state is done once its executor was notified.
        """
        if self._state in _NOTIFIED_STATES:
            gevent.get_hub().loop.run_callback(callback, self)
            return
        if self._links is None:
            self._links = []
        self._links.append((gevent.get_hub(), callback))

    def unlink(self, callback: Callable[[Any], Any]) -> None:
        if self._links:
            self._links = [(hub, link) for hub, link in self._links if link != callback]


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
        return future._outcome()

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
    """``concurrent.futures.wait`` for pool futures, blocking only the calling greenlet.

    Returns ``(done, not_done)`` when ``return_when`` is met or ``timeout``
    runs out, like the stdlib; a future CANCELLED but not yet notified is
    not done.
    """
    fs = set(fs)
    done = {f for f in fs if f._state in _NOTIFIED_STATES}
    not_done = fs - done

    def satisfied() -> bool:
        if not not_done:
            return True
        if return_when == FIRST_COMPLETED:
            return bool(done)
        if return_when == FIRST_EXCEPTION:
            return any(f._state == FINISHED and f._exception is not None for f in done)
        return False

    if satisfied():
        return DoneAndNotDone(done, not_done)
    try:
        for future in as_completed(not_done, timeout):
            done.add(future)
            not_done.discard(future)
            if satisfied():
                break
    except FutureTimeoutError:
        pass
    return DoneAndNotDone(done, not_done)


def as_completed(fs: Iterable[Future], timeout: Optional[float] = None) -> Iterator[Future]:
    """Yield futures as they finish; TimeoutError if ``timeout`` seconds pass first.

    Blocks only the calling greenlet.  Like the stdlib's, it keeps no
    reference to a future it has yielded.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    pending = set(fs)
    del fs  # the caller's collection: holding it would hold every yielded future
    total = len(pending)
    finished = [f for f in pending if f._state in _NOTIFIED_STATES]
    pending.difference_update(finished)
    queue: gevent.queue.SimpleQueue = gevent.queue.SimpleQueue()
    for future in pending:
        future.rawlink(queue.put)
    try:
        while finished:
            yield finished.pop()
        while pending:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                future = queue.get(timeout=left)
            except gevent.queue.Empty:
                raise FutureTimeoutError(f"{len(pending)} (of {total}) futures unfinished") from None
            if future in pending:
                pending.discard(future)
                finished.append(future)
            del future
            while finished:
                yield finished.pop()
    finally:
        for future in pending:
            future.unlink(queue.put)


class _WaiterList(list):
    """A future's ``_waiters``: the stdlib's wait() / as_completed() install their waiter here.

    Under plain (unpatched) gevent, a waiter's ``threading.Event`` waited on
    in a thread that runs a hub would block that hub, so the future it waits
    for could never complete: there it is swapped for a gevent Event, which
    blocks only the calling greenlet.  A thread without a hub keeps the
    stdlib's Event (blocking it blocks nothing else, and no hub is made for
    it); after ``patch_all()`` the stdlib's Event already is gevent's.
    """

    def append(self, waiter: Any) -> None:
        event = getattr(waiter, "event", None)
        if event is not None and not isinstance(event, gevent.event.Event) \
                and get_hub_if_exists() is not None and not is_module_patched("threading"):
            waiter.event = gevent.event.Event()
        super().append(waiter)
