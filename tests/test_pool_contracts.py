"""The contracts ForkPool promises: the Executor's, gevent ThreadPool's, and the futures'.

Each over real pool processes.  (The peers' own suites run in
tests/test_peer_cpython_futures.py and tests/test_peer_gevent_threadpool.py.)
"""
import concurrent.futures
import gc
import operator
import os
import threading
import time
import warnings
import weakref
from concurrent.futures._base import CANCELLED

import gevent
import gevent.fileobject
import pytest

from packet_gevent import ForkPool, Future, as_completed, wait
from packet_gevent.pool.api import PoolAPI
from tests.conftest import alive, run_script, wait_for


class Payload:
    """A result object the test can watch die (weakref-able)."""


def make_payload(_=None):
    return Payload()


def inverse(x):
    return 1 / x


def nap(seconds, value=None):
    time.sleep(seconds)
    return value


@pytest.fixture
def pool():
    p = ForkPool(2)
    try:
        yield p
    finally:
        p.shutdown(wait=True, cancel_futures=True, timeout=10)


# -- packet_gevent.futures.wait / as_completed ------------------------------------------------

def test_wait_returns_done_and_not_done_when_the_timeout_runs_out(pool):
    quick, slow = pool.submit(nap, 0, 1), pool.submit(nap, 5)
    quick.result(timeout=10)
    started = time.monotonic()
    done, not_done = wait([quick, slow], timeout=0.2)
    assert time.monotonic() - started < 2
    assert done == {quick} and not_done == {slow}
    slow.cancel()


def test_wait_does_not_count_a_cancelled_but_unnotified_future_as_done():
    unnotified = Future()
    unnotified._state = CANCELLED      # what the stdlib's cancel() leaves for its executor
    finished = Future()
    finished.set_result(1)
    done, not_done = wait([unnotified, finished], timeout=0.05)
    assert done == {finished} and not_done == {unnotified}
    # the executor's notification makes it done, and wakes a waiter
    waiter = gevent.spawn(wait, [unnotified], 10)
    gevent.sleep(0.01)
    assert not waiter.ready()
    assert unnotified.set_running_or_notify_cancel() is False
    done, not_done = waiter.get(timeout=10)
    assert done == {unnotified} and not not_done


def test_wait_first_exception_ignores_cancelled_futures(pool):
    cancelled = pool.submit(nap, 5)
    assert cancelled.cancel()
    failing = pool.submit(operator.truediv, 1, 0)
    slow = pool.submit(nap, 5)
    done, not_done = wait([cancelled, failing, slow], timeout=10,
                          return_when=concurrent.futures.FIRST_EXCEPTION)
    assert failing in done and slow in not_done
    slow.cancel()


def test_as_completed_keeps_no_reference_to_a_yielded_future(pool):
    finished = [pool.submit(make_payload) for _ in range(3)]
    for f in finished:
        f.result(timeout=10)
    del f
    pending = [pool.submit(nap, 5) for _ in range(2)]
    refs = []
    with pytest.raises(concurrent.futures.TimeoutError):  # the builtin on 3.11+
        for future in as_completed(finished + pending, timeout=0.3):
            finished.remove(future)
            refs.append(weakref.ref(future))
            del future
            assert refs[-1]() is None, "as_completed still holds the future it yielded"
    assert len(refs) == 3
    for f in pending:
        f.cancel()


# -- the stdlib's wait / as_completed on our futures, plain gevent --------------------------------

def test_stdlib_wait_and_as_completed_block_only_the_calling_greenlet(pool):
    ticks = []
    ticker = gevent.spawn(lambda: [ticks.append(gevent.sleep(0.01)) for _ in range(1000)])
    try:
        futures = [pool.submit(nap, 0.3, i) for i in range(2)]
        done, not_done = concurrent.futures.wait(futures, timeout=10)
        assert len(done) == 2 and not not_done
        assert len(ticks) >= 10, "the hub did not run while concurrent.futures.wait waited"
        before = len(ticks)
        results = [f.result() for f in concurrent.futures.as_completed(
            [pool.submit(nap, 0.2, i) for i in range(3)], timeout=10)]
        assert sorted(results) == [0, 1, 2] and len(ticks) > before
        slow = pool.submit(nap, 5)
        done, not_done = concurrent.futures.wait([slow], timeout=0.1)
        assert not done and not_done == {slow}
        slow.cancel()
    finally:
        ticker.kill()


