"""Connection: the handler API (EventMachine/Packet callbacks and methods).

A handler is any class.  Subclass :class:`Connection` (the Pythonic form) or
pass a plain class, as Packet users do: the reactor then mixes Connection in
(``as_connection_class``).  One instance per connection.

Order of callbacks, for accepted and outgoing connections alike::

    post_init -> on_instance(instance) -> connection_completed
              -> receive_data(data) ... -> unbind(reason)    (exactly once)

Callbacks run in the reactor's shared runner greenlets (net/runners.py; a
handler may ask for a greenlet of its own, or for the hub), so they may block
cooperatively; an exception in a callback is logged with its traceback and
ends that connection (with ``unbind``); the server goes on.
"""
from __future__ import annotations

import inspect
import itertools
import logging
import socket
from typing import Any, Callable, Dict, Optional, Tuple, Type

from ..codec import ObjectDecoder, encode_object, get_codec
from ..errors import CodecError, FrameError, ReactorError
from ..framing import DEFAULT_MAX_FRAME_SIZE
from ..timers import Timer, TimerMethods
from .proxy import start_proxy, stop_proxy, target_ended
from .runners import HubTransport, SharedTransport
from .sendfile import stream_file
from .transport import CLOSED, OPEN, Transport

__all__ = ["Connection", "as_connection_class"]

logger = logging.getLogger(__name__)

#: Signatures are unique for the life of the process (never an fd number,
#: which the OS reuses: Packet's "BIND_n" keyed by fd could hand a worker's
#: reply to the wrong client).
_signatures = itertools.count(1)


