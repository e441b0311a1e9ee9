"""The trials of a run as a table: one row per stored trial, sortable by any column.

Rejected and failed rows stay visible with their reason; measurements around the search
(base, reference, baseline, test) are marked before their configuration.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.text import Text
from textual.widgets import DataTable

from haqa.store import TrialRecord
from haqa.tui.state import config_summary
from haqa.units import format_bytes

COLUMNS = (
    ("id", "#"),
    ("stage", "stage"),
    ("config", "config"),
    ("acc", "acc"),
    ("pp", "pp t/s"),
    ("tg", "tg t/s"),
    ("mem", "memory"),
    ("status", "status"),
    ("note", "reason"),
)
_STATUS_STYLE = {"ok": "green", "failed": "red", "rejected": "yellow", "pruned": "dim"}


def _num(value: float | None, fmt: str) -> Text:
    return Text("-" if value is None else format(value, fmt), justify="right")


def sort_value(trial: TrialRecord, column: str) -> Any:
    """What a column sorts by: numbers as numbers (missing last), text as text."""
    m = trial.metrics
    numeric = {
        "id": trial.trial_id,
        "acc": m.accuracy,
        "pp": m.prefill_tps,
        "tg": m.decode_tps,
        "mem": m.peak_mem_bytes,
    }
    if column in numeric:
        value = numeric[column]
        return (value is None, value if value is not None else 0)
    text = {
        "stage": trial.stage,
        "config": f"{trial.role or ''} {config_summary(trial)}",
        "status": trial.status,
        "note": trial.error or "",
    }
    return (False, text.get(column, ""))


class TrialsTable(DataTable[Any]):
    """Sort with a click on a header, or ``s`` for the next column (``S`` reverses)."""

    BINDINGS = [  # noqa: RUF012 (Textual reads a class attribute)
        ("s", "sort_next", "Sort"),
        ("S", "sort_reverse", "Reverse"),
    ]

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, cursor_type="row", zebra_stripes=True)
        self._trials: dict[int, TrialRecord] = {}
        self.sort_column = "id"
        self.sort_reverse = False

    def on_mount(self) -> None:
        for key, label in COLUMNS:
            self.add_column(label, key=key)

    @property
    def trial_ids(self) -> list[int]:
        """Trial ids in display order (what a test compares with the store)."""
        return [int(str(row.key.value)) for row in self.ordered_rows]

    def sync(self, trials: Sequence[TrialRecord]) -> None:
        """Show exactly these trials (adds the new ones; rebuilds only if some went away)."""
        wanted = {t.trial_id: t for t in trials}
        if any(tid not in wanted for tid in self._trials):
            self.clear()
            self._trials = {}
        added = False
        for tid, trial in wanted.items():
            if tid not in self._trials:
                self._trials[tid] = trial
                self.add_row(*self._cells(trial), key=str(tid))
                added = True
        if added:
            self._apply_sort()

    def _cells(self, t: TrialRecord) -> list[Any]:
        m = t.metrics
        status = Text(t.status, style=_STATUS_STYLE.get(t.status, ""))
        note = (t.error or "").replace("\n", " ")
        config = Text(f"{t.role}: " if t.role else "", style="italic cyan")
        # Narrow terminals get a shorter summary so that the status column stays in view.
        width = 20 if self.app.size.width < 120 else 44
        config.append(config_summary(t, width - len(config)))
        return [
            Text(str(t.trial_id), justify="right"),
            t.stage,
            config,
            _num(m.accuracy, ".3f"),
            _num(m.prefill_tps, ".1f"),
            _num(m.decode_tps, ".1f"),
            Text(format_bytes(m.peak_mem_bytes), justify="right"),
            status,
            Text(note[:60] + ("…" if len(note) > 60 else ""), style="dim"),
        ]

    def _apply_sort(self) -> None:
        if not self._trials:
            return
        column = self.sort_column
        present = [t for t in self._trials.values() if sort_value(t, column)[0] is False]
        missing = [t for t in self._trials.values() if sort_value(t, column)[0] is True]
        present.sort(key=lambda t: (sort_value(t, column), t.trial_id), reverse=self.sort_reverse)
        # Rows without the value stay last whichever way the column is sorted.
        rank = {t.trial_id: i for i, t in enumerate(present + missing)}
        self.sort("id", key=lambda cell: rank[int(str(cell))])

    def sort_by(self, column: str, *, reverse: bool | None = None) -> None:
        if reverse is None:
            reverse = (not self.sort_reverse) if column == self.sort_column else False
        self.sort_column, self.sort_reverse = column, reverse
        self._apply_sort()

    def on_data_table_header_selected(self, event: DataTable.HeaderSelected) -> None:
        event.stop()
        self.sort_by(str(event.column_key.value))

    def action_sort_next(self) -> None:
        keys = [k for k, _ in COLUMNS]
        self.sort_by(keys[(keys.index(self.sort_column) + 1) % len(keys)], reverse=False)

    def action_sort_reverse(self) -> None:
        self.sort_by(self.sort_column, reverse=not self.sort_reverse)
