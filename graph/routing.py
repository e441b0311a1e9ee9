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


def counted(history: Sequence[TrialView]) -> int:
    """Trials that count against a stage's budget: measured, failed or rejected by the gate."""
    return sum(1 for t in history if t.status in ("ok", "failed", "rejected"))


def trials_since_improvement(history: Sequence[TrialView]) -> int:
    """How many counted trials since the best feasible objective last improved."""
    best: float | None = None
    since = 0
    for t in history:
        if t.status not in ("ok", "failed", "rejected"):
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
    if counted(history) >= patience and trials_since_improvement(history) >= patience:
        return f"no improvement in the last {patience} trials"
    if roofline is not None and roofline_stop is not None and roofline >= roofline_stop:
        return f"roofline efficiency {roofline:.2f} >= {roofline_stop:.2f}"
    return None


def measured_stop(rt: Any, patience: int) -> int:
    """The patience rule depends on measurements; a replay follows the recorded decisions
    instead (it stops a stage where the recording did), so its patience is unlimited."""
    return 1_000_000 if getattr(rt.brain, "kind", "") == "replay" else patience


def next_route(*, analysed: bool, finetune_done: bool, deploy_done: bool) -> Route:
    """Supervisor → analyst → planner (loop) → tuner (loop) → finish."""
    if not analysed:
        return "analyst"
    if not finetune_done:
        return "planner"
    if not deploy_done:
        return "tuner"
    return "finish"
