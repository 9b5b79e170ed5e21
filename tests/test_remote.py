"""RemotePool on a real Dask cluster: a `dask scheduler` and two `dask worker` processes on 127.0.0.1.

One cluster serves the module (start-up costs ~2 s); the tests that destroy a
cluster (scheduler killed, no worker left) start their own.
"""
import concurrent.futures
import gc
import os
import signal
import threading
import time

import gevent
import gevent.socket
import psutil
import pytest

from packet_gevent import (Connection, PoolBroken, PoolClosed, Reactor, RemotePool,
                           SerializationError, TaskTimeout, WorkerCrashed)
from packet_gevent.pool.dask_cluster import LocalDaskCluster
from tests.conftest import alive, client, open_fds, recv_exactly, run_script, wait_for

pytestmark = pytest.mark.timeout(60)


# -- task functions (this module travels to the workers by value) ---------------------------------

def add(a, b=0):
    return a + b


def where():
    return os.getpid()


def nap(seconds, value=None):
    time.sleep(seconds)
    return value


class CustomError(Exception):
    pass


def fail(message):
    raise CustomError(message)


def kill_my_worker():
    os.kill(os.getpid(), signal.SIGKILL)


def note_pid_then_nap(path, seconds):
    """Writes 'pid' to ``path`` (the first run) or appends it (a re-run), then naps."""
    with open(path, "a") as fh:
        fh.write(f"{os.getpid()}\n")
    time.sleep(seconds)
    return os.getpid()


def burn(n):
    total = 0
    for i in range(n):
        total += i * i
    return total


# -- fixtures ---------------------------------------------------------------------------------

def tree(pid):
    """``pid`` and its live descendants."""
    try:
        proc = psutil.Process(pid)
        return [proc] + proc.children(recursive=True)
    except psutil.NoSuchProcess:
        return []


# The module's client opens connections to the workers on demand (Dask's connection
# pool), so the per-test fd check is off here; the module's own teardown checks instead
# that everything the cluster and its pool opened is closed.
pytestmark = pytest.mark.fds_owned_by_module


@pytest.fixture(scope="module")
def cluster():
    # gevent's resolver thread (and its hub's descriptors) lives on after the first name
    # lookup: start it before the snapshot, it is gevent's, not the module's.
    gevent.socket.getaddrinfo("localhost", 0)
    fds_before = open_fds()
    c = LocalDaskCluster(2, allowed_failures=1)
    c.start()
    procs = tree(c.scheduler.pid) + tree(c.worker.pid)
    try:
        yield c
    finally:
        c.stop()
        gone, left = psutil.wait_procs(procs, timeout=10)
        assert not left, f"cluster processes left behind: {left}"
        deadline = time.monotonic() + 5
        while set(open_fds()) - set(fds_before) and time.monotonic() < deadline:
            gevent.sleep(0.01)
        left_open = {fd: target for fd, target in open_fds().items() if fd not in fds_before}
        assert not left_open, f"descriptors the module opened are still open: {left_open}"


@pytest.fixture(scope="module")
def shared_pool(cluster):
    pool = RemotePool(cluster.address, min_workers=2)
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, timeout=10)


@pytest.fixture
def pool(shared_pool):
    """The module's pool; after each test both workers are back and nothing is unfinished."""
    yield shared_pool
    assert shared_pool.join(timeout=20), f"{len(shared_pool)} tasks unfinished after the test"
    shared_pool.wait_for_workers(2, timeout=30)


# -- results and exceptions ---------------------------------------------------------------------

def test_results_through_every_api_name(pool):
    assert pool.submit(add, 1, b=2).result(timeout=10) == 3
    assert list(pool.map(add, range(50), range(50))) == [2 * i for i in range(50)]
    assert pool.apply(add, (4, 5)) == 9
    assert pool.spawn(add, 1, 1).get(timeout=10) == 2
    got = []
    assert pool.apply_async(add, (2, 2), callback=got.append).get(timeout=10) == 4 and got == [4]
    assert list(pool.imap(add, range(20), range(20), maxsize=4)) == [2 * i for i in range(20)]
    assert sorted(pool.imap_unordered(add, range(20))) == list(range(20))
    assert len(pool) == 0


