"""A gevent.pywsgi server with a CPU-bound endpoint, on gevent's ThreadPool or on ForkPool.

    python -m demos.threadpool_swap [--pool thread|fork|both] [--seconds 5] [--size 2]
    python -m demos.threadpool_swap --serve --port 8080 --pool fork   # just serve; try curl

``/heavy`` burns ~``--work-ms`` of pure-Python CPU in the pool; ``/light``
answers at once.  The run hammers ``/heavy`` with ``--heavy-clients``
keep-alive connections while one client asks ``/light`` over and over, then
prints the light endpoint's latency (p50/p99) and the heavy throughput.

The only difference between the two runs is one line (see :func:`make_pool`)::

    pool = gevent.threadpool.ThreadPool(size)     # before: the GIL serialises the work
    pool = packet_gevent.ForkPool(size)           # after: processes, the hub stays free

With threads the CPU work holds the GIL, so the hub (and ``/light``) waits
behind it and two threads do no more work than one; with processes the hub
only shuttles requests and results.
"""
import signal
import sys
import time
from typing import Any, Dict, List

import gevent
import gevent.event
import gevent.pywsgi
import gevent.socket
import gevent.threadpool

from packet_gevent import ForkPool

from ._cli import parser, setup_logging


def burn(iterations: int) -> int:
    """Pure-Python CPU work (it holds the GIL the whole time)."""
    total = 0
    for i in range(iterations):
        total += i * i % 7
    return total


def iterations_for(ms: float) -> int:
    n = 20_000
    while True:
        t0 = time.perf_counter()
        burn(n)
        took = time.perf_counter() - t0
        if took > 0.02:
            return max(1, int(n * ms / 1000 / took))
        n *= 2


def make_pool(kind: str, size: int) -> Any:
    if kind == "thread":
        return gevent.threadpool.ThreadPool(size)   # before
    return ForkPool(size)                           # after: the one-line switch


def make_app(pool: Any, iterations: int):
    def app(environ: Dict[str, Any], start_response: Any) -> List[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path == "/heavy":
            body = b"%d\n" % pool.apply(burn, (iterations,))  # same call on both pools
        elif path == "/light":
            body = b"ok\n"
        else:
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"try /heavy or /light\n"]
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]
    return app


