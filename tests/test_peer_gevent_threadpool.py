"""gevent's ThreadPool API tests, run against ForkPool.

Adapted from gevent 26.9.0, src/gevent/tests/test__threadpool.py.
Copyright (c) 2009-2015 Denis Bilenko and gevent contributors; used under
the MIT License (https://github.com/gevent/gevent/blob/master/LICENSE):
"Permission is hereby granted, free of charge, to any person obtaining a
copy of this software ... The above copyright notice and this permission
notice shall be included in all copies or substantial portions of the
Software."  The test bodies are gevent's; every change is marked
``ADAPTED`` with its reason.  Adaptations common to all:

* the pool is ``ForkPool(size)``; the tests' lambdas, closures and bound
  methods of the TestCase become module-level functions (pickle sends
  functions by reference; ``serializer='cloudpickle'`` would send them too,
  but the default is what users get);
* ``gevent.testing.TestCase`` is replaced by ``unittest.TestCase`` with the
  two timing helpers these tests use;
* ``pool.map`` is the Executor's (an iterator: ``MAP_IS_GEN`` as in
  gevent's own TestTPE).

Left out, with the reason: ``test_greenlet_class``, TestThreadResult,
TestBeforeRunTaskFailure and TestWorkerProfileAndTrace read ThreadPool
internals (``_WorkerGreenlet``, ``ThreadResult``, worker profile hooks);
``test_execute_async`` asserts on a list that the tasks append to in the
caller's memory (shared memory: a pool process appends to its own copy).
TestMaxsize and TestSize assert a resizable pool; ForkPool's size is fixed,
so they assert the documented difference instead (ADAPTED).  The same
classes run after ``gevent.monkey.patch_all()`` in a fresh interpreter.
Differences that remain are listed in the README (ForkPool section).
"""
import gc
import os
import random
import subprocess
import sys
import unittest
import weakref
from time import sleep, time

import gevent
import pytest
from gevent import monkey

from packet_gevent import ForkPool

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class ExpectedException(Exception):
    """gevent.testing.ExpectedException."""


class TestCase(unittest.TestCase):
    pool = None
    _all_pools = ()

    ClassUnderTest = ForkPool

    def _FUT(self):
        return self.ClassUnderTest

    def _makeOne(self, maxsize, create_all_worker_threads=False):
        self.pool = pool = self._FUT()(maxsize)
        self._all_pools += (pool,)
        return pool

    def tearDown(self):
        self.pool = None
        all_pools, self._all_pools = self._all_pools, ()
        for pool in all_pools:
            pool.kill()  # ADAPTED: gevent's cleanup(); kill() then reap the processes
            pool.shutdown(wait=True)
        super().tearDown()

    # gevent.testing.TestCase's timing helpers
    def assertTimeoutAlmostEqual(self, first, second, places=None, msg=None, delta=None):
        # ADAPTED: gevent turns a miss into a skipped "flaky" test; here the wait
        # must not end early (0.05 s tolerance, as places=1) and may end up to
        # 0.5 s late (a shared, loaded 2-core machine)
        self.assertGreaterEqual(first, second - 0.05, msg)
        self.assertLess(first, second + 0.5, msg)

    def assertEqualFlakyRaceCondition(self, a, b):
        self.assertEqual(a, b)


# -- module-level stand-ins for the tests' lambdas and closures (ADAPTED) ------------------------

def foo_pair(a):
    return ('foo', a)


def raiser():
    raise ExpectedException()


def ignore(_x):
    return None


def sleep_n_log(item, seconds):
    sleep(seconds)
    return item


def say_hi():
    return "Hi"


def sleep_tenths(x):
    """The TestCase's ``self.sleep``."""
    sleep(float(x) / 10.0)
    return str(x)


RECURSIVE_POOL = None
SECOND_POOL = None


def recursive_a():
    return RECURSIVE_POOL.apply(recursive_b)


def recursive_b():
    # make sure we can do both types of callbacks
    # (loop iteration and end-of-loop) in the recursive
    # call
    gevent.sleep()
    gevent.sleep(0.001)
    return "B"


def spawn_on_second_pool():
    SECOND_POOL.spawn(say_hi)


