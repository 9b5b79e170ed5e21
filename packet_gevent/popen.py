"""popen: a child program's stdin and stdout as a connection (EventMachine's ``EM.popen``).

``reactor.popen(["sort", "-n"], Handler)`` (on :class:`packet_gevent.Reactor`)
starts the program through the fork-safe process layer
(:func:`packet_gevent.ipc.process.spawn_child`: it dies with us, is reaped
by its own pidfd watcher, never a zombie) with one end of an AF_UNIX
socketpair as its stdin and stdout (stderr is ours).  The handler is a
Connection on the other end: ``send_data`` writes to the program's input,
``receive_data`` gets its output, ``close_write()`` gives it EOF on stdin
while its output is still read.  No shell is involved (a string command is
split with :func:`shlex.split`).

``reactor.system(cmd, input=b"...")`` (EventMachine's ``EM.system``) is popen
with a handler that writes ``input``, closes the program's stdin, collects
its whole output and answers ``(output, status)`` once it has exited.

``unbind(reason)`` comes once the output has ended *and* the program has
exited, so ``get_status()`` (its return code, ``-signal`` when a signal
killed it, as ``subprocess``) is known there; ``reason`` is None for exit 0,
:class:`~packet_gevent.errors.ProcessFailed` for another status.  A program
still running after its output closed (or after ``close_connection()``) gets
``popen_exit_grace`` seconds, then SIGTERM, then SIGKILL; when the reactor
stops, SIGTERM at once.  Like any child of a shell, the program gets the
terminal's Ctrl-C (SIGINT is not ignored for it, unlike for our workers).
"""
from __future__ import annotations

import logging
import os
import shlex
import signal
from typing import Any, Callable, Dict, List, Optional, Sequence, Type, Union

import greenlet

from .errors import ProcessFailed
from .ipc.process import ChildProcess, spawn_child
from .net.connection import Connection, as_connection_class
from .net.transport import raw_socket_from

__all__ = ["PopenConnection", "SystemConnection", "popen", "system"]

logger = logging.getLogger(__name__)

#: The exit code of a child whose program could not be executed (as shells use).
EXEC_FAILED = 127


class PopenConnection(Connection):
    """A connection to a child program (see the module docstring)."""

    #: Seconds a program may run on after its output has closed before SIGTERM.
    popen_exit_grace: float = 5.0
    _pg_child: Optional[ChildProcess] = None

    def get_pid(self) -> Optional[int]:
        return self._pg_child.pid if self._pg_child is not None else None

    def get_status(self) -> Optional[int]:
        """EventMachine's ``get_status``: the return code (``-N`` for signal N), None while it runs."""
        child = self._pg_child
        if child is None or child.alive:
            return None
        if child.signal is not None:
            return -child.signal
        return child.exitcode

    def _call_unbind(self, reason: Optional[BaseException]) -> None:
        child = self._pg_child
        if child is not None:
            try:
                _wait_for_exit(child, 0.0 if self._reactor._stopping else self.popen_exit_grace)
            except greenlet.GreenletExit:  # the reactor's stop ran out of patience
                child.kill(signal.SIGKILL)
            if reason is None and self.get_status():
                reason = ProcessFailed(f"{child.name} {child.describe_exit()}", pid=child.pid,
                                       exitcode=child.exitcode, signal=child.signal)
        super()._call_unbind(reason)


def _wait_for_exit(child: ChildProcess, grace: float) -> None:
    if child.wait(grace):
        return
    logger.info("%s still runs %.1f s after its output closed: SIGTERM", child.name, grace)
    child.kill(signal.SIGTERM)
    if not child.wait(2.0):
        logger.warning("%s ignored SIGTERM: SIGKILL", child.name)
        child.kill(signal.SIGKILL)
        child.wait(2.0)


def _exec_program(sock: Any, argv: List[str], env: Optional[Dict[str, str]], cwd: Optional[str]) -> int:
    """In the child: the socket becomes stdin and stdout, then exec (never returns on success)."""
    fd = sock.fileno()
    os.dup2(fd, 0)
    os.dup2(fd, 1)
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))
    # Python ignores SIGPIPE; an exec'd program expects the default (as subprocess restores).
    for name in ("SIGPIPE", "SIGXFSZ"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_DFL)
    try:
        if cwd is not None:
            os.chdir(cwd)
        if env is None:
            os.execvp(argv[0], argv)
        else:
            os.execvpe(argv[0], argv, env)
    except OSError as exc:
        os.write(2, f"popen: cannot run {argv[0]!r}: {exc}\n".encode())
    return EXEC_FAILED


