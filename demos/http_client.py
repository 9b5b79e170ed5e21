"""Packet's HTTP client example: GET a URL and print the response.

    python -m demos.http_client http://127.0.0.1:8080/path
    python -m demos.http_client            # no URL: serve a page locally and fetch it

Machines here have no internet, so with no URL the demo starts a small HTTP
server on the same reactor (127.0.0.1, a free port) and fetches from it.  The
client is a plain Connection: it sends the request in ``connection_completed``,
collects ``receive_data`` chunks and prints the response in ``unbind``.
"""
import sys
import urllib.parse
from typing import List, Optional

from packet_gevent import Connection, Reactor

from ._cli import parser, setup_logging


class HttpGet(Connection):
    """Sends one GET request; the response is complete when the server closes."""

    request = b""

    def post_init(self) -> None:
        self.chunks: List[bytes] = []

    def connection_completed(self) -> None:
        self.send_data(self.request)

    def receive_data(self, data: bytes) -> None:
        self.chunks.append(data)

    def unbind(self, reason: Optional[BaseException] = None) -> None:
        self.response = b"".join(self.chunks)
        self.error = reason
        self.reactor.stop()


class TinyHttpServer(Connection):
    """Answers any request with a small text page, then closes (HTTP/1.0 style)."""

    def post_init(self) -> None:
        self.buffer = b""

    def receive_data(self, data: bytes) -> None:
        self.buffer += data
        if b"\r\n\r\n" not in self.buffer:
            return
        request_line = self.buffer.split(b"\r\n", 1)[0].decode("latin-1")
        body = f"Hello from packet_gevent!\nYou asked: {request_line}\n".encode()
        self.send_data(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n"
                       b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        self.close_connection_after_writing()


def build_request(url: str) -> tuple:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise SystemExit(f"http_client: only http://host[:port]/path URLs are supported, got {url!r}")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    host_header = parts.hostname if parts.port in (None, 80) else f"{parts.hostname}:{parts.port}"
    request = (f"GET {path} HTTP/1.0\r\nHost: {host_header}\r\n"
               f"User-Agent: packet_gevent-demo\r\nConnection: close\r\n\r\n").encode()
    return parts.hostname, parts.port or 80, request


def main(argv=None) -> int:
    p = parser("Packet's HTTP client example on packet_gevent.", 0,
               host_help="without a URL: address where the local demo page is served "
                         "(default: %(default)s)",
               port_help="without a URL: port of the local demo page (default: %(default)s, "
                         "a free port)")
    p.add_argument("url", nargs="?", help="http:// URL to GET (default: a local demo server)")
    p.add_argument("--timeout", type=float, default=10.0, help="connect timeout in seconds")
    args = p.parse_args(argv)
    setup_logging(args.log_level)
    result = {}

    def setup(reactor: Reactor) -> None:
        url = args.url
        if url is None:
            server = reactor.start_server(args.host, args.port, TinyHttpServer)
            url = f"http://{server.host}:{server.port}/hello"
            print(f"no URL given: serving a page at {url}", flush=True)
        host, port, request = build_request(url)
        handler = type("Get", (HttpGet,), {"request": request})
        result["conn"] = reactor.connect(host, port, handler, connect_timeout=args.timeout)

    Reactor.run(setup)
    conn = result["conn"]
    if conn.error is not None and not conn.response:
        print(f"http_client: request failed: {conn.error!r}", file=sys.stderr)
        return 1
    sys.stdout.write(conn.response.decode("utf-8", "replace"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
