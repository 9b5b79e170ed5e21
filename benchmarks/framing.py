"""Frame decoder benchmark (sans-IO: no sockets, no processes).

Usage: ``python -m benchmarks.framing``.  Prints 1,000,000 tiny frames fed in
64 KiB chunks (frames/s), the first 16 MiB frame of the process, 8 x 16 MiB
in a row, and 8 x 16 MiB through ``payload_buffer_remaining``/``commit``.
The figures quoted in :mod:`packet_gevent.framing` come from this script.
"""
from __future__ import annotations

import time
from typing import List

from packet_gevent.framing import FrameDecoder, encode_frame


def main() -> None:
    """Print decoder throughput."""

    def run(chunks: List[bytes]) -> float:
        dec = FrameDecoder()
        t0 = time.perf_counter()
        for chunk in chunks:
            dec.feed(chunk)
        return time.perf_counter() - t0

    tiny = encode_frame(b"0123456789") * 1_000_000
    chunks = [tiny[i:i + 65536] for i in range(0, len(tiny), 65536)]
    best = min(run(chunks) for _ in range(3))
    print(f"1M tiny frames, 64 KiB chunks: {best:.3f} s = {1e6 / best / 1e6:.2f} M frames/s")
    size = 16 << 20
    big = encode_frame(bytes(size)) * 8
    chunks = [big[i:i + 65536] for i in range(0, len(big), 65536)]
    one = chunks[:len(chunks) // 8 + 1]
    cold = run(one)  # first 16 MiB frame: fresh memory, page faults dominate
    warm = run(chunks)  # 8 frames in a row: malloc reuses freed buffers
    print(f"first 16 MiB frame, 64 KiB chunks: {cold * 1e3:.1f} ms = {size / cold / 1e9:.2f} GB/s")
    print(f"8 x 16 MiB frames, 64 KiB chunks: {warm * 1e3:.1f} ms = {8 * size / warm / 1e9:.2f} GB/s")
    dec = FrameDecoder()
    bigview = memoryview(big)
    t0 = time.perf_counter()
    pos, done = 0, 0
    while done < 8:
        view = dec.payload_buffer_remaining()
        if view is None:
            frames = dec.feed(bigview[pos:pos + 65536])
            pos += min(65536, len(big) - pos)
        else:
            k = min(len(view), 65536)
            view[:k] = bigview[pos:pos + k]
            pos += k
            frames = dec.commit(k)
        done += len(frames)
    t = time.perf_counter() - t0
    print(f"8 x 16 MiB via payload_buffer_remaining/commit: {t * 1e3:.1f} ms = "
          f"{8 * size / t / 1e9:.2f} GB/s")


if __name__ == "__main__":
    main()
