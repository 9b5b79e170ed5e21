"""Start and supervise child processes safely under gevent.

One job: fork a child that starts in a clean gevent world, connected to the
parent by one AF_UNIX socketpair, and tell the parent promptly and exactly how
it ended.  Workers (a long-lived child running its own reactor) and the fork
pool (children running CPU-bound tasks) both start children here.

In the child, before ``target(sock, *args)`` runs:

* it dies with the parent: ``PR_SET_PDEATHSIG=SIGKILL`` plus a ``getppid()``
  check right after;
* signals the parent handled (Python handlers, gevent/libev watchers) go
  back to the default disposition; ignored ones stay ignored; SIGINT is
  ignored unless ``ignore_sigint=False``, so Ctrl-C in a terminal reaches
  only the master, which decides;
* the parent's hub is abandoned, never run again: its libev loop is destroyed
  and ``get_hub()`` builds a fresh one, so no greenlet, timer, watcher or accept
  loop of the parent ever runs in the child (gipc's approach).  Unlike
  gipc we neither call ``gevent.reinit()`` nor ``hub.destroy()`` on the old hub:
  both would run code of a hub we throw away (reinit re-arms its threadpool and
  may start its monitoring thread; destroy switches into it).  The old hub is
  kept referenced so the garbage collector never finalises the parent's
  suspended greenlets (which would run their ``finally`` blocks in the child).
  libev keeps *signal* and *child* watchers in process-global lists that
  ``ev_loop_destroy`` does not empty: left there, the parent's signal handler
  runs in the child and a child's own ``gevent.signal_handler`` for the same
  signal is never installed (the child is killed by the signal instead;
  measured).  So when the parent has libev signal handlers, the child stops the
  parent's signal/child watchers first (found with ``gc.get_objects()``, ~1.5 ms
  for 14k objects; skipped when the parent has none);
* inherited sockets and FIFOs other than its own channel end (listening
  sockets, client connections, siblings' channel ends, pipes) are released
  with the ORIGINAL close semantics (``dup2`` of /dev/null over the number,
  immediate, never gevent's deferred ``os.close``).  The numbers stay
  taken by /dev/null so that a stale socket object of the parent finalised in
  the child closes a harmless descriptor, not a reused one such as the
  channel.  Regular files, stdio and ``keep_fds`` stay;
* ``target`` runs in a fresh greenlet (so forking from inside a hub callback
  works too) and the child ends with ``os._exit``: its return code, 0 for
  None, 1 after printing the traceback of an exception to stderr (logging
  handlers may point at sockets just released; stderr survives).

Reaping: exactly one mechanism per child, never ``waitpid(-1)``.  A pidfd
(``os.pidfd_open``, Linux >= 5.3) becomes readable the moment the child is a
zombie; a libev io watcher on it calls ``waitpid(pid, WNOHANG)`` for that pid
only.  No SIGCHLD handler is installed, so other code that reaps its own
children (``subprocess``, ``multiprocessing``) is not disturbed.  We do not use
libev child watchers by default because they install libev's SIGCHLD handler,
which reaps *every* child with ``waitpid(-1)`` (libev ``childcb``).  But when
that handler is already installed (``gevent.subprocess`` or a monkey-patched
``os.fork`` was used), it would reap our child before us, so then a libev child
watcher for the pid is the mechanism (it receives the status libev reaped).
If libev's handler is installed only after a child started, that child's exit
status may be lost: ``describe_exit()`` says so; nothing hangs.  Without pidfd
support a 5 ms ``waitpid(pid, WNOHANG)`` poll timer is used.  Measured here
(20 runs): SIGKILL to reaped, p50 1.2 ms, max 1.7 ms (the kernel tearing the
process down); ``spawn_child`` returns in 1.5-2 ms; spawn, first channel round
trip and exit take ~7 ms.

Fork under threads: Python 3.12+ warns (DeprecationWarning "This process is
multi-threaded, use of fork() may lead to deadlocks in the child") when a
process with threads forks; gevent's threadpool and resolver threads count
(one ``gevent.socket.getaddrinfo`` starts one).  We silence that warning for
our own fork only, as gevent does for its fork since 24.10, because here it is
a false alarm: only the forking thread exists in the child; the child never
touches the old hub's threadpool (it is abandoned with the hub) and starts a
fresh hub; CPython re-initialises its own locks (import lock, logging, the GIL)
after fork.  What remains true: a lock that *another* thread of the parent
held at the fork (a C library's, e.g. glibc's resolver inside that thread's
getaddrinfo) stays held in the child, so a child must not rely on state a
thread of the parent was changing.  Call spawn_child from the main thread:
PR_SET_PDEATHSIG fires when the *thread* that forked exits.
"""
from __future__ import annotations

