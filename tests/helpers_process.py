"""Scenarios and child targets for test_process.py and test_channel.py.

Importable, so that a subprocess that called ``gevent.monkey.patch_all()``
first runs exactly the same checks (``run_all_scenarios``).  Every wait is
bounded; waits on state in another process poll /proc with a deadline.
"""
from __future__ import annotations

import gc
import os
import posix
import signal
import subprocess
import sys
import warnings

import gevent
import gevent.event
import gevent.socket
from gevent.server import StreamServer

from packet_gevent.ipc.blocking import BlockingChannel
from packet_gevent.ipc.channel import Channel
from packet_gevent.ipc.process import live_children, spawn_child

TIMEOUT = 10.0


# -- small utilities ------------------------------------------------------------

def socket_inodes(pid: int) -> set:
    """Inodes of the sockets process ``pid`` holds open."""
    found = set()
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
        if target.startswith("socket:["):
            found.add(int(target[8:-1]))
    return found


def process_state(pid: int):
    """'R', 'S', 'Z'... from /proc/<pid>/stat, or None if the process is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return None


def assert_reaped(pid: int) -> None:
    """Our child ``pid`` is reaped: no zombie left, waitpid knows nothing of it."""
    try:
        posix.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    else:
        raise AssertionError(f"pid {pid} is still our unreaped child")
    assert process_state(pid) is None, f"pid {pid} still exists: {process_state(pid)}"


def wait_child(child, timeout: float = TIMEOUT) -> None:
    assert child.wait(timeout), f"{child!r} did not exit within {timeout} s"


# -- child targets --------------------------------------------------------------------

def echo_blocking(sock):
    """Pool-style child: echo every message in batches until EOF."""
    channel = BlockingChannel(sock)
    while True:
        try:
            batch = channel.recv_batch()
        except EOFError:
            return 0
        channel.send_many(batch)


def echo_hub(sock):
    """Worker-style child: a Channel in the child's own hub, callbacks, echo."""
    channel = Channel(sock)
    done = gevent.event.AsyncResult()
    channel.start(channel.send, done.set)
    exc = done.get(timeout=60)
    return 0 if exc is None else 3


def wait_for_eof(sock):
    """Block (plainly) until the parent closes its end; exit 0."""
    sock.recv(1)
    return 0


def ready_then_wait_for_eof(sock):
    """Say b"r" once started (inherited fds released), then wait_for_eof."""
    sock.sendall(b"r")
    return wait_for_eof(sock)


def wait_ready(child) -> None:
    """Receive the child's b"r" cooperatively."""
    with gevent.Timeout(TIMEOUT, AssertionError(f"{child!r} never said it was ready")):
        gevent.socket.wait_read(child.sock.fileno())
    assert child.sock.recv(1) == b"r"


def write_raw(sock, data):
    """Write ``data`` as is, then exit: for EOF and corruption tests."""
    sock.sendall(data)
    return 0


def send_then_exit(sock, objs):
    BlockingChannel(sock).send_many(objs)
    return 0


def send_unimportable(sock):
    """Send an object whose class lives in a module only the child has."""
    import types
    module = types.ModuleType("only_in_the_child")
    exec("class Thing:\n    pass\n", module.__dict__)
    sys.modules[module.__name__] = module
    channel = BlockingChannel(sock)
    channel.send(module.Thing())
    channel.send("after")
    return 0


def report_first_batch(sock):
    """Reply with how many messages the first read brought."""
    channel = BlockingChannel(sock)
    channel.send(len(channel.recv_batch()))
    return 0


