"""One fork-pool process, both sides: the master's handle on it and the child's task loop.

Started with :func:`~packet_gevent.ipc.process.spawn_child` and spoken to over a
:class:`~packet_gevent.ipc.channel.Channel` (master, in the hub) /
:class:`~packet_gevent.ipc.blocking.BlockingChannel` (child, no hub): one
mechanism for workers and pool alike.  What the scheduler decides (which
task goes where, what a death means for each task) lives in :mod:`.scheduler`;
this module only moves task groups and outcomes and tells the scheduler what
happened: :class:`PoolProcess` is the fork implementation of the scheduler's
:class:`~packet_gevent.pool.scheduler.BackendProcess`.

Messages (tuples; the payloads are :class:`~packet_gevent.pool.tasks.TaskCodec`
encodings, decoded by the receiver itself so a bad object fails one task,
never the channel):

* master -> child: ``(RUN, [(task ids, encoded calls), ...])``, ``(SKIP, ids)``
  (cancelled before they started; the child drops them);
* child -> master: ``(DONE, encoded outcomes, busy seconds)``,
  ``(BAD_GROUP, ids, why)`` (send these again one per group),
  ``(INIT_FAILED, traceback text)`` (then it exits with code 3).

The child runs its queue in arrival order.  Outcomes are batched: they are
sent when the child has nothing left to run, or when the oldest unsent one
is :data:`FLUSH_INTERVAL` old, checked between tasks.  At the same moments
the child reads new input without blocking (new tasks, skips).  With
nothing left to run after a lone task it polls for new input for up to
:data:`IDLE_SPIN` before it blocks, yielding the CPU between polls.

Which task is *running*: before each task the child writes its id and
start time (``time.monotonic``, a system-wide clock) into its slot of a
shared anonymous mmap (16 bytes, no syscall).  The master reads it when a
timeout is due, on ``cancel()`` and when the process dies: the task named
there whose outcome has not arrived is the running one; every other task
in flight there was only queued.

SIGINT is ignored in the child (the master decides); SIGTERM makes it finish
the tasks it holds, send their outcomes and exit 0.
"""
from __future__ import annotations

import collections
import gc
import logging
import mmap
import os
import pickle
import select
import signal
import struct
import time
from typing import Any, Callable, Deque, List, Optional, Set, Tuple

from ..ipc.blocking import BlockingChannel
from ..ipc.channel import Channel
from ..ipc.pickling import OOB_THRESHOLD
from ..ipc.process import ChildProcess, sigterm_handler_ready, spawn_child
from ..ipc.supervision import EXIT_INIT_FAILED, INIT_FAILED, ChildLink, init_failed_message
from .tasks import ERR, Encoded, GroupDecodeError, TaskCodec, run_call

__all__ = ["PoolProcess", "Markers", "RUN", "SKIP", "DONE", "BAD_GROUP", "INIT_FAILED",
           "EXIT_INIT_FAILED", "FLUSH_INTERVAL", "IDLE_SPIN"]  # INIT_FAILED, EXIT_INIT_FAILED: ipc.supervision

logger = logging.getLogger(__name__)

RUN, SKIP = "run", "skip"
DONE, BAD_GROUP = "done", "bad_group"

#: The child sends its outcomes and looks for new input at least this often
#: while it works through a queue.  1 ms: tiny tasks still travel in batches
#: of hundreds (a 256-outcome pickle costs ~12 us), long tasks report at once,
#: and a crash can lose at most ~1 ms of finished-but-unsent outcomes (those
#: tasks run again elsewhere).
FLUSH_INTERVAL = 0.001

#: After the outcome of a lone task (one that came alone while the child was
#: idle) is sent and nothing is left to run, the child polls its channel
#: (``poll`` with a zero timeout, then ``sched_yield``) for up to this long
#: before it blocks in ``recv``: a caller that submits its next task right
#: after a result (a sequential ``apply``) finds the child awake and skips a
#: sleep and wake-up (~20-40 us when it crosses CPUs).  Bounded, once per
#: lone task: an idle pool burns no CPU, a batch none either (spinning after
#: every batch cost ~10-20% of tiny-task throughput).  The yield hands the
#: CPU to the master when both share one.  0 turns the spin off.
IDLE_SPIN = 100e-6