import atexit
import ctypes
import errno
import gc
import logging
import os
import posix
import signal as _signal_mod
import socket
import stat
import sys
import traceback
import warnings
from typing import Callable, Dict, Iterable, List, Optional, Set

import _signal
import _socket
import _thread
import greenlet
import gevent
import gevent.event
from gevent._hub_local import get_hub_if_exists, get_loop, set_hub, set_loop
from gevent.monkey import get_original

from ..errors import WorkerCrashed

__all__ = ["ChildProcess", "spawn_child", "live_children", "sigterm_handler_ready"]

logger = logging.getLogger(__name__)

# The C functions themselves: gevent.monkey patches the ``os`` module's
# attributes (a deferred ``close``, ``fork`` = fork_and_watch, a cooperative
# ``waitpid``), never ``posix``'s.  Importing this module patches nothing.
_fork = posix.fork
_close = posix.close
_dup2 = posix.dup2
_waitpid = posix.waitpid
_kill = posix.kill
_StdSocket = get_original("socket", "socket")

#: Poll period of the fallback reaper used when pidfd_open is unavailable.
#: 5 ms keeps "death noticed within a few ms" at ~0.1% of a core per child.
POLL_INTERVAL = 0.005

_PR_SET_PDEATHSIG = 1
_PR_SET_NAME = 15
_READ = 1

# pid -> ChildProcess for every child started here and not yet reaped.
_LIVE: Dict[int, "ChildProcess"] = {}
# In a child: the parent's hubs, kept alive so their greenlets are never collected.
_ABANDONED: List[object] = []
_use_pidfd = hasattr(os, "pidfd_open")
_libc = None


def live_children() -> List["ChildProcess"]:
    """Children started by this process that have not been reaped yet."""
    return list(_LIVE.values())


# -- libc helpers (ctypes) ----------------------------------------------------

class _DlInfo(ctypes.Structure):
    _fields_ = [("dli_fname", ctypes.c_char_p), ("dli_fbase", ctypes.c_void_p),
                ("dli_sname", ctypes.c_char_p), ("dli_saddr", ctypes.c_void_p)]


def _get_libc():
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def _gevent_owned_signals(signums: Iterable[int]) -> Set[int]:
    """The signals whose OS-level handler is code inside a gevent extension (libev).

    libev installs a C handler when its first watcher for a signal starts and
    resets it to SIG_DFL when the last one stops, so this tells, at the cost
    of a sigaction and a dladdr per signal (~1 us), where libev watchers exist.
    """
    owned: Set[int] = set()
    try:
        libc = _get_libc()
        buf = ctypes.create_string_buffer(256)  # > sizeof(struct sigaction)
        info = _DlInfo()
        for signum in signums:
            if libc.sigaction(signum, None, buf) != 0:
                continue
            handler = ctypes.c_void_p.from_buffer(buf).value
            if not handler or handler <= 1:  # SIG_DFL, SIG_IGN
                continue
            if libc.dladdr(ctypes.c_void_p(handler), ctypes.byref(info)) and \
                    info.dli_fname and b"gevent" in info.dli_fname:
                owned.add(signum)
    except (OSError, AttributeError):  # no dladdr (non-glibc): assume none
        logger.debug("cannot inspect signal handlers", exc_info=True)
    return owned


