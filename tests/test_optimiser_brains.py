"""The optimiser baselines propose valid, new configurations and learn from the history."""

from __future__ import annotations

import json

import pytest

from haqa.agents.brains.base import DecisionContext, TrialView
from haqa.agents.brains.optuna_brain import OPTUNA_BRAINS, LocalSearchBrain, OptunaBrain
from haqa.goal import Goal
from haqa.schemas import DeployConfig, FinetuneConfig
from haqa.space import deploy_space, finetune_space


def synthetic(config: dict[str, object]) -> float:
    """A deterministic stand-in objective over the deploy knobs (no tool runs here)."""
    q = {"Q4_0": 5.0, "Q4_K_M": 4.5, "IQ4_NL": 4.2, "Q8_0": 3.0}.get(str(config["quant_type"]), 1.0)
    return q * (1 + 0.1 * int(config["n_threads"])) * (1.05 if config["flash_attn"] else 1.0)  # type: ignore[call-overload]


@pytest.mark.parametrize("name", [*OPTUNA_BRAINS, "local"])
@pytest.mark.parametrize("stage", ["deploy", "finetune"])
def test_brain_proposes_valid_new_configs(name: str, stage: str) -> None:
    brain = LocalSearchBrain(seed=1) if name == "local" else OptunaBrain(name, seed=1)
    space = deploy_space(2) if stage == "deploy" else finetune_space()
    defaults = (
        DeployConfig(n_threads=2).model_dump()
        if stage == "deploy"
        else FinetuneConfig().model_dump()
    )
    history: list[TrialView] = []
    seen = set()
    for i in range(1, 9):
        ctx = DecisionContext(
            run_id="r", agent="tuner", stage=stage, space=space, goal=Goal(),  # type: ignore[arg-type]
            static_prompt="", dynamic_prompt="", history=list(history), defaults=defaults,
            budget_left=10,
        )  # fmt: skip
        p = brain.propose(ctx)
        if p.action == "finish":
            break
        model = DeployConfig if stage == "deploy" else FinetuneConfig
        model.model_validate(p.config)
        key = json.dumps({k: p.config.get(k) for k in space.names}, sort_keys=True)
        assert key not in seen
        seen.add(key)
        value = synthetic(p.config) if stage == "deploy" else float(p.config["learning_rate"])
        history.append(
            TrialView(
                trial_id=i, stage=stage, config=p.config, status="ok", accuracy=0.5,
                objective=value, feasible=True,
            )
        )  # fmt: skip
    assert len(seen) >= 4
