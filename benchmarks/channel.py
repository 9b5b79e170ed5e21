"""Channel benchmark: master Channel (in its hub) to a child BlockingChannel that echoes.

Usage: ``python -m benchmarks.channel``.  Prints the round trip of one int
(p50, p99 of 20,000), tiny messages echoed in batches of 500 (msg/s),
16 MiB ``bytes`` and ``bytearray`` each way (first, median and best of 8,
MiB/s) and spawn + first round trip + exit.  The figures quoted in
:mod:`packet_gevent.ipc.channel` come from this script.
"""
from __future__ import annotations

import time
from typing import Any

from packet_gevent.ipc.blocking import BlockingChannel
from packet_gevent.ipc.channel import Channel
from packet_gevent.ipc.process import spawn_child


def _echo_child(sock: Any) -> int:
    channel = BlockingChannel(sock)
    while True:
        try:
            batch = channel.recv_batch()
        except EOFError:
            return 0
        channel.send_many(batch)


def main() -> None:
    """Print latency and throughput."""
    child = spawn_child(_echo_child, name="echo")
    channel = Channel(child.sock)
    for _ in range(2000):  # warm up
        channel.send(1)
        channel.recv()
    samples = []
    for i in range(20000):
        t0 = time.perf_counter()
        channel.send(i)
        channel.recv()
        samples.append(time.perf_counter() - t0)
    samples.sort()
    print(f"round trip (int), p50 {samples[len(samples) // 2] * 1e6:.1f} us, "
          f"p99 {samples[len(samples) * 99 // 100] * 1e6:.1f} us")
    n, batch = 200_000, 500
    msg = ("task", 12345, (1, 2.5, "abc"))
    t0 = time.perf_counter()
    for start in range(0, n, batch):
        channel.send_many([msg] * batch)
        for _ in range(batch):
            channel.recv()
    took = time.perf_counter() - t0
    print(f"tiny messages echoed in batches of {batch}: {n / took:,.0f} msg/s")
    for blob in (bytes(16 << 20), bytearray(16 << 20)):
        times = []
        for _ in range(8):
            t0 = time.perf_counter()
            channel.send(blob)
            back = channel.recv()
            times.append(time.perf_counter() - t0)
            assert len(back) == len(blob) and type(back) is type(blob)
        first, times = times[0], sorted(times)
        print(f"16 MiB {type(blob).__name__} each way: first {32 / first:,.0f} MiB/s, "
              f"median {32 / times[4]:,.0f} MiB/s, best {32 / times[0]:,.0f} MiB/s")
    t0 = time.perf_counter()
    for _ in range(20):
        other = spawn_child(_echo_child)
        other_channel = Channel(other.sock)
        other_channel.send(1)
        other_channel.recv()
        other_channel.close()
        other.wait()
    print(f"spawn + first round trip + exit: {(time.perf_counter() - t0) / 20 * 1e3:.1f} ms")
    channel.close()
    child.wait(5)


if __name__ == "__main__":
    main()