_SLOT = struct.Struct("=qd")  # running task id, its start (time.monotonic)

#: Pool processes run under SCHED_BATCH (Linux): the same CPU share, but they
#: do not preempt on wake-up, so the master's hub wakes promptly while they
#: compute.  Measured, 2 busy processes on 2 cores: hub timer lateness p99
#: 1.1-3.5 ms with it against 1.1-6 ms without (the idle floor is 1.1 ms).
BATCH_SCHEDULING = True

#: True in a pool process (set by its main function): a pool inherited
#: through the fork must not be used there.
in_pool_process = False


def wire(encoded: Encoded) -> Encoded:
    """``encoded`` ready for the channel: big ``bytes`` wrapped as PickleBuffers.

    The task codec has pickled the calls or outcomes already; the channel
    only pickles this envelope around them.  It sends every protocol-5
    buffer out of band at any depth, but finds big ``bytes`` only near the
    top of a message; ours sit deeper, so they are wrapped, the codec's
    pickle itself too when it is big.  The receiver gets each one back as
    the ``bytes`` frame itself.
    """
    data, bigs, buffers = encoded
    if len(data) >= OOB_THRESHOLD:
        data = pickle.PickleBuffer(data)  # type: ignore[assignment]
    if bigs:
        return data, [pickle.PickleBuffer(big) for big in bigs], buffers
    if type(data) is not bytes:
        return data, bigs, buffers
    return encoded


class Markers:
    """The shared page where each child names the task it runs (one slot per process)."""

    def __init__(self, slots: int) -> None:
        self.map = mmap.mmap(-1, max(mmap.PAGESIZE, _SLOT.size * slots))  # MAP_SHARED|ANON

    def clear(self, slot: int) -> None:
        _SLOT.pack_into(self.map, slot * _SLOT.size, 0, 0.0)

    def read(self, slot: int) -> Tuple[int, float]:
        return _SLOT.unpack_from(self.map, slot * _SLOT.size)

    def close(self) -> None:
        self.map.close()


