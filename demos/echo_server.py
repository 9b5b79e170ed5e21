"""Packet's echo server: every byte a client sends comes back.

    python -m demos.echo_server [--host 127.0.0.1] [--port 11006]

Prints ``echo server listening on HOST:PORT`` when ready (the benchmark waits
for that line); SIGINT/SIGTERM stop it gracefully.
"""
import sys

from packet_gevent import Connection, Reactor

from ._cli import parser, setup_logging


class EchoServer(Connection):
    def receive_data(self, data: bytes) -> None:
        self.send_data(data)


def main(argv=None) -> int:
    args = parser("Packet's echo server on packet_gevent.", 11006).parse_args(argv)
    setup_logging(args.log_level)

    def setup(reactor: Reactor) -> None:
        server = reactor.start_server(args.host, args.port, EchoServer)
        print(f"echo server listening on {server.host}:{server.port}", flush=True)

    Reactor.run(setup)
    return 0


if __name__ == "__main__":
    sys.exit(main())
