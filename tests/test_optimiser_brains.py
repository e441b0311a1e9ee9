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


def test_a_replaced_trial_does_not_break_the_optimiser() -> None:
    """A trial re-measured after a drift replaces the one the study was told about: the study
    is built again from the history, and the trial it had asked for (now measured under its own
    id) is told from the history, not to the new study that never asked it (which raised
    "No trial with trial_id N exists" and cost an invalid proposal in a run)."""
    brain = OptunaBrain("tpe", seed=0)
    space = deploy_space(2)
    defaults = DeployConfig(n_threads=2).model_dump()

    def ctx(history: list[TrialView]) -> DecisionContext:
        return DecisionContext(
            run_id="r", agent="tuner", stage="deploy", space=space, goal=Goal(),
            static_prompt="", dynamic_prompt="", history=history, defaults=defaults,
            budget_left=10,
        )  # fmt: skip

    def measured(trial_id: int, config: dict[str, object]) -> TrialView:
        return TrialView(
            trial_id=trial_id, stage="deploy", config=config, status="ok", accuracy=0.5,
            objective=synthetic(config), feasible=True,
        )  # fmt: skip

    first = brain.propose(ctx([]))
    one = measured(1, first.config)
    second = brain.propose(ctx([one]))
    # Trial 1 was measured again as trial 3 (it replaces 1); the asked config ran as trial 2.
    history = [measured(3, first.config), measured(2, second.config)]
    third = brain.propose(ctx(history))
    assert third.action == "trial"
    assert json.dumps(third.config, sort_keys=True, default=str) not in {
        json.dumps(c, sort_keys=True, default=str) for c in (first.config, second.config)
    }
