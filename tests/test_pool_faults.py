"""ForkPool faults, real processes: every task gets exactly one outcome.

Exceptions, timeouts, cancel of a running task, crashes (exit, SIGKILL,
segfault), unpicklable calls and results, initializer failures, bounded
submit, recycling, and no process left behind (shutdown, exit, master killed).
"""
import concurrent.futures
import ctypes
import os
import signal
import threading
import time

import gevent
import pytest

from packet_gevent import (ForkPool, PoolBroken, SerializationError, TaskTimeout, WorkerCrashed,
                           WorkerError)
from packet_gevent.pool.tasks import RemoteTraceback
from tests.conftest import alive, assert_gone, run_script, wait_for
from tests.test_pool import inc, nap, pid_of


# -- tasks ------------------------------------------------------------------------------------

class CustomError(Exception):
    pass


class NeedsTwoArgs(Exception):
    def __init__(self, a, b):  # unpickling calls NeedsTwoArgs(msg): TypeError
        super().__init__(f"{a}/{b}")


def raise_custom(message):
    raise CustomError(message)


def raise_two_args():
    raise NeedsTwoArgs(1, 2)


def exit_with(code):
    os._exit(code)


def kill_self(sig=signal.SIGKILL):
    os.kill(os.getpid(), sig)
    time.sleep(5)


def segfault():
    ctypes.string_at(0)


def return_lock():
    return threading.Lock()


def nap_then_pid(seconds):
    time.sleep(seconds)
    return os.getpid()


def signal_then_nap(started_path, seconds):
    """Create ``started_path`` (the test waits for it), then sleep."""
    with open(started_path, "w"):
        pass
    time.sleep(seconds)


def wait_for_file(path, value, limit=10.0):
    """Block (bounded) until ``path`` exists; return ``value``."""
    deadline = time.monotonic() + limit
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.002)
    return value


def touch(path):
    with open(path, "a") as fh:
        fh.write("ran\n")
    return path


def read_global():
    return INITIALIZED.get("value")


INITIALIZED = {}


def initializer(value):
    INITIALIZED["value"] = value


def bad_initializer():
    raise RuntimeError("initializer exploded")




def settle(futures, timeout=20):
    """Wait for every future; return [("ok", value) | ("error", exc)]."""
    out = []
    for future in futures:
        try:
            out.append(("ok", future.result(timeout)))
        except BaseException as exc:  # noqa: B902 - we record every outcome
            out.append(("error", exc))
    return out


# -- exceptions ----------------------------------------------------------------------------------

def test_exception_keeps_its_type_and_carries_the_remote_traceback(pool):
    future = pool.submit(raise_custom, "boom")
    with pytest.raises(CustomError, match="boom") as info:
        future.result(timeout=10)
    exc = info.value
    assert isinstance(exc.__cause__, RemoteTraceback)
    assert "raise_custom" in exc.remote_traceback and "CustomError: boom" in exc.remote_traceback
    assert pool.submit(inc, 1).result(timeout=10) == 2  # the process lives on


def test_exception_that_cannot_be_unpickled_becomes_a_worker_error_naming_it(pool):
    with pytest.raises(WorkerError, match="NeedsTwoArgs: 1/2") as info:
        pool.submit(raise_two_args).result(timeout=10)
    assert "raise_two_args" in info.value.remote_traceback


def test_builtin_errors_in_a_batch_fail_only_their_tasks(pool):
    futures = [pool.submit(int, x) for x in ["1", "x", "3"]]
    outcomes = settle(futures)
    assert outcomes[0] == ("ok", 1) and outcomes[2] == ("ok", 3)
    assert isinstance(outcomes[1][1], ValueError)


# -- unpicklable calls and results ---------------------------------------------------------------

