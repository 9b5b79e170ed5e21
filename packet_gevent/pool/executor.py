"""ForkPool: a gevent-aware process pool that replaces ``gevent.threadpool.ThreadPool``.

CPU-bound calls run in forked processes (no GIL between them), and waiting
on them blocks only the calling greenlet.  Two APIs over one scheduler:

* ``concurrent.futures.Executor``: ``submit``, ``map``, ``shutdown``, context manager;
* gevent's ThreadPool names: ``spawn``, ``apply``, ``apply_async``, ``imap``,
  ``imap_unordered``, ``join``, ``kill``, so gevent code switches in one line::

      pool = gevent.threadpool.ThreadPool(4)   # before
      pool = packet_gevent.ForkPool(4)         # after

How it runs (the layers: :mod:`.tasks` what a task is and how it travels,
:mod:`.pool_process` one process and its channel, :mod:`.pool_scheduler`
who runs what and what each fault means, this module the public API):

* ``submit`` queues the task and, once per loop turn, a hub callback sends
  the queue out: each process gets one message holding one pickle for all
  its new calls.  A greenlet that submits many tasks without yielding
  yields to the hub every :data:`SUBMIT_BURST` submits, so the hub keeps
  serving (and the tasks start) while it submits.
* Each process has a bounded number of tasks in flight (sent, not yet
  answered): enough for :data:`PIPELINE_SECONDS` of work at the measured
  seconds per task, between 1 and :data:`MAX_INFLIGHT`.  Tiny tasks stream
  in batches; long ones go one per process, so none waits behind another
  while a process is idle.  The estimate follows the recent tasks (a slower
  batch moves it halfway at once): a long task arriving among tiny ones can
  hold up to ~2 ms of estimated work queued behind it on its process.
* Outcomes come back in batches and complete the futures in the hub: done
  callbacks run there and must not block; waiting greenlets resume right
  after, once the pool's bookkeeping for the batch is done.

Differences from gevent's ThreadPool: ``map`` is the Executor's (an
iterator, all tasks submitted at once; ``list(pool.map(...))`` for a list),
``spawn`` never waits for a free worker (use ``max_pending`` to bound the
queue), and ``apply``/``submit`` from inside a pool process do not reach the
pool (``apply`` runs the call inline there, ``submit`` raises).

Every task gets exactly one outcome.  *Running* means: named in the child's
shared marker as started and not answered yet; other tasks sent to that
process are *queued there* (see :mod:`.pool_process`).

* An exception in the task: the same exception type, with the remote
  traceback as ``__cause__`` (and ``remote_traceback``).
* The process dies (signal, ``os._exit``, segfault): the running task fails
  with :class:`~packet_gevent.WorkerCrashed` (exit code or signal); the
  tasks queued there go back to the front of the queue (a task whose
  process died under it while queued :data:`MAX_REQUEUES` times fails with
  WorkerCrashed); the process is replaced.  Outcomes the child had not sent
  yet are lost with it, so those tasks (at most ~1 ms of finished work) run
  again.
* Timeout (``task_timeout=`` or ``schedule(..., timeout=)``), measured from
  when the task starts *running*: it fails with
  :class:`~packet_gevent.TaskTimeout` (a ``TimeoutError``), its process is
  SIGKILLed and replaced, the tasks queued there are sent elsewhere.
* ``Future.cancel()``: a queued task is dropped (a process it was sent to
  skips it); a running one is killed as on a timeout and gets
  ``CancelledError``.  A task the child started in the instant before the
  skip arrived still runs; its outcome is discarded.
* An argument, function or result that cannot be pickled fails that task
  with :class:`~packet_gevent.SerializationError` naming the fix.
* The ``initializer`` raising in a new process breaks the pool: every task
  fails with :class:`~packet_gevent.PoolBroken` and ``submit`` raises it.

Processes start on the first submit (so functions defined before that are
importable in them), from the main thread, and run under SCHED_BATCH.  They
die with the master (PDEATHSIG), at ``shutdown()`` and at interpreter exit.
Measured on this 2-core VM (benchmarks/pool.py, medians; the machine is
shared, so figures move by 2x between runs): ~150-300k tiny tasks/s, hub
stall while submitting 20,000 tasks 2.5-6 ms (12 ms when CPython's full GC
runs over the caller's futures), sequential round trip p50 ~50-70 us.
"""
from __future__ import annotations

