"""Packet's echo server: every byte a client sends comes back.

    python -m demos.echo_server [--host 127.0.0.1] [--port 11006]

Prints ``echo server listening on HOST:PORT`` when ready (the benchmark waits
for that line); SIGINT/SIGTERM stop it gracefully.
"""
import sys

from packet_gevent import Connection, Reactor

from ._cli import parser, setup_logging


class EchoServer(Connection):
    """Callbacks run in the reactor's shared runner greenlets (they may block)."""

    def receive_data(self, data: bytes) -> None:
        self.send_data(data)


class GreenletEchoServer(EchoServer):
    """The same, with a greenlet of its own per connection."""

    greenlet_per_connection = True


class HubEchoServer(EchoServer):
    """The same, declared non-blocking: callbacks run straight in the hub."""

    run_in_hub = True


def main(argv=None) -> int:
    p = parser("Packet's echo server on packet_gevent.", 11006)
    p.add_argument("--run-in-hub", action="store_true",
                   help="declare the handler non-blocking: run callbacks in the hub (fastest)")
    p.add_argument("--greenlet-per-connection", action="store_true",
                   help="give each connection a greenlet of its own")
    args = p.parse_args(argv)
    handler = (HubEchoServer if args.run_in_hub else
               GreenletEchoServer if args.greenlet_per_connection else EchoServer)
    setup_logging(args.log_level)

    def setup(reactor: Reactor) -> None:
        server = reactor.start_server(args.host, args.port, handler)
        print(f"echo server listening on {server.host}:{server.port}", flush=True)

    Reactor.run(setup)
    return 0


if __name__ == "__main__":
    sys.exit(main())
