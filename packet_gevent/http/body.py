"""Request and response bodies that stream: ``wsgi.input``, ``wsgi.file_wrapper``, waits on the socket.

While the app runs, the connection's greenlet is busy and the reactor does
not read its socket (that is the reactor's backpressure).  So when the app
asks ``wsgi.input`` for bytes that have not arrived, :class:`SocketIO` reads
the socket itself, from the app's greenlet, waiting cooperatively; and when
the outbound queue is past its high watermark it waits for the socket to take
it.  This is the one place of the HTTP server that reaches into the
connection's transport (its socket and fd): the reactor layer has no
"wait for my own socket from inside my callback" API.

A large upload is therefore read only as fast as the app consumes it, one
64 KiB recv at a time; a large download (or ``wsgi.file_wrapper``, sent with
``os.sendfile``) is sent only as fast as the client reads it.
"""
from __future__ import annotations

import errno
import io
import logging
import os
import stat
from typing import TYPE_CHECKING, Any, Iterator, List, Optional

import gevent
from gevent.socket import wait_read, wait_write

from ..errors import ClientDisconnected, HTTPRequestError
from .parser import END, RequestHead

if TYPE_CHECKING:
    from .response import Response
    from .server import HTTPConnection

__all__ = ["RequestBody", "FileWrapper", "SocketIO"]

logger = logging.getLogger(__name__)

READ_SIZE = 65536
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class _Timeout(Exception):
    pass


class SocketIO:
    """Cooperative waits on a connection's own socket, from its greenlet."""

    __slots__ = ("conn",)

    def __init__(self, conn: "HTTPConnection") -> None:
        self.conn = conn

    def _socket(self) -> Any:
        transport = self.conn._transport
        if not self.conn.connected or transport.sock is None:
            raise ClientDisconnected("the client closed the connection")
        return transport.sock

    def recv_into_parser(self, timeout: float) -> int:
        """Read once from the socket and feed the parser; the bytes read.

        Raises ClientDisconnected on EOF or error, HTTPRequestError (408)
        after ``timeout`` seconds without a byte.
        """
        conn = self.conn
        if conn._parser.error is not None:  # what is left of the stream cannot be trusted
            raise conn._parser.error
        sock = self._socket()
        try:
            while True:
                try:
                    data = sock.recv(READ_SIZE)
                    break
                except (BlockingIOError, InterruptedError):
                    wait_read(sock.fileno(), timeout=timeout, timeout_exc=_Timeout)
                    sock = self._socket()
        except _Timeout:
            raise HTTPRequestError(408, f"no request body bytes for {timeout} s (body_timeout)")
        except OSError as exc:
            conn.close_connection()
            raise ClientDisconnected(f"reading the request body failed: {exc}") from exc
        if not data:
            conn.close_connection()
            raise ClientDisconnected("the client closed the connection in the middle of the body")
        events_before = len(conn._parser.events)
        try:
            conn._parser.feed(data)
        except HTTPRequestError:
            if len(conn._parser.events) == events_before:
                raise  # nothing usable came before the bad bytes: this request is the bad one
            # The rest of this body (and its END) came before the bad bytes: the
            # app gets them; the parser keeps the error, answered after this request.
        return len(data)

    def wait_drained(self, low: int, timeout: float) -> None:
        """Block until at most ``low`` bytes are queued for the client (send_timeout)."""
        conn = self.conn
        deadline = gevent.get_hub().loop.now() + timeout
        while conn.get_outbound_data_size() > low:
            sock = self._socket()
            remaining = deadline - gevent.get_hub().loop.now()
            if remaining <= 0:
                conn.close_connection()
                raise ClientDisconnected(f"the client read nothing for {timeout} s (send_timeout)")
            # Woken when the socket is writable; the transport's own write
            # watcher flushes the queue in the same loop turn.  At most 0.5 s
            # per wait: a close by the hub is noticed on the next check.
            try:
                wait_write(sock.fileno(), timeout=min(0.5, remaining), timeout_exc=_Timeout)
            except _Timeout:
                pass
        if not conn.connected:
            raise ClientDisconnected("the client closed the connection")
        conn._write_paused = False

    def send_file_response(self, response: "Response", wrapper: "FileWrapper") -> None:
        """Send ``wrapper``'s file with ``os.sendfile`` when it is a regular file, else iterate."""
        fileno = wrapper.fileno()
        if fileno is None:
            for chunk in wrapper:
                if chunk:
                    response.write(chunk)
            return
        st = os.fstat(fileno)
        offset = os.lseek(fileno, 0, os.SEEK_CUR)
        size = st.st_size - offset
        declared = next((v for n, v in response.headers if n.lower() == "content-length"), None)
        if declared is None:
            response.headers = list(response.headers) + [("Content-Length", str(size))]
        else:
            size = min(size, int(declared))
        response.write(b"")  # the head
        if response.no_body:  # HEAD: the length, not the file
            response.sent_bytes = size
            return
        self.wait_drained(0, self.conn.options.send_timeout)
        sent_total = 0
        timeout = self.conn.options.send_timeout
        while sent_total < size:
            sock = self._socket()
            try:
                sent = os.sendfile(sock.fileno(), fileno, offset + sent_total,
                                   min(size - sent_total, 1 << 20))
            except (BlockingIOError, InterruptedError):
                try:
                    wait_write(sock.fileno(), timeout=timeout, timeout_exc=_Timeout)
                except _Timeout:
                    self.conn.close_connection()
                    raise ClientDisconnected(f"the client read nothing for {timeout} s "
                                             "(send_timeout)") from None
                continue
            except OSError as exc:
                if exc.errno in (errno.EINVAL, errno.ENOSYS) and sent_total == 0:
                    os.lseek(fileno, offset, os.SEEK_SET)
                    for chunk in wrapper:
                        if chunk:
                            response.write(chunk)
                    return
                self.conn.close_connection()
                raise ClientDisconnected(f"sendfile failed: {exc}") from exc
            if sent == 0:
                break  # the file shrank
            sent_total += sent
        response.sent_bytes += sent_total