def _libev_reaps_children() -> bool:
    """True when libev's SIGCHLD handler (it calls waitpid(-1)) is installed."""
    return bool(_gevent_owned_signals([_signal.SIGCHLD]))


def _prctl(option: int, arg) -> int:
    return _get_libc().prctl(option, arg, 0, 0, 0)


# -- the parent's view of a child --------------------------------------------

class ChildProcess:
    """A child started by :func:`spawn_child`, as seen from the parent.

    ``sock`` is the parent's end of the socketpair (non-blocking); hand it to
    a :class:`~packet_gevent.ipc.channel.Channel`.  ``exitcode`` (exit status) or
    ``signal`` (killing signal) is set once the child has been reaped; both
    stay None while it runs and when its status was lost to another reaper.
    """

    def __init__(self, pid: int, name: str, sock: socket.socket, pidfd: Optional[int]) -> None:
        self.pid = pid
        self.name = name
        self.sock = sock
        self.exitcode: Optional[int] = None
        self.signal: Optional[int] = None
        self.status_lost = False
        self._pidfd = pidfd
        self._reaped = gevent.event.Event()
        self._callbacks: List[Callable[["ChildProcess"], object]] = []
        self._waiters = 0
        self._watcher = None

    def __repr__(self) -> str:
        return f"<ChildProcess {self.name or 'child'} pid={self.pid} {self.describe_exit()}>"

    @property
    def alive(self) -> bool:
        """True until the child has been reaped."""
        return not self._reaped.is_set()

    # -- watching --------------------------------------------------------------
    def _watch(self, libev_reaps: bool) -> None:
        loop = gevent.get_hub().loop
        if libev_reaps:
            self._watcher = loop.child(self.pid, ref=False)
            self._watcher.start(self._on_libev_child, self._watcher)
        elif self._pidfd is not None:
            self._watcher = loop.io(self._pidfd, _READ, ref=False)
            self._watcher.start(self._try_reap)
        else:
            self._watcher = loop.timer(POLL_INTERVAL, POLL_INTERVAL, ref=False)
            self._watcher.start(self._try_reap)

    def _on_libev_child(self, watcher) -> None:
        self._set_status(watcher.rstatus)

    def _try_reap(self) -> None:
        try:
            pid, status = _waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            logger.warning("child %s (pid %d) was reaped by another waiter (libev's SIGCHLD "
                           "handler, installed after it started?); its exit status is lost",
                           self.name, self.pid)
            self.status_lost = True
            self._finish()
            return
        if pid == self.pid:
            self._set_status(status)

    def _set_status(self, status: int) -> None:
        if os.WIFSIGNALED(status):
            self.signal = os.WTERMSIG(status)
        else:
            self.exitcode = os.waitstatus_to_exitcode(status)
        self._finish()

    def _finish(self) -> None:
        if self._reaped.is_set():
            return
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher.close()
            self._watcher = None
        if self._pidfd is not None:
            _close(self._pidfd)
            self._pidfd = None
        _LIVE.pop(self.pid, None)
        self._reaped.set()
        logger.debug("child %s (pid %d) %s", self.name, self.pid, self.describe_exit())
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            self._run_callback(callback)

    def _run_callback(self, callback: Callable[["ChildProcess"], object]) -> None:
        try:
            callback(self)
        except Exception:  # a bad callback must not stop the others
            logger.exception("on_exit callback %r of child %s (pid %d) raised",
                             callback, self.name, self.pid)

    # -- public API --------------------------------------------------------------
    def on_exit(self, callback: Callable[["ChildProcess"], object]) -> None:
        """Call ``callback(child)`` once, in the hub, when the child has been reaped.

        It must not block.  Registered after the exit, it runs on the next
        loop turn.
        """
        if self._reaped.is_set():
            gevent.get_hub().loop.run_callback(self._run_callback, callback)
        else:
            self._callbacks.append(callback)

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Block the calling greenlet until the child is reaped; True if it was.

        Only the calling greenlet waits; the rest of the process runs on.
        """
        if self._reaped.is_set():
            return True
        self._waiters += 1
        if self._watcher is not None:  # keep the loop alive while someone waits
            self._watcher.ref = True
        try:
            return self._reaped.wait(timeout)
        finally:
            self._waiters -= 1
            if self._waiters == 0 and self._watcher is not None:
                self._watcher.ref = False

    def kill(self, sig: int = _signal.SIGKILL) -> None:
        """Send ``sig`` to the child; a no-op once it has been reaped.

        Uses the pidfd when there is one, so a recycled pid is never hit.
        """
        if not self.alive:
            return
        try:
            if self._pidfd is not None:
                _signal_mod.pidfd_send_signal(self._pidfd, sig)
            else:
                _kill(self.pid, sig)
        except ProcessLookupError:  # exited, not reaped yet: harmless
            pass

    def terminate(self, grace: float = 5.0) -> None:
        """SIGTERM, wait up to ``grace`` seconds, then SIGKILL; returns once reaped.

        Cooperative: blocks only the calling greenlet.
        """
        self.kill(_signal.SIGTERM)
        if not self.wait(grace):
            logger.warning("child %s (pid %d) ignored SIGTERM for %.1f s; killing it",
                           self.name, self.pid, grace)
            self.kill(_signal.SIGKILL)
            self.wait()

    def describe_exit(self) -> str:
        """Human description: 'exited with code 3', 'killed by signal 9 (SIGKILL)'..."""
        if self.alive:
            return "running"
        if self.signal is not None:
            try:
                signame = _signal_mod.Signals(self.signal).name
            except ValueError:
                signame = "unknown"
            return f"killed by signal {self.signal} ({signame})"
        if self.exitcode is not None:
            return f"exited with code {self.exitcode}"
        return "exited; exit status unknown (reaped by another waiter)"

    def crash_error(self, what: str = "child process died") -> WorkerCrashed:
        """A WorkerCrashed describing this child's end, for requests it owed."""
        return WorkerCrashed(f"{what}: {self.name or 'child'} (pid {self.pid}) "
                             f"{self.describe_exit()}",
                             pid=self.pid, exitcode=self.exitcode, signal=self.signal)


