"""A run with instant tools: a toolbox that answers at once with fixed figures, a brain that
serves a script, and the graph driven to its end. For tests of the loops and the supervisor's
rules, where the measurements are not under test."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from haqa.agents.brains.base import BrainKind, DecisionContext, Proposal
from haqa.agents.routing import Budgets
from haqa.agents.runtime import RunControl, RunRuntime
from haqa.goal import Goal
from haqa.graph.build import build_graph
from haqa.schemas import (
    DeployConfig,
    FinetuneConfig,
    MeasurementPolicy,
    RuntimeSettings,
    TrialMetrics,
)
from haqa.space import deploy_space, finetune_space
from haqa.store import MessageRecord, Store

#: The graph's step limit in these tests: far above what a bounded run takes (a few dozen
#: steps), far below what a spinning one would reach, so a regression fails instead of hanging.
RECURSION_LIMIT = 600


class InstantToolbox:
    """Every tool answers with fixed figures; a search deployment takes ``trial_s`` seconds."""

    recorded = False

    def __init__(self, trial_s: float = 0.0) -> None:
        self.trial_s = trial_s
        self.deployed: list[str] = []

    def probe(self) -> dict[str, Any]:
        return {"cpu_model": "fake", "physical_cores": 2, "logical_cores": 2, "fingerprint": "f"}

    def microbench(self) -> dict[str, Any]:
        return {"rows": [], "implications": []}

    def tensor_sensitivity(self) -> dict[str, Any] | None:
        return None

    def evaluate_base(self) -> TrialMetrics:
        return TrialMetrics(accuracy=0.5)

    def finetune(self, config: FinetuneConfig) -> TrialMetrics:
        return TrialMetrics(accuracy=0.4, peak_mem_bytes=1 << 30)

    def reference(self, adapter: str | None) -> TrialMetrics:
        return TrialMetrics(accuracy=0.5)

    def deploy(self, config: DeployConfig, adapter: str | None) -> TrialMetrics:
        self.deployed.append(config.quant_type)
        time.sleep(self.trial_s)
        return TrialMetrics(
            accuracy=0.5, prefill_tps=100.0, decode_tps=20.0, peak_mem_bytes=1 << 30
        )

    def baseline(
        self, quant_type: str, runtime: RuntimeSettings, adapter: str | None = None
    ) -> TrialMetrics:
        return TrialMetrics(accuracy=0.5, prefill_tps=90.0, decode_tps=10.0)

    def estimate_deploy(self, config: DeployConfig) -> dict[str, Any]:
        return {"total_bytes": 1 << 30}

    def estimate_finetune(self, config: FinetuneConfig) -> dict[str, Any]:
        return {"total_bytes": 1 << 30}

    def final_test(self, config: DeployConfig, adapter: str | None) -> TrialMetrics:
        return TrialMetrics(accuracy=0.5)


class ScriptedBrain:
    """Serves a fixed list of deployment decisions in order (as the replay brain serves a
    recorded run), then finishes; ``on_answer(n)`` is called after the n-th answer."""

    name = "scripted"
    kind: BrainKind = "llm"

    def __init__(self, quants: list[str], on_answer: Callable[[int], None] | None = None) -> None:
        self.quants = list(quants)
        self.answered = 0
        self.on_answer = on_answer

    def propose(self, ctx: DecisionContext) -> Proposal:
        self.answered += 1
        if self.on_answer is not None:
            self.on_answer(self.answered)
        if not self.quants:
            return Proposal(action="finish", thought="script done")
        return Proposal(action="trial", config={"quant_type": self.quants.pop(0)})


def instant_runtime(
    store: Store,
    brain: Any,
    budgets: Budgets,
    toolbox: InstantToolbox,
    *,
    goal: Goal | None = None,
    run_id: str | None = None,
    control: RunControl | None = None,
    on_event: Callable[[MessageRecord], None] | None = None,
) -> RunRuntime:
    if run_id is None:
        run_id = store.create_run(model="fake", brain=brain.name).run_id
    return RunRuntime(
        store=store, run_id=run_id, goal=goal or Goal(), brain=brain,
        toolbox=toolbox,
        budgets=budgets, finetune_space=finetune_space(), deploy_space=deploy_space(2),
        finetune_defaults=FinetuneConfig().model_dump(mode="json"), model_summary="fake",
        control=control or RunControl(), on_event=on_event,
        measurement=MeasurementPolicy(anchor_every=0),  # no anchor trials between the steps
    )  # fmt: skip


def drive(rt: RunRuntime) -> dict[str, Any]:
    final: dict[str, Any] = build_graph(rt).invoke(
        {"run_id": rt.run_id, "steps": 0}, {"recursion_limit": RECURSION_LIMIT}
    )
    return final