def test_identical_calls_each_run(pool, tmp_path):
    # pure=False: the same call twice is two tasks (Dask would otherwise share one key)
    path = str(tmp_path / "runs")
    first, second = pool.submit(note_pid_then_nap, path, 0.2), pool.submit(note_pid_then_nap, path, 0.2)
    assert {first.result(10), second.result(10)} <= set(pool.worker_pids().values())
    with open(path) as fh:
        assert len(fh.read().split()) == 2
    pids = set(pool.map(lambda _: where(), range(8)))  # a lambda travels too (cloudpickle)
    assert pids <= set(pool.worker_pids().values())


def test_exception_keeps_its_type_and_remote_traceback(pool):
    future = pool.submit(fail, "bad input")
    with pytest.raises(CustomError, match="bad input") as info:
        future.result(timeout=10)
    assert "fail" in info.value.remote_traceback and "raise CustomError" in info.value.remote_traceback
    assert isinstance(future.exception(), CustomError)
    with pytest.raises(ZeroDivisionError):
        pool.apply(divmod, (1, 0))


def give_a_lock():
    return threading.Lock()


def test_what_cannot_be_pickled_fails_its_own_future_with_serialization_error(pool):
    with pytest.raises(SerializationError, match="could not send"):
        pool.submit(add, threading.Lock()).result(timeout=10)
    with pytest.raises(SerializationError, match="result could not be sent back"):
        pool.submit(give_a_lock).result(timeout=10)
    assert pool.submit(add, 1, 1).result(timeout=10) == 2


def test_a_real_thread_submits_and_waits(pool):
    got = []
    thread = threading.Thread(target=lambda: got.append(pool.submit(add, 40, 2).result(timeout=10)))
    thread.start()
    wait_for(lambda: not thread.is_alive(), 15, "the thread to get its result")
    assert got == [42]


def test_timeout_fails_the_future_and_cancel_cancels(pool):
    started = time.monotonic()
    with pytest.raises(TaskTimeout, match="within 0.3 s"):
        pool.schedule(nap, (2,), timeout=0.3).result(timeout=10)
    assert time.monotonic() - started < 1.8
    future = pool.submit(nap, 2)
    assert future.running() and future.cancel()
    with pytest.raises(concurrent.futures.CancelledError):
        future.result(timeout=1)
    assert pool.submit(add, 1, 1).result(timeout=10) == 2


def test_a_worker_sigkilled_mid_task_gets_the_task_rerun(pool, tmp_path):
    path = tmp_path / "runs"
    future = pool.submit(note_pid_then_nap, str(path), 1.0)
    wait_for(lambda: path.exists() and path.read_text().endswith("\n"), 10, "the task to start")
    victim = int(path.read_text().split()[0])
    assert victim in pool.worker_pids().values()
    os.kill(victim, signal.SIGKILL)
    finished_on = future.result(timeout=30)
    runs = [int(line) for line in path.read_text().split()]
    assert finished_on != victim and runs == [victim, finished_on]


def test_a_task_that_keeps_killing_workers_ends_in_worker_crashed(pool):
    # allowed_failures=1: the first death re-runs it, the second gives up
    with pytest.raises(WorkerCrashed, match="every Dask worker that ran it died"):
        pool.submit(kill_my_worker).result(timeout=40)


