"""The Packet façade: the Reactor users import, joining the reactor to workers and the pool.

:class:`Reactor` is the core reactor (:mod:`packet_gevent.net.reactor`) plus
Packet's process features, each run as a reactor service:

* workers (``worker_root=``, ``start_worker``, ``ask_worker``, ``delete_worker``),
  a :class:`~packet_gevent.workers.WorkerManager` created on first use;
* the fork pool used by ``Connection.defer`` (``pool_size=``, or ``pool=`` to
  give it any pool with the ForkPool API), created on first use;
* ``popen`` (EventMachine's ``EM.popen``: a child program as a connection).

``Reactor.run`` honours Packet's ``WORKER_ROOT`` setting.  The core reactor
imports none of this, so a plain network server never imports the code that
forks.
"""
from __future__ import annotations

import concurrent.futures
import functools
import logging
import os
import sys
from typing import Any, Callable, Dict, Optional

from .net.connection import Connection
from .net.reactor import Reactor as CoreReactor
from .pool.executor import ForkPool
from .popen import popen, system
from .pool.futures import Future
from .pool.tasks import describe_callable
from .workers.manager import WorkerManager

__all__ = ["Reactor", "default_worker_root"]

logger = logging.getLogger(__name__)


def default_worker_root() -> Optional[str]:
    """Packet's ``WORKER_ROOT`` setting, used by ``Reactor.run`` without ``worker_root=``.

    Looked up in this order: ``packet_gevent.WORKER_ROOT`` (set it before
    building the reactor), a ``WORKER_ROOT`` global of the ``__main__`` script
    (Packet's constant), the ``WORKER_ROOT`` environment variable.
    """
    for module_name in ("packet_gevent", "__main__"):
        module = sys.modules.get(module_name)
        value = getattr(module, "WORKER_ROOT", None) if module is not None else None
        if value:
            return os.fspath(value)
    return os.environ.get("WORKER_ROOT") or None


class _WorkersService:
    """A WorkerManager as a reactor service."""

    def __init__(self, manager: WorkerManager) -> None:
        self.manager = manager

    def start(self) -> None:
        self.manager.start()

    def pending(self) -> int:
        return self.manager.pending_count()

    def stop(self, timeout: float) -> None:
        self.manager.stop(timeout)


class _PoolService:
    """The reactor's pool as a service: stop waits for its tasks and for the ``defer``
    results not yet handed to their connection, then shuts the pool down."""

    def __init__(self, pool: Any, reactor: "Reactor") -> None:
        self.pool = pool
        self.reactor = reactor

    def start(self) -> None:
        pass

    def pending(self) -> int:
        return len(self.pool) + self.reactor._defers_undelivered

    def stop(self, timeout: float) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True, timeout=timeout)


