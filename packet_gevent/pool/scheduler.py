"""The pool's scheduler: which task runs where and when, and what each outcome or fault means.

It owns the queue of tasks not yet sent, one record per started process
(the tasks in flight there, their time limits) and every task's outcome:
which process gets a task and when (once per loop turn, in groups, a
bounded pipeline per process; a lone task for an idle process goes at
once, and the hub then polls briefly for its reply: :data:`HUB_SPIN`), what a timeout, a cancel, a crash or a
broken initializer means for it, and when a dead process is replaced.
Everything here runs in the hub of the thread that owns the pool (calls
from other threads are handed to it).

It knows processes only through the narrow interface below
(:class:`ProcessBackend`, :class:`BackendProcess`, and the events it
receives as :class:`BackendEvents`): start a process, send it a batch of
encoded calls, tell it to skip some, read which task it runs, close or kill
it; it calls back with outcomes and with its death.  The fork backend
(:mod:`.process`, joined in :mod:`.executor`) is one implementation;
ARCHITECTURE.md, "The pool's backend interface", describes the contract.
"""
from __future__ import annotations

import collections
import itertools
import logging
import os
import threading
import time
from concurrent.futures._base import PENDING, RUNNING, InvalidStateError
from typing import Any, Callable, Deque, Dict, Iterable, List, Optional, Protocol, Tuple

import gevent
import gevent.event
import gevent.lock

from ..errors import PoolBroken, PoolClosed, SerializationError, TaskTimeout
from ..ipc.supervision import Backoff
from .futures import Future
from .tasks import OK, Encoded, Task, TaskCodec, describe_callable, rebuild_exception

__all__ = ["Scheduler", "ProcessBackend", "BackendProcess", "BackendEvents",
           "PIPELINE_SECONDS", "MAX_INFLIGHT", "MAX_REQUEUES", "SUBMIT_BURST", "HUB_SPIN"]

logger = logging.getLogger(__name__)

#: Work (at the measured seconds per task) each process keeps in flight, so
#: it never idles waiting for the master.  2 ms covers a round trip (~0.1 ms)
#: many times over while keeping what waits behind a long task small.
PIPELINE_SECONDS = 0.002

#: Most tasks in flight on one process (tiny tasks: ~1 us each would ask for 2,000).
MAX_INFLIGHT = 1024

#: A task queued on processes that died this many times fails with WorkerCrashed.
MAX_REQUEUES = 3

#: Restart delays after a process died young (within RESTART_RESET s of its
#: start, not killed by us): doubled per death from RESTART_MIN_DELAY up to
#: RESTART_MAX_DELAY, so a crash loop costs little.  Otherwise immediate
#: (a fork costs ~5 ms).
RESTART_MIN_DELAY = 0.05
RESTART_MAX_DELAY = 5.0
RESTART_RESET = 1.0


#: A greenlet that submits this many tasks within one loop turn yields to
#: the hub for one full loop turn (:meth:`Scheduler._yield_to_hub`), so the
#: hub sends them, reads replies and fires timers.  256 submits take ~0.5 ms
#: here; measured while submitting 20,000: the longest hub stall ~2 ms,
#: except when CPython's full (generation 2) garbage collection runs over
#: the caller's 20,000 live futures (~12 ms, in about a third of the runs).
SUBMIT_BURST = 256

#: After a lone task went to an idle process (the fast path of
#: :meth:`Scheduler._enqueue`), the hub polls without sleeping for up to
#: this long (an idle watcher: the loop's poll gets a zero timeout, other
#: greenlets, I/O and timers run as usual; each idle pass ends in
#: ``sched_yield``, so a process sharing the hub's CPU runs first), so a quick reply is read without
#: a sleep and wake-up of the hub's thread (~20-40 us when it crosses CPUs).
#: Bounded, once per such task; it stops as soon as no task is unfinished.
#: 0 turns it off.
HUB_SPIN = 100e-6

_yield_cpu = getattr(os, "sched_yield", lambda: None)