import logging
import os
import threading
from concurrent.futures._base import PENDING
from typing import Any, Callable, Dict, Iterable, List, Optional

import gevent

from . import process as pool_process
from ..errors import PoolClosed
from .api import PoolAPI
from .futures import Future
from .scheduler import PoolScheduler, _TaskFuture

__all__ = ["ForkPool", "SUBMIT_BURST", "EXIT_GRACE"]

logger = logging.getLogger(__name__)

#: A greenlet that submits this many tasks within one loop turn yields to
#: the hub for one full loop turn (:meth:`ForkPool._yield_to_hub`), so the
#: hub sends them, reads replies and fires timers.  256 submits take ~0.5 ms
#: here; measured while submitting 20,000: the longest hub stall ~2 ms,
#: except when CPython's full (generation 2) garbage collection runs over
#: the caller's 20,000 live futures (~12 ms, in about a third of the runs).
SUBMIT_BURST = 256

#: shutdown(wait=True): how long each process gets to exit after its channel closed.
EXIT_GRACE = 2.0


class ForkPool(PoolScheduler, PoolAPI):
    """A pool of ``size`` forked processes running calls; waiting blocks only greenlets.

    ``initializer(*initargs)`` runs once in each new process.
    ``max_tasks_per_child``: a process exits after that many tasks and is
    replaced.  ``task_timeout``: default running-time limit per task, in
    seconds (from when it starts running).  ``max_pending``: a greenlet's
    ``submit`` waits (cooperatively) while that many of the tasks submitted
    by greenlets are unfinished; submits from the hub or another thread do
    not wait.  ``serializer``: ``"pickle"`` or ``"cloudpickle"`` (sends
    lambdas and closures too; the optional extra).  The pool belongs to the
    thread that created it (its hub); ``submit`` and ``cancel`` from other
    threads are handed to that hub.  Call ``shutdown()`` (or use ``with``).
    """

    def __init__(self, size: Optional[int] = None, *,
                 initializer: Optional[Callable[..., Any]] = None, initargs: tuple = (),
                 max_tasks_per_child: Optional[int] = None,
                 task_timeout: Optional[float] = None,
                 max_pending: Optional[int] = None,
                 serializer: str = "pickle") -> None:
        if size is None:
            size = os.cpu_count() or 1
        if size < 1:
            raise ValueError(f"size must be at least 1, got {size!r}")
        if max_tasks_per_child is not None and max_tasks_per_child < 1:
            raise ValueError(f"max_tasks_per_child must be None or >= 1, got {max_tasks_per_child!r}")
        if task_timeout is not None and task_timeout <= 0:
            raise ValueError(f"task_timeout must be None or > 0, got {task_timeout!r}")
        if max_pending is not None and max_pending < 1:
            raise ValueError(f"max_pending must be None or >= 1, got {max_pending!r}")
        super().__init__(size, initializer=initializer, initargs=initargs,
                         max_tasks=max_tasks_per_child, max_pending=max_pending,
                         serializer=serializer)
        self._task_timeout = task_timeout

    def __repr__(self) -> str:
        state = "broken" if self._broken else ("closed" if self._closed else "open")
        return (f"<ForkPool {state} size={self._size} queued={len(self._queue)} "
                f"unfinished={self._unfinished}>")

    # -- introspection ------------------------------------------------------------------
    @property
    def size(self) -> int:
        return self._size

    def __len__(self) -> int:
        """Tasks submitted and not finished yet (gevent's ThreadPool: tasks in the queue)."""
        return self._unfinished

    def pids(self) -> List[int]:
        """Pids of the live pool processes."""
        # A reaped child is not live even before its channel's EOF has been read.
        return [p.pid for p in self._procs if p is not None and not p.gone and p.child.alive]

    def statistics(self) -> Dict[str, Any]:
        """Counters: submitted, completed, failed, crashed, timed_out, cancelled_running, restarts..."""
        stats = dict(self._stats)
        stats.update(size=self._size, queued=len(self._queue), unfinished=self._unfinished,
                     in_flight=sum(len(p.inflight) for p in self._procs if p is not None),
                     processes=self.pids(), seconds_per_task=self._seconds_per_task)
        return stats

    # -- Executor API ---------------------------------------------------------------------
    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        """Run ``fn(*args, **kwargs)`` in a pool process; return its Future."""
        return self._submit(fn, args, kwargs or None, self._task_timeout)

    def schedule(self, fn: Callable[..., Any], args: Iterable[Any] = (),
                 kwargs: Optional[Dict[str, Any]] = None, *,
                 timeout: Optional[float] = None) -> Future:
        """``submit`` with a per-task ``timeout`` (running seconds; default ``task_timeout``)."""
        return self._submit(fn, tuple(args), kwargs or None,
                            self._task_timeout if timeout is None else timeout)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False,
                 timeout: Optional[float] = None) -> None:
        """Take no more tasks; processes exit once the remaining tasks are done.

        ``cancel_futures``: cancel the tasks not sent to a process yet.
        ``wait``: block the calling greenlet until every task is done and every
        process has exited.  ``timeout`` (with wait): after that many seconds,
        kill the processes; tasks still unfinished fail with PoolClosed.
        """
        if not self._in_pool_thread():
            self._loop.run_callback_threadsafe(self.shutdown, False, cancel_futures=cancel_futures)
            return
        self._closed = True
        if cancel_futures:
            for task in list(self._queue):
                if task._state == PENDING:
                    task.cancel()
            self._queue.clear()
        if self._unfinished == 0:
            self._close_processes()
        if not wait:
            return
        if gevent.getcurrent() is self._hub:
            logger.warning("ForkPool.shutdown(wait=True) called in the hub: not waiting")
            return
        if not self._idle.wait(timeout):
            logger.warning("ForkPool.shutdown: %d tasks unfinished after %s s; killing the "
                           "processes", self._unfinished, timeout)
            self._abort(PoolClosed(f"the pool was shut down (timeout={timeout} s) before this "
                                   f"task finished"))
        self._close_processes()
        for proc in list(self._procs):
            if proc is not None and not proc.child.wait(EXIT_GRACE):
                logger.warning("pool process %d did not exit %.1f s after shutdown; killing it",
                               proc.pid, EXIT_GRACE)
                proc.child.kill()
                proc.child.wait()

    # -- gevent.threadpool.ThreadPool API -------------------------------------------------------
    def _apply_immediately(self) -> bool:
        """In a pool process ``apply`` runs the call inline (a task using the pool it came from)."""
        return pool_process.in_pool_process

    def join(self, timeout: Optional[float] = None) -> bool:
        """Wait until no task is unfinished; True if so (False after ``timeout``)."""
        return self._idle.wait(timeout)

    def kill(self) -> None:
        """Stop now: cancel queued tasks, kill the processes; running tasks fail with PoolClosed."""
        self._closed = True
        for task in list(self._queue):
            if task._state == PENDING:
                task.cancel()
        self._queue.clear()
        self._abort(PoolClosed("the pool was killed while this task ran"))

    # -- submitting ---------------------------------------------------------------------------
    def _submit(self, fn: Callable[..., Any], args: tuple, kwargs: Optional[Dict[str, Any]],
                timeout: Optional[float]) -> Future:
        if self._closed:
            raise self._broken or PoolClosed(
                "cannot submit: the pool was shut down; create a new ForkPool")
        if not callable(fn):
            raise TypeError(f"{fn!r} is not callable")
        if pool_process.in_pool_process:
            raise RuntimeError(
                "this ForkPool belongs to the process that created it; a task running in a "
                "pool process cannot submit to it (use apply(), which runs the call inline there)")
        future = _TaskFuture(self, next(self._ids), fn, args, kwargs, timeout)
        if threading.get_ident() != self._thread_id:
            self._loop.run_callback_threadsafe(self._enqueue, future)
            return future
        if self._pending_sem is not None and gevent.getcurrent() is not self._hub:
            self._pending_sem.acquire()
            if self._closed:
                self._pending_sem.release()
                raise self._broken or PoolClosed("cannot submit: the pool was shut down while "
                                                 "this submit waited for room")
            future.holds_slot = True
        self._enqueue(future)
        self._burst += 1
        if self._burst >= SUBMIT_BURST and gevent.getcurrent() is not self._hub:
            self._yield_to_hub()
        return future

    def _yield_to_hub(self) -> None:
        """Let the hub run one full loop turn: send what was queued, read replies, fire timers.

        ``gevent.sleep(0)`` would not do: it only runs callbacks, and a greenlet
        that keeps calling it is resumed from the same callback pass for up to
        the switch interval (5 ms), starving I/O and timers.  An expired timer
        fires after the poll (epoll with a zero timeout).
        """
        timer = self._loop.timer(0.0)
        try:
            self._hub.wait(timer)
        finally:
            timer.close()

