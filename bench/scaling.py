"""Trial throughput on a Ray cluster of 1, 2 and 4 worker nodes: what dispatch costs.

A recorded grid's deploy trials are replayed as speed trials (``trials/ray_backend.py``): each
task waits its recorded duration (times ``--time-scale``) on a node of the grid's device kind,
alone on that node, and returns the recorded measurement. The figure is the cluster's effective
parallelism — the trials' replayed seconds ÷ the wall time to run them all — against the number
of nodes N (goal: at least 0.8·N). The replayed repeats are the grid's second and later ones: a
configuration's first recording includes one-off work (its GGUF export), which a steady search
does not repeat.

All trials go in one batch (``Dispatcher.run_many``): this is the dispatcher's ceiling, not the
throughput of ``haqa run``, which sends one trial at a time (each trial is a decision made on
the ones before it).

The nodes are ``ray.cluster_utils.Cluster`` nodes on this machine with one CPU each; the script
re-runs itself in a network namespace with only loopback (``unshare -n``, else ``unshare -rn``),
so Ray binds 127.0.0.1, and refuses to run where it cannot make one.

    haqa grid record --model zoo:tiny -t 1 -ub 512 --quant F16,Q8_0,Q4_0 --db grid.duckdb
    python bench/scaling.py --db grid.duckdb --grid GRID [--trials 48] [--time-scale 0.5]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from _common import reproduce_line

from haqa.store import Store
from haqa.trials.cluster import node_resources

if TYPE_CHECKING:
    from haqa.trials.ray_backend import TaskCall

IN_NETNS = "HAQA_BENCH_NETNS"


def _unshare() -> list[str] | None:
    """``unshare -n`` (as root), else ``unshare -rn`` (a user namespace too); None: neither."""
    for flags in ("-n", "-rn"):
        try:
            probe = ["unshare", flags, "sh", "-c", "ip link set lo up"]
            if subprocess.run(probe, capture_output=True, check=False, timeout=10).returncode == 0:
                return ["unshare", flags]
        except (OSError, subprocess.TimeoutExpired):
            continue
    return None


def _reexec_in_netns() -> int:
    """This script again, inside a loopback-only network namespace (refused where none can be
    made: its clusters would listen on the machine's network); Ray's session files in a folder
    of its own, removed after, and no token of Ray's written to ``~/.ray``."""
    unshare = _unshare()
    if unshare is None:
        print(
            "bench/scaling.py: needs a loopback-only network namespace and neither `unshare -n` "
            "nor `unshare -rn` is permitted here; not run",
            file=sys.stderr,
        )
        return 2
    inner = f'ip link set lo up && {IN_NETNS}=1 exec {sys.executable} "$@"'
    cmd = [*unshare, "sh", "-c", inner, "sh", *sys.argv]
    ray_tmp = tempfile.mkdtemp(prefix="haqa-ray-")
    try:
        env = {**os.environ, "RAY_TMPDIR": ray_tmp, "RAY_AUTH_MODE": "disabled"}
        return subprocess.run(cmd, check=False, env=env).returncode
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


def _calls(store: Store, grid: str, trials: int, time_scale: float) -> list[TaskCall]:
    """``trials`` replays cycling over the grid's steady (second and later) recordings."""
    from haqa.trials.ray_backend import TaskCall

    steady = [p for p in store.grid_points(grid) if p.repeat >= 1]
    if not steady:
        raise SystemExit(f"grid {grid} has no second recordings: record it with --repeats 2")
    picks = [steady[i % len(steady)] for i in range(trials)]
    return [
        TaskCall(method="deploy", replay=p.metrics, duration_s=p.duration_s * time_scale)
        for p in picks
    ]


def measure(
    store: Store, grid: str, nodes: int, trials: int, time_scale: float
) -> dict[str, float]:
    """One cluster of ``nodes`` worker nodes: wall time of all trials at once, and their sum."""
    from ray.cluster_utils import Cluster

    from haqa.trials.cluster import connect
    from haqa.trials.ray_backend import Dispatcher

    kind = store.get_grid(grid).hardware_fingerprint
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    try:
        for _ in range(nodes):
            cluster.add_node(num_cpus=1, resources=node_resources(kind))
        cluster.wait_for_nodes()
        session = connect(cluster.address)
        dispatcher = Dispatcher(session, kind)
        calls = _calls(store, grid, trials, time_scale)
        # A worker per node started first: its process start-up is once per node, not per trial.
        dispatcher.run_many([c.model_copy(update={"duration_s": 0.0}) for c in calls[:nodes]])
        started = time.monotonic()
        done = dispatcher.run_many(calls)
        wall = time.monotonic() - started
        used = {node.node_id for _, node in done}
        session.close()
    finally:
        cluster.shutdown()  # type: ignore[no-untyped-call]
    replayed = sum(c.duration_s for c in calls)  # recorded durations × the time scale
    return {"wall_s": wall, "replayed_s": replayed, "nodes_used": float(len(used))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True, help="the store holding the recorded grid")
    parser.add_argument("--grid", required=True)
    parser.add_argument("--nodes", default="1,2,4", help="comma list of worker node counts")
    parser.add_argument("--trials", type=int, default=48)
    parser.add_argument("--time-scale", type=float, default=0.5, help="recorded duration × this")
    args = parser.parse_args()
    if os.environ.get(IN_NETNS) != "1":
        return _reexec_in_netns()
    store = Store(Path(args.db))
    print(f"{'nodes':>5} {'trials':>6} {'replayed s':>10} {'wall s':>7} {'parallelism':>11} "
          f"{'/ N':>5} {'goal':>5}")  # fmt: skip
    ok = True
    for n in (int(x) for x in args.nodes.split(",")):
        r = measure(store, args.grid, n, args.trials, args.time_scale)
        parallel = r["replayed_s"] / r["wall_s"]
        ok &= parallel >= 0.8 * n
        print(
            f"{n:>5} {args.trials:>6} {r['replayed_s']:>10.1f} {r['wall_s']:>7.2f} "
            f"{parallel:>11.2f} {parallel / n:>5.2f} {'ok' if parallel >= 0.8 * n else 'MISS':>5}"
            f"  (nodes used: {r['nodes_used']:.0f})",
            flush=True,
        )
    print(reproduce_line())
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
