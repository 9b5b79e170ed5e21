"""Smoke runs of ``python -m demos.threadpool_swap`` (gevent ThreadPool vs ForkPool in pywsgi)."""
import os
import re
import signal
import subprocess
import sys
import urllib.request

from tests.conftest import ROOT
from tests.test_demos import start_demo

LINE = re.compile(r"^\s*(thread|fork) pool: heavy\s+([\d.]+) req/s \| light p50\s+([\d.]+) ms"
                  r"\s+p99\s+([\d.]+) ms \((\d+) light requests\)", re.M)


def test_both_pools_short_run_prints_latency_and_throughput():
    result = subprocess.run(
        [sys.executable, "-m", "demos.threadpool_swap", "--pool", "both", "--seconds", "1",
         "--work-ms", "5", "--heavy-clients", "2"],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    rows = {m.group(1): [float(x) for x in m.groups()[1:]] for m in LINE.finditer(result.stdout)}
    assert set(rows) == {"thread", "fork"}, result.stdout
    for heavy, p50, p99, light in rows.values():
        assert heavy > 0 and light > 0 and 0 < p50 <= p99
    # The hub stays free with processes (generous: a shared 2-core machine).
    assert rows["fork"][2] < 50, result.stdout
    assert "fork vs thread" in result.stdout


def test_serve_mode_answers_heavy_and_light():
    proc, host, port = start_demo("demos.threadpool_swap", "--serve", "--pool", "fork", "--work-ms", "1")
    try:
        for path, check in (("/light", lambda b: b == b"ok\n"), ("/heavy", lambda b: b.strip().isdigit())):
            with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=20) as response:
                assert check(response.read())
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
        proc.stdout.close()
        proc.stderr.close()
