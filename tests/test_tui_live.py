"""A real run driven from the TUI, as a user would: the new-run form with the expert brain on the
tiny zoo model, pause and stop while the analyst measures, resume from the home screen, watch
messages and trials arrive, then replay the finished run step by step.

Also measures how fast a key press is handled while the run's tools work (printed; the bound
asserted is generous: this is a 2-core machine shared with other work)."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import pytest
from support.pilot import sync, until
from support.runs import small_run_config
from textual.pilot import Pilot

from haqa.cli.tui_cmd import LiveBackend
from haqa.store import Store
from haqa.tui.app import HaqaApp
from haqa.tui.screens.home import HomeScreen
from haqa.tui.screens.new_run import NewRunScreen
from haqa.tui.screens.replay import ReplayScreen
from haqa.tui.screens.run import RunScreen
from haqa.tui.widgets.conversation import ConversationView
from haqa.tui.widgets.trials_table import TrialsTable

pytestmark = pytest.mark.slow
RUN_LIMIT_S = 420.0


async def _key_latency(
    pilot: Pilot[None], screen: RunScreen, presses: int = 8
) -> tuple[list[float], list[float]]:
    """For each press of ``t`` (next tab): seconds until its action runs, and until the app is
    idle again with the new tab drawn (what ``pilot.press`` waits for)."""
    handled: list[float] = []
    original = screen.action_next_tab

    def timed() -> None:
        handled.append(time.perf_counter())
        original()

    screen.action_next_tab = timed  # type: ignore[method-assign]
    to_action, to_idle = [], []
    try:
        for _ in range(presses):
            t0 = time.perf_counter()
            await pilot.press("t")
            to_idle.append(time.perf_counter() - t0)
            to_action.append(handled[-1] - t0)
            await pilot.pause(0.15)
    finally:
        screen.action_next_tab = original  # type: ignore[method-assign]
    return to_action, to_idle


@sync
async def test_new_run_live_stop_resume_then_replay(tiny_model: Path, tmp_path: Path) -> None:
    db = tmp_path / "haqa.duckdb"
    # Trials in child processes, as `haqa tui` runs them: the keys stay responsive meanwhile.
    defaults = small_run_config(isolate_trials=True).model_dump(mode="json")
    app = HaqaApp(db, backend=LiveBackend(), run_defaults=defaults)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        await pilot.press("n")
        await until(pilot, lambda: isinstance(app.screen, NewRunScreen), 30, "the form")
        form = app.screen
        form.query_one("#finetune_trials").value = "1"  # type: ignore[attr-defined]
        form.query_one("#deploy_trials").value = "1"  # type: ignore[attr-defined]
        assert str(form.query_one("#brain").value) == "expert"  # type: ignore[attr-defined]
        await pilot.press("ctrl+s")
        await pilot.pause()
        errors = {str(e.id): str(e.render()) for e in form.query(".form-error.-shown")}
        assert not errors, errors
        await until(pilot, lambda: isinstance(app.screen, RunScreen), 10, "the run screen")
        screen = app.screen
        assert isinstance(screen, RunScreen)
        run_id = screen.run_id

        # While the analyst's microbenchmarks run, keys are handled at once.
        await until(
            pilot,
            lambda: any(m.tool_name == "microbench_kernels" for m in screen.messages),
            RUN_LIMIT_S,
            "the microbenchmarks to start",
        )
        to_action, to_idle = await _key_latency(pilot, screen)
        ms = [f"{x * 1000:.0f}" for x in to_action]
        print(
            f"\nkey press while a tool runs ({len(to_action)} presses): action runs after "
            f"median {statistics.median(to_action) * 1000:.1f} ms (each: {', '.join(ms)} ms); "
            f"redrawn and idle after median {statistics.median(to_idle) * 1000:.1f} ms, "
            f"max {max(to_idle) * 1000:.1f} ms"
        )
        assert screen.running, "the analyst finished before the keys were measured"
        assert statistics.median(to_action) < 5.0  # generous: a 2-core machine under load

        # Pause (honoured after the step in flight), then stop: the run stays resumable.
        await pilot.press("p")
        assert screen.control.pause.is_set()
        assert "paused" in str(screen.query_one("#status").render())
        await pilot.press("x")
        await until(pilot, lambda: not screen.running, RUN_LIMIT_S, "the run to stop")
        assert screen.error is None
        store = Store(db)
        assert store.get_run(run_id).status == "stopped"
        stopped_at = len(store.list_messages(run_id))
        assert store.list_messages(run_id)[-1].content.startswith("stopped by the user")
        assert not [m for m in store.list_messages(run_id) if m.agent == "tuner"]

        # Resume from the home screen; messages and trials arrive while it runs.
        await pilot.press("escape")
        await until(pilot, lambda: isinstance(app.screen, HomeScreen), 10, "home")
        await pilot.press("r")
        await until(pilot, lambda: isinstance(app.screen, RunScreen), 10, "the resumed run")
        screen = app.screen
        assert isinstance(screen, RunScreen) and screen.run_id == run_id
        await until(pilot, lambda: bool(screen.trials), RUN_LIMIT_S, "a trial")
        seen_live = (screen.running, len(screen.messages), len(screen.trials))
        await until(pilot, lambda: not screen.running, RUN_LIMIT_S, "the run to finish")
        assert screen.error is None, screen.error
        assert seen_live[0] and seen_live[1] > stopped_at and seen_live[2] >= 1
        run = store.get_run(run_id)
        assert run.status == "finished"
        messages = store.list_messages(run_id)
        trials = store.list_trials(run_id)
        assert [m.seq for m in screen.messages] == [m.seq for m in messages]
        assert screen.query_one(TrialsTable).trial_ids == [t.trial_id for t in trials]
        assert {"supervisor", "analyst", "planner", "tuner"} <= {m.agent for m in messages}

        # Replay it: at every step the table holds the trials stored by then.
        await pilot.press("escape")
        await until(pilot, lambda: isinstance(app.screen, HomeScreen), 10, "home")
        await pilot.press("o")
        await until(pilot, lambda: isinstance(app.screen, ReplayScreen), 10, "the replay")
        replay = app.screen
        assert isinstance(replay, ReplayScreen) and replay.run.run_id == run_id
        table = replay.query_one(TrialsTable)
        conversation = replay.query_one(ConversationView)
        await pilot.press("home")
        for k in range(1, len(messages) + 1):
            await pilot.press("right")
            expected = [
                t.trial_id
                for t in trials
                if k == len(messages) or t.finished_at <= messages[k - 1].created_at
            ]
            assert table.trial_ids == expected, f"step {k}"
            assert conversation.count == k
        # Every trial shows up before the run's result is written, except what the
        # supervisor measures while writing it, and each trial's own observation sees it.
        assert table.trial_ids == [t.trial_id for t in trials]
