"""Streaming a file to a connection (EventMachine's ``stream_file_data`` / ``send_file_data``).

:func:`stream_file` runs in a greenlet of its own and returns at once with a
``gevent.event.AsyncResult`` (EventMachine returns a Deferrable): it is set
to the number of bytes sent, or to the error.  On a plain socket the kernel
copies the file with ``os.sendfile`` (no pass through user space); on TLS,
or where sendfile is refused, the file is read in 256 KiB chunks and sent
with ``send_data``.  Backpressure: the next chunk goes only when the
connection's outbound queue is at or below its low watermark, so a slow
peer never makes us hold more than one chunk plus the watermark.

As in EventMachine, what the handler sends while a stream runs may land
between its chunks: wait for the result before sending more.
"""
from __future__ import annotations

import errno
import logging
import os
from typing import Any, Callable, Optional

import gevent
import gevent.event
from gevent.socket import wait_write

from .transport import OPEN

__all__ = ["stream_file", "CHUNK_SIZE"]

logger = logging.getLogger(__name__)

#: Bytes per sendfile call or per read.
CHUNK_SIZE = 256 * 1024

#: sendfile errors that mean "not for this pair of descriptors": fall back to reads.
_NO_SENDFILE = (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSOCK, errno.EBADF)


def stream_file(transport: Any, path: Any, offset: int = 0, count: Optional[int] = None,
                callback: Optional[Callable[[Any], Any]] = None) -> gevent.event.AsyncResult:
    """Send ``count`` bytes (default: to the end) of the file at ``path`` from ``offset``."""
    result = gevent.event.AsyncResult()
    fd = os.open(os.fspath(path), os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))  # errors raise here
    try:
        size = os.fstat(fd).st_size
    except OSError:
        os.close(fd)
        raise
    remaining = max(0, size - offset) if count is None else count
    if callback is not None:
        result.rawlink(lambda done: transport.post(callback, (done.value if done.successful()
                                                              else done.exception,)))
    gevent.spawn(_run, transport, fd, offset, remaining, result)
    return result


def _run(transport: Any, fd: int, offset: int, remaining: int, result: Any) -> None:
    sent = 0
    use_sendfile = transport.ssl_sock is None and hasattr(os, "sendfile")
    try:
        while remaining > 0:
            if transport.state is not OPEN or transport.write_shut or transport.close_after_writing:
                raise ConnectionError(f"the connection closed after {sent} bytes of the file")
            if transport.out_size > transport.low_water:  # backpressure: let the queue drain
                _wait_drained(transport)
                continue
            if use_sendfile:
                try:
                    n = os.sendfile(transport.fd, fd, offset, min(remaining, CHUNK_SIZE))
                except BlockingIOError:
                    _wait_writable(transport)
                    continue
                except OSError as exc:
                    if exc.errno in _NO_SENDFILE and sent == 0:
                        use_sendfile = False
                        continue
                    raise
            else:
                chunk = os.pread(fd, min(remaining, CHUNK_SIZE), offset)
                n = len(chunk)
                if n:
                    transport.send(chunk)
            if n == 0:  # the file is shorter than announced
                break
            offset += n
            remaining -= n
            sent += n
        result.set(sent)
    except Exception as exc:
        logger.debug("streaming a file to %r failed: %r", transport.conn, exc)
        result.set_exception(exc)
    finally:
        os.close(fd)


def _wait_drained(transport: Any) -> None:
    waiter = transport.drain_waiter = gevent.event.Event()
    try:
        if transport.out_size > transport.low_water and transport.state is OPEN:
            waiter.wait(5.0)  # set by the write path or by the close; bounded anyway
    finally:
        transport.drain_waiter = None


def _wait_writable(transport: Any) -> None:
    try:
        wait_write(transport.fd, 1.0)  # bounded: the loop re-checks that the connection is open
    except OSError:  # timeout, or the fd closed under us
        pass
