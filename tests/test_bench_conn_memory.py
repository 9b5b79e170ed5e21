"""Smoke test of the memory-per-connection and instruction-count benchmarks."""
import os

import pytest

from benchmarks import conn_memory, echo_instructions
from benchmarks._servers.process import BenchError


def test_conn_memory_measures_rss_growth_of_our_server_and_stops_it():
    run = conn_memory.measure("ours", 100)
    assert run["connections"] == 100
    assert run["rss_after_kib"] >= run["rss_before_kib"] > 0
    assert run["kib_per_connection"] == (run["rss_after_kib"] - run["rss_before_kib"]) / 100
    assert run["exit_status"] == 0  # stopped by SIGTERM, cleanly, after every client closed


def test_rss_of_this_process_is_read_from_proc():
    assert conn_memory.rss_kib(os.getpid()) > 1000


def test_instruction_shapes_parse_and_reject_nonsense():
    assert echo_instructions.parse_shapes("500x20:100, 50x200:1000") == [(500, 20, 100), (50, 200, 1000)]
    for bad in ("500x100", "5x10:10", "5x0:3"):
        with pytest.raises(BenchError, match="CLIENTSxSHORT:LONG"):
            echo_instructions.parse_shapes(bad)
