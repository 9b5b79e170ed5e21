"""Proxying: bytes received on one connection go straight out of another (EventMachine's
``proxy_incoming_to``).

``a.proxy_incoming_to(b)`` makes what ``a`` receives skip ``a.receive_data``:
the hub reads it and hands it to ``b``'s send path at once (no greenlet
switch; on TLS, from ``a``'s reader greenlet).  Backpressure: when ``b`` has
more than ``bufsize`` bytes queued (default: its high watermark) ``a`` stops
reading until ``b``'s queue has drained to its low watermark, so a slow
``b`` slows ``a``'s peer down instead of filling our memory.  For both
directions proxy each side to the other.

When ``b`` has closed, ``a`` stops proxying, gets ``proxy_target_unbound()``,
and the data read then goes to ``a.receive_data`` again; ``stop_proxying()``
does the same on demand.  It works by switching ``a``'s transport to a
subclass whose read callbacks forward (``__class__`` assignment: the normal
read path pays nothing for this feature).  A user's own ``pause_reading`` /
``resume_reading`` meanwhile share the one pause switch with it.
"""
from __future__ import annotations

import logging
import socket
from typing import Any, Dict, Optional

import gevent.event

from .transport import _WOULD_BLOCK, CLOSED, OPEN, READ_SIZE, Transport

__all__ = ["start_proxy", "stop_proxy", "target_ended"]

logger = logging.getLogger(__name__)

_proxy_classes: Dict[type, type] = {}


def _proxy_class(cls: type) -> type:
    proxy = _proxy_classes.get(cls)
    if proxy is None:
        proxy = _proxy_classes[cls] = type(f"Proxying{cls.__name__}", (cls,), {
            "__slots__": (),
            "_on_readable": _on_readable,
            "_on_readable_in_hub": _on_readable,
            "_tls_deliver": _tls_deliver,
            "_pg_unproxied": cls,
        })
    return proxy


def start_proxy(source: Transport, target_conn: Any, bufsize: Optional[int]) -> None:
    from ..errors import ReactorError
    if getattr(type(source), "_pg_unproxied", None) is not None:
        stop_proxy(source)
    if source.state is CLOSED or target_conn._transport.state is CLOSED:
        raise ReactorError("proxy_incoming_to needs two live connections")
    if getattr(source, "sock", None) is not None and source.sock.type != socket.SOCK_STREAM:
        raise ReactorError("proxy_incoming_to works between stream connections")
    source.conn._pg_proxy = (target_conn, bufsize)
    if target_conn._pg_proxied_by is None:
        target_conn._pg_proxied_by = set()
    target_conn._pg_proxied_by.add(source.conn)
    source.__class__ = _proxy_class(type(source))
    _rearm(source)


def stop_proxy(source: Transport) -> None:
    original = getattr(type(source), "_pg_unproxied", None)
    if original is None:
        return
    source.__class__ = original
    target_conn = source.conn._pg_proxy[0]
    source.conn._pg_proxy = None
    if target_conn._pg_proxied_by:
        target_conn._pg_proxied_by.discard(source.conn)
    _rearm(source)


def target_ended(target_conn: Any) -> None:
    """``target_conn`` was unbound: its sources stop proxying and hear ``proxy_target_unbound``."""
    sources, target_conn._pg_proxied_by = target_conn._pg_proxied_by, None
    for conn in sources or ():
        if conn._pg_proxy is None or conn._pg_proxy[0] is not target_conn:
            continue
        stop_proxy(conn._transport)
        notify = getattr(conn, "proxy_target_unbound", None)
        if notify is not None:
            conn._transport.post(notify)


def _rearm(source: Transport) -> None:
    """Restart an active read watcher so it calls the read callback of the current class."""
    watcher = source.read_watcher
    if watcher is not None and watcher.active:
        watcher.stop()
        watcher.start(source._on_readable_in_hub if source.in_hub else source._on_readable)


def _on_readable(self: Any) -> None:  # in the hub: read and forward, whatever the callbacks do
    try:
        data = self.sock.recv(READ_SIZE)
    except _WOULD_BLOCK:
        return
    except OSError as exc:
        self._abort(exc)
        return
    if not data:
        self._abort(None)
        return
    if self.idle_timeout:
        self.last_activity = self.loop.now()
    _forward(self, data)


def _tls_deliver(self: Any, data: bytes, handled: Any) -> None:
    try:
        _forward(self, data)
    finally:
        if self.user_paused:
            self.tls_resume = handled
        else:
            handled.set()


def _forward(source: Any, data: bytes) -> None:
    conn = source.conn
    target_conn, bufsize = conn._pg_proxy
    target = target_conn._transport
    if target.state is not OPEN:
        # The target is closing (its unbind, which tells us, has not run yet):
        # this data and what follows are the source's own again.
        stop_proxy(source)
        source.post(source.on_data, (data,))
        return
    target.send(data)
    limit = target.high_water if bufsize is None else bufsize
    if target.out_size > limit and not source.user_paused:
        source.pause_reading()
        drained = target.drain_waiter = gevent.event.Event()
        drained.rawlink(lambda _event: _drained(source, target))


def _drained(source: Any, target: Any) -> None:  # in the hub
    target.drain_waiter = None
    if source.state is OPEN:
        source.resume_reading()
