"""What users of a forking app rely on: no fork-under-threads warning from our fork, and
Ctrl-C / SIGTERM to the whole process group stop a worker app as gracefully as SIGTERM to
the master (every request in flight answered, children stopped by the master, exit 0)."""
import subprocess
import sys

import pytest

from tests.conftest import ROOT, run_script

FORK_AFTER_THREAD = """
    import os, warnings
    import gevent.socket
    from packet_gevent import ForkPool
    gevent.socket.getaddrinfo("127.0.0.1", 80)   # starts gevent's resolver/threadpool thread
    threads = len(os.listdir("/proc/self/task"))
    assert threads > 1, threads
    filters = list(warnings.filters)
    pool = ForkPool(1)
    print(pool.submit(abs, -3).result(timeout=20), threads)
    pool.shutdown(wait=True, timeout=10)
    assert warnings.filters == filters   # the user's filters are untouched
"""


@pytest.mark.parametrize("flag", ["default", "error::DeprecationWarning", "error"])
def test_forking_after_gevent_started_a_thread_does_not_warn(flag):
    result = subprocess.run([sys.executable, "-W", flag, "-c", __import__("textwrap").dedent(
        FORK_AFTER_THREAD)], cwd=ROOT, capture_output=True, text=True, timeout=60,
        env=dict(__import__("os").environ, PYTHONPATH=ROOT))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.split()[0] == "3"
    assert "multi-threaded" not in result.stderr and "DeprecationWarning" not in result.stderr, \
        result.stderr
