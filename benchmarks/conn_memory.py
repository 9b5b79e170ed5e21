"""Memory per idle connection: server RSS growth per open, echoed-once, idle client.

For each echo server of benchmarks/echo.py (ours in its three modes, bare
gevent StreamServer, asyncio, uvloop) this starts the server as its own
process, opens a warm-up batch of connections (so one-time allocations are
not counted), reads the server's RSS (VmRSS from /proc), opens N more
connections that each echo "Hello World\\n" once and then stay open and idle,
reads the RSS again and reports (after - before) / N in KiB.  Every connection
is closed before the server is stopped (by its pid).  Usage::

    python -m benchmarks.conn_memory [--connections 5000] [--repeat 1] [--json PATH]

Kernel socket buffers are not in the server's RSS: the figure is what the
server process itself holds per connection (handler, transport, watchers, a
greenlet's stack slice...).
"""
import argparse
import json
import os
import platform
import socket
import statistics
import sys
import time
from typing import Dict, List, Optional, Sequence

from benchmarks._servers.process import BenchError, ServerProcess
from benchmarks.echo import HOST, MESSAGE, SERVERS, available_servers

#: Connections opened (and echoed) before the first RSS reading.
WARM_UP = 200
#: Seconds any one connect / echo may take before the run fails.
SOCKET_TIMEOUT = 10.0
PAYLOAD = MESSAGE.encode()


def rss_kib(pid: int) -> int:
    """Resident set size of ``pid`` in KiB (VmRSS)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise BenchError(f"no VmRSS for pid {pid}")


def open_echoed(port: int, count: int, into: List[socket.socket]) -> None:
    """Open ``count`` connections, echo PAYLOAD once on each, keep them open in ``into``."""
    for _ in range(count):
        sock = socket.create_connection((HOST, port), timeout=SOCKET_TIMEOUT)
        into.append(sock)
        sock.sendall(PAYLOAD)
        got = b""
        while len(got) < len(PAYLOAD):  # bounded: each recv returns data, or EOF/timeout ends it
            chunk = sock.recv(len(PAYLOAD) - len(got))
            if not chunk:
                raise BenchError("the server closed a connection before echoing")
            got += chunk
        if got != PAYLOAD:
            raise BenchError(f"wrong echo {got!r}")


def measure(name: str, connections: int) -> dict:
    """One run against a fresh server process: RSS growth per idle connection."""
    server = ServerProcess(SERVERS[name])
    socks: List[socket.socket] = []
    try:
        server.start(HOST)
        open_echoed(server.port, WARM_UP, socks)
        before = rss_kib(server.proc.pid)
        started = time.monotonic()
        open_echoed(server.port, connections, socks)
        seconds = time.monotonic() - started
        after = rss_kib(server.proc.pid)
        server.check_alive()
    finally:
        for sock in socks:
            sock.close()
        status = server.stop()
    return {"server": name, "connections": connections, "rss_before_kib": before, "rss_after_kib": after,
            "kib_per_connection": (after - before) / connections, "open_seconds": round(seconds, 3),
            "exit_status": status}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=5000, help="idle connections measured (default 5000)")
    parser.add_argument("--repeat", type=int, default=1, help="fresh server runs per server (default 1)")
    parser.add_argument("--servers", default=None, help="comma list of " + ",".join(SERVERS))
    parser.add_argument("--json", metavar="PATH", help="save the runs and medians to PATH")
    args = parser.parse_args(argv)
    if not 1 <= args.connections <= 15000 or not 1 <= args.repeat <= 20:
        parser.error("--connections must be 1..15000 and --repeat 1..20")
    reasons = available_servers()
    names = [n.strip() for n in args.servers.split(",")] if args.servers else [n for n in SERVERS if not reasons[n]]
    for name in names:
        if name not in SERVERS or reasons[name]:
            parser.error(f"cannot run {name!r}: {reasons.get(name, 'unknown server')}")
    runs: List[dict] = []
    try:
        for rep in range(args.repeat):
            for name in names[rep % len(names):] + names[:rep % len(names)]:
                run = measure(name, args.connections)
                runs.append(run)
                print(f"  [{rep + 1}/{args.repeat}] {name:<9} {run['kib_per_connection']:6.2f} KiB/conn "
                      f"(RSS {run['rss_before_kib']} -> {run['rss_after_kib']} KiB)", flush=True)
    except BenchError as exc:
        print(f"memory benchmark failed: {exc}", file=sys.stderr)
        return 1
    medians: Dict[str, float] = {name: statistics.median(r["kib_per_connection"] for r in runs
                                                         if r["server"] == name) for name in names}
    print(f"\nserver RSS growth per idle connection ({args.connections} connections, "
          f"median of {args.repeat})")
    for name, kib in medians.items():
        vs = f"  {kib / medians['uvloop']:.2f}x uvloop" if medians.get("uvloop") else ""
        print(f"{name:<10}{kib:8.2f} KiB{vs}")
    print("load average (1, 5, 15 min): %.2f %.2f %.2f on %d CPUs" % (*os.getloadavg(), os.cpu_count()))
    if args.json:
        import gevent
        meta = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "python": platform.python_version(),
                "gevent": gevent.__version__, "connections": args.connections, "repeat": args.repeat,
                "warm_up": WARM_UP, "loadavg_after": os.getloadavg()}
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "kib_per_connection": medians, "runs": runs}, f, indent=2)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
