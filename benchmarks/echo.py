"""Echo-server benchmark: our reactor's echo demo against bare gevent, asyncio and uvloop.

Packet's own benchmark, redone: N clients each do M "Hello World\\n" round trips
(send, read the echo back, repeat).  Every server runs as its own process on
127.0.0.1 (port 0); the load comes from a C epoll client (echo_client.c, built
with ``cc -O2`` into benchmarks/_build/) because a Python client saturates a
2-core machine before the servers do.  Per (server, shape) it measures round
trips/s, p50/p99 latency and the server's CPU time per round trip (utime+stime
from /proc, the server's whole process tree), repeats each measurement with the
servers interleaved, and prints medians and ratios against the bare gevent
StreamServer.  Usage: ``python -m benchmarks.echo [--quick] [--repeat N]
[--json PATH]``; see benchmarks/README.md for what each figure means.
"""
import argparse
import collections
import importlib
import importlib.util
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from benchmarks._servers.process import BenchError, ServerProcess, ServerSpec

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CLIENT_SOURCE = os.path.join(HERE, "echo_client.c")
BUILD_DIR = os.path.join(HERE, "_build")
HOST = "127.0.0.1"
BASELINE = "gevent"
#: What each round trip sends and expects back (Packet's benchmark message, 12 bytes).
MESSAGE = "Hello World\n"

#: Packet's benchmark shape (500 client threads x 100 round trips) and a
#: long-connection shape with fewer clients, where per-message cost dominates.
DEFAULT_SHAPES = "500x100,50x2000"
#: --quick: 10k round trips per run, enough for the 10 ms CPU clock tick to
#: resolve ~1 us per round trip, and well under a second per run.
QUICK_SHAPES = "50x200,10x1000"
#: Extra seconds the client process gets beyond its own time limit.
CLIENT_GRACE = 15.0


@dataclass(frozen=True)
class Shape:
    clients: int
    rounds: int

    def __str__(self) -> str:
        return f"{self.clients}x{self.rounds}"


SERVERS: Dict[str, ServerSpec] = {
    spec.name: spec
    for spec in (
        ServerSpec("ours", ("-m", "demos.echo_server"), "packet_gevent reactor (demos/echo_server.py)"),
        ServerSpec("ours-glet", ("-m", "demos.echo_server", "--greenlet-per-connection"),
                   "packet_gevent, handler declared greenlet_per_connection"),
        ServerSpec("ours-hub", ("-m", "demos.echo_server", "--run-in-hub"),
                   "packet_gevent, handler declared run_in_hub (callbacks in the hub)"),
        ServerSpec("gevent", ("-m", "benchmarks._servers.gevent_echo"), "bare gevent StreamServer, recv/sendall"),
        ServerSpec("asyncio", ("-m", "benchmarks._servers.asyncio_echo", "--loop", "asyncio"), "asyncio.Protocol"),
        ServerSpec("uvloop", ("-m", "benchmarks._servers.asyncio_echo", "--loop", "uvloop"), "asyncio.Protocol on uvloop"),
    )
}


def parse_shapes(text: str) -> List[Shape]:
    """Parse ``"500x100,50x2000"`` into shapes (clients x round trips each)."""
    shapes = []
    for part in text.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", part)
        if not match or int(match.group(1)) < 1 or int(match.group(2)) < 1:
            raise BenchError(f"bad shape {part!r}: write CLIENTSxROUNDS, e.g. 500x100")
        shapes.append(Shape(int(match.group(1)), int(match.group(2))))
    return shapes


def available_servers() -> Dict[str, str]:
    """Map each server name to why it cannot run, or to "" when it can."""
    reasons = {name: "" for name in SERVERS}
    if not os.path.exists(os.path.join(ROOT, "demos", "echo_server.py")):
        reasons["ours"] = reasons["ours-glet"] = reasons["ours-hub"] = "demos/echo_server.py does not exist yet"
    if importlib.util.find_spec("uvloop") is None:
        reasons["uvloop"] = "uvloop is not installed (pip install uvloop)"
    return reasons


# -- the C load client ------------------------------------------------------

def build_client(build_dir: str = BUILD_DIR, cc: str = "cc") -> str:
    """Compile echo_client.c with ``cc -O2`` unless the binary is newer; return its path."""
    binary = os.path.join(build_dir, "echo_client")
    if os.path.exists(binary) and os.path.getmtime(binary) >= os.path.getmtime(CLIENT_SOURCE):
        return binary
    compiler = shutil.which(cc)
    if compiler is None:
        raise BenchError(f"C compiler {cc!r} not found on PATH: the echo benchmark compiles "
                         f"{CLIENT_SOURCE}; install one (e.g. apt-get install gcc)")
    os.makedirs(build_dir, exist_ok=True)
    tmp = f"{binary}.{os.getpid()}.tmp"  # build aside, then rename: concurrent runs never exec half a file
    proc = subprocess.run([compiler, "-O2", "-Wall", "-o", tmp, CLIENT_SOURCE],
                          capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise BenchError(f"{cc} failed to compile {CLIENT_SOURCE} (exit {proc.returncode}):\n{proc.stderr}")
    os.replace(tmp, binary)
    return binary


def run_client(binary: str, port: int, shape: Shape, time_limit: float) -> dict:
    """Run the load client once against HOST:port; return its JSON report."""
    argv = [binary, "-H", HOST, "-p", str(port), "-c", str(shape.clients),
            "-n", str(shape.rounds), "-t", str(time_limit), "-m", MESSAGE]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=time_limit + CLIENT_GRACE)
    except subprocess.TimeoutExpired as exc:  # run() has killed it already
        raise BenchError(f"echo_client {shape} did not exit within {time_limit + CLIENT_GRACE:.0f} s") from exc
    if proc.returncode not in (0, 1) or not proc.stdout.strip():
        raise BenchError(f"echo_client exited {proc.returncode}: {proc.stderr.strip() or proc.stdout.strip()}")
    return json.loads(proc.stdout)