def test_1000_greenlets_wait_at_once_and_the_hub_stays_responsive(pool):
    lateness = []
    stop = []

    def ticker():
        while not stop:
            before = time.perf_counter()
            gevent.sleep(0.005)
            lateness.append(time.perf_counter() - before - 0.005)

    tick = gevent.spawn(ticker)
    waiters = [gevent.spawn(lambda i: pool.submit(add, i, 1).result(timeout=40), i)
               for i in range(1000)]
    gevent.joinall(waiters, timeout=50, raise_error=True)
    stop.append(True)
    tick.join(1)
    assert [w.value for w in waiters] == [i + 1 for i in range(1000)]
    lateness.sort()
    p99 = lateness[int(len(lateness) * 0.99)]
    assert len(lateness) > 20 and p99 < 0.05, (len(lateness), p99, lateness[-1])


def test_a_greenlet_submitting_thousands_does_not_stall_the_hub(pool):
    gaps = []
    submitting = []

    def ticker():
        while not submitting or submitting[-1]:
            before = time.perf_counter()
            gevent.sleep(0.001)
            if submitting:
                gaps.append(time.perf_counter() - before)

    tick = gevent.spawn(ticker)
    gevent.sleep(0.01)
    # A full collection over this process (Dask's objects, pytest's) takes 60-500 ms
    # and is not what is measured here.
    gc.disable()
    try:
        submitting.append(True)
        futures = [pool.submit(add, i, 1) for i in range(4000)]  # 15-40 ms unbroken without yields
        submitting.append(False)
        tick.join(2)
    finally:
        gc.enable()
    for future in futures:  # not worth running them all
        future.cancel()
    assert pool.join(timeout=10)
    # The ticker ran between bursts of SUBMIT_BURST submits (without the yields it
    # runs once, after the last submit); the bound on a gap is loose for a loaded machine.
    assert len(gaps) >= 4 and max(gaps) < 0.06, (len(gaps), max(gaps))


def test_submit_after_shutdown_raises_pool_closed(cluster):
    fds = len(os.listdir("/proc/self/fd"))
    threads = len(os.listdir("/proc/self/task"))
    pool = RemotePool(cluster.address)
    assert pool.submit(add, 2, 3).result(timeout=10) == 5
    pool.shutdown()
    with pytest.raises(PoolClosed):
        pool.submit(add, 1, 1)
    pool.shutdown()  # twice is harmless
    assert len(os.listdir("/proc/self/fd")) <= fds  # the client's sockets, loop, watcher: closed
    # the client's OS thread ends (it reported stopping just before it returns)
    wait_for(lambda: len(os.listdir("/proc/self/task")) <= threads, 5, "the client thread to end")


def test_shutdown_without_wait_lets_tasks_finish_and_kill_fails_them(cluster):
    pool = RemotePool(cluster.address)
    running = pool.submit(nap, 0.5, "done")
    pool.shutdown(wait=False)
    with pytest.raises(PoolClosed):
        pool.submit(add, 1, 1)
    assert running.result(timeout=10) == "done"
    assert pool._down.wait(10), "the pool did not disconnect after its last task"

    pool = RemotePool(cluster.address)
    doomed = [pool.submit(nap, 2) for _ in range(3)]
    started = time.monotonic()
    pool.kill()
    for future in doomed:
        with pytest.raises(PoolClosed, match="killed"):
            future.result(timeout=2)
    assert time.monotonic() - started < 2
    pool.shutdown(wait=True, timeout=10)  # waits for kill's disconnect
    assert pool._down.is_set() and len(pool) == 0


def test_no_scheduler_at_the_address_is_a_clear_error_within_the_bound():
    import socket
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(ConnectionError, match=f"could not connect to the Dask scheduler at "
                                              f"tcp://127.0.0.1:{port}"):
        RemotePool(f"tcp://127.0.0.1:{port}", connect_timeout=1)
    assert time.monotonic() - started < 6


def test_the_cluster_listens_on_loopback_only(cluster, pool):  # pool: the workers are up
    listening = [(proc.pid, c.laddr) for proc in tree(cluster.scheduler.pid) + tree(cluster.worker.pid)
                 for c in proc.net_connections("inet") if c.status == psutil.CONN_LISTEN]
    # the scheduler (+ dashboard), each worker and nanny (+ dashboards)
    assert len(listening) >= 6, listening
    assert all(addr.ip == "127.0.0.1" for _, addr in listening), listening


