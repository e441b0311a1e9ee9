"""How many CPU threads torch should use for the small models haqa trains and scores.

On a machine whose cores are already busy, torch's default (one thread per core) makes its
threads wait on each other: a tiny model trained 10x slower with 2 threads than with 1 on a
loaded 2-core machine. So by default haqa takes only the cores that are idle right now.

"Right now" is a 0.2 s sample of ``/proc/stat``, not the 1-minute load average: the average still
counts haqa's own previous trial for a minute after it ended, so a fine-tune that followed an
evaluation took 1 thread of an idle 2-core machine and ran at half speed (SmolLM2, the demo).
"""

from __future__ import annotations

import os
import time


def _cpu_times() -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat (None where there is none)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already counted in user
    return total - idle, total


def busy_cores(sample_s: float = 0.2) -> float:
    """How many cores are busy, measured over ``sample_s`` (the load average where /proc/stat is
    missing)."""
    n = os.cpu_count() or 1
    before = _cpu_times()
    if before is None:
        try:
            return os.getloadavg()[0]
        except OSError:
            return 0.0
    time.sleep(sample_s)
    after = _cpu_times()
    if after is None or after[1] <= before[1]:
        return 0.0
    return n * (after[0] - before[0]) / (after[1] - before[1])


def free_cores() -> int:
    """Cores not busy right now (at least 1)."""
    n = os.cpu_count() or 1
    return max(1, min(n, n - int(busy_cores() + 0.5)))


def set_torch_threads(requested: int | None = None) -> int:
    """Set torch's intra-op threads to ``requested`` or to the free cores; returns the number."""
    import torch

    n = requested or free_cores()
    torch.set_num_threads(n)
    return n
