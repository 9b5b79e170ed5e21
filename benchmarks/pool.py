"""Fork-pool benchmark: packet_gevent.ForkPool against the pools a gevent program could use.

Peers, all with 2 workers, each run in a fresh interpreter of its own (so no
import or GC state leaks between them), interleaved, ``--repeat`` times:

* ``ours``       packet_gevent.ForkPool: submit / Future.result
* ``mp_pool``    multiprocessing.Pool (fork): apply_async / AsyncResult.get
* ``ppe``        concurrent.futures.ProcessPoolExecutor (fork): submit / result
* ``threadpool`` gevent.threadpool.ThreadPool: spawn / AsyncResult.get
* ceilings: a raw ``pipe`` and a raw ``socketpair`` to a forked child,
  blocking reads and writes, no serialization (round trip and 16 MiB only).

Measurements (see :func:`measure_pool`):

* tiny: 20,000 submits of ``f(x) = x + 1``, then every result: tasks/s;
  ``stall``: the longest time the hub did not run while those 20,000 were
  *submitted* (a greenlet ticking every 0.5 ms records when it runs);
* rtt: sequential round trips (submit one, wait for it), p50 / p99, and
  the CPU they cost per round trip: the caller's (``time.process_time``)
  and the worker processes' (``/proc/PID/schedstat``, Linux); then the
  workers' CPU over 0.5 s of idleness (a pool must not spin while idle);
  the table's last line is our p50 over the raw socketpair's (same run);
* 16 MiB: a ``bytes`` of 16 MiB sent to ``echo`` and back: MiB/s each way
  (2 x 16 MiB / round-trip time), median of 5;
* cpu: 8 tasks of ~0.25 s of pure-Python work: wall time and speedup
  against running them one after another (8 x one run timed in the same
  process just before, so both see the same machine load);
* lateness: while the cpu tasks run (and the caller waits for them, the way
  each pool is normally used), a greenlet sleeping to a 1 ms grid records
  how late it wakes; p99.  An idle hub already wakes up to ~1.1 ms late at
  p99 here (libev rounds epoll timeouts up to whole milliseconds), so the
  idle figure, measured the same way in the same process, is printed too.

Usage: ``python -m benchmarks.pool [--repeat N] [--quick] [--peers a,b]
[--json PATH] [--plot PATH]``.  It prints a table of medians with ratios
(ours / peer; for "lower is better" rows the ratio is peer / ours, so > 1
always means ours is better) and saves a PNG plot (matplotlib).
Every child process is started by this script in its own process group and
killed by that group's id if it overruns its time limit.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
POOLS = ("ours", "mp_pool", "ppe", "threadpool")
CEILINGS = ("pipe", "socketpair")
SIZE = 2
BIG = 16 * 1024 * 1024
#: Seconds one peer's run may take before its process group is killed.
RUN_LIMIT = 180.0


# -- tasks (module level: they travel by reference) ---------------------------------------

def inc(x: int) -> int:
    return x + 1


def echo(data: Any) -> Any:
    return data


def spin(n: int) -> int:
    total = 0
    for i in range(n):
        total += i
    return total


def calibrate_spin(seconds: float = 0.25) -> int:
    """Iterations of :func:`spin` that take about ``seconds`` here."""
    n = 200_000
    while True:
        t0 = time.perf_counter()
        spin(n)
        took = time.perf_counter() - t0
        if took > 0.05:
            return int(n * seconds / took)
        n *= 4


# -- hub monitors ------------------------------------------------------------------------------

class Ticker:
    """A greenlet that wakes every ``period`` seconds and records when it ran."""

    def __init__(self, period: float = 0.0005) -> None:
        import gevent
        self.period = period
        self.ticks: List[float] = []
        self._greenlet = gevent.spawn(self._run)

    def _run(self) -> None:
        import gevent
        while True:
            self.ticks.append(time.perf_counter())
            gevent.sleep(self.period)

    def longest_gap(self, start: float, end: float) -> float:
        """Longest interval within [start, end] in which the ticker did not run."""
        points = [start] + [t for t in self.ticks if start < t < end] + [end]
        return max(b - a for a, b in zip(points, points[1:]))

    def stop(self) -> None:
        self._greenlet.kill()


class Lateness:
    """How late a 1 ms timer would fire: a greenlet sleeps to a 1 ms grid and
    records when it runs; each grid point's lateness is the time from it to
    the first run at or after it (so a hub blocked for 100 ms yields 100
    samples from 0 to 100 ms, as 100 missed timers would)."""

    def __init__(self, period: float = 0.001) -> None:
        import gevent
        self.period = period
        self.start = time.perf_counter()
        self.runs: List[float] = []
        self._greenlet = gevent.spawn(self._run)

    def _run(self) -> None:
        import gevent
        period, start = self.period, self.start
        while True:
            now = time.perf_counter()
            self.runs.append(now)
            due = start + (int((now - start) / period) + 1) * period
            gevent.sleep(max(0.0, due - time.perf_counter()))

    def stop(self) -> List[float]:
        import bisect
        end = time.perf_counter()
        self._greenlet.kill()
        runs = self.runs + [end]
        late = []
        k = 1
        while self.start + k * self.period < end:
            due = self.start + k * self.period
            late.append(runs[bisect.bisect_left(runs, due)] - due)
            k += 1
        return sorted(late)


def percentile(sorted_values: List[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * q))]


def idle_lateness(seconds: float = 0.5) -> float:
    import gevent
    monitor = Lateness()
    gevent.sleep(seconds)
    return percentile(monitor.stop(), 0.99)


# -- pool adapters -------------------------------------------------------------------------------

def make_adapter(name: str) -> Tuple[Callable[..., Any], Callable[[Any], Any], Callable[[], None]]:
    """(submit(fn, *args) -> handle, wait(handle) -> result, close())."""
    if name == "ours":
        from packet_gevent import ForkPool
        pool = ForkPool(SIZE)
        return pool.submit, lambda f: f.result(), lambda: pool.shutdown(wait=True)
    if name == "mp_pool":
        import multiprocessing
        mp_pool = multiprocessing.get_context("fork").Pool(SIZE)

        def close_mp() -> None:
            mp_pool.close()
            mp_pool.join()
        return (lambda fn, *args: mp_pool.apply_async(fn, args)), (lambda r: r.get()), close_mp
    if name == "ppe":
        import concurrent.futures
        import multiprocessing
        ppe = concurrent.futures.ProcessPoolExecutor(SIZE, mp_context=multiprocessing.get_context("fork"))
        return ppe.submit, lambda f: f.result(), lambda: ppe.shutdown(wait=True)
    if name == "threadpool":
        import gevent.threadpool
        threads = gevent.threadpool.ThreadPool(SIZE)
        return threads.spawn, lambda r: r.get(), threads.kill
    raise SystemExit(f"unknown pool {name!r}; choose from {', '.join(POOLS)}")


def measure_pool(name: str, tiny: int, rtts: int, spin_n: int) -> Dict[str, Any]:
    import gevent
    submit, wait, close = make_adapter(name)
    result: Dict[str, Any] = {"peer": name}
    for _ in range(3):  # start the workers, warm up
        wait(submit(inc, 1))
    for _ in range(200):
        wait(submit(inc, 1))
    result["idle_lateness_p99_ms"] = idle_lateness() * 1e3

    ticker = Ticker()
    t0 = time.perf_counter()
    handles = [submit(inc, i) for i in range(tiny)]
    t_submitted = time.perf_counter()
    values = [wait(h) for h in handles]
    t_done = time.perf_counter()
    ticker.stop()
    assert values == [i + 1 for i in range(tiny)], f"{name}: wrong tiny results"
    result["tiny_per_s"] = tiny / (t_done - t0)
    result["submit_stall_ms"] = ticker.longest_gap(t0, t_submitted) * 1e3
    result["submit_seconds"] = t_submitted - t0

    workers = _worker_pids(name, submit, wait)
    samples = []
    cpu0, workers_cpu0 = time.process_time(), _cpu_seconds(workers)
    for i in range(rtts):
        t = time.perf_counter()
        wait(submit(inc, i))
        samples.append(time.perf_counter() - t)
    cpu1, workers_cpu1 = time.process_time(), _cpu_seconds(workers)
    samples.sort()
    result["rtt_p50_us"] = percentile(samples, 0.5) * 1e6
    result["rtt_p99_us"] = percentile(samples, 0.99) * 1e6
    result["rtt_cpu_us"] = (cpu1 - cpu0) * 1e6 / rtts
    if workers_cpu0 is not None and workers_cpu1 is not None:
        result["rtt_worker_cpu_us"] = (workers_cpu1 - workers_cpu0) * 1e6 / rtts
        gevent.sleep(0.05)  # idle now: what the workers burn while nobody submits
        idle0 = _cpu_seconds(workers)
        gevent.sleep(0.5)
        idle1 = _cpu_seconds(workers)
        if idle0 is not None and idle1 is not None:
            result["idle_worker_cpu_pct"] = (idle1 - idle0) / 0.5 * 100

    data = os.urandom(BIG)
    times = []
    for _ in range(5):
        t = time.perf_counter()
        back = wait(submit(echo, data))
        times.append(time.perf_counter() - t)
        assert back == data, f"{name}: 16 MiB came back different"
        del back
    result["big_mib_s_each_way"] = 2 * 16 / statistics.median(times)

    one = min(_timed(spin, spin_n) for _ in range(2))  # here, now: the same load as the run
    result["cpu_sequential_s"] = 8 * one
    monitor = Lateness()
    t = time.perf_counter()
    handles = [submit(spin, spin_n) for _ in range(8)]
    for h in handles:
        wait(h)
    result["cpu_wall_s"] = time.perf_counter() - t
    result["cpu_speedup"] = result["cpu_sequential_s"] / result["cpu_wall_s"]
    late = monitor.stop()
    result["busy_lateness_p99_ms"] = percentile(late, 0.99) * 1e3
    result["busy_lateness_max_ms"] = (late[-1] if late else float("nan")) * 1e3
    close()
    return result


def _worker_pids(name: str, submit: Callable[..., Any], wait: Callable[[Any], Any]) -> List[int]:
    """The pids of the pool's worker processes (ours: ForkPool.pids(); others: asked)."""
    if name == "threadpool":
        return []
    return sorted({wait(h) for h in [submit(os.getpid) for _ in range(20)]})


