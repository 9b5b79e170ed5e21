"""Sans-IO HTTP/1.x request parsing: bytes in, request events out, limits enforced.

No sockets here.  ``parser.feed(data)`` appends events to ``parser.events``:

* a :class:`RequestHead` (method, target, version, headers, framing),
* ``bytes`` pieces of its body,
* :data:`END` when the request (body included) is complete,

and raises :class:`~packet_gevent.errors.HTTPRequestError` (with the status to
answer: 400, 413, 414, 431, 501, 505) for a malformed request or one over a
:class:`Limits`; the parser then stays failed (the stream cannot be trusted).
Pipelined requests simply produce more events.

The parsing itself is done by a well-kept library, never by us: httptools
(llhttp, node.js's parser) by default, h11 (pure Python) where httptools is not
installed.  Measured here (wrk's 5-header GET, load average ~8 on 2 cores):
httptools with no-op callbacks 0.6 us, this module on httptools 2.9 us
(the Python callbacks, limits and checks), on h11 ~85 us.  This module adds what
both leave to the server: the limits, one answer to request smuggling
(Content-Length with Transfer-Encoding, duplicate Content-Length, obs-fold,
bare LF line ends, Transfer-Encoding other than ``chunked``, a missing or
repeated Host), and the
keep-alive / 100-continue decisions.  llhttp refuses obs-fold and bare LF by
itself; h11 accepts both (it unfolds and tolerates LF), so for h11 the raw
header block is checked before h11 sees it.  Inside a chunked body h11 stays
more lenient than llhttp (it takes "3 " followed by CRLF as a chunk size; a bare-LF
chunk line just stalls until ``body_timeout``): behind another HTTP hop,
run the httptools backend.
"""
from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Any, Deque, List, Optional, Tuple, Union

from ..errors import HTTPRequestError

try:
    import httptools
except ImportError:  # pragma: no cover - depends on the installation
    httptools = None
try:
    import h11
except ImportError:  # pragma: no cover - depends on the installation
    h11 = None

__all__ = ["Limits", "RequestHead", "END", "RequestParser", "make_parser", "available_backends"]


@dataclass(frozen=True)
class Limits:
    """What a request may be.  Over a limit, the answer is the status in brackets.

    The numbers follow what widely deployed servers chose: gunicorn allows a
    4094-byte request line and 100 header fields, nginx an 8 KiB line
    (large_client_header_buffers), node.js 16 KiB of headers in all (h11's
    default too).  The body limit is ours: big enough for file uploads,
    small enough that a client cannot make an app read gigabytes by default.
    """

    #: Longest request target (the URL as sent), in bytes [414].
    max_request_line: int = 8190
    #: Largest header block (names and values, summed), in bytes [431].
    max_header_size: int = 16384
    #: Most header fields in one request [431].
    max_header_count: int = 100
    #: Largest request body, announced (Content-Length) or chunked [413]; None: no limit.
    max_body_size: Optional[int] = 100 * 1024 * 1024


class _End:
    __slots__ = ()

    def __repr__(self) -> str:
        return "END"


#: Event: the current request (and its body) is complete.
END = _End()


class RequestHead:
    """The start of a request: request line and headers, and how its body is framed."""

    __slots__ = ("method", "target", "version", "headers", "keep_alive", "chunked",
                 "content_length", "expect_continue", "upgrade")

    def __init__(self, method: str, target: bytes, version: str,
                 headers: List[Tuple[bytes, bytes]]) -> None:
        self.method = method
        #: The request target as sent (origin-form ``/path?query`` mostly).
        self.target = target
        #: "1.0" or "1.1".
        self.version = version
        #: (name, value) pairs as sent, in order.
        self.headers = headers
        self.keep_alive = version == "1.1"
        self.chunked = False
        #: Body length announced by Content-Length (None: chunked or no body).
        self.content_length: Optional[int] = None
        self.expect_continue = False
        #: The client asked to switch protocols (we answer in HTTP and close).
        self.upgrade = False

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.content_length)

    def __repr__(self) -> str:
        return f"<RequestHead {self.method} {self.target!r} HTTP/{self.version}>"


Event = Union[RequestHead, bytes, _End]