# -- starting a child ------------------------------------------------------------

def spawn_child(target: Callable[..., Optional[int]], *, name: str = "", args: tuple = (),
                keep_fds: Iterable[int] = (), ignore_sigint: bool = True,
                handles_sigterm: bool = False) -> ChildProcess:
    """Fork a child that runs ``target(sock, *args)`` and exits with its return code.

    ``sock`` is the child's end of a fresh AF_UNIX socketpair (blocking mode);
    the parent's end is ``ChildProcess.sock``.  ``keep_fds`` are descriptors
    the child keeps although they are sockets or FIFOs.  ``handles_sigterm``:
    SIGTERM stays blocked in the child until ``target`` has installed its
    handler and called :func:`sigterm_handler_ready` (one arriving before is
    delivered then, not fatal).  Call from the main thread, from any greenlet
    (hub callbacks included).
    """
    if _thread.get_native_id() != os.getpid():
        raise RuntimeError(
            "spawn_child must be called from the main thread: the child's parent-death "
            "signal fires when the forking thread exits")
    # The C socketpair (close-on-exec) and the stdlib socket class, also under
    # patch_all (where socket.socketpair would hand out gevent sockets).
    parent_end, child_end = _socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    parent_sock = _StdSocket(fileno=parent_end.detach())
    child_fd = child_end.detach()
    keep = frozenset(keep_fds)
    parent_pid = os.getpid()
    _flush_stdio()  # or buffered output would be written twice
    # A Ctrl-C during the child's set-up must not kill it (its SIGINT disposition passes
    # through SIG_DFL while the parent's handlers are undone): SIGINT stays blocked in the
    # child until it is ignored (a pending one is then discarded), and for the fork here.
    old_mask = _signal.pthread_sigmask(_signal.SIG_BLOCK, (_signal.SIGINT, _signal.SIGTERM)
                                       if handles_sigterm else (_signal.SIGINT,))
    try:
        with warnings.catch_warnings():  # a false alarm here (module docstring), even under -W error
            warnings.filterwarnings("ignore", "This process .*is multi-threaded", DeprecationWarning)
            pid = _fork()
        if pid == 0:  # child: never returns
            _child_main(target, args, name, child_fd, parent_sock, keep, parent_pid, ignore_sigint,
                        set(old_mask) | {_signal.SIGTERM} if handles_sigterm else old_mask)
    finally:
        _signal.pthread_sigmask(_signal.SIG_SETMASK, old_mask)
    _close(child_fd)  # now, before anything can fork again (trap 2)
    parent_sock.setblocking(False)
    libev_reaps = _libev_reaps_children()
    child = ChildProcess(pid, name, parent_sock, None if libev_reaps else _open_pidfd(pid))
    _LIVE[pid] = child
    child._watch(libev_reaps)
    logger.debug("started child %s (pid %d)", name, pid)
    return child


