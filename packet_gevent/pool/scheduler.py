"""The fork pool's scheduler: the hub side of ForkPool.

It owns the queue of tasks not yet sent, the pool processes
(:class:`~packet_gevent.pool_process.PoolProcess`) and what happens to each
task: which process gets it and when (once per loop turn, in groups, a
bounded pipeline per process), its outcome, and what a timeout, a cancel,
a crash or a broken initializer means for it.  Everything here runs in the
hub of the thread that owns the pool; :class:`~packet_gevent.ForkPool` adds
the public API on top (:mod:`.pool`).
"""
from __future__ import annotations

import collections
import itertools
import logging
import threading
import time
from concurrent.futures._base import PENDING, RUNNING, InvalidStateError
from typing import Any, Callable, Deque, Dict, Iterable, List, Optional, Tuple

import gevent
import gevent.event
import gevent.lock

from ..errors import PoolBroken, PoolClosed, SerializationError, TaskTimeout
from .futures import Future
from .process import Markers, PoolProcess
from .tasks import OK, Task, TaskCodec, describe_callable, rebuild_exception

__all__ = ["PoolScheduler", "PIPELINE_SECONDS", "MAX_INFLIGHT", "MAX_REQUEUES"]

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


class _TaskFuture(Future, Task):
    """A pool task and its future in one object (see :class:`~packet_gevent.tasks.Task`)."""

    def __init__(self, owner: "PoolScheduler", id: int, fn: Callable[..., Any], args: tuple,
                 kwargs: Optional[Dict[str, Any]], timeout: Optional[float]) -> None:
        Future.__init__(self, owner)
        Task.__init__(self, id, fn, args, kwargs, timeout)

    holds_slot = False  # took one of max_pending's slots (released when settled)

    __repr__ = Future.__repr__


