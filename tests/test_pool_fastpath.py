"""The pool's fast path for a lone task, and the bounds on its spins (real processes)."""
import os
import time

import gevent

from packet_gevent import ForkPool
from tests.conftest import assert_gone


def inc(x):
    return x + 1


def cpu_seconds(pid):
    """User + system CPU seconds of ``pid`` so far (Linux /proc, clock ticks)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_lone_task_for_an_idle_process_leaves_inside_submit_and_the_rest_queue():
    with ForkPool(2) as pool:
        assert pool.submit(inc, 0).result(timeout=10) == 1  # both processes started
        futures = [pool.submit(inc, i) for i in range(10)]  # no yield to the hub in between
        stats = pool.statistics()
        # One task went to each idle process at once; the others wait for the
        # loop turn's batch, as before.
        assert (stats["in_flight"], stats["queued"]) == (2, 8), stats
        assert [f.result(timeout=10) for f in futures] == list(range(1, 11))
        pids = pool.pids()
    assert_gone(pids)


def test_after_sequential_round_trips_an_idle_pool_uses_no_cpu():
    with ForkPool(2) as pool:
        for i in range(300):  # the fast path, and both spins, every time
            assert pool.apply(inc, (i,)) == i + 1
        pids = pool.pids()
        gevent.sleep(0.05)  # past both spins' bound (100 us each)
        master0, children0 = time.process_time(), sum(cpu_seconds(pid) for pid in pids)
        gevent.sleep(0.5)
        master = time.process_time() - master0
        children = sum(cpu_seconds(pid) for pid in pids) - children0
        # A spin that did not stop would use ~0.5 s here; an idle one rounds to 0-2 ticks.
        assert master < 0.1, f"the master used {master:.3f} s of CPU in 0.5 s idle"
        assert children < 0.1, f"the pool processes used {children:.3f} s of CPU in 0.5 s idle"
    assert_gone(pids)
