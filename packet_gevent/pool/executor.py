"""ForkPool: a gevent-aware process pool that replaces ``gevent.threadpool.ThreadPool``.

CPU-bound calls run in forked processes (no GIL between them), and waiting
on them blocks only the calling greenlet.  Two APIs (:class:`~.api.PoolAPI`)
over one :class:`~.scheduler.Scheduler`, which runs the tasks on forked
processes (:class:`ForkBackend`: :mod:`.process`):

* ``concurrent.futures.Executor``: ``submit``, ``map``, ``shutdown``, context manager;
* gevent's ThreadPool names: ``spawn``, ``apply``, ``apply_cb``, ``apply_async``,
  ``map_async``, ``imap``, ``imap_unordered``, ``join``, ``kill``, ``size``,
  ``maxsize``, so gevent code switches in one line::

      pool = gevent.threadpool.ThreadPool(4)   # before
      pool = packet_gevent.ForkPool(4)         # after

How it runs (the layers: :mod:`.tasks` what a task is and how it travels,
:mod:`.process` one process and its channel, :mod:`.scheduler` who runs
what and what each fault means, :mod:`.api` the public API, this module
joins them):

* ``submit`` queues the task and, once per loop turn, a hub callback sends
  the queue out: each process gets one message holding one pickle for all
  its new calls.  A greenlet that submits many tasks without yielding
  yields to the hub every :data:`~.scheduler.SUBMIT_BURST` submits, so the hub keeps
  serving (and the tasks start) while it submits.
* Each process has a bounded number of tasks in flight (sent, not yet
  answered): enough for :data:`~.scheduler.PIPELINE_SECONDS` of work at the measured
  seconds per task, between 1 and :data:`~.scheduler.MAX_INFLIGHT`.  Tiny tasks stream
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
queue), the size is fixed (setting ``size`` or ``maxsize`` raises
AttributeError), ``apply``/``submit`` from inside a pool process do not reach
the pool (``apply`` runs the call inline there, ``submit`` raises), and a
ForkPool refuses to be gevent's ``hub.threadpool`` (gevent's own calls there
cannot travel to another process).

Every task gets exactly one outcome.  *Running* means: named in the child's
shared marker as started and not answered yet; other tasks sent to that
process are *queued there* (see :mod:`.process`).

* An exception in the task: the same exception type, with the remote
  traceback as ``__cause__`` (and ``remote_traceback``).
* The process dies (signal, ``os._exit``, segfault): the running task fails
  with :class:`~packet_gevent.WorkerCrashed` (exit code or signal); the
  tasks queued there go back to the front of the queue (a task whose
  process died under it while queued :data:`~.scheduler.MAX_REQUEUES` times fails with
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
die with the master (PDEATHSIG), at ``shutdown()`` and at interpreter exit,
which first waits for the tasks submitted (like the stdlib executors; then
``submit`` raises).  A ForkPool nobody holds is collected (ResourceWarning)
and closes once its tasks are done: only its Scheduler is referenced from
the hub's watchers.
Measured on this 2-core VM (benchmarks/pool.py, medians; the machine is
shared, so figures move by 2x between runs): ~150-300k tiny tasks/s, hub
stall while submitting 20,000 tasks 2.5-6 ms (12 ms when CPython's full GC
runs over the caller's futures), sequential round trip p50 ~50-70 us.
"""
from __future__ import annotations

import logging
import os
import threading
import warnings
import weakref
from typing import Any, Callable, Dict, Iterable, List, Optional

import gevent

from . import process as pool_process
from ..errors import PoolClosed
from .api import PoolAPI
from .futures import Future, TaskResult
from .process import Markers, PoolProcess
from .scheduler import BackendEvents, Scheduler
from .tasks import TaskCodec, describe_callable

__all__ = ["ForkPool", "ForkBackend", "EXIT_GRACE"]

logger = logging.getLogger(__name__)

#: shutdown(wait=True) and interpreter exit: how long each process gets to
#: exit after its channel closed, before SIGKILL.
EXIT_GRACE = 2.0


class ForkBackend:
    """The scheduler's ProcessBackend for ForkPool: forked :class:`~.process.PoolProcess` es.

    One shared page of running-task markers serves all ``size`` slots.
    """

    def __init__(self, size: int, codec: TaskCodec, *,
                 initializer: Optional[Callable[..., Any]], initargs: tuple,
                 max_tasks: Optional[int]) -> None:
        self._size = size
        self._codec = codec
        self._initializer = initializer
        self._initargs = tuple(initargs)
        self._max_tasks = max_tasks
        self._markers: Optional[Markers] = None

    def start(self, slot: int, events: BackendEvents) -> PoolProcess:
        if self._markers is None:
            self._markers = Markers(self._size)
        return PoolProcess(events, slot, self._markers, self._codec,
                           initializer=self._initializer, initargs=self._initargs,
                           max_tasks=self._max_tasks)