def _open_pidfd(pid: int) -> Optional[int]:
    global _use_pidfd
    if not _use_pidfd:
        return None
    try:
        return os.pidfd_open(pid)
    except OSError as exc:  # ENOSYS (old kernel), EPERM (seccomp)
        if exc.errno == errno.ESRCH:  # already reaped by someone else: polling says so
            return None
        logger.info("pidfd_open unavailable (%s); reaping children by polling", exc)
        _use_pidfd = False
        return None


def _flush_stdio() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass


# -- in the child ----------------------------------------------------------------

def sigterm_handler_ready() -> None:
    """In a child spawned with ``handles_sigterm=True``: its SIGTERM handler is installed."""
    _signal.pthread_sigmask(_signal.SIG_UNBLOCK, (_signal.SIGTERM,))


def _child_main(target, args, name, child_fd, parent_sock, keep, parent_pid, ignore_sigint,
                signal_mask):
    code = 1
    try:
        _die_with_parent(parent_pid)
        if name:
            _prctl(_PR_SET_NAME, name.encode()[:15])
        parent_sock.detach()  # the number is released below, with the others
        had_hub = _clean_gevent_world(ignore_sigint, child_fd, keep)
        _signal.pthread_sigmask(_signal.SIG_SETMASK, signal_mask)  # SIGINT is settled now
        runner = greenlet.greenlet(_run_target)
        code = runner.switch(target, args, child_fd, had_hub)
    except BaseException:
        traceback.print_exc()
    finally:
        _flush_stdio()
        os._exit(code)


def _run_target(target, args, child_fd, had_hub) -> int:
    """Runs in a fresh greenlet; the new hub's parent, so LoopExit lands here."""
    if had_hub:
        _fresh_hub()
    sock = _StdSocket(fileno=child_fd)
    sock.setblocking(True)
    try:
        result = target(sock, *args)
        code = 0 if result is None else int(result)
    except SystemExit as exc:
        code = _system_exit_code(exc)
    except BaseException:
        traceback.print_exc()
        code = 1
    _kill_all_live()
    return code


def _system_exit_code(exc: SystemExit) -> int:
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code
    print(exc.code, file=sys.stderr)
    return 1


def _die_with_parent(parent_pid: int) -> None:
    if _prctl(_PR_SET_PDEATHSIG, _signal.SIGKILL) != 0:
        logger.warning("prctl(PR_SET_PDEATHSIG) failed: errno %d", ctypes.get_errno())
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def _clean_gevent_world(ignore_sigint: bool, own_fd: int, keep: frozenset) -> bool:
    """Reset signals, abandon the parent's hub, release inherited fds; True if it had a hub."""
    global _libev_sigchld_in_parent
    owned = _gevent_owned_signals(range(1, _signal.NSIG))
    _libev_sigchld_in_parent = _signal.SIGCHLD in owned
    _reset_signals(owned)
    siblings = list(_LIVE.values())
    _LIVE.clear()
    hub = get_hub_if_exists()
    if hub is not None:
        _abandon_hub(hub, stop_stale_watchers=bool(owned))
    # After the hub: stopping the parent's last libev SIGINT watcher (Reactor.run's)
    # resets SIGINT to SIG_DFL, which would undo an ignore set before it.
    # Ctrl-C reaches the whole process group: by default the master decides.
    _signal.signal(_signal.SIGINT, _signal.SIG_IGN if ignore_sigint else _signal.SIG_DFL)
    _release_fds(own_fd, keep, [c._pidfd for c in siblings])
    _clear_gevent_child_table()
    return hub is not None


