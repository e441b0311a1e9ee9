"""Whatever a brain answers, a run ends within its budget and its time limit (issue #14, part 4).

A local LLM once proposed the same Q4_K_M configuration again and again; each repeat reused the
finished trial, spent no budget and started no trial, so neither the budget nor the time limit
stopped the run (2,345 messages in 10 minutes). These runs use brains that repeat themselves,
answer nothing valid, or are slow, with a toolbox that answers at once with fixed figures: the loops
are under test here, not the measurements, so each run takes a second or two.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from support.instant import (
    InstantToolbox,
    ScriptedBrain,
    drive,
    instant_runtime,
)

from haqa.agents.brains.base import BrainKind, DecisionContext, Proposal
from haqa.agents.brains.react import InvalidAnswer
from haqa.agents.routing import (
    Budgets,
    brain_call_cap,
    counted,
    stage_stop_reason,
    trials_since_improvement,
)
from haqa.agents.runtime import RunControl, RunRuntime
from haqa.agents.search_step import StageOver, decide
from haqa.goal import Goal
from haqa.schemas import (
    DeployConfig,
)
from haqa.store import MessageRecord, Store


class ParrotBrain:
    """Proposes the same configuration of each stage every time (``pause_s`` per answer), and
    keeps what it was told, to check that the repeat reached it."""

    name = "parrot"
    kind: BrainKind = "llm"

    def __init__(self, pause_s: float = 0.0) -> None:
        self.pause_s = pause_s
        self.feedback: list[str] = []
        self.budget_left: list[int] = []

    def propose(self, ctx: DecisionContext) -> Proposal:
        time.sleep(self.pause_s)
        self.feedback += ctx.feedback
        self.budget_left.append(ctx.budget_left)
        config = {"quant_type": "Q4_K_M"} if ctx.stage == "deploy" else {"lora_r": 8}
        return Proposal(action="trial", config=config, thought="Q4_K_M again, surely")


class MumblingBrain:
    """Never answers with an action (an LLM answering in prose), ``pause_s`` per answer."""

    name = "mumbling"
    kind: BrainKind = "llm"

    def __init__(self, pause_s: float = 0.0) -> None:
        self.pause_s = pause_s
        self.calls = 0

    def propose(self, ctx: DecisionContext) -> Proposal:
        self.calls += 1
        time.sleep(self.pause_s)
        raise InvalidAnswer("no tool call: answer by calling propose_trial or finish")


def _search(rt: RunRuntime, stage: str) -> list[Any]:
    return [t for t in rt.store.list_trials(rt.run_id, stage=stage) if t.is_search]


def _reason(rt: RunRuntime, mark: str) -> str:
    return str((rt.last_mark_payload(mark) or {}).get("reason", ""))


@pytest.mark.parametrize(
    ("budgets", "memory_budget", "reason"),
    [
        (Budgets(finetune_trials=2, deploy_trials=5, patience=1000), None, "budget of 5"),
        (Budgets(finetune_trials=2, deploy_trials=1000, patience=3), None, "no improvement"),
        # Over the memory budget: the gate rejects it once; before, every repeat after that was
        # turned away by the gate without a record, so nothing counted at all.
        (Budgets(finetune_trials=2, deploy_trials=5, patience=1000), 1, "budget of 5"),
    ],
    ids=["budget", "patience", "rejected-by-the-gate"],
)
def test_a_brain_that_repeats_itself_ends_within_its_budget(
    store: Store, budgets: Budgets, memory_budget: int | None, reason: str
) -> None:
    """Each repeat is told to the brain as a repeat (with the earlier result) and recorded as a
    ``pruned`` trial that counts against the budget and the patience, so the run ends; the first
    proposal is the only one that runs."""
    brain, box = ParrotBrain(), InstantToolbox()
    rt = instant_runtime(store, brain, budgets, box, goal=Goal(memory_budget_bytes=memory_budget))
    final = drive(rt)

    assert final["route"] == "done" and store.get_run(rt.run_id).status == "finished"
    assert reason in _reason(rt, "deploy_done")
    deploy = _search(rt, "deploy")
    views = rt.views("deploy")
    assert counted(views) <= budgets.deploy_trials
    first, *repeats = deploy
    assert first.status == ("rejected" if memory_budget else "ok") and repeats
    assert {t.status for t in repeats} == {"pruned"}
    assert all(t.repeat_of == first.trial_id for t in repeats)
    # Nothing ran for a repeat: the search measured the first proposal only, and the answer
    # measured it twice more around the baselines (none of it when the gate rejected it).
    assert box.deployed == ([] if memory_budget else ["Q4_K_M"] * 3)
    # The fine-tuning stage repeats too, and ends at its budget of 2 (one trial, one repeat).
    assert [t.status for t in _search(rt, "finetune")] == [
        "rejected" if memory_budget else "ok",
        "pruned",
    ]
    messages = store.list_messages(rt.run_id)
    told = [m for m in messages if m.content.startswith("repeat: you proposed")]
    assert len(told) == len(repeats) + 1  # the deploy repeats and the fine-tuning one
    assert f"configuration of trial {first.trial_id} again" in told[-1].content
    # The brain was told: the repeat is in its feedback, and its budget shrank with each repeat.
    assert any(f.startswith("repeat: you proposed") for f in brain.feedback)
    assert brain.budget_left[-1] < brain.budget_left[-2]
    # The trace stays small: a handful of messages per counted step.
    assert len(messages) < 40 + 6 * len(repeats)


def test_a_resumed_run_reuses_its_stored_trials_and_counts_only_new_repeats(
    store: Store, tmp_path: Path
) -> None:
    """A resumed run's brain proposes again what it proposed before the stop (the replay brain
    does exactly that): each stored trial answers one such proposal as it did then — reused,
    never run again, and a stored repeat is not recorded twice — so the stopped and resumed run
    ends with the same trials as one that was never stopped."""
    script = ["Q4_0", "Q8_0", "Q4_0", "Q6_K", "Q4_0"]
    budgets = Budgets(finetune_trials=0, deploy_trials=10, patience=1000)

    straight = instant_runtime(store, ScriptedBrain(script), budgets, InstantToolbox())
    drive(straight)
    expected = [(t.stage, t.config, t.status) for t in store.list_trials(straight.run_id)]
    assert [t.status for t in _search(straight, "deploy")] == ["ok", "ok", "pruned", "ok", "pruned"]

    other = Store(tmp_path / "resumed.duckdb")
    control = RunControl()
    box = InstantToolbox()

    def stop_at_4(answered: int) -> None:
        if answered == 4:
            control.stop.set()

    # Stopped from outside while the brain answers its 4th proposal (Q6_K): that trial still
    # runs and is stored, then the supervisor stops the run.
    first = instant_runtime(other, ScriptedBrain(script, stop_at_4), budgets, box, control=control)
    assert drive(first)["route"] == "stopped"
    assert [t.status for t in _search(first, "deploy")] == ["ok", "ok", "pruned", "ok"]
    ran_before = list(box.deployed)

    resumed = instant_runtime(other, ScriptedBrain(script), budgets, box, run_id=first.run_id)
    assert drive(resumed)["route"] == "done"
    got = [(t.stage, t.config, t.status) for t in other.list_trials(first.run_id)]
    assert got == expected
    # The resumed run measured no search trial again: only the chosen configuration (the first
    # of three equal ones) twice, around the baselines.
    assert ran_before == ["Q4_0", "Q8_0", "Q6_K"]
    assert box.deployed[len(ran_before) :] == ["Q4_0", "Q4_0"]
    messages = other.list_messages(first.run_id)
    reused = [m.content for m in messages if m.role == "observation" and "reusing" in m.content]
    assert len(reused) == 3  # Q4_0, Q8_0 and Q6_K, once each
    told = [m.content for m in messages if m.content.startswith("repeat: you proposed")]
    assert len(told) == 3  # the stored repeat, told again after the resume, and the new one


@pytest.mark.parametrize("kind", ["repeats", "invalid"])
def test_the_time_limit_holds_whatever_the_brain_answers(store: Store, kind: str) -> None:
    """A brain that only repeats itself, or only answers without an action, under a budget and a
    patience that never stop it: the deploy stage ends at the wall-clock limit, within one trial
    and one answer of the brain after it. The invalid answers are 20 in a row before the expert
    fallback, 2 s of answers in one step: the limit is checked before each question, not only
    between trials."""
    limit_s, trial_s, answer_s = 1.0, 0.1, 0.1
    budgets = Budgets(
        finetune_trials=0, deploy_trials=10_000, patience=1000, wall_clock_s=limit_s,
        max_invalid_in_row=20,
    )  # fmt: skip
    brain = ParrotBrain(answer_s) if kind == "repeats" else MumblingBrain(answer_s)
    ended: list[float] = []

    def watch(m: MessageRecord) -> None:
        if (m.tool_args or {}).get("mark") == "deploy_done":
            ended.append(time.monotonic())

    rt = instant_runtime(store, brain, budgets, InstantToolbox(trial_s), on_event=watch)
    assert drive(rt)["route"] == "done"
    assert "wall-clock limit" in _reason(rt, "deploy_done")
    overrun = ended[0] - rt.started_monotonic - limit_s
    # One trial and one answer, plus up to a second for the trace writes of the step in flight
    # (each is a committed DuckDB write). Checked only between trials, the invalid answers would
    # run 20 x 0.1 s past the limit and more.
    assert overrun <= trial_s + answer_s + 1.0, f"{overrun:.2f} s past the limit"
    assert len(store.list_messages(rt.run_id)) < 200
    # Nor does the answer benchmark anything past the limit: no final race against the
    # defaults (four benchmarks), only the answer's test accuracy.
    roles = [t.role for t in store.list_trials(rt.run_id)]
    assert "final" not in roles and "baseline" not in roles, roles
    assert "limit" in " ".join(m.content for m in store.list_messages(rt.run_id)[-5:])


def test_a_stage_that_never_counts_ends_at_the_proposal_cap(store: Store) -> None:
    """The safety net under the stop rules: a node that asked again and again without ever
    recording a trial (a bug, or a future loop) gets ``StageOver`` once the stage has asked
    ``brain_call_cap`` proposals, however patient the budget and the clock are."""
    budgets = Budgets(deploy_trials=1, max_invalid_in_row=1)
    brain = MumblingBrain()
    rt = instant_runtime(store, brain, budgets, InstantToolbox())

    class Fallback:
        """An expert fallback that always answers: each decision ends, none is recorded."""

        name = "expert"
        kind: BrainKind = "policy"
        calls = 0

        def propose(self, ctx: DecisionContext) -> Proposal:
            self.calls += 1
            return Proposal(action="trial", config={"quant_type": "Q4_0"}, thought="policy: x")

    rt.expert = Fallback()  # type: ignore[assignment]
    ctx = DecisionContext(
        run_id=rt.run_id, agent="tuner", stage="deploy", space=rt.deploy_space, goal=rt.goal,
        static_prompt="", dynamic_prompt="", history=[], defaults={"quant_type": "Q4_K_M"},
        budget_left=1,
    )  # fmt: skip
    cap = brain_call_cap(1, 1)
    with pytest.raises(StageOver, match=f"{cap} proposals"):
        for _ in range(cap):  # each decision: one invalid answer, then the fallback's
            decide(rt, ctx, parse=DeployConfig.model_validate)
    assert brain.calls + rt.expert.calls == cap  # type: ignore[attr-defined]


def test_a_repeat_counts_in_the_stop_rules() -> None:
    """A pruned repeat is a step of the budget and a step without improvement."""
    from haqa.agents.brains.base import TrialView

    def view(i: int, status: str, obj: float | None = None) -> TrialView:
        return TrialView(
            trial_id=i, stage="deploy", config={}, status=status, objective=obj,
            feasible=obj is not None,
        )  # fmt: skip

    hist = [view(1, "ok", 10.0), view(2, "pruned"), view(3, "pruned")]
    assert counted(hist) == 3 and trials_since_improvement(hist) == 2
    common = {"elapsed_s": 0.0, "wall_clock_s": 100.0}
    assert stage_stop_reason(hist, budget=3, patience=9, **common) == "budget of 3 trials used"
    assert stage_stop_reason(hist, budget=9, patience=2, **common) == (
        "no improvement in the last 2 trials"
    )


def test_a_stage_reached_past_the_limit_measures_nothing(store: Store) -> None:
    """The measurements that open a stage (the base model's accuracy, the F16 reference) serve
    only its search: a stage reached after the wall-clock limit ends without them, so they do not
    add trials past the limit either."""
    box = InstantToolbox()
    budgets = Budgets(finetune_trials=2, deploy_trials=5, wall_clock_s=1e-3)
    rt = instant_runtime(store, ParrotBrain(), budgets, box)
    time.sleep(0.01)
    assert drive(rt)["route"] == "done"
    assert store.list_trials(rt.run_id) == [] and box.deployed == []
    assert "wall-clock limit" in _reason(rt, "finetune_done")
    assert "wall-clock limit" in _reason(rt, "deploy_done")


def test_a_stop_while_the_brain_answers_leaves_the_stage_open(store: Store) -> None:
    """The user's stop is checked before each question too, so a run whose brain keeps answering
    nothing stops at once; the step ends without a decision and the stage is not marked done, so a
    resumed run goes on with it."""
    control = RunControl()

    class StoppedWhileMumbling(MumblingBrain):
        def propose(self, ctx: DecisionContext) -> Proposal:
            if self.calls == 1:
                control.stop.set()
            return super().propose(ctx)

    brain = StoppedWhileMumbling()
    budgets = Budgets(finetune_trials=0, deploy_trials=5, max_invalid_in_row=20)
    rt = instant_runtime(store, brain, budgets, InstantToolbox(), control=control)
    assert drive(rt)["route"] == "stopped"
    assert brain.calls == 2
    assert "deploy_done" not in rt.supervisor_marks()
