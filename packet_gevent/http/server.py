"""The WSGI server: one :class:`HTTPConnection` per client on a Reactor, the app in its greenlet.

::

    from packet_gevent.http import WSGIServer
    server = WSGIServer(app, "127.0.0.1", 8000)
    server.serve_forever()          # until SIGINT/SIGTERM; graceful

Each connection is a reactor :class:`~packet_gevent.Connection`.  Bytes go
through the sans-IO parser (:mod:`.parser`); each complete request head runs
the app right away, in the connection's greenlet, so the app may block
cooperatively.  Requests are answered one at a time in arrival order
(pipelining).  The body is not read before the app asks for it
(:mod:`.body`): while the app runs the reactor does not read the socket, so
an unread upload stays in the kernel and TCP pushes back on the client.
Each response is framed by :mod:`.response` and goes out through the
connection's queue; past its high watermark (``pause_writing``) the app's
iterator is not advanced until the queue drains below the low watermark, so
a slow reader costs at most ~64 KiB here.

Time limits: ``header_timeout`` from the first byte of a request head to its
end (slowloris: 408 and close), ``keepalive_timeout`` for an idle connection
(the reactor's idle timeout), ``body_timeout`` for each wait on body bytes
and ``min_body_rate`` for a body that trickles (408), ``send_timeout`` for
each wait on a client that does not read.
"""
from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, Optional
from urllib.parse import unquote_to_bytes

from ..errors import ClientDisconnected, HTTPRequestError
from ..net.connection import Connection
from ..net.server import Server
from .body import FileWrapper, RequestBody, SocketIO
from .parser import Limits, RequestHead, make_parser, split_target
from .response import Response, error_response

__all__ = ["WSGIServer", "HTTPConnection", "ServerOptions", "serve"]

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("packet_gevent.http.access")

WSGIApp = Callable[[Dict[str, Any], Callable[..., Any]], Iterable[bytes]]


@dataclass
class ServerOptions:
    """Settings of a WSGI server (defaults in brackets are the documented ones)."""

    #: Request limits (see :class:`~.parser.Limits`).
    limits: Limits = field(default_factory=Limits)
    #: "httptools" or "h11"; None: httptools when installed.
    backend: Optional[str] = None
    #: Seconds from the first byte of a request head to its end [10].
    header_timeout: float = 10.0
    #: Seconds an idle keep-alive connection is kept [5].
    keepalive_timeout: float = 5.0
    #: Seconds the app waits for the next piece of a request body [30].
    body_timeout: float = 30.0
    #: Slowest average upload accepted once a body has taken ``body_timeout``,
    #: in bytes/s [1024]: a body trickled a byte at a time gets 408.
    min_body_rate: float = 1024.0
    #: Seconds a response waits for a client that does not read [30].
    send_timeout: float = 30.0
    #: Concurrent connections; more wait in the listen backlog [1000].
    max_connections: Optional[int] = 1000
    #: Unread request body drained (and dropped) to keep a connection alive [64 KiB].
    max_discard: int = 65536
    #: Log one line per request on the "packet_gevent.http.access" logger.
    access_log: bool = False
    #: Outbound queue watermarks (asyncio's defaults).
    high_water: int = 65536
    low_water: int = 16384
    #: ``wsgi.multiprocess`` (True under ``--processes N``).
    multiprocess: bool = False


#: Seconds a stop waits for the first request of a connection accepted just before it.
FRESH_GRACE = 1.0

#: Request header names already turned into their environ keys.
_ENVIRON_KEYS: Dict[bytes, Optional[str]] = {}


def _environ_key(name: bytes) -> Optional[str]:
    key = _ENVIRON_KEYS.get(name)
    if key is None and name not in _ENVIRON_KEYS:
        text = name.decode("latin-1")
        if "_" in text:
            # X_Forwarded_For and X-Forwarded-For would both become
            # HTTP_X_FORWARDED_FOR: drop the underscore spelling (gunicorn does too).
            key = None
        else:
            key = text.upper().replace("-", "_")
            if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                key = "HTTP_" + key
        if len(_ENVIRON_KEYS) < 1000:
            _ENVIRON_KEYS[name] = key
    return key


