"""ForkPool under gevent.monkey.patch_all(), each scenario in a fresh interpreter.

Patched, the stdlib's own waiting (threading.Condition, concurrent.futures.wait)
becomes cooperative and ``os.close`` is deferred by gevent to the next loop
pass: crashes must still be noticed and nothing may hang.
"""
from tests.conftest import run_script

PRELUDE = """
from gevent import monkey; monkey.patch_all()
import concurrent.futures, os, signal, time, threading
import gevent
from packet_gevent import ForkPool, TaskTimeout, WorkerCrashed
from tests.test_pool import inc, nap, pid_of, add
from tests.test_pool_faults import kill_self, exit_with, raise_custom, CustomError, signal_then_nap
from tests.conftest import alive
"""


def run_patched(body, timeout=60):
    done = run_script(PRELUDE + body, timeout=timeout)
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    return done.stdout


def test_api_and_cooperative_waiting_under_patch_all():
    out = run_patched("""
assert monkey.is_module_patched("threading")
with ForkPool(2) as pool:
    assert pool.submit(add, 1, 2).result(timeout=10) == 3
    assert list(pool.map(inc, range(200))) == list(range(1, 201))
    assert pool.apply(add, (1, 1)) == 2 and pool.spawn(inc, 1).get(timeout=10) == 2
    assert sorted(pool.imap_unordered(inc, range(50))) == list(range(1, 51))

    # the stdlib's wait/as_completed are cooperative once patched
    futures = [pool.submit(nap, 0.01 * i, i) for i in range(6)]
    done, not_done = concurrent.futures.wait(futures, timeout=10)
    assert len(done) == 6 and not not_done
    assert sorted(f.result() for f in concurrent.futures.as_completed(
        [pool.submit(inc, i) for i in range(10)], timeout=10)) == list(range(1, 11))

    # a 1 ms ticker keeps ticking while a greenlet waits on a 1 s task
    ticks = []
    stop = []
    def ticker():
        while not stop:
            ticks.append(time.perf_counter())
            gevent.sleep(0.001)
    g = gevent.spawn(ticker)
    assert pool.submit(nap, 1.0, "ok").result(timeout=10) == "ok"
    stop.append(1); g.join()
    gaps = [b - a for a, b in zip(ticks, ticks[1:])]
    assert len(ticks) > 300 and max(gaps) < 0.1, (len(ticks), max(gaps))

    # 100 greenlets share the pool; a (patched) thread submits too
    jobs = [gevent.spawn(lambda n: [pool.submit(add, n, i).result(timeout=20) for i in range(10)], n)
            for n in range(100)]
    gevent.joinall(jobs, timeout=30, raise_error=True)
    assert all(j.value == [n + i for i in range(10)] for n, j in enumerate(jobs))
    t = threading.Thread(target=lambda: print("thread", pool.submit(inc, 41).result(timeout=10)))
    t.start(); t.join(10)
    pids = pool.pids()
assert not any(alive(p) for p in pids), pids
print("OK")
""")
    assert "thread 42" in out and out.strip().endswith("OK")


def test_faults_under_patch_all_crash_timeout_cancel_and_exception():
    out = run_patched("""
with ForkPool(2, task_timeout=5) as pool:
    pool.submit(inc, 0).result(timeout=10)
    # a worker killed mid-task: its EOF must arrive although os.close is deferred
    crash = pool.submit(kill_self)
    queued = [pool.submit(nap, 0.05, i) for i in range(6)]
    try:
        crash.result(timeout=10)
        raise SystemExit("no WorkerCrashed")
    except WorkerCrashed as exc:
        assert exc.signal == signal.SIGKILL, exc
    assert [f.result(timeout=10) for f in queued] == list(range(6))
    crash = pool.submit(exit_with, 3)
    try:
        crash.result(timeout=10)
    except WorkerCrashed as exc:
        assert exc.exitcode == 3, exc

    slow = pool.schedule(nap, (5,), timeout=0.2)
    try:
        slow.result(timeout=10)
        raise SystemExit("no TaskTimeout")
    except TaskTimeout:
        pass

    import tempfile
    started = os.path.join(tempfile.mkdtemp(), "started")
    running = pool.submit(signal_then_nap, started, 5)
    deadline = time.monotonic() + 5
    while not os.path.exists(started) and time.monotonic() < deadline:
        gevent.sleep(0.005)
    assert running.cancel() and running.cancelled()

    try:
        pool.submit(raise_custom, "x").result(timeout=10)
    except CustomError as exc:
        assert "raise_custom" in exc.remote_traceback
    assert list(pool.map(inc, range(20))) == list(range(1, 21))
    stats = pool.statistics()
    assert stats["crashed"] == 2 and stats["timed_out"] == 1 and stats["cancelled_running"] == 1, stats
    pids = pool.pids()
assert not any(alive(p) for p in pids), pids
print("OK")
""")
    assert out.strip().endswith("OK")