def _use_the_pool_in_a_forked_child(sock, pool):
    value = pool.submit(add, 40, 2).result(timeout=20)
    pool.shutdown()  # the child's own client; the parent's pool and cluster are untouched
    sock.sendall(f"{value}\n".encode())
    return 0


def test_a_forked_child_gets_its_own_client(pool):
    from packet_gevent.ipc.process import spawn_child
    assert pool.submit(add, 1, 1).result(timeout=10) == 2
    child = spawn_child(_use_the_pool_in_a_forked_child, name="remote-child", args=(pool,))
    try:
        assert child.wait(30), "the child did not finish"
        assert child.exitcode == 0, child.describe_exit()
        child.sock.setblocking(True)
        assert child.sock.recv(100) == b"42\n"
    finally:
        child.kill()
        child.wait(5)
        child.sock.close()
    assert pool.submit(add, 2, 2).result(timeout=10) == 4


def _submit_a_large_argument_in_a_forked_child(sock, pool):
    value = pool.submit(len, b"x" * (11 << 20)).result(timeout=20)
    pool.shutdown()
    sock.sendall(f"{value}\n".encode())
    return 0


@pytest.mark.filterwarnings("ignore:Sending large graph:UserWarning")
def test_a_forked_child_sends_a_large_argument_after_the_parent_did(pool):
    # Dask serializes a message over 10 MiB on its one "offload" thread; a
    # parent that used it forks a child whose executor believes that thread
    # exists, so the child's first large submit waited forever.
    from packet_gevent.ipc.process import spawn_child
    assert pool.submit(len, b"y" * (11 << 20)).result(timeout=20) == 11 << 20
    child = spawn_child(_submit_a_large_argument_in_a_forked_child, name="remote-large",
                        args=(pool,))
    try:
        assert child.wait(40), "the child's large submit did not finish"
        assert child.exitcode == 0, child.describe_exit()
        child.sock.setblocking(True)
        assert child.sock.recv(100) == f"{11 << 20}\n".encode()
    finally:
        child.kill()
        child.wait(5)
        child.sock.close()


# -- the Reactor façade ------------------------------------------------------------------------------

class Squarer(Connection):
    def receive_data(self, data):
        for line in data.decode().split():
            if line == "fail":
                self.defer(fail, "no")
            elif line == "nap":
                self.defer(nap, 0.5, "slept")
            else:
                self.defer(burn, int(line))

    def worker_receive(self, reply):
        if reply["type"] == "response":
            self.send_data(f"{reply['data']}\n".encode())
        else:
            self.send_data(f"error {reply['error']}\n".encode())


def test_reactor_defer_runs_on_the_cluster_and_stop_shuts_the_pool(cluster):
    pool = RemotePool(cluster.address)
    reactor = Reactor(pool=pool)
    reactor.start()
    try:
        server = reactor.start_server("127.0.0.1", 0, Squarer)
        sock = client(server)
        sock.sendall(b"10\n")
        assert recv_exactly(sock, 4) == b"285\n"
        sock.sendall(b"fail\n")
        assert recv_exactly(sock, len(b"error CustomError: no\n")) == b"error CustomError: no\n"
        sock.sendall(b"nap\n")  # in flight while the reactor stops: stop waits for it
        wait_for(lambda: len(pool) == 1, 10, "the deferred nap to reach the pool")
    finally:
        reactor.stop(timeout=10)
    assert recv_exactly(sock, 6) == b"slept\n"
    sock.close()
    with pytest.raises(PoolClosed):
        pool.submit(add, 1, 1)


# -- losing the cluster --------------------------------------------------------------------------