def test_lambda_fails_its_future_with_the_fix_named(pool):
    futures = [pool.submit(inc, 1), pool.submit(lambda: 1), pool.submit(inc, 2)]
    outcomes = settle(futures)
    assert outcomes[0] == ("ok", 2) and outcomes[2] == ("ok", 3)
    error = outcomes[1][1]
    assert isinstance(error, SerializationError)
    assert "lambda" in str(error) and "cloudpickle" in str(error) and "module level" in str(error)


def test_unpicklable_argument_fails_only_that_task(pool):
    futures = [pool.submit(inc, 1), pool.submit(id, threading.Lock()), pool.submit(inc, 3)]
    outcomes = settle(futures)
    assert outcomes[0] == ("ok", 2) and outcomes[2] == ("ok", 4)
    assert isinstance(outcomes[1][1], SerializationError)
    assert "lock" in str(outcomes[1][1]).lower()


def test_unpicklable_result_fails_only_that_task(pool):
    futures = [pool.submit(inc, 1), pool.submit(return_lock), pool.submit(inc, 3)]
    outcomes = settle(futures)
    assert outcomes[0] == ("ok", 2) and outcomes[2] == ("ok", 4)
    assert isinstance(outcomes[1][1], SerializationError)
    assert "could not be sent back" in str(outcomes[1][1])


def test_function_defined_after_the_processes_started_fails_alone(pool):
    pool.submit(inc, 0).result(timeout=10)  # processes forked now
    global late_function

    def late_function(x):  # noqa: E306 - defined at module level only from here on
        return x
    late_function.__qualname__ = "late_function"
    try:
        futures = [pool.submit(inc, 1), pool.submit(late_function, 5), pool.submit(inc, 2)]
        outcomes = settle(futures)
    finally:
        del late_function
    assert outcomes[0] == ("ok", 2) and outcomes[2] == ("ok", 3)
    assert isinstance(outcomes[1][1], SerializationError)
    assert "could not unpickle" in str(outcomes[1][1])


def test_cloudpickle_serializer_sends_lambdas_and_closures():
    offset = 10
    with ForkPool(2, serializer="cloudpickle") as p:
        assert p.submit(lambda x: x + offset, 5).result(timeout=10) == 15
        assert list(p.map(lambda x: x * offset, range(3))) == [0, 10, 20]


# -- timeouts and cancel ---------------------------------------------------------------------------

def test_task_timeout_fails_the_task_kills_and_replaces_its_process():
    with ForkPool(1, task_timeout=0.3) as p:
        first_pid = p.submit(pid_of).result(timeout=10)
        slow = p.submit(nap, 5)
        queued = [p.submit(inc, i) for i in range(3)]
        t0 = time.monotonic()
        with pytest.raises(TaskTimeout, match="timeout of 0.3 s") as info:
            slow.result(timeout=10)
        assert isinstance(info.value, TimeoutError)
        assert 0.25 < time.monotonic() - t0 < 3
        assert [f.result(timeout=10) for f in queued] == [1, 2, 3]  # re-dispatched, not failed
        assert p.submit(pid_of).result(timeout=10) != first_pid
        wait_for(lambda: not alive(first_pid), message="the timed-out process to be gone")
        stats = p.statistics()
        assert stats["timed_out"] == 1


def test_per_call_timeout_counts_running_time_not_time_in_queue():
    with ForkPool(1) as p:
        first = p.schedule(nap, (0.4, "first"))
        second = p.schedule(nap, (0.1, "second"), timeout=0.3)  # queued 0.4 s, runs 0.1 s
        stuck = p.schedule(nap, (5,), timeout=0.2)
        assert first.result(timeout=10) == "first"
        assert second.result(timeout=10) == "second"
        with pytest.raises(TaskTimeout):
            stuck.result(timeout=10)
        assert p.apply(inc, (1,), timeout=1) == 2


