"""What every command shares: the store option, the console, and recording a manual run."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from haqa.paths import default_db_path
from haqa.store import RunRecord, Store, TrialRecord, TrialResult

console = Console()
err_console = Console(stderr=True)
if not console.is_terminal:
    # Piped or captured output: wide tables stay readable instead of folding at 80 columns.
    console.width = max(console.width, 160)

DbOption = Annotated[
    Path | None,
    typer.Option("--db", help="DuckDB store file (default: ./haqa.duckdb)", envvar="HAQA_DB"),
]


def open_store(db: Path | None, *, create: bool = True) -> Store:
    return Store(db or default_db_path(), create=create)


class ManualRun:
    """A run made by one CLI command (brain ``manual``): every trial it records is committed
    as it finishes; the run is marked finished, or failed if the command raised."""

    def __init__(self, store: Store, record: RunRecord) -> None:
        self.store = store
        self.record = record

    @property
    def run_id(self) -> str:
        return self.record.run_id

    def add(self, trial: TrialResult) -> TrialRecord:
        return self.store.add_trial(self.run_id, trial)


@contextmanager
def manual_run(
    store: Store, *, model: str, command: str, config: dict[str, Any]
) -> Iterator[ManualRun]:
    """Open a run for a CLI command; call only after the input has been validated, so bad input
    leaves the store untouched."""
    record = store.create_run(model=model, brain="manual", goal={"command": command}, config=config)
    run = ManualRun(store, record)
    try:
        yield run
    except BaseException:
        store.finish_run(run.run_id, "failed")
        raise
    store.finish_run(run.run_id, "finished")
