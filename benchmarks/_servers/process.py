"""Run a benchmark server as a subprocess: start it, wait until it listens, read its CPU time, stop it.

A server counts as ready when it prints a line ending in ``listening on HOST:PORT``
(stdout or stderr).  Only the process started here is ever signalled, by its pid.
"""
import collections
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
#: Seconds a server gets to print its "listening on" line (importing gevent takes ~0.3 s).
READY_TIMEOUT = 20.0
#: Seconds a server gets to exit after SIGTERM before it is killed.
STOP_TIMEOUT = 5.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
LISTENING = re.compile(r"listening on (\S+):(\d+)\s*$")


class BenchError(Exception):
    """The benchmark could not run: a missing compiler, a server that did not start..."""


@dataclass(frozen=True)
class ServerSpec:
    name: str
    argv: Tuple[str, ...]  # arguments after ``python``; --host/--port are appended
    description: str


def process_cpu_clock(pid: int, ticks: float) -> float:
    """CPU seconds of a live process from its CPU-time clock (nanoseconds), else ``ticks``.

    /proc's utime+stime count 10 ms ticks: over a 50,000-round-trip run that is
    0.2 us per round trip, 5% of an echo server's ~4 us.  Linux gives every
    process a CPU-time clock, clockid ``(~pid << 3) | 2`` (CPUCLOCK_SCHED,
    MAKE_PROCESS_CPUCLOCK in the kernel's posix-timers.h), readable by the
    same user with clock_gettime: the same user+system time to the nanosecond.
    """
    try:
        return time.clock_gettime((~pid << 3) | 2)
    except OSError:  # exited meanwhile, or a kernel without per-process clocks
        return ticks


def process_tree_cpu(root_pid: int) -> float:
    """CPU seconds (user+system) of root_pid and its live descendants, plus its reaped children.

    Live processes are read from their CPU-time clocks (process_cpu_clock);
    reaped children only exist in root_pid's cutime+cstime ticks.
    """
    stats: Dict[int, Tuple[int, float, float]] = {}  # pid: (ppid, own ticks, reaped ticks), in seconds
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
        except OSError:  # the process exited while we were listing
            continue
        # fields[0] is stat field 3 (state): ppid is field 4, utime/stime 14/15, cutime/cstime 16/17.
        own = (int(fields[11]) + int(fields[12])) / CLK_TCK
        reaped = (int(fields[13]) + int(fields[14])) / CLK_TCK if int(entry) == root_pid else 0.0
        stats[int(entry)] = (int(fields[1]), own, reaped)
    if root_pid not in stats:
        raise BenchError(f"server process {root_pid} is gone: cannot read its CPU time")
    children = collections.defaultdict(list)
    for pid, (ppid, _, _) in stats.items():
        children[ppid].append(pid)
    total, todo = 0.0, [root_pid]
    while todo:  # bounded: each pid is visited once, the ppid graph is a tree
        pid = todo.pop()
        _, own, reaped = stats[pid]
        total += process_cpu_clock(pid, own) + reaped
        todo.extend(children.get(pid, ()))
    return total


class ServerProcess:
    """One server subprocess: started, waited for ready, measured, stopped by pid."""

    def __init__(self, spec: ServerSpec):
        self.spec = spec
        self.proc: Optional[subprocess.Popen] = None
        self.port = 0
        self.output: collections.deque = collections.deque(maxlen=50)
        self._ready = threading.Event()

    def start(self, host: str = "127.0.0.1", ready_timeout: float = READY_TIMEOUT) -> int:
        """Start the server on host, port 0; wait for its "listening on HOST:PORT" line; return the port."""
        argv = [sys.executable, "-u", *self.spec.argv, "--host", host, "--port", "0"]
        self.proc = subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, errors="replace")
        threading.Thread(target=self._drain, name=f"drain-{self.spec.name}", daemon=True).start()
        if not self._ready.wait(ready_timeout) or not self.port:
            self.stop()
            raise BenchError(f"server {self.spec.name!r} did not print 'listening on HOST:PORT' within "
                             f"{ready_timeout:.0f} s (exit {self.proc.returncode}); its output:\n" + self.tail())
        return self.port

    def _drain(self) -> None:
        """Read the server's output until EOF (so a chatty server never blocks on a full pipe)."""
        for line in self.proc.stdout:
            self.output.append(line.rstrip("\n"))
            match = LISTENING.search(line)
            if match and not self._ready.is_set():
                self.port = int(match.group(2))
                self._ready.set()
        self._ready.set()  # EOF: wake start() at once if the server died before it was ready

    def tail(self) -> str:
        return "\n".join(self.output)

    def check_alive(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            code = None if self.proc is None else self.proc.returncode
            raise BenchError(f"server {self.spec.name!r} exited (status {code}); its output:\n" + self.tail())

    def cpu_seconds(self) -> float:
        self.check_alive()
        return process_tree_cpu(self.proc.pid)

    def stop(self, timeout: float = STOP_TIMEOUT) -> Optional[int]:
        """SIGTERM the server (our own pid only), SIGKILL it if it lingers; return its exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        self.proc.stdout.close()
        return self.proc.returncode
