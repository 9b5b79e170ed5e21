"""Start one HTTP server of the benchmark on a free port; print "listening on HOST:PORT" when it answers.

    python -m benchmarks._servers.http_launch KIND [--processes N] --host H --port 0

KIND: ours (packet_gevent.wsgi), pywsgi (gevent.pywsgi with TCP_NODELAY, run
in this process), gunicorn (gevent worker), uvicorn (httptools + uvloop).
The external servers run as our child (their CPU counts in our process
tree); SIGTERM is passed on to it.
"""
import argparse
import signal
import socket
import subprocess
import sys
import time

APP = "benchmarks._servers.http_apps"


def free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def wait_listening(host: str, port: int, proc: subprocess.Popen, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode} before listening")
        try:
            socket.create_connection((host, port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"server not listening on {host}:{port} after {timeout} s")


def command(kind: str, host: str, port: int, args: argparse.Namespace) -> list:
    py = sys.executable
    if kind == "ours":
        return [py, "-m", "packet_gevent.wsgi", f"{APP}:{args.app}", "--bind", f"{host}:{port}",
                "--processes", str(args.processes), "--log-level", "WARNING",
                "--offload-processes", "2"]
    if kind == "gunicorn":
        return [py, "-m", "gunicorn", "-k", "gevent", "-w", str(args.processes), "--bind",
                f"{host}:{port}", "--log-level", "warning", f"{APP}:hello"]
    if kind == "uvicorn":
        return [py, "-m", "uvicorn", f"{APP}:asgi_hello", "--host", host, "--port", str(port),
                "--loop", "uvloop", "--http", "httptools", "--no-access-log",
                "--log-level", "warning", "--workers", str(args.processes)]
    raise SystemExit(f"unknown server kind {kind!r}")


def serve_pywsgi(host: str, port: int) -> None:
    from gevent import pywsgi

    from benchmarks._servers.http_apps import hello

    class NoDelayServer(pywsgi.WSGIServer):
        def handle(self, sock, address):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            super().handle(sock, address)

    server = NoDelayServer((host, port), hello, log=None, backlog=1024)
    server.init_socket()
    print(f"pywsgi listening on {host}:{server.server_port}", flush=True)
    import gevent
    gevent.signal_handler(signal.SIGTERM, server.stop)
    server.serve_forever()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("kind")
    p.add_argument("--processes", type=int, default=1)
    p.add_argument("--app", default="hello", help="for ours: hello, offloaded or inline")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    args = p.parse_args()
    if args.kind == "pywsgi":
        serve_pywsgi(args.host, args.port)
        return 0
    port = args.port or free_port(args.host)
    proc = subprocess.Popen(command(args.kind, args.host, port, args), stdin=subprocess.DEVNULL)
    signal.signal(signal.SIGTERM, lambda *_: proc.send_signal(signal.SIGTERM))
    wait_listening(args.host, port, proc)
    print(f"{args.kind} listening on {args.host}:{port}", flush=True)
    return proc.wait()


if __name__ == "__main__":
    sys.exit(main())
