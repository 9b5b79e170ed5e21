"""A short run of benchmarks/soak.py: mixed load with worker kills loses no request."""
import json
import subprocess
import sys

from tests.conftest import ROOT


def test_short_soak_with_kills_loses_nothing(tmp_path):
    out = tmp_path / "soak.json"
    result = subprocess.run([sys.executable, "-m", "benchmarks.soak", "--duration", "4", "--clients", "3",
                             "--kill-every", "0.7", "--json", str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=90)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(out.read_text())
    assert report["lost"] == 0
    assert report["kills"] >= 3
    assert report["sent"] == report["answered"] + report["errors"]
    assert all(row["answered"] > 0 for row in report["by_service"].values())
    assert report["server_exit_status"] == 0
