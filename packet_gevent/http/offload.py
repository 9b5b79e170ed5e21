"""Run a WSGI app, or one route of it, in the reactor's fork pool: CPU-bound views off the hub.

::

    @offload                      # the whole view runs in a pool process
    def report(environ, start_response): ...

    router = Router()
    router.route("/", fast_view)
    router.route("/report", report_view, offload=True)
    WSGIServer(router, offload_processes=2)          # or WSGIServer(app, offload=True)

The connection's greenlet reads the request body (bounded by the server's
``max_body_size``), sends the environ's plain values and the body to a pool
process (``ForkPool.submit``, pickled by reference: the app must be importable,
a module-level function or object), waits cooperatively for the outcome, and
answers.  Meanwhile the hub serves every other client.  The pool process
buffers the whole response body, so offload views that return a bounded
answer (a report, a rendered page), not a stream.
"""
from __future__ import annotations

import functools
import io
import importlib
import sys
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

__all__ = ["offload", "Offloaded", "Router"]

WSGIApp = Callable[[Dict[str, Any], Callable[..., Any]], Iterable[bytes]]

#: environ values that travel to the pool process (the others are live objects).
_PORTABLE = (str, bytes, int, float, bool, tuple, type(None))


class Offloaded:
    """A WSGI app that runs in a fork pool (the reactor's, or ``pool``)."""

    def __init__(self, app: WSGIApp, pool: Any = None) -> None:
        self.app = app
        self.pool = pool
        functools.update_wrapper(self, app)  # type: ignore[arg-type]

    def __call__(self, environ: Dict[str, Any], start_response: Callable[..., Any]) -> List[bytes]:
        pool = self.pool
        if pool is None:
            reactor = environ.get("packet_gevent.reactor")
            pool = getattr(reactor, "pool", None)
            if pool is None:
                raise RuntimeError("an offloaded WSGI app needs packet_gevent.Reactor (which has "
                                   "a fork pool) or Offloaded(app, pool=...)")
        body = environ["wsgi.input"].read()
        portable = {key: value for key, value in environ.items()
                    if isinstance(value, _PORTABLE) and not key.startswith("packet_gevent.")}
        status, headers, data = pool.submit(run_in_child, self, portable, body).result()
        start_response(status, headers)
        return [data]

    def __reduce__(self) -> Any:
        # By reference: ``@offload`` replaced the module attribute by this
        # object, so pickle's own lookup of the function would find us instead.
        module = sys.modules.get(getattr(self, "__module__", ""), None)
        if module is not None and getattr(module, getattr(self, "__qualname__", ""), None) is self:
            return (_lookup, (self.__module__, self.__qualname__))
        return (Offloaded, (self.app,))

    def __repr__(self) -> str:
        return f"<Offloaded {getattr(self.app, '__qualname__', self.app)!r}>"


def offload(app: Optional[WSGIApp] = None, *, pool: Any = None) -> Any:
    """Decorator (``@offload`` or ``@offload(pool=...)``): run this WSGI app in a fork pool."""
    if app is None:
        return lambda inner: Offloaded(inner, pool)
    return Offloaded(app, pool)


def _lookup(module: str, qualname: str) -> Any:
    target: Any = importlib.import_module(module)
    for part in qualname.split("."):
        target = getattr(target, part)
    return target


def run_in_child(target: Any, environ: Dict[str, Any], body: bytes) -> Tuple[str, list, bytes]:
    """In the pool process: run the app on a rebuilt environ; return (status, headers, body)."""
    app = target.app if isinstance(target, Offloaded) else target
    environ["wsgi.input"] = io.BytesIO(body)
    environ["wsgi.errors"] = sys.stderr
    environ["wsgi.file_wrapper"] = _iter_file
    environ["wsgi.multiprocess"] = True
    started: List[Any] = []
    chunks: List[bytes] = []

    def start_response(status: str, headers: list, exc_info: Any = None) -> Callable[[bytes], None]:
        if exc_info and started:
            raise exc_info[1].with_traceback(exc_info[2])
        started[:] = [status, list(headers)]
        return chunks.append

    result = app(environ, start_response)
    try:
        for chunk in result:
            chunks.append(chunk)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    if not started:
        raise RuntimeError(f"WSGI app {app!r} returned without calling start_response")
    return started[0], started[1], b"".join(chunks)


def _iter_file(filelike: Any, blksize: int = 65536) -> Iterable[bytes]:
    try:
        while True:
            data = filelike.read(blksize)
            if not data:
                return
            yield data
    finally:
        close = getattr(filelike, "close", None)
        if close is not None:
            close()


class Router:
    """Dispatch on PATH_INFO: exact paths, or prefixes given with a trailing ``/*``.

    ``offload=True`` runs that route in the fork pool (see :func:`offload`).
    Unknown paths get 404.
    """

    def __init__(self) -> None:
        self._exact: Dict[str, WSGIApp] = {}
        self._prefixes: List[Tuple[str, WSGIApp]] = []

    def route(self, path: str, app: Optional[WSGIApp] = None, *, offload: bool = False) -> Any:
        """Add a route; without ``app``, a decorator that returns the function unchanged."""
        def add(inner: WSGIApp) -> WSGIApp:
            target = Offloaded(inner) if offload and not isinstance(inner, Offloaded) else inner
            if path.endswith("/*"):
                self._prefixes.append((path[:-1], target))
                self._prefixes.sort(key=lambda item: -len(item[0]))
            else:
                self._exact[path] = target
            return inner
        return add if app is None else add(app)

    def __call__(self, environ: Dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        app = self._exact.get(path)
        if app is None:
            for prefix, candidate in self._prefixes:
                if path.startswith(prefix):
                    app = candidate
                    break
            else:
                start_response("404 Not Found", [("Content-Type", "text/plain"),
                                                 ("Content-Length", "10")])
                return [b"not found\n"]
        return app(environ, start_response)
