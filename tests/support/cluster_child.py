"""The child of the cluster tests: ``python -m support.cluster_child SCENARIO STORE GRID OUT``,
run by ``tests/test_cluster.py`` inside a network namespace with only loopback (so Ray binds
127.0.0.1). It starts a multi-node ``ray.cluster_utils.Cluster``, runs ``haqa run --cluster`` on
it over the recorded tiny grid, writes what happened as JSON to OUT, and stops the cluster.

Scenarios:
- ``placement``: two nodes of the grid's device kind (one CPU each) and a plain Ray node with no
  haqa kind (two CPUs): speed trials must land on the first two only.
- ``local``: no cluster of its own: ``haqa run --cluster local`` starts (and stops) one.
- ``fault``: two nodes of the grid's kind; the raylet of the node running the first replayed
  deploy trial is killed (SIGKILL, by pid) while the trial runs; every replayed deploy trial
  lasts at least ``KILLABLE_S`` (``replay_min_s``), however short the grid's recordings.
- ``fleet``: two device kinds that differ in the cores their node may use (one CPU, two CPUs),
  a live ``haqa run --targets all`` on the tiny zoo model (its cheapest settings: one short
  fine-tune, one deploy trial per kind), then ``--resume`` of the finished fleet, and a
  ``--targets`` naming a kind the cluster lacks (refused, exit 2). The grid is not used.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil
from ray.cluster_utils import Cluster

from haqa.cli import main as haqa_main
from haqa.store import Store
from haqa.trials.cluster import node_resources

#: Quick failure detection: a killed node is declared dead in about a second, not 30.
FAST_HEALTH = {
    "health_check_initial_delay_ms": 0,
    "health_check_period_ms": 200,
    "health_check_failure_threshold": 3,
}

#: Replayed trials take their recorded durations times this (the grid's first points include
#: a one-off export of tens of seconds); the fault scenario keeps trials long enough to be caught.
TIME_SCALE = {"placement": 0.05, "fault": 0.1, "local": 0.05}
#: A replay seen running this long is mid-trial.
MID_TRIAL_S = 0.5
#: In the fault scenario a replayed deploy trial lasts at least this long: however fast the
#: machine that recorded the grid, the trial to kill is still running when it is seen.
KILLABLE_S = 3.0


def _raylet_pid(node: Any) -> int:
    return int(node.all_processes["raylet"][0].process.pid)


def _kill_first_busy(nodes: dict[str, Any], killed: dict[str, Any], stop: threading.Event) -> None:
    """Kill the node whose worker is executing a replayed trial, once: the worker, then its
    raylet (SIGKILL, by pid), as when the machine goes away mid-trial."""
    raylets = {_raylet_pid(n): name for name, n in nodes.items()}
    busy_since: dict[int, float] = {}  # a worker's pid → when it was first seen replaying
    while not stop.is_set():
        busy = set()
        for proc in psutil.process_iter(["cmdline", "ppid"]):
            title = " ".join(proc.info["cmdline"] or [])
            if "replay_recorded" in title and proc.info["ppid"] in raylets:
                busy.add(proc.pid)
                since = busy_since.setdefault(proc.pid, time.monotonic())
                if time.monotonic() - since < MID_TRIAL_S:
                    continue  # not yet surely mid-trial (a zero-length replay ends at once)
                name = raylets[proc.info["ppid"]]
                os.kill(proc.pid, signal.SIGKILL)
                os.kill(proc.info["ppid"], signal.SIGKILL)
                killed.update(name=name, node_id=nodes[name].node_id, at=time.time())
                return
        busy_since = {pid: t for pid, t in busy_since.items() if pid in busy}
        time.sleep(0.01)


def _run(
    address: str, store: Path, grid: str, trials: int, time_scale: float, min_s: float = 0.0
) -> int:
    config = store.with_name("run.toml")
    config.write_text(f"replay_time_scale = {time_scale}\nreplay_min_s = {min_s}\n")
    return haqa_main(
        [
            "run", "--cluster", address, "--tabular", grid, "--model", "zoo:tiny",
            "--finetune-trials", "0", "--deploy-trials", str(trials), "--db", str(store),
            "--config", str(config),
        ]
    )  # fmt: skip


def _wrong_target(address: str, store: Path, grid: str) -> int:
    """A run asked for a device kind its grid was not recorded on: refused (exit 2)."""
    argv = ["run", "--cluster", address, "--tabular", grid, "--target", "0" * 12]
    return haqa_main([*argv, "--finetune-trials", "0", "--db", str(store)])


def _local(store: Path, grid: str, out: Path) -> int:
    """``--cluster local``: the run starts a one-node cluster of this machine and stops it."""
    started = time.time()
    code = _run("local", store, grid, trials=2, time_scale=TIME_SCALE["local"])
    import ray

    result = {
        "code": code,
        "kind": Store(store).get_grid(grid).hardware_fingerprint,
        "seconds": time.time() - started,
        "still_connected": ray.is_initialized(),
        "trials": [t.model_dump(mode="json") for t in Store(store).list_trials()],
    }
    out.write_text(json.dumps(result))
    return 0


#: The fleet scenario's two device kinds: the fingerprint each node advertises, and its CPUs.
FLEET_KINDS = {"f1f1f1f1f1f1": 1, "f2f2f2f2f2f2": 2}
#: The cheapest live run of the tiny model: a 10-step fine-tune (the least the space allows),
#: one deploy trial per kind, a goal any deployment meets (this checks where trials run, not
#: accuracy).
FLEET_RUN = [
    "--model", "zoo:tiny", "--finetune-trials", "1", "--finetune-steps", "10",
    "--deploy-trials", "1", "--eval-limit", "5", "--n-prompt", "16", "--n-gen", "4",
    "--repetitions", "1", "--perplexity-windows", "0", "--max-accuracy-drop", "100",
]  # fmt: skip


def _fleet(store: Path, out: Path) -> int:
    """A fleet run over two device kinds, its resume, and a kind the cluster lacks."""
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "include_dashboard": False, "_system_config": FAST_HEALTH},
    )
    try:
        nodes = {
            kind: cluster.add_node(num_cpus=cpus, resources=node_resources(kind))
            for kind, cpus in FLEET_KINDS.items()
        }
        cluster.wait_for_nodes()
        config = store.with_name("run.toml")
        config.write_text("quick_analysis = true\n[measurement]\nanchor_every = 0\n")
        common = ["--cluster", cluster.address, "--db", str(store), "--config", str(config)]
        reports = store.with_name("reports")
        started = time.time()
        argv = ["run", *common, *FLEET_RUN, "--targets", "all", "--report-dir", str(reports)]
        code = haqa_main(argv)
        seconds = time.time() - started
        runs = Store(store).list_runs()
        fleet = next(((r.config or {}).get("fleet") or {} for r in runs), {})
        trials_before = len(Store(store).list_trials())
        resume_code = haqa_main(["run", "--resume", str(fleet.get("fleet_id")), *common[2:4]])
        unknown = ["run", *common, *FLEET_RUN, "--targets", "f1f1f1f1f1f1,0a0a0a0a0a0a"]
        result = {
            "code": code,
            "resume_code": resume_code,
            "unknown_kind_code": haqa_main(unknown),
            "seconds": seconds,
            "nodes": {k: n.node_id for k, n in nodes.items()},
            "fleet": fleet,
            "report": (reports / "report.md").read_text() if code == 0 else "",
            "trials_before_resume": trials_before,
            "runs": [r.model_dump(mode="json") for r in Store(store).list_runs()],
            "trials": [t.model_dump(mode="json") for t in Store(store).list_trials()],
            "messages": {
                r.run_id: [m.model_dump(mode="json") for m in Store(store).list_messages(r.run_id)]
                for r in runs
            },
        }
        out.write_text(json.dumps(result))
    finally:
        cluster.shutdown()  # type: ignore[no-untyped-call]
    return 0


def main(scenario: str, store: Path, grid: str, out: Path) -> int:
    if scenario == "local":
        return _local(store, grid, out)
    if scenario == "fleet":
        return _fleet(store, out)
    kind = Store(store).get_grid(grid).hardware_fingerprint
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "include_dashboard": False, "_system_config": FAST_HEALTH},
    )
    try:
        nodes = {
            "a1": cluster.add_node(num_cpus=1, resources=node_resources(kind)),
            "a2": cluster.add_node(num_cpus=1, resources=node_resources(kind)),
        }
        if scenario == "placement":
            nodes["plain"] = cluster.add_node(num_cpus=2)
        cluster.wait_for_nodes()
        killed: dict[str, Any] = {}
        stop = threading.Event()
        min_s = 0.0
        if scenario == "fault":
            min_s = KILLABLE_S
            watch = {k: v for k, v in nodes.items() if k.startswith("a")}
            killer = threading.Thread(
                target=_kill_first_busy, args=(watch, killed, stop), daemon=True
            )
            killer.start()
        started = time.time()
        try:
            code = _run(cluster.address, store, grid, 4, TIME_SCALE[scenario], min_s)
        finally:
            stop.set()
        result = {
            "code": code,
            "wrong_target_code": _wrong_target(cluster.address, store, grid)
            if scenario == "placement"
            else None,
            "kind": kind,
            "seconds": time.time() - started,
            "nodes": {k: n.node_id for k, n in nodes.items()},
            "killed": killed,
            "trials": [t.model_dump(mode="json") for t in Store(store).list_trials()],
        }
        out.write_text(json.dumps(result))
    finally:
        cluster.shutdown()  # type: ignore[no-untyped-call]
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1], Path(sys.argv[2]), sys.argv[3], Path(sys.argv[4])))
