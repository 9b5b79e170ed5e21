"""Framing of one HTTP response: start_response, the head, Content-Length or chunked, HEAD.

What :class:`Response` decides: the status line and headers (an app's
Content-Length is kept, Transfer-Encoding and Connection are the server's), a
Content-Length for a body given whole, chunked encoding for an HTTP/1.1 body of
unknown length (the close marks its end for HTTP/1.0), no body for HEAD,
1xx, 204 and 304, and ``Connection: close`` when the connection will not be
reused.  Header values with a line break are refused (response splitting).
"""
from __future__ import annotations

import logging
import time
from email.utils import formatdate
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Callable, List, Optional, Tuple

from ..errors import ClientDisconnected
from .parser import RequestHead

if TYPE_CHECKING:
    from .server import HTTPConnection

__all__ = ["Response", "error_response"]

logger = logging.getLogger(__name__)

_REASONS = {s.value: s.phrase for s in HTTPStatus}
_date_cache: List[Any] = [0, b""]


def _date_header() -> bytes:
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache[0] = now
        _date_cache[1] = b"Date: " + formatdate(now, usegmt=True).encode("ascii") + b"\r\n"
    return _date_cache[1]


def error_response(status: int, message: str = "") -> bytes:
    """A complete plain-text answer that closes the connection."""
    body = (message or _REASONS.get(status, "Error")).encode("utf-8", "replace") + b"\n"
    return (b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, "Error").encode("ascii"))
            + _date_header()
            + b"Content-Type: text/plain; charset=utf-8\r\nX-Content-Type-Options: nosniff\r\n"
              b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)


class Response:
    """start_response, write() and the framing of one response."""

    __slots__ = ("conn", "head", "status", "headers", "headers_sent", "chunked", "keep_alive",
                 "content_length", "no_body", "sent_bytes", "code")

    def __init__(self, conn: "HTTPConnection", head: RequestHead) -> None:
        self.conn = conn
        self.head = head
        self.status: Optional[str] = None
        self.headers: List[Tuple[str, str]] = []
        self.headers_sent = False
        self.chunked = False
        self.keep_alive = head.keep_alive
        self.content_length: Optional[int] = None
        self.no_body = head.method == "HEAD"
        self.sent_bytes = 0
        self.code = 0

    def start_response(self, status: str, headers: List[Tuple[str, str]],
                       exc_info: Any = None) -> Callable[[bytes], None]:
        if exc_info:
            try:
                if self.headers_sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self.status is not None:
            raise AssertionError("start_response called twice without exc_info")
        if status.__class__ is not str or "\n" in status or "\r" in status:
            raise ValueError(f"bad WSGI status {status!r}")
        self.status = status
        self.headers = headers
        return self.write

    def _head_bytes(self, single: Optional[bytes]) -> bytes:
        if self.status is None:
            raise AssertionError("the WSGI app returned without calling start_response")
        code = self.code = int(self.status[:3])
        parts = [b"HTTP/1.1 ", self.status.encode("latin-1"), b"\r\n", _date_header()]
        length = None
        for name, value in self.headers:
            if "\n" in value or "\r" in value or "\n" in name or "\r" in name:
                raise ValueError(f"response header {name!r} contains a line break")
            lname = name.lower()
            if lname == "content-length":
                length = int(value)
                continue  # written below (dropped for bodyless statuses)
            elif lname == "connection":
                if "close" in value.lower():
                    self.keep_alive = False
                continue  # the server decides
            elif lname == "transfer-encoding":
                continue  # the server frames the body
            parts.append(f"{name}: {value}\r\n".encode("latin-1"))
        if self.conn.draining:
            self.keep_alive = False  # the server is stopping: tell the client not to reuse us
        bodyless = code < 200 or code in (204, 304)
        if bodyless:
            self.no_body = True
        elif length is None and single is not None:
            length = len(single)
        if length is not None and not bodyless:
            parts.append(b"Content-Length: %d\r\n" % length)
        elif not bodyless and not self.no_body:
            if self.head.version == "1.1":
                self.chunked = True
                parts.append(b"Transfer-Encoding: chunked\r\n")
            else:
                self.keep_alive = False  # the end of the body is the close
        self.content_length = length
        if not self.keep_alive:
            parts.append(b"Connection: close\r\n")
        elif self.head.version == "1.0":
            parts.append(b"Connection: keep-alive\r\n")
        parts.append(b"\r\n")
        return b"".join(parts)

    def write(self, data: bytes) -> None:
        """WSGI's write(): send a piece of the body (headers first)."""
        if data.__class__ is not bytes:
            if not isinstance(data, (bytes, bytearray, memoryview)):
                raise TypeError(f"a WSGI body must be bytes, got {type(data).__name__}")
            data = bytes(data)
        conn = self.conn
        if not conn.connected:  # stop a streaming app whose client has gone
            raise ClientDisconnected("the client closed the connection")
        if not self.headers_sent:
            head = self._head_bytes(None)
            self.headers_sent = True
            conn.send_data(head)
        if not data or self.no_body:
            return
        self.sent_bytes += len(data)
        if self.chunked:
            conn.send_data(b"%x\r\n%s\r\n" % (len(data), data))
        else:
            conn.send_data(data)
        if conn._write_paused:
            conn.socket_io.wait_drained(conn.low_water, conn.options.send_timeout)

    def send_single(self, data: bytes) -> None:
        """The whole body in one piece: one send for head and body."""
        head = self._head_bytes(data)
        self.headers_sent = True
        if self.no_body or not data:
            self.conn.send_data(head)
        else:
            self.sent_bytes = len(data)
            if self.chunked:
                data = b"%x\r\n%s\r\n0\r\n\r\n" % (len(data), data)
                self.chunked = False
            self.conn.send_data(head + data)

    def finish(self) -> None:
        if not self.headers_sent:
            self.send_single(b"")
        elif self.chunked:
            self.conn.send_data(b"0\r\n\r\n")
        if self.content_length is not None and self.sent_bytes != self.content_length \
                and not self.no_body:
            logger.warning("app sent %d body bytes for Content-Length %d; closing the connection",
                           self.sent_bytes, self.content_length)
            self.keep_alive = False
