"""Several serving processes on one listening socket, kept alive by a master.

The master binds the socket once and forks N serving processes with
:func:`~packet_gevent.ipc.process.spawn_child`; each inherits the listener
(``keep_fds``) and runs its own Reactor and WSGIServer on it, accepting from
the shared queue (the kernel hands each connection to one of them).  One
inherited listener rather than one SO_REUSEPORT socket per process: when a
SO_REUSEPORT socket closes, the connections waiting in its own queue are
reset, so a restart would refuse clients; the shared queue outlives any
serving process.

* A serving process that dies is replaced (after a short back-off when they
  keep dying at start: a broken app must not fork in a loop).
* SIGTERM / SIGINT: every serving process gets SIGTERM and drains (stops
  accepting, finishes requests in flight within ``graceful_timeout``); the
  master exits when they all have.
* SIGHUP: rolling restart, one process at a time: the new one is started and
  reports ready before the old one is told to drain, so the listener always
  has a process accepting (and the backlog holds clients in between).

Each serving process tells the master "ready" over its channel once it
accepts; the app is imported there, not in the master.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
from typing import Callable, Dict, List, Optional

import gevent
import gevent.event
from gevent.socket import wait_read

from ..ipc.process import ChildProcess, spawn_child

__all__ = ["Supervisor", "bind_listener"]

logger = logging.getLogger(__name__)

#: A serving process that dies sooner than this after its start counts as a
#: failed start; each one in a row doubles the wait before the next (to 5 s).
MIN_LIFETIME = 1.0
READY = b"ready\n"


def bind_listener(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """A listening TCP socket (SO_REUSEADDR), inheritable by serving processes."""
    infos = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
    family, _type, proto, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


class Supervisor:
    """The master: ``run()`` keeps ``processes`` children running ``serve(listener_fd)``.

    ``serve`` runs in each serving process, with the listener's fd; it must
    call the ``ready()`` it is given once it accepts, and return (exit code)
    when it has drained after SIGTERM.
    """

    def __init__(self, listener: socket.socket, processes: int,
                 serve: Callable[[int, Callable[[], None]], Optional[int]], *,
                 graceful_timeout: float = 30.0, ready_timeout: float = 30.0) -> None:
        if processes < 1:
            raise ValueError(f"processes must be >= 1, got {processes}")
        self.listener = listener
        self.processes = processes
        self.serve = serve
        self.graceful_timeout = graceful_timeout
        self.ready_timeout = ready_timeout
        self.children: List[ChildProcess] = []
        self.started: Dict[int, float] = {}
        self.replaced = 0
        self._failures = 0
        self._stopping = False
        self._restarting = False
        self._stopped = gevent.event.Event()

    # -- serving processes ---------------------------------------------------
    def _spawn(self) -> ChildProcess:
        child = spawn_child(_child_main, name="http-serve", args=(self.serve, self.listener.fileno()),
                            keep_fds=[self.listener.fileno()])
        self.children.append(child)
        self.started[child.pid] = gevent.get_hub().loop.now()
        child.on_exit(self._on_exit)
        logger.info("serving process %d started", child.pid)
        return child

    def _wait_ready(self, child: ChildProcess) -> bool:
        try:
            wait_read(child.sock.fileno(), timeout=self.ready_timeout,
                      timeout_exc=TimeoutError("not ready"))
            return child.sock.recv(len(READY)) == READY
        except (OSError, TimeoutError):
            return False

    def _on_exit(self, child: ChildProcess) -> None:  # in the hub
        lived = gevent.get_hub().loop.now() - self.started.pop(child.pid, 0.0)
        try:
            child.sock.close()
        except OSError:
            pass
        if child not in self.children:
            return  # retired by a restart or a stop
        self.children.remove(child)
        if self._stopping:
            return
        logger.warning("serving process %d %s; starting another", child.pid, child.describe_exit())
        self._failures = self._failures + 1 if lived < MIN_LIFETIME else 0
        delay = min(5.0, 0.1 * 2 ** self._failures) if self._failures else 0.0
        gevent.spawn_later(delay, self._replace)

    def _replace(self) -> None:
        if self._stopping or len(self.children) >= self.processes:
            return
        self.replaced += 1
        child = self._spawn()
        if not self._wait_ready(child):
            logger.error("serving process %d did not become ready", child.pid)

    # -- signals -------------------------------------------------------------------
    def restart(self) -> None:
        """Rolling restart: for each serving process, start a new one, then drain the old."""
        if self._restarting or self._stopping:
            return
        self._restarting = True
        try:
            for old in list(self.children):
                if self._stopping:
                    return
                new = self._spawn()
                if not self._wait_ready(new):
                    logger.error("new serving process %d did not become ready; keeping %d",
                                 new.pid, old.pid)
                    continue
                if old in self.children:
                    self.children.remove(old)
                old.terminate(self.graceful_timeout)
                logger.info("serving process %d replaced by %d", old.pid, new.pid)
        finally:
            self._restarting = False

    def stop(self) -> None:
        """Drain every serving process (SIGTERM, then SIGKILL after graceful_timeout)."""
        if self._stopping:
            return
        self._stopping = True
        children = list(self.children)
        for child in children:
            child.kill(signal.SIGTERM)
        for child in children:
            if not child.wait(self.graceful_timeout):
                logger.warning("serving process %d still running after %.1f s; killing it",
                               child.pid, self.graceful_timeout)
                child.kill(signal.SIGKILL)
                child.wait(5.0)
        self.children.clear()
        self._stopped.set()

    def run(self) -> int:
        """Start the serving processes and supervise them until SIGTERM/SIGINT.

        Returns 0 after a stop, 3 when the first serving process never became
        ready (the app does not load: forking more would not help).
        """
        handlers = [gevent.signal_handler(signal.SIGTERM, lambda: gevent.spawn(self.stop)),
                    gevent.signal_handler(signal.SIGINT, lambda: gevent.spawn(self.stop)),
                    gevent.signal_handler(signal.SIGHUP, lambda: gevent.spawn(self.restart))]
        try:
            for index in range(self.processes):
                child = self._spawn()
                if not self._wait_ready(child):
                    if index == 0:
                        logger.error("serving process %d %s before it was ready; giving up "
                                     "(see its error above)", child.pid,
                                     "exited" if not child.alive else "hung")
                        self.stop()
                        return 3
                    logger.error("serving process %d did not become ready", child.pid)
            logger.info("master %d: %d serving processes", os.getpid(), len(self.children))
            # With a timeout: the child watchers and signal handlers do not
            # keep the loop alive on their own (gevent would raise LoopExit).
            while not self._stopped.wait(60.0):
                pass
        finally:
            for handler in handlers:
                handler.cancel()
            if not self._stopped.is_set():
                self.stop()
            self.listener.close()
        return 0


def _child_main(sock: socket.socket, serve: Callable[..., Optional[int]], listener_fd: int) -> Optional[int]:
    """In a serving process: run ``serve``, telling the master when it is ready."""
    def ready() -> None:
        sock.sendall(READY)

    return serve(listener_fd, ready)
