"""HTTP benchmark: wrk against the same hello-world app on our WSGI server and its peers.

    python -m benchmarks.http [--duration 5] [--rounds 2] [--connections 50] [--json PATH] [--plot PATH]

Needs ``wrk`` (Debian/Ubuntu: ``apt-get update && apt-get install -y wrk``);
without it the benchmark says so and exits 0 having measured nothing.  The
peers come with the bench extra (gunicorn, uvicorn, uvloop, httptools).

Three tables, every server in its own process(es) on 127.0.0.1, the rounds
interleaved (each round runs every server once, in turn), medians reported:

1. ``wrk -t1 -cC -dD`` on ``GET /`` (13-byte body): ours (packet_gevent.wsgi),
   gevent.pywsgi with TCP_NODELAY, gunicorn's gevent worker, uvicorn (httptools
   + uvloop, the same response as an ASGI app).  req/s, p50, p99, and the
   server's CPU time per request (its process tree, from /proc).
2. The fast route's latency while another wrk hammers the CPU-bound route
   (fib in pure Python) with 4 connections: offload on (the route runs in a
   2-process ForkPool) vs off (it runs in the hub).
3. Ours with ``--processes 1`` and ``--processes 2``.

wrk itself runs on the same cores as the servers: on a 2-core machine the
client takes one of them, which caps every figure (and --processes 2).
"""
import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence

from benchmarks._servers.process import BenchError, ServerProcess, ServerSpec

HERE = os.path.dirname(os.path.abspath(__file__))
LAUNCH = ("-m", "benchmarks._servers.http_launch")

PEERS = {
    "ours": ServerSpec("ours", LAUNCH + ("ours",), "packet_gevent.wsgi, 1 process"),
    "pywsgi": ServerSpec("pywsgi", LAUNCH + ("pywsgi",), "gevent.pywsgi + TCP_NODELAY"),
    "gunicorn": ServerSpec("gunicorn", LAUNCH + ("gunicorn",), "gunicorn, gevent worker"),
    "uvicorn": ServerSpec("uvicorn", LAUNCH + ("uvicorn",), "uvicorn, httptools + uvloop (ASGI)"),
}
OFFLOAD = {
    "offload on": ServerSpec("offload on", LAUNCH + ("ours", "--app", "offloaded"),
                             "/cpu in a 2-process ForkPool"),
    "offload off": ServerSpec("offload off", LAUNCH + ("ours", "--app", "inline"), "/cpu in the hub"),
}
PROCESSES = {
    "--processes 1": ServerSpec("--processes 1", LAUNCH + ("ours",), "one serving process"),
    "--processes 2": ServerSpec("--processes 2", LAUNCH + ("ours", "--processes", "2"),
                                "master + 2 serving processes on one listener"),
}

_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def parse_wrk(output: str) -> dict:
    """req/s, p50 and p99 (ms), errors from ``wrk --latency`` output."""
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if not rate:
        raise BenchError(f"could not read wrk's output:\n{output}")
    result = {"rps": float(rate.group(1)), "errors": 0}
    total = re.search(r"(\d+) requests in", output)
    result["requests"] = int(total.group(1)) if total else None
    for label, key in (("50%", "p50"), ("99%", "p99")):
        match = re.search(rf"{label}\s+([\d.]+)(us|ms|s)\b", output)
        result[key] = float(match.group(1)) * _UNITS[match.group(2)] if match else None
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    result["errors"] = (sum(int(g) for g in errors.groups()) if errors else 0) + \
        (int(non2xx.group(1)) if non2xx else 0)
    return result


def run_wrk(port: int, path: str, connections: int, duration: float) -> dict:
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{duration:g}s", "--latency",
            f"http://127.0.0.1:{port}{path}"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 30)
    if done.returncode != 0:
        raise BenchError(f"wrk failed ({done.returncode}): {done.stderr}")
    return parse_wrk(done.stdout)


def warm_up(port: int) -> None:
    run_wrk(port, "/", 10, 1)


def interleaved(specs: Dict[str, ServerSpec], rounds: int, measure) -> Dict[str, List[dict]]:
    """Start every server, then run ``measure(port)`` on each in turn, ``rounds`` times."""
    servers = {}
    try:
        for name, spec in specs.items():
            server = ServerProcess(spec)
            server.start()
            servers[name] = server
            warm_up(server.port)
        results: Dict[str, List[dict]] = {name: [] for name in specs}
        for _ in range(rounds):
            for name, server in servers.items():
                cpu_before = server.cpu_seconds()
                result = measure(server.port)
                cpu = server.cpu_seconds() - cpu_before
                # Server CPU (its whole process tree, /proc) per request answered
                # on the measured route: steadier than req/s on a shared machine.
                result["cpu_us"] = 1e6 * cpu / result["requests"] if result.get("requests") else None
                results[name].append(result)
        return results
    finally:
        for server in servers.values():
            server.stop()


def median(runs: Sequence[dict], key: str) -> Optional[float]:
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else None


def summarize(results: Dict[str, List[dict]]) -> Dict[str, dict]:
    return {name: {"rps": median(runs, "rps"), "p50": median(runs, "p50"),
                   "p99": median(runs, "p99"), "cpu_us": median(runs, "cpu_us"),
                   "errors": sum(r["errors"] for r in runs),
                   "rounds": runs}
            for name, runs in results.items()}


