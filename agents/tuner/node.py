"""The kernel tuner: one deployment trial per step (quant type + llama.cpp settings)."""

from __future__ import annotations

from typing import Any, Final

from haqa.agents.brains.base import TrialView
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
from haqa.agents.tuner.anchor import measurement_step
from haqa.schemas import DeployConfig, TrialMetrics
from haqa.stats import compare_paired, resolution_statement
from haqa.store import TrialRecord
from haqa.units import format_bytes

AGENT = "tuner"
STAGE: Final = "deploy"


def hardware_defaults(brief: dict[str, Any], logical_cores: int) -> dict[str, Any]:
    """Where a practitioner starts: decode threads = physical cores (decode is bandwidth-bound and
    hyper-threads share the load/store units), prompt threads = logical cores (compute-bound),
    llama.cpp's default batches, f16 KV cache."""
    physical = int(brief.get("physical_cores") or logical_cores)
    return {
        "n_threads": max(1, min(physical, logical_cores)),
        "n_threads_batch": logical_cores,
        "n_batch": 2048,
        "n_ubatch": 512,
        "flash_attn": False,
        "type_k": "f16",
        "type_v": "f16",
    }


def _reference_trial(rt: RunRuntime) -> TrialRecord | None:
    return next((t for t in rt.trials(STAGE) if t.role == "reference"), None)


def deployed_summary(config: DeployConfig, m: TrialMetrics, reference: TrialMetrics | None) -> str:
    """A deploy trial in a line: its weights (type, recipe, imatrix: ``Q4_K_M+imatrix``), their
    effective bits (from its header, a fallback named as such), accuracy, its paired comparison
    with the reference on the same questions, speed."""
    bits = (
        f", {m.bits_per_weight:.2f} bits/weight"
        + (f", {m.fallback_share:.0%} fell back" if m.fallback_share else "")
        if m.bits_per_weight
        else ""
    )
    paired = ""
    ref = reference.correct if reference is not None else None
    if ref and m.correct and len(ref) == len(m.correct):
        paired = f" [vs reference: {compare_paired(ref, m.correct).summary()}]"
    if m.perplexity and m.reference_perplexity:
        paired += (
            f", perplexity {m.perplexity:.2f} ({m.perplexity / m.reference_perplexity:.3f}x "
            f"the reference's {m.reference_perplexity:.2f})"
        )
    return (
        f" ({config.weights.label}{bits}): accuracy {m.accuracy or 0:.3f}{paired}, pp "
        f"{m.prefill_tps or 0:.1f} tok/s, tg {m.decode_tps or 0:.1f} tok/s, peak "
        f"{format_bytes(m.peak_mem_bytes)}"
    )


def reference_accuracy(rt: RunRuntime, adapter: str | None) -> float | None:
    """Accuracy of the fine-tuned model as F16 GGUF: what deployed types are compared with."""
    known = _reference_trial(rt)
    if known is not None:
        return known.metrics.accuracy
    trial = run_trial(
        rt,
        agent=AGENT,
        stage=STAGE,
        tool="evaluate",
        config={"role": "reference", "quant_type": "F16", "adapter": adapter},
        work=lambda: rt.toolbox.reference(adapter),
    )
    acc = trial.metrics.accuracy
    n = len(trial.metrics.correct or "")
    coarse = resolution_statement(n, rt.goal.max_accuracy_drop) if n else None
    rt.say(
        AGENT,
        ROLE_OBSERVATION,
        f"reference accuracy ({'fine-tuned' if adapter else 'base'} model, F16 GGUF): {acc:.3f}"
        + (f" on {n} validation questions" if n else "")
        + f"; a deployment is feasible at >= {acc - rt.goal.max_accuracy_drop:.3f}"
        + (
            f" with perplexity <= {1 + rt.goal.max_perplexity_increase:g}x the reference's"
            if rt.goal.max_perplexity_increase is not None
            else ""
        )
        + (f". Note: {coarse}" if coarse else "")
        if acc is not None
        else f"reference evaluation failed: {trial.error}",
    )
    return acc


