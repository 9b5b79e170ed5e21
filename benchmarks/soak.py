"""Soak: a bounded mixed load against one server process, with worker kills.

    python -m benchmarks.soak [--duration 60] [--clients 8] [--kill-every 2.0] [--json PATH]

The server (this module with ``--serve``, in its own process) runs one
Reactor with three services: Packet's echo, the eval server (``eval_worker``,
two processes) and a ``defer`` service whose requests run on the reactor's
fork pool.  The driver (this process) runs cooperative clients against all
three for ``--duration`` seconds; every request waits for exactly one answer
(a result or an error line) with a deadline.  Every ``--kill-every`` seconds
it SIGKILLs one of the server's child processes (an eval worker or a pool
process): requests in flight there must come back as errors, never vanish.

Reported: requests sent, answered (results), errors, lost (no answer by the
deadline, or the connection dropped while waiting: must be 0), the server's
memory at start and end (the master's RSS, and the PSS of the master and its
children: shared copy-on-write pages counted once), and the kills done.
Exit status 1 if anything was lost.  Every loop is bounded by the duration;
the server is stopped by its pid (SIGTERM, then SIGKILL) at the end.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from typing import Any, Dict, List

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: How long one request may wait for its answer before it counts as lost.
#: Generous: a request may sit behind a worker restart (~10 ms) or a pool
#: process replacement; anything near this is a bug, not load.
ANSWER_DEADLINE = 10.0


# --------------------------------------------------------------------- server
def sum_of_squares(n: int) -> int:
    """The pool task: a little CPU work."""
    return sum(i * i for i in range(n))


def serve(port_file: str) -> int:
    import logging

    from demos.eval_server import WORKER_ROOT, EvalServer
    from packet_gevent import Connection, Reactor

    logging.basicConfig(level=logging.WARNING)

    class Echo(Connection):
        def receive_data(self, data: bytes) -> None:
            self.send_data(data)

    class Defer(Connection):
        def post_init(self) -> None:
            self.buffer = b""

        def receive_data(self, data: bytes) -> None:
            self.buffer += data
            *lines, self.buffer = self.buffer.split(b"\n")
            for line in lines:
                self.defer(sum_of_squares, int(line))

        def worker_receive(self, reply: Dict[str, Any]) -> None:
            if reply["type"] == "error":
                self.send_data(b"error: %s\n" % reply["error"].replace("\n", " ").encode())
            else:
                self.send_data(b"= %d\n" % reply["data"])

    def setup(reactor: Reactor) -> None:
        echo = reactor.start_server("127.0.0.1", 0, Echo)
        evals = reactor.start_server("127.0.0.1", 0, EvalServer, lambda i: i.wow())
        defer = reactor.start_server("127.0.0.1", 0, Defer)
        def ready() -> None:
            # Start the pool's processes now (they fork on first use), so the
            # start-of-run memory figure includes them.
            reactor.pool.submit(sum_of_squares, 1).result(timeout=30)
            with open(port_file + ".tmp", "w") as f:
                json.dump({"echo": echo.port, "eval": evals.port, "defer": defer.port}, f)
            os.rename(port_file + ".tmp", port_file)
        reactor.next_turn(ready)

    Reactor.run(setup, worker_root=WORKER_ROOT, pool_size=2)
    return 0


# --------------------------------------------------------------------- driver
def rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def children_of(pid: int) -> List[int]:
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        kids.append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    return kids


def pss_kib(pid: int) -> int:
    """Proportional set size: shared (copy-on-write) pages split between the processes sharing
    them, so a sum over the process tree counts each page once (an RSS sum would not)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def memory(pid: int) -> Dict[str, int]:
    children = children_of(pid)
    return {"master_kib": rss_kib(pid), "children": len(children),
            "tree_pss_kib": pss_kib(pid) + sum(pss_kib(c) for c in children)}


class Tally:
    def __init__(self) -> None:
        self.sent = self.answered = self.errors = self.lost = 0
        self.by_service: Dict[str, Dict[str, int]] = {}

    def count(self, service: str, what: str) -> None:
        setattr(self, what, getattr(self, what) + 1)
        row = self.by_service.setdefault(service, {"sent": 0, "answered": 0, "errors": 0, "lost": 0})
        row[what] += 1