class Reactor(CoreReactor):
    """The core reactor with Packet's workers and the fork pool (see the module docstring)."""

    def __init__(self, worker_root: Optional[str] = None, *,
                 worker_options: Optional[Dict[str, Any]] = None,
                 restart_workers: bool = True,
                 pool_size: Optional[int] = None,
                 pool: Any = None,
                 max_message_size: Optional[int] = None,
                 **options: Any) -> None:
        super().__init__(**options)
        self.worker_root = worker_root
        self.worker_options = dict(worker_options or {})
        self.restart_workers = restart_workers
        self.pool_size = pool_size
        self.max_message_size = max_message_size
        self._workers: Optional[WorkerManager] = None
        self._pool: Any = None
        # defer() results whose task finished but which are not in their connection's
        # mailbox yet (one loop callback later): a graceful stop must wait for them too.
        self._defers_undelivered = 0
        if pool is not None:
            self._attach_pool(pool)
        if worker_root is not None:
            _ = self.workers  # started with the reactor

    # ------------------------------------------------------------- workers
    @property
    def workers(self) -> WorkerManager:
        """The WorkerManager (created on first use)."""
        if self._workers is None:
            self._workers = WorkerManager(self, self.worker_root, worker_options=self.worker_options,
                                          restart=self.restart_workers,
                                          max_message_size=self.max_message_size)
            self.add_service(_WorkersService(self._workers))
        return self._workers

    def ask_worker(self, worker_name: str, data: Any = None, type: str = "request",
                   worker_key: Any = None, callback: Any = None, timeout: Optional[float] = None,
                   **extra: Any) -> Optional[int]:
        """Send a request to a worker from outside any connection (reply to ``callback``).

        Returns the request id (None for messages that expect no reply).
        ``timeout``: no reply within that many seconds answers the request with
        an error reply carrying :class:`~packet_gevent.WorkerTimeout`."""
        return self.workers.ask(None, worker_name, data=data, type=type, worker_key=worker_key,
                                callback=callback, timeout=timeout, **extra)

    def ask_worker_for(self, conn: Connection, worker_name: str, **kwargs: Any) -> Any:
        return self.workers.ask(conn, worker_name, **kwargs)

    def start_worker(self, worker: Any = None, worker_key: Any = None, **options: Any) -> Any:
        """Start (fork) a worker at runtime; a no-op with a warning if that key runs already."""
        return self.workers.start_worker(worker=worker, worker_key=worker_key, **options)

    def delete_worker(self, worker: Any = None, worker_key: Any = None) -> None:
        """Ask a running worker to exit."""
        self.workers.delete_worker(worker=worker, worker_key=worker_key)

    # ---------------------------------------------------------------- pool
    @property
    def pool(self) -> Any:
        """The reactor's pool, used by ``Connection.defer`` (a ForkPool created on first use)."""
        if self._pool is None:
            self._attach_pool(ForkPool(self.pool_size))
        return self._pool

    def _attach_pool(self, pool: Any) -> None:
        self._pool = pool
        self.add_service(_PoolService(pool, self))

    def defer_for(self, conn: Connection, fn: Callable[..., Any], args: tuple, kwargs: dict,
                  callback: Optional[Callable[[Any], Any]]) -> Future:
        """Run ``fn(*args, **kwargs)`` in the pool; deliver the outcome on ``conn``.

        In the connection's greenlet: ``callback(result_or_exception)`` if given,
        else ``conn.worker_receive(reply)`` with ``reply["type"]`` "response"
        (``data`` the result) or "error" (``error`` the message, ``exception``,
        ``traceback``).  Dropped (debug log) if the connection has gone.
        """
        future = self.pool.submit(fn, *args, **kwargs)
        self._defers_undelivered += 1
        receiver = callback if callback is not None else conn.worker_receive
        deliver = functools.partial(self._deliver_deferred, conn.signature, fn, receiver,
                                    callback is not None)
        # The future may complete inside the pool's bookkeeping (in the hub):
        # switching into the connection's greenlet must wait for the next turn.
        loop = self.hub.loop
        future.add_done_callback(lambda done: loop.run_callback(deliver, done))
        return future

    def _deliver_deferred(self, signature: int, fn: Callable[..., Any],
                          receiver: Callable[[Any], Any], raw: bool, future: Future) -> None:
        self._defers_undelivered -= 1
        try:
            exc = future.exception(0)
        except concurrent.futures.CancelledError as cancelled:
            exc = cancelled
        if raw:
            outcome: Any = exc if exc is not None else future.result(0)
        elif exc is None:
            outcome = {"type": "response", "data": future.result(0), "function": describe_callable(fn)}
        else:
            outcome = {"type": "error", "data": None, "function": describe_callable(fn),
                       "error": f"{type(exc).__name__}: {exc}", "exception": exc,
                       "traceback": getattr(exc, "remote_traceback", None)}
        if not self.deliver(signature, receiver, outcome):
            logger.debug("result of deferred %s dropped: connection %d has gone",
                         describe_callable(fn), signature)

    # --------------------------------------------------------------- popen
    def popen(self, cmd: Any, handler: Any, on_instance: Optional[Callable[[Any], Any]] = None, *,
              env: Optional[Dict[str, str]] = None, cwd: Optional[str] = None) -> Any:
        """EventMachine's ``EM.popen``: run ``cmd`` (a list, or a string split without a
        shell) with its stdin/stdout as a connection to a new ``handler``; returns it.

        See :mod:`packet_gevent.popen` (unbind after the exit, ``get_status()``).
        """
        return popen(self, cmd, handler, on_instance, env=env, cwd=cwd)

    def system(self, cmd: Any, *, input: bytes = b"", env: Optional[Dict[str, str]] = None,
               cwd: Optional[str] = None,
               callback: Optional[Callable[[bytes, Optional[int]], Any]] = None) -> Any:
        """EventMachine's ``EM.system``: run ``cmd`` (no shell) to its end, feeding it ``input``;
        returns a ``gevent.event.AsyncResult`` of ``(output bytes, return code)``.

        See :func:`packet_gevent.popen.system`.
        """
        return system(self, cmd, input=input, env=env, cwd=cwd, callback=callback)

    # ---------------------------------------------------------------- run
    @classmethod
    def run(cls, setup: Optional[Callable[["Reactor"], Any]] = None, **options: Any) -> "Reactor":
        """Packet's ``Reactor.run``: build, ``setup(reactor)``, serve until SIGINT/SIGTERM or stop().

        Without ``worker_root=``, Packet's ``WORKER_ROOT`` setting is used
        (:func:`default_worker_root`).
        """
        if "worker_root" not in options:
            options["worker_root"] = default_worker_root()
        return super().run(setup, **options)  # type: ignore[return-value]