def test_stdlib_wait_on_our_futures_from_another_thread(pool):
    future = pool.submit(nap, 0.1, "x")
    box = []
    thread = threading.Thread(target=lambda: box.append(concurrent.futures.wait([future], 10)))
    thread.start()
    assert future.result(timeout=10) == "x"
    wait_for(lambda: box, timeout=10, message="the thread's wait")
    thread.join(10)
    assert box[0].done == {future}


# -- references ------------------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["map", "map_chunked", "imap", "imap_unordered"])
def test_iterators_do_not_hold_the_last_yielded_result(pool, how):
    it = {"map": lambda: pool.map(make_payload, range(6)),
          "map_chunked": lambda: pool.map(make_payload, range(6), chunksize=4),
          "imap": lambda: pool.imap(make_payload, range(6)),
          "imap_unordered": lambda: pool.imap_unordered(make_payload, range(6))}[how]()
    count = 0
    for obj in it:
        ref = weakref.ref(obj)
        del obj
        gc.collect()
        assert ref() is None, f"{how} still holds the result it yielded"
        count += 1
    assert count == 6


def test_a_finished_future_keeps_neither_its_call_nor_its_process(pool):
    arg = Payload()
    arg_ref = weakref.ref(arg)
    future = pool.submit(operator.is_, arg, None)
    assert future.result(timeout=10) is False
    del arg
    gc.collect()
    assert arg_ref() is None, "the finished future keeps its arguments"
    assert future.fn is None and future.args is None and future.kwargs is None
    reachable = gc.get_referents(*gc.get_referents(future))
    assert not any(type(o).__name__ in ("PoolProcess", "_Started") for o in reachable)


# -- a pool dropped without shutdown ------------------------------------------------------------------

def test_a_dropped_pool_is_collected_and_its_processes_exit():
    pool = ForkPool(2)
    assert pool.submit(operator.add, 1, 2).result(timeout=10) == 3
    pids = pool.pids()
    assert len(pids) == 2
    ref = weakref.ref(pool)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del pool
        gc.collect()
    assert ref() is None, "the hub's watchers keep the dropped ForkPool alive"
    assert any(issubclass(w.category, ResourceWarning) and "shutdown()" in str(w.message)
               for w in caught), [str(w.message) for w in caught]
    wait_for(lambda: not any(alive(pid) for pid in pids), timeout=10,
             message="the dropped pool's processes to exit")


def test_a_dropped_pool_finishes_its_unfinished_tasks_first():
    pool = ForkPool(1)
    future = pool.submit(nap, 0.2, "done")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        del pool
        gc.collect()
    assert future.result(timeout=10) == "done"


# -- interpreter exit -------------------------------------------------------------------------------

@pytest.mark.parametrize("patched", [False, True], ids=["plain", "patch_all"])
def test_pending_tasks_run_before_the_program_exits(patched):
    done = run_script(("from gevent import monkey; monkey.patch_all()\n" if patched else "") + """
        from packet_gevent import ForkPool
        p = ForkPool(1)
        p.submit(print, "x", flush=True)
        q = ForkPool(1)
        import time
        q.submit(time.sleep, 0.2)
        q.submit(print, "after shutdown(wait=False)", flush=True)
        q.shutdown(wait=False)
    """.replace("\n        ", "\n"))
    assert done.returncode == 0, done.stderr
    # two pools: their outputs may come in either order
    assert sorted(done.stdout.splitlines()) == ["after shutdown(wait=False)", "x"], done.stdout


