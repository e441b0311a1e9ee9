"""The live run: the agents' conversation, the trials, the Pareto plot and the brief, updated as
each trace message is written.

The run executes in a background thread (``start``/``resume`` block until it ends). That thread
also reads the trials after each message, so the store is only ever touched from one thread
while the run goes on; the interface thread just draws what it is sent and never waits on a
trial. The thread is a daemon: leaving the app while a trial runs does not wait for it (the run
stays resumable; its finished trials are all stored).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from typing import Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import Footer, Header

from haqa.errors import HaqaError
from haqa.store import MessageRecord, RunRecord, Store, TrialRecord, new_run_id
from haqa.tui.backend import Control, RunBackend
from haqa.tui.messages import RunEnded, RunEvent, RunLoaded
from haqa.tui.screens.dialogs import ErrorDialog, QuitRunDialog
from haqa.tui.screens.panes import PaneScreen
from haqa.tui.state import status_line
from haqa.tui.widgets.run_panes import RunPanes
from haqa.tui.widgets.status_bar import StatusBar


class RunScreen(PaneScreen):
    HELP_TOPIC = "run"
    BINDINGS = [  # noqa: RUF012
        Binding("p", "toggle_pause", "Pause/resume"),
        Binding("x", "stop", "Stop"),
        Binding("t", "next_tab", "Next tab"),
        Binding("z", "maximize_pane", "Zoom", show=False),
        Binding("escape", "back", "Home"),
        Binding("question_mark", "help", "Help"),
        Binding("q", "quit_app", "Quit"),
    ]

    def __init__(
        self,
        store: Store,
        backend: RunBackend,
        *,
        config: Any = None,
        resume_run_id: str | None = None,
        run_id: str | None = None,
    ) -> None:
        super().__init__()
        self.store = store
        self.backend = backend
        self.config = config
        self.run_id = resume_run_id or run_id or new_run_id()
        self.resuming = resume_run_id is not None
        self.control: Control = backend.new_control()
        self.run_record: RunRecord | None = None
        self.messages: list[MessageRecord] = []
        self.trials: list[TrialRecord] = []
        self.running = False
        self.error: str | None = None
        self._started = time.monotonic()
        self._thread: threading.Thread | None = None
        self._run_read = False  # touched by the run's thread only

    def compose(self) -> ComposeResult:
        yield Header()
        yield RunPanes(id="panes")
        yield StatusBar("starting…", id="status")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = f"run {self.run_id}"
        self.running = True
        self._thread = threading.Thread(target=self._work, name=f"haqa-run-{self.run_id}")
        self._thread.daemon = True
        self._thread.start()
        self.set_interval(1.0, self._refresh_status)

    # -- the run's thread ------------------------------------------------------------------

    def _work(self) -> None:
        try:
            if self.resuming:
                self.post_message(
                    RunLoaded(
                        self.store.get_run(self.run_id),
                        self.store.list_messages(self.run_id),
                        self.store.list_trials(self.run_id),
                    )
                )
                self.backend.resume(
                    self.store, self.run_id, on_event=self._on_event, control=self.control
                )
            else:
                self.backend.start(
                    self.store,
                    self.config,
                    run_id=self.run_id,
                    on_event=self._on_event,
                    control=self.control,
                )
        except HaqaError as exc:
            self.post_message(RunEnded(self._safe_run(), str(exc)))
            return
        except Exception as exc:  # a bug in a tool or the graph: show it, keep the app alive
            self.post_message(RunEnded(self._safe_run(), f"{type(exc).__name__}: {exc}"))
            return
        self.post_message(RunEnded(self._safe_run()))

    def _safe_run(self) -> RunRecord | None:
        try:
            return self.store.get_run(self.run_id)
        except HaqaError:
            return None

    def _on_event(self, record: MessageRecord) -> None:
        """Called in the run's thread after each trace message is committed. The store is read
        here, never from the interface thread while the run writes: DuckDB refuses a read-only
        connection in a process that has a read-write one open to the same file."""
        run = None
        if not self._run_read or record.tool_name in ("mark", "result"):
            run = self._safe_run()
            self._run_read = run is not None
        self.post_message(RunEvent(record, self.store.list_trials(record.run_id), run))

    # -- the interface ---------------------------------------------------------------------

    def on_run_event(self, event: RunEvent) -> None:
        if event.run is not None:
            self.run_record = event.run
        self.messages.append(event.record)
        self.trials = event.trials
        self._sync()

    def on_run_loaded(self, event: RunLoaded) -> None:
        self.run_record = event.run
        self.messages = [*event.messages, *self.messages]
        self.trials = event.trials
        self._sync()

    def on_run_ended(self, event: RunEnded) -> None:
        self.running = False
        self.error = event.error
        if event.run is not None:
            self.run_record = event.run
        self._sync()
        if event.error:
            self.app.push_screen(ErrorDialog(event.error, title="the run ended with an error"))
        else:
            status = event.run.status if event.run else "?"
            self.notify(f"run {self.run_id} {status}", timeout=4)

    def _state_word(self) -> str:
        if self.running:
            if self.control.stop.is_set():
                return "stopping after this step…"
            if self.control.pause.is_set():
                return "paused"
            if not self.messages:
                return "starting: checking the model and tasks (a zoo model is built on first use)"
            return "running"
        if self.error:
            return "error"
        return self.run_record.status if self.run_record else "not started"

    def _sync(self) -> None:
        if self.run_record is not None:
            self.query_one(RunPanes).sync(self.run_record, self.messages, self.trials)
        self._refresh_status()

    def _refresh_status(self) -> None:
        bar = self.query_one(StatusBar)
        if self.run_record is None:
            tail = f" │ {self.error}" if self.error else ""
            bar.update(f"{self._state_word()} │ {self.run_id}{tail}")
            return
        record = self.run_record
        if not self.running and record.finished_at is not None:
            elapsed = (record.finished_at - record.created_at).total_seconds()
        else:
            elapsed = time.monotonic() - self._started
        bar.update(
            status_line(
                record,
                self.messages,
                self.trials,
                elapsed_s=elapsed,
                state=self._state_word(),
            )
        )

    def action_toggle_pause(self) -> None:
        if not self.running:
            self.notify("the run is not running")
            return
        if self.control.pause.is_set():
            self.control.pause.clear()
        else:
            self.control.pause.set()
            self.notify("pausing: the step in flight finishes first", timeout=3)
        self._refresh_status()

    def action_stop(self) -> None:
        if not self.running:
            return
        self.control.stop.set()
        self.control.pause.clear()
        self.notify("stopping after the step in flight; the run stays resumable", timeout=4)
        self._refresh_status()

    async def _leave(self, then: str) -> None:
        if not self.running:
            await self._go(then)
            return

        async def chosen(choice: str | None) -> None:
            if choice == "stop":
                self.action_stop()
                await self._go(then, wait=True)
            elif choice == "keep" and then == "quit":
                # If the run's thread holds the file this instant, the run stays "running".
                with contextlib.suppress(HaqaError):
                    self.backend.abandon(self.store, self.run_id)
                await self._go(then)

        self.app.push_screen(QuitRunDialog(then), chosen)

    async def _go(self, then: str, *, wait: bool = False) -> None:
        if wait and self._thread is not None:
            self.notify("waiting for the step in flight to finish…", timeout=10)
            while self._thread.is_alive():
                await asyncio.sleep(0.1)
        if then == "quit":
            self.app.exit()
        else:
            self.dismiss(None)

    async def action_back(self) -> None:
        await self._leave("home")

    async def action_quit_app(self) -> None:
        await self._leave("quit")