_mixed: Dict[Any, type] = {}


def popen_class(handler: Any) -> Type[PopenConnection]:
    if isinstance(handler, type) and issubclass(handler, PopenConnection):
        return handler
    cached = _mixed.get(handler)
    if cached is None:
        base = as_connection_class(handler)
        cached = _mixed[handler] = type(base.__name__, (base, PopenConnection),
                                        {"__module__": base.__module__})
    return cached


def popen(reactor: Any, cmd: Union[str, Sequence[str]], handler: Any,
          on_instance: Optional[Callable[[Any], Any]] = None, *,
          env: Optional[Dict[str, str]] = None, cwd: Optional[str] = None) -> PopenConnection:
    """Start ``cmd`` with its stdin/stdout connected to a new ``handler`` instance; return it."""
    from .errors import ReactorStopping
    argv = shlex.split(cmd) if isinstance(cmd, str) else [os.fspath(part) for part in cmd]
    if not argv:
        raise ValueError("popen needs a command to run")
    if reactor._stopping:
        raise ReactorStopping("the reactor is stopping: it starts no new programs")
    conn = popen_class(handler)()
    if getattr(conn, "run_in_hub", False):
        raise ValueError("a popen handler cannot be run_in_hub: its unbind waits for the "
                         "program's exit status")
    child = spawn_child(_exec_program, name=f"popen {os.path.basename(argv[0])}",
                        args=(argv, env, cwd), ignore_sigint=False)
    try:
        sock = raw_socket_from(child.sock)
        transport = conn._pg_setup(reactor, on_instance)
    except BaseException:
        child.kill(signal.SIGKILL)
        raise
    conn._pg_child = child
    reactor.connections[conn.signature] = conn
    transport.attach(sock)
    transport.start(conn._pg_started)
    return conn


class SystemConnection(Connection):
    """EventMachine's ``EM.system`` handler: write the input, collect the output, answer at the exit."""

    _pg_input: bytes = b""
    _pg_answer: Any = None
    _pg_callback: Optional[Callable[[bytes, Optional[int]], Any]] = None

    def post_init(self) -> None:
        self._pg_output: List[bytes] = []

    def connection_completed(self) -> None:
        if self._pg_input:
            self.send_data(self._pg_input)
        self.close_write()  # the program reads EOF after the input, never waits on us

    def receive_data(self, data: bytes) -> None:
        self._pg_output.append(data)

    def unbind(self, reason: Optional[BaseException] = None) -> None:
        output = b"".join(self._pg_output)
        status = self.get_status()  # type: ignore[attr-defined]  (popen mixes PopenConnection in)
        try:
            if self._pg_callback is not None:
                self._pg_callback(output, status)
        finally:
            self._pg_answer.set((output, status))


def system(reactor: Any, cmd: Union[str, Sequence[str]], *, input: bytes = b"",
           env: Optional[Dict[str, str]] = None, cwd: Optional[str] = None,
           callback: Optional[Callable[[bytes, Optional[int]], Any]] = None) -> Any:
    """Run ``cmd`` to its end; a ``gevent.event.AsyncResult`` of ``(output, status)``.

    ``output``: all it wrote to stdout (bytes, held in memory); ``status``:
    its return code (``-N`` for signal N, 127 when it could not be run).  A
    failing program is not an exception here: look at the status.
    ``callback(output, status)``, if given, runs first, in the connection's
    greenlet (EventMachine's block).
    """
    import gevent.event
    if not isinstance(input, (bytes, bytearray, memoryview)):
        raise TypeError(f"system's input must be bytes, got {type(input).__name__}")
    answer = gevent.event.AsyncResult()

    def prepare(conn: SystemConnection) -> None:
        conn._pg_input, conn._pg_answer, conn._pg_callback = bytes(input), answer, callback

    conn = popen(reactor, cmd, SystemConnection, env=env, cwd=cwd)
    prepare(conn)  # before its first callback runs: popen only queued it
    return answer
