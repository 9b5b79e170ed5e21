"""RemotePool benchmark: packet_gevent.RemotePool against Dask's own client, same cluster, same run.

One local cluster (``dask scheduler`` + 2 single-threaded ``dask worker``
processes on 127.0.0.1) serves every peer; each peer runs in a fresh
interpreter of its own, interleaved, ``--repeat`` times:

* ``ours``          packet_gevent.RemotePool(address): submit / Future.result, map
* ``dask_threads``  distributed.Client(address) (synchronous) used from a
                    gevent.threadpool.ThreadPool, the way a gevent program
                    would call Dask without RemotePool: ``client.map`` +
                    ``client.gather`` (Dask's batch API) for the batch,
                    ``client.submit(...).result()`` for round trips.

Measurements:

* tiny: ``--tasks`` calls of ``f(x) = x + 1`` submitted at once, then every
  result: tasks/s; meanwhile a greenlet sleeping to a 5 ms grid records how
  late it wakes (hub lateness, p99);
* rtt: 100 sequential round trips (submit one, wait for it), p50 / p99;
* crossover (one more interpreter, ours only): batches of pure-Python CPU
  tasks of 0.1 ... 100 ms on ``ForkPool(2)`` and on ``RemotePool`` (2
  workers), wall time each; efficiency = ForkPool's wall / RemotePool's.
  The crossover is the smallest task size with efficiency >= 0.9.

Usage: ``python -m benchmarks.remote [--repeat N] [--quick] [--json PATH]``.
Prints medians with ratios (ours / peer for "higher is better", peer / ours
for "lower is better": > 1 means ours is better).  Every child process is
started in its own process group and killed by that group's id if it
overruns its time limit; the cluster is stopped at the end.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from typing import Any, Dict, List

from demos.threadpool_swap import burn, iterations_for  # the demos' CPU work

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PEERS = ("ours", "dask_threads")
SIZES_MS = (0.1, 1.0, 3.0, 10.0, 30.0, 100.0)


def inc(x: int) -> int:
    return x + 1


def percentile(values: List[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


# -- in a peer's interpreter -----------------------------------------------------------------------

class Lateness:
    """A greenlet sleeping to a 5 ms grid, recording how late it wakes."""

    def __init__(self) -> None:
        import gevent
        self.values: List[float] = []
        self._stop = False
        self._greenlet = gevent.spawn(self._run)

    def _run(self) -> None:
        import gevent
        while not self._stop:
            started = time.perf_counter()
            gevent.sleep(0.005)
            self.values.append(time.perf_counter() - started - 0.005)

    def stop(self) -> float:
        self._stop = True
        self._greenlet.join(1)
        return percentile(self.values, 0.99) if self.values else float("nan")


def peer_ours(address: str, tasks: int) -> Dict[str, float]:
    from packet_gevent import RemotePool
    with RemotePool(address, min_workers=2) as pool:
        assert list(pool.map(inc, range(20))) == list(range(1, 21))  # warm-up
        late = Lateness()
        started = time.perf_counter()
        results = list(pool.map(inc, range(tasks)))
        wall = time.perf_counter() - started
        p99_late = late.stop()
        assert results == list(range(1, tasks + 1))
        rtts = []
        for i in range(100):
            started = time.perf_counter()
            pool.submit(inc, i).result(timeout=30)
            rtts.append(time.perf_counter() - started)
    return {"tasks_per_s": tasks / wall, "hub_p99_late_ms": p99_late * 1000,
            "rtt_p50_ms": statistics.median(rtts) * 1000, "rtt_p99_ms": percentile(rtts, 0.99) * 1000}


def peer_dask_threads(address: str, tasks: int) -> Dict[str, float]:
    import distributed
    import gevent.threadpool
    threads = gevent.threadpool.ThreadPool(4)
    client = threads.spawn(distributed.Client, address, set_as_default=False).get()
    try:
        threads.spawn(client.wait_for_workers, 2, timeout=30).get()
        assert threads.spawn(lambda: client.gather(client.map(inc, range(20), pure=False))).get() \
            == list(range(1, 21))
        late = Lateness()
        started = time.perf_counter()
        results = threads.spawn(lambda: client.gather(client.map(inc, range(tasks), pure=False))).get()
        wall = time.perf_counter() - started
        p99_late = late.stop()
        assert results == list(range(1, tasks + 1))
        rtts = []
        for i in range(100):
            started = time.perf_counter()
            threads.spawn(lambda: client.submit(inc, i, pure=False).result(timeout=30)).get()
            rtts.append(time.perf_counter() - started)
    finally:
        threads.spawn(client.close).get()
        threads.kill()
    return {"tasks_per_s": tasks / wall, "hub_p99_late_ms": p99_late * 1000,
            "rtt_p50_ms": statistics.median(rtts) * 1000, "rtt_p99_ms": percentile(rtts, 0.99) * 1000}


def peer_crossover(address: str, quick: bool) -> Dict[str, Any]:
    from packet_gevent import ForkPool, RemotePool
    budget = 1.0 if quick else 2.0   # seconds of CPU per batch (2 workers)
    rows = []
    with ForkPool(2) as fork, RemotePool(address, min_workers=2) as remote:
        fork.submit(inc, 1).result(10)
        remote.submit(inc, 1).result(10)
        for ms in SIZES_MS:
            iterations = iterations_for(ms)
            count = max(8, min(400, int(budget * 2 * 1000 / ms)))
            walls = {}
            for name, pool in (("fork", fork), ("remote", remote)):
                started = time.perf_counter()
                list(pool.map(burn, [iterations] * count))
                walls[name] = time.perf_counter() - started
            rows.append({"task_ms": ms, "tasks": count, "fork_s": walls["fork"],
                         "remote_s": walls["remote"], "efficiency": walls["fork"] / walls["remote"]})
    return {"rows": rows}


def run_peer(argv: List[str]) -> None:
    name, address, tasks, quick = argv[0], argv[1], int(argv[2]), argv[3] == "1"
    if name == "ours":
        out = peer_ours(address, tasks)
    elif name == "dask_threads":
        out = peer_dask_threads(address, tasks)
    else:
        out = peer_crossover(address, quick)
    print("RESULT " + json.dumps(out), flush=True)


# -- the driver ------------------------------------------------------------------------------------

def spawn_peer(name: str, address: str, tasks: int, quick: bool, limit: float) -> Dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.remote", "--peer", name, address,
                             str(tasks), "1" if quick else "0"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise RuntimeError(f"peer {name} overran {limit} s")
    for line in out.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"peer {name} failed (exit {proc.returncode}): {err[-2000:]}")


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--peer":
        run_peer(sys.argv[2:])
        return 0
    p = argparse.ArgumentParser(description="RemotePool vs Dask's own client")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--tasks", type=int, default=2000)
    p.add_argument("--quick", action="store_true", help="1 repeat, 500 tasks, shorter batches")
    p.add_argument("--json", default=os.path.join(HERE, "results", "remote.json"))
    args = p.parse_args()
    if args.quick:
        args.repeat, args.tasks = 1, 500
    from packet_gevent.pool.dask_cluster import LocalDaskCluster
    cluster = LocalDaskCluster(2)
    address = cluster.start()
    results: Dict[str, List[Dict[str, float]]] = {peer: [] for peer in PEERS}
    try:
        for _ in range(args.repeat):
            for peer in PEERS:
                results[peer].append(spawn_peer(peer, address, args.tasks, args.quick, 120))
        crossover = spawn_peer("crossover", address, 0, args.quick, 300)
    finally:
        cluster.stop()
    load = open("/proc/loadavg").read().split()[:3]
    medians = {peer: {key: statistics.median(run[key] for run in runs) for key in runs[0]}
               for peer, runs in results.items()}
    print(f"RemotePool vs Dask's client from a thread pool; 2 workers; {args.repeat} runs; "
          f"{args.tasks} tiny tasks; load average {' '.join(load)} (shared machine)")
    print(f"{'':22}{'ours':>10}{'dask_threads':>14}{'ratio':>8}")
    for key, higher_better in (("tasks_per_s", True), ("rtt_p50_ms", False), ("rtt_p99_ms", False),
                               ("hub_p99_late_ms", False)):
        ours, theirs = medians["ours"][key], medians["dask_threads"][key]
        ratio = ours / theirs if higher_better else theirs / ours
        print(f"{key:22}{ours:10.2f}{theirs:14.2f}{ratio:8.2f}")
    print("\ncrossover: ForkPool(2) vs RemotePool (2 workers), same machine")
    print(f"{'task ms':>8}{'tasks':>7}{'fork s':>9}{'remote s':>10}{'efficiency':>12}")
    for row in crossover["rows"]:
        print(f"{row['task_ms']:8g}{row['tasks']:7d}{row['fork_s']:9.3f}{row['remote_s']:10.3f}"
              f"{row['efficiency']:12.2f}")
    cross = next((row["task_ms"] for row in crossover["rows"] if row["efficiency"] >= 0.9), None)
    print(f"crossover (efficiency >= 0.9): {cross} ms" if cross else "no crossover up to 100 ms")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"load_average": load, "repeat": args.repeat, "tasks": args.tasks,
                       "runs": results, "medians": medians, "crossover": crossover,
                       "crossover_ms": cross}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
