"""The fine-tuning planner: one QLoRA trial per step, within its budget."""

from __future__ import annotations

from typing import Any, Final

from haqa.agents.common import (
    StageOver,
    StepStopped,
    answer_repeat,
    ask_brain,
    ensure_system_prompt,
    report_trial,
    run_trial,
    space_text,
    static_prompt,
)
from haqa.agents.runtime import ROLE_OBSERVATION, RunRuntime
from haqa.agents.supervisor.gate import admit
from haqa.graph.routing import measured_stop, stage_stop_reason
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

    try:
        proposal = ask_brain(
            rt, agent=AGENT, stage=STAGE, static=static, views=views,
            defaults=dict(rt.finetune_defaults), brief=brief,
        )  # fmt: skip
    except StepStopped:  # the supervisor ends the run; the stage stays open for a resume
        return {}
    except StageOver as over:  # the wall clock or the proposal cap
        return finish_stage(rt, str(over))
    if proposal.action == "finish":
        return finish_stage(rt, f"{rt.brain.name} chose to finish: {proposal.thought}")
    config = FinetuneConfig.model_validate(proposal.config)

    # A repeat runs nothing but counts against the budget (see ``answer_repeat``).
    if answer_repeat(rt, agent=AGENT, stage=STAGE, config=proposal.config):
        return {}
    if not admit(rt, agent=AGENT, config=config, raw=proposal.config):
        return {}

    trial = run_trial(
        rt,
        agent=AGENT,
        stage=STAGE,
        tool="run_qlora",
        config=proposal.config,
        work=lambda: rt.toolbox.finetune(config),
    )
    m = trial.metrics
    report_trial(
        rt,
        AGENT,
        trial,
        f": validation accuracy {m.accuracy or 0:.3f}, peak memory "
        f"{format_bytes(m.peak_mem_bytes)}",
    )
    return {}


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