def test_no_worker_left_then_scheduler_lost_fail_pending_futures_within_the_bound():
    pool = RemotePool(workers=1, no_worker_timeout=1.0, scheduler_timeout=1.0)
    cluster = pool.cluster
    workers = tree(cluster.worker.pid)
    procs = tree(cluster.scheduler.pid) + workers
    try:
        assert pool.submit(add, 1, 1).result(timeout=10) == 2
        # every worker gone (the launcher and its workers): tasks fail, they do not hang
        cluster.worker.kill(signal.SIGKILL)
        gone, left = psutil.wait_procs(workers, timeout=15)
        assert not left, f"worker processes outlived their launcher: {left}"
        started = time.monotonic()
        waiting = pool.submit(add, 2, 2)
        with pytest.raises(WorkerCrashed, match="no Dask worker left"):
            waiting.result(timeout=15)
        # the bound: the scheduler's news (~2 s) + no_worker_timeout (1 s) + slack for load
        assert time.monotonic() - started < 8
        # the scheduler killed: pending futures fail with PoolBroken, and so does submit
        pending = [pool.submit(nap, 30) for _ in range(3)]
        cluster.scheduler.kill(signal.SIGKILL)
        started = time.monotonic()
        for future in pending:
            with pytest.raises(PoolBroken):
                future.result(timeout=10)
        assert time.monotonic() - started < 5
        with pytest.raises(PoolBroken, match="lost the Dask scheduler"):
            wait_for(lambda: pool.submit(add, 1, 1) and False, 10, "submit to raise PoolBroken")
    finally:
        pool.shutdown(wait=True, timeout=10)
    gone, left = psutil.wait_procs(procs, timeout=10)
    assert not left, left
    assert not any(alive(p.pid) for p in procs)


# -- patch_all -------------------------------------------------------------------------------------

def test_under_patch_all_in_a_subprocess():
    done = run_script("""
from gevent import monkey; monkey.patch_all()
import time, threading, gevent
from packet_gevent import RemotePool, TaskTimeout
from tests.test_remote import add, fail, nap, CustomError, tree
if __name__ == "__main__":
    with RemotePool(workers=1) as pool:
        procs = tree(pool.cluster.scheduler.pid) + tree(pool.cluster.worker.pid)
        assert pool.submit(add, 1, 2).result(timeout=10) == 3
        assert list(pool.map(add, range(30))) == list(range(30))
        try:
            pool.apply(fail, ("x",)); raise SystemExit("no error")
        except CustomError:
            pass
        try:
            pool.schedule(nap, (1,), timeout=0.2).result(10); raise SystemExit("no timeout")
        except TaskTimeout:
            pass
        ticks = []
        g = gevent.spawn(lambda: [ticks.append(time.perf_counter()) or gevent.sleep(0.005)
                                  for _ in range(100)])
        assert pool.submit(nap, 0.5, "ok").result(timeout=10) == "ok"
        g.join()
        gaps = [b - a for a, b in zip(ticks, ticks[1:])]
        assert max(gaps) < 0.1, max(gaps)
        t = threading.Thread(target=lambda: print("thread", pool.submit(add, 41, 1).result(timeout=10)))
        t.start(); t.join(10)
    import psutil
    gone, left = psutil.wait_procs(procs, timeout=10)
    assert not left, left
    print("OK")
""", timeout=50)
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    assert "thread 42" in done.stdout and done.stdout.strip().endswith("OK")


# -- the demo -------------------------------------------------------------------------------------

def test_demo_runs_a_batch_on_the_cluster_while_the_hub_serves(cluster):
    import subprocess
    import sys
    from tests.conftest import ROOT
    done = subprocess.run([sys.executable, "-m", "demos.remote_pool", "--scheduler", cluster.address,
                           "--tasks", "8", "--work-ms", "20"], cwd=ROOT, capture_output=True,
                          text=True, timeout=50, env=dict(os.environ, PYTHONPATH=ROOT))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"RemotePool on {cluster.address}"), lines
    assert "8 tasks of ~20 ms CPU" in lines[1] and "tasks/s" in lines[1], lines
    assert "pings" in lines[2] and "hub lateness" in lines[3], lines
