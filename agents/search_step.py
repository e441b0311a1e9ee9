"""One step of a searching agent (planner or tuner), the same shape for both:

build the dynamic prompt → ask the brain → validate (schema, search space) → repeat check →
memory gate → run the trial → record the trial and tell the agent what happened.

An invalid proposal goes back to the brain as an observation with the reason; after
``max_invalid_in_row`` invalid answers the step falls back to the ``expert`` policy, and the trace
says so. Invalid proposals are counted per run.

A proposal of a configuration this run already has a trial of is a *repeat*: nothing runs, the
brain is told so (with the earlier result), and a ``pruned`` trial is recorded, which counts
against the stage's budget and patience — any brain may repeat itself, and a repeat that cost
nothing would let a run spin forever. The one exception is a resumed run: each trial stored before
it resumed answers one proposal of its configuration as before (a replayed decision reuses its
trial, never runs it twice).

Whatever the brain answers, a stage ends: the wall-clock limit, the user's stop and a cap on the
proposals asked per stage are checked before every question to the brain, not only between trials.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from haqa.agents.brains.base import (
    Brain,
    BrainUnavailable,
    DecisionContext,
    Proposal,
    TrialView,
)
from haqa.agents.brains.react import InvalidAnswer
from haqa.agents.routing import brain_call_cap, counted
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
from haqa.store import TrialRecord, TrialResult, search_config, utcnow
from haqa.trials.isolation import TrialCrash
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
    """The trial history as a compact text table (what an LLM reads every step); a perplexity
    column (÷ the reference's) only when a trial measured it (a goal with a perplexity floor)."""
    if not views:
        return "(no trials yet)"
    with_ppl = any(v.perplexity_ratio is not None for v in views)
    head = ["#", *knobs, "status", "acc", *(["ppl/ref"] if with_ppl else [])]
    head += ["pp t/s", "tg t/s", "mem", "objective", "feasible"]
    rows = [" | ".join(head)]
    for v in views:
        cells = [str(v.trial_id), *[str(v.config.get(k, "")) for k in knobs], v.status]
        cells.append("-" if v.accuracy is None else f"{v.accuracy:.3f}")
        if with_ppl:
            cells.append("-" if v.perplexity_ratio is None else f"{v.perplexity_ratio:.3f}")
        cells += [
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


class StageOver(Exception):
    """The stage must end before the brain is asked again; the message says why."""


class StepStopped(Exception):
    """The user stopped the run while the brain was being asked: the step ends without a
    decision and the stage stays open, so a resumed run goes on with it."""


def stage_budget(rt: RunRuntime, stage: str) -> int:
    """The stage's trial budget."""
    return rt.budgets.finetune_trials if stage == "finetune" else rt.budgets.deploy_trials


def check_before_asking(rt: RunRuntime, stage: str) -> None:
    """Raise ``StageOver`` (or ``StepStopped``) when the brain may not be asked again.

    Checked before *every* question, not only between trials: a brain's answers that run nothing
    (invalid proposals, the fallback's) must not carry a run past its wall-clock limit nor keep a
    stopped run waiting, and a stage that somehow never produces a countable action ends at
    ``brain_call_cap``."""
    if rt.past_deadline:
        raise StageOver(f"wall-clock limit of {rt.budgets.wall_clock_s:.0f} s reached")
    if rt.control.stop.is_set():
        raise StepStopped("stopped by the user")
    cap = brain_call_cap(stage_budget(rt, stage), rt.budgets.max_invalid_in_row)
    if rt.brain_calls.get(stage, 0) >= cap:
        raise StageOver(f"{cap} proposals asked in this stage without reaching its budget")
    rt.brain_calls[stage] = rt.brain_calls.get(stage, 0) + 1


def decide(
    rt: RunRuntime,
    ctx: DecisionContext,
    *,
    parse: Callable[[dict[str, Any]], BaseModel],
) -> tuple[Proposal, BaseModel | None]:
    """Ask the brain until it gives a valid proposal, falling back to the expert policy.

    Raises ``StageOver`` when the stage must end first, ``StepStopped`` when the user stopped the
    run (see ``check_before_asking``)."""
    brain: Brain = rt.brain
    using_expert = brain is rt.expert  # type: ignore[comparison-overlap]
    invalid_in_row = 0
    while True:
        check_before_asking(rt, ctx.stage)
        proposal: Proposal | None = None
        try:
            proposal = brain.propose(ctx)
            reason = _check(rt, ctx, proposal)
        except HaqaError:
            raise
        except BrainUnavailable as exc:  # the endpoint died, answered 5xx or timed out
            _fall_back(rt, ctx, brain, str(exc))
            brain, using_expert, invalid_in_row = rt.expert, True, 0
            continue
        except InvalidAnswer as exc:  # malformed JSON, an unknown tool, no action
            reason = str(exc)
        except Exception as exc:  # an LLM endpoint down, a client error
            reason = f"the brain failed: {failure_reason(exc, 300)}"
        if proposal is not None and not reason:
            if proposal.action == "finish":
                return proposal, None
            full = ctx.space.applicable({**ctx.defaults, **proposal.config})
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


def _fall_back(rt: RunRuntime, ctx: DecisionContext, brain: Brain, reason: str) -> None:
    """Say in the trace that the brain's model did not answer and the expert decides this step."""
    rt.say(
        ctx.agent,
        ROLE_OBSERVATION,
        f"{brain.name} could not answer ({reason}): this step falls back to the expert policy",
        tool_name="fallback",
        tool_args={"brain": brain.name, "reason": reason, "fallback": rt.expert.name},
    )


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
    """A trial of this run with the same configuration that already ended (resume reuses it).

    The configuration is matched exactly, bookkeeping keys included, so a pruned repeat
    (``repeat_of``) or a re-measurement (``remeasure_of``) never stands for the trial itself."""
    key = canonical(config)
    for t in rt.trials(stage):
        if canonical(t.config) == key:
            return t
    return None


def decision_trials(rt: RunRuntime, stage: str, config: dict[str, Any]) -> list[TrialRecord]:
    """This run's trials that answered a proposal of this configuration, in order: its trial and
    any pruned repeats of it (measurements — base, reference, anchor, re-measurement — left out)."""
    key = canonical(search_config(config))
    return [t for t in rt.trials(stage) if t.answers_proposal and canonical(t.search_config) == key]


def _outcome(rt: RunRuntime, stage: str, trial: TrialRecord) -> str:
    """What became of a trial, in a line the brain reads (its re-measurement if it has one)."""
    if trial.status == "rejected":
        return f"the memory gate rejected it ({trial.error})"
    if trial.status != "ok":
        return f"it failed ({trial.error})"
    again = [t for t in rt.trials(stage) if t.remeasure_of == trial.trial_id and t.status == "ok"]
    current = again[-1] if again else trial
    m = current.metrics
    parts = [
        f"accuracy {m.accuracy:.3f}" if m.accuracy is not None else "",
        f"perplexity {m.perplexity / m.reference_perplexity:.3f}x the reference's"
        if m.perplexity and m.reference_perplexity
        else "",
        f"pp {m.prefill_tps:.1f} tok/s" if m.prefill_tps is not None else "",
        f"tg {m.decode_tps:.1f} tok/s" if m.decode_tps is not None else "",
        f"peak {format_bytes(m.peak_mem_bytes)}" if m.peak_mem_bytes is not None else "",
    ]
    measured = ", ".join(p for p in parts if p) or "no figures"
    return f"trial {current.trial_id} measured it: {measured}"


def _tell_repeat(
    rt: RunRuntime, *, agent: str, stage: str, original: TrialRecord, pruned: TrialRecord
) -> None:
    left = stage_budget(rt, stage) - counted(rt.views(stage))
    rt.say(
        agent,
        ROLE_OBSERVATION,
        f"repeat: you proposed the configuration of trial {original.trial_id} again; "
        f"{_outcome(rt, stage, original)}. Nothing ran: the repeat is recorded as trial "
        f"{pruned.trial_id} (pruned) and counts against the budget ({max(left, 0)} left). "
        "Propose a configuration that is not in the history, or finish.",
        tool_name="repeat",
        tool_args={"repeat_of": original.trial_id, "trial_id": pruned.trial_id},
    )


def answer_repeat(rt: RunRuntime, *, agent: str, stage: str, config: dict[str, Any]) -> bool:
    """Answer a proposal of a configuration this run already has a trial of; True when it was
    answered here and the step is over, False when the proposal goes on to the gate and the run.

    A live repeat runs nothing: a ``pruned`` trial (``repeat_of`` the first trial of the
    configuration) is recorded, counted against the stage's budget and patience, and the brain is
    told it repeated itself, with the earlier result. A resumed run replays the decisions it made
    before it stopped, so each trial stored before this process started answers one proposal of
    its configuration as it did then: a measured, failed or rejected one goes on to be reused by
    ``run_trial`` (or the gate), never run again; a stored pruned repeat is told again, and no new
    trial is recorded."""
    same = decision_trials(rt, stage, config)
    if not same:
        return False
    stored = next(
        (t for t in same if rt.stored_before(t.trial_id) and t.trial_id not in rt.claimed), None
    )
    by_id = {t.trial_id: t for t in same}
    if stored is not None:
        rt.claimed.add(stored.trial_id)
        if stored.status != "pruned":
            return False
        first = same[0].trial_id if stored.repeat_of is None else stored.repeat_of
        original = by_id.get(first, same[0])
        _tell_repeat(rt, agent=agent, stage=stage, original=original, pruned=stored)
        return True
    original = same[0]
    now = utcnow()
    pruned = rt.add_trial(
        TrialResult(
            stage=stage,
            tool="repeat",
            config={**config, "repeat_of": original.trial_id},
            status="pruned",
            error=f"repeat of trial {original.trial_id}: nothing ran",
            started_at=now,
            finished_at=now,
        )
    )
    _tell_repeat(rt, agent=agent, stage=stage, original=original, pruned=pruned)
    return True


def run_trial(
    rt: RunRuntime,
    *,
    agent: str,
    stage: Literal["finetune", "deploy"],
    tool: str,
    config: dict[str, Any],
    work: Callable[[], TrialMetrics],
) -> TrialRecord:
    """Run ``work`` as a trial, or return this run's finished trial of the same configuration.

    The reuse is what makes a resumed run safe (a measurement that was stored is never taken
    twice); a search proposal reaches it only through ``answer_repeat``, which lets a stored trial
    answer one replayed decision of a resumed run and turns every other repeat into a counted
    ``pruned`` trial."""
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
    with the expert fallback), record the decision. A ``trial`` proposal is complete and valid.

    Raises ``StageOver`` when the stage must end before the brain answers (the node ends it),
    ``StepStopped`` when the user stopped the run (the node ends the step, the supervisor the
    run)."""
    from haqa.agents.brains.readonly import RunReadOnlyTools

    space = rt.finetune_space if stage == "finetune" else rt.deploy_space
    feedback = last_feedback(rt, agent)
    budget_left = stage_budget(rt, stage) - counted(views)
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


@dataclass(frozen=True)
class StepSpec:
    """What differs between the planner's step and the tuner's: the stage, the tool a trial
    runs, the defaults the brain starts from, how a proposal becomes a config, how it is
    measured and told, and how the stage ends. (Code, not data crossing a boundary: a frozen
    dataclass, not a pydantic model.)"""

    agent: str
    stage: Literal["finetune", "deploy"]
    tool: str
    defaults: dict[str, Any]
    parse: Callable[[dict[str, Any]], FinetuneConfig | DeployConfig]
    work: Callable[[Any], TrialMetrics]
    summary: Callable[[Any, TrialRecord], str]
    finish: Callable[[str], dict[str, Any]]
    extra: str = ""


def search_step(
    rt: RunRuntime, spec: StepSpec, *, static: str, views: list[TrialView], brief: dict[str, Any]
) -> dict[str, Any]:
    """Ask the brain → validate → repeat check → memory gate → run → tell: one trial of a
    searching agent, or the end of its stage."""
    from haqa.agents.supervisor.gate import admit  # the gate records through this module

    try:
        proposal = ask_brain(
            rt, agent=spec.agent, stage=spec.stage, static=static, views=views,
            defaults=spec.defaults, brief=brief, extra=spec.extra,
        )  # fmt: skip
    except StepStopped:  # the supervisor ends the run; the stage stays open for a resume
        return {}
    except StageOver as over:  # the wall clock or the proposal cap
        return spec.finish(str(over))
    if proposal.action == "finish":
        return spec.finish(f"{rt.brain.name} chose to finish: {proposal.thought}")
    config = spec.parse(proposal.config)
    # A repeat runs nothing but counts against the budget (see ``answer_repeat``).
    if answer_repeat(rt, agent=spec.agent, stage=spec.stage, config=proposal.config):
        return {}
    if not admit(rt, agent=spec.agent, config=config, raw=proposal.config):
        return {}
    trial = run_trial(
        rt,
        agent=spec.agent,
        stage=spec.stage,
        tool=spec.tool,
        config=proposal.config,
        work=lambda: spec.work(config),
    )
    report_trial(rt, spec.agent, trial, spec.summary(config, trial))
    return {}
