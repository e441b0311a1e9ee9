"""The fine-tuning planner: one QLoRA trial per step, within its budget."""

from __future__ import annotations

from typing import Any, Final

from haqa.agents.routing import measured_stop, stage_stop_reason
from haqa.agents.runtime import ROLE_OBSERVATION, RunRuntime
from haqa.agents.search_step import (
    StepSpec,
    ensure_system_prompt,
    run_trial,
    search_step,
    space_text,
    static_prompt,
)
from haqa.schemas import FinetuneConfig
from haqa.units import format_bytes

AGENT = "planner"
STAGE: Final = "finetune"


def base_trial(rt: RunRuntime) -> Any:
    """The base model's accuracy, measured once: what fine-tuning must beat."""
    for t in rt.trials(STAGE):
        if t.role == "base":
            return t
    trial = run_trial(
        rt,
        agent=AGENT,
        stage=STAGE,
        tool="evaluate",
        config={"role": "base"},
        work=rt.toolbox.evaluate_base,
    )
    acc = trial.metrics.accuracy
    rt.say(
        AGENT,
        ROLE_OBSERVATION,
        f"base model accuracy on the validation split: {acc:.3f}"
        if acc is not None
        else f"base evaluation failed: {trial.error}",
    )
    return trial


def best_adapter(rt: RunRuntime) -> tuple[str | None, float | None]:
    """The adapter of the most accurate fine-tune, if it beats the base model."""
    views = rt.views(STAGE)
    base = next((t for t in rt.trials(STAGE) if t.role == "base"), None)
    base_acc = base.metrics.accuracy if base else None
    ok = [v for v in views if v.feasible and v.accuracy is not None]
    if not ok:
        return None, base_acc
    best = max(ok, key=lambda v: v.accuracy or 0.0)
    if base_acc is not None and (best.accuracy or 0.0) <= base_acc:
        return None, base_acc
    trial = next(t for t in rt.trials(STAGE) if t.trial_id == best.trial_id)
    return trial.metrics.adapter_path, best.accuracy


def planner_step(rt: RunRuntime) -> dict[str, Any]:
    brief = (rt.last_mark_payload("analysed") or {}).get("brief", {})
    static = static_prompt(
        AGENT,
        model=rt.model_summary,
        goal=rt.goal.describe(),
        brief=brief.get("text", "(none)"),
        space=space_text(rt.finetune_space),
    )
    ensure_system_prompt(rt, AGENT, static)
    if rt.past_deadline and not rt.views(STAGE):
        # Past the limit before the first fine-tune: no search follows, so the base model's
        # accuracy, which only that search needs, is not measured either.
        return finish_stage(rt, f"wall-clock limit of {rt.budgets.wall_clock_s:.0f} s reached")
    base_trial(rt)
    views = rt.views(STAGE)
    stop = stage_stop_reason(
        views,
        budget=rt.budgets.finetune_trials,
        patience=measured_stop(rt, rt.budgets.patience),
        elapsed_s=rt.elapsed_s,
        wall_clock_s=rt.budgets.wall_clock_s,
    )
    if stop is None and rt.control.stop.is_set():
        stop = "stopped by the user"
    if stop:
        return finish_stage(rt, stop)

    spec = StepSpec(
        agent=AGENT,
        stage=STAGE,
        tool="run_qlora",
        defaults=dict(rt.finetune_defaults),
        parse=FinetuneConfig.model_validate,
        work=rt.toolbox.finetune,
        summary=lambda _config, trial: (
            f": validation accuracy {trial.metrics.accuracy or 0:.3f}, peak memory "
            f"{format_bytes(trial.metrics.peak_mem_bytes)}"
        ),
        finish=lambda reason: finish_stage(rt, reason),
    )
    return search_step(rt, spec, static=static, views=views, brief=brief)


def finish_stage(rt: RunRuntime, reason: str) -> dict[str, Any]:
    adapter, accuracy = best_adapter(rt)
    rt.mark(
        "finetune_done",
        f"fine-tuning stage finished: {reason}; best adapter: {adapter or 'none (base model)'}",
        reason=reason,
        adapter=adapter,
        accuracy=accuracy,
    )
    return {}
