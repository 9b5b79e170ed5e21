"""The public pool API that does not depend on processes, built on ``submit``.

:class:`PoolAPI` is the base class of every packet_gevent pool
(:class:`~packet_gevent.ForkPool`; a pool on another engine, such as a Dask
cluster, plugs in the same way): a ``concurrent.futures.Executor`` that also
has gevent ThreadPool's names.  A subclass provides four methods and gets the
rest:

* ``submit(fn, /, *args, **kwargs)`` returning a
  :class:`packet_gevent.futures.Future` (the pool completes it in the hub of
  the thread that owns the pool, or from any thread through ``set_result`` /
  ``set_exception``: its waits are cooperative either way);
* ``shutdown(wait=True, *, cancel_futures=False)``;
* ``join(timeout=None) -> bool`` (no task unfinished) and ``kill()``
  (stop now; unfinished tasks fail).

It may override:

* ``schedule(fn, args, kwargs, *, timeout)`` for a per-task time limit
  (the default refuses a timeout: the base class cannot bound a task);
* ``_apply_immediately()``: True where ``apply`` must run the call inline
  (gevent's hook of the same name: inside one of the pool's own workers).

What this module provides, all in terms of ``submit`` / ``schedule``:
``map`` (the Executor's: an iterator; all tasks submitted at once),
``spawn``, ``apply``, ``apply_cb``, ``apply_async``, ``map_async``,
``imap``, ``imap_unordered`` and the context manager.  gevent's objects
(``AsyncResult``) are mirrored by :class:`~packet_gevent.futures.TaskResult`.
Nothing here keeps a result once it was handed to the caller: the
iterators hold neither the last value they yielded nor its future.
"""
from __future__ import annotations

import abc
import collections
import concurrent.futures
import itertools
import time
from concurrent.futures._base import CANCELLED, PENDING
from typing import Any, Callable, Deque, Dict, Iterable, Iterator, List, Optional

import gevent
import gevent.queue
from greenlet import GreenletExit

from .futures import Future, TaskResult
from .tasks import call_chunk

__all__ = ["PoolAPI", "IMAP_WINDOW"]

#: ``imap`` / ``imap_unordered``: tasks running or waiting ahead of the reader
#: when no ``maxsize`` is given (the fork pool's deepest per-process pipeline).
IMAP_WINDOW = 1024


