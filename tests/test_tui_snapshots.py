"""Snapshots of the home, live-run and replay screens at 80x24 and 200x50, from a store filled
deterministically (fixed ids and timestamps). Review a changed snapshot before
``pytest --snapshot-update``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from support.demo_store import RUN_ID, demo_copy, fixed_clock, write_demo_run
from textual.pilot import Pilot

from haqa.cli.tui_cmd import LiveBackend
from haqa.store import Store
from haqa.tui.app import HaqaApp
from haqa.tui.screens.run import RunScreen

pytestmark = pytest.mark.slow


class ScriptedBackend(LiveBackend):
    """The real form validation, with a run that writes a fixed trace instead of measuring:
    what the live screen shows is then the same on every machine."""

    def start(self, store: Store, config: Any, *, run_id: str, on_event: Any, control: Any) -> None:
        with fixed_clock():
            write_demo_run(store, run_id=run_id, on_event=on_event)


@pytest.fixture()
def demo_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A relative path: the header shows it, and it must not change between runs."""
    monkeypatch.chdir(tmp_path)
    demo_copy(tmp_path / "haqa.duckdb")
    return Path("haqa.duckdb")


@pytest.mark.parametrize("size", [(80, 24), (200, 50)])
def test_home(snap_compare: Any, demo_db: Path, size: tuple[int, int]) -> None:
    assert snap_compare(HaqaApp(demo_db, backend=LiveBackend()), terminal_size=size)


@pytest.mark.parametrize("size", [(80, 24), (200, 50)])
def test_replay_mid_run(snap_compare: Any, demo_db: Path, size: tuple[int, int]) -> None:
    app = HaqaApp(demo_db, backend=LiveBackend(), replay=RUN_ID)
    # home, then 18 steps: the tuner mid-way through the deploy stage
    press = ["home", *["right"] * 18]
    assert snap_compare(app, terminal_size=size, press=press)


def test_replay_pareto_tab(snap_compare: Any, demo_db: Path) -> None:
    app = HaqaApp(demo_db, backend=LiveBackend(), replay=RUN_ID)
    assert snap_compare(app, terminal_size=(120, 30), press=["t"])


@pytest.mark.parametrize("size", [(80, 24), (200, 50)])
def test_live_run_finished(
    snap_compare: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: tuple[int, int]
) -> None:
    monkeypatch.chdir(tmp_path)
    db = Path("live.duckdb")
    app = HaqaApp(db, backend=ScriptedBackend())

    async def start(pilot: Pilot[None]) -> None:
        await pilot.pause()
        screen = RunScreen(app.store, app.backend, config=None, run_id=RUN_ID)  # type: ignore[arg-type]
        await app.push_screen(screen)
        while screen.running or screen.run_record is None:
            await pilot.pause(0.05)
        app.clear_notifications()  # the "run finished" toast times out: keep it out
        await pilot.wait_for_scheduled_animations()
        await pilot.pause(0.3)  # the conversation's last scroll-to-end settles

    assert snap_compare(app, terminal_size=size, run_before=start)
