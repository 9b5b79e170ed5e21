"""Smoke test of the echo benchmark: the C load client, a peer server, the summary maths."""
import socket
import threading

import pytest

from benchmarks import echo
from benchmarks.echo import SERVERS, ServerProcess, Shape


def test_c_client_completes_round_trips_against_bare_gevent_server(tmp_path):
    binary = echo.build_client(build_dir=str(tmp_path))  # fails with a clear message if cc is missing
    server = ServerProcess(SERVERS["gevent"])
    try:
        server.start()
        run = echo.measure(server, binary, Shape(5, 20), time_limit=20.0)
    finally:
        status = server.stop()
    assert run["errors"] == 0, run["first_error"]
    assert not run["timed_out"]
    assert run["round_trips"] == run["expected"] == 100
    assert run["completed_clients"] == 5
    assert 0 < run["p50_us"] <= run["p99_us"] <= run["max_us"]
    assert run["rt_per_s"] > 0 and run["cpu_us_per_rt"] >= 0
    assert status == 0, f"gevent peer did not exit cleanly on SIGTERM; output:\n{server.tail()}"


def _wrong_echo_server(listener: socket.socket, connections: int) -> None:
    """Answer each connection's first message with different bytes of the same length."""
    for _ in range(connections):
        conn, _ = listener.accept()
        with conn:
            data = conn.recv(64)
            conn.sendall(data[:-1] + b"!")


def test_c_client_counts_a_wrong_echo_as_an_error(tmp_path):
    binary = echo.build_client(build_dir=str(tmp_path))
    with socket.socket() as listener:
        listener.settimeout(20.0)  # bounds the thread if the client never connects
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        thread = threading.Thread(target=_wrong_echo_server, args=(listener, 2), daemon=True)
        thread.start()
        report = echo.run_client(binary, listener.getsockname()[1], Shape(2, 3), time_limit=20.0)
        thread.join(20.0)
    assert report["errors"] == 2
    assert report["round_trips"] == 0 and report["completed_clients"] == 0
    assert "differ" in report["first_error"]


def test_summary_takes_medians_and_ratios_against_the_baseline():
    def run(server, rps, cpu):
        return {"server": server, "shape": "5x20", "rt_per_s": rps, "p50_us": 100.0, "p99_us": 200.0,
                "cpu_us_per_rt": cpu, "errors": 0, "round_trips": 100, "expected": 100}

    runs = [run("gevent", r, 20.0) for r in (10.0, 30.0, 20.0)] + [run("ours", r, 10.0) for r in (50.0, 40.0, 60.0)]
    summary = echo.summarize(runs)
    assert summary["5x20"]["gevent"]["rt_per_s"] == 20.0
    assert summary["5x20"]["ours"]["runs"] == 3
    table = echo.ratios(summary, [("ours", "gevent"), ("ours", "asyncio")])
    assert table == {"ours/gevent": {"5x20": {"rt_per_s": 2.5, "p50_us": 1.0, "p99_us": 1.0, "cpu_us_per_rt": 0.5}}}
    assert "ours/gevent" in echo.format_table(summary, table, repeat=3)


def test_parse_shapes_rejects_nonsense():
    assert echo.parse_shapes("500x100, 50X2000") == [Shape(500, 100), Shape(50, 2000)]
    for bad in ("500", "0x5", "ax1"):
        with pytest.raises(echo.BenchError, match="CLIENTSxROUNDS"):
            echo.parse_shapes(bad)
