"""One step of a searching agent (planner or tuner), the same shape for both:

build the dynamic prompt → ask the brain → validate (schema, search space) → memory gate →
run the trial (or reuse it if this run already finished it: resume never runs a trial twice) →
record the trial and tell the agent what happened.

An invalid proposal goes back to the brain as an observation with the reason; after
``max_invalid_in_row`` invalid answers the step falls back to the ``expert`` policy, and the trace
says so. Invalid proposals are counted per run.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from haqa.agents.brains.base import Brain, DecisionContext, Proposal, TrialView
from haqa.agents.brains.react import InvalidAnswer
from haqa.agents.isolation import TrialCrash
from haqa.agents.runtime import (
    ROLE_DECISION,
    ROLE_INVALID,
    ROLE_OBSERVATION,
    ROLE_SYSTEM,
    ROLE_THOUGHT,
    ROLE_USER,
    RunRuntime,
    canonical,
)
from haqa.config import validation_message
from haqa.errors import HaqaError, failure_reason
from haqa.schemas import DeployConfig, FinetuneConfig, TrialMetrics
from haqa.store import TrialRecord, TrialResult, utcnow
from haqa.units import format_bytes

PROMPTS = Path(__file__).parent


def static_prompt(role: str, **values: str) -> str:
    """``agents/<role>/prompt.md`` with its ``{placeholders}`` filled."""
    text = (PROMPTS / role / "prompt.md").read_text(encoding="utf-8")
    for key, value in values.items():
        text = text.replace("{" + key + "}", value)
    return text


def space_text(ctx_space: Any) -> str:
    lines = []
    for k in ctx_space.knobs:
        lines.append(f"- {k.name} ({k.allowed()}; default {k.default}): {k.description}")
    return "\n".join(lines)


def history_table(views: list[TrialView], knobs: list[str]) -> str:
    """The trial history as a compact text table (what an LLM reads every step)."""
    if not views:
        return "(no trials yet)"
    head = ["#", *knobs, "status", "acc", "pp t/s", "tg t/s", "mem", "objective", "feasible"]
    rows = [" | ".join(head)]
    for v in views:
        cells = [str(v.trial_id), *[str(v.config.get(k, "")) for k in knobs], v.status]
        cells += [
            "-" if v.accuracy is None else f"{v.accuracy:.3f}",
            "-" if v.prefill_tps is None else f"{v.prefill_tps:.1f}",
            "-" if v.decode_tps is None else f"{v.decode_tps:.1f}",
            format_bytes(v.peak_mem_bytes),
            "-" if v.objective is None else f"{v.objective:.4g}",
            "yes" if v.feasible else "no",
        ]
        if v.error:
            cells.append(f"({v.error[:80]})")
        rows.append(" | ".join(cells))
    return "\n".join(rows)


def ensure_system_prompt(rt: RunRuntime, agent: str, text: str) -> None:
    """Write the agent's static prompt to the trace once per run."""
    for m in rt.messages():
        if m.agent == agent and m.role == ROLE_SYSTEM:
            return
    rt.say(agent, ROLE_SYSTEM, text)


def decide(
    rt: RunRuntime,
    ctx: DecisionContext,
    *,
    parse: Callable[[dict[str, Any]], BaseModel],
) -> tuple[Proposal, BaseModel | None]:
    """Ask the brain until it gives a valid proposal, falling back to the expert policy."""
    brain: Brain = rt.brain
    using_expert = brain is rt.expert  # type: ignore[comparison-overlap]
    invalid_in_row = 0
    while True:
        proposal: Proposal | None = None
        try:
            proposal = brain.propose(ctx)
            reason = _check(rt, ctx, proposal)
        except HaqaError:
            raise
        except InvalidAnswer as exc:  # malformed JSON, an unknown tool, no action
            reason = str(exc)
        except Exception as exc:  # an LLM endpoint down, a client error
            reason = f"the brain failed: {failure_reason(exc, 300)}"
        if proposal is not None and not reason:
            if proposal.action == "finish":
                return proposal, None
            full = {**ctx.defaults, **proposal.config}
            return Proposal(action="trial", config=full, thought=proposal.thought), parse(full)
        rt.invalid_proposals += 1
        invalid_in_row += 1
        rt.say(
            ctx.agent,
            ROLE_INVALID,
            f"invalid proposal from {brain.name}: {reason}",
            tool_args=proposal.model_dump() if proposal else None,
        )
        ctx.feedback = [*ctx.feedback, f"Your last proposal was invalid: {reason}"]
        if invalid_in_row < rt.budgets.max_invalid_in_row:
            continue
        if using_expert:
            return Proposal(action="finish", thought="expert policy found no valid proposal"), None
        rt.say(
            ctx.agent,
            ROLE_OBSERVATION,
            f"{invalid_in_row} invalid proposals in a row from {brain.name}: this step falls "
            "back to the expert policy",
        )
        brain, using_expert, invalid_in_row = rt.expert, True, 0


def _check(rt: RunRuntime, ctx: DecisionContext, proposal: Proposal) -> str:
    """Why the proposal cannot run ('' when it can): search space, then the config model."""
    if proposal.thought:
        rt.say(ctx.agent, ROLE_THOUGHT, proposal.thought)
    if proposal.action == "finish":
        return ""
    try:
        in_space = {k: v for k, v in proposal.config.items() if k in ctx.space.names}
        ctx.space.validate_config(in_space)
        # The config model forbids unknown keys and checks every value's range.
        ctx_parse = DeployConfig if ctx.stage == "deploy" else FinetuneConfig
        ctx_parse.model_validate({**ctx.defaults, **proposal.config})
    except HaqaError as exc:
        return str(exc)
    except ValidationError as exc:
        return validation_message(exc)
    return ""


