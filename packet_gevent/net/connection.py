"""Connection: the handler API (EventMachine/Packet callbacks and methods).

A handler is any class.  Subclass :class:`Connection` (the Pythonic form) or
pass a plain class, as Packet users do: the reactor then mixes Connection in
(``as_connection_class``).  One instance per connection.

Order of callbacks, for accepted and outgoing connections alike::

    post_init -> on_instance(instance) -> connection_completed
              -> receive_data(data) ... -> unbind(reason)    (exactly once)

Every callback runs in the connection's own greenlet (see transport.py), so it
may block cooperatively; an exception in a callback is logged with its
traceback and ends that connection (with ``unbind``); the server goes on.
"""
from __future__ import annotations

import inspect
import itertools
import logging
from typing import Any, Callable, Dict, Optional, Type

from ..codec import ObjectDecoder, encode_object, get_codec
from ..errors import FrameError, CodecError
from ..framing import DEFAULT_MAX_FRAME_SIZE
from ..timers import Timer, TimerMethods
from .transport import OPEN, Transport

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
    #: straight in the hub (no greenlet per connection, no switch per message;
    #: ~uvloop speed).  A blocking call inside one raises gevent's
    #: BlockingSwitchOutError, which is logged and closes the connection.
    run_in_hub: bool = False
    #: Close the connection (``unbind(OutboundOverflow)``) when more than this
    #: many bytes are queued for a peer that does not read.  None: no limit
    #: (producers should follow pause_writing/resume_writing instead).
    max_outbound_size: Optional[int] = None

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

    def pause_writing(self) -> None:
        """The outbound queue grew past the high watermark: stop producing."""

    def resume_writing(self) -> None:
        """The outbound queue drained below the low watermark: produce again."""

    # ------------------------------------------------------------- set-up
    def _pg_setup(self, reactor: Any, on_instance: Optional[Callable[[Any], Any]] = None,
                  *, idle_timeout: Optional[float] = None,
                  high_water: Optional[int] = None, low_water: Optional[int] = None) -> Transport:
        transport = Transport(self, reactor)
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
        self._reactor._run_after_connection_hooks(self)
        if self._on_instance is not None:
            self._on_instance(self)
        self.connection_completed()

    def _call_unbind(self, reason: Optional[BaseException]) -> None:
        if _unbind_takes_reason(type(self)):
            self.unbind(reason)
        else:
            self.unbind()  # type: ignore[call-arg]

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
        """Close now (queued data is dropped), or after the queue is flushed."""
        if after_writing:
            self._transport.close_when_flushed()
        else:
            self._transport._close(None)

    def close_connection_after_writing(self) -> None:
        """Flush everything queued by ``send_data``, then close."""
        self._transport.close_when_flushed()

    def get_peername(self) -> Any:
        """The peer's address (as ``socket.getpeername()``), or None if unknown."""
        return self._transport.peername

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

    # Timers (TimerMethods) run in this connection's greenlet, in order with its callbacks.
    def next_turn(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` once, on the next loop iteration, in this connection's greenlet."""
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
        ``worker_receive`` as a reply dict, in this connection's greenlet.
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
