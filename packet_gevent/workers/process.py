"""One worker process seen from the master: fork it, watch it, stop it, tell when it is dead.

:class:`WorkerProcess` forks a worker with
:func:`~packet_gevent.ipc.process.spawn_child` (the child runs
:func:`~packet_gevent.workers.worker.run_worker` over its end of a
:class:`~packet_gevent.ipc.channel.Channel`), hands every message the worker
sends to ``on_message(proc, item)`` in the hub, and calls ``on_dead(proc)``
once, in the hub, when the process is over.  The watching (exit and EOF
joined, the waits when one is missing, the kill of a worker that closed its
channel or sent something unreadable) is the process layer's
:class:`~packet_gevent.ipc.supervision.ChildLink`, shared with the pool.

What the requests in flight mean (``inflight``, ``per_conn``) is the
:class:`~packet_gevent.workers.manager.WorkerManager`'s business; they live
here because they belong to this process and die with it.
"""
from __future__ import annotations

import collections
import logging
from typing import Any, Callable, Dict, Optional

import gevent

from ..errors import ChannelClosed
from ..ipc.channel import Channel
from ..ipc.process import spawn_child
from ..ipc.supervision import ChildLink
from .worker import STOP, run_worker

__all__ = ["WorkerProcess"]

logger = logging.getLogger(__name__)


class WorkerProcess:
    """One forked worker process: its child handle, channel, state and requests in flight."""

    def __init__(self, group: Any, index: int, *, stop_grace: float,
                 max_message_size: Optional[int],
                 on_message: Callable[["WorkerProcess", Any], Any],
                 on_dead: Callable[["WorkerProcess"], Any]) -> None:
        self.group = group        # the manager's record of this worker (label, cls, key...)
        self.index = index        # place in the group's pool
        self.child = spawn_child(_child_main, name=f"packet worker {group.label}", handles_sigterm=True,
                                 args=(group.cls, group.key, group.options, index, stop_grace,
                                       max_message_size))
        self.pid: int = self.child.pid
        self.channel = Channel(self.child.sock, **_channel_options(max_message_size))
        self.inflight: Dict[int, Any] = {}                    # request id -> request
        self.per_conn: collections.Counter = collections.Counter()  # conn signature -> count
        self.started_at = gevent.get_hub().loop.now()
        self.dead = False        # finish() ran
        self._closing = False    # the manager's own "no new requests" mark
        self.link = ChildLink(self.child, self.channel, f"worker {group.label}",
                              on_message=lambda item: on_message(self, item),
                              on_gone=lambda: on_dead(self))

    def __repr__(self) -> str:
        return f"<WorkerProcess {self.group.label} pid={self.pid} inflight={len(self.inflight)}>"

    @property
    def closing(self) -> bool:
        """Takes no new requests: told to stop, marked closing, or its EOF or exit was seen."""
        link = self.link
        return self._closing or link.expecting_exit or link.eof or link.exited

    @closing.setter
    def closing(self, value: bool) -> None:
        self._closing = value

    @property
    def stopping(self) -> bool:
        """Told to stop: its exit is expected."""
        return self.link.expecting_exit

    @property
    def cause(self) -> Optional[str]:
        """Why we stopped or killed it, if we did."""
        return self.link.cause

    # ---------------------------------------------------------------- control
    def stop(self, grace: float, why: str) -> None:
        """Send STOP (queued after the requests it has); SIGKILL after ``grace`` seconds."""
        try:
            self.channel.send((STOP, None))
        except ChannelClosed:
            logger.debug("could not send stop to pid %d: its channel is closed", self.pid)
        self.link.expect_exit(grace, why)

    def finish(self) -> str:
        """Mark it dead, close the channel, return what happened: "worker foo (pid 12) ...".

        Call once, after ``on_dead``.
        """
        self.dead = True
        self.link.close()
        text = f"worker {self.group.label} (pid {self.pid}) {_describe_exit(self.child)}"
        return f"{text}: {self.cause}" if self.cause else text

    @property
    def exitcode(self) -> Optional[int]:
        return getattr(self.child, "exitcode", None)

    @property
    def signal(self) -> Optional[int]:
        return getattr(self.child, "signal", None)


# -------------------------------------------------------------- child side
def _child_main(sock: Any, cls: type, worker_key: Any, options: Dict[str, Any], index: int,
                stop_grace: float, max_message_size: Optional[int]) -> int:
    """Runs in the forked child (fresh hub, no inherited fds but ``sock``)."""
    channel = Channel(sock, **_channel_options(max_message_size))
    return run_worker(channel, cls, worker_key, options, index, stop_grace)


def _channel_options(max_message_size: Optional[int]) -> Dict[str, Any]:
    return {} if max_message_size is None else {"max_message_size": max_message_size}


def _describe_exit(child: Any) -> str:
    describe = getattr(child, "describe_exit", None)
    if describe is not None:
        return describe()
    exitcode, signal = getattr(child, "exitcode", None), getattr(child, "signal", None)
    return f"exited (exitcode={exitcode}, signal={signal})"
