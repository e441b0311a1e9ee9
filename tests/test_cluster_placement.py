"""Where a trial goes on a cluster, and what the store keeps of it: the placement rules read
from the cluster's nodes (no cluster started), and a trial's node through the store."""

from __future__ import annotations

from datetime import timedelta

import pytest

from haqa.schemas import TrialMetrics, TrialNode
from haqa.store import Store, TrialResult, utcnow
from haqa.trials.cluster import ClusterNode, ClusterSession, kind_resource, node_resources
from haqa.trials.isolation import TrialCrash

ray_backend = pytest.importorskip("haqa.trials.ray_backend")

GIB = float(1 << 30)


class _Nodes(ClusterSession):
    """A session over a fixed list of nodes, as ``ray.nodes()`` would describe them."""

    def __init__(self, nodes: list[ClusterNode]) -> None:
        super().__init__("test", started_local=False)
        self._nodes = nodes

    def nodes(self) -> list[ClusterNode]:
        return self._nodes


def _node(name: str, fingerprint: str | None, cpus: float, memory_gib: float) -> ClusterNode:
    return ClusterNode(
        node_id=name, hostname=name, address="127.0.0.1", fingerprint=fingerprint,
        cpus=cpus, memory_bytes=memory_gib * GIB,
    )  # fmt: skip


SESSION = _Nodes(
    [_node("edge", "aaaa", 4, 8), _node("edge2", "aaaa", 4, 8), _node("gpu", None, 16, 64)]
)


def test_a_speed_trial_takes_its_kinds_speed_slot_and_every_cpu() -> None:
    dispatch = ray_backend.Dispatcher(SESSION, "aaaa")
    opts = dispatch.options(ray_backend.TaskCall(method="deploy", replay={}))
    assert opts == {"resources": {kind_resource("aaaa"): 1.0}, "num_cpus": 4}
    assert node_resources("aaaa") == {kind_resource("aaaa"): 1.0}  # one slot per node


def test_a_fine_tune_goes_anywhere_its_memory_estimate_fits() -> None:
    dispatch = ray_backend.Dispatcher(SESSION, "aaaa")
    call = ray_backend.TaskCall(method="finetune", request={}, memory_bytes=int(20 * GIB))
    assert dispatch.options(call) == {"num_cpus": 1, "memory": int(20 * GIB)}
    too_big = call.model_copy(update={"memory_bytes": int(100 * GIB)})
    with pytest.raises(TrialCrash, match="largest node"):
        dispatch.options(too_big)  # would wait forever: a failed trial instead


def test_no_live_node_of_the_target_kind_fails_the_trial() -> None:
    dispatch = ray_backend.Dispatcher(SESSION, "bbbb")
    with pytest.raises(TrialCrash, match="no live node of device kind bbbb"):
        dispatch.options(ray_backend.TaskCall(method="baseline", replay={}))


def test_the_store_keeps_the_node_a_trial_ran_on(store: Store) -> None:
    run = store.create_run(model="zoo:tiny", brain="expert", goal={"metric": "decode_tps"})
    node = TrialNode(node_id="n1", hostname="edge-1", fingerprint="aaaa", attempts=2)
    start = utcnow()
    store.add_trial(
        run.run_id,
        TrialResult(
            stage="deploy", tool="deploy_trial", config={"quant_type": "Q4_0"},
            metrics=TrialMetrics(decode_tps=12.5, node=node),
            started_at=start, finished_at=start + timedelta(seconds=1),
        ),
    )  # fmt: skip
    (stored,) = store.list_trials(run.run_id)
    assert stored.metrics.node == node


def test_a_target_without_a_cluster_is_refused_with_the_config() -> None:
    from pydantic import ValidationError

    from haqa.graph.config import RunConfig

    with pytest.raises(ValidationError, match="pass --cluster too"):
        RunConfig(target="aaaa")
    assert RunConfig(cluster="auto", target="aaaa").target == "aaaa"


def test_a_fleets_kinds_are_read_from_the_cluster() -> None:
    from haqa.errors import HaqaError

    two = _Nodes([*SESSION.nodes(), _node("arm", "bbbb", 2, 4)])
    assert two.resolve_targets(["all"]) == ["aaaa", "bbbb"]  # every kind, no plain node
    assert two.resolve_targets(["bbbb", "aaaa"]) == ["bbbb", "aaaa"]
    with pytest.raises(HaqaError, match=r"kind cccc .*\(kinds: aaaa, bbbb\)"):
        two.resolve_targets(["aaaa", "cccc"])
    with pytest.raises(HaqaError, match="no haqa node"):
        _Nodes([_node("gpu", None, 16, 64)]).resolve_targets(["all"])