def measure(server: ServerProcess, binary: str, shape: Shape, time_limit: float) -> dict:
    """One load run against a started server: client report plus server CPU per round trip."""
    cpu_before = server.cpu_seconds()
    report = run_client(binary, server.port, shape, time_limit)
    cpu = server.cpu_seconds() - cpu_before
    done = report["round_trips"]
    report.update(
        server=server.spec.name, shape=str(shape), server_cpu_seconds=round(cpu, 4),
        rt_per_s=done / report["wall_seconds"] if report["wall_seconds"] > 0 else 0.0,
        cpu_us_per_rt=cpu / done * 1e6 if done else None,
    )
    return report


# -- summary ---------------------------------------------------------------

FIGURES = ("rt_per_s", "p50_us", "p99_us", "cpu_us_per_rt")


def summarize(runs: Sequence[dict]) -> Dict[str, Dict[str, dict]]:
    """Medians of each figure per shape and server: {shape: {server: {figure: median, ...}}}."""
    groups: Dict[Tuple[str, str], List[dict]] = collections.defaultdict(list)
    for run in runs:
        groups[(run["shape"], run["server"])].append(run)
    summary: Dict[str, Dict[str, dict]] = collections.defaultdict(dict)
    for (shape, server), group in groups.items():
        row = {}
        for figure in FIGURES:
            values = [r[figure] for r in group if r.get(figure) is not None]
            row[figure] = statistics.median(values) if values else None
        row["runs"] = len(group)
        row["errors"] = sum(r["errors"] for r in group)
        row["incomplete"] = sum(r["round_trips"] != r["expected"] for r in group)
        summary[shape][server] = row
    return dict(summary)


def ratios(summary: Dict[str, Dict[str, dict]], pairs: Sequence[Tuple[str, str]]) -> Dict[str, dict]:
    """{"ours/gevent": {shape: {figure: ratio}}} for each (numerator, denominator) pair present."""
    out: Dict[str, dict] = {}
    for num, den in pairs:
        per_shape = {}
        for shape, rows in summary.items():
            if num in rows and den in rows:
                per_shape[shape] = {
                    f: rows[num][f] / rows[den][f] if rows[num][f] is not None and rows[den][f] else None
                    for f in FIGURES
                }
        if per_shape:
            out[f"{num}/{den}"] = per_shape
    return out


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_table(summary: Dict[str, Dict[str, dict]], ratio_table: Dict[str, dict], repeat: int) -> str:
    lines = []
    header = (f"{'server':<9}{'rt/s':>10}{'p50 us':>10}{'p99 us':>10}{'cpu us/rt':>11}"
              f"{'rt/s vs ' + BASELINE:>16}{'cpu vs ' + BASELINE:>15}  errors")
    for shape, rows in summary.items():
        lines.append(f"\nshape {shape} (clients x round trips), median of {repeat}")
        lines.append(header)
        base = rows.get(BASELINE)
        for server, row in rows.items():
            rel_rps = row["rt_per_s"] / base["rt_per_s"] if base and base["rt_per_s"] else None
            rel_cpu = (row["cpu_us_per_rt"] / base["cpu_us_per_rt"]
                       if base and row["cpu_us_per_rt"] is not None and base["cpu_us_per_rt"] else None)
            flag = "" if not row["incomplete"] else f" ({row['incomplete']} runs incomplete)"
            lines.append(f"{server:<9}{_fmt(row['rt_per_s'], ',.0f'):>10}{_fmt(row['p50_us'], ',.0f'):>10}"
                         f"{_fmt(row['p99_us'], ',.0f'):>10}{_fmt(row['cpu_us_per_rt'], '.1f'):>11}"
                         f"{_fmt(rel_rps, '.2f'):>16}{_fmt(rel_cpu, '.2f'):>15}  {row['errors']}{flag}")
    for name, per_shape in ratio_table.items():
        lines.append(f"\n{name}: (rt/s > 1 is faster; p50, p99, cpu < 1 is better)")
        for shape, r in per_shape.items():
            lines.append(f"  {shape:<10}" + "  ".join(f"{f} {_fmt(r[f], '.2f')}" for f in FIGURES))
    return "\n".join(lines)


