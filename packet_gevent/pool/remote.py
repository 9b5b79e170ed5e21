"""RemotePool: the fork pool's API on a Dask distributed cluster.

``RemotePool("tcp://host:8786")`` sends tasks to an existing Dask scheduler;
``RemotePool()`` starts a local cluster first
(:class:`~packet_gevent.pool.dask_cluster.LocalDaskCluster`: a ``dask
scheduler`` and a ``dask worker`` subprocess on 127.0.0.1) and stops it at
``shutdown()``.  The public API is :class:`~packet_gevent.pool.api.PoolAPI`'s,
the futures are :class:`~packet_gevent.futures.Future`, and faults raise
the exceptions :class:`~packet_gevent.ForkPool` raises, so code (and
``Reactor(pool=...)`` with ``Connection.defer``) moves between the two
unchanged.  Needs the ``dask`` extra (``pip install 'packet_gevent[dask]'``).

How it talks to Dask (each point a trap measured under gevent):

* Dask's blocking calls from a greenlet freeze the hub, and under
  ``patch_all()`` its loop thread would become a greenlet.  So one
  ``Client(asynchronous=True)`` per process lives on an asyncio loop in a
  real OS thread, started with the original ``_thread.start_new_thread``
  (``platform.uname().processor`` is computed on the calling thread first:
  computing it there runs a subprocess, which fails in that thread when
  patched).  Greenlets hand it work through ``call_soon_threadsafe``; it
  hands outcomes back through one ``hub.loop.async_()`` watcher, and the hub
  completes the futures, so a greenlet waiting on a task blocks only itself.
* The tasks of one function posted together go to the scheduler in one
  ``client.map``.  Values are fetched on that loop, once the scheduler says a
  task finished, by ``client.gather`` in batches (a done callback alone would
  leave the value on the worker).
* Tasks are submitted with ``pure=False`` (identical calls would otherwise
  share one key and run once).  The modules of the functions sent, when they
  are not installed packages, are registered with cloudpickle to travel by
  value, so workers need not import them and run the code as it is now.
* After ``os.fork()`` the child gets its own client thread on first use
  (the parent's does not exist there); the child never stops the parent's
  local cluster.

Faults, each mapped onto what ForkPool raises:

* an exception in the task: the same type, the remote traceback as its
  ``__cause__`` and ``remote_traceback``;
* a worker that dies mid-task: Dask re-runs the task elsewhere (its side
  effects may happen twice); a task that has killed ``allowed_failures`` + 1
  workers fails with :class:`~packet_gevent.WorkerCrashed` (Dask's
  ``KilledWorker``);
* a timeout (``task_timeout=`` or ``schedule(..., timeout=)``) is measured
  on the client from the submit (Dask has no per-task time limit on the
  worker): the future fails with :class:`~packet_gevent.TaskTimeout` and the
  task is cancelled on the cluster, but a task already running there runs
  on to its end;
* ``cancel()``: the task is cancelled on the cluster (same caveat);
* no worker left for ``no_worker_timeout`` seconds: unfinished tasks fail with
  WorkerCrashed (they never hang);
* the scheduler lost: every unfinished task fails at once with
  :class:`~packet_gevent.PoolBroken` (Dask drops them when the connection
  drops); if it is not back within ``scheduler_timeout`` the pool is broken
  and ``submit`` raises PoolBroken too (so it does if the client thread ever
  ends on its own).

Measured on this 2-core VM (benchmarks/remote.py; shared, loaded machine):
a trivial round trip takes ~11 ms and a local 2-worker cluster runs ~300-600
tiny tasks/s (0.88x Dask's own ``map`` + ``gather`` from a thread), against
~0.1 ms and ~150k/s for ForkPool: RemotePool is for tasks of ~10 ms and
more, or for more cores than one machine has.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import os
import platform
import sys
import sysconfig
import time
import traceback
from concurrent.futures import CancelledError
from typing import Any, Callable, Deque, Dict, Iterable, List, Optional, Tuple

import gevent
import gevent.event
from gevent.monkey import get_original

from ..errors import PoolBroken, PoolClosed, SerializationError, TaskTimeout, WorkerCrashed
from .api import PoolAPI
from .dask_cluster import LocalDaskCluster, import_dask
from .futures import Future
from .scheduler import SUBMIT_BURST
from .tasks import describe_callable, rebuild_exception

__all__ = ["RemotePool", "LocalDaskCluster"]

logger = logging.getLogger(__name__)

_start_new_thread = get_original("_thread", "start_new_thread")
_get_ident = get_original("_thread", "get_ident")

#: Gathers of finished tasks' values in flight at once: the values of tasks
#: that finish meanwhile wait and go in the next batch.  With one
#: ``client.map`` per batch of submits and batched gathers, tiny tasks ran at
#: 0.88x the throughput of Dask's own map + gather; with one submit and one
#: gather per task, 0.5-0.8x (benchmarks/remote.py; shared, noisy machine).
MAX_GATHERS = 2

#: How often the client thread checks the scheduler connection and the
#: number of workers (seconds).
WATCH_INTERVAL = 0.25


def _fresh_offload_executor() -> None:
    """Give a forked child its own Dask "offload" executor.

    ``distributed.utils`` serializes every message over 10 MiB on a
    module-level one-thread executor.  A child forked after the parent used it
    inherits an executor that believes its thread exists (fork copies only
    the forking thread), so the child's first large submit waited forever.
    ``distributed.utils.offload`` reads the module global at each call, so a
    new executor of the same kind replaces it for the whole child.
    """
    utils = sys.modules.get("distributed.utils")
    old = getattr(utils, "_offload_executor", None)
    if old is not None:
        utils._offload_executor = type(old)(max_workers=1, thread_name_prefix="Dask-Offload")


# -- the client thread ----------------------------------------------------------------------------

class _Task:
    """One submitted call, as the client thread sees it."""

    __slots__ = ("future", "fn", "args", "kwargs", "timeout", "dask_future", "fetcher")

    def __init__(self, future: Future, fn: Callable[..., Any], args: tuple,
                 kwargs: Optional[Dict[str, Any]], timeout: Optional[float]) -> None:
        self.future = future
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.timeout = timeout
        self.dask_future: Any = None
        self.fetcher: Optional[asyncio.Task] = None


class _ClientThread:
    """A real OS thread running an asyncio loop that owns ``Client(asynchronous=True)``.

    Everything Dask is touched only on that loop.  ``post(fn, *args)`` runs
    ``fn`` there (from any thread); ``fn`` reports back with
    ``pool._to_hub``.
    """

    def __init__(self, pool: "RemotePool", address: str) -> None:
        self.pool = pool
        self.address = address
        self.loop: Optional[asyncio.AbstractEventLoop] = None
        self.client: Any = None
        self.tasks: Dict[Future, _Task] = {}     # sent, outcome not handed to the hub yet
        self._outgoing: List[_Task] = []          # to send at the end of this batch of posts
        self._ready: List[_Task] = []             # finished on the cluster, value to gather
        self._gathering = 0                       # gathers in flight
        self._distributed: Any = None
        self._inbox: Deque[Tuple[Callable[..., Any], tuple]] = collections.deque()
        self._inbox_posted = False
        self._stopping: Optional[asyncio.Event] = None
        self.started = gevent.event.AsyncResult()   # set in the hub: None or the error
        self.stopped = gevent.event.Event()          # set in the hub when the thread ends
        self._lost_since: Optional[float] = None
        self._no_workers_since: Optional[float] = None
        self.broken = False

    def start(self) -> None:
        platform.uname().processor  # here: computing it in that thread fails when patched
        _start_new_thread(self._main, ())

    def post(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on the client's loop soon (thread-safe; batched)."""
        self._inbox.append((fn, args))
        if not self._inbox_posted and self.loop is not None:
            self._inbox_posted = True
            try:
                self.loop.call_soon_threadsafe(self._drain)
            except RuntimeError:  # the loop has closed: the pool is shut down
                pass

    def _drain(self) -> None:
        self._inbox_posted = False
        inbox = self._inbox
        while inbox:
            fn, args = inbox.popleft()
            try:
                fn(*args)
            except Exception:
                logger.exception("RemotePool: %r failed on the client thread", fn)
        if self._outgoing:
            self._flush()

    # -- the thread ----------------------------------------------------------------------
    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        error: Optional[BaseException] = None
        try:
            loop.run_until_complete(self._run(loop))
        except BaseException as exc:  # never silent: the pool would hang
            logger.exception("RemotePool: the Dask client thread failed")
            error = exc
        finally:
            try:
                loop.close()
            finally:
                self.pool._to_hub(self.pool._client_thread_ended, self, error)

    async def _run(self, loop: asyncio.AbstractEventLoop) -> None:
        distributed = self._distributed = import_dask()
        self._stopping = asyncio.Event()
        pool = self.pool
        try:
            await self._connect(distributed)
            if pool.min_workers:
                await self.client.wait_for_workers(pool.min_workers,
                                                   timeout=pool.connect_timeout)
        except BaseException as exc:
            pool._to_hub(self.started.set, exc)
            if self.client is not None:
                await self._close_client()
            return
        self.loop = loop
        pool._to_hub(self.started.set, None)
        if self._inbox:
            self._drain()
        watch = asyncio.ensure_future(self._watch())
        await self._stopping.wait()
        watch.cancel()
        for task in list(self.tasks.values()):
            if task.fetcher is not None:
                task.fetcher.cancel()
        await self._close_client()

    async def _connect(self, distributed: Any) -> None:
        """Make ``self.client`` and connect it; once more if the handshake itself failed.

        The client is kept before it is awaited, so a failed connect is closed
        (its sockets too).  distributed's handshake asserts that the scheduler's
        first reply is one message; under load it was seen to carry more
        (``AssertionError`` in ``Client._ensure_connected``): that attempt is
        closed and the connect made once more.
        """
        for attempt in (1, 2):
            self.client = distributed.Client(self.address, asynchronous=True,
                                             set_as_default=False,
                                             timeout=self.pool.connect_timeout)
            try:
                await self.client
                return
            except AssertionError:
                if attempt == 2:
                    raise
                logger.warning("RemotePool: the handshake with the Dask scheduler at %s "
                               "failed (distributed's AssertionError); connecting again",
                               self.address)
                await self._close_client()

    async def _close_client(self) -> None:
        try:
            await asyncio.wait_for(self.client.close(), self.pool.connect_timeout)
        except BaseException as exc:  # closing a client whose scheduler died may fail
            logger.debug("RemotePool: closing the Dask client: %r", exc)
        # A client whose scheduler died can leave its connection pool's sockets (to the
        # workers) open after close(): close the pool itself, always.
        rpc = getattr(self.client, "rpc", None)
        if rpc is not None:
            try:
                await asyncio.wait_for(rpc.close(), self.pool.connect_timeout)
            except BaseException as exc:
                logger.debug("RemotePool: closing the Dask connection pool: %r", exc)

    def call(self, make_coro: Callable[[], Any], timeout: float) -> gevent.event.AsyncResult:
        """Run the coroutine ``make_coro()`` on the loop; its outcome, set in the hub."""
        result = gevent.event.AsyncResult()

        async def run() -> None:
            try:
                value = await asyncio.wait_for(make_coro(), timeout)
            except BaseException as exc:
                self.pool._to_hub(result.set_exception, exc)
            else:
                self.pool._to_hub(result.set, value)

        self.post(lambda: asyncio.ensure_future(run()))
        return result

    def stop(self) -> None:
        """(On the loop) cancel what is left on the cluster, close the client, end the thread."""
        if self.client is not None and self.tasks and not self.broken:
            self._cancel_on_cluster([t.dask_future for t in self.tasks.values()
                                     if t.dask_future is not None])
        if self._stopping is not None:
            self._stopping.set()

    # -- tasks ---------------------------------------------------------------------------
    def send(self, task: _Task) -> None:
        """(On the loop) queue a task for the scheduler; sent when this batch of posts ends."""
        self._outgoing.append(task)

    def _flush(self) -> None:
        """Submit the queued tasks: one ``client.map`` per function (one scheduler message)."""
        batch, self._outgoing = self._outgoing, []
        groups: Dict[Tuple[int, int], List[_Task]] = {}
        for task in batch:
            if task.future.done():  # cancelled before it got here
                continue
            if self.broken:
                self.pool._to_hub(self.pool._complete, task.future, None, self.pool._broken)
                continue
            self.pool.register_by_value(task.fn)
            if task.kwargs or not task.args:
                self._submit(task)
            else:
                groups.setdefault((id(task.fn), len(task.args)), []).append(task)
        for tasks in groups.values():
            if len(tasks) == 1:
                self._submit(tasks[0])
                continue
            try:
                dask_futures = self.client.map(tasks[0].fn, *zip(*(t.args for t in tasks)),
                                               pure=False, retries=self.pool.retries)
            except Exception:  # one of them cannot be sent: find which, one by one
                for task in tasks:
                    self._submit(task)
                continue
            for task, dask_future in zip(tasks, dask_futures):
                self._track(task, dask_future)

    def _submit(self, task: _Task) -> None:
        try:
            dask_future = self.client.submit(task.fn, *task.args, pure=False,
                                             retries=self.pool.retries, **(task.kwargs or {}))
        except Exception as exc:
            self.pool._to_hub(self.pool._complete, task.future, None, SerializationError(
                f"could not send {describe_callable(task.fn)} to Dask: {exc}"))
            return
        self._track(task, dask_future)

    def _track(self, task: _Task, dask_future: Any) -> None:
        task.dask_future = dask_future
        self.tasks[task.future] = task
        task.fetcher = asyncio.ensure_future(self._fetch(task))

    async def _fetch(self, task: _Task) -> None:
        """Wait until the task is done on the cluster (or its timeout); queue its value."""
        future, dask_future = task.future, task.dask_future
        settled: Optional[asyncio.Future] = None
        try:
            if task.timeout is None:
                await dask_future._state.wait()  # what Future.result() awaits first
                done = True
            else:
                settled = asyncio.ensure_future(dask_future._state.wait())
                done = bool((await asyncio.wait((settled,), timeout=task.timeout))[0])
        except asyncio.CancelledError:  # the pool cancelled it or is stopping
            self.tasks.pop(future, None)
            raise
        finally:
            if settled is not None and not settled.done():
                settled.cancel()
        if not done:
            self._cancel_on_cluster([dask_future])
            self._settle(task, None, TaskTimeout(
                f"{describe_callable(task.fn)} did not finish within {task.timeout} s; "
                f"cancelled on the cluster (a task already running there runs on to its end)"))
            return
        if dask_future.status == "finished":  # the value is on a worker: gather in batches
            self._ready.append(task)
            if len(self._ready) == 1 and self._gathering < MAX_GATHERS:
                self.loop.call_soon(self._gather_ready)
            return
        await self._fetch_one(task)

    async def _fetch_one(self, task: _Task) -> None:
        try:
            value = await task.dask_future.result()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self._settle(task, None, self._map_error(task, exc))
        else:
            self._settle(task, value, None)

    def _gather_ready(self) -> None:
        if self._gathering >= MAX_GATHERS:
            return
        batch, self._ready = self._ready, []
        batch = [task for task in batch if task.future in self.tasks]
        if batch:
            self._gathering += 1
            asyncio.ensure_future(self._gather(batch))

    async def _gather(self, batch: List[_Task]) -> None:
        """Fetch the values of finished tasks: one request for the batch."""
        try:
            values = await self.client.gather([task.dask_future for task in batch])
        except asyncio.CancelledError:
            raise
        except BaseException:  # one was lost meanwhile (its worker died): one by one
            for task in batch:
                if task.future in self.tasks:
                    await self._fetch_one(task)
        else:
            for task, value in zip(batch, values):
                self._settle(task, value, None)
            del values
        finally:
            self._gathering -= 1
        if self._ready:  # finished while this gather ran: the next batch
            self._gather_ready()

    def _settle(self, task: _Task, value: Any, error: Optional[BaseException]) -> None:
        """Hand the outcome to the hub, unless the task was cancelled or failed meanwhile."""
        if self.tasks.pop(task.future, None) is not None:
            self.pool._to_hub(self.pool._complete, task.future, value, error)

    def _map_error(self, task: _Task, exc: BaseException) -> BaseException:
        distributed = import_dask()
        what = describe_callable(task.fn)
        if isinstance(exc, distributed.client.FutureCancelledError):
            if exc.reason == "scheduler-connection-lost":
                return PoolBroken(f"lost the Dask scheduler at {self.address} while "
                                  f"{what} was unfinished (the task may have run)")
            return CancelledError(f"{what} was cancelled on the cluster ({exc.reason})")
        if isinstance(exc, CancelledError):
            return CancelledError(str(exc))
        if isinstance(exc, distributed.KilledWorker):
            return WorkerCrashed(
                f"{what}: every Dask worker that ran it died, and Dask gave up (KilledWorker: "
                f"{exc}); its side effects may have happened more than once")
        if type(exc) is TypeError and str(exc).startswith("Could not serialize object"):
            # the worker could not pickle the result back (Dask's own message)
            return SerializationError(f"{what} ran, but its result could not be sent back: "
                                      f"{exc}; return picklable values")
        if isinstance(exc, Exception):
            text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            exc.__traceback__ = None
            return rebuild_exception((exc, text))
        return exc

    def cancel(self, future: Future) -> None:
        """(On the loop) cancel a task the pool's caller cancelled."""
        task = self.tasks.pop(future, None)
        if task is None:
            return
        if task.fetcher is not None:
            task.fetcher.cancel()
        if task.dask_future is not None:
            self._cancel_on_cluster([task.dask_future])

    def _cancel_on_cluster(self, dask_futures: List[Any]) -> None:
        if not dask_futures or self.client is None or self.client.status != "running":
            return
        pending = self.client.cancel(dask_futures)
        if asyncio.iscoroutine(pending) or isinstance(pending, asyncio.Future):
            fut = asyncio.ensure_future(pending)
            fut.add_done_callback(lambda f: f.cancelled() or f.exception())

    # -- watching the cluster ----------------------------------------------------------------
    async def _watch(self) -> None:
        """Fail unfinished tasks when the scheduler is lost or no worker is left."""
        pool = self.pool
        while True:
            await asyncio.sleep(WATCH_INTERVAL)
            now = time.monotonic()
            if self.client.status != "running":
                if self._lost_since is None:
                    self._lost_since = now
                    logger.warning("RemotePool: lost the Dask scheduler at %s; waiting up "
                                   "to %s s for it", self.address, pool.scheduler_timeout)
                if now - self._lost_since >= pool.scheduler_timeout:
                    self._break(PoolBroken(
                        f"lost the Dask scheduler at {self.address} (not back within "
                        f"{pool.scheduler_timeout} s); create a new RemotePool"))
                    return
                continue
            self._lost_since = None
            if not self.tasks:
                self._no_workers_since = None
                continue
            workers = self.client.scheduler_info().get("n_workers")
            if workers is None:
                workers = len(self.client.scheduler_info().get("workers", ()))
            if workers:
                self._no_workers_since = None
                continue
            if self._no_workers_since is None:
                self._no_workers_since = now
            elif now - self._no_workers_since >= pool.no_worker_timeout:
                self._fail_all(lambda what: WorkerCrashed(
                    f"no Dask worker left at {self.address} for {pool.no_worker_timeout} s "
                    f"while {what} waited; start workers and submit again"))
                self._no_workers_since = None

    def _fail_all(self, make_error: Callable[[str], BaseException]) -> None:
        tasks = list(self.tasks.values())
        self.tasks.clear()
        for task in tasks:
            if task.fetcher is not None:
                task.fetcher.cancel()
            self.pool._to_hub(self.pool._complete, task.future, None,
                              make_error(describe_callable(task.fn)))
        self._cancel_on_cluster([t.dask_future for t in tasks if t.dask_future is not None])

    def _break(self, error: PoolBroken) -> None:
        self.broken = True
        self.pool._to_hub(self.pool._set_broken, error)
        self._fail_all(lambda what: PoolBroken(f"{error} ({what} was unfinished)"))