def _validate_head(head: RequestHead, limits: Limits) -> RequestHead:
    """Framing and connection decisions shared by both backends (raises HTTPRequestError)."""
    if head.version not in ("1.1", "1.0"):
        raise HTTPRequestError(505, f"HTTP version {head.version!r} is not supported; use HTTP/1.1")
    target = head.target
    if not target.startswith(b"/") and not (target == b"*" and head.method == "OPTIONS") \
            and not target.startswith((b"http://", b"https://")):
        raise HTTPRequestError(400, f"bad request target {target[:100]!r}: expected /path")
    content_lengths = []
    transfer_encoding = None
    connection_tokens = ()
    hosts = 0
    for name, value in head.headers:
        lname = name.lower()
        if lname == b"host":
            hosts += 1
        elif lname == b"content-length":
            content_lengths.append(value)
        elif lname == b"transfer-encoding":
            if transfer_encoding is not None:
                raise HTTPRequestError(400, "more than one Transfer-Encoding header")
            transfer_encoding = value
        elif lname == b"connection":
            connection_tokens = tuple(t.strip() for t in value.lower().split(b","))
        elif lname == b"expect":
            head.expect_continue = value.strip().lower() == b"100-continue" and head.version == "1.1"
        elif lname == b"upgrade":
            head.upgrade = True
    if hosts > 1 or (hosts == 0 and head.version == "1.1"):
        raise HTTPRequestError(400, "an HTTP/1.1 request needs exactly one Host header "
                                    f"(got {hosts})")
    if transfer_encoding is not None:
        if content_lengths:
            raise HTTPRequestError(400, "both Content-Length and Transfer-Encoding sent "
                                        "(a request smuggling pattern); send one of them")
        if transfer_encoding.strip().lower() != b"chunked":
            raise HTTPRequestError(501, f"Transfer-Encoding {transfer_encoding[:50]!r} is not "
                                        "supported; only 'chunked'")
        if head.version == "1.0":
            raise HTTPRequestError(400, "Transfer-Encoding in an HTTP/1.0 request")
        head.chunked = True
    elif content_lengths:
        if len(content_lengths) > 1:
            raise HTTPRequestError(400, "more than one Content-Length header "
                                        "(a request smuggling pattern)")
        value = content_lengths[0].strip()
        if not value.isdigit() or len(value) > 18:
            raise HTTPRequestError(400, f"bad Content-Length {value[:30]!r}")
        head.content_length = int(value)
    if head.version == "1.1":
        head.keep_alive = b"close" not in connection_tokens
    else:
        head.keep_alive = b"keep-alive" in connection_tokens
    if head.upgrade:
        head.keep_alive = False
    limit = limits.max_body_size
    if limit is not None and head.content_length is not None and head.content_length > limit:
        raise HTTPRequestError(413, f"request body of {head.content_length} bytes is over the "
                                    f"limit of {limit} bytes (max_body_size)")
    return head


class RequestParser:
    """Base of the backends: ``feed(data)`` appends events to ``events``."""

    #: Name of the library doing the parsing ("httptools" or "h11").
    backend = ""

    def __init__(self, limits: Optional[Limits] = None) -> None:
        self.limits = limits or Limits()
        self.events: Deque[Event] = collections.deque()
        self.error: Optional[HTTPRequestError] = None
        #: Body bytes of the current request so far (for max_body_size).
        self._body_size = 0

    def feed(self, data: bytes) -> None:
        """Parse ``data``; new events go to ``self.events``.  Raises HTTPRequestError.

        ``feed(b"")`` does nothing: what an EOF means is for the server to decide.
        """
        raise NotImplementedError

    @property
    def in_head(self) -> bool:
        """True while the head of a request has started and is not complete."""
        raise NotImplementedError

    def _fail(self, error: HTTPRequestError) -> HTTPRequestError:
        self.error = error
        return error

    def _count_body(self, size: int) -> None:
        self._body_size += size
        limit = self.limits.max_body_size
        if limit is not None and self._body_size > limit:
            raise HTTPRequestError(413, f"request body over the limit of {limit} bytes "
                                        "(max_body_size)")


class _Stop(Exception):
    """Raised inside an httptools callback to abort parsing with an HTTPRequestError."""


