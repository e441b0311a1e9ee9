"""Print the probe's memory read bandwidth beside an independent STREAM-like read (numpy sum in
one thread per core), and their ratio. Usage: python bench/stream_bandwidth.py [GiB]"""

from __future__ import annotations

import os
import sys
import threading
import time


def numpy_sum_bandwidth(n_bytes: int, threads: int, seconds: float = 2.0) -> float:
    import numpy as np

    data = np.ones(n_bytes // 4, dtype=np.float32)
    slices = np.array_split(data, threads)
    best = float("inf")
    deadline = time.perf_counter() + seconds
    while best == float("inf") or time.perf_counter() < deadline:
        workers = [threading.Thread(target=np.sum, args=(s,)) for s in slices]
        start = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        best = min(best, time.perf_counter() - start)
    return n_bytes / best


def main() -> None:
    from haqa.tools.probe_hardware import Args, probe_hardware

    size = int(float(sys.argv[1]) * 1024**3) if len(sys.argv) > 1 else 1024**3
    threads = os.cpu_count() or 1
    args = Args(use_cache=False, bandwidth_seconds=2.0, bandwidth_buffer_bytes=size)
    bandwidth = probe_hardware(args).bandwidth
    assert bandwidth is not None
    reference = numpy_sum_bandwidth(size, threads)
    print(f"probe:     {bandwidth.read_bytes_per_s / 1e9:6.1f} GB/s ({bandwidth.method})")
    print(f"numpy sum: {reference / 1e9:6.1f} GB/s ({threads} threads, {size / 2**20:.0f} MiB)")
    print(f"ratio:     {bandwidth.read_bytes_per_s / reference:.2f}")


if __name__ == "__main__":
    main()