_libev_sigchld_in_parent = False


def _reset_signals(owned_by_gevent: Set[int]) -> None:
    """Default disposition for the signals the parent handled in Python or libev.

    Ignored signals stay ignored (SIGPIPE, nohup's SIGHUP); C handlers of other
    libraries (faulthandler's) stay: they are valid code in the child too.
    """
    for signum in range(1, _signal.NSIG):
        if signum in (_signal.SIGKILL, _signal.SIGSTOP):
            continue
        try:
            if signum in owned_by_gevent or callable(_signal.getsignal(signum)):
                _signal.signal(signum, _signal.SIG_DFL)
        except (OSError, ValueError, RuntimeError):  # reserved real-time signals
            pass


def _abandon_hub(hub, stop_stale_watchers: bool) -> None:
    loop = hub.loop
    if stop_stale_watchers:
        _stop_global_watchers(loop)
    _ABANDONED.append(hub)
    _ABANDONED.append(loop)
    if get_loop() is loop:
        set_loop(None)
    set_hub(None)
    loop.destroy()


def _stop_global_watchers(loop) -> None:
    """Stop the parent's libev signal and child watchers (process-global lists)."""
    kinds = set()
    for module in (sys.modules.get(type(loop).__module__), getattr(loop, "_watchers", None)):
        for attr in ("signal", "child"):
            kind = getattr(module, attr, None)
            if isinstance(kind, type):
                kinds.add(kind)
    stopped = 0
    for obj in gc.get_objects():
        if type(obj) in kinds and obj.loop is loop and obj.active:
            obj.stop()
            stopped += 1
    logger.debug("stopped %d inherited libev signal/child watchers", stopped)


def _release_fds(own_fd: int, keep: frozenset, pidfds: List[Optional[int]]) -> None:
    for fd in pidfds:
        if fd is not None:
            _close(fd)
    devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    try:
        for name in os.listdir("/proc/self/fd"):
            fd = int(name)
            if fd <= 2 or fd == own_fd or fd == devnull or fd in keep:
                continue
            try:
                mode = os.fstat(fd).st_mode
            except OSError:  # the listdir's own fd, already gone
                continue
            if stat.S_ISSOCK(mode) or stat.S_ISFIFO(mode):
                _dup2(devnull, fd, False)
    finally:
        _close(devnull)


def _clear_gevent_child_table() -> None:
    # gevent.os remembers the parent's children for its cooperative waitpid.
    gevent_os = sys.modules.get("gevent.os")
    table = getattr(gevent_os, "_watched_children", None)
    if isinstance(table, dict):
        table.clear()


def _fresh_hub() -> None:
    gevent.get_hub()  # new hub, new default loop; its parent is the current greenlet
    if not _libev_sigchld_in_parent:
        # libev's default loop starts its SIGCHLD reaper at creation once gevent
        # has created a default loop before (gevent_ev_default_loop); in the
        # parent it was not active, so restore the default disposition.
        _signal.signal(_signal.SIGCHLD, _signal.SIG_DFL)


# -- at exit -------------------------------------------------------------------------

def _kill_all_live() -> None:
    """SIGKILL and reap every child we started that is still alive."""
    children = list(_LIVE.values())
    for child in children:
        try:
            _kill(child.pid, _signal.SIGKILL)
        except ProcessLookupError:
            pass
    for child in children:
        try:
            _waitpid(child.pid, 0)
        except ChildProcessError:
            pass
        _LIVE.pop(child.pid, None)


atexit.register(_kill_all_live)
