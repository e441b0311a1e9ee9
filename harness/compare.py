"""``haqa compare``: brains against each other at the same budget, over many seeds.

Every run goes through the same graph, tools (here: a recorded grid) and budget. A run is scored
by the *true* objective of the configurations it chose — the mean over the grid's recorded repeats
— so a brain is not rewarded for a lucky noisy sample. Reported per brain, like the paper's table:
best objective at the budget (mean ± std over seeds), regret to the grid optimum, trials to reach
98% of the optimum (median), and invalid proposals; plus a convergence plot (best so far vs trial,
median with an interquartile band over seeds).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from haqa.errors import HaqaError
from haqa.goal import Goal
from haqa.harness.decision_costs import DecisionCosts, decision_costs
from haqa.harness.grid import TabularToolbox
from haqa.store import GridRecord, Store, iter_grid_configs

if TYPE_CHECKING:
    from haqa.graph.config import RunConfig

REACH = 0.98


class BrainScore(BaseModel):
    brain: str
    seeds: int
    best_mean: float
    best_std: float
    regret_mean: float
    trials_to_reach: list[int | None] = Field(description="per seed; None: never reached")
    trials_to_reach_median: float | None
    invalid_mean: float
    curves: list[list[float]] = Field(description="best-so-far true objective per trial, per seed")
    valid_rate: float = Field(1.0, description="decisions / (decisions + invalid proposals)")
    seconds_per_decision: float = Field(0.0, description="dynamic prompt to decision, mean")
    tokens_per_decision: float | None = Field(
        None, description="LLM tokens in and out; None: no LLM"
    )
    llm_share: float | None = Field(
        None, description="hybrid: share of decisions the LLM chose (the rest: the optimizer's)"
    )
    fallbacks: int = Field(0, description="steps the expert decided because the LLM could not")


class CompareResult(BaseModel):
    grid_id: str
    goal: str
    budget: int
    optimum: float
    optimum_config: dict[str, Any]
    scores: list[BrainScore]
    run_ids: dict[str, list[str]]


def grid_truth(
    toolbox: TabularToolbox, goal: Goal
) -> tuple[Callable[[dict[str, Any]], float | None], float, dict[str, Any]]:
    """The true (repeat-averaged, feasibility-checked) objective of each grid configuration, the
    optimum, and its configuration."""
    reference = toolbox.reference(None).accuracy

    def truth(config: dict[str, Any]) -> float | None:
        first = toolbox.first_repeat(config)
        if not goal.keeps_accuracy(first.accuracy, reference):
            return None
        predicted = toolbox.estimate_deploy(config)["total_bytes"]  # type: ignore[arg-type]
        if not goal.fits_memory(predicted):
            return None
        return toolbox.mean_objective(config, goal.objective)

    best, best_cfg = float("-inf"), {}
    for point in iter_grid_configs(toolbox.grid.space):
        value = truth(point)
        if value is not None and value > best:
            best, best_cfg = value, point
    if best == float("-inf"):
        raise HaqaError(f"no configuration of grid {toolbox.grid.grid_id} meets the goal")
    return truth, best, best_cfg


def _curve(
    store: Store, run_id: str, truth: Callable[[dict[str, Any]], float | None], budget: int
) -> list[float]:
    best = 0.0
    curve = []
    for t in store.list_trials(run_id, stage="deploy"):
        if not t.is_search:
            continue
        if t.status == "ok":
            value = truth(t.config)
            if value is not None:
                best = max(best, value)
        curve.append(best)
    curve += [best] * (budget - len(curve))  # a brain that finished early keeps its best
    return curve[:budget]


def _check_compare_args(brains: list[str], seeds: int, budget: int) -> None:
    """HaqaError for a seed count or budget under 1, or a brain that compare cannot run."""
    from haqa.agents.brains import ALL_BRAINS

    if seeds <= 0:
        raise HaqaError(f"--seeds must be at least 1, got {seeds}")
    if budget <= 0:
        raise HaqaError(f"--budget must be at least 1, got {budget}")
    unknown = [b for b in brains if b not in ALL_BRAINS or b in ("openai", "replay")]
    if unknown:
        raise HaqaError(
            f"unknown brain {', '.join(unknown)} for compare: use expert, random, local, tpe, "
            "gp, nsga2, cmaes, llamacpp, hybrid"
        )


def _base_config(
    grid: GridRecord,
    grid_id: str,
    goal: str,
    max_accuracy_drop: float,
    memory_budget: str | None,
    budget: int,
) -> RunConfig:
    """The run configuration every compared run shares; each run sets its brain and seed."""
    from haqa.agents.routing import Budgets
    from haqa.graph.config import RunConfig

    return RunConfig(
        model=grid.model,
        speed_model=grid.speed_model,
        goal=goal,
        max_accuracy_drop=max_accuracy_drop,
        memory_budget=memory_budget,
        tabular=grid_id,
        budgets=Budgets(
            finetune_trials=0, deploy_trials=budget, patience=budget, max_invalid_in_row=3
        ),
    )


def _score_brain(
    brain: str,
    curves: list[list[float]],
    invalid: list[int],
    optimum: float,
    budget: int,
    costs: list[DecisionCosts],
) -> BrainScore:
    """One brain's scores from its best-so-far curves, invalid proposals and decision costs,
    one per seed."""
    decisions = sum(c.decisions for c in costs)
    proposals = decisions + sum(c.invalid for c in costs)
    calls = sum(c.llm_calls for c in costs)
    hybrid = sum(c.llm_chosen + c.optimizer_chosen for c in costs)
    finals = [c[-1] if c else 0.0 for c in curves]
    reach = [next((i + 1 for i, v in enumerate(c) if v >= REACH * optimum), None) for c in curves]
    reached = sorted(r if r is not None else budget + 1 for r in reach)
    return BrainScore(
        brain=brain,
        seeds=len(curves),
        best_mean=statistics.fmean(finals),
        best_std=statistics.pstdev(finals) if len(finals) > 1 else 0.0,
        regret_mean=statistics.fmean(optimum - f for f in finals),
        trials_to_reach=reach,
        trials_to_reach_median=statistics.median(reached),
        invalid_mean=statistics.fmean(invalid),
        curves=curves,
        valid_rate=decisions / proposals if proposals else 1.0,
        seconds_per_decision=sum(c.seconds for c in costs) / max(decisions, 1),
        tokens_per_decision=sum(c.tokens for c in costs) / max(decisions, 1) if calls else None,
        llm_share=sum(c.llm_chosen for c in costs) / hybrid if hybrid else None,
        fallbacks=sum(c.fallbacks for c in costs),
    )


def compare_brains(
    store: Store,
    *,
    scratch: Store | None = None,
    grid_id: str,
    brains: list[str],
    seeds: int,
    budget: int,
    goal: str = "decode",
    max_accuracy_drop: float = 1.0,
    memory_budget: str | None = None,
    progress: Callable[[str], None] | None = None,
    llm_gguf: str | None = None,
) -> CompareResult:
    from haqa.graph.run import start_run

    _check_compare_args(brains, seeds, budget)
    toolbox = TabularToolbox(store, grid_id)
    base = _base_config(toolbox.grid, grid_id, goal, max_accuracy_drop, memory_budget, budget)
    base = base.model_copy(update={"llm_gguf": llm_gguf})
    parsed = base.parsed_goal()
    truth, optimum, optimum_cfg = grid_truth(toolbox, parsed)
    scores, run_ids = [], {}
    for brain in brains:
        curves, invalid, ids, costs = [], [], [], []
        for seed in range(seeds):
            if progress:
                progress(f"{brain} seed {seed}")
            cfg = base.model_copy(update={"brain": brain, "seed": seed})
            # Runs go to the scratch store when given: they are many and only their scores matter.
            runs = scratch or store
            run_id, result = start_run(runs, cfg, toolbox=TabularToolbox(store, grid_id))
            ids.append(run_id)
            curves.append(_curve(runs, run_id, truth, budget))
            invalid.append(result.invalid_proposals if result else 0)
            costs.append(decision_costs(runs, run_id))
        scores.append(_score_brain(brain, curves, invalid, optimum, budget, costs))
        run_ids[brain] = ids
    return CompareResult(
        grid_id=grid_id,
        goal=parsed.describe(),
        budget=budget,
        optimum=optimum,
        optimum_config=optimum_cfg,
        scores=scores,
        run_ids=run_ids,
    )


def plot_convergence(result: CompareResult, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7, 4.5))
    x = np.arange(1, result.budget + 1)
    for score in result.scores:
        data = np.array(score.curves) / result.optimum
        median = np.median(data, axis=0)
        low, high = np.percentile(data, 25, axis=0), np.percentile(data, 75, axis=0)
        ax.plot(x, median, label=score.brain)
        ax.fill_between(x, low, high, alpha=0.15)
    ax.axhline(REACH, color="grey", linestyle="--", linewidth=0.8, label=f"{REACH:.0%} of optimum")
    ax.set_xlabel("trial")
    ax.set_ylabel("best so far / grid optimum")
    ax.set_title(f"convergence on {result.grid_id} (median, IQR band)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