#: A (task ids, encoded calls) pair: one group of a batch sent to a process.
Group = Tuple[List[int], Encoded]
#: An outcome: (task id, OK or ERR, result or (exception, traceback text)).
Outcome = Tuple[int, int, Any]


# -- the backend interface ------------------------------------------------------------------

class BackendEvents(Protocol):
    """What a backend tells the scheduler, in the hub, about one of its processes."""

    def on_outcomes(self, proc: "BackendProcess", outcomes: List[Outcome],
                    seconds_per_task: float) -> None:
        """Outcomes of tasks sent to ``proc`` (any order), and its busy seconds per task."""

    def on_bad_group(self, proc: "BackendProcess", ids: List[int], why: str) -> None:
        """``proc`` could not decode the group of ``ids``: send them again one per group."""

    def on_init_failed(self, proc: "BackendProcess", text: str) -> None:
        """The initializer raised in ``proc`` (``text``: its traceback); ``proc`` exits."""

    def on_gone(self, proc: "BackendProcess") -> None:
        """``proc`` exited and every outcome it sent was delivered; nothing follows."""


class BackendProcess(Protocol):
    """One process started by a :class:`ProcessBackend`, as the scheduler sees it.

    It runs the calls it is sent in the order they arrive.  ``accepting`` is
    False once it is closing, killed or dead (send it nothing then);
    ``killed_for`` is the reason given to :meth:`kill` (None: not killed by
    the scheduler).  The exit facts (``exitcode``, ``describe_exit``,
    ``crash_error``) are meaningful once ``on_gone`` was called.
    """

    slot: int
    pid: int
    started_at: float           # time.monotonic() when it started
    accepting: bool
    killed_for: Optional[str]

    def send(self, groups: List[Group], now: bool = False) -> None:
        """Queue these calls there (may raise if the process went: its on_gone follows).

        ``now``: write them at once if nothing else waits to be written (a
        lone task for an idle process) instead of with the loop turn's others."""

    def skip(self, ids: List[int]) -> None:
        """Drop these tasks if they have not started (best effort)."""

    def running(self) -> Tuple[int, float]:
        """(id of the task running there now, 0 if none; its start, time.monotonic)."""

    def close(self) -> None:
        """Exit once the calls already sent are done."""

    def kill(self, reason: str) -> None:
        """Stop at once (the running task is lost); ``on_gone`` follows."""

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Block the calling greenlet until the process exited; True if it did."""

    @property
    def alive(self) -> bool:
        """Not exited yet."""

    @property
    def exitcode(self) -> Optional[int]:
        """Exit status (negative: killed by that signal); None while alive."""

    def describe_exit(self) -> str:
        """How it ended, for the log ("exited with code 1", "killed by SIGSEGV"...)."""

    def crash_error(self, what: str) -> BaseException:
        """The exception for a task lost with it (WorkerCrashed), ``what`` first."""


class ProcessBackend(Protocol):
    """Starts processes that run encoded calls; the scheduler's only way to run a task."""

    def start(self, slot: int, events: BackendEvents) -> BackendProcess:
        """Start a process for ``slot`` (OSError if it cannot be started now)."""


# -- tasks --------------------------------------------------------------------------------------

class _TaskFuture(Future, Task):
    """A pool task and its future in one object (see :class:`~packet_gevent.tasks.Task`)."""

    def __init__(self, owner: "Scheduler", id: int, fn: Callable[..., Any], args: tuple,
                 kwargs: Optional[Dict[str, Any]], timeout: Optional[float]) -> None:
        Future.__init__(self, owner)
        Task.__init__(self, id, fn, args, kwargs, timeout)

    holds_slot = False  # took one of max_pending's slots (released when settled)

    __repr__ = Future.__repr__


