"""``haqa tui``: the app composes the screens; the store is read through its API and a live run
comes from the backend the caller hands in (the TUI never imports the graph)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, ClassVar

from textual.app import App
from textual.binding import Binding

from haqa.errors import HaqaError
from haqa.store import Store
from haqa.tui.backend import RunBackend
from haqa.tui.screens.dialogs import ErrorDialog
from haqa.tui.screens.home import HomeScreen
from haqa.tui.screens.new_run import NewRunScreen
from haqa.tui.screens.replay import ReplayScreen
from haqa.tui.screens.run import RunScreen


class _QuickOpen(Store):
    """Opening the store at start-up gives up after 2 s on a lock (not the 10 s a write waits)."""

    lock_timeout_s = 2.0


def open_store(path: Path, *, create: bool = True) -> Store:
    """The store for the app, or ``HaqaError`` with one line (missing, not DuckDB, locked)."""
    _QuickOpen(path, create=create)
    return Store(path, create=create)


class HaqaApp(App[None]):
    TITLE = "haqa"
    CSS_PATH = "haqa.tcss"
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (120, "-wide")]  # noqa: RUF012
    BINDINGS: ClassVar[list[Binding | tuple[str, str] | tuple[str, str, str]]] = [
        Binding("ctrl+c", "quit", "Quit", show=False, priority=True),
    ]

    def __init__(
        self,
        db: Path,
        *,
        backend: RunBackend | None = None,
        replay: str | None = None,
        run_defaults: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.db = db
        self.backend = backend
        self.replay_run_id = replay
        self.run_defaults = run_defaults or {}
        self.store: Store | None = None
        self.startup_error: str | None = None

    def on_mount(self) -> None:
        if self.backend is not None:
            # The run machinery takes seconds to import: do it now, off the interface thread,
            # so the new-run form opens at once.
            backend = self.backend
            threading.Thread(target=lambda: backend.brains, daemon=True).start()
        try:
            # A new store is made for new runs; a replay needs the file to exist already.
            self.store = open_store(self.db, create=self.replay_run_id is None)
        except HaqaError as exc:
            self.startup_error = str(exc)
        self.push_screen(HomeScreen(self.store))
        if self.startup_error:
            self.push_screen(ErrorDialog(self.startup_error, title="cannot open the store"))
        elif self.replay_run_id:
            self.open_replay(self.replay_run_id)

    def open_replay(self, run_id: str) -> None:
        if self.store is None:
            return
        try:
            screen = ReplayScreen.from_store(self.store, run_id)
        except HaqaError as exc:
            self.push_screen(ErrorDialog(str(exc), title="cannot replay"))
            return
        self.push_screen(screen)

    def open_new_run(self) -> None:
        if self.backend is None or self.store is None:
            self.push_screen(ErrorDialog("this app was started without a way to run agents"))
            return
        self.push_screen(NewRunScreen(self.backend, self.run_defaults))

    def start_run(
        self,
        *,
        config: Any = None,
        resume_run_id: str | None = None,
        replace: Any = None,
    ) -> RunScreen | None:
        if self.backend is None or self.store is None:
            return None
        screen = RunScreen(self.store, self.backend, config=config, resume_run_id=resume_run_id)
        if replace is not None and self.screen is replace:
            self.switch_screen(screen)
        else:
            self.push_screen(screen)
        return screen

    async def action_quit(self) -> None:
        # A live run asks first (stop it, or leave it resumable).
        if isinstance(self.screen, RunScreen):
            await self.screen.action_quit_app()
            return
        self.exit()
