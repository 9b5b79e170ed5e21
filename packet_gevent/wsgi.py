"""Command line of the WSGI server, as gunicorn's and uvicorn's::

    python -m packet_gevent.wsgi MODULE:APP --bind HOST:PORT [--processes N] [--offload-processes N]
    packet-gevent-wsgi MODULE:APP ...            (the same, as a console script)

``--processes 1`` (the default) serves in this process.  ``--processes N``
runs a master that forks N serving processes on one listening socket and
supervises them (:mod:`packet_gevent.http.supervisor`): SIGTERM drains them,
SIGHUP restarts them one by one, a crashed one is replaced.  Each serving
process imports the app itself.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import socket
import sys
from typing import Any, Callable, List, Optional

__all__ = ["main", "load_app"]

logger = logging.getLogger("packet_gevent.wsgi")


def load_app(spec: str) -> Any:
    """Import ``MODULE:ATTR`` (ATTR may be dotted; default ``application``)."""
    module_name, _, attr = spec.partition(":")
    if not module_name:
        raise SystemExit(f"bad app {spec!r}: expected MODULE:APP, e.g. myproject.wsgi:application")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise SystemExit(f"cannot import {module_name!r}: {exc}") from exc
    for part in (attr or "application").split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise SystemExit(f"module {module_name!r} has no attribute {attr!r}") from None
    if not callable(target):
        raise SystemExit(f"{spec!r} is not a WSGI callable")
    return target


def _bind(text: str) -> tuple:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m packet_gevent.wsgi",
                                description="Serve a WSGI app on the packet_gevent reactor.")
    p.add_argument("app", help="the WSGI app, MODULE:APP (e.g. demos.wsgi_app:app)")
    p.add_argument("--bind", "-b", type=_bind, default=("127.0.0.1", 8000), metavar="HOST:PORT",
                   help="address to listen on (default: 127.0.0.1:8000; port 0 picks one)")
    p.add_argument("--processes", "-w", type=int, default=1, metavar="N",
                   help="serving processes on the one listener (default: 1, no master)")
    p.add_argument("--offload-processes", type=int, default=None, metavar="N",
                   help="size of each serving process's fork pool for offloaded routes")
    p.add_argument("--offload", action="store_true", help="run the whole app in the fork pool")
    p.add_argument("--backend", choices=("httptools", "h11"), default=None,
                   help="HTTP parser (default: httptools when installed, else h11)")
    p.add_argument("--max-connections", type=int, default=1000, metavar="N",
                   help="concurrent connections per serving process (default: %(default)s)")
    p.add_argument("--max-body-size", type=int, default=100 * 1024 * 1024, metavar="BYTES",
                   help="largest request body (default: %(default)s)")
    p.add_argument("--header-timeout", type=float, default=10.0, metavar="S")
    p.add_argument("--keepalive-timeout", type=float, default=5.0, metavar="S")
    p.add_argument("--body-timeout", type=float, default=30.0, metavar="S")
    p.add_argument("--graceful-timeout", type=float, default=30.0, metavar="S",
                   help="how long a stop waits for requests in flight (default: %(default)s)")
    p.add_argument("--access-log", action="store_true", help="log each request (logger "
                   "packet_gevent.http.access)")
    p.add_argument("--log-level", default="INFO")
    return p


def _server_options(args: argparse.Namespace, multiprocess: bool) -> dict:
    from .http.parser import Limits
    return dict(backend=args.backend, max_connections=args.max_connections,
                limits=Limits(max_body_size=args.max_body_size),
                header_timeout=args.header_timeout, keepalive_timeout=args.keepalive_timeout,
                body_timeout=args.body_timeout, access_log=args.access_log,
                multiprocess=multiprocess, offload=args.offload,
                offload_processes=args.offload_processes)


def _serve_in_this_process(args: argparse.Namespace) -> int:
    from .http.server import WSGIServer
    from .packet import Reactor
    app = load_app(args.app)
    host, port = args.bind
    reactor = Reactor(pool_size=args.offload_processes, stop_grace=args.graceful_timeout)
    server = WSGIServer(app, host, port, reactor=reactor, **_server_options(args, False))
    logger.info("listening on http://%s:%d (pid %d)", host, server.port, os.getpid())
    server.serve_forever()
    return 0


def _make_serve(args: argparse.Namespace) -> Callable[[int, Callable[[], None]], int]:
    def serve(listener_fd: int, ready: Callable[[], None]) -> int:
        from .http.server import WSGIServer
        from .packet import Reactor
        _setup_logging(args.log_level)
        app = load_app(args.app)
        listener = socket.socket(fileno=listener_fd)
        reactor = Reactor(pool_size=args.offload_processes, stop_grace=args.graceful_timeout)
        server = WSGIServer(app, reactor=reactor, listener=listener, **_server_options(args, True))
        server.start()
        ready()
        logger.info("serving process %d ready", os.getpid())
        server.serve_forever()
        return 0
    return serve


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s")


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.log_level)
    if args.processes <= 1:
        return _serve_in_this_process(args)
    from .http.supervisor import Supervisor, bind_listener
    host, port = args.bind
    listener = bind_listener(host, port)
    logger.info("listening on http://%s:%d (master pid %d, %d processes)", host,
                listener.getsockname()[1], os.getpid(), args.processes)
    return Supervisor(listener, args.processes, _make_serve(args),
                      graceful_timeout=args.graceful_timeout).run()


if __name__ == "__main__":
    sys.exit(main())
