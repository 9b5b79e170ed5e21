"""LocalDaskCluster: a Dask scheduler and workers on 127.0.0.1, as subprocesses of this one.

What :class:`~packet_gevent.RemotePool` starts when it is given no
scheduler address; usable alone (tests, benchmarks) to share one cluster
between pools.  ``dask scheduler`` and one ``dask worker --nworkers N`` are
exec'd through :func:`~packet_gevent.ipc.process.spawn_child`, so they die
with this process (parent-death signal) and are reaped by pid, never by a
broad wait.  Not ``distributed.LocalCluster``: under ``patch_all()`` its
multiprocessing workers never reported back (measured), and a scheduler in
this process made a 10 ms gevent timer run 26-59 ms late.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional

import gevent

from ..ipc.process import ChildProcess, spawn_child

__all__ = ["LocalDaskCluster", "import_dask"]

logger = logging.getLogger(__name__)


def import_dask() -> Any:
    try:
        import distributed
    except ImportError as exc:  # pragma: no cover - the extra is installed in CI
        raise ImportError("RemotePool needs Dask distributed: pip install "
                          "'packet_gevent[dask]' (Python >= 3.10)") from exc
    return distributed


def _exec_dask(_sock: Any, argv: List[str], log_path: str, env: Dict[str, str]) -> int:
    """In a child of :func:`spawn_child`: stdout/stderr to ``log_path``, then exec ``argv``."""
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    for name in os.listdir("/proc/self/fd"):  # nothing but stdio reaches dask
        number = int(name)
        if number > 2:
            try:
                os.set_inheritable(number, False)
            except OSError:
                pass
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # dask's own handler stops it cleanly
    os.execve(sys.executable, [sys.executable] + argv, env)
    return 127  # pragma: no cover


class LocalDaskCluster:
    """A Dask scheduler and ``workers`` worker processes on 127.0.0.1, as subprocesses.

    ``dask scheduler`` and one ``dask worker --nworkers N`` (each worker
    under a nanny that restarts it if it dies), started through
    :func:`~packet_gevent.ipc.process.spawn_child` so they die with this
    process (parent-death signal) and are reaped by pid.  Every port,
    dashboard included, is on 127.0.0.1 (Dask opens its HTTP server on
    0.0.0.0 unless told).  Not ``distributed.LocalCluster``: under
    ``patch_all()`` its multiprocessing workers never reported back.
    ``start()`` returns once the scheduler listens (RemotePool then waits
    for the workers).  Logs go to ``log_path``, in a temporary directory
    removed at ``stop()`` unless start-up failed.  Call from the main thread.
    """

    def __init__(self, workers: int = 2, *, threads_per_worker: int = 1,
                 allowed_failures: int = 1, memory_limit: str = "0",
                 start_timeout: float = 60.0) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers!r}")
        self.workers = workers
        self.threads_per_worker = threads_per_worker
        self.allowed_failures = allowed_failures
        self.memory_limit = memory_limit
        self.start_timeout = start_timeout
        self.address: Optional[str] = None
        self.scheduler: Optional[ChildProcess] = None
        self.worker: Optional[ChildProcess] = None
        self._dir = tempfile.mkdtemp(prefix="packet_gevent-dask-")
        self.log_path = os.path.join(self._dir, "cluster.log")
        #: Keep the log (and its directory) at ``stop()``: set when start-up failed.
        self.keep_log = False
        self._owner_pid = os.getpid()

    def __repr__(self) -> str:
        return f"<LocalDaskCluster {self.address or 'not started'} workers={self.workers}>"

    def _env(self) -> Dict[str, str]:
        env = dict(os.environ)
        env["DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES"] = str(self.allowed_failures)
        # Non-daemonic workers, so tasks may start processes of their own; a
        # worker still exits when its nanny dies (it watches a pipe from it).
        env.setdefault("DASK_DISTRIBUTED__WORKER__DAEMON", "False")
        return env

    def start(self) -> str:
        """Start the scheduler, then the workers; return the scheduler's address."""
        import_dask()
        info = os.path.join(self._dir, "scheduler.json")
        env = self._env()
        self.scheduler = spawn_child(_exec_dask, name="dask-scheduler", args=(
            ["-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0",
             "--dashboard-address", "127.0.0.1:0", "--scheduler-file", info],
            self.log_path, env))
        deadline = time.monotonic() + self.start_timeout
        self.address = self._wait_for_address(info, deadline)
        self.worker = spawn_child(_exec_dask, name="dask-worker", args=(
            ["-m", "distributed.cli.dask_worker", self.address, "--host", "127.0.0.1",
             "--nworkers", str(self.workers), "--nthreads", str(self.threads_per_worker),
             "--dashboard-address", "127.0.0.1:0", "--memory-limit", self.memory_limit,
             "--local-directory", self._dir, "--death-timeout", "30"],
            self.log_path, env))
        logger.info("local Dask cluster: scheduler %s (pid %d), %d workers (pid %d)",
                    self.address, self.scheduler.pid, self.workers, self.worker.pid)
        return self.address

    def _wait_for_address(self, info: str, deadline: float) -> str:
        # The scheduler writes the file once it listens; no event to wait on
        # across the exec, so poll (cooperatively) until it is complete JSON.
        while time.monotonic() < deadline:
            if not self.scheduler.alive:
                self.keep_log = True
                raise RuntimeError(f"the Dask scheduler {self.scheduler.describe_exit()}; "
                                   f"see {self.log_path}")
            try:
                with open(info) as fh:
                    return json.load(fh)["address"]
            except (FileNotFoundError, ValueError, KeyError):
                gevent.sleep(0.05)
        self.keep_log = True
        self.stop()
        raise TimeoutError(f"the Dask scheduler did not start in {self.start_timeout} s; "
                           f"see {self.log_path}")

    def pids(self) -> List[int]:
        """Pids of the live processes started here (scheduler, worker launcher)."""
        return [p.pid for p in (self.scheduler, self.worker) if p is not None and p.alive]

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM the workers, then the scheduler; SIGKILL what is left after ``grace``.

        Cooperative; returns once both processes were reaped.  A forked
        child of the owner never stops it.
        """
        if os.getpid() != self._owner_pid:
            return
        for child in (self.worker, self.scheduler):
            if child is not None:
                if child.alive:
                    child.terminate(grace)
                child.sock.close()  # spawn_child's channel end: unused by an exec'd program
        if not self.keep_log:
            shutil.rmtree(self._dir, ignore_errors=True)  # the log and the workers' scratch space
