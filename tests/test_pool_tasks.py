"""The pool's process-independent parts: task codec, exception transport, futures; big payloads."""
import concurrent.futures
import pickle
import threading

import numpy
import pytest

from packet_gevent import ForkPool, SerializationError, WorkerError
from packet_gevent.pool.futures import Future
from packet_gevent.pool.tasks import (ERR, OK, OOB_THRESHOLD, GroupDecodeError, RemoteTraceback, TaskCodec,
                                 encode_exception, rebuild_exception, run_call)
from tests.conftest import wait_for
from tests.test_pool import inc
from tests.test_pool_faults import NeedsTwoArgs, return_lock


def echo(value):
    return value


def nbytes(value):
    return len(value)


class Unloadable:
    """Pickles fine, fails to unpickle (its reduce points at a function that raises)."""

    def __reduce__(self):
        return (_refuse, ())


def _refuse():
    raise RuntimeError("refusing to load")


# -- codec ---------------------------------------------------------------------------------------

def test_calls_round_trip_with_big_bytes_and_buffers_out_of_band():
    codec = TaskCodec()
    big = bytes(range(256)) * (OOB_THRESHOLD // 256 + 1)
    array = numpy.arange(100_000, dtype=numpy.int64)
    data, bigs, buffers = codec.encode_calls([(echo, (big,), None), (echo, (array,), {"k": 1})])
    assert bigs == [big] and bigs[0] is big           # not copied into the pickle
    assert len(buffers) == 1 and len(data) < 1000
    calls = TaskCodec.decode_calls((data, bigs, [b.raw() for b in buffers]), 2)
    assert calls[0][1][0] is big
    assert numpy.array_equal(calls[1][1][0], array) and calls[1][2] == {"k": 1}


def test_encoder_is_reusable_and_returns_fresh_lists():
    codec = TaskCodec()
    big = b"x" * OOB_THRESHOLD
    first = codec.encode_calls([(echo, (big,), None)])
    second = codec.encode_calls([(echo, (1,), None)])
    assert first[1] == [big] and second[1] == []
    assert TaskCodec.decode_calls(first, 1)[0][1][0] == big


def test_decode_failure_of_a_group_asks_for_singles_and_of_a_single_says_why():
    codec = TaskCodec()
    encoded = codec.encode_calls([(echo, (Unloadable(),), None), (echo, (1,), None)])
    with pytest.raises(GroupDecodeError):
        TaskCodec.decode_calls(encoded, 2)
    single = codec.encode_calls([(echo, (Unloadable(),), None)])
    with pytest.raises(SerializationError, match="refusing to load"):
        TaskCodec.decode_calls(single, 1)


def test_unsendable_outcomes_become_errors_one_by_one():
    codec = TaskCodec()
    outcomes = [(1, OK, 5), (2, OK, threading.Lock()), (3, OK, Unloadable()), (4, OK, [1, 2])]
    decoded = TaskCodec.decode_outcomes(codec.encode_outcomes(outcomes))
    assert decoded[0] == (1, OK, 5) and decoded[3] == (4, OK, [1, 2])
    for tid, status, (error, text) in decoded[1:3]:
        assert status == ERR and isinstance(error, SerializationError)
        assert "could not be sent back" in str(error)


def test_exceptions_travel_with_their_traceback_or_as_worker_error():
    status, payload = run_call(int, ("x",), None)
    assert status == ERR
    exc = rebuild_exception(pickle.loads(pickle.dumps(payload)))
    assert type(exc) is ValueError and isinstance(exc.__cause__, RemoteTraceback)
    assert "invalid literal" in exc.remote_traceback and "Traceback" in str(exc.__cause__)
    replaced, text = encode_exception(NeedsTwoArgs(1, 2))
    assert isinstance(replaced, WorkerError) and "NeedsTwoArgs" in str(replaced)
    assert run_call(inc, (1,), None) == (OK, 2)


# -- futures ---------------------------------------------------------------------------------------

def test_future_works_with_stdlib_wait_from_a_thread_and_is_cheap():
    futures = [Future() for _ in range(3)]
    assert all(f._cond is None for f in futures)     # no Condition made yet
    results = []
    thread = threading.Thread(target=lambda: results.append(
        concurrent.futures.wait(futures, timeout=10, return_when=concurrent.futures.ALL_COMPLETED)))
    thread.start()
    # Not needed for correctness: lets the thread take the futures' conditions
    # (made on first use) and install its waiter before they complete.
    wait_for(lambda: all(f._cond is not None for f in futures), message="the waiting thread")
    futures[0].set_result(1)
    futures[1].set_exception(KeyError("k"))
    assert futures[2].cancel()
    futures[2].set_running_or_notify_cancel()  # an ownerless future: its executor notifies
    thread.join(10)
    done, not_done = results[0]
    assert done == set(futures) and not not_done
    with pytest.raises(concurrent.futures.CancelledError):
        futures[2].result()
    with pytest.raises(concurrent.futures.InvalidStateError):
        futures[0].set_result(2)


def test_future_cancel_notifies_as_completed_and_callbacks():
    future = Future()
    seen = []
    future.add_done_callback(seen.append)
    assert future.cancel() and future.cancelled() and seen == [future]
    # an ownerless future follows the stdlib: done for as_completed once notified
    assert future.set_running_or_notify_cancel() is False
    assert list(concurrent.futures.as_completed([future], timeout=1)) == [future]
    assert future.cancel()  # again: still True


def test_future_result_timeout_raises_timeout_error():
    with pytest.raises(concurrent.futures.TimeoutError):  # the builtin on 3.11+
        Future().result(timeout=0.01)


# -- big payloads through the pool ------------------------------------------------------------------------

def test_16_mib_bytes_and_numpy_arrays_round_trip():
    data = bytes(range(256)) * (16 * 1024 * 1024 // 256)
    array = numpy.random.default_rng(1).random(1_000_000)
    with ForkPool(2) as pool:
        assert pool.submit(echo, data).result(timeout=20) == data
        assert pool.submit(nbytes, data).result(timeout=20) == len(data)
        assert numpy.array_equal(pool.submit(echo, array).result(timeout=20), array)
        with pytest.raises(SerializationError):
            pool.submit(return_lock).result(timeout=10)
