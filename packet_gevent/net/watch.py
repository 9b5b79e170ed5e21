"""Watching a file descriptor for readiness (EventMachine's ``EM.watch``).

``conn = reactor.watch(fd, Handler)`` then ``conn.set_notify_readable(True)``
(and/or ``set_notify_writable``): the handler's ``notify_readable()`` /
``notify_writable()`` run, in the connection's greenlet like every other
callback, whenever the descriptor is ready; the handler does its own reads
and writes (a pipe, an inotify fd, a device, a socket another library
owns).  Readiness is level-triggered: the libev watcher is stopped while a
notification waits or runs, and started again after it, so a handler that
does not drain the descriptor is called again on the next loop turn, never
twice at once.  The descriptor stays the caller's: ``detach()`` (or
``close_connection()``, or the reactor's stop) stops watching, runs
``unbind`` and leaves the fd open.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Optional

from .connection import Connection, as_connection_class
from .transport import OPEN, Transport

__all__ = ["WatchConnection", "watch"]

logger = logging.getLogger(__name__)

_READ, _WRITE = 1, 2


class WatchTransport(Transport):
    """A transport that owns no socket: it reports readiness of someone else's fd.  Internal."""

    __slots__ = ()

    def attach_fd(self, fd: int) -> None:
        self.fd = fd
        self.state = OPEN
        self.read_watcher = self.loop.io(fd, _READ)
        self.write_watcher = self.loop.io(fd, _WRITE)

    def send(self, data: Any) -> None:
        from ..errors import ReactorError
        raise ReactorError("a watched descriptor is not written through send_data: "
                           "write to it yourself from notify_writable")

    def want(self, watcher: Any, on: bool, callback: Callable[[], None]) -> None:
        if self.state is not OPEN or watcher is None:
            return
        if on:
            watcher.start(callback)
        else:
            watcher.stop()


class WatchConnection(Connection):
    """A handler for a watched descriptor (see the module docstring)."""

    _pg_transport_class = WatchTransport
    _pg_notify_readable = False
    _pg_notify_writable = False

    def notify_readable(self) -> None:
        """The descriptor is readable (while ``set_notify_readable(True)``)."""

    def notify_writable(self) -> None:
        """The descriptor is writable (while ``set_notify_writable(True)``)."""

    def set_notify_readable(self, on: bool) -> None:
        """EventMachine's ``notify_readable=``."""
        self._pg_notify_readable = bool(on)
        transport = self._transport
        transport.want(transport.read_watcher, self._pg_notify_readable, self._pg_on_readable)

    def set_notify_writable(self, on: bool) -> None:
        """EventMachine's ``notify_writable=``."""
        self._pg_notify_writable = bool(on)
        transport = self._transport
        transport.want(transport.write_watcher, self._pg_notify_writable, self._pg_on_writable)

    def is_notify_readable(self) -> bool:
        return self._pg_notify_readable

    def is_notify_writable(self) -> bool:
        return self._pg_notify_writable

    def detach(self) -> int:
        """EventMachine's ``detach``: stop watching (``unbind`` follows); return the fd, still open."""
        fd = self._transport.fd
        self._transport._close(None)
        return fd

    def get_fd(self) -> int:
        return self._transport.fd

    # In the hub: stop the level-triggered watcher until the notification ran.
    def _pg_on_readable(self) -> None:
        self._transport.read_watcher.stop()
        self._transport.post(self._pg_notify, ("readable",))

    def _pg_on_writable(self) -> None:
        self._transport.write_watcher.stop()
        self._transport.post(self._pg_notify, ("writable",))

    def _pg_notify(self, what: str) -> None:  # in the connection's greenlet
        if what == "readable":
            self.notify_readable()
            self.set_notify_readable(self._pg_notify_readable)
        else:
            self.notify_writable()
            self.set_notify_writable(self._pg_notify_writable)

    def _pg_started(self) -> None:
        self.post_init()
        if self._on_instance is not None:
            self._on_instance(self)


def watch(reactor: Any, fd: Any, handler: Any,
          on_instance: Optional[Callable[[Any], Any]] = None) -> WatchConnection:
    """``reactor.watch``: watch ``fd`` (an int or an object with ``fileno()``); returns the instance."""
    from ..errors import ReactorStopping
    if reactor._stopping:
        raise ReactorStopping("the reactor is stopping: it watches no new descriptors")
    fd = fd if isinstance(fd, int) else fd.fileno()
    cls = handler if isinstance(handler, type) and issubclass(handler, WatchConnection) else \
        _watch_class(handler)
    conn = cls()
    transport = conn._pg_setup(reactor, on_instance)
    reactor.connections[conn.signature] = conn
    transport.attach_fd(fd)
    transport.start(conn._pg_started)
    return conn


_mixed: dict = {}


def _watch_class(handler: Any) -> type:
    cached = _mixed.get(handler)
    if cached is None:
        base = as_connection_class(handler)
        # The plain Connection (EventMachine's default handler) is already a base of WatchConnection.
        bases = (WatchConnection,) if base is Connection else (base, WatchConnection)
        cached = _mixed[handler] = type(base.__name__, bases, {"__module__": base.__module__})
    return cached
