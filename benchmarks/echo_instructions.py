"""Instructions per echo round trip, counted by valgrind (callgrind): a load-proof figure.

Wall-clock round trips/s on a shared machine move by 10-20% between runs;
an instruction count does not.  For each echo server of benchmarks/echo.py
this runs the server under ``valgrind --tool=callgrind`` twice, once driven
through a short run and once through a long run of the same shape by the C
load client, and reports (instructions of the long run - instructions of the
short run) / (extra round trips): start-up, imports and connects cancel out.
Instructions are user-space only (the kernel's share of a send or recv is not
counted), so the figure compares the servers' own work per message.  Usage::

    python -m benchmarks.echo_instructions [--servers ours,uvloop] [--shapes 500x20:100,50x200:1000]

A shape ``CxA:B`` means C clients, A round trips each for the short run and B
for the long one.  Needs valgrind (``apt-get install valgrind``).  Slow: each
server run takes tens of seconds under valgrind.
"""
import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Dict, List, Optional, Sequence, Tuple

from benchmarks._servers.process import LISTENING, ROOT, BenchError
from benchmarks.echo import HOST, SERVERS, Shape, available_servers, build_client, run_client

DEFAULT_SHAPES = "500x20:100,50x200:1000"
#: Seconds a server under valgrind gets to print its "listening on" line.
READY_TIMEOUT = 180.0
#: Seconds per load-client run (the server is ~50x slower under valgrind).
CLIENT_TIME_LIMIT = 300.0


def parse_shapes(text: str) -> List[Tuple[int, int, int]]:
    shapes = []
    for part in text.split(","):
        match = re.fullmatch(r"\s*(\d+)x(\d+):(\d+)\s*", part)
        if not match or not 0 < int(match.group(2)) < int(match.group(3)):
            raise BenchError(f"bad shape {part!r}: write CLIENTSxSHORT:LONG, e.g. 500x20:100")
        shapes.append((int(match.group(1)), int(match.group(2)), int(match.group(3))))
    return shapes


def count_instructions(name: str, clients: int, rounds: int, binary: str, workdir: str) -> int:
    """Start ``name`` under callgrind, drive clients x rounds through it, stop it; total instructions."""
    out = os.path.join(workdir, f"{name}-{clients}x{rounds}.callgrind")
    argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, "-u",
            *SERVERS[name].argv, "--host", HOST, "--port", "0"]
    proc = subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, errors="replace")
    port: List[int] = []
    ready = threading.Event()
    lines: List[str] = []

    def drain() -> None:
        for line in proc.stdout:
            lines.append(line)
            match = LISTENING.search(line)
            if match and not ready.is_set():
                port.append(int(match.group(2)))
                ready.set()
        ready.set()
    threading.Thread(target=drain, daemon=True).start()
    try:
        if not ready.wait(READY_TIMEOUT) or not port:
            raise BenchError(f"{name} under valgrind did not listen within {READY_TIMEOUT:.0f} s:\n"
                             + "".join(lines[-20:]))
        report = run_client(binary, port[0], Shape(clients, rounds), CLIENT_TIME_LIMIT)
        if report["errors"] or report["round_trips"] != report["expected"]:
            raise BenchError(f"{name}: {report['errors']} errors, {report['round_trips']} of "
                             f"{report['expected']} round trips")
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
    with open(out) as f:
        for line in f:
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
    raise BenchError(f"no instruction total in {out}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--servers", default="ours,ours-glet,ours-hub,asyncio,uvloop")
    parser.add_argument("--shapes", default=DEFAULT_SHAPES, help=f"default {DEFAULT_SHAPES}")
    parser.add_argument("--json", metavar="PATH", help="save the counts to PATH")
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 1
    reasons = available_servers()
    names = [n.strip() for n in args.servers.split(",") if n.strip()]
    for name in names:
        if name not in SERVERS or reasons[name]:
            parser.error(f"cannot run {name!r}: {reasons.get(name, 'unknown server')}")
    results: Dict[str, Dict[str, dict]] = {}
    try:
        shapes = parse_shapes(args.shapes)
        binary = build_client()
        with tempfile.TemporaryDirectory(prefix="echo-callgrind-") as workdir:
            for clients, short, long in shapes:
                key = f"{clients}x({long}-{short})"
                results[key] = {}
                for name in names:
                    low = count_instructions(name, clients, short, binary, workdir)
                    high = count_instructions(name, clients, long, binary, workdir)
                    per_rt = (high - low) / (clients * (long - short))
                    results[key][name] = {"short_total": low, "long_total": high, "instructions_per_rt": per_rt}
                    print(f"  {key:<14} {name:<9} {per_rt:10,.0f} instructions/rt", flush=True)
    except BenchError as exc:
        print(f"instruction count failed: {exc}", file=sys.stderr)
        return 1
    print("\ninstructions per round trip (user space, callgrind; lower is better)")
    for key, rows in results.items():
        base = rows.get("uvloop", {}).get("instructions_per_rt")
        for name, row in rows.items():
            vs = f"  {row['instructions_per_rt'] / base:.2f}x uvloop" if base else ""
            print(f"  {key:<14} {name:<9} {row['instructions_per_rt']:10,.0f}{vs}")
    if args.json:
        meta = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "python": sys.version.split()[0],
                "shapes": args.shapes}
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "results": results}, f, indent=2)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
