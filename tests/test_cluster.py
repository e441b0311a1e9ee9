"""``haqa run --cluster`` on real multi-node Ray clusters started on this machine.

Each test runs ``support/cluster_child.py`` in a child process inside a network namespace with
only loopback (``unshare -n``, or ``unshare -rn`` where only a user namespace may make one), so
Ray binds 127.0.0.1 and nothing leaves the machine; the child
starts the cluster, runs haqa over the recorded tiny grid (trials replay their recorded
measurements on the nodes, for their recorded durations) and stops the cluster. The child leads
its own process group, killed as a whole when it ends. Ray's token authentication is off in
there (``RAY_AUTH_MODE=disabled``), so no token is written to the user's ``~/.ray``. Skipped only
where neither ``unshare`` is permitted.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("ray")

TESTS = Path(__file__).parent


def _netns() -> list[str] | None:
    """The command that runs another in a loopback-only network namespace: ``unshare -n`` (as
    root), else ``unshare -rn`` (inside a user namespace of its own); None where neither may."""
    for flags in ("-n", "-rn"):
        try:
            done = subprocess.run(
                ["unshare", flags, "sh", "-c", "ip link set lo up"], capture_output=True, timeout=10
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if done.returncode == 0:
            return ["unshare", flags]
    return None


NETNS = _netns()

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        NETNS is None, reason="neither unshare -n nor -rn (a network namespace) is permitted"
    ),
]


def _in_cluster(
    scenario: str, tiny_grid: tuple[Path, str], tmp_path: Path, *, guard_s: float = 400
) -> dict[str, Any]:
    """Run the scenario in a loopback-only namespace; what the child recorded."""
    db, grid_id = tiny_grid
    store = tmp_path / "haqa.duckdb"
    shutil.copy(db, store)
    out = tmp_path / "out.json"
    # Ray's session files (logs, sockets) in a folder of this test's, removed after; short,
    # since a Unix socket's path is limited to about 100 characters.
    ray_tmp = tempfile.mkdtemp(prefix="haqa-ray-")
    pythonpath = os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])
    env = {
        **os.environ,
        "PYTHONPATH": pythonpath,
        "RAY_TMPDIR": ray_tmp,
        "RAY_AUTH_MODE": "disabled",
    }
    child = f'ip link set lo up && exec {sys.executable} -m support.cluster_child "$@"'
    args = [scenario, str(store), grid_id, str(out)]
    proc = subprocess.Popen(
        [*(NETNS or []), "sh", "-c", child, "sh", *args],
        env=env,
        cwd=tmp_path,  # the run's report folder
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        log, _ = proc.communicate(timeout=guard_s)  # a guard against a hang, not a time budget
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # whatever the child left in its group
        proc.wait()
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert proc.returncode == 0 and out.is_file(), log.decode(errors="replace")[-4000:]
    return dict(json.loads(out.read_text()))


def _deploy_trials(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The search's deploy trials (a recorded grid answers them; its baselines at llama.cpp's
    defaults are outside the tiny grid and fail as they do without a cluster)."""
    return [t for t in result["trials"] if t["tool"] == "deploy_trial"]


def test_trials_land_on_nodes_of_the_target_kind(
    tiny_grid: tuple[Path, str], tmp_path: Path
) -> None:
    result = _in_cluster("placement", tiny_grid, tmp_path)
    assert result["code"] in (0, 3), result
    kind_nodes = {result["nodes"]["a1"], result["nodes"]["a2"]}
    deployed = _deploy_trials(result)
    assert len(deployed) == 4 and all(t["status"] == "ok" for t in deployed)
    for t in deployed:  # every speed figure came from a node of the grid's kind, recorded
        node = t["metrics"]["node"]
        assert node["node_id"] in kind_nodes, t
        assert node["fingerprint"] == result["kind"] and node["attempts"] == 1
    assert result["nodes"]["plain"] not in {t["metrics"]["node"]["node_id"] for t in deployed}
    assert result["wrong_target_code"] == 2  # a kind the grid was not recorded on: refused


def test_a_local_cluster_is_started_and_stopped_by_the_run(
    tiny_grid: tuple[Path, str], tmp_path: Path
) -> None:
    result = _in_cluster("local", tiny_grid, tmp_path)
    assert result["code"] in (0, 3), result
    deployed = _deploy_trials(result)
    assert len(deployed) == 2 and all(t["status"] == "ok" for t in deployed)
    assert {t["metrics"]["node"]["fingerprint"] for t in deployed} == {result["kind"]}
    assert not result["still_connected"]


