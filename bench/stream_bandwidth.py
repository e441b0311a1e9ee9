"""Print the probe's memory read bandwidth beside an independent STREAM-like read, and their ratio.

The reference is built to be bandwidth-bound on any CPU: a uint64 maximum (numpy's SIMD min/max
loop: one compare per 8 bytes, no dependency chain a core must wait on), with one thread per core
each reading its own slice, released together each round, median of the rounds as the probe.
It also prints the reference kernel's rate on a buffer that stays in L2: while that is well above
the all-core figure, the figure is the memory's, not the loop's. (A float32 ``sum`` was the
reference before: numpy's pairwise sum is an arithmetic loop that a core finishes at about
17 GB/s on a Xeon here, below what two Zen 5 cores read from memory.)

Usage: python bench/stream_bandwidth.py [GiB]
"""

from __future__ import annotations

import os
import statistics
import sys
import threading
import time
from typing import Any


def reference_kernel(chunk: Any) -> None:
    import numpy as np

    np.maximum.reduce(chunk.view(np.uint64))


def reference_in_cache_rate(n_bytes: int = 512 * 1024, seconds: float = 0.05) -> float:
    """One thread, a buffer that stays in L2: the reference kernel's own ceiling, bytes/s."""
    import numpy as np

    chunk = np.ones(n_bytes // 8, dtype=np.uint64)
    rounds, t0 = 0, time.perf_counter()
    while rounds < 20 or time.perf_counter() - t0 < seconds:
        reference_kernel(chunk)
        rounds += 1
    return chunk.nbytes * rounds / (time.perf_counter() - t0)


def reference_bandwidth(n_bytes: int, threads: int, seconds: float = 1.5) -> float:
    """Median all-core read rate of the reference kernel, bytes/s."""
    import numpy as np

    data = np.ones(n_bytes // 8, dtype=np.uint64)
    slices = np.array_split(data, threads)
    rates: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(rates) < 5 or time.perf_counter() < deadline:
        go = threading.Barrier(threads + 1)

        def read(chunk: Any, go: threading.Barrier = go) -> None:
            go.wait()
            reference_kernel(chunk)

        workers = [threading.Thread(target=read, args=(s,)) for s in slices]
        for w in workers:
            w.start()
        start = time.perf_counter()
        go.wait()
        for w in workers:
            w.join()
        rates.append(data.nbytes / (time.perf_counter() - start))
    return statistics.median(rates)


def main() -> None:
    from haqa.tools.probe_hardware import Args, probe_hardware

    size = int(float(sys.argv[1]) * 1024**3) if len(sys.argv) > 1 else 1024**3
    threads = os.cpu_count() or 1
    args = Args(use_cache=False, bandwidth_seconds=2.0, bandwidth_buffer_bytes=size)
    bandwidth = probe_hardware(args).bandwidth
    assert bandwidth is not None
    reference = reference_bandwidth(size, threads)
    in_cache = reference_in_cache_rate()
    print(f"probe:     {bandwidth.read_bytes_per_s / 1e9:6.1f} GB/s ({bandwidth.method})")
    if bandwidth.best_read_bytes_per_s and bandwidth.in_cache_bytes_per_s:
        print(
            f"           best round {bandwidth.best_read_bytes_per_s / 1e9:.1f} GB/s, spread "
            f"{bandwidth.spread:.2f}; its kernel in L2: "
            f"{bandwidth.in_cache_bytes_per_s / 1e9:.1f} GB/s per thread"
        )
    print(f"reference: {reference / 1e9:6.1f} GB/s (uint64 max, {threads} threads, median)")
    print(f"           its kernel in L2: {in_cache / 1e9:.1f} GB/s per thread")
    print(f"ratio:     {bandwidth.read_bytes_per_s / reference:.2f}")


if __name__ == "__main__":
    main()