class Connection(TimerMethods):
    """Base class for connection handlers.  Override the callbacks you need."""

    #: Codec for ``send_object`` / ``receive_object`` ("json" by default; never pickle).
    object_codec: Any = "json"
    #: Largest object frame accepted from the peer, in bytes.
    max_object_size: int = DEFAULT_MAX_FRAME_SIZE
    #: Set True only if no callback of this handler ever blocks: they then run
    #: straight in the hub (no runner greenlet at all; a few % fewer
    #: instructions per message than the default).  A blocking call inside one
    #: raises gevent's BlockingSwitchOutError, which is logged and closes the
    #: connection.
    run_in_hub: bool = False
    #: Set True to give each connection a greenlet of its own, in which all its
    #: callbacks run (``gevent.getcurrent()`` and ``gevent.local`` then are per
    #: connection).  By default callbacks run in a few shared runner greenlets
    #: (net/runners.py): they may still block, an idle connection costs no
    #: greenlet, and a message costs no greenlet switch of its own.
    greenlet_per_connection: bool = False
    #: Close the connection (``unbind(OutboundOverflow)``) when more than this
    #: many bytes are queued for a peer that does not read.  None: no limit
    #: (producers should follow pause_writing/resume_writing instead).
    max_outbound_size: Optional[int] = None
    #: The transport class behind this kind of handler (UDP has its own).
    _pg_transport_class = Transport
    #: The reconnect state of an outgoing connection with a reconnect_policy.
    _pg_reconnect: Any = None
    #: (target connection, bufsize) while proxy_incoming_to is on.
    _pg_proxy: Any = None
    #: The connections proxying into this one.
    _pg_proxied_by: Any = None

    # ----------------------------------------------------------- callbacks
    def post_init(self) -> None:
        """Instance set up, before anything else."""

    def connection_completed(self) -> None:
        """The connection is live (accepted or outgoing)."""

    def receive_data(self, data: bytes) -> None:
        """Bytes from the peer, in arbitrary chunks."""

    def receive_object(self, obj: Any) -> None:
        """A decoded object sent by the peer's ``send_object``.

        Define it to switch this handler to object mode: incoming bytes are
        then decoded as frames of ``object_codec`` instead of going to
        ``receive_data``.
        """

    def unbind(self, reason: Optional[BaseException] = None) -> None:
        """The connection is gone (reason is None for a clean close)."""

    def worker_receive(self, reply: Dict[str, Any]) -> None:
        """A worker answered a request this connection made with ``ask_worker``."""

    def ssl_handshake_completed(self) -> None:
        """The TLS handshake finished (``start_tls``, or a TLS server/connect), before any data."""

    def ssl_verify_peer(self, cert: Optional[str]) -> bool:
        """Accept the peer's certificate (PEM text; None if it sent none)?  Define it to decide.

        Called once the handshake is done and before ``ssl_handshake_completed``
        (Python's ssl has no per-certificate hook during the handshake); False
        closes the connection with ``unbind(PeerCertificateRejected)``.  The
        context's own verification (``verify_mode``, CA) has already run.
        """
        return True

    def pause_writing(self) -> None:
        """The outbound queue grew past the high watermark: stop producing."""

    def resume_writing(self) -> None:
        """The outbound queue drained below the low watermark: produce again."""

    # ------------------------------------------------------------- set-up
    def _pg_setup(self, reactor: Any, on_instance: Optional[Callable[[Any], Any]] = None,
                  *, idle_timeout: Optional[float] = None,
                  high_water: Optional[int] = None, low_water: Optional[int] = None) -> Transport:
        cls = self._pg_transport_class
        if cls is Transport:  # a stream connection: how its callbacks run
            if self.run_in_hub:
                cls = HubTransport
            elif not self.greenlet_per_connection:
                cls = SharedTransport  # the default: shared runner greenlets
        transport: Transport = cls(self, reactor)
        self._transport = transport
        self._reactor = reactor
        self._on_instance = on_instance
        self.signature = next(_signatures)
        self.connect_error: Optional[BaseException] = None
        if idle_timeout:
            transport.idle_timeout = idle_timeout
        if high_water is not None or low_water is not None:
            self.set_write_watermarks(high_water, low_water)
        if type(self).send_data is Connection.send_data:
            self.send_data = transport.send  # skip one call level on the hot path
        if _defines(type(self), "receive_object"):
            decoder = ObjectDecoder(get_codec(self.object_codec),
                                    max_frame_size=self.max_object_size)
            transport.on_data = self._make_object_reader(decoder)
        return transport

    def _make_object_reader(self, decoder: ObjectDecoder) -> Callable[[bytes], None]:
        def read_objects(data: bytes) -> None:
            try:
                objects = decoder.feed(data)
            except (FrameError, CodecError) as exc:
                logger.warning("closing %r: bad object from peer: %s", self, exc)
                self._transport._close(exc)
                return
            for obj in objects:
                self.receive_object(obj)
                if self._transport.state is not OPEN:
                    return
        return read_objects

    def _pg_started(self) -> None:
        """First callbacks, in the connection's greenlet."""
        self.post_init()
        self._pg_completed()

    def _pg_completed(self) -> None:
        if self._transport.ssl_sock is not None and not self._pg_tls_established():
            return
        self._reactor._run_after_connection_hooks(self)
        if self._on_instance is not None:
            self._on_instance(self)
        self.connection_completed()

    def _pg_tls_established(self) -> bool:
        """After a handshake: ssl_verify_peer (if defined), then ssl_handshake_completed."""
        if _defines(type(self), "ssl_verify_peer"):
            cert = self.get_peer_cert()
            if not self.ssl_verify_peer(cert):
                from ..errors import PeerCertificateRejected
                logger.warning("closing %r: ssl_verify_peer rejected the peer's certificate", self)
                self._transport._close(PeerCertificateRejected(
                    "ssl_verify_peer returned False for the peer's certificate"
                    + ("" if cert else " (the peer sent none: a server must ask for one with "
                       "verify_mode=CERT_OPTIONAL or CERT_REQUIRED)")))
                return False
        self.ssl_handshake_completed()
        return True

    def _call_unbind(self, reason: Optional[BaseException]) -> None:
        if self._pg_reconnect is not None:
            self._pg_reconnect.count(self)  # before unbind, so unbind sees the count
        try:
            if _unbind_takes_reason(type(self)):
                self.unbind(reason)
            else:
                self.unbind()  # type: ignore[call-arg]
        finally:
            if self._pg_proxy is not None:  # a source that ends lets go of its target
                stop_proxy(self._transport)
            if self._pg_proxied_by:
                target_ended(self)
            if self._pg_reconnect is not None:
                self._pg_reconnect.connection_ended(self)

    # ------------------------------------------------------------ methods
    def send_data(self, data: Any) -> None:
        """Queue bytes for the peer.  Never blocks; dropped (debug log) after close.

        ``data``: bytes or any bytes-like object (bytearray, memoryview, array);
        a str is sent encoded as UTF-8.  Anything else (an int, a dict...)
        raises TypeError naming its type: use ``send_object`` for objects."""
        self._transport.send(data)

    def send_object(self, obj: Any) -> None:
        """Send one framed object, encoded with ``object_codec`` (JSON by default)."""
        self._transport.send(encode_object(obj, get_codec(self.object_codec)))

    def close_connection(self, after_writing: bool = False) -> None:
        """Close now (queued data is dropped), or after the queue is flushed.

        Also stops a ``reconnect_policy``: a connection closed on purpose stays closed.
        """
        if self._pg_reconnect is not None:
            self._pg_reconnect.stop()
        if after_writing:
            self._transport.close_when_flushed()
        else:
            self._transport._close(None)

    def close_connection_after_writing(self) -> None:
        """Flush everything queued by ``send_data``, then close (and stop a reconnect_policy)."""
        if self._pg_reconnect is not None:
            self._pg_reconnect.stop()
        self._transport.close_when_flushed()

    def stop_reconnecting(self) -> None:
        """End a ``reconnect_policy`` without closing the live connection."""
        if self._pg_reconnect is not None:
            self._pg_reconnect.stop()

    @property
    def reconnect_failures(self) -> int:
        """Failed connection attempts in a row (with a ``reconnect_policy``)."""
        return self._pg_reconnect.failures if self._pg_reconnect is not None else 0

    def stream_file_data(self, path: Any, *, offset: int = 0, count: Optional[int] = None,
                         callback: Optional[Callable[[Any], Any]] = None) -> Any:
        """EventMachine's ``stream_file_data``: send a file, with backpressure; returns at once.

        ``os.sendfile`` on plain sockets, chunked reads otherwise.  Returns a
        ``gevent.event.AsyncResult`` set to the bytes sent (or the error);
        ``callback(bytes_sent_or_error)`` runs in this connection's greenlet
        (not at all once it has closed).  A missing file raises here.  Send nothing else until it completes.
        """
        return stream_file(self._transport, path, offset, count, callback)

    #: EventMachine's name for sending a (small) file; here any size is streamed.
    send_file_data = stream_file_data

    def proxy_incoming_to(self, other: "Connection", bufsize: Optional[int] = None) -> None:
        """EventMachine's ``proxy_incoming_to``: what this connection receives goes straight
        out of ``other`` (not to ``receive_data``), read by the hub; this side stops reading
        while ``other`` has more than ``bufsize`` bytes queued (default: its high watermark).
        See :mod:`packet_gevent.net.proxy`."""
        start_proxy(self._transport, other, bufsize)

    def stop_proxying(self) -> None:
        """EventMachine's ``stop_proxying``: received data goes to ``receive_data`` again."""
        stop_proxy(self._transport)

    def close_write(self) -> None:
        """Half-close: once everything queued is written, shut down our sending side
        (``shutdown(SHUT_WR)``: the peer reads EOF) and keep receiving.

        Later ``send_data`` is dropped.  The connection closes when the peer
        closes too (or on ``close_connection``).  Not for TLS connections.
        """
        self._transport.close_write()

    #: Twisted's name (``ITCPTransport.loseWriteConnection``).
    lose_write_connection = close_write

    # Define ``eof_received(self)`` (or Twisted's ``read_connection_lost``) to
    # keep a connection open after the peer's EOF (its half-close): it is
    # called, in order after the data, instead of closing; the handler may go
    # on writing and closes with close_connection_after_writing() or
    # close_write() (then both directions are done and the connection closes).

    def get_peername(self) -> Any:
        """The peer's address (as ``socket.getpeername()``), or None if unknown."""
        return self._transport.peername

    def start_tls(self, ssl_context: Any, *, server_side: Optional[bool] = None,
                  server_hostname: Optional[str] = None,
                  handshake_timeout: Optional[float] = None) -> bool:
        """STARTTLS: switch this live plain connection to TLS (EventMachine's ``start_tls``).

        Call it from a callback.  What ``send_data`` queued before is written
        in the clear; the handshake then runs in this connection's greenlet
        (it blocks only this connection; bounded by ``handshake_timeout``,
        default the idle timeout, else the reactor's connect_timeout, else 60
        s).  ``server_side`` defaults to True for accepted connections, False
        for outgoing ones, whose ``server_hostname`` defaults to connect's
        ``server_hostname``, else the host connected to.  Then ``ssl_verify_peer`` (if defined) and
        ``ssl_handshake_completed`` run, and True is returned; on failure
        the connection is closed (``unbind(the error)``) and False returned.
        """
        target = getattr(self, "_pg_target", None)
        if server_side is None:
            server_side = target is None
        if server_hostname is None and not server_side and target is not None and target[1] is not None:
            server_hostname = target[2].get("server_hostname") or target[0]
        transport = self._transport
        timeout = (handshake_timeout or transport.idle_timeout
                   or getattr(self._reactor, "connect_timeout", None) or 60.0)
        if not transport.start_tls(ssl_context, server_side, server_hostname, timeout):
            return False
        return self._pg_tls_established()

    def get_peer_cert(self) -> Optional[str]:
        """The peer's TLS certificate as PEM text (EventMachine's ``get_peer_cert``), or None.

        None on a plain connection or when the peer sent no certificate; the
        parsed dict is ``get_ssl_socket().getpeercert()``.
        """
        sock = self._transport.ssl_sock
        if sock is None:
            return None
        der = sock.getpeercert(binary_form=True)
        if not der:
            return None
        import ssl
        return ssl.DER_cert_to_PEM_cert(der)

    def get_ssl_socket(self) -> Any:
        """The gevent SSLSocket of a TLS connection (``version()``, ``cipher()``...), or None."""
        return self._transport.ssl_sock

    def _pg_cipher(self) -> Optional[Tuple[str, str, int]]:
        sock = self._transport.ssl_sock
        return sock.cipher() if sock is not None else None

    def get_cipher_name(self) -> Optional[str]:
        """The negotiated TLS cipher suite (e.g. ``"TLS_AES_256_GCM_SHA384"``), None on a plain connection."""
        cipher = self._pg_cipher()
        return cipher[0] if cipher else None

    def get_cipher_protocol(self) -> Optional[str]:
        """The negotiated TLS version (e.g. ``"TLSv1.3"``), None on a plain connection."""
        sock = self._transport.ssl_sock
        return sock.version() if sock is not None else None

    def get_cipher_bits(self) -> Optional[int]:
        """The secret bits of the negotiated cipher (e.g. 256), None on a plain connection."""
        cipher = self._pg_cipher()
        return cipher[2] if cipher else None

    # ------------------------------------------------------ socket options
    def _pg_socket(self, what: str) -> Any:
        transport = self._transport
        sock = transport.ssl_sock or transport.sock
        if sock is None or transport.state is CLOSED:
            raise ReactorError(f"{what} needs the connection's socket, which {self!r} does not have "
                               "(not connected yet, or closed): call it from connection_completed")
        return sock

    def set_sock_opt(self, level: int, optname: int, value: Any) -> None:
        """EventMachine's ``set_sock_opt``: ``setsockopt(level, optname, value)`` on this socket."""
        self._pg_socket("set_sock_opt").setsockopt(level, optname, value)

    def get_sock_opt(self, level: int, optname: int, buflen: Optional[int] = None) -> Any:
        """EventMachine's ``get_sock_opt``: ``getsockopt`` (an int, or bytes when ``buflen`` is given)."""
        sock = self._pg_socket("get_sock_opt")
        return sock.getsockopt(level, optname) if buflen is None else sock.getsockopt(level, optname, buflen)

    def enable_keepalive(self, idle: Optional[int] = None, interval: Optional[int] = None,
                         count: Optional[int] = None) -> None:
        """EventMachine's ``enable_keepalive``: TCP keepalive probes after ``idle`` seconds of
        silence, every ``interval`` seconds, ``count`` unanswered ones closing the connection
        (``unbind`` with the OS's error).  None keeps the system default (Linux: 7200, 75, 9)."""
        sock = self._pg_socket("enable_keepalive")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in (("TCP_KEEPIDLE", idle), ("TCP_KEEPINTVL", interval), ("TCP_KEEPCNT", count)):
            if value is not None:
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), int(value))

    def disable_keepalive(self) -> None:
        self._pg_socket("disable_keepalive").setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 0)

    def get_sockname(self) -> Any:
        """Our own address (as ``socket.getsockname()``), or None when there is no socket."""
        transport = self._transport
        sock = transport.ssl_sock or transport.sock
        if sock is None or transport.state is CLOSED:
            return None
        try:
            return sock.getsockname()
        except OSError:
            return None

    def get_outbound_data_size(self) -> int:
        """Bytes queued by ``send_data`` that the kernel has not taken yet."""
        return self._transport.out_size

    outbound_size = property(get_outbound_data_size)

    @property
    def connected(self) -> bool:
        return self._transport.state is OPEN

    def error(self) -> bool:
        """EventMachine's ``error?``: did the connection end with an error?"""
        return self._transport.reason is not None

    def pause_reading(self) -> None:
        """Stop reading from the peer (the kernel buffers, then TCP pushes back)."""
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def set_write_watermarks(self, high: Optional[int] = None, low: Optional[int] = None) -> None:
        """Outbound queue sizes that trigger ``pause_writing`` / ``resume_writing``."""
        transport = self._transport
        if high is None:
            high = transport.high_water
        if low is None:
            low = min(transport.low_water, high)
        if not 0 <= low <= high:
            raise ValueError(f"need 0 <= low ({low}) <= high ({high})")
        transport.high_water, transport.low_water = high, low

    def set_idle_timeout(self, seconds: Optional[float]) -> None:
        """EventMachine's ``comm_inactivity_timeout=``: close after this long without data."""
        self._transport.set_idle_timeout(seconds)

    set_comm_inactivity_timeout = set_idle_timeout

    # Timers (TimerMethods) run in order with this connection's other callbacks.
    def next_turn(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` once, on the next loop iteration, in order with this connection's callbacks."""
        transport = self._transport
        transport.loop.run_callback(transport.post, fn, args)

    def _timer(self, seconds: float, fn: Callable[..., Any], args: tuple, *, periodic: bool) -> Timer:
        transport = self._transport
        timer = Timer(transport.loop, seconds, fn, args, periodic=periodic,
                      dispatch=transport.post, on_done=transport.timers.discard)
        transport.timers.add(timer)
        return timer

    # Reactor shortcuts, as Packet's mixin gives them.
    def start_server(self, *args: Any, **kwargs: Any) -> Any:
        return self._reactor.start_server(*args, **kwargs)

    def connect(self, *args: Any, **kwargs: Any) -> Any:
        return self._reactor.connect(*args, **kwargs)

    def reconnect(self, host: str, port: int, handler: Any = None) -> Any:
        return self._reactor.reconnect(host, port, handler if handler is not None else self)

    def ask_worker(self, worker_name: str, data: Any = None, type: str = "request",
                   worker_key: Any = None, callback: Any = None, **extra: Any) -> Any:
        """Send a request to a worker; its reply arrives in ``worker_receive``."""
        return self._reactor.ask_worker_for(self, worker_name, data=data, type=type,
                                         worker_key=worker_key, callback=callback, **extra)

    def start_worker(self, *args: Any, **kwargs: Any) -> Any:
        return self._reactor.start_worker(*args, **kwargs)

    def delete_worker(self, *args: Any, **kwargs: Any) -> Any:
        return self._reactor.delete_worker(*args, **kwargs)

    def defer(self, fn: Callable[..., Any], *args: Any, callback: Optional[Callable[[Any], Any]] = None,
              **kwargs: Any) -> Any:
        """Run ``fn(*args, **kwargs)`` in the reactor's fork pool.

        The result (or the exception) goes to ``callback`` if given, else to
        ``worker_receive`` as a reply dict, in order with this connection's callbacks.
        """
        return self._reactor.defer_for(self, fn, args, kwargs, callback)

    @property
    def reactor(self) -> Any:
        return self._reactor

    def __repr__(self) -> str:
        transport = getattr(self, "_transport", None)
        state = transport.state if transport is not None else "new"
        return f"<{type(self).__name__} #{getattr(self, 'signature', '?')} {state}>"


_mixed_classes: Dict[type, type] = {}


def as_connection_class(handler: Any) -> Type[Connection]:
    """Return a Connection subclass for ``handler`` (a class, or a module of callbacks)."""
    if isinstance(handler, type) and issubclass(handler, Connection):
        return handler
    cached = _mixed_classes.get(handler)
    if cached is not None:
        return cached
    if isinstance(handler, type):
        mixed = type(handler.__name__, (handler, Connection), {"__module__": handler.__module__})
    elif inspect.ismodule(handler):
        namespace = {name: getattr(handler, name) for name in dir(handler)
                     if not name.startswith("__") and inspect.isfunction(getattr(handler, name))}
        mixed = type(handler.__name__.rsplit(".", 1)[-1], (Connection,), namespace)
    else:
        raise TypeError(f"a connection handler must be a class (or a module of callbacks), "
                        f"got {handler!r}")
    _mixed_classes[handler] = mixed
    return mixed


def _defines(cls: type, name: str) -> bool:
    return getattr(cls, name) is not getattr(Connection, name)


_unbind_arity: Dict[type, bool] = {}


def _unbind_takes_reason(cls: type) -> bool:
    takes = _unbind_arity.get(cls)
    if takes is None:
        try:
            params = inspect.signature(cls.unbind).parameters
            takes = len(params) >= 2 or any(p.kind is p.VAR_POSITIONAL for p in params.values())
        except (TypeError, ValueError):
            takes = True
        _unbind_arity[cls] = takes
    return takes