class _Started:
    """The scheduler's record of one started process: what is in flight there."""

    __slots__ = ("proc", "inflight", "sent", "retiring", "timeout_timer", "timeout_due", "gone")

    def __init__(self, proc: BackendProcess) -> None:
        self.proc = proc
        # task id -> task, in the order sent (the order the process runs them)
        self.inflight: Dict[int, _TaskFuture] = {}
        self.sent = 0                 # tasks ever sent (max_tasks_per_child)
        self.retiring = False         # sent its last task: it exits after it by itself
        self.timeout_timer: Any = None
        self.timeout_due = 0.0
        self.gone = False

    def running(self) -> Tuple[Optional[_TaskFuture], float]:
        tid, started = self.proc.running()
        return self.inflight.get(tid), started


# -- the scheduler --------------------------------------------------------------------------------

class Scheduler:
    """Queue, processes and task outcomes of one pool (see the module docstring).

    ``size`` processes are started from ``backend`` on the first submit and
    replaced when they die; ``max_tasks``: a process is closed after that
    many tasks; ``max_pending``: a greenlet's submit waits while that many
    tasks submitted by greenlets are unfinished.
    """

    def __init__(self, backend: ProcessBackend, size: int, *, codec: TaskCodec,
                 max_tasks: Optional[int] = None, max_pending: Optional[int] = None,
                 initializer_name: str = "") -> None:
        self._backend = backend
        self.size = size
        self._codec = codec
        self._max_tasks = max_tasks
        self._initializer_name = initializer_name
        self._pending_sem = gevent.lock.Semaphore(max_pending) if max_pending else None
        self._thread_id = threading.get_ident()
        self._hub = gevent.get_hub()
        self._loop = self._hub.loop
        self._procs: List[Optional[_Started]] = [None] * size
        self._started = False
        self._restart_timers: Dict[int, Any] = {}
        self._backoffs = [Backoff(RESTART_MIN_DELAY, RESTART_MAX_DELAY, RESTART_RESET)
                          for _ in range(size)]
        self._queue: Deque[_TaskFuture] = collections.deque()
        self._ids = itertools.count(1)
        self._unfinished = 0
        self._idle = gevent.event.Event()
        self._idle.set()
        self._flush_scheduled = False
        self._burst = 0
        self._seconds_per_task: Optional[float] = None
        self.closed = False
        self.broken: Optional[PoolBroken] = None
        self._refusal = "cannot submit: the pool was shut down; create a new pool"
        self._stats: collections.Counter = collections.Counter()
        self._spinner: Any = None     # the idle watcher of HUB_SPIN (made on first use)
        self._spin_until = 0.0

    # -- what the pool reads ------------------------------------------------------------------
    @property
    def unfinished(self) -> int:
        """Tasks submitted and not settled yet."""
        return self._unfinished

    @property
    def queued(self) -> int:
        """Tasks not sent to a process yet."""
        return len(self._queue)

    def pids(self) -> List[int]:
        """Pids of the live processes."""
        return [r.proc.pid for r in self._procs if r is not None and not r.gone and r.proc.alive]

    def statistics(self) -> Dict[str, Any]:
        stats = dict(self._stats)
        stats.update(size=self.size, queued=len(self._queue), unfinished=self._unfinished,
                     in_flight=sum(len(r.inflight) for r in self._procs if r is not None),
                     processes=self.pids(), seconds_per_task=self._seconds_per_task)
        return stats

    def in_pool_thread(self) -> bool:
        return threading.get_ident() == self._thread_id

    def call_in_pool_thread(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` in the pool's hub, soon (from any thread)."""
        self._loop.run_callback_threadsafe(fn, *args)

    def wait_idle(self, timeout: Optional[float] = None) -> bool:
        """Block the calling greenlet until no task is unfinished; True if so."""
        return self._idle.wait(timeout)

    # -- submitting ------------------------------------------------------------------------------
    def submit(self, fn: Callable[..., Any], args: tuple, kwargs: Optional[Dict[str, Any]],
               timeout: Optional[float]) -> _TaskFuture:
        """Queue ``fn(*args, **kwargs)``; its future.  From any thread."""
        if self.closed:
            raise self.broken or PoolClosed(self._refusal)
        if not callable(fn):
            raise TypeError(f"{fn!r} is not callable")
        future = _TaskFuture(self, next(self._ids), fn, args, kwargs, timeout)
        if threading.get_ident() != self._thread_id:
            self._loop.run_callback_threadsafe(self._enqueue, future)
            return future
        if self._pending_sem is not None and gevent.getcurrent() is not self._hub:
            self._pending_sem.acquire()
            if self.closed:
                self._pending_sem.release()
                raise self.broken or PoolClosed("cannot submit: the pool was shut down while "
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

    # -- queueing (in the hub) -------------------------------------------------------------
    def _enqueue(self, task: _TaskFuture) -> None:
        if self.closed:  # from another thread, after shutdown
            task.set_exception(self.broken or PoolClosed("the pool was shut down"))
            return
        self._queue.append(task)
        self._unfinished += 1
        self._stats["submitted"] += 1
        if self._unfinished == 1:
            self._idle.clear()
        if not self._started:
            self._started = True
            for slot in range(self.size):
                self._spawn(slot)
        if not self._flush_scheduled:
            if len(self._queue) == 1:
                rec = self._idle_process()
                if rec is not None:  # the fast path: a lone task, an idle process
                    self._burst = 0
                    self._send(rec, 1, now=True)
                    if HUB_SPIN:
                        self._spin_hub()
                    return
            self._flush_scheduled = True
            self._loop.run_callback(self._flush)

    def _spin_hub(self) -> None:
        """Keep the hub polling for HUB_SPIN seconds from now (see HUB_SPIN)."""
        self._spin_until = time.perf_counter() + HUB_SPIN
        spinner = self._spinner
        if spinner is None:
            spinner = self._spinner = self._loop.idle(ref=False)
        if not spinner.active:
            spinner.start(self._spin_check)

    def _spin_check(self) -> None:
        if not self._unfinished or time.perf_counter() >= self._spin_until:
            self._stop_spinning()
        else:  # the process may share this CPU: let it run now
            _yield_cpu()

    def _stop_spinning(self) -> None:
        if self._spinner is not None and self._spinner.active:
            self._spinner.stop()

    def _idle_process(self) -> Optional[_Started]:
        """A process with nothing in flight that takes a task now (None: none is idle)."""
        for rec in self._procs:
            if (rec is not None and not rec.inflight and not rec.retiring and rec.proc.accepting
                    and (self._max_tasks is None or rec.sent < self._max_tasks)):
                return rec
        return None

    def _spawn(self, slot: int) -> None:
        self._restart_timers.pop(slot, None)
        if self.closed and not self._unfinished or self.broken is not None:
            return
        try:
            proc = self._backend.start(slot, self)
        except OSError as exc:  # fork failed (EAGAIN, ENOMEM): try again later
            logger.error("cannot start pool process %d: %s; retrying", slot, exc)
            self._restart_later(slot, young=True)
            return
        self._procs[slot] = _Started(proc)
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.run_callback(self._flush)

    # -- dispatching (in the hub) ---------------------------------------------------------------
    def _flush(self) -> None:
        self._flush_scheduled = False
        self._burst = 0
        self._dispatch()

    def _depth(self) -> int:
        per_task = self._seconds_per_task
        if per_task is None:
            return 1
        if per_task <= PIPELINE_SECONDS / MAX_INFLIGHT:
            return MAX_INFLIGHT
        return max(1, min(MAX_INFLIGHT, int(PIPELINE_SECONDS / per_task)))

    def _dispatch(self) -> None:
        queue = self._queue
        if not queue:
            return
        depth = self._depth()
        ready = [r for r in self._procs
                 if r is not None and r.proc.accepting and not r.retiring
                 and len(r.inflight) < depth]
        if not ready:
            return
        ready.sort(key=lambda r: len(r.inflight))
        for index, rec in enumerate(ready):
            if not queue:
                break
            room = depth - len(rec.inflight)
            if self._max_tasks is not None:
                room = min(room, self._max_tasks - rec.sent)
            share = -(-len(queue) // (len(ready) - index))
            self._send(rec, min(room, share))

    def _send(self, rec: _Started, count: int, now: bool = False) -> None:
        queue = self._queue
        tasks: List[_TaskFuture] = []
        alone: List[_TaskFuture] = []
        while queue and len(tasks) + len(alone) < count:
            task = queue.popleft()
            if not task._start_running():
                continue  # cancelled while queued: already settled
            (alone if task.alone else tasks).append(task)
        groups: List[Tuple[List[_TaskFuture], Any]] = self._encode(tasks) if tasks else []
        for task in alone:
            groups += self._encode([task])
        if not groups:
            return
        inflight = rec.inflight
        timeout = None
        for group, _ in groups:
            for task in group:
                inflight[task.id] = task
                if task.timeout is not None and (timeout is None or task.timeout < timeout):
                    timeout = task.timeout
        rec.sent += sum(len(group) for group, _ in groups)
        try:
            rec.proc.send([([task.id for task in group], encoded) for group, encoded in groups],
                          now)
        except Exception:  # closed under us: its death settles these tasks
            logger.debug("pool process %d: send failed", rec.proc.pid, exc_info=True)
        if timeout is not None:
            self._arm_timeout(rec, time.monotonic() + timeout)

    def _encode(self, tasks: List[_TaskFuture]) -> List[Tuple[List[_TaskFuture], Any]]:
        """[(tasks, their encoded calls)]; a task that cannot be pickled fails alone."""
        try:
            return [(tasks, self._codec.encode_calls([(t.fn, t.args, t.kwargs) for t in tasks]))]
        except SerializationError as exc:
            if len(tasks) > 1:
                return [group for task in tasks for group in self._encode([task])]
            self._fail(tasks[0], exc)
            self._settled(1, tasks)
            return []

    def _holder(self, task: _TaskFuture) -> Optional[_Started]:
        """The record of the process the task was sent to (None: not in flight)."""
        for rec in self._procs:
            if rec is not None and task.id in rec.inflight:
                return rec
        return None

    def _record(self, proc: BackendProcess) -> Optional[_Started]:
        rec = self._procs[proc.slot]
        return rec if rec is not None and rec.proc is proc else None

    # -- events from the backend (in the hub) -------------------------------------------------------
    def on_outcomes(self, proc: BackendProcess, outcomes: List[Outcome],
                    seconds_per_task: float) -> None:
        rec = self._procs[proc.slot]  # _record(), inlined: once per batch of outcomes
        if rec is None or rec.proc is not proc:
            return
        previous = self._seconds_per_task
        if previous is None or seconds_per_task < previous:
            self._seconds_per_task = seconds_per_task
        else:  # slower: move halfway, so a long task shrinks the pipeline quickly
            self._seconds_per_task = (previous + seconds_per_task) / 2
        inflight = rec.inflight
        settled = 0
        slots: Optional[List[_TaskFuture]] = [] if self._pending_sem is not None else None
        for tid, status, value in outcomes:
            task = inflight.pop(tid, None)
            if task is None or task._state != RUNNING:
                continue  # cancelled or timed out meanwhile: already settled
            task.fn = task.args = task.kwargs = None  # type: ignore[assignment]  # result only
            try:
                if status == OK:
                    task.set_result(value)
                else:
                    task.set_exception(rebuild_exception(value))
                    self._stats["failed"] += 1
            except InvalidStateError:  # cancelled from another thread: that settles it
                continue
            settled += 1
            if slots is not None:
                slots.append(task)
        self._stats["completed"] += settled
        if settled:
            self._settled(settled, slots or ())
        if self._max_tasks is not None and rec.sent >= self._max_tasks:
            rec.retiring = True  # it exits after its last task; on_gone replaces it
        self._dispatch()

    def on_bad_group(self, proc: BackendProcess, ids: List[int], why: str) -> None:
        rec = self._record(proc)
        if rec is None:
            return
        logger.debug("pool process %d could not decode a group of %d calls (%s); "
                     "sending them one by one", proc.pid, len(ids), why)
        requeue = []
        for tid in ids:
            task = rec.inflight.pop(tid, None)
            if task is not None and task._state == RUNNING:
                task._requeue()
                task.alone = True
                requeue.append(task)
        rec.sent -= len(ids)
        self._queue.extendleft(reversed(requeue))
        self._dispatch()

    def on_init_failed(self, proc: BackendProcess, text: str) -> None:
        if self.broken is not None:
            return
        name = self._initializer_name
        self.broken = PoolBroken(
            f"the pool's initializer {name} raised in a new process, so the pool cannot run "
            f"tasks; fix the initializer and create a new pool. Its traceback:\n{text}",
            remote_traceback=text)
        logger.error("pool broken: initializer %s raised:\n%s", name, text)
        self.closed = True
        self.abort(self.broken)

    def on_gone(self, proc: BackendProcess) -> None:
        """The process exited and its outcomes are in: settle or requeue what it held."""
        rec = self._record(proc)
        if rec is None:
            return
        self._procs[proc.slot] = None
        rec.gone = True
        if rec.timeout_timer is not None:
            rec.timeout_timer.close()
            rec.timeout_timer = None
        running, _ = rec.running()
        crashed = proc.killed_for is None and (proc.exitcode != 0 or bool(rec.inflight))
        if crashed:
            self._stats["crashed"] += 1
            logger.warning("pool process %d %s", proc.pid, proc.describe_exit())
        requeue, settled = [], []
        for task in rec.inflight.values():
            if task._state != RUNNING:
                continue
            if task is running and crashed:
                self._fail(task, proc.crash_error(
                    f"the pool process died while running {describe_callable(task.fn)}"))
                settled.append(task)
                continue
            task.tries += 1
            if task.tries > MAX_REQUEUES:
                self._fail(task, proc.crash_error(
                    f"{task.tries} pool processes died while {describe_callable(task.fn)} was "
                    f"queued on them; the last one"))
                settled.append(task)
            else:
                task._requeue()
                requeue.append(task)
        rec.inflight.clear()
        self._queue.extendleft(reversed(requeue))
        if settled:
            self._settled(len(settled), settled)
        young = crashed and time.monotonic() - proc.started_at < RESTART_RESET
        if self.broken is None and not (self.closed and not self._unfinished):
            self._stats["restarts"] += 1
            self._restart_later(proc.slot, young)
        self._dispatch()

    # -- faults (in the hub) ------------------------------------------------------------------------
    def _fail(self, task: _TaskFuture, exc: BaseException) -> None:
        task.fn = task.args = task.kwargs = None  # type: ignore[assignment]  # settled
        try:
            task.set_exception(exc)
        except InvalidStateError:
            pass
        self._stats["failed"] += 1

    def task_cancelled(self, future: _TaskFuture, was_running: bool) -> None:
        """``future.cancel()`` succeeded (the future's owner hook; from any thread)."""
        if not self.in_pool_thread():
            self._loop.run_callback_threadsafe(self.task_cancelled, future, was_running)
            return
        task = future
        task.fn = task.args = task.kwargs = None  # type: ignore[assignment]  # settled
        rec = self._holder(task) if was_running else None
        if rec is not None:
            running, _ = rec.running()
            del rec.inflight[task.id]
            if running is task:
                self._stats["cancelled_running"] += 1
                rec.proc.kill(f"task {task.id} was cancelled while it ran")
            else:
                rec.proc.skip([task.id])
        self._stats["cancelled"] += 1
        self._settled(1, (task,))
        self._schedule_flush()

    def _arm_timeout(self, rec: _Started, due: float) -> None:
        if rec.timeout_timer is not None:
            if rec.timeout_due <= due:
                return
            rec.timeout_timer.close()
        rec.timeout_due = due
        rec.timeout_timer = self._loop.timer(max(0.0, due - time.monotonic()))
        rec.timeout_timer.start(self._check_timeouts, rec)

    def _check_timeouts(self, rec: _Started) -> None:
        rec.timeout_timer.close()
        rec.timeout_timer = None
        if rec.gone or rec.proc.killed_for is not None:
            return
        running, started = rec.running()
        now = time.monotonic()
        due = None
        if running is not None and running.timeout is not None:
            if now >= started + running.timeout:
                self._time_out(rec, running)
                return
            due = started + running.timeout
        shortest = min((t.timeout for t in rec.inflight.values()
                        if t.timeout is not None and t is not running), default=None)
        if shortest is not None:
            due = now + shortest if due is None else min(due, now + shortest)
        if due is not None:
            self._arm_timeout(rec, due)

    def _time_out(self, rec: _Started, task: _TaskFuture) -> None:
        del rec.inflight[task.id]
        self._stats["timed_out"] += 1
        self._fail(task, TaskTimeout(
            f"task {describe_callable(task.fn)} ran longer than its timeout of {task.timeout} s; "
            f"its pool process (pid {rec.proc.pid}) was killed and is being replaced"))
        self._settled(1, (task,))
        rec.proc.kill(f"task {task.id} timed out")

    def _restart_later(self, slot: int, young: bool) -> None:
        if slot in self._restart_timers:
            return
        delay = self._backoffs[slot].delay(0.0 if young else RESTART_RESET)
        if not delay:
            self._spawn(slot)
            return
        timer = self._loop.timer(delay)
        self._restart_timers[slot] = timer
        timer.start(self._spawn, slot)

    def _settled(self, count: int, tasks: Iterable[_TaskFuture] = ()) -> None:
        """``count`` tasks got their outcome; ``tasks`` (those among them that may hold a
        ``max_pending`` slot) give their slot back."""
        self._unfinished -= count
        if self._pending_sem is not None:
            for task in tasks:
                if task.holds_slot:
                    task.holds_slot = False
                    self._pending_sem.release()
        if self._unfinished == 0:
            self._idle.set()
            self._stop_spinning()
            if self.closed:
                self.close_processes()

    # -- ending (in the hub) ------------------------------------------------------------------------
    def refuse(self, why: str) -> None:
        """Take no more tasks (submit raises PoolClosed saying ``why``); the rest run on."""
        self._refusal = why
        self.closed = True

    def close(self, cancel_queued: bool = False) -> None:
        """Take no more tasks; processes close once the unfinished ones are done."""
        self.closed = True
        if cancel_queued:
            self._dispatch()  # what the processes have room for now runs, as if the hub had
            self.cancel_queued()
        if self._unfinished == 0:
            self.close_processes()

    def cancel_queued(self) -> None:
        """Cancel the tasks not sent to a process yet."""
        for task in list(self._queue):
            if task._state == PENDING:
                task.cancel()
        self._queue.clear()

    def abort(self, exc: BaseException) -> None:
        """Fail every unfinished task with ``exc`` and kill every process."""
        for task in list(self._queue):
            if task._state == PENDING:
                self._fail(task, exc)
                self._settled(1, (task,))
        self._queue.clear()
        for rec in self._procs:
            if rec is None:
                continue
            for task in list(rec.inflight.values()):
                if task._state == RUNNING:
                    self._fail(task, exc)
                    self._settled(1, (task,))
            rec.inflight.clear()
            rec.proc.kill(str(exc))
        for timer in self._restart_timers.values():
            timer.close()
        self._restart_timers.clear()

    def close_processes(self) -> None:
        if self._spinner is not None:
            self._spinner.close()
            self._spinner = None
        for rec in self._procs:
            if rec is not None and rec.proc.accepting and not rec.retiring:
                rec.proc.close()
        for timer in self._restart_timers.values():
            timer.close()
        self._restart_timers.clear()

    def wait_exited(self, grace: float) -> None:
        """Block the calling greenlet until every process exited; kill those still
        alive ``grace`` seconds after."""
        for rec in list(self._procs):
            if rec is None:
                continue
            proc = rec.proc
            if not proc.wait(grace):
                logger.warning("pool process %d did not exit %.1f s after shutdown; killing it",
                               proc.pid, grace)
                proc.kill("it did not exit after shutdown")
                proc.wait()
