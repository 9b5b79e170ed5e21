"""ForkPool with real processes under plain gevent: the Executor and ThreadPool APIs, waiting."""
import concurrent.futures
import os
import threading
import time

import gevent
import gevent.event
import pytest

from packet_gevent import ForkPool, PoolClosed, WorkerCrashed
from packet_gevent.pool.futures import Future, TaskResult, as_completed, wait
from tests.conftest import assert_gone, wait_for


# -- tasks (module level: they travel by reference) ------------------------------------

def inc(x):
    return x + 1


def add(a, b=0, *, c=0):
    return a + b + c


def pid_of(_=None):
    return os.getpid()


def nap(seconds, value=None):
    time.sleep(seconds)
    return value


SHARED = {}  # a pool a task can reach (inherited through the fork)


def use_pool_inside():
    return SHARED["pool"].apply(inc, (41,))


def submit_inside():
    try:
        SHARED["pool"].submit(inc, 1)
    except RuntimeError as exc:
        return str(exc)
    return "no error"


# -- fixtures ------------------------------------------------------------------------------



# -- Executor API ---------------------------------------------------------------------------

def test_submit_returns_a_concurrent_future(pool):
    future = pool.submit(add, 1, 2, c=3)
    assert isinstance(future, concurrent.futures.Future)
    assert future.result(timeout=10) == 6
    assert future.done() and not future.cancelled() and future.exception() is None


def test_tasks_run_in_the_pool_processes(pool):
    pids = {pool.submit(pid_of).result(timeout=10) for _ in range(20)}
    assert os.getpid() not in pids
    assert pids <= set(pool.pids())
    assert len(pool.pids()) == 2


def test_map_in_order_with_chunks_and_several_iterables(pool):
    assert list(pool.map(inc, range(500))) == list(range(1, 501))
    assert list(pool.map(add, range(50), range(50), chunksize=7)) == [2 * i for i in range(50)]
    assert list(pool.map(inc, [])) == []


def test_map_timeout_bounds_the_iteration(pool):
    results = pool.map(nap, [0.0, 2.0], timeout=0.3)
    assert next(results) is None
    with pytest.raises(concurrent.futures.TimeoutError):  # the builtin on 3.11+
        next(results)


def test_context_manager_shuts_down_and_leaves_no_process():
    with ForkPool(2) as p:
        assert p.submit(inc, 1).result(timeout=10) == 2
        pids = p.pids()
    assert_gone(pids)
    with pytest.raises(PoolClosed, match="shut down"):
        p.submit(inc, 1)


def test_shutdown_waits_for_queued_tasks_and_cancel_futures_drops_them():
    p = ForkPool(1)
    slow = p.submit(nap, 0.3, "slow")
    queued = [p.submit(inc, i) for i in range(5)]
    p.shutdown(wait=True)
    assert slow.result(0) == "slow" and [f.result(0) for f in queued] == [1, 2, 3, 4, 5]

    p = ForkPool(1)
    first = p.submit(nap, 0.3, "first")
    wait_for(lambda: first.running(), message="the first task to be sent")
    later = p.schedule(inc, (1,))
    p.shutdown(wait=True, cancel_futures=True)
    assert first.result(0) == "first"
    assert later.cancelled() or later.result(0) == 2  # cancelled unless already sent


def test_shutdown_timeout_kills_a_task_that_does_not_finish():
    p = ForkPool(1)
    stuck = p.submit(nap, 30)
    wait_for(lambda: p.statistics()["in_flight"] == 1, message="the task to be sent")
    pids = p.pids()
    t0 = time.monotonic()
    p.shutdown(wait=True, timeout=0.3)
    assert time.monotonic() - t0 < 5
    with pytest.raises(PoolClosed, match="shut down"):
        stuck.result(0)
    assert_gone(pids)


# -- gevent ThreadPool names -------------------------------------------------------------------

def test_spawn_returns_an_asyncresult_like_object(pool):
    result = pool.spawn(add, 2, b=3)
    assert isinstance(result, TaskResult)
    assert result.get(timeout=10) == 5
    assert result.ready() and result.successful() and result.value == 5
    assert result.exception is None
    failed = pool.spawn(int, "x")
    failed.wait(10)
    assert not failed.successful() and isinstance(failed.exception, ValueError)
    with pytest.raises(ValueError):
        failed.get()


