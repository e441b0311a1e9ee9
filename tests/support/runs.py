"""Small settings shared by the tests that run the agents for real on the tiny zoo model."""

from __future__ import annotations

from typing import Any

from haqa.agents.routing import Budgets
from haqa.graph.config import RunConfig
from haqa.schemas import FinetuneConfig, MeasurementPolicy


def small_run_config(**overrides: Any) -> RunConfig:
    """A run that exercises every agent in about a minute on 2 cores."""
    base: dict[str, Any] = {
        "model": "zoo:tiny",
        "budgets": Budgets(finetune_trials=1, deploy_trials=3, patience=5),
        "finetune": FinetuneConfig(max_steps=20),
        "eval_limit": 20,
        "n_prompt": 32,
        "n_gen": 8,
        "repetitions": 1,
        "quick_analysis": True,
        # 20 questions per task file: one question is 1.7 points, so a 1-point floor would make
        # the answer depend on a single question; these tests check the machinery, not accuracy.
        "max_accuracy_drop": 10.0,
        # Anchor checks add trials whose number depends on the machine's noise (a drift adds
        # re-measurements), which would make trial sequences differ between two runs;
        # tests/test_measurement.py drives them with a real noisy neighbour instead.
        "measurement": MeasurementPolicy(anchor_every=0),
        # Trials run in this process: a child per trial re-imports torch, transformers and peft
        # (about 10 s each here), and these tests check the agents, not the isolation. The
        # default (a child per trial) is what `haqa run` uses; tests/test_isolation.py, the
        # expert run and every test that drives the CLI go through it.
        "isolate_trials": False,
    }
    base.update(overrides)
    return RunConfig(**base)