class HttptoolsParser(RequestParser):
    """The default backend: httptools (llhttp)."""

    backend = "httptools"

    def __init__(self, limits: Optional[Limits] = None) -> None:
        super().__init__(limits)
        self._parser = httptools.HttpRequestParser(self)
        self._pending: Optional[HTTPRequestError] = None
        self._url: List[bytes] = []
        self._url_size = 0
        self._headers: List[Tuple[bytes, bytes]] = []
        self._header_size = 0
        self._in_head = False
        self._in_body = False
        #: Bytes fed while a head was incomplete: bounds what llhttp/httptools
        #: buffer for a header value that never ends.
        self._head_fed = 0

    @property
    def in_head(self) -> bool:
        return self._in_head

    def feed(self, data: bytes) -> None:
        if self.error is not None:
            raise self.error
        was_in_head = self._in_head
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError:
            raise self._fail(self._pending or HTTPRequestError(400, "bad request"))
        except httptools.HttpParserUpgrade:
            # The request is complete (events queued); what follows would be
            # another protocol, which we do not speak: the server answers and
            # closes (head.upgrade made keep_alive False).
            self._parser = httptools.HttpRequestParser(self)
            self.error = HTTPRequestError(400, "no request may follow a protocol upgrade request")
        except httptools.HttpParserError as exc:
            raise self._fail(HTTPRequestError(400, f"malformed request: {exc}"))
        except HTTPRequestError as exc:  # raised by _validate_head through a callback
            raise self._fail(exc)
        if self._in_head and was_in_head:
            self._head_fed += len(data)
            limits = self.limits
            if self._head_fed > limits.max_request_line + limits.max_header_size + 4096:
                raise self._fail(HTTPRequestError(
                    431, f"request head over {limits.max_header_size} bytes and not complete "
                         "(max_header_size)"))

    def _stop(self, error: HTTPRequestError) -> None:
        self._pending = error
        raise _Stop(str(error))

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._url = []
        self._url_size = 0
        self._headers = []
        self._header_size = 0
        self._in_head = True
        self._in_body = False
        self._head_fed = 0
        self._body_size = 0

    def on_url(self, url: bytes) -> None:
        self._url_size += len(url)
        if self._url_size > self.limits.max_request_line:
            self._stop(HTTPRequestError(414, f"request target over {self.limits.max_request_line} "
                                             "bytes (max_request_line)"))
        self._url.append(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._in_body:  # a trailer field after a chunked body: counted, then dropped
            self._header_size += len(name) + len(value)
            if self._header_size > self.limits.max_header_size:
                self._stop(HTTPRequestError(431, "trailer fields over max_header_size"))
            return
        headers = self._headers
        headers.append((name, value))
        self._header_size += len(name) + len(value)
        limits = self.limits
        if len(headers) > limits.max_header_count:
            self._stop(HTTPRequestError(431, f"more than {limits.max_header_count} header "
                                             "fields (max_header_count)"))
        if self._header_size > limits.max_header_size:
            self._stop(HTTPRequestError(431, f"header fields over {limits.max_header_size} "
                                             "bytes (max_header_size)"))

    def on_headers_complete(self) -> None:
        parser = self._parser
        url = self._url[0] if len(self._url) == 1 else b"".join(self._url)
        head = RequestHead(parser.get_method().decode("ascii"), url,
                           parser.get_http_version(), self._headers)
        try:
            _validate_head(head, self.limits)
        except HTTPRequestError as exc:
            self._stop(exc)
        self._in_head = False
        self._in_body = True
        self.events.append(head)

    def on_body(self, body: bytes) -> None:
        try:
            self._count_body(len(body))
        except HTTPRequestError as exc:
            self._stop(exc)
        self.events.append(body)

    def on_message_complete(self) -> None:
        self._in_body = False
        self.events.append(END)


class H11Parser(RequestParser):
    """The pure-Python fallback: h11, one h11.Connection per request."""

    backend = "h11"

    def __init__(self, limits: Optional[Limits] = None) -> None:
        super().__init__(limits)
        self._conn = self._new_connection()
        self._in_head = False

    def _new_connection(self) -> Any:
        limits = self.limits
        return h11.Connection(h11.SERVER, max_incomplete_event_size=(
            limits.max_request_line + limits.max_header_size + 1024))

    @property
    def in_head(self) -> bool:
        return self._in_head

    def feed(self, data: bytes) -> None:
        if self.error is not None:
            raise self.error
        if not data:
            return  # h11 would take b"" for EOF; the end of the stream is the server's business
        try:
            self._conn.receive_data(data)
            self._pump()
        except HTTPRequestError as exc:
            raise self._fail(exc)
        except h11.RemoteProtocolError as exc:
            status = exc.error_status_hint if exc.error_status_hint != 400 else 400
            raise self._fail(HTTPRequestError(status, f"malformed request: {exc}"))

    def _pump(self) -> None:
        conn = self._conn
        events = self.events
        while True:
            if conn.their_state is h11.IDLE:
                self._check_raw_head()
            event = conn.next_event()
            kind = type(event)
            if event is h11.NEED_DATA:
                return
            if event is h11.PAUSED:
                # The request is done; h11 waits for our response before it
                # parses the next one.  We write responses ourselves, so start
                # a fresh h11 connection on the bytes left over (pipelining).
                leftover, _closed = conn.trailing_data
                conn = self._conn = self._new_connection()
                if leftover:
                    conn.receive_data(leftover)
                continue
            if kind is h11.Request:
                self._in_head = False
                self._body_size = 0
                head = RequestHead(event.method.decode("ascii"), bytes(event.target),
                                   event.http_version.decode("ascii"),
                                   [(bytes(n), bytes(v)) for n, v in event.headers.raw_items()])
                if len(head.headers) > self.limits.max_header_count:
                    raise HTTPRequestError(431, f"more than {self.limits.max_header_count} "
                                                "header fields (max_header_count)")
                if sum(len(n) + len(v) for n, v in head.headers) > self.limits.max_header_size:
                    raise HTTPRequestError(431, f"header fields over {self.limits.max_header_size}"
                                                " bytes (max_header_size)")
                events.append(_validate_head(head, self.limits))
            elif kind is h11.Data:
                self._count_body(len(event.data))
                events.append(bytes(event.data))
            elif kind is h11.EndOfMessage:
                events.append(END)
            else:  # ConnectionClosed
                return

    def _check_raw_head(self) -> None:
        """What h11 tolerates and we refuse: obs-fold, bare LF, equal duplicate
        Content-Length; and the request-line limit.  These are scans for
        delimiters in the bytes h11 holds, not parsing."""
        buf = self._conn.trailing_data[0]
        if not buf:
            return
        self._in_head = True
        buf = buf.lstrip(b"\r\n")  # empty lines before a request are allowed (RFC 9112 2.2)
        end = buf.find(b"\r\n\r\n")
        bare_end = buf.find(b"\n\n")
        if end < 0 or (0 <= bare_end < end):
            end = bare_end
        head = buf if end < 0 else buf[:end + 1]
        line_end = head.find(b"\n")
        line_size = len(head) if line_end < 0 else line_end
        if line_size > self.limits.max_request_line + 20:  # method, spaces, version
            raise HTTPRequestError(414, f"request line over {self.limits.max_request_line} bytes "
                                        "(max_request_line)")
        if b"\n " in head or b"\n\t" in head:
            raise HTTPRequestError(400, "obsolete line folding in a header field")
        if head.count(b"\n") != head.count(b"\r\n"):
            raise HTTPRequestError(400, "bare LF line ending in the request head; use CRLF")
        if head.lower().count(b"\ncontent-length:") > 1:  # h11 merges equal duplicates
            raise HTTPRequestError(400, "more than one Content-Length header "
                                        "(a request smuggling pattern)")


def available_backends() -> List[str]:
    """The parser backends installed here, the default first."""
    return [name for name, module in (("httptools", httptools), ("h11", h11)) if module is not None]


def make_parser(backend: Optional[str] = None, limits: Optional[Limits] = None) -> RequestParser:
    """A request parser: httptools if installed (or ``backend="h11"``), else h11."""
    if backend is None:
        backends = available_backends()
        if not backends:
            raise ImportError("packet_gevent.http needs an HTTP parser: pip install "
                              "'packet_gevent[http]' (httptools, or h11 for pure Python)")
        backend = backends[0]
    if backend == "httptools":
        if httptools is None:
            raise ImportError("httptools is not installed: pip install httptools")
        return HttptoolsParser(limits)
    if backend == "h11":
        if h11 is None:
            raise ImportError("h11 is not installed: pip install h11")
        return H11Parser(limits)
    raise ValueError(f"unknown HTTP parser backend {backend!r}: use 'httptools' or 'h11'")


def split_target(target: bytes) -> Tuple[bytes, bytes]:
    """(path, query) of a request target; an absolute-form URL loses its scheme and host."""
    if target[:1] != b"/" and target != b"*":
        from urllib.parse import urlsplit
        parts = urlsplit(target)
        return parts.path or b"/", parts.query
    path, _, query = target.partition(b"?")
    return path, query.partition(b"#")[0]