class PoolProcess:
    """The master's view of one pool process: its channel and how it ended.

    ``pool`` (the scheduler's BackendEvents) is called back, in the hub, with
    ``on_outcomes(proc, outcomes, busy)``, ``on_bad_group(proc, ids, why)``,
    ``on_init_failed(proc, text)`` and ``on_gone(proc)`` (once, when the
    process has exited and its channel is drained: the process layer's
    :class:`~packet_gevent.ipc.supervision.ChildLink`, shared with workers).
    """

    def __init__(self, pool: Any, slot: int, markers: Markers, codec: TaskCodec, *,
                 initializer: Optional[Callable[..., Any]], initargs: tuple,
                 max_tasks: Optional[int]) -> None:
        self.pool = pool
        self.slot = slot
        self.markers = markers
        self.codec = codec
        self.max_tasks = max_tasks
        self._accepting = True    # False once retiring, killed or closed
        self.killed_for: Optional[str] = None   # why the scheduler killed it, if it did
        markers.clear(slot)
        self.child: ChildProcess = spawn_child(
            _child_main, name=f"pool-{slot}", handles_sigterm=True,
            args=(markers.map, slot, initializer, initargs, max_tasks, codec.serializer))
        self.pid = self.child.pid
        self.started_at = time.monotonic()
        self.channel = Channel(self.child.sock)
        self.link = ChildLink(self.child, self.channel, f"pool process {slot}",
                              on_message=self._on_message, on_gone=self._on_gone)

    def __repr__(self) -> str:
        return (f"<PoolProcess slot={self.slot} pid={self.pid} "
                f"{'accepting' if self.accepting else 'closing'}>")

    @property
    def accepting(self) -> bool:
        """Takes new tasks: not retiring, killed, closed or gone."""
        return self._accepting and not self.link.over

    @accepting.setter
    def accepting(self, value: bool) -> None:
        self._accepting = value

    @property
    def gone(self) -> bool:
        return self.link.gone

    # -- sending ------------------------------------------------------------------------
    def send(self, groups: List[Tuple[List[int], Encoded]], now: bool = False) -> None:
        self.channel.send((RUN, [(ids, wire(encoded)) for ids, encoded in groups]), now=now)

    def skip(self, ids: List[int]) -> None:
        if not self.channel.closed:
            try:
                self.channel.send((SKIP, ids))
            except Exception:  # closed under us: its death settles everything
                logger.debug("pool process %d: cannot send skip", self.pid, exc_info=True)

    def running(self) -> Tuple[int, float]:
        """(id of the task this process runs now, 0 if none; its start: time.monotonic)."""
        return self.markers.read(self.slot)

    # -- how it ended (ChildProcess's facts) -----------------------------------------------
    @property
    def alive(self) -> bool:
        return not self.gone and self.child.alive

    @property
    def exitcode(self) -> Optional[int]:
        return self.child.exitcode

    def describe_exit(self) -> str:
        return self.child.describe_exit()

    def crash_error(self, what: str) -> BaseException:
        return self.child.crash_error(what)

    def wait(self, timeout: Optional[float] = None) -> bool:
        return self.child.wait(timeout)

    # -- ending ---------------------------------------------------------------------------
    def kill(self, reason: str) -> None:
        """SIGKILL the process; it takes no more tasks.  ``on_gone`` follows."""
        self._accepting = False
        if self.killed_for is None:
            self.killed_for = reason
        self.link.kill(reason)

    def close(self) -> None:
        """Ask the process to exit once its queue is done (EOF on its channel)."""
        self._accepting = False
        self.channel.close()

    # -- events (in the hub) -------------------------------------------------------------
    def _on_message(self, msg: Tuple[Any, ...]) -> None:
        kind = msg[0]
        if kind == DONE:
            try:
                outcomes = self.codec.decode_outcomes(msg[1])
            except Exception:
                logger.exception("pool process %d sent outcomes the master cannot unpickle; "
                                 "killing it", self.pid)
                self.kill("sent an unreadable reply")
                return
            self.pool.on_outcomes(self, outcomes, msg[2])
        elif kind == BAD_GROUP:
            self.pool.on_bad_group(self, msg[1], msg[2])
        elif kind == INIT_FAILED:
            self._accepting = False
            self.pool.on_init_failed(self, msg[1])
        else:
            logger.error("pool process %d sent an unknown message %r", self.pid, kind)

    def _on_gone(self) -> None:
        self.link.close()
        self.pool.on_gone(self)


# -- the child ----------------------------------------------------------------------------------

def _child_main(sock: Any, marker_map: mmap.mmap, slot: int,
                initializer: Optional[Callable[..., Any]], initargs: tuple,
                max_tasks: Optional[int], serializer: str) -> int:
    """A pool process: run tasks in arrival order until EOF (or max_tasks)."""
    global in_pool_process
    in_pool_process = True
    if BATCH_SCHEDULING:
        try:
            os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
        except (AttributeError, OSError):  # not Linux, or refused: run as usual
            pass
    gc.freeze()  # the inherited heap is never collected here: no GC passes over it
    channel = BlockingChannel(sock)
    if initializer is not None:
        try:
            initializer(*initargs)
        except BaseException:
            channel.send(init_failed_message())
            return EXIT_INIT_FAILED
    loop = _TaskLoop(channel, marker_map, slot, max_tasks, TaskCodec(serializer))
    # SIGTERM (an operator, or the whole process group): finish the tasks we hold, send
    # their results, exit 0; the pool replaces us (or, stopping, does not).
    signal.signal(signal.SIGTERM, loop.on_sigterm)
    sigterm_handler_ready()  # one that came during the set-up is delivered now
    return loop.run()


class _Terminated(Exception):
    """Raised by the SIGTERM handler to leave a wait for tasks."""