def table(title: str, summary: Dict[str, dict], baseline: Optional[str] = None) -> str:
    lines = [f"### {title}", "", "| server | req/s | p50 ms | p99 ms | CPU µs/req | errors |"
             + (f" vs {baseline} |" if baseline else ""),
             "| --- | --: | --: | --: | --: | --: |" + (" --: |" if baseline else "")]
    for name, row in summary.items():
        cpu = f"{row['cpu_us']:.1f}" if row.get("cpu_us") is not None else "-"
        line = (f"| {name} | {row['rps']:,.0f} | {row['p50']:.2f} | {row['p99']:.2f} | {cpu} | "
                f"{row['errors']} |")
        if baseline:
            line += f" {row['rps'] / summary[baseline]['rps']:.2f}x |"
        lines.append(line)
    return "\n".join(lines)


def measure_under_cpu_load(connections: int, duration: float):
    def measure(port: int) -> dict:
        hammer = subprocess.Popen(["wrk", "-t1", "-c4", f"-d{duration + 1:g}s",
                                   f"http://127.0.0.1:{port}/cpu"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            time.sleep(0.5)  # the hammer is at full speed before the measurement starts
            result = run_wrk(port, "/", connections, duration)
        finally:
            out, _ = hammer.communicate(timeout=duration + 30)
        result["cpu_rps"] = parse_wrk(out)["rps"] if "Requests/sec" in out else None
        result["requests"] = None  # the server's CPU went mostly to /cpu: no per-request figure
        return result
    return measure


def plot(summaries: Dict[str, Dict[str, dict]], path: str) -> None:
    """One panel per figure: req/s and CPU per request of the peers, the fast route's
    median under CPU load, req/s by --processes."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    panels = []
    for title, summary in summaries.items():
        if title.startswith("hello"):
            panels += [(title, summary, "rps", "req/s"),
                       ("server CPU per request", summary, "cpu_us", "CPU µs / request")]
        elif title.startswith("fast"):
            panels.append((title, summary, "p50", "fast route p50 (ms)"))
        else:
            panels.append((title, summary, "rps", "req/s"))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4), squeeze=False)
    for ax, (title, summary, key, label) in zip(axes[0], panels):
        names = list(summary)
        ax.bar(names, [summary[n][key] or 0 for n in names], color="#4a7ab5")
        ax.set_title(title, fontsize=10)
        ax.set_ylabel(label)
        ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run (default: 5)")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds (default: 2)")
    p.add_argument("--connections", type=int, default=50, help="wrk connections (default: 50)")
    p.add_argument("--only", choices=("peers", "offload", "processes"), action="append",
                   help="run only these tables (repeatable)")
    p.add_argument("--json", help="write the raw results here")
    p.add_argument("--plot", help="write a PNG of the three tables here (needs matplotlib)")
    args = p.parse_args(argv)
    if shutil.which("wrk") is None:
        print("benchmarks/http.py needs wrk, which is not installed: "
              "apt-get update && apt-get install -y wrk  (skipped, nothing measured)")
        return 0
    tables = args.only or ["peers", "offload", "processes"]
    load_before = os.getloadavg()
    print(f"load average before: {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f} "
          f"on {os.cpu_count()} cores (shared machine: figures are noisy)", flush=True)

    def simple(port: int) -> dict:
        return run_wrk(port, "/", args.connections, args.duration)

    summaries: Dict[str, Dict[str, dict]] = {}
    texts = []
    if "peers" in tables:
        specs = {name: spec for name, spec in PEERS.items()}
        summary = summarize(interleaved(specs, args.rounds, simple))
        summaries[f"hello world, wrk -t1 -c{args.connections} -d{args.duration:g}s"] = summary
        texts.append(table(f"Hello world, wrk -t1 -c{args.connections} -d{args.duration:g}s, "
                           f"median of {args.rounds}", summary, "pywsgi"))
    if "offload" in tables:
        summary = summarize(interleaved(OFFLOAD, args.rounds,
                                        measure_under_cpu_load(10, args.duration)))
        summaries["fast route while /cpu is hammered"] = summary
        texts.append(table(f"Fast route (wrk -c10) while 4 connections hammer /cpu "
                           f"(fib(21)), median of {args.rounds}", summary)
                     + "\n\n/cpu req/s meanwhile: " + ", ".join(
                         f"{name} {median(row['rounds'], 'cpu_rps') or 0:,.0f}"
                         for name, row in summary.items()))
    if "processes" in tables:
        summary = summarize(interleaved(PROCESSES, args.rounds, simple))
        summaries["--processes 1 vs 2"] = summary
        texts.append(table(f"Ours, --processes 1 vs 2, wrk -t1 -c{args.connections}, "
                           f"median of {args.rounds}", summary, "--processes 1"))
    load_after = os.getloadavg()
    print("\n\n".join(texts))
    print(f"\nload average after: {load_after[0]:.2f}; python {platform.python_version()}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"tables": summaries, "loadavg_before": load_before, "loadavg_after": load_after,
                       "python": platform.python_version(), "duration": args.duration,
                       "rounds": args.rounds, "connections": args.connections}, f, indent=1)
    if args.plot and summaries:
        plot(summaries, args.plot)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        sys.exit(1)
