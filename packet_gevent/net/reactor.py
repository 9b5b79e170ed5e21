"""The core Reactor: servers, outgoing connections, timers, hooks, services, run/stop.

Packet style::

    def setup(reactor):
        reactor.start_server("127.0.0.1", 11006, EchoHandler)
    Reactor.run(setup)                  # serves until SIGINT/SIGTERM or stop()

Instance style::

    r = Reactor()
    server = r.start_server("127.0.0.1", 0, EchoHandler)   # server.port is bound
    r.start()                            # returns at once, serves in the background
    ...
    r.stop(timeout=5)                    # graceful

Several reactors can run at once on one hub; a reactor started in another
thread runs on that thread's hub.  This is the core reactor: it imports no
process code.  Workers and the fork pool run as services
(:meth:`Reactor.add_service`) of :class:`packet_gevent.Reactor`, the façade
users import.
"""
from __future__ import annotations

import concurrent.futures
import inspect
import logging
import signal
import ssl as _ssl
import threading
from typing import Any, Callable, Dict, List, Optional, Protocol, Tuple

import greenlet
import gevent
import gevent.event
import gevent.socket

from .connection import Connection, as_connection_class
from ..errors import ReactorError, ReactorStopping
from .server import Server, listener_for
from ..timers import Timer, TimerMethods
from .transport import CALLBACK_ERRORS, CLOSED, OPEN, raw_socket_from
from .reconnect import ReconnectPolicy, Reconnector
from .threads import call_from_thread
from .udp import open_datagram_socket
from .watch import watch as watch_fd

__all__ = ["Reactor", "Service"]

logger = logging.getLogger(__name__)

#: Listen backlog.  Connections beyond ``max_connections`` wait here.
DEFAULT_BACKLOG = 1024


class _ClassOrInstanceHook:
    """``Reactor.after_connection(x)`` registers for the class (Packet's
    class-level hook, ``x`` a method name or a function taking
    (reactor, handler, sock)); ``reactor.after_connection(fn)`` registers
    ``fn(handler, sock)`` for that reactor only."""

    def __get__(self, obj: Any, cls: type) -> Callable[[Any], Any]:
        if obj is None:
            def register_for_class(hook: Any) -> Any:
                hooks = list(cls.__dict__.get("_class_after_connection", ()))
                for base in cls.__mro__[1:]:
                    if "_class_after_connection" in base.__dict__:
                        hooks = list(base.__dict__["_class_after_connection"]) + hooks
                        break
                hooks.append(hook)
                setattr(cls, "_class_after_connection", hooks)
                return hook
            return register_for_class

        def register_for_instance(hook: Callable[[Any, Any], Any]) -> Any:
            obj._after_connection.append(hook)
            return hook
        return register_for_instance


class Service(Protocol):
    """What :meth:`Reactor.add_service` runs alongside a reactor."""

    def start(self) -> None: ...

    def pending(self) -> int: ...

    def stop(self, timeout: float) -> None: ...


def _check_on_instance(on_instance: Any) -> None:
    """Refuse, when it is passed, an ``on_instance`` that cannot take the instance."""
    if on_instance is None:
        return
    if not callable(on_instance):
        raise TypeError(f"on_instance must be a callable taking the connection instance "
                        f"(Packet's |instance| block), got {type(on_instance).__name__}: "
                        f"{on_instance!r}")
    try:
        signature = inspect.signature(on_instance)
    except (TypeError, ValueError):  # a builtin without a signature: trust it
        return
    try:
        signature.bind(None)
    except TypeError:
        raise TypeError(f"on_instance={on_instance!r} must take one argument, the connection "
                        f"instance (Packet's |instance| block), but its signature is "
                        f"{signature}; e.g. on_instance=lambda conn: conn.wow()") from None


def _no_processes(what: str) -> ReactorError:
    return ReactorError(f"{what} needs processes, which the core reactor "
                        f"(packet_gevent.net.reactor.Reactor) does not run: use packet_gevent.Reactor")