class KeepAliveClient:
    """A minimal HTTP/1.1 GET client on one persistent gevent socket."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = gevent.socket.create_connection((host, port), timeout=30)
        self.sock.setsockopt(gevent.socket.IPPROTO_TCP, gevent.socket.TCP_NODELAY, 1)
        self.buffer = b""

    def get(self, path: str) -> bytes:
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: demo\r\n\r\n".encode())
        while b"\r\n\r\n" not in self.buffer:
            self._fill()
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"unexpected response {head[:60]!r}")
        length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        while len(self.buffer) < length:
            self._fill()
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return body

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("server closed the connection")
        self.buffer += chunk

    def close(self) -> None:
        self.sock.close()


def listener(host: str, port: int) -> Any:
    """A listening socket whose accepted connections have TCP_NODELAY (Linux inherits it).

    Without it pywsgi's small responses meet Nagle + delayed ACK: ~40 ms per
    keep-alive request, whatever the pool.
    """
    sock = gevent.socket.socket(gevent.socket.AF_INET, gevent.socket.SOCK_STREAM)
    sock.setsockopt(gevent.socket.SOL_SOCKET, gevent.socket.SO_REUSEADDR, 1)
    sock.setsockopt(gevent.socket.IPPROTO_TCP, gevent.socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    sock.listen(128)
    return sock


def run(kind: str, size: int, seconds: float, heavy_clients: int, iterations: int) -> Dict[str, float]:
    pool = make_pool(kind, size)
    server = gevent.pywsgi.WSGIServer(listener("127.0.0.1", 0), make_app(pool, iterations), log=None)
    server.start()
    host, port = server.address[:2]
    stop_at = time.perf_counter() + seconds
    heavy_done = [0]
    light: List[float] = []

    def hammer() -> None:
        client = KeepAliveClient(host, port)
        try:
            while time.perf_counter() < stop_at:
                client.get("/heavy")
                heavy_done[0] += 1
        finally:
            client.close()

    def probe() -> None:
        client = KeepAliveClient(host, port)
        try:
            while time.perf_counter() < stop_at:
                t0 = time.perf_counter()
                client.get("/light")
                light.append(time.perf_counter() - t0)
                gevent.sleep(0.002)
        finally:
            client.close()

    try:
        warm_up = KeepAliveClient(host, port)
        try:
            warm_up.get("/heavy")  # start the pool's workers
        finally:
            warm_up.close()
        stop_at = time.perf_counter() + seconds
        started = time.perf_counter()
        jobs = [gevent.spawn(hammer) for _ in range(heavy_clients)] + [gevent.spawn(probe)]
        gevent.joinall(jobs, timeout=seconds + 60, raise_error=True)
        elapsed = time.perf_counter() - started
    finally:
        server.stop(timeout=5)
        if kind == "thread":
            pool.kill()
        else:
            pool.shutdown(wait=True, timeout=10)
    light.sort()
    return {"heavy_per_s": heavy_done[0] / elapsed,
            "light_p50_ms": light[len(light) // 2] * 1e3 if light else float("nan"),
            "light_p99_ms": light[min(len(light) - 1, len(light) * 99 // 100)] * 1e3 if light else float("nan"),
            "light_requests": len(light)}


def main(argv: Any = None) -> int:
    p = parser("gevent.pywsgi with a CPU-bound endpoint: ThreadPool vs ForkPool.", 0)
    p.add_argument("--pool", choices=("thread", "fork", "both"), default="both")
    p.add_argument("--size", type=int, default=2, help="pool size (default: %(default)s)")
    p.add_argument("--seconds", type=float, default=5.0, help="load duration per pool")
    p.add_argument("--heavy-clients", type=int, default=4)
    p.add_argument("--work-ms", type=float, default=20.0, help="CPU per /heavy request")
    p.add_argument("--serve", action="store_true", help="only serve (Ctrl-C to stop)")
    args = p.parse_args(argv)
    setup_logging(args.log_level)
    iterations = iterations_for(args.work_ms)
    if args.serve:
        kind = "thread" if args.pool == "thread" else "fork"
        pool = make_pool(kind, args.size)
        server = gevent.pywsgi.WSGIServer(listener(args.host, args.port), make_app(pool, iterations))
        server.start()
        print(f"threadpool_swap ({kind} pool) listening on {server.address[0]}:{server.server_port}",
              flush=True)
        # Ctrl-C and SIGTERM stop it quietly (exit 0).
        stop = gevent.event.Event()
        handlers = [gevent.signal_handler(signum, stop.set)
                    for signum in (signal.SIGINT, signal.SIGTERM)]
        try:
            stop.wait()
        finally:
            for handler in handlers:
                handler.cancel()
            server.stop(timeout=5)
            if isinstance(pool, ForkPool):
                pool.shutdown(wait=True, timeout=10)
            else:
                pool.kill()
        return 0
    kinds = ("thread", "fork") if args.pool == "both" else (args.pool,)
    print(f"{args.heavy_clients} clients hammer /heavy (~{args.work_ms:g} ms of CPU each), one "
          f"client probes /light; pool size {args.size}; {args.seconds:g} s per pool")
    results = {}
    for kind in kinds:
        results[kind] = r = run(kind, args.size, args.seconds, args.heavy_clients, iterations)
        print(f"{kind:>6} pool: heavy {r['heavy_per_s']:7.1f} req/s | light p50 "
              f"{r['light_p50_ms']:7.2f} ms  p99 {r['light_p99_ms']:7.2f} ms "
              f"({r['light_requests']} light requests)", flush=True)
    if len(results) == 2:
        t, f = results["thread"], results["fork"]
        print(f"fork vs thread: heavy throughput x{f['heavy_per_s'] / max(t['heavy_per_s'], 1e-9):.2f}, "
              f"light p99 {t['light_p99_ms'] / max(f['light_p99_ms'], 1e-9):.0f}x lower")
    return 0


if __name__ == "__main__":
    sys.exit(main())
