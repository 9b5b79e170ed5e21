"""A small WSGI app on packet_gevent's HTTP server: a fast route and a CPU-bound route offloaded.

    python -m demos.wsgi_app [--port 8000] [--offload-processes 2] [--no-offload]
    curl http://127.0.0.1:8000/           # answered by the hub at once
    curl http://127.0.0.1:8000/cpu?n=25   # fib(25) in a fork pool process

The same app from the command line, on two serving processes::

    python -m packet_gevent.wsgi demos.wsgi_app:app --bind 127.0.0.1:8000 --processes 2

``/cpu`` is declared with ``offload=True``: the connection's greenlet sends the
request to the reactor's ForkPool and waits cooperatively, so ``/`` stays fast
while ``/cpu`` is busy.  ``--no-offload`` runs it inline (try ``wrk`` on ``/``
while another client hammers ``/cpu``: the difference is the point).
"""
import json
import os
import sys
from urllib.parse import parse_qs

from packet_gevent.http import Router, WSGIServer

from ._cli import parser, setup_logging


def fib(n: int) -> int:
    """Deliberately slow pure-Python CPU work (it holds the GIL the whole time)."""
    return n if n < 2 else fib(n - 1) + fib(n - 2)


def hello(environ, start_response):
    body = b"Hello, World!\n"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def cpu(environ, start_response):
    query = parse_qs(environ.get("QUERY_STRING", ""))
    n = min(int(query.get("n", ["25"])[0]), 32)
    body = json.dumps({"n": n, "fib": fib(n), "pid": os.getpid()}).encode() + b"\n"
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]


def make_app(offloaded: bool = True) -> Router:
    router = Router()
    router.route("/", hello)
    router.route("/cpu", cpu, offload=offloaded)   # the one-line switch
    return router


app = make_app()


def main(argv=None) -> int:
    p = parser("A WSGI app with a fast route and an offloaded CPU-bound route.", 8000)
    p.add_argument("--offload-processes", type=int, default=2, help="fork pool size (default: 2)")
    p.add_argument("--no-offload", action="store_true", help="run /cpu in the hub (for comparison)")
    args = p.parse_args(argv)
    setup_logging(args.log_level)
    server = WSGIServer(make_app(not args.no_offload), args.host, args.port,
                        offload_processes=args.offload_processes)
    print(f"wsgi_app listening on {args.host}:{server.port}", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