# -- interpreter exit: pending tasks are run, like the stdlib executors' ----------------------

#: Schedulers of this process's pools that may still have work (weak: a pool
#: whose processes are gone and which nobody holds is not kept for this).
_schedulers: "weakref.WeakSet[Scheduler]" = weakref.WeakSet()
_exit_hook_registered = False
_exiting = False


def _join_at_exit() -> None:
    """Runs when the main thread ends (``threading._register_atexit``), before atexit.

    Every pool of the main thread runs its unfinished tasks to the end (the
    program does not exit until pending futures are done) and its processes
    exit; after this, every pool refuses ``submit`` (RuntimeError), as the
    stdlib executors do.
    """
    global _exiting
    _exiting = True
    for scheduler in list(_schedulers):
        scheduler.refuse("cannot schedule new futures after interpreter shutdown")
        if scheduler.unfinished and scheduler.in_pool_thread() \
                and gevent.getcurrent() is not gevent.get_hub():
            scheduler.wait_idle()
        if scheduler.in_pool_thread() and gevent.getcurrent() is not gevent.get_hub():
            scheduler.close_processes()
            scheduler.wait_exited(EXIT_GRACE)


def _register_exit_hook() -> None:
    global _exit_hook_registered
    if not _exit_hook_registered:
        _exit_hook_registered = True
        threading._register_atexit(_join_at_exit)  # type: ignore[attr-defined]


def _collected(scheduler: Scheduler, description: str) -> None:
    """The ForkPool was garbage-collected without shutdown(): close it behind the user."""
    warnings.warn(f"{description} was deleted without shutdown(); its processes exit once its "
                  f"unfinished tasks are done. Call shutdown() or use `with ForkPool(...)`",
                  ResourceWarning, stacklevel=2)
    if scheduler.in_pool_thread():
        scheduler.close()
    else:
        scheduler.call_in_pool_thread(scheduler.close)


