"""The TUI's view of a run, as pure functions over a store filled deterministically (fixed ids and
timestamps: ``support.demo_store``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.demo_store import RUN_ID, demo_copy

from haqa.store import Store
from haqa.tui import state


@pytest.fixture()
def demo_store(tmp_path: Path) -> Store:
    return Store(demo_copy(tmp_path / "haqa.duckdb"))


def test_trials_at_a_step_are_those_finished_before_that_message(demo_store: Store) -> None:
    messages = demo_store.list_messages(RUN_ID)
    trials = demo_store.list_trials(RUN_ID)
    assert state.trials_at(messages, trials, 0) == []
    # The base evaluation is stored after the `analysed` mark (step 7), before the next message.
    assert state.trials_at(messages, trials, 7) == []
    assert [t.trial_id for t in state.trials_at(messages, trials, 8)] == [1]
    assert state.trials_at(messages, trials, len(messages)) == trials
    # Each observation naming a trial sees that trial: the rule agrees with the trace.
    for k, m in enumerate(messages, start=1):
        if m.role == "observation" and m.content.startswith("trial "):
            named = int(m.content.split()[1].rstrip(":"))
            assert named in [t.trial_id for t in state.trials_at(messages, trials, k)]


def test_status_best_and_budget_follow_the_goal(demo_store: Store) -> None:
    run = demo_store.get_run(RUN_ID)
    trials = demo_store.list_trials(RUN_ID)
    best = state.best_so_far(run, trials)
    assert best is not None and best.trial_id == 5 and best.objective == 74.5
    # rejected and failed count against the budget; measurements around the search do not
    assert state.budget_used(run, trials) == (5, 5)
    assert state.stage_of(demo_store.list_messages(RUN_ID)) == "finished"
    assert [p[0] for p in state.pareto_front(state.pareto_points(trials))] == [5]
    assert state.goal_words(run) == "decode ≤2pt 2.0 GiB"


def test_step_of_trial_is_the_first_step_showing_it(demo_store: Store) -> None:
    messages = demo_store.list_messages(RUN_ID)
    trials = demo_store.list_trials(RUN_ID)
    for t in trials:
        k = state.step_of_trial(messages, trials, t.trial_id)
        assert k is not None
        assert t in state.trials_at(messages, trials, k)
        assert t not in state.trials_at(messages, trials, k - 1)
    assert state.step_of_trial(messages, trials, 999) is None