class RequestBody:
    """``wsgi.input``: the request body, read from the socket as the app asks for it.

    A plain class with the file methods WSGI asks for (read, readline,
    readlines, iteration) and ``read1``/``readinto``; not an ``io`` class,
    whose construction and finaliser cost ~1 us on every request.
    """

    __slots__ = ("_conn", "_events", "_buf", "_done", "_continue", "_started", "_received")

    def __init__(self, conn: "HTTPConnection", head: RequestHead) -> None:
        self._conn = conn
        self._events = conn._parser.events
        self._buf = b""
        self._done = not head.has_body
        self._continue = head.expect_continue and head.has_body
        #: When the body first had to be read from the socket, and the bytes read since.
        self._started: Optional[float] = None
        self._received = 0
        if self._done and self._events and self._events[0] is END:
            self._events.popleft()

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        pass

    def _next_piece(self) -> Optional[bytes]:
        """The next piece of the body from the parser (reading the socket), None at its end."""
        if self._done:
            return None
        events = self._events
        conn = self._conn
        while not events:
            if self._continue:
                self._continue = False
                conn.send_data(_CONTINUE)
            self._received += conn.socket_io.recv_into_parser(conn.options.body_timeout)
            self._check_rate()
        event = events.popleft()
        if event is END:
            self._done = True
            return None
        self._continue = False
        return event  # type: ignore[return-value]

    def _check_rate(self) -> None:
        """408 for a body that trickles: slower than min_body_rate once body_timeout has passed."""
        now = gevent.get_hub().loop.now()
        if self._started is None:
            self._started = now
            return
        elapsed = now - self._started
        options = self._conn.options
        if elapsed > options.body_timeout and self._received < options.min_body_rate * elapsed:
            raise HTTPRequestError(408, f"request body arriving at {self._received / elapsed:.0f} "
                                        f"bytes/s, under min_body_rate={options.min_body_rate:g}")

    def _fill(self) -> bool:
        """Append the next body piece to the buffer; False at the end of the body."""
        piece = self._next_piece()
        if piece is None:
            return False
        self._buf = self._buf + piece if self._buf else piece
        return True

    def read(self, size: Optional[int] = -1) -> bytes:
        if size is None or size < 0:
            parts = [self._buf]
            piece = self._next_piece()
            while piece is not None:
                parts.append(piece)
                piece = self._next_piece()
            self._buf = b""
            return b"".join(parts)
        while len(self._buf) < size and self._fill():
            pass
        data, self._buf = self._buf[:size], self._buf[size:]
        return data

    def read1(self, size: int = -1) -> bytes:
        if not self._buf:
            self._fill()
        if size is None or size < 0:
            size = len(self._buf)
        data, self._buf = self._buf[:size], self._buf[size:]
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read1(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def readline(self, size: Optional[int] = -1) -> bytes:
        while True:
            end = self._buf.find(b"\n")
            if end >= 0 and (size is None or size < 0 or end < size):
                data, self._buf = self._buf[:end + 1], self._buf[end + 1:]
                return data
            if size is not None and 0 <= size <= len(self._buf):
                data, self._buf = self._buf[:size], self._buf[size:]
                return data
            if not self._fill():
                data, self._buf = self._buf, b""
                return data

    def readlines(self, hint: Optional[int] = -1) -> List[bytes]:
        lines = []
        total = 0
        while True:
            line = self.readline()
            if not line:
                return lines
            lines.append(line)
            total += len(line)
            if hint is not None and 0 < hint <= total:
                return lines

    def __iter__(self) -> Iterator[bytes]:
        while True:
            line = self.readline()
            if not line:
                return
            yield line

    def drain(self, limit: int) -> bool:
        """After the response: drop what is left of the body; False if the connection
        cannot carry another request (too much left, or 100-continue never sent)."""
        if self._done:
            return True
        if self._continue:
            return False  # the client waits for our go-ahead; we will not know what it sends
        dropped = len(self._buf)
        self._buf = b""
        try:
            while dropped <= limit:
                piece = self._next_piece()
                if piece is None:
                    return True
                dropped += len(piece)
        except (ClientDisconnected, HTTPRequestError):
            return False
        return False


class FileWrapper:
    """``wsgi.file_wrapper``: a file the server may send with ``os.sendfile``."""

    def __init__(self, filelike: Any, blksize: int = 65536) -> None:
        self.filelike = filelike
        self.blksize = blksize
        close = getattr(filelike, "close", None)
        if close is not None:
            self.close = close

    def fileno(self) -> Optional[int]:
        """The fd when the file is a regular file on disk (sendfile-able), else None."""
        try:
            fd = self.filelike.fileno()
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            if hasattr(self.filelike, "tell"):  # buffered objects may have read ahead
                os.lseek(fd, self.filelike.tell(), os.SEEK_SET)
            return fd
        except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
            return None

    def __iter__(self) -> Iterator[bytes]:
        read = self.filelike.read
        while True:
            data = read(self.blksize)
            if not data:
                return
            yield data
