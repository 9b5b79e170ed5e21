"""benchmarks/http.py: reading wrk's output, and what it does without wrk."""
from benchmarks import http as bench

WRK_OUTPUT = """Running 5s test @ http://127.0.0.1:8000/
  1 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.10ms    2.00ms  40.00ms   95.00%
    Req/Sec    45.00k     3.00k   50.00k    70.00%
  Latency Distribution
     50%  740.00us
     75%    1.00ms
     90%    2.00ms
     99%   37.85ms
  224000 requests in 5.00s, 30.00MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:  44800.12
Transfer/sec:      6.00MB
"""


def test_parse_wrk_reads_rate_latencies_and_errors():
    result = bench.parse_wrk(WRK_OUTPUT)
    assert result["rps"] == 44800.12
    assert abs(result["p50"] - 0.74) < 1e-9 and result["p99"] == 37.85
    assert result["errors"] == 7 and result["requests"] == 224000


def test_without_wrk_it_says_how_to_install_it(monkeypatch, capsys):
    monkeypatch.setattr(bench.shutil, "which", lambda name: None)
    assert bench.main(["--duration", "1"]) == 0
    assert "apt-get install -y wrk" in capsys.readouterr().out


def test_tables_format_medians_and_ratios():
    runs = {"a": [{"rps": 100.0, "p50": 1.0, "p99": 2.0, "errors": 0},
                  {"rps": 300.0, "p50": 3.0, "p99": 4.0, "errors": 1}],
            "b": [{"rps": 100.0, "p50": 1.0, "p99": 2.0, "errors": 0}]}
    summary = bench.summarize(runs)
    assert summary["a"]["rps"] == 200.0 and summary["a"]["errors"] == 1
    text = bench.table("t", summary, "b")
    assert "| a | 200 | 2.00 | 3.00 | - | 1 | 2.00x |" in text