# -- driver ----------------------------------------------------------------

def run_benchmark(names: Sequence[str], shapes: Sequence[Shape], repeat: int, time_limit: float,
                  binary: str, log=print) -> dict:
    """Start every server, measure each (server, shape) `repeat` times interleaved, stop them all."""
    servers = [ServerProcess(SERVERS[name]) for name in names]
    runs, exits = [], {}
    try:
        for server in servers:
            server.start(HOST)
            log(f"started {server.spec.name:<8} pid {server.proc.pid} port {server.port}")
            measure(server, binary, Shape(20, 50), time_limit)  # warm-up, not recorded
        for rep in range(repeat):
            # Rotate the server order each repetition so drifting noise hits all alike.
            order = servers[rep % len(servers):] + servers[:rep % len(servers)]
            for shape in shapes:
                for server in order:
                    run = measure(server, binary, shape, time_limit)
                    run["repeat"] = rep
                    runs.append(run)
                    log(f"  [{rep + 1}/{repeat}] {server.spec.name:<8} {str(shape):<9} "
                        f"{run['rt_per_s']:>9,.0f} rt/s  p50 {run['p50_us']:>8,.0f} us  "
                        f"p99 {run['p99_us']:>8,.0f} us  cpu {_fmt(run['cpu_us_per_rt'], '.1f'):>6} us/rt  "
                        f"errors {run['errors']}" + ("  TIMED OUT" if run["timed_out"] else ""))
    finally:
        for server in servers:
            exits[server.spec.name] = server.stop()
    return {"runs": runs, "exit_status": exits}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=None, help="runs per (server, shape); default 3, 1 with --quick")
    parser.add_argument("--quick", action="store_true", help=f"smoke run: shapes {QUICK_SHAPES}, 1 repeat")
    parser.add_argument("--shapes", default=None, help=f"CLIENTSxROUNDS list (default {DEFAULT_SHAPES})")
    parser.add_argument("--servers", default=None, help="comma list of " + ",".join(SERVERS) + " (default: all available)")
    parser.add_argument("--time-limit", type=float, default=60.0, help="seconds per client run (default 60)")
    parser.add_argument("--json", metavar="PATH", help="save raw runs, medians and ratios to PATH")
    args = parser.parse_args(argv)
    repeat = args.repeat if args.repeat is not None else (1 if args.quick else 3)
    if not 1 <= repeat <= 100:
        parser.error("--repeat must be between 1 and 100")
    try:
        shapes = parse_shapes(args.shapes or (QUICK_SHAPES if args.quick else DEFAULT_SHAPES))
        names = select_servers(args.servers)
        binary = build_client()
        result = run_benchmark(names, shapes, repeat, args.time_limit, binary)
    except BenchError as exc:
        print(f"echo benchmark failed: {exc}", file=sys.stderr)
        return 1
    summary = summarize(result["runs"])
    ratio_table = ratios(summary, [("ours", BASELINE), ("ours", "asyncio"), ("ours", "uvloop"),
                                 ("ours-glet", "uvloop"),
                                 ("ours-hub", BASELINE), ("ours-hub", "asyncio"), ("ours-hub", "uvloop")])
    print(format_table(summary, ratio_table, repeat))
    print(f"\nserver exit status after SIGTERM: {result['exit_status']}")
    print("load average (1, 5, 15 min): %.2f %.2f %.2f on %d CPUs; other work on the machine shows up as noise"
          % (*os.getloadavg(), os.cpu_count()))
    if args.json:
        save_json(args.json, result, summary, ratio_table, shapes, repeat, args.time_limit)
    bad = any(r["errors"] or r["round_trips"] != r["expected"] for r in result["runs"])
    return 1 if bad else 0


def select_servers(requested: Optional[str]) -> List[str]:
    reasons = available_servers()
    if requested:
        names = [n.strip() for n in requested.split(",") if n.strip()]
        unknown = [n for n in names if n not in SERVERS]
        if unknown:
            raise BenchError(f"unknown server(s) {unknown}: choose from {list(SERVERS)}")
        missing = [f"{n}: {reasons[n]}" for n in names if reasons[n]]
        if missing:
            raise BenchError("cannot run " + "; ".join(missing))
        return names
    for name, reason in reasons.items():
        if reason:
            print(f"skipping {name}: {reason}")
    return [n for n in SERVERS if not reasons[n]]


def _version(module: str) -> Optional[str]:
    if importlib.util.find_spec(module) is None:
        return None
    return getattr(importlib.import_module(module), "__version__", "?")


def save_json(path, result, summary, ratio_table, shapes, repeat, time_limit) -> None:
    import gevent
    meta = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "python": platform.python_version(),
        "gevent": gevent.__version__, "cpus": os.cpu_count(), "machine": platform.machine(),
        "shapes": [str(s) for s in shapes], "repeat": repeat, "time_limit": time_limit,
        "message": MESSAGE, "loadavg_after": os.getloadavg(),
        "uvloop": _version("uvloop"),
    }
    data = {"meta": meta, "summary": summary, "ratios": ratio_table, **result}
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    with open(path, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    sys.exit(main())