class PoolAPI(concurrent.futures.Executor, abc.ABC):
    """The pool API shared by every packet_gevent pool (see the module docstring)."""

    # -- what a subclass provides -----------------------------------------------------------
    @abc.abstractmethod
    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        """Run ``fn(*args, **kwargs)`` in the pool; return its Future."""

    @abc.abstractmethod
    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Take no more tasks; ``wait``: block the calling greenlet until they are done."""

    @abc.abstractmethod
    def join(self, timeout: Optional[float] = None) -> bool:
        """Wait until no task is unfinished; True if so (False after ``timeout``)."""

    @abc.abstractmethod
    def kill(self) -> None:
        """Stop now: queued tasks are cancelled, running ones fail."""

    def schedule(self, fn: Callable[..., Any], args: Iterable[Any] = (),
                 kwargs: Optional[Dict[str, Any]] = None, *,
                 timeout: Optional[float] = None) -> Future:
        """``submit`` with a per-task ``timeout`` (seconds), where the pool supports one."""
        if timeout is not None:
            raise ValueError(f"{type(self).__name__} has no per-task timeout; wait with "
                             f"future.result(timeout) instead")
        return self.submit(fn, *args, **(kwargs or {}))

    def _apply_immediately(self) -> bool:
        """Whether ``apply`` runs the call right here (inside one of the pool's workers)."""
        return False

    # -- the Executor's map -------------------------------------------------------------------
    def map(self, fn: Callable[..., Any], *iterables: Iterable[Any],  # type: ignore[override]
            timeout: Optional[float] = None, chunksize: int = 1) -> Iterator[Any]:
        """Results of ``fn`` over the iterables, in order (an iterator).

        All tasks are submitted now; ``timeout`` bounds the whole iteration
        (TimeoutError).  ``chunksize`` > 1 sends that many calls per task.
        Leaving the iterator early cancels the tasks not yet finished.
        """
        if chunksize < 1:
            raise ValueError(f"chunksize must be >= 1, got {chunksize!r}")
        end = None if timeout is None else time.monotonic() + timeout
        if chunksize == 1:
            futures = [self.submit(fn, *args) for args in zip(*iterables)]
        else:
            calls = zip(*iterables)
            futures = []
            while True:
                chunk = list(itertools.islice(calls, chunksize))
                if not chunk:
                    break
                futures.append(self.submit(call_chunk, fn, chunk))
        return _results_in_order(futures, end, chunksize > 1)

    # -- gevent ThreadPool's names ---------------------------------------------------------------
    def spawn(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> TaskResult:
        """Run ``fn(*args, **kwargs)`` in the pool; return an AsyncResult-like TaskResult."""
        return TaskResult(self.submit(fn, *args, **kwargs))

    def apply(self, fn: Callable[..., Any], args: Optional[Iterable[Any]] = None,
              kwds: Optional[Dict[str, Any]] = None, *, timeout: Optional[float] = None) -> Any:
        """Run ``fn(*args, **kwds)`` in the pool and return its result (or raise its exception).

        Blocks only the calling greenlet.  Inside one of the pool's own
        workers it runs the call right there, as gevent's ThreadPool does.
        """
        args = () if args is None else tuple(args)
        if self._apply_immediately():
            return fn(*args, **(kwds or {}))
        future = self.schedule(fn, args, kwds, timeout=timeout)
        try:
            return future.result()
        except GreenletExit:  # the waiting greenlet was killed: the task is not wanted
            future.cancel()
            raise

    def apply_cb(self, fn: Callable[..., Any], args: Optional[Iterable[Any]] = None,
                 kwds: Optional[Dict[str, Any]] = None,
                 callback: Optional[Callable[[Any], Any]] = None) -> Any:
        """``apply``, then ``callback(result)`` in this greenlet; return the result."""
        result = self.apply(fn, args, kwds)
        if callback is not None:
            callback(result)
        return result

    def apply_async(self, fn: Callable[..., Any], args: Optional[Iterable[Any]] = None,
                    kwds: Optional[Dict[str, Any]] = None,
                    callback: Optional[Callable[[Any], Any]] = None, *,
                    timeout: Optional[float] = None) -> TaskResult:
        """Like ``apply`` but returns a TaskResult at once.

        ``callback(result)`` runs in a new greenlet if the call succeeds, and
        the TaskResult is ready only after it returned (as in gevent): its
        ``get()`` gives the call's result, or raises what the callback raised.
        """
        future = self.schedule(fn, () if args is None else tuple(args), kwds, timeout=timeout)
        if callback is None:
            return TaskResult(future)
        return TaskResult(_ThenFuture(future, callback))

    def map_async(self, fn: Callable[..., Any], iterable: Iterable[Any],
                  callback: Optional[Callable[[Any], Any]] = None) -> TaskResult:
        """``list(map(fn, iterable))`` in a new greenlet; a TaskResult of that list.

        ``callback(list)`` runs (in that greenlet) before the TaskResult is
        ready; cancelling the TaskResult cancels the tasks not finished yet.
        """
        return TaskResult(_GreenletFuture(self._map_cb, fn, iterable, callback))

    def _map_cb(self, fn: Callable[..., Any], iterable: Iterable[Any],
                callback: Optional[Callable[[Any], Any]]) -> List[Any]:
        results = list(self.map(fn, iterable))
        if callback is not None:
            callback(results)
        return results

    def imap(self, fn: Callable[..., Any], *iterables: Iterable[Any],
             maxsize: Optional[int] = None) -> Iterator[Any]:
        """Results in order; the iterables are consumed as results are taken.

        At most ``maxsize`` (default :data:`IMAP_WINDOW`) tasks run or wait
        ahead of the reader.  Leaving the iterator early cancels them.
        """
        return self._imap(fn, zip(*iterables), _window(maxsize), ordered=True)

    def imap_unordered(self, fn: Callable[..., Any], *iterables: Iterable[Any],
                       maxsize: Optional[int] = None) -> Iterator[Any]:
        """Results in completion order; otherwise like :meth:`imap`."""
        return self._imap(fn, zip(*iterables), _window(maxsize), ordered=False)

    def _imap(self, fn: Callable[..., Any], calls: Iterator[tuple], window: int,
              ordered: bool) -> Iterator[Any]:
        ahead: Deque[Future] = collections.deque()
        done: gevent.queue.SimpleQueue = gevent.queue.SimpleQueue()
        submit = self.submit

        def refill(count: int) -> None:
            for args in itertools.islice(calls, count):
                future = submit(fn, *args)
                ahead.append(future)
                if not ordered:
                    future.rawlink(done.put)

        try:
            refill(window)
            while ahead:
                if ordered:
                    future = ahead.popleft()
                else:
                    future = done.get()
                    ahead.remove(future)
                # A box, not a local: the generator must not hold the value
                # (nor its future) while the reader has it.
                box = [future.result()]
                del future
                refill(1)
                yield box.pop()
        finally:
            for future in ahead:
                if future._state == PENDING:
                    future.cancel()


def _window(maxsize: Optional[int]) -> int:
    if maxsize is None:
        return IMAP_WINDOW
    if maxsize < 1:
        raise ValueError(f"maxsize must be None or >= 1, got {maxsize!r}")
    return maxsize


def _results_in_order(futures: List[Future], end: Optional[float], chunked: bool) -> Iterator[Any]:
    """The Executor's ``map`` iterator; it holds no result once yielded."""
    futures.reverse()
    try:
        while futures:
            left = None if end is None else end - time.monotonic()
            if chunked:
                chunk = _pop_result(futures, left)
                chunk.reverse()
                while chunk:
                    yield chunk.pop()
            else:
                yield _pop_result(futures, left)
    finally:
        for future in futures:
            if future._state == PENDING:
                future.cancel()


def _pop_result(futures: List[Future], timeout: Optional[float]) -> Any:
    """The last future's result, removing it; a future that timed out is cancelled."""
    future = futures.pop()
    try:
        return future.result(timeout)
    except concurrent.futures.TimeoutError:  # the builtin on 3.11+, its own class on 3.10
        future.cancel()
        raise
    finally:
        del future


class _ThenFuture(Future):
    """Done when ``callback(value)`` returned after ``inner`` succeeded (apply_async).

    Its value is ``inner``'s; its exception is ``inner``'s or the callback's.
    Cancelling it cancels ``inner``.
    """

    def __init__(self, inner: Future, callback: Callable[[Any], Any]) -> None:
        super().__init__()
        self._inner = inner
        self._then = callback
        inner.rawlink(self._inner_done)

    def _inner_done(self, inner: Future) -> None:  # in the hub
        if self.done():
            return
        if inner.cancelled():
            self.cancel()
        elif inner._exception is not None:
            self._settle(None, inner._exception)
        else:
            gevent.spawn(self._run_callback, inner._result)

    def _run_callback(self, value: Any) -> None:
        try:
            self._then(value)
        except BaseException as exc:  # noqa: B902  like gevent: get() raises it
            self._settle(None, exc)
            if not isinstance(exc, Exception):
                raise
        else:
            self._settle(value, None)

    def _settle(self, value: Any, exc: Optional[BaseException]) -> None:
        if self.done():  # cancelled meanwhile
            return
        if exc is None:
            self.set_result(value)
        else:
            self.set_exception(exc)

    def cancel(self) -> bool:
        if not super().cancel():
            return False
        if self._state == CANCELLED:
            self.set_running_or_notify_cancel()  # no executor will: done for rawlinks now
        self._inner.cancel()
        return True


class _GreenletFuture(Future):
    """The outcome of ``fn(*args)`` run in a new greenlet (map_async); cancel kills it."""

    def __init__(self, fn: Callable[..., Any], *args: Any) -> None:
        super().__init__()
        self._greenlet = gevent.spawn(self._run, fn, args)

    def _run(self, fn: Callable[..., Any], args: tuple) -> None:
        try:
            value = fn(*args)
        except GreenletExit:
            return
        except BaseException as exc:  # noqa: B902  get() raises it
            if not self.done():
                self.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        else:
            if not self.done():
                self.set_result(value)

    def cancel(self) -> bool:
        if not super().cancel():
            return False
        if self._state == CANCELLED:
            self.set_running_or_notify_cancel()  # no executor will: done for rawlinks now
        self._greenlet.kill(block=False)
        return True