class _TaskLoop:
    def __init__(self, channel: BlockingChannel, marker_map: mmap.mmap, slot: int,
                 max_tasks: Optional[int], codec: TaskCodec) -> None:
        self.channel = channel
        self.marker_map = marker_map
        self.offset = slot * _SLOT.size
        self.max_tasks = max_tasks or 0
        self.codec = codec
        self.queue: Deque[Tuple[int, Callable[..., Any], tuple, Any]] = collections.deque()
        self.skipped: Set[int] = set()
        self.outcomes: List[Tuple[int, int, Any]] = []
        self.busy = 0.0
        self.done = 0
        self.poller = select.poll()
        self.poller.register(channel.fileno(), select.POLLIN)
        self.terminating = False
        self.idle = False

    def on_sigterm(self, signum: int, frame: Any) -> None:
        self.terminating = True
        if self.idle:
            raise _Terminated()

    def wait_for_tasks(self, spin: bool = False) -> List[Tuple[Any, ...]]:
        self.idle = True
        try:
            if self.terminating:
                raise _Terminated()
            if spin and IDLE_SPIN:
                self.spin(IDLE_SPIN)
            return self.channel.recv_batch()
        finally:
            self.idle = False

    def spin(self, seconds: float) -> None:
        """Poll the channel without sleeping for up to ``seconds`` (see IDLE_SPIN)."""
        poll, clock, yield_cpu = self.poller.poll, time.perf_counter, os.sched_yield
        end = clock() + seconds
        while not poll(0):
            if self.terminating or clock() >= end:
                return
            yield_cpu()

    def run(self) -> int:
        queue, outcomes, channel = self.queue, self.outcomes, self.channel
        pack_into, marker_map, offset = _SLOT.pack_into, self.marker_map, self.offset
        clock, monotonic = time.perf_counter, time.monotonic
        deadline = 0.0
        woke_at = 0  # self.done when the last wait ended
        while True:
            if self.max_tasks and self.done >= self.max_tasks:
                self.flush()
                return 0
            if not queue:
                self.flush()
                # Spin only after a lone task (a caller waiting for each result
                # may send the next at once); after a batch the master is
                # busy sending more, and a spin would only take its CPU.
                lone = self.done - woke_at == 1
                try:
                    self.take(self.wait_for_tasks(lone))
                except (EOFError, _Terminated):
                    return 0
                woke_at = self.done
                deadline = clock() + FLUSH_INTERVAL
                continue
            start = clock()
            if start >= deadline:
                self.flush()
                if not self.terminating and self.poller.poll(0):
                    try:
                        self.take(channel.recv_batch())
                    except EOFError:
                        return 0
                deadline = start + FLUSH_INTERVAL
            tid, fn, args, kwargs = queue.popleft()
            if tid in self.skipped:
                self.skipped.discard(tid)
            else:
                pack_into(marker_map, offset, tid, monotonic())
                outcomes.append((tid, *run_call(fn, args, kwargs)))
                self.busy += clock() - start
            # Hold nothing of the task here: the outcome list is the last
            # reference to its result (cleared once sent), and the function and
            # arguments go now, so their __del__ runs before the next task comes.
            fn = args = kwargs = None
            self.done += 1

    def take(self, messages: List[Tuple[Any, ...]]) -> None:
        for message in messages:
            if message[0] == RUN:
                for ids, encoded in message[1]:
                    self.take_group(ids, encoded)
            elif message[0] == SKIP:
                self.skipped.update(message[1])

    def take_group(self, ids: List[int], encoded: Encoded) -> None:
        try:
            calls = self.codec.decode_calls(encoded, len(ids))
        except GroupDecodeError as exc:
            self.channel.send((BAD_GROUP, ids, str(exc)))
            return
        except Exception as exc:  # one call that cannot be decoded: it fails alone
            self.outcomes.append((ids[0], ERR, (exc, "")))
            self.done += 1
            return
        self.queue.extend([(tid, fn, args, kwargs) for tid, (fn, args, kwargs) in zip(ids, calls)])

    def flush(self) -> None:
        outcomes = self.outcomes
        if outcomes:
            encoded = self.codec.encode_outcomes(outcomes)
            self.channel.send((DONE, wire(encoded), self.busy / len(outcomes)))
            outcomes.clear()
            self.busy = 0.0