def test_cancel_a_running_task_kills_its_process_and_others_survive(tmp_path):
    started = tmp_path / "started"
    with ForkPool(2) as p:
        pids_before = set(p.submit(pid_of).result(timeout=10) for _ in range(10)) | set(p.pids())
        running = p.submit(signal_then_nap, str(started), 5)
        others = [p.submit(nap, 0.2, i) for i in range(4)]
        wait_for(started.exists, message="the task to start")
        assert running.cancel() is True
        assert running.cancelled()
        with pytest.raises(concurrent.futures.CancelledError):
            running.result(timeout=0)
        assert [f.result(timeout=10) for f in others] == [0, 1, 2, 3]
        wait_for(lambda: len(p.pids()) == 2 and set(p.pids()) != pids_before,
                 message="the cancelled task's process to be replaced")
        assert p.statistics()["cancelled_running"] == 1


def test_cancel_a_queued_task_it_never_runs(tmp_path):
    marker = tmp_path / "ran"
    with ForkPool(1) as p:
        blocker = p.submit(nap, 0.3)
        queued = p.submit(touch, str(marker))
        assert queued.cancel() is True
        assert blocker.result(timeout=10) is None
        assert p.submit(inc, 1).result(timeout=10) == 2
    assert queued.cancelled() and not marker.exists()
    assert blocker.cancel() is False  # finished futures cannot be cancelled


# -- crashes ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("task, args, check", [
    (exit_with, (7,), lambda e: e.exitcode == 7 and e.signal is None),
    (kill_self, (), lambda e: e.signal == signal.SIGKILL and "SIGKILL" in str(e)),
    (segfault, (), lambda e: e.signal == signal.SIGSEGV),
], ids=["os._exit", "SIGKILL", "segfault"])
def test_a_crash_fails_only_the_running_task_and_the_process_is_replaced(pool, task, args, check):
    pool.submit(inc, 0).result(timeout=10)
    crash = pool.submit(task, *args)
    queued = [pool.submit(nap, 0.05, i) for i in range(6)]
    with pytest.raises(WorkerCrashed) as info:
        crash.result(timeout=10)
    assert check(info.value), info.value
    assert info.value.pid is not None and "died while running" in str(info.value)
    assert [f.result(timeout=10) for f in queued] == list(range(6))
    wait_for(lambda: len(pool.pids()) == 2, message="a replacement process")
    assert pool.submit(inc, 1).result(timeout=10) == 2
    assert pool.statistics()["crashed"] == 1


def test_a_process_killed_from_outside_while_idle_is_replaced(pool):
    pool.submit(inc, 0).result(timeout=10)
    victim = pool.pids()[0]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: victim not in pool.pids() and len(pool.pids()) == 2, message="replacement")
    assert list(pool.map(inc, range(20))) == list(range(1, 21))


# -- bounded submit, recycling, initializer ----------------------------------------------------------

def test_max_pending_makes_submit_wait_cooperatively(tmp_path):
    release = tmp_path / "release"
    with ForkPool(2, max_pending=2) as p:
        p.submit(inc, 0).result(timeout=10)
        submitted = []

        def submitter():
            for i in range(4):
                submitted.append(p.submit(wait_for_file, str(release), i))

        ticks = []
        ticker = gevent.spawn(lambda: [ticks.append(gevent.sleep(0.005)) for _ in range(40)])
        g = gevent.spawn(submitter)
        wait_for(lambda: len(submitted) == 2, message="two submits")
        ticker.join(timeout=10)  # 0.2 s of hub life while the third submit waits
        assert len(ticks) == 40  # the hub ran on
        assert len(submitted) == 2 and len(p) == 2 and not g.dead
        release.touch()
        g.join(timeout=10)
        assert len(submitted) == 4
        assert [f.result(timeout=10) for f in submitted] == [0, 1, 2, 3]
        # submits from the hub or another thread do not wait, nor give back a slot they never took
        hub_submitted = []
        gevent.get_hub().loop.run_callback(lambda: hub_submitted.append(p.submit(inc, 1)))
        wait_for(lambda: hub_submitted, message="the hub's submit")
        assert hub_submitted[0].result(timeout=10) == 2
        assert p._scheduler._pending_sem.counter == 2