class PoolScheduler:
    """Queue, processes and task outcomes of one pool (see the module docstring)."""

    def __init__(self, size: int, *, initializer: Optional[Callable[..., Any]], initargs: tuple,
                 max_tasks: Optional[int], max_pending: Optional[int], serializer: str) -> None:
        self._size = size
        self._initializer = initializer
        self._initargs = tuple(initargs)
        self._max_tasks = max_tasks
        self._codec = TaskCodec(serializer)
        self._pending_sem = gevent.lock.Semaphore(max_pending) if max_pending else None
        self._thread_id = threading.get_ident()
        self._hub = gevent.get_hub()
        self._loop = self._hub.loop
        self._procs: List[Optional[PoolProcess]] = [None] * size
        self._markers: Optional[Markers] = None
        self._restart_timers: Dict[int, Any] = {}
        self._failures = [0] * size
        self._queue: Deque[Task] = collections.deque()
        self._ids = itertools.count(1)
        self._unfinished = 0
        self._idle = gevent.event.Event()
        self._idle.set()
        self._flush_scheduled = False
        self._burst = 0
        self._seconds_per_task: Optional[float] = None
        self._closed = False
        self._broken: Optional[PoolBroken] = None
        self._stats: collections.Counter = collections.Counter()

    # -- queueing (in the hub) -------------------------------------------------------------
    def _enqueue(self, task: "_TaskFuture") -> None:
        if self._closed:  # from another thread, after shutdown
            task.set_exception(self._broken or PoolClosed("the pool was shut down"))
            return
        self._queue.append(task)
        self._unfinished += 1
        self._stats["submitted"] += 1
        if self._unfinished == 1:
            self._idle.clear()
        if self._markers is None:
            self._start()
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.run_callback(self._flush)

    def _start(self) -> None:
        self._markers = Markers(self._size)
        for slot in range(self._size):
            self._spawn(slot)

    def _spawn(self, slot: int) -> None:
        self._restart_timers.pop(slot, None)
        if self._closed and not self._unfinished or self._broken is not None:
            return
        try:
            proc = PoolProcess(self, slot, self._markers, self._codec,  # type: ignore[arg-type]
                               initializer=self._initializer, initargs=self._initargs,
                               max_tasks=self._max_tasks)
        except OSError as exc:  # fork failed (EAGAIN, ENOMEM): try again later
            logger.error("cannot start pool process %d: %s; retrying", slot, exc)
            self._restart_later(slot, young=True)
            return
        self._procs[slot] = proc
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.run_callback(self._flush)

    def _in_pool_thread(self) -> bool:
        return threading.get_ident() == self._thread_id

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
        ready = [p for p in self._procs if p is not None and p.accepting and len(p.inflight) < depth]
        if not ready:
            return
        ready.sort(key=lambda p: len(p.inflight))
        for index, proc in enumerate(ready):
            if not queue:
                break
            room = depth - len(proc.inflight)
            if self._max_tasks is not None:
                room = min(room, self._max_tasks - proc.sent)
            share = -(-len(queue) // (len(ready) - index))
            self._send(proc, min(room, share))

    def _send(self, proc: PoolProcess, count: int) -> None:
        queue = self._queue
        tasks: List[Task] = []
        alone: List[Task] = []
        while queue and len(tasks) + len(alone) < count:
            task = queue.popleft()
            if not task._start_running():
                continue  # cancelled while queued: already settled
            (alone if task.alone else tasks).append(task)
        groups: List[Tuple[List[Task], Any]] = self._encode(tasks) if tasks else []
        for task in alone:
            groups += self._encode([task])
        if not groups:
            return
        inflight = proc.inflight
        timeout = None
        for group, _ in groups:
            for task in group:
                task.where = proc
                inflight[task.id] = task
                if task.timeout is not None and (timeout is None or task.timeout < timeout):
                    timeout = task.timeout
        proc.sent += sum(len(group) for group, _ in groups)
        try:
            proc.send([([task.id for task in group], encoded) for group, encoded in groups])
        except Exception:  # closed under us: its death settles these tasks
            logger.debug("pool process %d: send failed", proc.pid, exc_info=True)
        if timeout is not None:
            self._arm_timeout(proc, time.monotonic() + timeout)

    def _encode(self, tasks: List[Task]) -> List[Tuple[List[Task], Any]]:
        """[(tasks, their encoded calls)]; a task that cannot be pickled fails alone."""
        try:
            return [(tasks, self._codec.encode_calls([(t.fn, t.args, t.kwargs) for t in tasks]))]
        except SerializationError as exc:
            if len(tasks) > 1:
                return [group for task in tasks for group in self._encode([task])]
            self._fail(tasks[0], exc)
            self._settled(1, tasks)
            return []

    # -- outcomes (in the hub) ---------------------------------------------------------------------
    def _on_outcomes(self, proc: PoolProcess, outcomes: List[Tuple[int, int, Any]],
                     seconds_per_task: float) -> None:
        previous = self._seconds_per_task
        if previous is None or seconds_per_task < previous:
            self._seconds_per_task = seconds_per_task
        else:  # slower: move halfway, so a long task shrinks the pipeline quickly
            self._seconds_per_task = (previous + seconds_per_task) / 2
        inflight = proc.inflight
        settled = 0
        slots = [] if self._pending_sem is not None else None
        for tid, status, value in outcomes:
            task = inflight.pop(tid, None)
            if task is None or task._state != RUNNING:
                continue  # cancelled or timed out meanwhile: already settled
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
        if proc.accepting and self._max_tasks is not None and proc.sent >= self._max_tasks:
            proc.accepting = False  # it exits after its last task; _on_gone replaces it
        self._dispatch()

    def _on_bad_group(self, proc: PoolProcess, ids: List[int], why: str) -> None:
        logger.debug("pool process %d could not decode a group of %d calls (%s); "
                     "sending them one by one", proc.pid, len(ids), why)
        requeue = []
        for tid in ids:
            task = proc.inflight.pop(tid, None)
            if task is not None and task._state == RUNNING:
                task._requeue()
                task.alone = True
                requeue.append(task)
        proc.sent -= len(ids)
        self._queue.extendleft(reversed(requeue))
        self._dispatch()

    def _on_init_failed(self, proc: PoolProcess, text: str) -> None:
        if self._broken is not None:
            return
        name = describe_callable(self._initializer)
        self._broken = PoolBroken(
            f"the pool's initializer {name} raised in a new process, so the pool cannot run "
            f"tasks; fix the initializer and create a new pool. Its traceback:\n{text}",
            remote_traceback=text)
        logger.error("ForkPool broken: initializer %s raised:\n%s", name, text)
        self._closed = True
        self._abort(self._broken)

    # -- faults (in the hub) ------------------------------------------------------------------------
    def _fail(self, task: Task, exc: BaseException) -> None:
        try:
            task.set_exception(exc)
        except InvalidStateError:
            pass
        self._stats["failed"] += 1

    def task_cancelled(self, future: Future, was_running: bool) -> None:
        if not self._in_pool_thread():
            self._loop.run_callback_threadsafe(self.task_cancelled, future, was_running)
            return
        task = future
        proc = task.where
        if was_running and proc is not None and task.id in proc.inflight:
            running, _ = proc.running()
            del proc.inflight[task.id]
            if running is task:
                self._stats["cancelled_running"] += 1
                proc.kill(f"task {task.id} was cancelled while it ran")
            else:
                proc.skip([task.id])
        self._stats["cancelled"] += 1
        self._settled(1, (task,))
        self._schedule_flush()

    def _arm_timeout(self, proc: PoolProcess, due: float) -> None:
        if proc.timeout_timer is not None:
            if proc.timeout_due <= due:
                return
            proc.timeout_timer.close()
        proc.timeout_due = due
        proc.timeout_timer = self._loop.timer(max(0.0, due - time.monotonic()))
        proc.timeout_timer.start(self._check_timeouts, proc)

    def _check_timeouts(self, proc: PoolProcess) -> None:
        proc.timeout_timer.close()
        proc.timeout_timer = None
        if proc.gone or proc.killed_for is not None:
            return
        running, started = proc.running()
        now = time.monotonic()
        due = None
        if running is not None and running.timeout is not None:
            if now >= started + running.timeout:
                self._time_out(proc, running)
                return
            due = started + running.timeout
        shortest = min((t.timeout for t in proc.inflight.values()
                        if t.timeout is not None and t is not running), default=None)
        if shortest is not None:
            due = now + shortest if due is None else min(due, now + shortest)
        if due is not None:
            self._arm_timeout(proc, due)

    def _time_out(self, proc: PoolProcess, task: Task) -> None:
        del proc.inflight[task.id]
        self._stats["timed_out"] += 1
        self._fail(task, TaskTimeout(
            f"task {describe_callable(task.fn)} ran longer than its timeout of {task.timeout} s; "
            f"its pool process (pid {proc.pid}) was killed and is being replaced"))
        self._settled(1, (task,))
        proc.kill(f"task {task.id} timed out")

    def _on_gone(self, proc: PoolProcess) -> None:
        """The process exited and its channel is drained: settle or requeue what it held."""
        if self._procs[proc.slot] is proc:
            self._procs[proc.slot] = None
        running, _ = proc.running()
        crashed = proc.killed_for is None and (proc.child.exitcode != 0 or proc.inflight)
        if crashed:
            self._stats["crashed"] += 1
            logger.warning("pool process %d %s", proc.pid, proc.child.describe_exit())
        requeue, settled = [], []
        for task in proc.inflight.values():
            if task._state != RUNNING:
                continue
            if task is running and crashed:
                self._fail(task, proc.child.crash_error(
                    f"the pool process died while running {describe_callable(task.fn)}"))
                settled.append(task)
                continue
            task.tries += 1
            if task.tries > MAX_REQUEUES:
                self._fail(task, proc.child.crash_error(
                    f"{task.tries} pool processes died while {describe_callable(task.fn)} was "
                    f"queued on them; the last one"))
                settled.append(task)
            else:
                task._requeue()
                requeue.append(task)
        proc.inflight.clear()
        self._queue.extendleft(reversed(requeue))
        if settled:
            self._settled(len(settled), settled)
        young = crashed and time.monotonic() - proc.started_at < RESTART_RESET
        if self._broken is None and not (self._closed and not self._unfinished):
            self._stats["restarts"] += 1
            self._restart_later(proc.slot, young)
        self._dispatch()

    def _restart_later(self, slot: int, young: bool) -> None:
        if slot in self._restart_timers:
            return
        if not young:
            self._failures[slot] = 0
            self._spawn(slot)
            return
        delay = min(RESTART_MAX_DELAY, RESTART_MIN_DELAY * 2 ** self._failures[slot])
        self._failures[slot] += 1
        timer = self._loop.timer(delay)
        self._restart_timers[slot] = timer
        timer.start(self._spawn, slot)

    def _settled(self, count: int, tasks: Iterable[Task] = ()) -> None:
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
            if self._closed:
                self._close_processes()

    def _abort(self, exc: BaseException) -> None:
        """Fail every unfinished task with ``exc`` and kill every process."""
        for task in list(self._queue):
            if task._state == PENDING:
                self._fail(task, exc)
                self._settled(1, (task,))
        self._queue.clear()
        for proc in self._procs:
            if proc is None:
                continue
            for task in list(proc.inflight.values()):
                if task._state == RUNNING:
                    self._fail(task, exc)
                    self._settled(1, (task,))
            proc.inflight.clear()
            proc.kill(str(exc))
        for timer in self._restart_timers.values():
            timer.close()
        self._restart_timers.clear()

    def _close_processes(self) -> None:
        for proc in self._procs:
            if proc is not None and proc.accepting:
                proc.close()
        for timer in self._restart_timers.values():
            timer.close()
        self._restart_timers.clear()