def client_loop(service: str, port: int, deadline: float, tally: Tally, rng: random.Random) -> None:
    """One client: a request, wait for its one answer (bounded), repeat until the deadline."""
    import gevent
    from gevent import socket

    while time.monotonic() < deadline:
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=ANSWER_DEADLINE)
        except OSError:
            gevent.sleep(0.05)
            continue
        reader = sock.makefile("rb")
        try:
            if service == "eval":
                reader.readline()  # the greeting
            for _ in range(rng.randint(20, 200)):  # then reconnect: connection churn too
                if time.monotonic() >= deadline:
                    break
                if service == "echo":
                    request, expect = b"Hello World %d\n" % rng.randint(0, 10**6), None
                elif service == "eval":
                    a, b = rng.randint(0, 1000), rng.randint(1, 1000)
                    request, expect = b"%d*%d+%d\n" % (a, b, a), b"= %d\n" % (a * b + a)
                else:
                    n = rng.randint(100, 5000)
                    request, expect = b"%d\n" % n, b"= %d\n" % sum_of_squares(n)
                tally.count(service, "sent")
                try:
                    sock.sendall(request)
                    answer = reader.readline()
                except (OSError, socket.timeout):
                    answer = b""
                if not answer:
                    tally.count(service, "lost")
                    break
                if service == "echo":
                    tally.count(service, "answered" if answer == request else "errors")
                elif answer.startswith(b"error:"):
                    tally.count(service, "errors")
                else:
                    tally.count(service, "answered" if answer == expect else "lost")
        finally:
            reader.close()
            sock.close()


def killer_loop(server_pid: int, every: float, deadline: float, kills: List[int], rng: random.Random) -> None:
    import gevent
    while time.monotonic() + every < deadline:
        gevent.sleep(every)
        victims = children_of(server_pid)
        if victims:
            victim = rng.choice(victims)
            try:
                os.kill(victim, signal.SIGKILL)
                kills.append(victim)
            except ProcessLookupError:
                pass


def drive(args: argparse.Namespace) -> Dict[str, Any]:
    import tempfile

    import gevent

    port_file = os.path.join(tempfile.mkdtemp(prefix="soak-"), "ports.json")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    server = subprocess.Popen([sys.executable, "-m", "benchmarks.soak", "--serve", port_file], cwd=ROOT, env=env)
    try:
        start_wait = time.monotonic() + 30
        while not os.path.exists(port_file):
            if server.poll() is not None or time.monotonic() > start_wait:
                raise SystemExit(f"soak: server did not start (exit status {server.poll()})")
            time.sleep(0.05)
        with open(port_file) as f:
            ports = json.load(f)
        rng = random.Random(args.seed)
        memory_start = memory(server.pid)
        tally = Tally()
        kills: List[int] = []
        deadline = time.monotonic() + args.duration
        greenlets = [gevent.spawn(client_loop, service, ports[service], deadline, tally,
                                  random.Random(rng.random()))
                     for service in ("echo", "eval", "defer") for _ in range(args.clients)]
        if args.kill_every > 0:
            greenlets.append(gevent.spawn(killer_loop, server.pid, args.kill_every, deadline, kills,
                                          random.Random(rng.random())))
        gevent.joinall(greenlets, timeout=args.duration + ANSWER_DEADLINE + 30, raise_error=True)
        memory_end = memory(server.pid)
        server.send_signal(signal.SIGTERM)
        exit_status = server.wait(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(10)
    return {"duration_s": args.duration, "clients_per_service": args.clients,
            "sent": tally.sent, "answered": tally.answered, "errors": tally.errors, "lost": tally.lost,
            "by_service": tally.by_service, "kills": len(kills),
            "rss_start": memory_start, "rss_end": memory_end, "server_exit_status": exit_status}


def main(argv: List[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load (default %(default)s)")
    parser.add_argument("--clients", type=int, default=8, help="clients per service (default %(default)s)")
    parser.add_argument("--kill-every", type=float, default=2.0,
                        help="SIGKILL a server child every this many seconds; 0: never (default %(default)s)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", help="also write the report to this file")
    parser.add_argument("--serve", metavar="PORT_FILE", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        return serve(args.serve)
    report = drive(args)
    print(f"soak: {report['duration_s']:.0f} s, {report['clients_per_service']} clients per service, "
          f"{report['kills']} child processes SIGKILLed")
    print(f"  sent {report['sent']:,}  answered {report['answered']:,}  errors {report['errors']:,}  "
          f"lost {report['lost']:,}")
    for service, row in sorted(report["by_service"].items()):
        print(f"    {service:6s} sent {row['sent']:,} answered {row['answered']:,} "
              f"errors {row['errors']:,} lost {row['lost']:,}")
    start, end = report["rss_start"], report["rss_end"]
    print(f"  server RSS master {start['master_kib'] / 1024:.1f} -> {end['master_kib'] / 1024:.1f} MiB; "
          f"whole tree PSS {start['tree_pss_kib'] / 1024:.1f} -> {end['tree_pss_kib'] / 1024:.1f} MiB "
          f"({start['children']} -> {end['children']} child processes)")
    print(f"  server exit status after SIGTERM: {report['server_exit_status']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 1 if report["lost"] or report["server_exit_status"] != 0 else 0


if __name__ == "__main__":
    sys.exit(main())
