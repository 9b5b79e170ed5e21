"""A CPU-bound batch on a Dask cluster through RemotePool while the hub keeps serving.

    python -m demos.remote_pool                          # starts a local 2-worker cluster
    python -m demos.remote_pool --scheduler tcp://host:8786 --tasks 200 --work-ms 50

It runs ``--tasks`` calls of ~``--work-ms`` of pure-Python CPU each through
:class:`packet_gevent.RemotePool`, while in the same process an echo server
(a packet_gevent Reactor) answers a client greenlet that pings it every
10 ms, and prints the batch's throughput, the pings' round trip and how late
the hub ran a 10 ms timer.  With no ``--scheduler`` it starts a local
cluster (``dask scheduler`` + ``dask worker`` on 127.0.0.1) and stops it at
the end.  The code that starts the pool sits under
``if __name__ == "__main__":``, as any script that starts processes should.
"""
import statistics
import time
from typing import List

import gevent
import gevent.socket

from packet_gevent import Connection, Reactor, RemotePool

from ._cli import setup_logging
from .threadpool_swap import burn, iterations_for  # the same CPU work as the threadpool demo


class Echo(Connection):
    def receive_data(self, data):
        self.send_data(data)


def pinger(port: int, stop: List[bool], rtts: List[float]) -> None:
    sock = gevent.socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        while not stop:
            started = time.perf_counter()
            sock.sendall(b"ping\n")
            got = b""
            while len(got) < 5:
                chunk = sock.recv(64)
                if not chunk:
                    return
                got += chunk
            rtts.append(time.perf_counter() - started)
            gevent.sleep(0.01)
    finally:
        sock.close()


def ticker(stop: List[bool], lateness: List[float]) -> None:
    while not stop:
        started = time.perf_counter()
        gevent.sleep(0.01)
        lateness.append(time.perf_counter() - started - 0.01)


def percentile(values: List[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] if ordered else float("nan")


def main(argv=None) -> int:
    import argparse
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scheduler", default=None,
                   help="Dask scheduler address (default: start a local cluster)")
    p.add_argument("--workers", type=int, default=2, help="local cluster workers (default: 2)")
    p.add_argument("--tasks", type=int, default=40, help="tasks in the batch (default: 40)")
    p.add_argument("--work-ms", type=float, default=50.0, help="CPU per task (default: 50 ms)")
    p.add_argument("--log-level", default="WARNING")
    args = p.parse_args(argv)
    setup_logging(args.log_level)

    iterations = iterations_for(args.work_ms)
    started = time.perf_counter()
    pool = RemotePool(args.scheduler, workers=args.workers)
    where = args.scheduler or f"a local cluster of {args.workers} workers"
    print(f"RemotePool on {where} ({pool.address}) ready in "
          f"{time.perf_counter() - started:.1f} s", flush=True)
    reactor = Reactor(pool=pool)
    reactor.start()
    stop: List[bool] = []
    rtts: List[float] = []
    lateness: List[float] = []
    try:
        server = reactor.start_server("127.0.0.1", 0, Echo)
        background = [gevent.spawn(pinger, server.port, stop, rtts),
                      gevent.spawn(ticker, stop, lateness)]
        started = time.perf_counter()
        results = list(pool.map(burn, [iterations] * args.tasks))
        wall = time.perf_counter() - started
        stop.append(True)
        gevent.joinall(background, timeout=5)
        assert results == [burn(iterations)] * args.tasks
    finally:
        stop.append(True)
        reactor.stop(timeout=10)  # shuts the pool down (and the local cluster)
    serial = args.tasks * args.work_ms / 1000
    print(f"{args.tasks} tasks of ~{args.work_ms:g} ms CPU: {wall:.2f} s wall, "
          f"{args.tasks / wall:.1f} tasks/s ({serial / wall:.2f}x one core)")
    print(f"meanwhile the echo server answered {len(rtts)} pings: round trip "
          f"p50 {statistics.median(rtts) * 1000:.2f} ms, p99 {percentile(rtts, 0.99) * 1000:.2f} ms")
    print(f"hub lateness of a 10 ms timer: p50 {statistics.median(lateness) * 1000:.2f} ms, "
          f"p99 {percentile(lateness, 0.99) * 1000:.2f} ms, max {max(lateness) * 1000:.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
