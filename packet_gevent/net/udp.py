"""UDP: a datagram socket driven like a connection (EventMachine's ``open_datagram_socket``).

``reactor.open_datagram_socket(host, port, Handler)`` binds a UDP socket
(IPv4 or IPv6; port 0 picks one: ``conn.get_sockname()``) and returns the
handler instance.  Each datagram arrives whole in ``receive_data(data)`` (up
to 64 KiB, the most UDP carries: the socket is read with a 64 KiB buffer,
where gevent's DatagramServer reads 8 KiB and cuts the rest off), with
``get_peername()`` its sender; ``send_data(data)`` answers that sender,
``send_datagram(data, host, port)`` sends anywhere.

It reuses the stream transport's actor: one greenlet (or ``run_in_hub``),
one mailbox, callbacks in order, a callback may block (the socket is not
read meanwhile: datagrams wait in the kernel's buffer, and the sender seen
by ``get_peername()`` is always that of the datagram being handled).  The
socket closes with ``close_connection()`` or the reactor's stop, and the
handler gets ``unbind`` once.  Datagrams the kernel cannot take at once are
queued and sent in order when the socket is writable again.
"""
from __future__ import annotations

import logging
import socket
from typing import Any, Callable, Dict, Optional, Tuple, Type

import _socket
import gevent.socket

from ..errors import ReactorError, ReactorStopping
from .connection import Connection
from .transport import _WOULD_BLOCK, CALLBACK_ERRORS, CLOSED, Transport

__all__ = ["DatagramConnection", "DatagramTransport", "open_datagram_socket", "MAX_DATAGRAM"]

logger = logging.getLogger(__name__)

#: Bytes asked for per recvfrom: more than the largest UDP payload (65,507
#: bytes over IPv4, 65,527 over IPv6), so a datagram is never cut.
MAX_DATAGRAM = 65536


class DatagramTransport(Transport):
    """Transport of a UDP socket: recvfrom into the actor, sendto out.  Internal."""

    __slots__ = ()

    def _on_readable(self) -> None:  # in the hub
        if self.idle:
            try:
                data, address = self.sock.recvfrom(MAX_DATAGRAM)
            except _WOULD_BLOCK:
                return
            except OSError as exc:  # e.g. an ICMP error reported late: the socket lives on
                logger.debug("datagram socket %r: recvfrom failed: %r", self.conn, exc)
                return
            self.peername = address
            self.greenlet.switch(data)
        else:
            self.read_watcher.stop()
            self.busy_stopped = True

    def _on_readable_in_hub(self) -> None:  # in the hub, for run_in_hub handlers
        try:
            data, address = self.sock.recvfrom(MAX_DATAGRAM)
        except _WOULD_BLOCK:
            return
        except OSError as exc:
            logger.debug("datagram socket %r: recvfrom failed: %r", self.conn, exc)
            return
        self.peername = address
        try:
            self.on_data(data)
        except CALLBACK_ERRORS as exc:
            self._callback_failed(self.on_data, exc)

    def send(self, data: Any) -> None:
        address = self.peername
        if address is None:
            raise ReactorError("send_data on a datagram socket answers the sender of the last "
                               "datagram, and none has arrived yet: use send_datagram(data, host, port)")
        self.send_to(data, address)

    def send_to(self, data: Any, address: Any) -> None:
        if data.__class__ is not bytes:
            data = data.encode("utf-8") if isinstance(data, str) else bytes(data)
        if self.state is CLOSED:
            logger.debug("datagram for %r on closed %r dropped (%d bytes)", address, self.conn, len(data))
            return
        if not self.outbuf:
            try:
                self.sock.sendto(data, address)
                return
            except _WOULD_BLOCK:
                pass
            # Any other OSError (EMSGSIZE: over 64 KiB; a bad address) is the
            # caller's to see: it raises from send_data / send_datagram.
        self.outbuf.append((data, address))
        self.out_size += len(data)
        if len(self.outbuf) == 1 and self.write_watcher is not None:
            self.write_watcher.start(self._on_writable)

    def _on_writable(self) -> None:  # in the hub
        outbuf = self.outbuf
        while outbuf:
            data, address = outbuf[0]
            try:
                self.sock.sendto(data, address)
            except _WOULD_BLOCK:
                return
            except OSError as exc:
                logger.warning("datagram of %d bytes to %r dropped: %r", len(data), address, exc)
            outbuf.popleft()
            self.out_size -= len(data)
        self.write_watcher.stop()
        self._after_write()


class DatagramConnection(Connection):
    """A handler for a UDP socket (see the module docstring)."""

    _pg_transport_class = DatagramTransport

    def send_datagram(self, data: bytes, host: str, port: int) -> None:
        """Send one datagram to (host, port).  Never blocks for numeric addresses;
        a host name is resolved first (cooperatively, through gevent's resolver)."""
        transport = self._transport
        sock = transport.sock
        if sock is None:
            logger.debug("send_datagram on closed %r dropped", self)
            return
        transport.send_to(data, _address(sock.family, host, port))

    def _pg_started(self) -> None:
        # post_init, on_instance; no connection_completed (nothing connects).
        self.post_init()
        if self._on_instance is not None:
            self._on_instance(self)


def _address(family: int, host: str, port: int) -> Tuple[Any, ...]:
    try:
        _socket.inet_pton(family, host)
        return (host, port)
    except (OSError, TypeError):
        pass
    infos = gevent.socket.getaddrinfo(host, port, family, socket.SOCK_DGRAM)
    return infos[0][4]


_mixed: Dict[Any, type] = {}


def datagram_class(handler: Any) -> Type[DatagramConnection]:
    """A DatagramConnection subclass for ``handler`` (a Connection subclass or a plain class)."""
    if isinstance(handler, type) and issubclass(handler, DatagramConnection):
        return handler
    cached = _mixed.get(handler)
    if cached is None:
        if not isinstance(handler, type):
            raise TypeError(f"a datagram handler must be a class, got {handler!r}")
        # The plain Connection (EventMachine's default handler) is already a base of DatagramConnection.
        bases = (DatagramConnection,) if handler is Connection else (handler, DatagramConnection)
        cached = _mixed[handler] = type(handler.__name__, bases, {"__module__": handler.__module__})
    return cached


def bind_datagram_socket(host: str, port: int) -> Any:
    infos = socket.getaddrinfo(host, port, 0, socket.SOCK_DGRAM, 0, socket.AI_PASSIVE)
    family, _type, proto, _, sockaddr = infos[0]
    sock = _socket.socket(family, socket.SOCK_DGRAM, proto)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(sockaddr)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def open_datagram_socket(reactor: Any, host: str, port: int, handler: Any,
                         on_instance: Optional[Callable[[Any], Any]] = None) -> DatagramConnection:
    """``reactor.open_datagram_socket``: bind now, return the handler instance."""
    if reactor._stopping:
        raise ReactorStopping("the reactor is stopping: it opens no new datagram sockets")
    conn = datagram_class(handler)()
    sock = bind_datagram_socket(host, port)
    transport = conn._pg_setup(reactor, on_instance)
    reactor.connections[conn.signature] = conn
    transport.attach(sock)
    transport.start(conn._pg_started)
    logger.info("datagram socket on %r with %s", sock.getsockname(), type(conn).__name__)
    return conn
