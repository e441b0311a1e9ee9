"""Stop rules and the supervisor's routing, as pure functions over what has been measured.

Nothing here runs a tool or touches the store, so each rule is tested on plain lists.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from haqa.agents.brains.base import TrialView

Route = Literal["analyst", "planner", "tuner", "finish"]


class Budgets(BaseModel):
    """How much a run may spend, per stage and overall."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    finetune_trials: int = Field(3, ge=0, le=1000, description="fine-tune trials (0: skip stage)")
    deploy_trials: int = Field(8, ge=0, le=10000, description="deploy trials")
    patience: int = Field(4, ge=1, le=1000, description="stop a stage after K trials w/o gain")
    wall_clock_s: float = Field(3600.0, gt=0, description="stop starting trials after this")
    roofline_stop: float = Field(
        0.9, gt=0, le=2.0, description="stop the deploy stage at this roofline efficiency"
    )
    max_invalid_in_row: int = Field(3, ge=1, le=20, description="then fall back to expert")


#: Trial statuses that count against a stage's budget and its patience. ``pruned`` is a repeated
#: proposal (a configuration this run already has a trial of): nothing runs, but it spends a step
#: of the budget as a duplicate suggestion spends one of optuna's ``n_trials`` — otherwise a brain
#: that repeats itself would never reach the end of its budget.
COUNTED_STATUSES = ("ok", "failed", "rejected", "pruned")


def counted(history: Sequence[TrialView]) -> int:
    """Trials that count against a stage's budget: measured, failed, rejected by the gate, or
    pruned as a repeat."""
    return sum(1 for t in history if t.status in COUNTED_STATUSES)


def trials_since_improvement(history: Sequence[TrialView]) -> int:
    """How many counted trials since the best feasible objective last improved (a repeat never
    improves anything)."""
    best: float | None = None
    since = 0
    for t in history:
        if t.status not in COUNTED_STATUSES:
            continue
        if t.feasible and t.objective is not None and (best is None or t.objective > best):
            best = t.objective
            since = 0
        else:
            since += 1
    return since


def stage_stop_reason(
    history: Sequence[TrialView],
    *,
    budget: int,
    patience: int,
    elapsed_s: float,
    wall_clock_s: float,
    roofline: float | None = None,
    roofline_stop: float | None = None,
) -> str | None:
    """Why a stage must stop now, or None to go on."""
    if counted(history) >= budget:
        return f"budget of {budget} trials used"
    if elapsed_s >= wall_clock_s:
        return f"wall-clock limit of {wall_clock_s:.0f} s reached"
    # Patience ends a stage that stopped improving. A stage with nothing feasible yet has not
    # started: its budget ends it, so a search for a type that keeps the accuracy floor is not
    # cut short (SmolLM2 in the demo: Q4_0, Q4_K_M and Q5_K_M missed the floor, and patience 3
    # ended the stage with Q6_K and Q8_0 untried and budget left).
    started = any(t.feasible and t.objective is not None for t in history)
    if started and counted(history) >= patience and trials_since_improvement(history) >= patience:
        return f"no improvement in the last {patience} trials"
    if roofline is not None and roofline_stop is not None and roofline >= roofline_stop:
        return f"roofline efficiency {roofline:.2f} >= {roofline_stop:.2f}"
    return None


def brain_call_cap(budget: int, max_invalid_in_row: int) -> int:
    """The most proposals one stage may ask for in one process, a safety net under the stop rules.

    Every step of a stage ends with a counted trial, a resumed run's recorded decision (at most one
    per stored trial, so at most ``budget``) or the end of the stage, and asks at most
    ``max_invalid_in_row`` answers of the brain and as many of the expert fallback. So a stage
    needs at most ``2 * max_invalid_in_row * (2 * budget + 1)`` proposals; past this cap something
    produces neither a countable action nor an end, and the stage is ended instead of spinning."""
    return 4 * max_invalid_in_row * (budget + 1)


def measured_stop(rt: Any, patience: int) -> int:
    """The patience rule depends on measurements; a replay follows the recorded decisions
    instead (it stops a stage where the recording did), so its patience is unlimited."""
    return 1_000_000 if rt.brain.kind == "replay" else patience


def next_route(*, analysed: bool, finetune_done: bool, deploy_done: bool) -> Route:
    """Supervisor → analyst → planner (loop) → tuner (loop) → finish."""
    if not analysed:
        return "analyst"
    if not finetune_done:
        return "planner"
    if not deploy_done:
        return "tuner"
    return "finish"