def test_a_node_killed_mid_trial_costs_only_that_attempt(
    tiny_grid: tuple[Path, str], tmp_path: Path
) -> None:
    result = _in_cluster("fault", tiny_grid, tmp_path)
    assert result["code"] in (0, 3), result
    killed = result["killed"]
    assert killed, "no trial was seen running to kill its node"
    survivor = ({result["nodes"]["a1"], result["nodes"]["a2"]} - {killed["node_id"]}).pop()
    deployed = _deploy_trials(result)
    # The search finished its whole budget: no trial lost to the dead node, none duplicated.
    assert len(deployed) == 4 and all(t["status"] == "ok" for t in deployed), deployed
    assert len({json.dumps(t["config"], sort_keys=True) for t in deployed}) == 4
    retried = [t for t in deployed if t["metrics"]["node"]["attempts"] > 1]
    assert len(retried) == 1, "the trial whose node died was not run again"
    assert retried[0]["metrics"]["node"]["node_id"] == survivor
    later = [t for t in deployed if t["trial_id"] > retried[0]["trial_id"]]
    assert all(t["metrics"]["node"]["node_id"] == survivor for t in later)
    assert not [t for t in result["trials"] if "node fault" in (t["error"] or "")]


#: Trials that measure speed: each must run on a node of its run's device kind.
SPEED_TOOLS = {"deploy_trial", "benchmark_llamacpp", "anchor"}


def test_a_fleet_run_answers_once_per_device_kind(
    tiny_grid: tuple[Path, str], tmp_path: Path
) -> None:
    """Two device kinds that differ in the cores their node may use (one CPU, two): one live
    fine-tune stage, then a deploy stage per kind on that kind's node, two answers; a resume of
    the finished fleet measures nothing again; a kind the cluster lacks is refused."""
    result = _in_cluster("fleet", tiny_grid, tmp_path, guard_s=1500)
    assert result["code"] == 0, result["runs"]
    fleet, nodes = result["fleet"], result["nodes"]
    assert fleet["kinds"] == sorted(nodes)  # --targets all: every kind of the cluster
    members = {r["config"]["target"]: r for r in result["runs"]}
    assert set(members) == set(nodes)
    assert all(r["config"]["fleet"]["fleet_id"] == fleet["fleet_id"] for r in members.values())
    assert all(r["status"] == "finished" and r["result"]["found"] for r in members.values())
    cpus = {"f1f1f1f1f1f1": 1, "f2f2f2f2f2f2": 2}
    for kind, run in members.items():
        trials = [t for t in result["trials"] if t["run_id"] == run["run_id"]]
        speed = [t for t in trials if t["stage"] == "deploy" and t["tool"] in SPEED_TOOLS]
        assert speed and all(t["metrics"]["node"]["node_id"] == nodes[kind] for t in speed), kind
        assert {t["metrics"]["node"]["fingerprint"] for t in speed} == {kind}
        assert run["result"]["config"]["n_threads"] <= cpus[kind]  # its kind's cores, no more
    # One fine-tune stage: the second kind's run holds the first's trials, not new ones.
    first, second = (members[k]["run_id"] for k in fleet["kinds"])

    def finetune(run_id: str) -> list[tuple[str, str]]:
        rows = [t for t in result["trials"] if t["run_id"] == run_id and t["stage"] == "finetune"]
        return [(t["tool"], t["started_at"]) for t in rows]

    assert finetune(first) and finetune(second) == finetune(first)
    assert [t for t, _ in finetune(first)].count("run_qlora") == 1
    shared = [
        m["tool_args"]
        for m in result["messages"][second]
        if m["tool_name"] == "mark" and m["tool_args"]["mark"] == "finetune_done"
    ]
    assert [a["shared_from"] for a in shared] == [first]
    for kind in fleet["kinds"]:  # the fleet's report: one answer per kind, side by side
        assert f"| {kind} | {members[kind]['run_id']} | finished |" in result["report"]
    # --resume of a finished fleet redoes no kind; an unknown kind is a one-line refusal.
    assert result["resume_code"] == 0
    assert len(result["trials"]) == result["trials_before_resume"]
    assert result["unknown_kind_code"] == 2