def fourty_two_after_a_while():
    sleep(0.5)  # ADAPTED: gevent.sleep(0.5) in gevent's thread; a pool process has no hub
    return 42


class PoolBasicTests(TestCase):

    @unittest.skip("needs shared memory: the tasks append to a list in the caller's process")
    def test_execute_async(self):
        pass

    def test_apply(self):
        pool = self._makeOne(1)
        result = pool.apply(foo_pair, (1, ))
        self.assertEqual(result, ('foo', 1))

    def test_apply_raises(self):
        pool = self._makeOne(1)

        with self.assertRaises(ExpectedException):
            pool.apply(raiser)

    def test_init_valueerror(self):
        with self.assertRaises(ValueError):
            self._makeOne(-1)


#
# tests from standard library test/test_multiprocessing.py


class TimingWrapper(object):

    def __init__(self, the_func):
        self.func = the_func
        self.elapsed = None

    def __call__(self, *args, **kwds):
        t = time()
        try:
            return self.func(*args, **kwds)
        finally:
            self.elapsed = time() - t


def sqr(x, wait=0.0):
    sleep(wait)
    return x * x


def sqr_random_sleep(x):
    sleep(random.random() * 0.1)
    return x * x


TIMEOUT1, TIMEOUT2, TIMEOUT3 = 0.082, 0.035, 0.14


class _AbstractPoolTest(TestCase):

    size = 1

    MAP_IS_GEN = True  # ADAPTED: ForkPool.map is the Executor's

    def setUp(self):
        super().setUp()
        self._makeOne(self.size)

    def test_map(self):
        pmap = self.pool.map
        if self.MAP_IS_GEN:
            pmap = lambda f, i: list(self.pool.map(f, i))  # noqa: E731
        self.assertEqual(pmap(sqr, range(10)), list(map(sqr, range(10))))
        self.assertEqual(pmap(sqr, range(100)), list(map(sqr, range(100))))

        self.pool.kill()
        del self.pool
        del pmap


SMALL_RANGE = 10
LARGE_RANGE = 1000


