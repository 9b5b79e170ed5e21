"""Listening servers: gevent's StreamServer accept loop feeding Connections.

We reuse ``gevent.server.StreamServer`` for what it does well (the accept
watcher, ``max_accept`` batching, back-off on EMFILE) and plug in through its
hooks: ``do_read`` returns the raw accepted fd (no gevent socket object is
built per connection), ``do_handle`` runs in the hub and starts the
connection's greenlet, and ``full()`` implements ``max_connections``.

When a server is full it stops accepting: extra clients wait in the kernel's
listen backlog (they are neither refused nor lost) and are accepted as soon
as a connection ends.
"""
from __future__ import annotations

import errno
import logging
import os
import socket
import stat
from typing import Any, Callable, Optional, Tuple

import _socket
import gevent.socket
from gevent.server import StreamServer

from ..errors import AddressInUse
from .transport import raw_socket_from

__all__ = ["Server"]

logger = logging.getLogger(__name__)


class _AcceptServer(StreamServer):
    """StreamServer whose accepted sockets go straight to a packet_gevent Server."""

    def __init__(self, listener: Any, owner: "Server") -> None:
        self._owner = owner
        # StreamServer wants a gevent socket; it unwraps it to the raw one.
        gsock = gevent.socket.socket(listener.family, listener.type, listener.proto,
                                     fileno=os.dup(listener.fileno()))
        super().__init__(gsock, handle=owner._accepted, spawn=None)

    def do_read(self) -> Any:
        try:
            fd, address = self.socket._accept()
        except BlockingIOError:
            return None
        return fd, address

    def do_close(self, *args: Any) -> None:
        # The connection owns the fd now; it closes it when the connection ends.
        pass

    def full(self) -> bool:
        owner = self._owner
        return owner.max_connections is not None and owner.connection_count >= owner.max_connections

    def wrap_socket_and_handle(self, *args: Any) -> Any:  # TLS is handled by the Connection
        return self.handle(*args)


class Server:
    """A listening socket of a Reactor.

    ``address`` is the bound address (port 0 is resolved to the real port),
    ``connection_count`` the live connections, ``max_connections`` the limit
    (None: unlimited).
    """

    def __init__(self, reactor: Any, listener: socket.socket, handler_class: type,
                 on_instance: Optional[Callable[[Any], Any]], *, ssl_context: Any = None,
                 max_connections: Optional[int] = None, unix_path: Optional[str] = None,
                 connection_options: Optional[dict] = None) -> None:
        self.reactor = reactor
        self.listener = listener
        self.address = listener.getsockname()
        self.family = listener.family
        self.handler_class = handler_class
        self.on_instance = on_instance
        self.ssl_context = ssl_context
        self.max_connections = max_connections
        self.unix_path = unix_path
        self.connection_options = connection_options or {}
        self.connection_count = 0
        self.accepted = 0
        self._stream_server: Optional[_AcceptServer] = None
        #: stop_accepting() was called: a connection ending must not re-arm accept.
        self._accept_paused = False

    @property
    def host(self) -> Any:
        return self.address[0] if isinstance(self.address, tuple) else self.address

    @property
    def port(self) -> Optional[int]:
        return self.address[1] if isinstance(self.address, tuple) else None

    @property
    def accepting(self) -> bool:
        return self._stream_server is not None and self._stream_server.started

    def start(self) -> None:
        if self._stream_server is None:
            self._stream_server = _AcceptServer(self.listener, self)
        self._accept_paused = False
        self._stream_server.start()

    def stop_accepting(self) -> None:
        """Stop accepting (clients wait in the backlog) until ``start()``."""
        self._accept_paused = True
        if self._stream_server is not None:
            self._stream_server.stop_accepting()

    def close(self) -> None:
        """Stop accepting and close the listening socket (live connections go on)."""
        if self._stream_server is not None:
            self._stream_server.close()
            self._stream_server = None
        try:
            self.listener.close()
        except OSError:
            pass
        if self.unix_path:
            try:
                os.unlink(self.unix_path)
            except OSError:
                pass

    def _accepted(self, fd: int, address: Any) -> None:  # in the hub
        self.accepted += 1
        raw = _socket.socket(self.family, socket.SOCK_STREAM, 0, fd)
        sock = raw_socket_from(raw)
        self.connection_count += 1
        self.reactor._start_connection(self, sock, address)

    def _connection_ended(self) -> None:
        self.connection_count -= 1
        stream_server = self._stream_server
        if (stream_server is not None and stream_server.started and not self._accept_paused
                and self.max_connections is not None
                and self.connection_count == self.max_connections - 1):
            stream_server.start_accepting()

    def __repr__(self) -> str:
        return f"<Server {self.address!r} handler={self.handler_class.__name__} conns={self.connection_count}>"


def listener_for(host: Any, port: Optional[int], backlog: int) -> Tuple[socket.socket, Optional[str]]:
    """Bind and listen: TCP for (host, port), a UNIX socket when ``port`` is None."""
    if port is None:
        path = os.fspath(host)
        if os.path.exists(path):
            if not stat.S_ISSOCK(os.stat(path).st_mode):
                # Only a stale *socket* is ours to remove: never a user's file.
                raise FileExistsError(f"{path!r} exists and is not a socket; "
                                      "pick another path for the UNIX socket server")
            if _unix_socket_is_live(path):
                raise AddressInUse(errno.EADDRINUSE,
                                   f"UNIX socket {path!r} is in use by a live server; stop it or "
                                   f"pick another path")
            try:
                os.unlink(path)  # stale socket file from a dead process
            except FileNotFoundError:  # removed meanwhile
                pass
        sock = _socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(path)
        sock.listen(backlog)
        sock.setblocking(False)
        return sock, path
    infos = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
    family, type_, proto, _, sockaddr = infos[0]
    sock = _socket.socket(family, socket.SOCK_STREAM, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(sockaddr)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise AddressInUse(errno.EADDRINUSE,
                               f"cannot listen on {host}:{port}: the address is already in use "
                               f"(another server runs there); stop it, pick another port, or "
                               f"pass port 0 to get a free one") from exc
        raise
    sock.setblocking(False)
    return sock, None


def _unix_socket_is_live(path: str) -> bool:
    """Does a server accept on ``path``?  A non-blocking connect: never waits in the hub.

    ECONNREFUSED (nobody listens) means a stale file; EAGAIN (a live server whose
    backlog is full) counts as live, like a completed connect.
    """
    probe = _socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.setblocking(False)
        err = probe.connect_ex(path)
    finally:
        probe.close()
    return err in (0, errno.EAGAIN, errno.EINPROGRESS)