def test_max_tasks_per_child_recycles_processes():
    with ForkPool(2, max_tasks_per_child=5) as p:
        pids = [p.submit(pid_of).result(timeout=10) for _ in range(12)]
        assert list(p.map(inc, range(50))) == list(range(1, 51))
        assert len(set(pids)) >= 3  # 12 tasks, at most 5 per process
        counts = {pid: pids.count(pid) for pid in set(pids)}
        assert max(counts.values()) <= 5
        assert p.statistics().get("crashed", 0) == 0


def test_initializer_runs_in_each_new_process():
    with ForkPool(2, initializer=initializer, initargs=("ready",), max_tasks_per_child=2) as p:
        assert [p.submit(read_global).result(timeout=10) for _ in range(6)] == ["ready"] * 6


def test_failing_initializer_breaks_the_pool_with_its_traceback():
    p = ForkPool(2, initializer=bad_initializer)
    future = p.submit(inc, 1)
    with pytest.raises(PoolBroken, match="initializer") as info:
        future.result(timeout=10)
    assert isinstance(info.value, concurrent.futures.BrokenExecutor)
    assert "initializer exploded" in info.value.remote_traceback
    with pytest.raises(PoolBroken):
        p.submit(inc, 2)
    p.shutdown(wait=True, timeout=5)
    assert not p.pids()


# -- nothing left behind ------------------------------------------------------------------------------

EXIT_SCRIPT = """
import sys
from packet_gevent import ForkPool
from tests.test_pool import inc
pool = ForkPool(2)
assert pool.submit(inc, 1).result(timeout=10) == 2
print(" ".join(map(str, pool.pids())), flush=True)
{ending}
"""


def test_interpreter_exit_leaves_no_pool_process():
    done = run_script(EXIT_SCRIPT.format(ending="sys.exit(0)  # no shutdown"), timeout=60)
    assert done.returncode == 0, done.stderr
    pids = [int(p) for p in done.stdout.split()]
    assert len(pids) == 2
    assert_gone(pids, timeout=2)


def test_master_sigkilled_its_pool_processes_die_within_a_second():
    import subprocess
    import sys
    from tests.conftest import ROOT
    env = dict(os.environ, PYTHONPATH=ROOT)
    script = EXIT_SCRIPT.format(ending="import time; time.sleep(60)")
    master = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = master.stdout.readline()
        pids = [int(p) for p in line.split()]
        assert len(pids) == 2, master.stderr.read()
        master.kill()
        master.wait(10)
        t0 = time.monotonic()
        assert_gone(pids, timeout=1.0)
        assert time.monotonic() - t0 < 1.0
    finally:
        if master.poll() is None:
            master.kill()
            master.wait(10)
        master.stdout.close()
        master.stderr.close()


def test_killed_processes_are_freed_without_a_gc_collection():
    """N pool processes SIGKILLed and replaced: their PoolProcess, ChildProcess and Channel
    (256 KiB read buffer) are freed by reference counting, not left for a full collection."""
    import gc
    import weakref

    from packet_gevent.ipc.channel import Channel

    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        with ForkPool(1) as pool:
            refs = []
            for _ in range(3):
                pid = pool.submit(os.getpid).result(timeout=30)
                proc = next(r.proc for r in pool._scheduler._procs if r is not None and r.proc.pid == pid)
                refs += [weakref.ref(proc), weakref.ref(proc.child), weakref.ref(proc.channel)]
                assert isinstance(proc.channel, Channel)
                del proc
                os.kill(pid, signal.SIGKILL)
                wait_for(lambda: pid not in pool.pids(), timeout=15, message=f"pid {pid} to go")
            # Without the fix they stay alive (in a cycle) while gc is disabled.
            wait_for(lambda: all(r() is None for r in refs), timeout=10,
                     message=f"killed processes freed: {[r() for r in refs]}")
    finally:
        if was_enabled:
            gc.enable()
