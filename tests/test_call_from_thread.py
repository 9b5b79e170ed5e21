"""reactor.call_from_thread: handing work to the reactor from real OS threads."""
import threading

import gevent
import gevent.event
import gevent.socket
import pytest

from packet_gevent import Connection
from tests.conftest import recv_exactly


def test_threads_push_data_to_a_live_connection_and_get_results_back(reactor):
    conns = []
    connected = gevent.event.Event()

    class Sink(Connection):
        def connection_completed(self):
            conns.append(self)
            connected.set()

    server = reactor.start_server("127.0.0.1", 0, Sink)
    sock = gevent.socket.create_connection(("127.0.0.1", server.port), timeout=10)
    assert connected.wait(5)
    conn = conns[0]
    results, errors = [], []
    finished = gevent.event.Event()
    done = []
    async_done = gevent.get_hub().loop.async_()
    async_done.start(finished.set)

    def worker(n):
        try:
            # Each thread sends 10 lines through the reactor and waits for each call's result.
            for i in range(10):
                future = reactor.call_from_thread(conn.send_data, b"%d-%d\n" % (n, i))
                assert future.result(timeout=10) is None
            results.append(reactor.call_from_thread(lambda: n * 2).result(timeout=10))
        except BaseException as exc:
            errors.append(exc)
        finally:
            done.append(n)
            async_done.send()

    # Real OS threads: nothing is monkey-patched in this test process.
    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    with gevent.Timeout(10):
        while len(done) < 4:
            finished.wait()
            finished.clear()
    for thread in threads:
        thread.join(5)
    async_done.close()
    assert errors == []
    assert sorted(results) == [0, 2, 4, 6]
    expected = sum(len(b"%d-%d\n" % (n, i)) for n in range(4) for i in range(10))
    lines = recv_exactly(sock, expected).split(b"\n")[:-1]
    for n in range(4):  # each thread's lines arrive in its order
        assert [line for line in lines if line.startswith(b"%d-" % n)] == [b"%d-%d" % (n, i) for i in range(10)]
    sock.close()


def test_an_exception_reaches_the_calling_thread_and_the_call_may_block(reactor):
    outcome = {}
    ready = gevent.get_hub().loop.async_()
    got = gevent.event.Event()
    ready.start(got.set)

    def blocking():
        gevent.sleep(0.05)  # cooperative: only this greenlet waits
        return "slept"

    def thread_main():
        outcome["blocked"] = reactor.call_from_thread(blocking).result(timeout=10)
        try:
            reactor.call_from_thread(lambda: 1 / 0).result(timeout=10)
        except ZeroDivisionError as exc:
            outcome["error"] = exc
        ready.send()

    thread = threading.Thread(target=thread_main)
    thread.start()
    assert got.wait(10)
    thread.join(5)
    ready.close()
    assert outcome["blocked"] == "slept"
    assert isinstance(outcome["error"], ZeroDivisionError)
    with pytest.raises(TypeError):
        reactor.call_from_thread("not callable")