def test_asyncresult_get_timeout_raises_gevent_timeout(pool):
    result = pool.spawn(nap, 1.0)
    with pytest.raises(gevent.Timeout):
        result.get(timeout=0.05)
    with pytest.raises(gevent.Timeout):
        result.get(block=False)


def test_apply_and_apply_async_with_callback(pool):
    assert pool.apply(add, (1, 2), {"c": 3}) == 6
    got = gevent.event.AsyncResult()
    result = pool.apply_async(add, (4,), {"b": 5}, callback=got.set)
    assert result.get(timeout=10) == 9
    assert got.get(timeout=10) == 9


def test_imap_and_imap_unordered(pool):
    assert list(pool.imap(inc, range(300))) == list(range(1, 301))
    assert list(pool.imap(add, range(10), range(10), maxsize=3)) == [2 * i for i in range(10)]
    assert sorted(pool.imap_unordered(add, range(100), range(100))) == [2 * i for i in range(100)]


def test_imap_unordered_yields_in_completion_order():
    with ForkPool(2) as fresh:  # no tasks measured yet: one task in flight per process
        unordered = list(fresh.imap_unordered(nap, [0.5, 0.0, 0.0], [1, 2, 3]))
    assert sorted(unordered) == [1, 2, 3] and unordered[-1] == 1


def test_imap_consumes_its_input_lazily(pool):
    taken = []

    def numbers():
        for i in range(100):
            taken.append(i)
            yield i

    results = pool.imap(inc, numbers(), maxsize=4)
    assert next(results) == 1
    assert len(taken) <= 6
    assert list(results) == list(range(2, 101))


def test_join_len_and_statistics(pool):
    futures = [pool.submit(nap, 0.05) for _ in range(4)]
    assert len(pool) == 4
    assert pool.join(timeout=10)
    assert len(pool) == 0 and all(f.done() for f in futures)
    stats = pool.statistics()
    assert stats["completed"] >= 4 and stats["unfinished"] == 0 and len(stats["processes"]) == 2


def test_apply_inside_a_pool_process_runs_inline_and_submit_refuses():
    with ForkPool(1) as pool:
        SHARED["pool"] = pool  # before the first submit forks the process
        try:
            assert pool.apply(use_pool_inside) == 42
            assert "cannot submit" in pool.apply(submit_inside)
        finally:
            SHARED.clear()


# -- waiting blocks only the calling greenlet -------------------------------------------------------

def test_a_1ms_ticker_keeps_ticking_while_a_greenlet_waits_on_a_1s_task(pool):
    pool.submit(inc, 0).result(timeout=10)  # processes started
    ticks = []
    stop = gevent.event.Event()

    def ticker():
        while not stop.is_set():
            ticks.append(time.perf_counter())
            gevent.sleep(0.001)

    ticking = gevent.spawn(ticker)
    t0 = time.perf_counter()
    assert pool.submit(nap, 1.0, "done").result(timeout=10) == "done"
    elapsed = time.perf_counter() - t0
    stop.set()
    ticking.join()
    gaps = [b - a for a, b in zip(ticks, ticks[1:])]
    assert elapsed >= 1.0
    # ~1 tick per 1-2 ms (libev rounds timeouts to whole ms); generous for a shared machine.
    assert len(ticks) > 300, len(ticks)
    assert max(gaps) < 0.1, max(gaps)


def test_one_pool_used_by_100_greenlets_at_once(pool):
    def client(n):
        futures = [pool.submit(add, n, i) for i in range(20)]
        return [f.result(timeout=20) for f in futures] + list(pool.map(inc, [n] * 5))

    greenlets = [gevent.spawn(client, n) for n in range(100)]
    gevent.joinall(greenlets, timeout=30, raise_error=True)
    for n, g in enumerate(greenlets):
        assert g.value == [n + i for i in range(20)] + [n + 1] * 5


def test_gevent_wait_and_iwait_accept_futures(pool):
    futures = [pool.submit(nap, 0.01 * i, i) for i in range(5)]
    done = gevent.wait(futures, timeout=10)
    assert len(done) == 5
    futures = [pool.submit(nap, 0.2, "slow"), pool.submit(inc, 1)]
    first = next(gevent.iwait(futures, timeout=10))
    assert first is futures[1]