# -- the pool -------------------------------------------------------------------------------------

_INSTALLED = tuple(os.path.realpath(p) + os.sep for p in {
    sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")})


class RemotePool(PoolAPI):
    """The ForkPool API on a Dask cluster (see the module docstring).

    ``address``: a scheduler (``"tcp://host:8786"``); None starts a
    :class:`LocalDaskCluster` of ``workers`` processes (default: the CPU
    count) and stops it at ``shutdown()``.  Start-up waits until
    ``min_workers`` workers (default: all of a local cluster's; 1 for
    an existing one) are there.  ``task_timeout``: default time limit per
    task, from the submit, in seconds.  ``retries``: Dask re-runs a task
    that *raised* that many times (default 0, as ForkPool); a task whose
    worker *died* is always re-run, up to the scheduler's allowed failures
    (``allowed_failures`` for a local cluster).  ``scheduler_timeout``: how
    long a lost scheduler may take to come back before the pool breaks;
    ``no_worker_timeout``: how long tasks wait with no worker in the cluster
    before they fail.  Create it in the main thread (its hub completes the
    futures); submit from any greenlet or thread.
    """

    def __init__(self, address: Optional[str] = None, *, workers: Optional[int] = None,
                 task_timeout: Optional[float] = None, retries: int = 0,
                 allowed_failures: int = 1, min_workers: Optional[int] = None,
                 connect_timeout: float = 30.0, scheduler_timeout: float = 5.0,
                 no_worker_timeout: float = 30.0) -> None:
        if task_timeout is not None and task_timeout <= 0:
            raise ValueError(f"task_timeout must be None or > 0, got {task_timeout!r}")
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries!r}")
        import_dask()
        self.task_timeout = task_timeout
        self.retries = retries
        self.connect_timeout = connect_timeout
        self.scheduler_timeout = scheduler_timeout
        self.no_worker_timeout = no_worker_timeout
        self.cluster: Optional[LocalDaskCluster] = None
        self._closed = False
        self._broken: Optional[PoolBroken] = None
        self._by_value: set = set()
        self._client: Optional[_ClientThread] = None
        self._init_process_state()
        try:
            if address is None:
                self.cluster = LocalDaskCluster(workers or os.cpu_count() or 1,
                                                allowed_failures=allowed_failures,
                                                start_timeout=connect_timeout)
                address = self.cluster.start()
                if min_workers is None:
                    min_workers = self.cluster.workers
            self.address = address
            self.min_workers = 1 if min_workers is None else min_workers
            self._connect()
        except BaseException:
            if self.cluster is not None:
                self.cluster.stop()
            self._wake.close()
            raise

    def _init_process_state(self) -> None:
        """What belongs to this process and its hub (made again in a forked child)."""
        self._pid = os.getpid()
        self._hub = gevent.get_hub()
        self._thread_id = _get_ident()
        self._unfinished = 0
        self._pending: set = set()          # the unfinished futures (hub side)
        self._idle = gevent.event.Event()
        self._idle.set()
        self._down = gevent.event.Event()   # disconnected (and a local cluster stopped)
        self._holds = 0                     # greenlets waiting on the cluster (not on tasks)
        self._burst = 0                     # submits in this loop turn
        self._outbox: Deque[Tuple[Callable[..., Any], tuple]] = collections.deque()
        self._wake = self._hub.loop.async_()
        self._wake.start(self._drain_outbox)
        self._wake.ref = False
        self._wake_closed = self._disconnecting = False
        self._wake_sent = False

    def __repr__(self) -> str:
        state = "broken" if self._broken else ("closed" if self._closed else "open")
        return f"<RemotePool {state} {self.address} unfinished={self._unfinished}>"

    def __len__(self) -> int:
        """Tasks submitted and not finished yet."""
        return self._unfinished

    def _connect(self) -> None:
        client = _ClientThread(self, self.address)
        self._client = client
        self._keep_loop_alive(+1)
        try:
            client.start()
            # Client() and wait_for_workers are each bounded by connect_timeout.
            try:
                error = client.started.get(timeout=2 * self.connect_timeout + 10)
            except gevent.Timeout:
                error = TimeoutError("the Dask client thread did not report back")
        finally:
            self._keep_loop_alive(-1)
        if error is not None:
            self._client = None
            raise ConnectionError(f"could not connect to the Dask scheduler at {self.address} "
                                  f"with {self.min_workers} worker(s) within "
                                  f"{self.connect_timeout} s: {error!r}") from error

    def _after_fork(self) -> None:
        """In a forked child: a fresh hub watcher and client thread, no cluster ownership."""
        self._init_process_state()
        self.cluster = None
        _fresh_offload_executor()
        self._connect()

    # -- hub side -----------------------------------------------------------------------------
    def _keep_loop_alive(self, delta: int) -> None:
        """The hub's async watcher keeps the loop alive while anyone waits on the cluster."""
        self._holds += delta
        if not self._wake_closed:
            self._wake.ref = self._holds + self._unfinished > 0

    def _to_hub(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` in the pool's hub (from the client thread).

        One wake-up per batch: a ``send()`` wakes the hub's thread, which takes
        the GIL (profiled: ~120 us of the client thread's time per call).
        """
        self._outbox.append((fn, args))
        if self._wake_sent:
            return
        self._wake_sent = True
        try:
            self._wake.send()
        except (AttributeError, ValueError):  # closed at shutdown: nothing waits any more
            pass

    def _drain_outbox(self) -> None:
        self._wake_sent = False  # before draining: a later append sends again
        outbox = self._outbox
        while outbox:
            fn, args = outbox.popleft()
            try:
                fn(*args)
            except Exception:
                logger.exception("RemotePool: %r failed in the hub", fn)

    def _complete(self, future: Future, value: Any, error: Optional[BaseException]) -> None:
        if not future.done():
            try:
                if error is None:
                    future.set_result(value)
                else:
                    future.set_exception(error)
            except Exception:  # cancelled from another thread meanwhile
                pass
        # Counted as unfinished until the hub callbacks its done callbacks
        # queued have run: Reactor.defer delivers the outcome to the
        # connection from such a callback, and a stopping reactor closes the
        # connections once no task is pending.
        self._hub.loop.run_callback(self._task_done, future)

    def _task_done(self, future: Future) -> None:
        if future in self._pending:
            self._pending.discard(future)
            self._unfinished -= 1
            if self._unfinished == 0:
                self._idle.set()
                self._keep_loop_alive(0)

    def _client_thread_ended(self, client: _ClientThread, error: Optional[BaseException]) -> None:
        """In the hub: the client thread is gone; unless asked to, the pool cannot go on."""
        if not client.started.ready():
            client.started.set(error or RuntimeError("the Dask client thread ended"))
        client.stopped.set()
        if client is self._client and not self._disconnecting:
            broken = PoolBroken(f"the Dask client thread ended unexpectedly ({error!r}); "
                                f"create a new RemotePool")
            self._set_broken(broken)
            for future in list(self._pending):
                self._complete(future, None, broken)

    def _set_broken(self, error: PoolBroken) -> None:
        self._broken = error
        self._closed = True

    def task_cancelled(self, future: Future, was_running: bool) -> None:
        """Told by the future's cancel(): cancel it on the cluster, count it done."""
        if _get_ident() != self._thread_id:
            self._hub.loop.run_callback_threadsafe(self.task_cancelled, future, was_running)
            return
        if self._client is not None:
            self._client.post(self._client.cancel, future)
        self._task_done(future)

    # -- pickling by value ------------------------------------------------------------------------
    def register_by_value(self, fn: Callable[..., Any]) -> None:
        """Let cloudpickle send ``fn``'s module by value unless it is installed (stdlib, site)."""
        module_name = getattr(fn, "__module__", None)
        if not module_name or module_name in self._by_value or module_name == "__main__":
            return
        self._by_value.add(module_name)
        module = sys.modules.get(module_name)
        path = getattr(module, "__file__", None)
        if module is None or not path:
            return
        path = os.path.realpath(path)
        if path.startswith(_INSTALLED) or module_name.split(".")[0] in ("packet_gevent", "distributed",
                                                                      "dask"):
            return
        import cloudpickle
        try:
            cloudpickle.register_pickle_by_value(module)
        except ValueError:  # a module cloudpickle refuses (not in sys.modules under its name)
            pass

    # -- the PoolAPI ------------------------------------------------------------------------------
    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        """Run ``fn(*args, **kwargs)`` on the cluster; return its Future."""
        return self._submit(fn, args, kwargs or None, self.task_timeout)

    def schedule(self, fn: Callable[..., Any], args: Iterable[Any] = (),
                 kwargs: Optional[Dict[str, Any]] = None, *,
                 timeout: Optional[float] = None) -> Future:
        """``submit`` with a per-task ``timeout`` (seconds from now; default ``task_timeout``)."""
        return self._submit(fn, tuple(args), kwargs or None,
                            self.task_timeout if timeout is None else timeout)

    def _submit(self, fn: Callable[..., Any], args: tuple, kwargs: Optional[Dict[str, Any]],
                timeout: Optional[float]) -> Future:
        if self._closed:
            raise self._broken or PoolClosed(
                "cannot submit: the pool was shut down; create a new RemotePool")
        if not callable(fn):
            raise TypeError(f"{fn!r} is not callable")
        if os.getpid() != self._pid:
            self._after_fork()
        future = Future(self)
        if _get_ident() != self._thread_id:
            self._hub.loop.run_callback_threadsafe(self._count, future)
        else:
            self._count(future)
        future._start_running()  # sent: a cancel() now goes to the cluster
        self._client.post(self._client.send, _Task(future, fn, args, kwargs, timeout))
        if self._burst == 0 and _get_ident() == self._thread_id:
            self._hub.loop.run_callback(self._end_burst)
        self._burst += 1
        if self._burst >= SUBMIT_BURST and gevent.getcurrent() is not self._hub \
                and _get_ident() == self._thread_id:
            self._yield_to_hub()
        return future

    def _end_burst(self) -> None:
        self._burst = 0

    def _yield_to_hub(self) -> None:
        """One full loop turn for the hub (timers, I/O), as ForkPool's scheduler does.

        A greenlet submitting thousands of tasks would otherwise hold the hub
        for the whole loop (~10 us a submit).  ``gevent.sleep(0)`` only runs
        callbacks; an expired timer fires after the poll.
        """
        timer = self._hub.loop.timer(0.0)
        try:
            self._hub.wait(timer)
        finally:
            timer.close()

    def _count(self, future: Future) -> None:
        if future.done():
            return
        self._pending.add(future)
        self._unfinished += 1
        if self._unfinished == 1:
            self._idle.clear()
            self._keep_loop_alive(0)

    def join(self, timeout: Optional[float] = None) -> bool:
        """Wait until no task is unfinished; True if so (False after ``timeout``)."""
        return self._idle.wait(timeout)

    def _ask(self, make_coro: Callable[[Any], Any], timeout: float) -> Any:
        """Block the calling greenlet on ``make_coro(client)`` run on the client's loop."""
        if self._closed or self._client is None:
            raise self._broken or PoolClosed("the pool was shut down")
        if os.getpid() != self._pid:
            self._after_fork()
        client = self._client
        self._keep_loop_alive(+1)
        try:
            return client.call(lambda: make_coro(client.client), timeout).get()
        finally:
            self._keep_loop_alive(-1)

    def wait_for_workers(self, n: int = 1, timeout: float = 30.0) -> None:
        """Block the calling greenlet until the cluster has ``n`` workers (TimeoutError after ``timeout``)."""
        self._ask(lambda client: client.wait_for_workers(n, timeout=timeout), timeout + 1)

    def worker_pids(self, timeout: float = 10.0) -> Dict[str, int]:
        """The cluster's workers now: ``{address: pid}`` (as the scheduler knows them)."""
        return self._ask(lambda client: client.run(os.getpid, on_error="ignore"), timeout)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False,
                 timeout: Optional[float] = None) -> None:
        """Take no more tasks; with ``wait``, wait for the unfinished ones, then disconnect.

        ``cancel_futures``: cancel every unfinished task (on the cluster too).
        ``timeout`` (with wait): after that many seconds the tasks still
        unfinished fail with PoolClosed and are cancelled on the cluster.
        A local cluster is stopped once the client has closed.
        """
        if _get_ident() != self._thread_id:
            self._hub.loop.run_callback_threadsafe(self.shutdown, False,
                                                   cancel_futures=cancel_futures)
            return
        self._closed = True
        if os.getpid() != self._pid:  # a forked child that never used the pool
            return
        if cancel_futures:
            for future in list(self._pending):
                future.cancel()
        if not wait or gevent.getcurrent() is self._hub:
            gevent.spawn(self._finish_later)  # the hub cannot wait: a greenlet does
            return
        if not self._idle.wait(timeout):
            logger.warning("RemotePool.shutdown: %d tasks unfinished after %s s; failing them",
                           self._unfinished, timeout)
            self._fail_unfinished(PoolClosed(
                f"the pool was shut down (timeout={timeout} s) before this task finished"))
        self._disconnect()

    def _finish_later(self) -> None:
        self._idle.wait()
        self._disconnect()

    def _disconnect(self) -> None:
        """Close the client, end its thread, stop a local cluster; once (others wait for it)."""
        if self._disconnecting:
            self._down.wait()
            return
        self._disconnecting = True
        client = self._client
        try:
            if client is not None:
                self._keep_loop_alive(+1)
                try:
                    client.post(client.stop)
                    if not client.stopped.wait(self.connect_timeout + 5):
                        logger.warning("RemotePool: the Dask client thread did not stop")
                finally:
                    self._keep_loop_alive(-1)
            self._wake.close()
            self._wake_closed = True
            if self.cluster is not None:
                self.cluster.stop()
        finally:
            self._down.set()

    def _fail_unfinished(self, error: BaseException) -> None:
        client = self._client
        for future in list(self._pending):
            self._complete(future, None, error)
        if client is not None:
            client.post(client._fail_all, lambda what: error)

    def kill(self) -> None:
        """Stop now: unfinished tasks fail with PoolClosed (and are cancelled on the
        cluster); the client disconnects and a local cluster stops, in the background."""
        self._closed = True
        if os.getpid() != self._pid:
            return
        self._fail_unfinished(PoolClosed("the pool was killed before this task finished"))
        gevent.spawn(self._disconnect)
