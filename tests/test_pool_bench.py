"""Smoke run of benchmarks/pool.py: every peer kind runs, the table and JSON come out; the PNG
plot (matplotlib, the ``bench`` extra) is checked when matplotlib is installed."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

BENCH_ENV = dict(os.environ, PYTHONPATH=ROOT)


def test_pool_benchmark_quick_run(tmp_path):
    out_json = tmp_path / "pool.json"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.pool", "--repeat", "1", "--tiny", "300", "--rtts", "30",
         "--cpu-seconds", "0.01", "--peers", "ours,threadpool,socketpair",
         "--json", str(out_json), "--plot", ""],
        cwd=ROOT, env=BENCH_ENV, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "tiny tasks/s" in result.stdout and "ours better by" in result.stdout
    data = json.loads(out_json.read_text())
    ours = data["medians"]["ours"]
    for key in ("tiny_per_s", "submit_stall_ms", "rtt_p50_us", "big_mib_s_each_way", "cpu_speedup",
                "busy_lateness_p99_ms"):
        assert ours[key] > 0, key
    assert data["medians"]["socketpair"]["rtt_p50_us"] > 0


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None,
                    reason="matplotlib is not installed: the plot needs the bench extra "
                           "(pip install -e '.[bench]')")
def test_pool_benchmark_plots_saved_results(tmp_path):
    out_png = tmp_path / "pool.png"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.pool", "--from-json",
         os.path.join(ROOT, "benchmarks", "results", "pool.json"), "--plot", str(out_png)],
        cwd=ROOT, env=BENCH_ENV, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ours better by" in result.stdout
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