class HTTPConnection(Connection):
    """One HTTP client.  A server subclasses it with ``app``, ``options``, ``base_environ``."""

    app: WSGIApp
    options: ServerOptions = ServerOptions()
    base_environ: Dict[str, Any] = {}
    #: Set on the server's class when it stops: answers then say Connection: close.
    draining = False

    def post_init(self) -> None:
        options = self.options
        self._parser = make_parser(options.backend, options.limits)
        self._events = self._parser.events
        self._header_timer: Any = None
        self._write_paused = False
        self._refused = False
        self._requests = 0
        self.low_water = options.low_water
        self.set_write_watermarks(options.high_water, options.low_water)
        self.socket_io = SocketIO(self)
        # The environ items that are the same for every request of this connection.
        environ = self.base_environ.copy()
        peer = self.get_peername()
        if isinstance(peer, tuple):
            environ["REMOTE_ADDR"] = peer[0]
            environ["REMOTE_PORT"] = str(peer[1])
        environ["packet_gevent.connection"] = self
        self._base_environ = environ

    # -- reactor callbacks -------------------------------------------------------
    def receive_data(self, data: bytes) -> None:
        parser = self._parser
        try:
            parser.feed(data)
        except HTTPRequestError as exc:
            self._process()  # answer the good requests before the bad one, in order
            self._refuse(exc)
            return
        if self._events:
            self._process()
        if parser.in_head and self._header_timer is None and self.connected:
            self._header_timer = self.add_timer(self.options.header_timeout,
                                                self._on_header_timeout)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False

    def unbind(self, reason: Optional[BaseException] = None) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    # -- requests ----------------------------------------------------------------------
    def _process(self) -> None:
        events = self._events
        while events and self.connected:
            event = events.popleft()
            if event.__class__ is not RequestHead:
                continue  # the rest of a body the app did not read: drained below
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None
            if not self._handle(event):
                events.clear()
                self.close_connection_after_writing()
                return
        error = self._parser.error
        if error is not None and not events:  # bad bytes after good requests read by the app
            self._refuse(error)

    def _on_header_timeout(self) -> None:
        self._header_timer = None
        if self._parser.in_head and self.connected:
            logger.info("%r: request head not complete after %.1f s (header_timeout); closing",
                        self, self.options.header_timeout)
            self.send_data(error_response(408, "request head not received in time"))
            self.close_connection_after_writing()

    def _refuse(self, exc: HTTPRequestError) -> None:
        if not self.connected or self._refused:
            return
        self._refused = True
        logger.info("%r: refused a request with %d: %s", self, exc.status, exc)
        self.send_data(error_response(exc.status, str(exc)))
        self.close_connection_after_writing()

    def _environ(self, head: RequestHead, body: RequestBody) -> Dict[str, Any]:
        environ = self._base_environ.copy()
        path, query = split_target(head.target)
        if b"%" in path:
            path = unquote_to_bytes(path)
        environ["REQUEST_METHOD"] = head.method
        environ["PATH_INFO"] = path.decode("latin-1")
        environ["QUERY_STRING"] = query.decode("latin-1")
        environ["SERVER_PROTOCOL"] = "HTTP/1.1" if head.version == "1.1" else "HTTP/1.0"
        environ["wsgi.input"] = body
        for name, value in head.headers:
            key = _environ_key(name)
            if key is None:
                continue
            text = value.decode("latin-1")
            if key in environ and key.startswith("HTTP_"):
                environ[key] += "," + text
            else:
                environ[key] = text
        return environ

    def _handle(self, head: RequestHead) -> bool:
        """Run the app for one request; True if the connection may carry another."""
        self._requests += 1
        body = RequestBody(self, head)
        response = Response(self, head)
        environ = self._environ(head, body)
        try:
            result = self.app(environ, response.start_response)
            try:
                if result.__class__ is list and len(result) == 1 and not response.headers_sent:
                    response.send_single(result[0])
                elif isinstance(result, FileWrapper) and not response.headers_sent:
                    self.socket_io.send_file_response(response, result)
                else:
                    for chunk in result:
                        if chunk:
                            response.write(chunk)
                response.finish()
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
        except ClientDisconnected as exc:
            logger.debug("%r: client gone during %s %r: %s", self, head.method, head.target, exc)
            self.close_connection()
            return False
        except HTTPRequestError as exc:  # the body turned out bad (too big, malformed, too slow)
            if response.headers_sent:
                self.close_connection()
            else:
                self._refuse(exc)
            return False
        except Exception:
            logger.exception("WSGI app raised on %s %r", head.method, head.target)
            if not self.connected:
                return False
            if response.headers_sent:
                self.close_connection()  # the client sees a cut response, not a wrong one
            else:
                self.send_data(error_response(500))
            return False
        if self.options.access_log:
            self._log_access(head, response)
        if not (response.keep_alive and self.connected):
            return False
        return body._done or body.drain(self.options.max_discard)

    def _log_access(self, head: RequestHead, response: Response) -> None:
        peer = self.get_peername()
        access_logger.info('%s "%s %s HTTP/%s" %d %d',
                           peer[0] if isinstance(peer, tuple) else "-", head.method,
                           head.target.decode("latin-1"), head.version, response.code,
                           response.sent_bytes)


