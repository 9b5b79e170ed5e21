"""Offloaded routes run in the reactor's fork pool and do not stall the other clients."""
import http.client
import os
import pickle
import time

import gevent
import pytest

from packet_gevent import Reactor
from packet_gevent.http import Offloaded, WSGIServer
from tests import http_apps
from tests.conftest import assert_gone


def get(port, path, body=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    conn.request("POST" if body is not None else "GET", path, body=body)
    response = conn.getresponse()
    result = response.status, response.getheader("X-Pid"), response.read()
    conn.close()
    return result


@pytest.fixture
def serve():
    reactors = []

    def make(app, **options):
        reactor = Reactor(stop_grace=2.0, pool_size=1)
        reactors.append(reactor)
        return WSGIServer(app, "127.0.0.1", 0, reactor=reactor, **options).start()

    yield make
    for reactor in reactors:
        pids = reactor.pool.pids() if reactor._pool is not None else []
        reactor.stop(timeout=3.0)
        assert_gone(pids)


def finish_order(port, tmp_path, seconds):
    """A slow request, then a fast one sent while the slow one runs: which finished first?

    Both clients are OS threads; the fast one starts when the slow view has
    created its mark file, so it is sent while the slow work is under way
    whether or not the server's hub is blocked.
    """
    order = []
    mark = tmp_path / "started"

    def slow():
        result = get(port, f"/slow?t={seconds}&mark={mark}")
        order.append("slow")
        return result

    def fast():
        deadline = time.monotonic() + 10
        while not mark.exists() and time.monotonic() < deadline:  # another process's state
            time.sleep(0.005)
        assert mark.exists(), "the slow view never started"
        sent = time.monotonic()
        result = get(port, "/")
        order.append("fast")
        return result + (time.monotonic() - sent,)

    pool = gevent.get_hub().threadpool
    slow_job, fast_job = pool.spawn(slow), pool.spawn(fast)
    results = slow_job.get(timeout=20), fast_job.get(timeout=20)
    return order, results


def test_an_offloaded_route_does_not_stall_the_fast_route(serve, tmp_path):
    server = serve(http_apps.router)
    order, ((slow_status, slow_pid, _), (fast_status, fast_pid, _, _)) = finish_order(
        server.port, tmp_path, 1.0)
    assert (slow_status, fast_status) == (200, 200)
    assert int(fast_pid) == os.getpid() and int(slow_pid) != os.getpid()  # ran in the pool
    assert order == ["fast", "slow"]


def test_without_offload_the_same_view_stalls_everyone(serve, tmp_path):
    server = serve(http_apps.inline_router)
    _, (_, (fast_status, _, _, fast_latency)) = finish_order(server.port, tmp_path, 1.0)
    # The hub was blocked: the fast request, sent just after the slow view
    # started its 1 s of work, waited for it.
    assert fast_status == 200 and fast_latency > 0.5


def test_offload_decorator_passes_body_and_status(serve):
    server = serve(http_apps.router)
    status, pid, body = gevent.get_hub().threadpool.spawn(get, server.port, "/echo", b"payload").get(20)
    assert status == 201 and body == b"echo:payload/echo" and int(pid) != os.getpid()


def test_whole_app_offload_switch(serve):
    server = serve(http_apps.hello, offload=True)
    status, pid, body = gevent.get_hub().threadpool.spawn(get, server.port, "/").get(20)
    assert status == 200 and body == b"Hello, World!" and int(pid) != os.getpid()


def test_offloaded_apps_pickle_by_reference():
    assert pickle.loads(pickle.dumps(http_apps.offloaded_echo)) is http_apps.offloaded_echo
    inline = pickle.loads(pickle.dumps(Offloaded(http_apps.hello)))
    assert inline.app is http_apps.hello


def test_an_offloaded_view_that_raises_or_kills_its_process_gets_500(serve):
    server = serve(http_apps.router)
    pool = gevent.get_hub().threadpool
    assert pool.spawn(get, server.port, "/fails").get(20)[0] == 500
    assert pool.spawn(get, server.port, "/crash").get(20)[0] == 500
    status, pid, body = pool.spawn(get, server.port, "/echo", b"after").get(20)
    assert status == 201 and body == b"echo:after/echo"  # the pool replaced its process