def _cpu_seconds(pids: List[int]) -> Optional[float]:
    """CPU seconds used so far by these processes (Linux schedstat, ns); None if unreadable."""
    if not pids:
        return None
    total = 0
    try:
        for pid in pids:
            with open(f"/proc/{pid}/schedstat") as fh:
                total += int(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return total / 1e9


# -- raw ceilings -----------------------------------------------------------------------------------

def measure_raw(kind: str, rtts: int) -> Dict[str, Any]:
    """Blocking echo child over a pipe pair or a socketpair: round trip and 16 MiB one way."""
    import socket
    if kind == "pipe":
        r1, w1 = os.pipe()  # master -> child
        r2, w2 = os.pipe()  # child -> master
        ends = {"m_read": r2, "m_write": w1, "c_read": r1, "c_write": w2}
        extra = [r1, w2]
        own = [r2, w1]
    else:
        a, b = socket.socketpair()
        for s in (a, b):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        ends = {"m_read": a.fileno(), "m_write": a.fileno(), "c_read": b.fileno(), "c_write": b.fileno()}
        extra, own = [b], [a]
    pid = os.fork()
    if pid == 0:  # child: 'p' = ping (reply 1 byte); 'b' + 8-byte length = read that much, ack
        try:
            for fd in own:  # or the master's close would never reach us as EOF
                os.close(fd) if isinstance(fd, int) else fd.close()
            rd, wr = ends["c_read"], ends["c_write"]
            buf = bytearray(1 << 20)
            while True:
                head = os.read(rd, 1)
                if not head:
                    break
                if head == b"p":
                    os.write(wr, b"p")
                else:
                    need = int.from_bytes(_read_exact(rd, 8), "little")
                    view = memoryview(buf)
                    while need:
                        n = os.readv(rd, [view[:min(need, len(buf))]])
                        need -= n
                    os.write(wr, b"k")
        finally:
            os._exit(0)
    for fd in extra:
        if isinstance(fd, int):
            os.close(fd)
        else:
            fd.close()
    rd, wr = ends["m_read"], ends["m_write"]
    try:
        samples = []
        for _ in range(200 + rtts):
            t = time.perf_counter()
            os.write(wr, b"p")
            os.read(rd, 1)
            samples.append(time.perf_counter() - t)
        samples = sorted(samples[200:])
        data = memoryview(os.urandom(BIG))
        times = []
        for _ in range(5):
            t = time.perf_counter()
            os.write(wr, b"b" + BIG.to_bytes(8, "little"))
            sent = 0
            while sent < BIG:
                sent += os.write(wr, data[sent:sent + (1 << 20)])
            assert os.read(rd, 1) == b"k"
            times.append(time.perf_counter() - t)
        return {"peer": kind, "rtt_p50_us": percentile(samples, 0.5) * 1e6,
                "rtt_p99_us": percentile(samples, 0.99) * 1e6,
                "big_mib_s_each_way": 16 / statistics.median(times)}
    finally:
        for fd in own:
            if isinstance(fd, int):
                os.close(fd)
            else:
                fd.close()
        os.waitpid(pid, 0)


def _read_exact(fd: int, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = os.read(fd, n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


# -- driver ---------------------------------------------------------------------------------------------

#: (key, label, unit, higher is better)
METRICS = [
    ("tiny_per_s", "tiny tasks/s (20,000 x f(x)=x+1)", "/s", True),
    ("submit_stall_ms", "longest hub stall while submitting 20,000", "ms", False),
    ("rtt_p50_us", "sequential round trip p50", "us", False),
    ("rtt_p99_us", "sequential round trip p99", "us", False),
    ("rtt_cpu_us", "  caller's CPU per round trip", "us", False),
    ("rtt_worker_cpu_us", "  workers' CPU per round trip", "us", False),
    ("idle_worker_cpu_pct", "  workers' CPU while idle (0.5 s)", "%", False),
    ("big_mib_s_each_way", "16 MiB bytes, each way", "MiB/s", True),
    ("cpu_wall_s", "8 CPU tasks (~0.25 s each), wall", "s", False),
    ("cpu_speedup", "CPU speedup vs one after another", "x", True),
    ("busy_lateness_p99_ms", "hub timer lateness p99 while busy", "ms", False),
    ("idle_lateness_p99_ms", "(same, idle hub: the floor)", "ms", False),
]


def run_peer(peer: str, args: argparse.Namespace, spin_n: int) -> Dict[str, Any]:
    cmd = [sys.executable, "-m", "benchmarks.pool", "--run", peer, "--tiny", str(args.tiny),
           "--rtts", str(args.rtts), "--spin", str(spin_n)]
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=RUN_LIMIT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the group this script started for this peer
        proc.communicate()
        return {"peer": peer, "error": f"over the {RUN_LIMIT:.0f} s limit; killed"}
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # leftovers of that group (orphaned workers)
        except ProcessLookupError:
            pass
    if proc.returncode != 0:
        return {"peer": peer, "error": f"exit {proc.returncode}: {err.strip()[-500:]}"}
    return json.loads(out.strip().splitlines()[-1])


def summarize(runs: List[Dict[str, Any]], peers: List[str]) -> Dict[str, Dict[str, float]]:
    medians: Dict[str, Dict[str, float]] = {}
    for peer in peers:
        ok = [r for r in runs if r["peer"] == peer and "error" not in r]
        medians[peer] = {key: statistics.median(r[key] for r in ok)
                         for key, *_ in METRICS if ok and all(key in r for r in ok)}
    return medians


def print_table(medians: Dict[str, Dict[str, float]], peers: List[str]) -> None:
    ours = medians.get("ours", {})
    width = max(len(label) for _, label, _, _ in METRICS)
    print(f"{'':{width}}  " + "".join(f"{p:>12}" for p in peers))
    for key, label, unit, higher in METRICS:
        cells = []
        for peer in peers:
            value = medians.get(peer, {}).get(key)
            cells.append(f"{_fmt(value):>12}" if value is not None else f"{'-':>12}")
        print(f"{label:{width}}  " + "".join(cells) + f"  {unit}")
        ratios = []
        for peer in peers:
            value, mine = medians.get(peer, {}).get(key), ours.get(key)
            if peer == "ours" or value is None or mine is None or not value or not mine:
                ratios.append(f"{'':>12}")
            else:
                ratio = mine / value if higher else value / mine
                ratios.append(f"{ratio:>11.2f}x")
        if any(r.strip() for r in ratios) and not key.startswith("idle"):
            print(f"{'  ours better by':{width}}  " + "".join(ratios))
    raw = medians.get("socketpair", {}).get("rtt_p50_us")
    mine = ours.get("rtt_p50_us")
    if raw and mine:
        print(f"round trip p50, ours / raw socketpair ping-pong in this run: {mine / raw:.2f}x "
              f"({mine:.1f} / {raw:.1f} us; target <= 2x)")


def _fmt(value: float) -> str:
    if value >= 1000:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def plot(medians: Dict[str, Dict[str, float]], peers: List[str], path: str, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    shown = [m for m in METRICS if m[0] != "idle_lateness_p99_ms"]
    fig, axes = plt.subplots(2, 4, figsize=(16, 7.5))
    colors = {"ours": "#d62728", "mp_pool": "#1f77b4", "ppe": "#2ca02c", "threadpool": "#9467bd",
              "pipe": "#7f7f7f", "socketpair": "#bcbd22"}
    for ax, (key, label, unit, higher) in zip(axes.flat, shown):
        names = [p for p in peers if key in medians.get(p, {})]
        values = [medians[p][key] for p in names]
        bars = ax.bar(names, values, color=[colors.get(n, "#333") for n in names])
        ax.set_title(f"{label}\n({'higher' if higher else 'lower'} is better)", fontsize=9)
        ax.set_ylabel(unit)
        if values and min(values) > 0 and max(values) / min(values) > 30:
            ax.set_yscale("log")
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
        for name, bar, value in zip(names, bars, values):
            label = _fmt(value)
            if key == "big_mib_s_each_way" and name == "threadpool":
                label += "\n(same process: no copy)"
            ax.annotate(label, (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize=7)
        if key == "busy_lateness_p99_ms" and "ours" in medians:
            floor = medians["ours"].get("idle_lateness_p99_ms")
            if floor:
                ax.axhline(floor, color="k", linestyle=":", linewidth=1)
                ax.annotate("idle-hub floor", (0, floor), fontsize=7, va="bottom")
    for ax in list(axes.flat)[len(shown):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per peer (medians are reported)")
    parser.add_argument("--quick", action="store_true", help="2,000 tiny tasks, 200 round trips, 1 run")
    parser.add_argument("--peers", default=",".join(POOLS + CEILINGS))
    parser.add_argument("--json", default=os.path.join(HERE, "results", "pool.json"))
    parser.add_argument("--plot", default=os.path.join(HERE, "results", "pool.png"))
    parser.add_argument("--tiny", type=int, default=20_000)
    parser.add_argument("--rtts", type=int, default=2_000)
    parser.add_argument("--cpu-seconds", type=float, default=0.25,
                        help="length of each of the 8 CPU tasks (default: %(default)s)")
    parser.add_argument("--from-json", help="print and plot the results saved in this file; run nothing")
    parser.add_argument("--run", help=argparse.SUPPRESS)      # one peer, in this process
    parser.add_argument("--spin", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run:
        if args.run in CEILINGS:
            result = measure_raw(args.run, args.rtts)
        else:
            result = measure_pool(args.run, args.tiny, args.rtts, args.spin)
        print(json.dumps(result))
        return 0
    if args.from_json:
        with open(args.from_json) as fh:
            saved = json.load(fh)
        peers = [p for p in POOLS + CEILINGS if p in saved["medians"]]
        print_table(saved["medians"], peers)
        if args.plot:
            plot(saved["medians"], peers, args.plot, _title(saved["meta"]))
        return 0
    if args.quick:
        args.repeat, args.tiny, args.rtts = 1, 2_000, 200
    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    for peer in peers:
        if peer not in POOLS + CEILINGS:
            parser.error(f"unknown peer {peer!r}; choose from {', '.join(POOLS + CEILINGS)}")
    load_before = os.getloadavg()
    spin_n = calibrate_spin(args.cpu_seconds)
    sequential = min(_timed(spin, spin_n) for _ in range(3)) * 8
    print(f"calibrated: spin({spin_n}) ~ {sequential / 8:.3f} s; 8 in a row {sequential:.2f} s")
    runs: List[Dict[str, Any]] = []
    for rep in range(args.repeat):
        for peer in peers:
            result = run_peer(peer, args, spin_n)
            runs.append(result)
            status = result.get("error") or ", ".join(
                f"{k}={_fmt(v)}" for k, v in result.items() if isinstance(v, float))
            print(f"[{rep + 1}/{args.repeat}] {peer}: {status}", flush=True)
    medians = summarize(runs, peers)
    print()
    print(f"medians of {args.repeat} run(s), {SIZE} workers each; "
          f"load average before: {load_before[0]:.2f}, after: {os.getloadavg()[0]:.2f}")
    print_table(medians, peers)
    import gevent
    meta = {"loadavg_before": load_before, "python": platform.python_version(), "gevent": gevent.__version__,
            "machine": platform.machine(), "cpus": os.cpu_count(),
            "loadavg": os.getloadavg(), "repeat": args.repeat, "tiny": args.tiny,
            "rtts": args.rtts, "spin_n": spin_n, "sequential_cpu_s": sequential}
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as fh:
            json.dump({"meta": meta, "medians": medians, "runs": runs}, fh, indent=1)
    if args.plot:
        plot(medians, peers, args.plot, _title(meta))
        print(f"plot saved to {os.path.relpath(args.plot, ROOT)}")
    return 1 if any("error" in r for r in runs) else 0


def _title(meta: Dict[str, Any]) -> str:
    load = meta.get("loadavg_before", meta["loadavg"])[0]
    return (f"Pools with {SIZE} workers, Python {meta['python']}, gevent {meta['gevent']}, "
            f"{meta['cpus']} CPUs (shared machine, load average {load:.1f}); "
            f"medians of {meta['repeat']} run(s)")


def _timed(fn: Callable[..., Any], *args: Any) -> float:
    t = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t


if __name__ == "__main__":
    sys.exit(main())