def record_decision(rt: RunRuntime, agent: str, proposal: Proposal) -> None:
    rt.say(
        agent,
        ROLE_DECISION,
        f"{proposal.action}: {canonical(proposal.config) if proposal.config else ''}",
        tool_args={
            "action": proposal.action,
            "config": proposal.config,
            "thought": proposal.thought,
        },
    )


def find_finished(rt: RunRuntime, stage: str, config: dict[str, Any]) -> TrialRecord | None:
    """A trial of this run with the same configuration that already ended (resume reuses it)."""
    key = canonical(config)
    for t in rt.trials(stage):
        if canonical(t.config) == key:
            return t
    return None


def run_trial(
    rt: RunRuntime,
    *,
    agent: str,
    stage: Literal["finetune", "deploy"],
    tool: str,
    config: dict[str, Any],
    work: Callable[[], TrialMetrics],
) -> TrialRecord:
    """Run ``work`` as a trial, or return this run's finished trial of the same configuration."""
    done = find_finished(rt, stage, config)
    if done is not None:
        rt.say(
            agent,
            ROLE_OBSERVATION,
            f"trial {done.trial_id} with this configuration already finished ({done.status}); "
            "reusing it",
        )
        return done
    started = utcnow()
    try:
        metrics = work()
        status: Literal["ok", "failed"] = "ok"
        error = None
    except (HaqaError, TrialCrash) as exc:
        metrics, status, error = TrialMetrics(), "failed", str(exc)
    except Exception as exc:
        metrics, status = TrialMetrics(), "failed"
        error = failure_reason(exc)
    return rt.add_trial(
        TrialResult(
            stage=stage,
            tool=tool,
            config=config,
            metrics=metrics,
            status=status,
            error=error,
            started_at=started,
            finished_at=utcnow(),
        ),
    )


def record_rejection(
    rt: RunRuntime, *, agent: str, stage: str, config: dict[str, Any], reason: str, predicted: int
) -> TrialRecord:
    now = utcnow()
    trial = rt.add_trial(
        TrialResult(
            stage=stage,
            tool="memory_gate",
            config=config,
            metrics=TrialMetrics(predicted_peak_mem_bytes=predicted),
            status="rejected",
            error=reason,
            started_at=now,
            finished_at=now,
        ),
    )
    rt.say(
        "supervisor",
        ROLE_OBSERVATION,
        f"memory gate rejected trial {trial.trial_id}: {reason}",
        tool_name="estimate_memory",
        tool_args=config,
        tool_result={"predicted_peak_mem_bytes": predicted},
    )
    return trial


def dynamic_prompt(
    rt: RunRuntime,
    *,
    views: list[TrialView],
    knobs: list[str],
    budget_left: int,
    feedback: list[str],
    extra: str = "",
) -> str:
    parts = [
        f"Trials so far ({len(views)}), budget left: {budget_left}:",
        history_table(views, knobs),
    ]
    if extra:
        parts.append(extra)
    if feedback:
        parts.append("Feedback:\n" + "\n".join(f"- {f}" for f in feedback))
    parts.append("Answer with exactly one action: a trial to run (a configuration) or finish.")
    return "\n\n".join(parts)


def last_feedback(rt: RunRuntime, agent: str, limit: int = 3) -> list[str]:
    """The latest observations and rejections addressed to this agent (dynamic prompt)."""
    out = [
        m.content
        for m in rt.messages()
        if m.role in (ROLE_OBSERVATION, ROLE_INVALID) and m.agent in (agent, "supervisor")
    ]
    return out[-limit:]


def ask_brain(
    rt: RunRuntime,
    *,
    agent: str,
    stage: Literal["finetune", "deploy"],
    static: str,
    views: list[TrialView],
    defaults: dict[str, Any],
    brief: dict[str, Any],
    extra: str = "",
) -> Proposal:
    """One decision of a searching agent: write its dynamic prompt, ask the brain (validated,
    with the expert fallback), record the decision. A ``trial`` proposal is complete and valid."""
    from haqa.agents.readonly import RunReadOnlyTools

    space = rt.finetune_space if stage == "finetune" else rt.deploy_space
    budget = rt.budgets.finetune_trials if stage == "finetune" else rt.budgets.deploy_trials
    feedback = last_feedback(rt, agent)
    budget_left = budget - sum(1 for v in views if v.status in ("ok", "failed", "rejected"))
    prompt = dynamic_prompt(
        rt, views=views, knobs=space.names, budget_left=budget_left, feedback=feedback, extra=extra
    )
    rt.say(agent, ROLE_USER, prompt)
    ctx = DecisionContext(
        run_id=rt.run_id,
        agent=agent,
        stage=stage,
        space=space,
        goal=rt.goal,
        static_prompt=static,
        dynamic_prompt=prompt,
        history=views,
        defaults=defaults,
        budget_left=budget_left,
        feedback=feedback,
        brief=brief,
        tools=RunReadOnlyTools(rt, stage, defaults),
        trace=rt.trace,
        seed=rt.seed,
    )
    parse = DeployConfig.model_validate if stage == "deploy" else FinetuneConfig.model_validate
    proposal, parsed = decide(rt, ctx, parse=parse)
    record_decision(rt, agent, proposal)
    if parsed is None:
        return Proposal(action="finish", thought=proposal.thought)
    return proposal


def report_trial(rt: RunRuntime, agent: str, trial: TrialRecord, summary: str) -> None:
    """Tell the agent how its trial went (the observation of its ReAct step)."""
    if trial.status == "ok":
        rt.say(agent, ROLE_OBSERVATION, f"trial {trial.trial_id}{summary}")
    else:
        rt.say(agent, ROLE_OBSERVATION, f"trial {trial.trial_id} failed: {trial.error}")
