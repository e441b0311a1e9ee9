"""How many CPU threads torch should use for the small models haqa trains and scores.

On a machine whose cores are already busy, torch's default (one thread per core) makes its
threads wait on each other: a tiny model trained 10x slower with 2 threads than with 1 on a
loaded 2-core machine. So by default haqa takes only the cores that are idle right now.
"""

from __future__ import annotations

import os


def free_cores() -> int:
    """Cores not busy by the 1-minute load average (at least 1)."""
    n = os.cpu_count() or 1
    try:
        busy = os.getloadavg()[0]
    except OSError:
        return n
    return max(1, min(n, n - int(busy + 0.5)))


def set_torch_threads(requested: int | None = None) -> int:
    """Set torch's intra-op threads to ``requested`` or to the free cores; returns the number."""
    import torch

    n = requested or free_cores()
    torch.set_num_threads(n)
    return n