def tuner_step(rt: RunRuntime) -> dict[str, Any]:
    brief = (rt.last_mark_payload("analysed") or {}).get("brief", {})
    finetuned = rt.last_mark_payload("finetune_done") or {}
    adapter = finetuned.get("adapter")
    static = static_prompt(
        AGENT,
        model=rt.model_summary,
        goal=rt.goal.describe(),
        brief=brief.get("text", "(none)"),
        space=space_text(rt.deploy_space),
    )
    ensure_system_prompt(rt, AGENT, static)
    if rt.past_deadline and not rt.views(STAGE):
        # Past the limit before the first deployment: no search follows, so the reference
        # accuracy, which only its trials are judged by, is not measured either.
        return _finish(rt, f"wall-clock limit of {rt.budgets.wall_clock_s:.0f} s reached")
    reference = reference_accuracy(rt, adapter)
    views = rt.views(STAGE, reference)
    stop = _stop_reason(rt, views, brief)
    # Anchor checks and re-measurements come before the next trial, and before the stage ends
    # (a closing check covers the trials since the last one), so the answer is not taken from
    # trials measured during a drift. Not past the wall clock, nor after the user's stop.
    if (
        not rt.control.stop.is_set()
        and rt.elapsed_s < rt.budgets.wall_clock_s
        and measurement_step(rt, adapter, closing=stop is not None)
    ):
        return {}
    if stop:
        return _finish(rt, stop)

    spec = _step_spec(rt, brief, reference, adapter)
    return search_step(rt, spec, static=static, views=views, brief=brief)


def _stop_reason(rt: RunRuntime, views: list[TrialView], brief: dict[str, Any]) -> str | None:
    """Why the deployment stage ends now (budget, patience, wall clock, roofline or the user's
    stop), or None while it goes on."""
    roofline = _best_roofline(rt, views, brief)
    stop = stage_stop_reason(
        views,
        budget=rt.budgets.deploy_trials,
        patience=measured_stop(rt, rt.budgets.patience),
        elapsed_s=rt.elapsed_s,
        wall_clock_s=rt.budgets.wall_clock_s,
        roofline=roofline if rt.brain.kind != "replay" else None,
        roofline_stop=rt.budgets.roofline_stop,
    )
    if stop is None and rt.control.stop.is_set():
        stop = "stopped by the user"
    return stop


def _step_spec(
    rt: RunRuntime, brief: dict[str, Any], reference: float | None, adapter: str | None
) -> StepSpec:
    """The deployment search step: hardware-aware defaults, the reference accuracy as context,
    and a trial that deploys the proposed configuration."""
    logical = max(int(c) for c in (rt.deploy_space.knob("n_threads").choices or (1,)))
    # Onto the space: a recorded grid may fix a knob at a value the hardware default is not.
    defaults = rt.deploy_space.within({"quant_type": "Q4_K_M", **hardware_defaults(brief, logical)})
    extra = (
        f"Reference accuracy: {reference:.3f}; allowed drop {rt.goal.max_accuracy_drop:.3f}."
        if reference is not None
        else ""
    )
    rise = rt.goal.max_perplexity_increase
    if rise is not None:
        extra += (
            f" Perplexity on validation prose may be at most {1 + rise:g}x the reference's "
            "(column ppl/ref)."
        )
    return StepSpec(
        agent=AGENT,
        stage=STAGE,
        tool="deploy_trial",
        defaults=defaults,
        extra=extra,
        parse=DeployConfig.model_validate,
        work=lambda config: rt.toolbox.deploy(config, adapter),
        summary=lambda config, trial: _summary(rt, config, trial),
        finish=lambda reason: _finish(rt, reason),
    )


def _best_roofline(rt: RunRuntime, views: list[TrialView], brief: dict[str, Any]) -> float | None:
    """The roofline efficiency of the best feasible deployment so far, where it means anything:
    a model that fits in the last-level cache is not bound by DRAM bandwidth, so its
    "efficiency" can exceed 1 and says nothing about headroom; it stops nothing."""
    best = max((v for v in views if v.feasible), key=lambda v: v.objective or 0.0, default=None)
    if best is None:
        return None
    trial = next(t for t in rt.trials(STAGE) if t.trial_id == best.trial_id)
    read, llc = trial.metrics.bytes_per_token, brief.get("llc_bytes")
    return None if read and llc and read <= llc else trial.metrics.roofline_efficiency


def _summary(rt: RunRuntime, config: DeployConfig, trial: TrialRecord) -> str:
    ref = _reference_trial(rt)
    return deployed_summary(config, trial.metrics, ref.metrics if ref else None)


def _finish(rt: RunRuntime, reason: str) -> dict[str, Any]:
    rt.mark("deploy_done", f"deployment stage finished: {reason}", reason=reason)
    return {}