class Point:
    """An importable class, to round-trip instances."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __eq__(self, other):
        return type(other) is Point and (self.x, self.y) == (other.x, other.y)


# -- scenarios -----------------------------------------------------------------------

def scenario_exit_codes() -> None:
    def ret(sock, code):
        return code

    def hard_exit(sock):
        os._exit(4)

    def sys_exit(sock):
        sys.exit(5)

    def boom(sock):
        raise ValueError("boom in child")

    def gevent_then_return(sock):
        gevent.sleep(0.001)
        return 6

    cases = [(ret, (3,), 3), (ret, (None,), 0), (hard_exit, (), 4), (sys_exit, (), 5),
             (boom, (), 1), (gevent_then_return, (), 6)]
    for target, args, code in cases:
        child = spawn_child(target, args=args, name=target.__name__)
        wait_child(child)
        assert (child.exitcode, child.signal) == (code, None), (target, child)
        assert child.describe_exit() == f"exited with code {code}"
        assert_reaped(child.pid)

    child = spawn_child(wait_for_eof)
    assert type(child.sock).__module__ == "socket"  # never gevent's class, even patched
    child.kill()
    wait_child(child)
    assert (child.exitcode, child.signal) == (None, signal.SIGKILL)
    assert child.describe_exit() == "killed by signal 9 (SIGKILL)"
    err = child.crash_error("task 1 lost")
    assert (err.pid, err.signal, err.exitcode) == (child.pid, 9, None)
    assert "task 1 lost" in str(err) and "SIGKILL" in str(err)

    # from a spawned greenlet, and from a callback running in the hub itself
    assert gevent.spawn(lambda: _spawn_and_wait(gevent_then_return)).get(timeout=TIMEOUT) == 6
    started = []
    gevent.get_hub().loop.run_callback(lambda: started.append(spawn_child(gevent_then_return)))
    gevent.sleep(0)
    wait_child(started[0])
    assert started[0].exitcode == 6


def _spawn_and_wait(target):
    child = spawn_child(target)
    wait_child(child)
    return child.exitcode


def scenario_wait_is_cooperative() -> None:
    """wait() blocks only its greenlet: the child exits only after 20 ticks elsewhere."""
    def wait_for_go(sock):
        return 0 if sock.recv(2) == b"go" else 9

    child = spawn_child(wait_for_go)
    ticks = []

    def ticker():
        for _ in range(20):
            ticks.append(1)
            gevent.sleep(0.001)
        child.sock.send(b"go")

    gevent.spawn(ticker)
    wait_child(child)
    assert len(ticks) == 20 and child.exitcode == 0


def scenario_child_gets_a_working_threadpool() -> None:
    """The parent's threadpool threads did not survive the fork; the child's hub starts its own."""
    hub = gevent.get_hub()
    assert hub.threadpool.apply(os.getpid) == os.getpid()  # parent threads exist now

    def target(sock):
        child_hub = gevent.get_hub()
        assert child_hub is not hub
        return 0 if child_hub.threadpool.apply(os.getpid) == os.getpid() else 9

    child = spawn_child(target)
    wait_child(child)
    assert child.exitcode == 0


def scenario_no_zombies() -> None:
    children = [spawn_child(lambda sock: 0) for _ in range(5)]
    for child in children:
        wait_child(child)
    for child in children:
        assert_reaped(child.pid)
    assert not any(c in live_children() for c in children)


def scenario_parent_greenlets_never_run_in_child(marker: str) -> None:
    """Greenlets, timers, signal handlers and finally blocks of the parent stay in it."""
    parent = os.getpid()

    def note(what):
        with open(marker, "a") as f:
            f.write(f"{what} {os.getpid()}\n")

    def ticker():
        while True:
            note("tick")
            gevent.sleep(0.001)

    def sleeper():
        try:
            gevent.sleep(1000)
        finally:
            note("sleeper-finally")

    def event_waiter():
        try:
            gevent.event.Event().wait()
        finally:
            note("waiter-finally")

    greenlets = [gevent.spawn(f) for f in (ticker, sleeper, event_waiter)]
    timer = gevent.get_hub().loop.timer(0.001, 0.001)
    timer.start(note, "timer")
    handler = gevent.signal_handler(signal.SIGUSR1, note, "parent-usr1")
    gevent.sleep(0.01)

    def child_target(sock):
        got = []
        gevent.signal_handler(signal.SIGUSR1, lambda: (note("child-usr1"), got.append(1)))
        sock.sendall(b"r")
        for _ in range(1000):  # yield to the child's hub, collect garbage, repeatedly
            gevent.sleep(0.002)
            gc.collect()
            if got:
                return 0
        return 9

    child = spawn_child(child_target)
    wait_ready(child)
    os.kill(child.pid, signal.SIGUSR1)
    wait_child(child)
    for g in greenlets:
        g.kill()
    timer.stop()
    handler.cancel()
    with open(marker) as f:
        lines = [line.split() for line in f]
    in_child = [what for what, pid in lines if int(pid) == child.pid]
    assert in_child == ["child-usr1"], in_child
    assert child.exitcode == 0
    in_parent = {what for what, pid in lines if int(pid) == parent}
    assert {"tick", "timer", "sleeper-finally", "waiter-finally"} <= in_parent, in_parent


def scenario_server_not_inherited() -> None:
    """A listening StreamServer of the parent never accepts in the child; the fd is not held."""
    def handle(sock, address):
        sock.sendall(b"%d" % os.getpid())

    server = StreamServer(("127.0.0.1", 0), handle)
    server.start()
    try:
        inode = os.fstat(server.socket.fileno()).st_ino

        def child_target(sock):
            sock.sendall(b"r")
            gevent.socket.wait_read(sock.fileno(), timeout=TIMEOUT)  # runs the child's hub
            return 0

        child = spawn_child(child_target)
        wait_ready(child)
        assert inode not in socket_inodes(child.pid)
        for _ in range(10):
            with gevent.socket.create_connection(server.address, timeout=TIMEOUT) as conn:
                assert conn.recv(32) == b"%d" % os.getpid()
        child.sock.send(b"x")
        wait_child(child)
        assert child.exitcode == 0
    finally:
        server.stop()


def scenario_siblings() -> None:
    """B does not hold A's ends: kill A and the parent sees A's EOF at once."""
    before = len(socket_inodes(os.getpid()))
    a = spawn_child(ready_then_wait_for_eof, name="A")
    # the child's end is already closed here, before anything else can fork
    assert len(socket_inodes(os.getpid())) == before + 1
    b = spawn_child(ready_then_wait_for_eof, name="B")
    wait_ready(a)
    wait_ready(b)
    assert os.fstat(a.sock.fileno()).st_ino not in socket_inodes(b.pid)
    a.kill()
    with gevent.Timeout(2, AssertionError("no EOF from the killed child A")):
        gevent.socket.wait_read(a.sock.fileno())
        assert a.sock.recv(1) == b""
    wait_child(a)
    b.sock.close()
    wait_child(b)
    assert (a.signal, b.exitcode) == (signal.SIGKILL, 0)


def scenario_foreign_children_untouched() -> None:
    """Other code reaping its own children keeps working: we never waitpid(-1)."""
    with warnings.catch_warnings():  # "other code"'s fork under gevent's threads (3.12+)
        warnings.simplefilter("ignore", DeprecationWarning)
        raw = posix.fork()
    if raw == 0:
        os._exit(6)
    ours = [spawn_child(lambda sock: 2) for _ in range(3)]
    for child in ours:
        wait_child(child)
        assert child.exitcode == 2
    gevent.sleep(0.05)  # let any stray reaper run, if there were one
    assert os.waitstatus_to_exitcode(posix.waitpid(raw, 0)[1]) == 6
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.exit(7)"])
    ours = spawn_child(lambda sock: 2)
    wait_child(ours)
    assert proc.wait(timeout=TIMEOUT) == 7 and ours.exitcode == 2


def scenario_channel_round_trip() -> None:
    for target in (echo_blocking, echo_hub):
        child = spawn_child(target)
        channel = Channel(child.sock)
        for obj in (1, "two", {"three": [3.0, None]}, b"x" * 100_000):
            channel.send(obj)
            assert channel.recv(timeout=TIMEOUT) == obj
        channel.close()
        wait_child(child)
        assert child.exitcode == 0


def run_all_scenarios(tmpdir: str) -> None:
    """Everything above, for the patch_all() subprocess."""
    scenario_exit_codes()
    scenario_wait_is_cooperative()
    scenario_no_zombies()
    scenario_child_gets_a_working_threadpool()
    scenario_parent_greenlets_never_run_in_child(os.path.join(tmpdir, "marker"))
    scenario_server_not_inherited()
    scenario_siblings()
    scenario_foreign_children_untouched()
    scenario_channel_round_trip()