@pytest.mark.parametrize("patched", [False, True], ids=["plain", "patch_all"])
def test_submit_from_an_atexit_hook_raises_runtime_error(patched):
    done = run_script(("from gevent import monkey; monkey.patch_all()\n" if patched else "") + """
import atexit
from packet_gevent import ForkPool
p = ForkPool(1)
def late():
    try:
        p.submit(print, "never")
    except RuntimeError as exc:
        print("refused:", exc, flush=True)
atexit.register(late)
p.submit(print, "ran", flush=True)
""")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "ran" and lines[1].startswith("refused: ") and \
        "interpreter shutdown" in lines[1], done.stdout
    assert "never" not in done.stdout


# -- gevent ThreadPool semantics ----------------------------------------------------------------------

def test_apply_async_get_returns_after_the_callback_ran(pool):
    seen = []

    def slow_callback(value):
        gevent.sleep(0.05)
        seen.append(value)

    result = pool.apply_async(operator.add, (1, 2), callback=slow_callback)
    assert result.get(timeout=10) == 3
    assert seen == [3]
    assert result.ready() and result.successful()


def test_apply_async_callback_error_reaches_get_and_failures_skip_the_callback(pool):
    def bad_callback(value):
        raise KeyError(value)

    with pytest.raises(KeyError):
        pool.apply_async(operator.add, (1, 2), callback=bad_callback).get(timeout=10)
    called = []
    with pytest.raises(ZeroDivisionError):
        pool.apply_async(operator.truediv, (1, 0), callback=called.append).get(timeout=10)
    assert called == []


def test_apply_async_with_callback_can_be_cancelled(pool):
    called = []
    result = pool.apply_async(nap, (5,), callback=called.append)
    assert result.cancel()
    with pytest.raises(concurrent.futures.CancelledError):
        result.get(timeout=10)
    assert pool.join(timeout=10) and called == []


def test_map_async(pool):
    seen = []
    result = pool.map_async(abs, [-1, -2, -3], callback=seen.append)
    assert result.get(timeout=10) == [1, 2, 3]
    assert seen == [[1, 2, 3]]
    with pytest.raises(ZeroDivisionError):
        pool.map_async(inverse, [1, 0]).get(timeout=10)


def test_size_and_maxsize_are_read_only(pool):
    assert pool.size == 2 and pool.maxsize == 2
    with pytest.raises(AttributeError, match="fixed"):
        pool.maxsize = 0
    with pytest.raises(AttributeError, match="fixed"):
        pool.size = 4
    assert pool.size == 2 and pool.maxsize == 2
    assert pool.apply(operator.add, (1, 1)) == 2


def test_forkpool_is_a_poolapi_and_an_executor(pool):
    assert isinstance(pool, PoolAPI) and isinstance(pool, concurrent.futures.Executor)


# -- gevent's hub.threadpool -----------------------------------------------------------------------------

def test_a_forkpool_refuses_to_be_the_hubs_threadpool(tmp_path):
    hub = gevent.get_hub()
    pool = ForkPool(1)
    path = tmp_path / "f.txt"
    path.write_text("hello")
    raw, raw2 = open(path, "rb"), open(path, "rb")
    try:
        hub.threadpool = pool
        with pytest.raises(TypeError, match="separate ForkPool"):
            gevent.fileobject.FileObjectThread(raw, close=False).read()
        with pytest.raises(TypeError, match="separate ForkPool"):
            pool.apply(os.getpid)
        assert pool.submit(os.getpid).result(timeout=10) != os.getpid()  # still a working pool
        del hub.threadpool  # gevent's own comes back
        assert gevent.fileobject.FileObjectThread(raw2, "rb", close=False).read() == b"hello"
        assert pool.apply(os.getpid) != os.getpid()
    finally:
        raw.close()
        raw2.close()
        if hub._threadpool is pool:
            del hub.threadpool
        pool.shutdown(wait=True)
