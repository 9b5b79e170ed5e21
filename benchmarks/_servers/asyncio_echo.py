"""asyncio echo server (``asyncio.Protocol``: data_received -> transport.write).

``--loop uvloop`` runs the same protocol on uvloop's event loop (libuv), if
uvloop is installed; the benchmark treats that peer as optional.
"""
import argparse
import asyncio
import signal
import sys

#: Listen backlog (asyncio's default is 100, below the benchmark's 500 clients).
BACKLOG = 1024


class EchoProtocol(asyncio.Protocol):
    """Writes every chunk it receives straight back."""

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


async def serve(host: str, port: int, name: str) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    server = await loop.create_server(EchoProtocol, host, port, backlog=BACKLOG)
    bound_host, bound_port = server.sockets[0].getsockname()[:2]
    print(f"{name} echo server listening on {bound_host}:{bound_port}", flush=True)
    async with server:
        await stop.wait()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    args = parser.parse_args(argv)
    if args.loop == "uvloop":
        try:
            import uvloop
        except ImportError:
            print("uvloop is not installed: pip install uvloop", file=sys.stderr)
            return 3
        runner = uvloop.run
    else:
        runner = asyncio.run
    runner(serve(args.host, args.port, args.loop))
    return 0


if __name__ == "__main__":
    sys.exit(main())
