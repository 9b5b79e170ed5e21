"""Bare gevent echo server: ``StreamServer`` with a recv/sendall loop per connection.

This is the baseline the benchmark divides by: the plainest echo gevent offers,
one greenlet per connection blocking cooperatively in ``recv``.
"""
import argparse
import signal
import sys

import gevent
from gevent.server import StreamServer

#: Listen backlog.  gevent's default (128) is below the benchmark's 500 clients;
#: the load client also limits connects in flight, so this only removes noise.
BACKLOG = 1024
RECV_SIZE = 65536


def handle(sock, _address) -> None:
    """Echo every byte back until the peer closes the connection."""
    while True:
        data = sock.recv(RECV_SIZE)
        if not data:
            return
        sock.sendall(data)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    server = StreamServer((args.host, args.port), handle, backlog=BACKLOG)
    server.start()
    for signum in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(signum, server.stop)
    host, port = server.address[:2]
    print(f"gevent echo server listening on {host}:{port}", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