class WSGIServer:
    """Serve a WSGI app over HTTP/1.x on a :class:`packet_gevent.Reactor`.

    ``reactor``: the reactor to serve on (default: a new ``packet_gevent.Reactor``,
    whose fork pool runs offloaded routes; ``offload_processes`` sizes it).
    ``listener``: serve on this already listening socket instead of binding
    ``host:port`` (``--processes N`` hands the same one to every process).
    ``offload=True`` runs the whole app in the reactor's fork pool
    (:mod:`.offload`; a single route: ``Router.route(..., offload=True)``).
    Other keyword options are :class:`ServerOptions` fields.
    """

    def __init__(self, app: WSGIApp, host: str = "127.0.0.1", port: int = 8000, *,
                 reactor: Any = None, listener: Any = None, offload: bool = False,
                 offload_processes: Optional[int] = None, **options: Any) -> None:
        if offload:
            from .offload import Offloaded
            app = Offloaded(app)
        self.app = app
        self.options = ServerOptions(**options)
        if reactor is None:
            from ..packet import Reactor
            reactor = Reactor(pool_size=offload_processes)
        self.reactor = reactor
        handler = self._handler = type("HTTPConnection", (HTTPConnection,), {
            "app": staticmethod(app), "options": self.options, "__module__": __name__})
        opts = self.options
        if listener is None:
            self.server: Server = reactor.start_server(
                host, port, handler, max_connections=opts.max_connections,
                idle_timeout=opts.keepalive_timeout, high_water=opts.high_water,
                low_water=opts.low_water)
        else:
            self.server = self._serve_on(listener, handler)
        address = self.server.address
        handler.base_environ = {
            "SCRIPT_NAME": "",
            "SERVER_NAME": str(address[0]) if isinstance(address, tuple) else "localhost",
            "SERVER_PORT": str(address[1]) if isinstance(address, tuple) else "",
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": False,
            "wsgi.multiprocess": opts.multiprocess,
            "wsgi.run_once": False,
            "wsgi.input_terminated": True,
            "wsgi.file_wrapper": FileWrapper,
            "packet_gevent.reactor": reactor,
        }

    def _serve_on(self, listener: Any, handler: type) -> Server:
        # The core reactor binds its own sockets; an inherited listener is
        # registered the way start_server registers a new one.
        from ..net.transport import raw_socket_from
        opts = self.options
        server = Server(self.reactor, raw_socket_from(listener), handler, None,
                        max_connections=opts.max_connections,
                        connection_options={"idle_timeout": opts.keepalive_timeout,
                                            "high_water": opts.high_water,
                                            "low_water": opts.low_water})
        self.reactor.servers.append(server)
        if self.reactor.running:
            server.start()
        return server

    @property
    def address(self) -> Any:
        return self.server.address

    @property
    def port(self) -> Optional[int]:
        return self.server.port

    def start(self) -> "WSGIServer":
        """Start serving in the background (the reactor runs in the hub)."""
        self.reactor.start()
        return self

    def serve_forever(self) -> None:
        """Serve until SIGINT/SIGTERM (in the main thread) or ``stop()``; then stop gracefully."""
        import signal
        import threading
        import gevent
        handlers = []
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                handlers.append(gevent.signal_handler(signum, lambda: gevent.spawn(self.stop)))
        try:
            self.reactor.serve_forever()
        finally:
            for handler in handlers:
                handler.cancel()

    def stop(self, timeout: Optional[float] = None) -> None:
        """Stop accepting, let requests in flight finish (within ``timeout``), close.

        A connection accepted just before the stop whose first request has
        not arrived yet gets up to FRESH_GRACE seconds for it: closing it at
        once would fail a client that did nothing wrong (under ``--processes``
        the other processes go on accepting from the shared listener).
        """
        import gevent
        self._handler.draining = True
        self.reactor.stop_server(self.server)
        loop = gevent.get_hub().loop
        deadline = loop.now() + FRESH_GRACE
        while loop.now() < deadline and any(
                isinstance(conn, HTTPConnection) and conn.connected and conn._requests == 0
                and not conn._events and not conn._parser.in_head
                for conn in list(self.reactor.connections.values())):
            gevent.sleep(0.01)
        self.reactor.stop(timeout)


def serve(app: WSGIApp, host: str = "127.0.0.1", port: int = 8000, **options: Any) -> None:
    """Serve ``app`` until SIGINT/SIGTERM (see :class:`WSGIServer` for the options)."""
    server = WSGIServer(app, host, port, **options)
    logger.info("serving %r on http://%s:%s", app, host, server.port)
    server.serve_forever()