class TestPool(_AbstractPoolTest):

    @unittest.skip("reads ThreadPool internals (gevent.threadpool._WorkerGreenlet)")
    def test_greenlet_class(self):
        pass

    def test_apply(self):
        papply = self.pool.apply
        self.assertEqual(papply(sqr, (5,)), sqr(5))
        self.assertEqual(papply(sqr, (), {'x': 3}), sqr(x=3))

    def test_async(self):
        res = self.pool.apply_async(sqr, (7, TIMEOUT1,))
        get = TimingWrapper(res.get)
        self.assertEqual(get(), 49)
        self.assertTimeoutAlmostEqual(get.elapsed, TIMEOUT1, 1)

    def test_async_callback(self):
        result = []
        res = self.pool.apply_async(sqr, (7, TIMEOUT1,), callback=result.append)
        get = TimingWrapper(res.get)
        self.assertEqual(get(), 49)
        self.assertTimeoutAlmostEqual(get.elapsed, TIMEOUT1, 1)
        gevent.sleep(0)  # lets the callback run
        self.assertEqual(result, [49])

    def test_async_timeout(self):
        res = self.pool.apply_async(sqr, (6, TIMEOUT2 + 0.2))
        get = TimingWrapper(res.get)
        self.assertRaises(gevent.Timeout, get, timeout=TIMEOUT2)
        self.assertTimeoutAlmostEqual(get.elapsed, TIMEOUT2, 1)
        self.pool.join()

    def test_imap_list_small(self):
        it = self.pool.imap(sqr, range(SMALL_RANGE))
        self.assertEqual(list(it), list(map(sqr, range(SMALL_RANGE))))

    def test_imap_it_small(self):
        it = self.pool.imap(sqr, range(SMALL_RANGE))
        for i in range(SMALL_RANGE):
            self.assertEqual(next(it), i * i)
        self.assertRaises(StopIteration, next, it)

    def test_imap_it_large(self):
        it = self.pool.imap(sqr, range(LARGE_RANGE))
        for i in range(LARGE_RANGE):
            self.assertEqual(next(it), i * i)
        self.assertRaises(StopIteration, next, it)

    def test_imap_gc(self):
        it = self.pool.imap(sqr, range(SMALL_RANGE))
        for i in range(SMALL_RANGE):
            self.assertEqual(next(it), i * i)
            gc.collect()
        self.assertRaises(StopIteration, next, it)

    def test_imap_unordered_gc(self):
        it = self.pool.imap_unordered(sqr, range(SMALL_RANGE))
        result = []
        for _ in range(SMALL_RANGE):
            result.append(next(it))
            gc.collect()
        with self.assertRaises(StopIteration):
            next(it)
        self.assertEqual(sorted(result), [x * x for x in range(SMALL_RANGE)])

    def test_imap_random(self):
        it = self.pool.imap(sqr_random_sleep, range(SMALL_RANGE))
        self.assertEqual(list(it), list(map(sqr, range(SMALL_RANGE))))

    def test_imap_unordered(self):
        it = self.pool.imap_unordered(sqr, range(LARGE_RANGE))
        self.assertEqual(sorted(it), list(map(sqr, range(LARGE_RANGE))))

        it = self.pool.imap_unordered(sqr, range(LARGE_RANGE))
        self.assertEqual(sorted(it), list(map(sqr, range(LARGE_RANGE))))

    def test_imap_unordered_random(self):
        it = self.pool.imap_unordered(sqr_random_sleep, range(SMALL_RANGE))
        self.assertEqual(sorted(it), list(map(sqr, range(SMALL_RANGE))))

    def test_terminate(self):
        size = self.size or 10
        result = self.pool.map_async(sleep, [0.1] * (size * 2))
        gevent.sleep(0.1)
        started = time()
        try:
            # ADAPTED: gevent.testing's runs_in_given_time(0.1 * size + 0.5)
            self.pool.kill()
            self.assertLess(time() - started, 0.1 * self.size + 0.5)
        finally:
            result.wait()  # ADAPTED: map_async gives a TaskResult (AsyncResult API), not a Greenlet

    def test_imap_unordered_sleep(self):
        # testing that imap_unordered returns items in competion order
        result = list(self.pool.imap_unordered(sleep_tenths, [10, 1, 2]))
        if self.pool.size == 1:
            expected = ['10', '1', '2']
        else:
            expected = ['1', '2', '10']
        self.assertEqual(result, expected)


class TestPool2(TestPool):
    size = 2

    def test_recursive_apply(self):
        global RECURSIVE_POOL
        RECURSIVE_POOL = p = self.pool  # ADAPTED: the closure's pool, as a module global

        result = p.apply(recursive_a)
        self.assertEqual(result, "B")


class TestPool3(TestPool):
    size = 3


class TestPool10(TestPool):
    size = 10


class TestJoinEmpty(TestCase):

    def test(self):
        pool = self._makeOne(1)
        pool.join()


class TestSpawn(TestCase):

    def test_basics(self):
        pool = self._makeOne(1)
        self.assertEqual(len(pool), 0)
        # ADAPTED: gevent's tasks append to a ``log`` list in the caller's memory;
        # here the results are the log (shared memory is not there)
        a = pool.spawn(sleep_n_log, 'a', 0.1)
        self.assertEqual(len(pool), 1)
        b = pool.spawn(sleep_n_log, 'b', 0.1)
        # even though the pool is of size 1, it can contain 2 items
        # since we allow +1 for better throughput
        self.assertEqual(len(pool), 2)
        # ADAPTED: gevent sleeps 0.15 s twice and looks; here the test waits for
        # each result (an event) and then looks, so a loaded machine cannot flake it
        a.wait(10)
        self.assertEqual([r.value for r in (a, b) if r.ready()], ['a'])
        self.assertEqual(len(pool), 1)
        b.wait(10)
        self.assertEqual([r.value for r in (a, b) if r.ready()], ['a', 'b'])
        self.assertEqual(len(pool), 0)

    def test_cannot_spawn_from_other_thread(self):
        # Only the thread that owns a threadpool can spawn to it;
        # this is because the threadpool uses the creating thread's hub,
        # which is not threadsafe.
        global SECOND_POOL
        pool1 = self._makeOne(1)
        SECOND_POOL = self._makeOne(2)  # ADAPTED: the closure's pool2, as a module global

        res = pool1.spawn(spawn_on_second_pool)
        # ADAPTED: gevent raises InvalidThreadUseError; a pool process cannot
        # submit to a pool of its parent: RuntimeError saying so
        with self.assertRaisesRegex(RuntimeError, "cannot submit"):
            res.get()


