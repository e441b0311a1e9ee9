"""Honest speed on a noisy machine: an anchor configuration measured again every few trials.

The anchor is the run's first measured deployment. Every ``anchor_every`` deploy trials the
tuner measures it again and compares its decode tokens/s with its reference level (its first
measurement, or the level the run settled on after a lasting change). A change beyond
``drift_threshold`` means the machine's speed moved (another job, thermal limits, a noisy
neighbour), so the trials measured since the last steady anchor cannot be compared with the
rest. The anchor is re-tried after a pause; once it is steady again, or once the re-tries run out
and the new level is taken as the machine's, the affected trials are marked and each is measured
again; the re-measurement replaces it in the search (``remeasure_of``).

Everything is read from the store: an anchor trial records its drift and the trials it marked,
so a run killed between the anchor and the re-measurements resumes with them still due.
"""

from __future__ import annotations

import time
from typing import Final

from pydantic import BaseModel

from haqa.agents.runtime import ROLE_OBSERVATION, RunRuntime
from haqa.agents.search_step import run_trial
from haqa.schemas import DeployConfig, TrialMetrics
from haqa.store import TrialRecord, search_trials

AGENT = "tuner"
STAGE: Final = "deploy"


class AnchorState(BaseModel):
    """What the store says about the anchor now."""

    anchor: TrialRecord | None = None  # the first measured deployment
    level: float | None = None  # decode tok/s the anchor shows on a steady machine
    since_anchor: int = 0  # search trials measured since the last anchor measurement
    last_drifted: bool = False  # the latest anchor measurement was off its level
    retries: int = 0  # drifted anchor measurements in a row
    steady_after: int = 0  # trial id of the last steady anchor (0: none yet)
    pending: list[int] = []  # marked trials not yet measured again


def _measured_proposal(t: TrialRecord) -> bool:
    """A proposal's own measurement (not a re-measurement), finished."""
    return t.answers_proposal and t.status == "ok"


def anchor_state(rt: RunRuntime) -> AnchorState:
    trials = rt.trials(STAGE)
    first = next((t for t in trials if _measured_proposal(t) and t.metrics.decode_tps), None)
    if first is None:
        return AnchorState()
    state = AnchorState(anchor=first, level=first.metrics.decode_tps)
    marked: list[int] = []
    for t in trials:
        if t.role == "anchor" and t.status != "ok":
            # A failed check is not re-tried, and it ends a drift episode.
            state.since_anchor, state.last_drifted, state.retries = 0, False, 0
        elif t.role == "anchor":
            check = t.metrics
            state.since_anchor = 0
            state.last_drifted = bool(check.drifted)
            state.retries = state.retries + 1 if state.last_drifted else 0
            if not state.last_drifted:
                state.steady_after = t.trial_id
            if check.level:
                state.level = check.level
            marked = list(check.marked or [])
        elif _measured_proposal(t) and t.trial_id > first.trial_id:
            state.since_anchor += 1
    done = {t.remeasure_of for t in trials if t.remeasure_of is not None}
    state.pending = [i for i in marked if i not in done]
    return state


def measurement_step(rt: RunRuntime, adapter: str | None, *, closing: bool = False) -> bool:
    """Run the measurement work that is due (re-measurements first, then the anchor); True when
    something ran, so the tuner starts no new trial in this step. ``closing``: the stage is about
    to end, so trials measured since the last check are checked now, however few."""
    policy = rt.measurement
    if not policy.anchor_every:
        return False
    state = anchor_state(rt)
    if state.anchor is None or not state.level:
        return False
    if state.pending:
        _remeasure(rt, state.pending, adapter)
        return True
    due = state.since_anchor >= (1 if closing else policy.anchor_every)
    if due or state.last_drifted:
        _measure_anchor(rt, state, adapter)
        return True
    return False


def _affected(rt: RunRuntime, state: AnchorState, *, level_changed: bool) -> list[int]:
    """The trials to measure again. After a passing drift: those measured since the last steady
    anchor (the anchor's own first measurement, the reference, excepted). After a lasting change
    of level: every measured trial, since all were measured at the old level."""
    anchor_id = state.anchor.trial_id if state.anchor else -1
    after = 0 if level_changed else state.steady_after
    return [
        t.trial_id
        for t in search_trials(rt.trials(STAGE))
        if t.trial_id > after
        and t.status == "ok"
        and (level_changed or t.trial_id != anchor_id or after > 0)
    ]


