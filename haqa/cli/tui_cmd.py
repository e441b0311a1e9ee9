"""``haqa tui``: the Textual app (imported only when the command runs).

The app gets its run machinery from here (``LiveBackend``): the TUI package itself imports
neither the graph nor LangGraph.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from haqa.cli import app
from haqa.cli.common import DbOption
from haqa.paths import default_db_path
from haqa.store import Store


class LiveBackend:
    """Runs agents for the TUI with ``haqa.graph.run`` (what ``haqa run`` / ``resume`` use)."""

    @property
    def brains(self) -> tuple[str, ...]:
        from haqa.graph.config import BRAINS

        # The replay brain needs a run to replay: the form offers the brains that need no more.
        return tuple(b for b in BRAINS if b != "replay")

    def validate(self, fields: dict[str, Any]) -> Any:
        from haqa.graph.config import RunConfig

        cfg = RunConfig.model_validate(fields)
        cfg.parsed_goal()  # a bad goal or memory budget is a HaqaError now, not after starting
        return cfg

    def new_control(self) -> Any:
        from haqa.agents.runtime import RunControl

        return RunControl()

    def start(
        self,
        store: Store,
        config: Any,
        *,
        run_id: str,
        on_event: Any,
        control: Any,
    ) -> None:
        from haqa.graph.run import start_run

        start_run(store, config, run_id=run_id, on_event=on_event, control=control)

    def resume(self, store: Store, run_id: str, *, on_event: Any, control: Any) -> None:
        from haqa.graph.run import resume_run

        resume_run(store, run_id, on_event=on_event, control=control)

    def abandon(self, store: Store, run_id: str) -> None:
        if store.get_run(run_id).status == "running":
            store.set_run_status(run_id, "stopped")


@app.command("tui")
def tui(
    db: DbOption = None,
    replay: Annotated[
        str | None, typer.Option("--replay", help="open this run in replay", metavar="RUN_ID")
    ] = None,
) -> None:
    """Open the terminal UI: past runs, a new run watched live, and replay of any run."""
    from haqa.tui.app import HaqaApp

    path: Path = db or default_db_path()
    HaqaApp(path, backend=LiveBackend(), replay=replay).run()


__all__ = ["LiveBackend", "tui"]
