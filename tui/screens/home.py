"""The home screen: the runs in the store, newest first, and the way to start a new one."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static

from haqa.errors import HaqaError
from haqa.store import RunRecord, Store
from haqa.tui.screens.dialogs import ErrorDialog
from haqa.tui.screens.help import HelpScreen
from haqa.tui.state import goal_words, result_headline

_STATUS_STYLE = {"finished": "green", "running": "cyan", "failed": "red", "stopped": "yellow"}


class RunsTable(DataTable[Any]):
    def __init__(self) -> None:
        super().__init__(id="runs", cursor_type="row", zebra_stripes=True)

    def on_mount(self) -> None:
        # The model comes last: at 80 columns it is the one that scrolls off (most runs share it).
        for key, label in (
            ("id", "run"),
            ("date", "UTC"),
            ("status", "status"),
            ("best", "best"),
            ("goal", "goal"),
            ("brain", "brain"),
            ("model", "model"),
        ):
            self.add_column(label, key=key)

    def show(self, runs: list[RunRecord]) -> None:
        self.clear()
        for r in runs:
            self.add_row(
                r.run_id,
                r.created_at.strftime("%m-%d %H:%M"),
                Text(r.status, style=_STATUS_STYLE.get(r.status, "")),
                result_headline(r),
                goal_words(r),
                r.brain,
                r.model,
                key=r.run_id,
            )


class HomeScreen(Screen[None]):
    BINDINGS = [  # noqa: RUF012
        Binding("n", "new_run", "New run"),
        Binding("enter", "open_run", "Replay", show=False),
        Binding("o", "open_run", "Replay"),
        Binding("r", "resume_run", "Resume"),
        Binding("g", "refresh", "Refresh"),
        Binding("question_mark", "help", "Help"),
        Binding("q", "app.quit", "Quit"),
    ]

    def __init__(self, store: Store | None) -> None:
        super().__init__()
        self.store = store

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="home-note")
        yield RunsTable()
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = str(self.store.path) if self.store else "no store"
        self.action_refresh()

    def on_screen_resume(self) -> None:
        self.action_refresh()

    def action_refresh(self) -> None:
        note = self.query_one("#home-note", Static)
        if self.store is None:
            note.update("No store is open: restart with --db pointing at a haqa DuckDB file.")
            return
        try:
            runs = self.store.list_runs()
        except HaqaError as exc:
            note.update(str(exc))
            return
        note.update(
            f"{len(runs)} run(s) in {self.store.path.name}. "
            "n: new run · o/enter: replay · r: resume a stopped run · ?: help"
            if runs
            else "No runs yet: press n to start one."
        )
        self.query_one(RunsTable).show(runs)

    def selected_run_id(self) -> str | None:
        table = self.query_one(RunsTable)
        if table.row_count == 0:
            return None
        row_key, _ = table.coordinate_to_cell_key(table.cursor_coordinate)
        return str(row_key.value)

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.action_open_run()

    def action_open_run(self) -> None:
        run_id = self.selected_run_id()
        if run_id is not None:
            self.app.open_replay(run_id)  # type: ignore[attr-defined]

    def action_resume_run(self) -> None:
        run_id = self.selected_run_id()
        if run_id is None or self.store is None:
            return
        run = self.store.get_run(run_id)
        if run.status == "finished" or run.brain == "manual":
            self.app.push_screen(
                ErrorDialog(
                    f"run {run_id} is {run.status} ({run.brain}): only a stopped agent run "
                    "can be resumed; press o to replay it",
                    title="cannot resume",
                )
            )
            return
        self.app.start_run(resume_run_id=run_id)  # type: ignore[attr-defined]

    def action_new_run(self) -> None:
        self.app.open_new_run()  # type: ignore[attr-defined]

    def action_help(self) -> None:
        self.app.push_screen(HelpScreen("home"))
