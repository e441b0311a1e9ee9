"""The TUI driven with Textual's Pilot: home, replay, the new-run form, and the errors a user
can cause. The store is filled deterministically (``support.demo_store.fill_store``)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from support.demo_store import RUN_ID, demo_copy
from support.pilot import sync, until
from textual.widgets import DataTable

from haqa.cli.tui_cmd import LiveBackend
from haqa.store import Store
from haqa.tui.app import HaqaApp
from haqa.tui.screens.dialogs import ErrorDialog
from haqa.tui.screens.home import HomeScreen
from haqa.tui.screens.new_run import NewRunScreen
from haqa.tui.screens.replay import ReplayScreen
from haqa.tui.widgets.conversation import ConversationView
from haqa.tui.widgets.timeline import Timeline
from haqa.tui.widgets.trials_table import TrialsTable

SIZE = (80, 24)


@pytest.fixture()
def demo_db(tmp_path: Path) -> Path:
    path = tmp_path / "haqa.duckdb"
    demo_copy(path)
    return path


def _error_text(app: HaqaApp) -> str:
    assert isinstance(app.screen, ErrorDialog), f"expected an error dialog, got {app.screen}"
    return app.screen.message


@sync
async def test_home_lists_the_stored_runs_newest_first(demo_db: Path) -> None:
    app = HaqaApp(demo_db, backend=LiveBackend())
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert isinstance(app.screen, HomeScreen)
        table = app.screen.query_one("#runs", DataTable)
        ids = [str(r.key.value) for r in table.ordered_rows]
        assert ids == [r.run_id for r in Store(demo_db).list_runs()]
        assert ids == ["20261123-130000-stop", RUN_ID]
        await pilot.press("down", "enter")
        await pilot.pause()
        assert isinstance(app.screen, ReplayScreen) and app.screen.run.run_id == RUN_ID


@sync
async def test_replay_steps_show_the_trials_stored_by_then(demo_db: Path) -> None:
    store = Store(demo_db)
    messages = store.list_messages(RUN_ID)
    trials = store.list_trials(RUN_ID)
    app = HaqaApp(demo_db, backend=LiveBackend(), replay=RUN_ID)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, ReplayScreen)
        table = screen.query_one(TrialsTable)
        conversation = screen.query_one(ConversationView)
        # opens at the end: the whole run
        assert table.trial_ids == [t.trial_id for t in trials]
        await pilot.press("home")
        assert screen.step == 0 and table.trial_ids == [] and conversation.count == 0
        for k in range(1, len(messages) + 1):
            await pilot.press("right")
            assert screen.step == k
            expected = [
                t.trial_id
                for t in trials
                if k == len(messages) or t.finished_at <= messages[k - 1].created_at
            ]
            assert table.trial_ids == expected, f"step {k}"
            assert conversation.count == k
        await pilot.press("right")  # past the end stays at the end
        assert screen.step == len(messages)
        # back again: panes shrink with the step
        for _ in range(5):
            await pilot.press("left")
        assert conversation.count == len(messages) - 5


@sync
async def test_replay_jumps_to_a_trial(demo_db: Path) -> None:
    app = HaqaApp(demo_db, backend=LiveBackend(), replay=RUN_ID)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, ReplayScreen)
        table = screen.query_one(TrialsTable)
        await pilot.press("home", "n")
        assert table.trial_ids == [1]
        await pilot.press("n")
        assert table.trial_ids == [1, 2]
        await pilot.press("j")
        await pilot.pause()
        await pilot.press("5", "enter")
        await pilot.pause()
        assert app.screen is screen
        assert table.trial_ids[-1] == 5 and len(table.trial_ids) == 5
        # the step shows trial 5 and the one before it does not
        await pilot.press("left")
        assert 5 not in table.trial_ids
        # the speed steps between 1 and 32 steps per second
        await pilot.press(*["plus"] * 6)
        assert screen.speed == 32.0
        await pilot.press(*["minus"] * 6)
        assert screen.speed == 1.0
        # play from the start: the steps advance by themselves; space pauses them. A press waits
        # until the app is idle (up to a second), so the checks read state, not tick counts.
        timeline = screen.query_one(Timeline)
        await pilot.press("home", "space")
        assert timeline.playing
        await until(pilot, lambda: screen.step >= 2, 10, "two steps played")
        await pilot.press("space")
        assert not timeline.playing
        reached = screen.step
        await pilot.pause(2.5)  # two and a half ticks at 1 step per second
        assert screen.step == reached
        # at the end, play starts over from the first step
        await pilot.press("end", "space")
        assert timeline.playing and screen.step < screen.total
        await pilot.press("space")


@sync
async def test_trials_table_sorts_and_keeps_failed_and_rejected_rows(demo_db: Path) -> None:
    app = HaqaApp(demo_db, backend=LiveBackend(), replay=RUN_ID)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        table = app.screen.query_one(TrialsTable)
        table.sort_by("tg", reverse=True)
        await pilot.pause()
        assert table.trial_ids[:4] == [5, 4, 9, 8]  # 74.5, 61, 58 (Q4_K_M default), 30 (F16)
        statuses = {t.trial_id: t.status for t in Store(demo_db).list_trials(RUN_ID)}
        assert {statuses[i] for i in table.trial_ids} >= {"ok", "failed", "rejected"}
        rejected = table.get_row("6")
        assert "budget" in str(rejected[-1])


@sync
async def test_a_run_id_that_is_not_in_the_store_is_a_message(demo_db: Path) -> None:
    app = HaqaApp(demo_db, backend=LiveBackend(), replay="no-such-run")
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert "no-such-run" in _error_text(app) and "haqa runs" in _error_text(app)
        await pilot.press("enter")
        assert isinstance(app.screen, HomeScreen)


@sync
async def test_replaying_from_a_store_that_does_not_exist_is_a_message(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.duckdb"
    app = HaqaApp(missing, backend=LiveBackend(), replay=RUN_ID)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert "does not exist" in _error_text(app)
    assert not missing.exists()


@sync
async def test_a_file_that_is_not_duckdb_is_a_message(tmp_path: Path) -> None:
    bad = tmp_path / "notes.duckdb"
    bad.write_text("these are my notes, not a database\n" * 100)
    app = HaqaApp(bad, backend=LiveBackend())
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert "not a valid DuckDB database file" in _error_text(app)
    assert bad.read_text().startswith("these are my notes")  # left untouched


@pytest.mark.slow
@sync
async def test_a_store_locked_by_another_process_is_a_message(demo_db: Path) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import duckdb, sys, time
                con = duckdb.connect({str(demo_db)!r})
                print("locked", flush=True)
                time.sleep(60)
                """
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        app = HaqaApp(demo_db, backend=LiveBackend())
        async with app.run_test(size=SIZE) as pilot:
            t0 = time.monotonic()
            await pilot.pause()
            while not isinstance(app.screen, ErrorDialog) and time.monotonic() - t0 < 15:
                await pilot.pause(0.1)
            assert "locked by another process" in _error_text(app)
    finally:
        holder.kill()
        holder.wait()


@sync
async def test_new_run_form_explains_bad_fields_and_starts_nothing(demo_db: Path) -> None:
    app = HaqaApp(demo_db, backend=LiveBackend())
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        await pilot.press("n")
        await pilot.pause()
        form = app.screen
        assert isinstance(form, NewRunScreen)
        form.query_one("#goal").value = "fastest"  # type: ignore[attr-defined]
        form.query_one("#memory_budget").value = "lots"  # type: ignore[attr-defined]
        form.query_one("#deploy_trials").value = "-3"  # type: ignore[attr-defined]
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert app.screen is form
        goal_error = str(form.query_one("#goal-error").render())
        assert "unknown goal 'fastest'" in goal_error
        assert "memory budget" in str(form.query_one("#memory_budget-error").render())
        # the goal and budget are fixed; the trial budget is checked by the run's own model
        form.query_one("#goal").value = "workload:512+64"  # type: ignore[attr-defined]
        form.query_one("#memory_budget").value = "4GiB"  # type: ignore[attr-defined]
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert app.screen is form
        assert str(form.query_one("#goal-error").render()) == ""
        assert "greater than or equal to 0" in str(form.query_one("#deploy_trials-error").render())
    assert len(Store(demo_db).list_runs()) == 2  # nothing was started