def test_cooperative_wait_and_as_completed(pool):
    futures = [pool.submit(nap, 0.3, "slow"), pool.submit(inc, 1)]
    done, not_done = wait(futures, timeout=10, return_when=concurrent.futures.FIRST_COMPLETED)
    assert futures[1] in done
    order = list(as_completed(futures, timeout=10))
    assert set(order) == set(futures)
    with pytest.raises(concurrent.futures.TimeoutError):  # the builtin on 3.11+
        list(as_completed([pool.submit(nap, 1.0)], timeout=0.05))


def test_done_callbacks_run_in_the_hub_once(pool):
    seen = []
    future = pool.submit(inc, 1)
    future.add_done_callback(lambda f: seen.append(("cb", f.result(0), gevent.getcurrent() is gevent.get_hub())))
    assert future.result(timeout=10) == 2
    wait_for(lambda: seen, message="the done callback")
    assert seen == [("cb", 2, True)]
    future.add_done_callback(lambda f: seen.append("late"))  # already done: now
    assert seen[-1] == "late"


def test_submit_and_wait_from_another_thread(pool):
    pool.submit(inc, 0).result(timeout=10)
    out = []

    def worker():
        future = pool.submit(add, 20, 22)
        out.append(future.result(timeout=10))
        # result() made a gevent hub in this thread, which nothing destroys when
        # the thread ends (2 fds each): the leak guard's finding, left to futures.py.
        gevent.get_hub().destroy(destroy_loop=True)

    assert _in_thread(worker)
    assert out == [42]


def _in_thread(fn):
    """Run ``fn`` in a thread while this hub runs on; True once it returned (within 10 s)."""
    loop, finished = gevent.get_hub().loop, gevent.event.Event()

    def run():
        try:
            fn()
        finally:
            loop.run_callback_threadsafe(finished.set)

    thread = threading.Thread(target=run)
    thread.start()
    ok = finished.wait(10)
    thread.join(10)
    return ok


def test_stdlib_wait_works_from_another_thread(pool):
    futures = [pool.submit(inc, i) for i in range(10)]
    out = []
    assert _in_thread(lambda: out.append(concurrent.futures.wait(futures, timeout=10)))
    done, not_done = out[0]
    assert len(done) == 10 and not not_done


def test_result_in_the_hub_is_refused_with_a_clear_error():
    future = Future()
    errors = []
    gevent.get_hub().loop.run_callback(lambda: _try_result(future, errors))
    wait_for(lambda: errors, message="the callback")
    assert "cannot wait for a pool task in the hub" in errors[0]


def _try_result(future, errors):
    try:
        future.result()
    except RuntimeError as exc:
        errors.append(str(exc))


def test_constructor_rejects_bad_settings():
    with pytest.raises(ValueError, match="size"):
        ForkPool(0)
    with pytest.raises(ValueError, match="max_tasks_per_child"):
        ForkPool(1, max_tasks_per_child=0)
    with pytest.raises(ValueError, match="serializer"):
        ForkPool(1, serializer="json")


def test_no_file_descriptor_leaks_across_pools():
    from tests.test_pool_faults import kill_self

    def open_fds():
        return len(os.listdir("/proc/self/fd"))

    with ForkPool(2) as warm:  # first use may open lasting descriptors (hub, resolver...)
        warm.submit(inc, 1).result(timeout=10)
    before = open_fds()
    for _ in range(5):
        with ForkPool(2, max_tasks_per_child=3) as p:
            assert list(p.map(inc, range(10))) == list(range(1, 11))
            with pytest.raises(WorkerCrashed):
                p.submit(kill_self).result(timeout=10)
            pids = p.pids()
        assert_gone(pids)
    wait_for(lambda: open_fds() <= before, message=f"descriptors back to {before}")


def test_a_group_whose_pickle_is_over_the_oob_threshold_travels_both_ways(pool):
    # The codec's pickle of a call (a 300 kB str argument, in band) and of its
    # result (the same str doubled) is itself sent out of band by the channel.
    text = "é" * 150_000
    assert pool.submit(str.__add__, text, text).result(timeout=10) == text * 2
    futures = [pool.submit(str.upper, text) for _ in range(8)]   # grouped: one big pickle
    assert all(f.result(timeout=10) == text.upper() for f in futures)
