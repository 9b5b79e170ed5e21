"""One worker process seen from the master: fork it, watch it, stop it, tell when it is dead.

:class:`WorkerProcess` forks a worker with
:func:`~packet_gevent.process.spawn_child` (the child runs
:func:`~packet_gevent.worker.run_worker` over its end of a
:class:`~packet_gevent.channel.Channel`), hands every message the worker
sends to ``on_message(proc, item)`` in the hub, and calls ``on_dead(proc)``
once, in the hub, when the process is over: its channel at EOF *and* its exit
seen, so that replies it sent before dying are routed before its pending
requests fail.  The two events normally arrive together (a SIGKILLed worker's
pending request is answered 2-4 ms after the kill, both events included);
when one is missing the process is given :data:`EXIT_WAIT` /
:data:`EOF_WAIT`, and a worker that closed its channel or sent something
unreadable is killed, with the reason kept in ``cause``.

What the requests in flight mean (``inflight``, ``per_conn``) is the
:class:`~packet_gevent.workers.WorkerManager`'s business; they live here
because they belong to this process and die with it.
"""
from __future__ import annotations

import collections
import logging
from typing import Any, Callable, Dict, Optional

import gevent

from ..errors import ChannelClosed
from .worker import STOP, run_worker

__all__ = ["WorkerProcess", "EXIT_WAIT", "EOF_WAIT"]

logger = logging.getLogger(__name__)

#: After a worker's channel reaches EOF, how long to wait for the process to
#: exit before killing it (it closed its channel, so it is of no more use).
EXIT_WAIT = 1.0
#: After a worker exits, how long to wait for EOF on its channel, so replies
#: it sent before dying are routed before its pending requests fail.  Only a
#: grandchild that inherited the socket could hold the EOF back.
EOF_WAIT = 0.5


class WorkerProcess:
    """One forked worker process: its child handle, channel, state and requests in flight."""

    def __init__(self, group: Any, index: int, *, stop_grace: float,
                 max_message_size: Optional[int],
                 on_message: Callable[["WorkerProcess", Any], Any],
                 on_dead: Callable[["WorkerProcess"], Any]) -> None:
        from ..ipc.channel import Channel
        from ..ipc.process import spawn_child

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
        self.closing = False     # takes no new requests: EOF seen, exited, or told to stop
        self.stopping = False    # told to stop: its exit is expected
        self.cause: Optional[str] = None  # why we stopped or killed it, if we did
        self.dead = False        # finish() ran
        self._eof = False
        self._exited = False
        self._reported = False   # on_dead called
        self._timer: Any = None
        self._on_dead = on_dead
        self.channel.start(lambda item: on_message(self, item), self._on_eof)
        self.child.on_exit(lambda *args: self._on_exit())

    def __repr__(self) -> str:
        return f"<WorkerProcess {self.group.label} pid={self.pid} inflight={len(self.inflight)}>"

    # ---------------------------------------------------------------- control
    def stop(self, grace: float, why: str) -> None:
        """Send STOP (queued after the requests it has); SIGKILL after ``grace`` seconds."""
        self.stopping = True
        self.closing = True
        self.cause = why
        try:
            self.channel.send((STOP, None))
        except ChannelClosed:
            logger.debug("could not send stop to pid %d: its channel is closed", self.pid)
        if not self._exited:
            self._arm(grace, self._kill, f"{why}; killed: it had not exited {grace} s later")

    def finish(self) -> str:
        """Mark it dead, close the channel, return what happened: "worker foo (pid 12) ...".

        Call once, after ``on_dead``.
        """
        self.dead = True
        self._cancel_timer()
        try:
            self.channel.close()
        except Exception:  # pragma: no cover - closing a dead channel
            logger.debug("closing the channel of pid %d failed", self.pid, exc_info=True)
        text = f"worker {self.group.label} (pid {self.pid}) {_describe_exit(self.child)}"
        return f"{text}: {self.cause}" if self.cause else text

    @property
    def exitcode(self) -> Optional[int]:
        return getattr(self.child, "exitcode", None)

    @property
    def signal(self) -> Optional[int]:
        return getattr(self.child, "signal", None)

    # ------------------------------------------------------------- watching
    def _on_eof(self, exc: Optional[BaseException] = None) -> None:  # in the hub
        if self._eof or self.dead:
            return
        self._eof = True
        self.closing = True
        if self._exited:
            self._report()
        elif exc is not None:
            # A bad frame or a message we cannot unpickle: the stream is lost.
            cause = f"it sent a message the master cannot read ({type(exc).__name__}: {exc})"
            logger.error("worker %s (pid %d): %s; killing it", self.group.label, self.pid, cause)
            self._kill(cause)
        elif not self.stopping:
            # It closed its channel but lives on: of no more use.  Give the
            # exit (which normally follows at once) a moment, then kill it.
            self._arm(EXIT_WAIT, self._kill,
                      f"it closed its channel but had not exited {EXIT_WAIT} s later")

    def _on_exit(self) -> None:  # in the hub
        if self._exited:
            return
        self._exited = True
        self.closing = True
        if self._eof:
            self._report()
        else:
            self._arm(EOF_WAIT, self._report)

    def _report(self) -> None:
        self._cancel_timer()
        if not self._reported:
            self._reported = True
            self._on_dead(self)

    def _kill(self, cause: str) -> None:
        self.cause = cause
        self.child.kill()

    def _arm(self, seconds: float, fn: Callable[..., Any], *args: Any) -> None:
        self._cancel_timer()
        self._timer = gevent.get_hub().loop.timer(seconds)
        self._timer.start(fn, *args)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.close()
            self._timer = None


# -------------------------------------------------------------- child side
def _child_main(sock: Any, cls: type, worker_key: Any, options: Dict[str, Any], index: int,
                stop_grace: float, max_message_size: Optional[int]) -> int:
    """Runs in the forked child (fresh hub, no inherited fds but ``sock``)."""
    from ..ipc.channel import Channel
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