def error_iter():
    yield 1
    yield 2
    raise ExpectedException


class TestErrorInIterator(TestCase):

    def test(self):
        self.pool = self._makeOne(3)
        self.assertRaises(ExpectedException, self.pool.map, ignore, error_iter())
        gevent.sleep(0.001)

    def test_unordered(self):
        self.pool = self._makeOne(3)

        def unordered():
            return list(self.pool.imap_unordered(ignore, error_iter()))

        self.assertRaises(ExpectedException, unordered)
        gevent.sleep(0.001)


class TestMaxsize(TestCase):
    # ADAPTED: ForkPool has a fixed size (README, ForkPool section): gevent's
    # ThreadPool(0) + `maxsize = 1` and `maxsize = 0` become these assertions.

    def test_inc(self):
        with self.assertRaises(ValueError):
            self._makeOne(0)
        self.pool = self._makeOne(1)
        with self.assertRaises(AttributeError):
            self.pool.maxsize = 2
        self.assertEqual(self.pool.maxsize, 1)

    def test_setzero(self):
        pool = self.pool = self._makeOne(3)
        pool.spawn(sleep, 0.1)
        with self.assertRaises(AttributeError):
            pool.maxsize = 0
        self.assertEqual(pool.size, 3)
        self.assertTrue(pool.join(timeout=10))


class TestSize(TestCase):

    def test(self):
        # ADAPTED: see TestMaxsize
        pool = self.pool = self._makeOne(2, create_all_worker_threads=False)
        self.assertEqual(pool.size, 2)
        for size in (1, -1, 3, 0):
            with self.assertRaises(AttributeError):
                pool.size = size
        self.assertEqual(pool.size, 2)


class TestRef(TestCase):

    def test(self):
        pool = self.pool = self._makeOne(2)

        # ADAPTED: gevent's func records weakrefs from inside the call, which in
        # a pool process are the process's own copies; here the weakrefs are
        # taken in the caller, on the function, the arguments and the result
        obj = SomeClass()
        func = obj.func
        del obj
        arg1, kwarg1 = Object(), Object()
        refs = [weakref.ref(x) for x in (arg1, kwarg1, func.__self__)]

        with disabled_gc():
            result = pool.apply(func, (arg1, ), {'kwarg1': kwarg1})
            self.assertIsInstance(result, Object)

            refs.append(weakref.ref(result))
            del func, result, arg1, kwarg1
            for r in refs:
                self.assertIsNone(r())

            self.assertEqual(4, len(refs))


class disabled_gc:
    def __enter__(self):
        self.was_enabled = gc.isenabled()
        gc.disable()

    def __exit__(self, *exc):
        if self.was_enabled:
            gc.enable()


class Object(object):
    pass


class SomeClass(object):

    refs = None

    def func(self, arg1, kwarg1=None):
        result = Object()
        return result


def noop():
    pass


class TestRefCount(TestCase):

    def test(self):
        pool = self._makeOne(1)
        pool.spawn(noop)
        gevent.sleep(0)
        pool.kill()


def raise_expected_in_callback(future):
    future.calledback += 1
    raise ExpectedException("Expected, ignored")