class ForkPool(PoolAPI):
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
    threads are handed to that hub.  Call ``shutdown()`` (or use ``with``);
    a pool dropped without it is closed when collected (ResourceWarning).
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
        codec = TaskCodec(serializer)
        backend = ForkBackend(size, codec, initializer=initializer, initargs=initargs,
                              max_tasks=max_tasks_per_child)
        self._scheduler = scheduler = Scheduler(
            backend, size, codec=codec, max_tasks=max_tasks_per_child, max_pending=max_pending,
            initializer_name=describe_callable(initializer))
        self._task_timeout = task_timeout
        if _exiting:
            scheduler.refuse("cannot schedule new futures after interpreter shutdown")
        _schedulers.add(scheduler)
        _register_exit_hook()
        self._finalizer = weakref.finalize(self, _collected, scheduler,
                                           f"ForkPool({size}) at {id(self):#x}")
        self._finalizer.atexit = False

    def __repr__(self) -> str:
        s = self._scheduler
        state = "broken" if s.broken else ("closed" if s.closed else "open")
        return f"<ForkPool {state} size={s.size} queued={s.queued} unfinished={s.unfinished}>"

    # -- introspection ------------------------------------------------------------------
    @property
    def size(self) -> int:
        """Number of processes (fixed: create a new pool for another size)."""
        return self._scheduler.size

    @size.setter
    def size(self, value: int) -> None:
        raise AttributeError(f"ForkPool's size is fixed at {self._scheduler.size}: create a new "
                             f"ForkPool({value!r}) (gevent's ThreadPool can be resized)")

    @property
    def maxsize(self) -> int:
        """The most processes the pool runs: its ``size`` (read-only)."""
        return self._scheduler.size

    @maxsize.setter
    def maxsize(self, value: int) -> None:
        raise AttributeError(f"ForkPool's maxsize is its fixed size {self._scheduler.size}: "
                             f"create a new ForkPool({value!r}); to bound the queue use "
                             f"max_pending=")

    def __len__(self) -> int:
        """Tasks submitted and not finished yet (gevent's ThreadPool: tasks in the queue)."""
        return self._scheduler.unfinished

    def pids(self) -> List[int]:
        """Pids of the live pool processes."""
        return self._scheduler.pids()

    def statistics(self) -> Dict[str, Any]:
        """Counters: submitted, completed, failed, crashed, timed_out, cancelled_running, restarts..."""
        return self._scheduler.statistics()

    # -- Executor API ---------------------------------------------------------------------
    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        """Run ``fn(*args, **kwargs)`` in a pool process; return its Future."""
        if pool_process.in_pool_process:
            _refuse_in_pool_process()
        return self._scheduler.submit(fn, args, kwargs or None, self._task_timeout)

    def schedule(self, fn: Callable[..., Any], args: Iterable[Any] = (),
                 kwargs: Optional[Dict[str, Any]] = None, *,
                 timeout: Optional[float] = None) -> Future:
        """``submit`` with a per-task ``timeout`` (running seconds; default ``task_timeout``)."""
        if pool_process.in_pool_process:
            _refuse_in_pool_process()
        return self._scheduler.submit(fn, tuple(args), kwargs or None,
                                      self._task_timeout if timeout is None else timeout)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False,
                 timeout: Optional[float] = None) -> None:
        """Take no more tasks; processes exit once the remaining tasks are done.

        ``cancel_futures``: cancel the tasks not sent to a process yet.
        ``wait``: block the calling greenlet until every task is done and every
        process has exited.  ``timeout`` (with wait): after that many seconds,
        kill the processes; tasks still unfinished fail with PoolClosed.
        """
        self._finalizer.detach()
        scheduler = self._scheduler
        if not scheduler.in_pool_thread():
            scheduler.call_in_pool_thread(scheduler.close, cancel_futures)
            return
        scheduler.close(cancel_futures)
        if not wait:
            return
        if gevent.getcurrent() is gevent.get_hub():
            logger.warning("ForkPool.shutdown(wait=True) called in the hub: not waiting")
            return
        if not scheduler.wait_idle(timeout):
            logger.warning("ForkPool.shutdown: %d tasks unfinished after %s s; killing the "
                           "processes", scheduler.unfinished, timeout)
            scheduler.abort(PoolClosed(f"the pool was shut down (timeout={timeout} s) before "
                                       f"this task finished"))
        scheduler.close_processes()
        scheduler.wait_exited(EXIT_GRACE)

    # -- gevent.threadpool.ThreadPool API -------------------------------------------------------
    def _apply_immediately(self) -> bool:
        """In a pool process ``apply`` runs the call inline (a task using the pool it came from)."""
        return pool_process.in_pool_process

    def spawn(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> TaskResult:
        self._not_the_hubs_threadpool()
        return super().spawn(fn, *args, **kwargs)

    def apply(self, fn: Callable[..., Any], args: Optional[Iterable[Any]] = None,
              kwds: Optional[Dict[str, Any]] = None, *, timeout: Optional[float] = None) -> Any:
        self._not_the_hubs_threadpool()
        return super().apply(fn, args, kwds, timeout=timeout)

    spawn.__doc__ = PoolAPI.spawn.__doc__
    apply.__doc__ = PoolAPI.apply.__doc__

    def _not_the_hubs_threadpool(self) -> None:
        """gevent runs its own blocking calls in ``hub.threadpool`` with objects (open
        files, locks) that cannot travel to another process: refuse to be that pool."""
        if getattr(gevent.get_hub(), "_threadpool", None) is self:
            raise TypeError(
                "a ForkPool cannot be gevent's hub.threadpool: gevent runs its own blocking "
                "calls there (FileObjectThread, the thread resolver, gevent.os) with objects "
                "that cannot go to another process. Keep gevent's ThreadPool as the hub's and "
                "use a separate ForkPool for your CPU-bound calls (del hub.threadpool puts "
                "gevent's back)")

    def join(self, timeout: Optional[float] = None) -> bool:
        """Wait until no task is unfinished; True if so (False after ``timeout``)."""
        return self._scheduler.wait_idle(timeout)

    def kill(self) -> None:
        """Stop now: cancel queued tasks, kill the processes; running tasks fail with PoolClosed."""
        self._finalizer.detach()
        scheduler = self._scheduler
        scheduler.refuse("cannot submit: the pool was killed; create a new pool")
        scheduler.cancel_queued()
        scheduler.abort(PoolClosed("the pool was killed while this task ran"))


def _refuse_in_pool_process() -> None:
    raise RuntimeError(
        "this ForkPool belongs to the process that created it; a task running in a "
        "pool process cannot submit to it (use apply(), which runs the call inline there)")