def _measure_anchor(rt: RunRuntime, state: AnchorState, adapter: str | None) -> None:
    """Measure the anchor again as an anchor trial, and say what the check found."""
    policy = rt.measurement
    assert state.anchor is not None and state.level is not None
    if state.last_drifted and policy.anchor_retry_pause_s:
        time.sleep(policy.anchor_retry_pause_s)  # let a passing load pass
    anchor_id, level = state.anchor.trial_id, state.level
    config = state.anchor.search_config
    deploy = DeployConfig.model_validate(config)
    seq = sum(1 for t in rt.trials(STAGE) if t.role == "anchor") + 1

    def work() -> TrialMetrics:
        measured = rt.toolbox.deploy(deploy, adapter)
        return _anchor_check(rt, state, measured, anchor_id=anchor_id, level=level)

    trial = run_trial(
        rt,
        agent=AGENT,
        stage=STAGE,
        tool="anchor",
        config={"role": "anchor", "anchor_seq": seq, **config},
        work=work,
    )
    _report_anchor(rt, trial, anchor_id=anchor_id, level=level)


def _anchor_check(
    rt: RunRuntime, state: AnchorState, m: TrialMetrics, *, anchor_id: int, level: float
) -> TrialMetrics:
    """The anchor's new measurement as a check: its drift from ``level``, a lasting change of
    level once the re-tries ran out, and the trials it marks for re-measurement."""
    policy = rt.measurement
    tps = m.decode_tps or 0.0
    drift = tps / level - 1.0
    drifted = abs(drift) > policy.drift_threshold
    check = m.model_copy(update={"anchor_of": anchor_id, "drift": drift, "drifted": drifted})
    if drifted and state.retries >= policy.anchor_retries:
        # The re-tries ran out: the machine's speed changed for good. The new level is the
        # machine's now, and the affected trials are measured again at it.
        check = check.model_copy(update={"drifted": False, "level": tps, "level_changed": True})
    if check.level_changed or (not drifted and state.retries):
        marked = _affected(rt, state, level_changed=bool(check.level_changed))
        check = check.model_copy(update={"marked": marked})
    return check


def _report_anchor(rt: RunRuntime, trial: TrialRecord, *, anchor_id: int, level: float) -> None:
    """Say what the anchor check found: a failure, a drift to re-try, the trials it marked for
    re-measurement (a ``drift`` mark), or a steady machine."""
    policy = rt.measurement
    check = trial.metrics
    head = (
        f"anchor check (trial {anchor_id} measured again as trial {trial.trial_id}): decode "
        f"{check.decode_tps or 0:.1f} tok/s, {check.drift or 0:+.1%} from its level {level:.1f}"
    )
    if trial.status != "ok":
        rt.say(AGENT, ROLE_OBSERVATION, f"{head}: the anchor failed ({trial.error})")
    elif check.drifted:
        rt.say(
            AGENT,
            ROLE_OBSERVATION,
            f"{head}: drift beyond {policy.drift_threshold:.0%}, the machine's speed moved; "
            f"the anchor is re-tried after {policy.anchor_retry_pause_s:g} s",
        )
    elif check.marked:
        marked = ", ".join(str(i) for i in check.marked)
        why = (
            "the speed level changed for good and is taken as the machine's new level"
            if check.level_changed
            else "steady again"
        )
        rt.mark(
            "drift",
            f"measurement drift: {why}; trials {marked} measured during the drift are marked "
            "for re-measurement",
            anchor_trial=trial.trial_id,
            marked=check.marked,
            drift=check.drift,
        )
    else:
        rt.say(AGENT, ROLE_OBSERVATION, f"{head}: steady")


def _remeasure(rt: RunRuntime, trial_ids: list[int], adapter: str | None) -> None:
    by_id = {t.trial_id: t for t in rt.trials(STAGE)}
    for tid in trial_ids:
        old = by_id[tid]
        config = old.search_config
        deploy = DeployConfig.model_validate(config)
        new = run_trial(
            rt,
            agent=AGENT,
            stage=STAGE,
            tool="deploy_trial",
            config={**config, "remeasure_of": tid},
            work=lambda d=deploy: rt.toolbox.deploy(d, adapter),  # type: ignore[misc]
        )
        before, after = old.metrics.decode_tps or 0.0, new.metrics.decode_tps or 0.0
        rt.say(
            AGENT,
            ROLE_OBSERVATION,
            f"trial {tid} measured again as trial {new.trial_id} ({new.status}): decode "
            f"{before:.1f} -> {after:.1f} tok/s; the new measurement replaces it",
        )