class TestTPE(_AbstractPoolTest):
    # gevent's tests of its ThreadPoolExecutor: ForkPool is an Executor too
    size = 1

    MAP_IS_GEN = True

    MONKEY_PATCHED = monkey.is_module_patched('threading')  # ADAPTED: one class, both runs

    @property
    def FutureTimeoutError(self):
        from concurrent.futures import TimeoutError as FutureTimeoutError
        return FutureTimeoutError

    @property
    def cf_wait(self):
        from concurrent.futures import wait as cf_wait
        return cf_wait

    @property
    def cf_as_completed(self):
        from concurrent.futures import as_completed as cf_as_completed
        return cf_as_completed

    def test_future(self):
        self.assertEqual(monkey.is_module_patched('threading'),
                         self.MONKEY_PATCHED)
        pool = self.pool

        calledback = []

        future = pool.submit(fourty_two_after_a_while)  # pylint:disable=no-member
        future.calledback = 0
        future.add_done_callback(raise_expected_in_callback)
        self.assertRaises(self.FutureTimeoutError, future.result, timeout=0.001)

        def spawned():
            return 2016

        spawned_greenlet = gevent.spawn(spawned)

        # Whether or not we are monkey patched, the background
        # greenlet we spawned got to run while we waited.

        self.assertEqual(future.result(), 42)
        self.assertTrue(future.done())
        self.assertFalse(future.cancelled())
        # Make sure the notifier has a chance to run so the call back
        # gets called
        gevent.sleep()
        self.assertEqual(future.calledback, 1)

        self.assertTrue(spawned_greenlet.ready())
        self.assertEqual(spawned_greenlet.value, 2016)

        # Adding the callback again runs immediately
        future.add_done_callback(lambda f: calledback.append(True))
        self.assertEqual(calledback, [True])

        # We can wait on the finished future
        done, _not_done = self.cf_wait((future,))
        self.assertEqual(list(done), [future])

        self.assertEqual(list(self.cf_as_completed((future,))), [future])
        # Doing so does not call the callback again
        self.assertEqual(future.calledback, 1)
        # even after a trip around the event loop
        gevent.sleep()
        self.assertEqual(future.calledback, 1)

        pool.kill()
        del future
        del pool
        del self.pool

    def test_future_wait_module_function(self):
        # Instead of waiting on the result, we can wait
        # on the future using the module functions
        self.assertEqual(monkey.is_module_patched('threading'),
                         self.MONKEY_PATCHED)
        pool = self.pool

        future = pool.submit(fourty_two_after_a_while)  # pylint:disable=no-member
        # ADAPTED: gevent's ThreadPoolExecutor raises AttributeError here when not
        # monkey-patched; ForkPool's futures work with concurrent.futures.wait
        # either way (their waiters get a gevent Event), so both runs take
        # gevent's monkey-patched branch
        _done, not_done = self.cf_wait((future,), timeout=0.001)
        self.assertEqual(list(not_done), [future])

        def spawned():
            return 2016

        spawned_greenlet = gevent.spawn(spawned)

        done, _not_done = self.cf_wait((future,))
        self.assertEqual(list(done), [future])
        self.assertTrue(spawned_greenlet.ready())
        self.assertEqual(spawned_greenlet.value, 2016)

        pool.kill()
        del future
        del pool
        del self.pool

    def test_future_wait_gevent_function(self):
        # The future object can be waited on with gevent functions.
        self.assertEqual(monkey.is_module_patched('threading'),
                         self.MONKEY_PATCHED)
        pool = self.pool

        future = pool.submit(fourty_two_after_a_while)  # pylint:disable=no-member

        def spawned():
            return 2016

        spawned_greenlet = gevent.spawn(spawned)

        done = gevent.wait((future,))
        self.assertEqual(list(done), [future])
        self.assertTrue(spawned_greenlet.ready())
        self.assertEqual(spawned_greenlet.value, 2016)

        pool.kill()
        del future
        del pool
        del self.pool


@pytest.mark.parametrize("classes", [
    "PoolBasicTests TestPool TestJoinEmpty TestSpawn TestErrorInIterator TestMaxsize TestSize "
    "TestRef TestRefCount TestTPE",
    "TestPool2 TestPool3",
    "TestPool10"])
def test_the_suite_passes_after_patch_all(classes):
    """These classes again, in a fresh interpreter after gevent.monkey.patch_all()."""
    code = ("from gevent import monkey; monkey.patch_all()\n"
            "import sys, pytest\n"
            "sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', '-x', *sys.argv[1:]]))\n")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    targets = [f"{os.path.abspath(__file__)}::{cls}" for cls in classes.split()]
    done = subprocess.run([sys.executable, "-c", code, *targets], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and "failed" not in done.stdout, done.stdout[-2000:]