class Reactor(TimerMethods):
    """An event reactor: the registry of servers, connections, timers and services."""

    _class_after_connection: List[Any] = []
    after_connection = _ClassOrInstanceHook()

    def __init__(self, *,
                 max_connections: Optional[int] = None,
                 idle_timeout: Optional[float] = None,
                 connect_timeout: Optional[float] = None,
                 backlog: int = DEFAULT_BACKLOG,
                 stop_grace: float = 5.0) -> None:
        #: Defaults for ``start_server`` / ``connect`` options.
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.connect_timeout = connect_timeout
        self.backlog = backlog
        self.stop_grace = stop_grace
        self.servers: List[Server] = []
        #: Live connections by signature (unique for the life of the process).
        self.connections: Dict[int, Connection] = {}
        self.result_hash: Dict[Any, Any] = {}
        self._after_connection: List[Callable[[Any, Any], Any]] = []
        self._timers: set = set()
        self._started = False
        self._stopping = False
        self._stopped = gevent.event.Event()
        self._services: List[Service] = []
        self._reconnect_after_unbind: Dict[int, tuple] = {}
        self.hub = gevent.get_hub()

    # ------------------------------------------------------------ servers
    def start_server(self, host: Any, port: Optional[int], handler: Any,
                     on_instance: Optional[Callable[[Any], Any]] = None, *,
                     ssl_context: Optional[_ssl.SSLContext] = None,
                     max_connections: Optional[int] = None,
                     idle_timeout: Optional[float] = None,
                     backlog: Optional[int] = None,
                     high_water: Optional[int] = None,
                     low_water: Optional[int] = None) -> Server:
        """Listen on (host, port) — or on the UNIX socket path ``host`` when port is None.

        The socket is bound now (``server.port`` gives the port picked for
        port 0); it accepts once the reactor is started.
        """
        handler_class = as_connection_class(handler)
        _check_on_instance(on_instance)
        listener, unix_path = listener_for(host, port, backlog or self.backlog)
        server = Server(self, listener, handler_class, on_instance, ssl_context=ssl_context,
                        max_connections=max_connections if max_connections is not None
                        else self.max_connections,
                        unix_path=unix_path,
                        connection_options={"idle_timeout": idle_timeout if idle_timeout is not None
                                            else self.idle_timeout,
                                            "high_water": high_water, "low_water": low_water})
        self.servers.append(server)
        if self._started and not self._stopping:
            server.start()
        logger.info("listening on %r with %s", server.address, handler_class.__name__)
        return server

    def start_unix_server(self, path: str, handler: Any, on_instance: Optional[Callable[[Any], Any]] = None,
                          **options: Any) -> Server:
        return self.start_server(path, None, handler, on_instance, **options)

    def stop_server(self, server: Server) -> None:
        """Stop accepting on ``server`` and close its socket; its live connections go on."""
        server.close()
        if server in self.servers:
            self.servers.remove(server)

    def _start_connection(self, server: Server, sock: Any, address: Any) -> None:  # in the hub
        try:
            conn = server.handler_class()
            transport = conn._pg_setup(self, server.on_instance, **server.connection_options)
        except Exception:
            # No connection exists to unbind: close the socket and give the
            # max_connections slot back, or the server would fill up for good.
            logger.exception("could not set up a %s for the connection from %r; closing it",
                             server.handler_class.__name__, address)
            sock.close()
            server._connection_ended()
            return
        conn._pg_server = server
        transport.peername = address if address else None
        self.connections[conn.signature] = conn
        if server.ssl_context is None:
            transport.attach(sock)
            transport.start(conn._pg_started)
        else:
            transport.start(lambda: self._tls_accept(conn, sock, server.ssl_context), may_block=True)

    def _tls_accept(self, conn: Connection, raw: Any, context: _ssl.SSLContext) -> None:
        from gevent.ssl import SSLSocket
        # post_init first, as for outgoing connections (and EventMachine, where
        # post_init starts TLS): unbind, even after a failed handshake, always
        # follows post_init.
        try:
            conn.post_init()
        except BaseException:
            raw.close()
            raise
        if conn._transport.state is CLOSED:  # closed before the handshake began
            raw.close()
            return
        gsock = gevent.socket.socket(raw.family, raw.type, raw.proto, raw.detach())
        # A client that never handshakes must not hold this greenlet (and a
        # max_connections slot) forever: the idle timeout covers the handshake.
        gsock.settimeout(conn._transport.idle_timeout or self.connect_timeout)
        try:
            tls = SSLSocket(sock=gsock, server_side=True, _context=context)
            tls.settimeout(None)
        except Exception as exc:
            gsock.close()
            conn.connect_error = exc
            conn._transport._close(exc)
            return
        if conn._transport.state is CLOSED:  # closed (or stopped) during the handshake
            tls.close()
            return
        conn._transport.attach(tls, ssl_sock=tls)
        conn._pg_completed()

    # --------------------------------------------------------------- UDP
    def open_datagram_socket(self, host: str, port: int, handler: Any,
                             on_instance: Optional[Callable[[Any], Any]] = None) -> Any:
        """EventMachine's ``open_datagram_socket``: a UDP socket bound now, as a connection.

        Returns the handler instance (``get_sockname()`` gives the port picked
        for port 0).  See :mod:`packet_gevent.net.udp`.
        """
        return open_datagram_socket(self, host, port, handler, on_instance)

    # --------------------------------------------------------- connecting
    def connect(self, host: Any, port: Optional[int], handler: Any,
                on_instance: Optional[Callable[[Any], Any]] = None, *,
                connect_timeout: Optional[float] = None,
                ssl_context: Optional[_ssl.SSLContext] = None,
                server_hostname: Optional[str] = None,
                idle_timeout: Optional[float] = None,
                reconnect_policy: Any = None,
                bind_address: Optional[Tuple[str, int]] = None) -> Any:
        """Open an outgoing connection; returns the handler instance at once.

        The connect (and DNS, through gevent's resolver) happens in the
        background.  On failure ``unbind(reason)`` is called without
        ``connection_completed`` and ``instance.connect_error`` holds the reason.
        ``port=None`` connects to the UNIX socket path ``host``.
        ``reconnect_policy`` (a :class:`~packet_gevent.net.reconnect.ReconnectPolicy`,
        or True for its defaults) connects again with back-off whenever it ends.
        ``bind_address=(host, port)`` connects from that local address (port 0:
        any port; EventMachine's ``bind_connect``); one that cannot be bound is
        reported like a failed connect, through ``unbind(reason)``.
        """
        _check_on_instance(on_instance)
        if bind_address is not None:
            if port is None:
                raise ReactorError("bind_address is for TCP connects; a UNIX socket path has none")
            if not (isinstance(bind_address, tuple) and len(bind_address) == 2
                    and isinstance(bind_address[0], str) and isinstance(bind_address[1], int)):
                raise TypeError(f"bind_address must be a (host, port) tuple, got {bind_address!r}")
        if isinstance(handler, type) or not isinstance(handler, Connection):
            conn = as_connection_class(handler)()
        else:
            conn = handler
            live = getattr(conn, "_transport", None)
            if live is not None and not (live.state is CLOSED and live.unbind_done):
                raise ReactorError(f"{conn!r} is still connected (or connecting): close it first, "
                                  "or use reconnect(), which is a no-op while it is connected")
        options = {"timeout": connect_timeout if connect_timeout is not None else self.connect_timeout,
                   "ssl_context": ssl_context, "server_hostname": server_hostname,
                   "bind_address": bind_address}
        transport = conn._pg_setup(self, on_instance,
                                   idle_timeout=idle_timeout if idle_timeout is not None else self.idle_timeout)
        conn._pg_target = (host, port, options)
        if reconnect_policy is not None:
            conn._pg_reconnect = Reconnector(self, host, port, ReconnectPolicy.coerce(reconnect_policy))
        self.connections[conn.signature] = conn
        if self._stopping:
            # A connection opened now would outlive the reactor: refuse it the
            # way a failed connect is reported (post_init, then unbind(reason)).
            refused = ReactorStopping("the reactor is stopping: it opens no new connections")
            conn.connect_error = refused
            transport.start(lambda: (conn.post_init(), transport._close(refused)), may_block=True)
            return conn
        transport.start(lambda: self._run_outgoing(conn, host, port, options, first=True), may_block=True)
        return conn

    def bind_connect(self, bind_host: str, bind_port: int, host: Any, port: int, handler: Any,
                     on_instance: Optional[Callable[[Any], Any]] = None, **options: Any) -> Any:
        """EventMachine's ``bind_connect``: :meth:`connect` from the local address ``bind_host:bind_port``."""
        return self.connect(host, port, handler, on_instance, bind_address=(bind_host, bind_port), **options)

    def reconnect(self, host: Any, port: Optional[int], handler: Connection) -> Connection:
        """Connect ``handler`` (an instance) again; a no-op while it is connected or connecting."""
        if self._stopping:
            # Packet clients reconnect from unbind; during stop() that would
            # open a connection nobody closes (stop's unbinds reconnecting).
            logger.debug("reconnect of %r ignored: the reactor is stopping", handler)
            return handler
        transport = getattr(handler, "_transport", None)
        if transport is None:
            return self.connect(host, port, handler)
        if transport.state is not CLOSED or not transport.unbind_done:
            logger.debug("reconnect of %r ignored: still %s", handler, transport.state)
            return handler
        old = transport.greenlet
        if old and old is not greenlet.getcurrent():
            # Its unbind is still running (blocked) in the old greenlet: the new
            # connection's callbacks must not overlap it; reconnect once it returns.
            self._reconnect_after_unbind[id(handler)] = (host, port)
            return handler
        _host, _port, options = getattr(handler, "_pg_target", (host, port, {"timeout": self.connect_timeout}))
        transport = handler._pg_setup(self, handler._on_instance, idle_timeout=transport.idle_timeout)
        handler._pg_target = (host, port, options)
        self.connections[handler.signature] = handler
        transport.start(lambda: self._run_outgoing(handler, host, port, options, first=False),
                        may_block=True)
        return handler

    def _run_outgoing(self, conn: Connection, host: Any, port: Optional[int], options: Dict[str, Any],
                      *, first: bool) -> None:  # in the connection's greenlet
        if first:
            conn.post_init()
        transport = conn._transport
        if transport.state is CLOSED:  # closed before the connect began
            return
        try:
            if port is None:
                import socket as _stdsocket
                gsock = gevent.socket.socket(_stdsocket.AF_UNIX, _stdsocket.SOCK_STREAM)
                gsock.settimeout(options.get("timeout"))
                gsock.connect(host)
            else:
                gsock = gevent.socket.create_connection((host, port), timeout=options.get("timeout"),
                                                        source_address=options.get("bind_address"))
            context = options.get("ssl_context")
            if context is not None:
                from gevent.ssl import SSLSocket
                gsock.settimeout(options.get("timeout"))
                gsock = SSLSocket(sock=gsock, server_side=False, _context=context,
                                  server_hostname=options.get("server_hostname") or
                                  (host if port is not None else None))
                gsock.settimeout(None)
        except Exception as exc:  # refused, DNS failure, timeout, TLS failure...
            logger.debug("connect to %r:%r failed: %r", host, port, exc)
            conn.connect_error = exc
            transport._close(exc)
            return
        if transport.state is CLOSED:  # closed (e.g. reactor stopped) while connecting
            gsock.close()
            return
        try:
            transport.peername = gsock.getpeername()
        except OSError:
            transport.peername = None
        if options.get("ssl_context") is not None:
            transport.attach(gsock, ssl_sock=gsock)
        else:
            transport.attach(raw_socket_from(gsock))
        conn._pg_completed()

    def _run_after_connection_hooks(self, conn: Connection) -> None:
        sock = conn._transport.ssl_sock or conn._transport.sock
        for hook in type(self)._class_after_connection:
            if isinstance(hook, str):
                getattr(self, hook)(conn, sock)
            else:
                hook(self, conn, sock)
        for hook in self._after_connection:
            hook(conn, sock)

    def _connection_ended(self, conn: Connection, signature: Optional[int] = None) -> None:
        if signature is None:
            signature = conn.signature
        if self.connections.get(signature) is conn:
            del self.connections[signature]
        server = getattr(conn, "_pg_server", None)
        if server is not None:
            conn._pg_server = None
            server._connection_ended()
        target = self._reconnect_after_unbind.pop(id(conn), None)
        if target is not None:  # asked for from outside while unbind ran (reconnect)
            self.reconnect(target[0], target[1], conn)

    def deliver(self, signature: int, fn: Callable[..., Any], *args: Any) -> bool:
        """Run ``fn(*args)`` on the connection ``signature``, in order with its other callbacks.

        It runs where that connection's callbacks run (a shared runner, or its
        own greenlet with ``greenlet_per_connection``).  Returns False (nothing
        runs) when that connection has gone.
        """
        conn = self.connections.get(signature)
        if conn is None:
            return False
        return conn._transport.post(fn, args)

    # ---------------------------------------------- timers (TimerMethods)
    # Reactor timers run each callback in a greenlet of its own.
    # Once stop() was called, new next_turn calls and timers are dropped (EventMachine
    # drops them too); the timers that existed are cancelled by stop().
    def next_turn(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` once, on the next loop iteration, in a greenlet of its own.

        Dropped (debug log) once ``stop()`` has been called."""
        if self._stopping:
            logger.debug("next_turn(%r) dropped: the reactor is stopping", fn)
            return
        self.hub.loop.run_callback(self._dispatch, fn, args)

    def call_from_thread(self, fn: Callable[..., Any], *args: Any) -> "concurrent.futures.Future[Any]":
        """Run ``fn(*args)`` on this reactor's hub from ANY thread (the one thread-safe method).

        It runs on the next loop turn, in a greenlet of its own (it may block,
        and may call any reactor or connection method: ``conn.send_data``,
        ``reactor.stop``, ``reactor.deliver(signature, fn)`` to run in a
        connection's greenlet).  Returns a ``concurrent.futures.Future`` with its
        result or exception; wait on it from the other thread, never from the
        reactor's own (it would wait for itself).
        """
        return call_from_thread(self.hub, fn, args)

    def _timer(self, seconds: float, fn: Callable[..., Any], args: tuple, *, periodic: bool) -> Timer:
        timer = Timer(self.hub.loop, seconds, fn, args, periodic=periodic,
                      dispatch=self._dispatch, on_done=self._timers.discard)
        if self._stopping:  # returned cancelled, so cancel() and .active still work
            logger.debug("timer for %r dropped: the reactor is stopping", fn)
            timer.cancel()
            return timer
        self._timers.add(timer)
        return timer

    def _dispatch(self, fn: Callable[..., Any], args: tuple) -> None:
        gevent.spawn_raw(self._run_logged, fn, args)

    def _run_logged(self, fn: Callable[..., Any], args: tuple) -> None:
        try:
            fn(*args)
        except CALLBACK_ERRORS as exc:
            if self._error_handler is None:
                logger.exception("timer callback %r raised", fn)
            else:
                self._report_error(exc, None)

    # ------------------------------------------------------- error handler
    _error_handler: Optional[Callable[[BaseException, Any], Any]] = None

    def error_handler(self, fn: Optional[Callable[[BaseException, Any], Any]] = None) -> Any:
        """EventMachine's ``EM.error_handler``: ``fn(error, connection)`` gets every exception
        escaping a connection callback (``connection`` the handler; its connection still
        ends with ``unbind(error)``) or a reactor timer / next_turn (``connection`` None),
        instead of the error log line.  It runs where the callback ran and should not block.
        ``error_handler(None)`` goes back to logging.  Usable as a decorator.
        """
        if fn is not None and not callable(fn):
            raise TypeError(f"error_handler needs a callable (or None), got {fn!r}")
        self._error_handler = fn
        return fn

    def _report_error(self, exc: BaseException, conn: Any) -> None:
        handler = self._error_handler
        try:
            handler(exc, conn)
        except CALLBACK_ERRORS:
            logger.exception("error_handler %r raised while handling %r (from %r)", handler, exc, conn)

    # --------------------------------------------------------------- watch
    def watch(self, fd: Any, handler: Any, on_instance: Optional[Callable[[Any], Any]] = None) -> Any:
        """EventMachine's ``EM.watch``: readiness callbacks for a descriptor the caller owns.

        ``conn.set_notify_readable(True)`` / ``set_notify_writable(True)`` turn on
        ``notify_readable()`` / ``notify_writable()``; ``detach()`` stops (the fd stays
        open).  See :mod:`packet_gevent.net.watch`.
        """
        return watch_fd(self, fd, handler, on_instance)

    # -------------------------------------------------------------- attach
    def attach(self, sock: Any, handler: Any, on_instance: Optional[Callable[[Any], Any]] = None) -> Any:
        """EventMachine's ``EM.attach``: drive an existing connected stream socket as a connection.

        ``sock`` is a socket object (stdlib or gevent) or a file descriptor; the
        connection takes it over (closes it at the end; pass ``os.dup(fd)`` to
        keep yours).  Returns the handler instance; callbacks as for an
        accepted connection (``post_init``, ``connection_completed``...).
        """
        import socket as _stdsocket
        if self._stopping:
            raise ReactorStopping("the reactor is stopping: it attaches no new connections")
        if isinstance(sock, int):
            sock = _stdsocket.socket(fileno=sock)
        if sock.type != _stdsocket.SOCK_STREAM:
            raise ValueError(f"attach needs a connected stream socket, got {sock!r} "
                             "(for UDP use open_datagram_socket)")
        conn = as_connection_class(handler)()
        raw = raw_socket_from(sock)
        transport = conn._pg_setup(self, on_instance, idle_timeout=self.idle_timeout)
        try:
            transport.peername = raw.getpeername() or None
        except OSError:
            transport.peername = None
        self.connections[conn.signature] = conn
        transport.attach(raw)
        transport.start(conn._pg_started)
        return conn

    # ------------------------------------------------------------ services
    def add_service(self, service: Service) -> Service:
        """Run ``service`` with this reactor: started with it, waited for and stopped by ``stop``.

        A service is any object with ``start()``, ``pending() -> int`` (work
        in flight that a graceful stop waits for, within its grace) and
        ``stop(timeout)``.  Services stop after the connections have closed,
        in the reverse order of their addition.  Workers and the fork pool
        plug in this way (:class:`packet_gevent.Reactor`).
        """
        self._services.append(service)
        if self._started and not self._stopping:
            service.start()
        return service

    # Packet's worker and pool methods need the processes that a core reactor
    # does not import; packet_gevent.Reactor provides them.
    def ask_worker(self, worker_name: str, data: Any = None, type: str = "request",
                   worker_key: Any = None, callback: Any = None, **extra: Any) -> Optional[int]:
        """Send a request to a worker (on :class:`packet_gevent.Reactor`)."""
        raise _no_processes("ask_worker")

    def ask_worker_for(self, conn: Connection, worker_name: str, **kwargs: Any) -> Any:
        """``conn.ask_worker(...)``: a request whose reply goes to ``conn.worker_receive``."""
        raise _no_processes("ask_worker")

    def start_worker(self, worker: Any = None, worker_key: Any = None, **options: Any) -> Any:
        raise _no_processes("start_worker")

    def delete_worker(self, worker: Any = None, worker_key: Any = None) -> None:
        raise _no_processes("delete_worker")

    def defer_for(self, conn: Connection, fn: Callable[..., Any], args: tuple, kwargs: dict,
                  callback: Optional[Callable[[Any], Any]]) -> Any:
        """``conn.defer(...)``: run ``fn`` in a process pool, answer on ``conn``."""
        raise _no_processes("defer")

    # ---------------------------------------------------------- lifecycle
    @property
    def running(self) -> bool:
        return self._started and not self._stopped.is_set()

    def start(self) -> "Reactor":
        """Start serving in the background (returns at once).

        A reactor runs once: ``start()`` after ``stop()`` raises ReactorError."""
        if self._started:
            return self
        if self._stopping:
            raise ReactorError("this reactor was stopped before it started; a reactor runs "
                               "once: create a new Reactor")
        self._started = True
        self.hub = gevent.get_hub()
        for server in self.servers:
            server.start()
        for service in list(self._services):
            service.start()
        return self

    def serve_forever(self) -> None:
        """Start if needed, then block the calling greenlet until the reactor stops.

        Returns at once when ``stop()`` was called already (``EM.run { EM.stop }``)."""
        if not self._stopping:
            self.start()
        self._stopped.wait()

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Wait until the reactor has stopped; True if it has."""
        return self._stopped.wait(timeout)

    def stop(self, timeout: Optional[float] = None) -> None:
        """Stop gracefully.

        Stop accepting; give callbacks in flight, queued output and pending
        work pending in a service (worker requests, pool tasks) up to ``timeout``
        seconds (default ``stop_grace``) to finish; close every connection
        (each gets ``unbind``); stop the services with what is left of the
        grace (workers and pools: terminate, then kill).  Safe to call
        twice; returns when everything is down.
        """
        current = greenlet.getcurrent()
        if current is self.hub or any(c._transport.greenlet is current
                                      for c in self.connections.values()):
            # Called from a connection callback (or a run_in_hub one, in the
            # hub, which cannot wait): stop from another greenlet so this
            # callback can return, and never wait for ourselves.
            if not self._stopping:
                gevent.spawn(self.stop, timeout)
            return
        if self._stopping:
            self._stopped.wait()
            return
        self._stopping = True
        grace = self.stop_grace if timeout is None else timeout
        deadline = self.hub.loop.now() + grace
        for server in list(self.servers):
            server.close()
        for timer in list(self._timers):
            timer.cancel()
        self._drain(deadline)
        for conn in list(self.connections.values()):
            conn._transport._close(None)
        self._wait_unbound(max(0.5, deadline - self.hub.loop.now()))
        for service in reversed(self._services):
            service.stop(max(0.5, deadline - self.hub.loop.now()))
        self._stopped.set()

    def _drain(self, deadline: float) -> None:
        """Wait (bounded) for busy callbacks, queued output and the services' pending work."""
        def busy() -> bool:
            for conn in self.connections.values():
                transport = conn._transport
                if transport.state is OPEN and transport.pending():
                    return True
            return any(service.pending() for service in self._services)
        while busy() and self.hub.loop.now() < deadline:
            gevent.sleep(0.01)

    def _wait_unbound(self, timeout: float) -> None:
        end = self.hub.loop.now() + timeout
        while self.connections and self.hub.loop.now() < end:
            gevent.sleep(0.005)
        doomed = []
        left = list(self.connections.values())
        for conn in left:
            glet = conn._transport.greenlet
            if glet is not None and glet and not glet.dead:
                logger.warning("killing %r: a callback is still blocked after the grace period", conn)
                # Thrown from the hub: a greenlet that dies returns to its parent
                # (the hub), so throwing from here would never come back to us.
                self.hub.loop.run_callback(glet.throw, greenlet.GreenletExit)
                doomed.append(glet)
        end = self.hub.loop.now() + 1.0
        while any(not glet.dead for glet in doomed) and self.hub.loop.now() < end:
            gevent.sleep(0.005)
        for conn in left:
            self.connections.pop(conn.signature, None)

    def __enter__(self) -> "Reactor":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @classmethod
    def run(cls, setup: Optional[Callable[["Reactor"], Any]] = None, **options: Any) -> "Reactor":
        """Packet's ``Reactor.run``: build, ``setup(reactor)``, serve until stopped.

        SIGINT and SIGTERM (in the main thread) stop the reactor gracefully;
        ``run`` then returns the stopped reactor.  A setup that calls
        ``reactor.stop()`` makes ``run`` return once it has stopped; a setup
        that raises has everything it opened closed before the exception
        propagates.
        """
        reactor = cls(**options)
        if setup is not None:
            try:
                setup(reactor)
            except BaseException:
                # Release what setup opened (listening sockets, connections, workers)
                # now, not at some gc pass: a second run must be able to bind again.
                reactor.stop(timeout=0)
                raise
        handlers = []
        previous = {}
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                previous[signum] = signal.getsignal(signum)
                handlers.append(gevent.signal_handler(signum, reactor._on_signal, signum))
        try:
            reactor.serve_forever()
        finally:
            for handler in handlers:
                handler.cancel()
            # Stopping libev's signal watcher leaves the C-level disposition at
            # SIG_DFL while Python still reports its own handler: a later ^C
            # would kill the process instead of raising KeyboardInterrupt.
            for signum, old in previous.items():
                if old is not None:
                    signal.signal(signum, old)
        return reactor

    def _on_signal(self, signum: int) -> None:
        logger.info("signal %s: stopping the reactor", signal.Signals(signum).name)
        gevent.spawn(self.stop)

    def __repr__(self) -> str:
        state = "running" if self.running else ("stopped" if self._stopped.is_set() else "new")
        return f"<Reactor {state} servers={len(self.servers)} connections={len(self.connections)}>"


