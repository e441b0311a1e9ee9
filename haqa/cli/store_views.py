"""``haqa trials`` and ``haqa runs``: read the store, print rich tables (or JSON)."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from haqa.cli import app
from haqa.cli.common import DbOption, console, open_store
from haqa.store import RunRecord, Store, TrialRecord
from haqa.units import format_bytes


def _num(value: float | None, fmt: str = "{:.2f}") -> str:
    return "-" if value is None else fmt.format(value)


def _config_summary(trial: TrialRecord, width: int = 60) -> str:
    text = ", ".join(f"{k}={v}" for k, v in trial.config.items() if not isinstance(v, dict | list))
    return text if len(text) <= width else text[: width - 1] + "…"


@app.command("trials")
def trials_command(
    run: Annotated[str | None, typer.Option("--run", help="only this run's trials")] = None,
    stage: Annotated[str | None, typer.Option("--stage", help="finetune or deploy")] = None,
    status: Annotated[
        str | None, typer.Option("--status", help="comma list: ok,failed,rejected,pruned")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON lines")] = False,
    db: DbOption = None,
) -> None:
    """Show stored trials: configuration, metrics, status and timings."""
    store = open_store(db, create=False)
    if run is not None:
        store.get_run(run)  # a clear error for an unknown run id
    rows = store.list_trials(run, stage=stage, status=status.split(",") if status else None)
    if as_json:
        for t in rows:
            print(t.model_dump_json())
        return
    table = Table(title=f"trials in {store.path.name}" + (f" (run {run})" if run else ""))
    for col in ("run", "#", "stage", "tool", "config", "acc", "pp t/s", "tg t/s", "peak mem"):
        table.add_column(col, overflow="fold")
    table.add_column("status")
    table.add_column("time")
    for t in rows:
        m = t.metrics
        status_text = t.status if not t.error else f"{t.status}: {t.error[:60]}"
        table.add_row(
            t.run_id,
            str(t.trial_id),
            t.stage,
            t.tool,
            _config_summary(t),
            _num(m.accuracy, "{:.3f}"),
            _num(m.prefill_tps, "{:.1f}"),
            _num(m.decode_tps, "{:.1f}"),
            format_bytes(m.peak_mem_bytes),
            status_text,
            f"{t.duration_s:.1f}s",
        )
    console.print(table)
    if not rows:
        console.print("no trials stored yet")


@app.command("runs")
def runs_command(
    limit: Annotated[int, typer.Option("--limit", min=1, help="newest N runs")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON lines")] = False,
    db: DbOption = None,
) -> None:
    """List runs: model, brain, status and when."""
    store = open_store(db, create=False)
    runs = store.list_runs(limit=limit)
    if as_json:
        for r in runs:
            print(r.model_dump_json())
        return
    table = Table(title=f"runs in {store.path.name}")
    for col in ("run", "created", "model", "brain", "goal", "status"):
        table.add_column(col, overflow="fold")
    for r in runs:
        table.add_row(
            r.run_id,
            r.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            r.model,
            r.brain,
            json.dumps(r.goal)[:50] if r.goal else "-",
            r.status,
        )
    console.print(table)
    _fleet_tables(store, runs)


def _fleet_tables(store: Store, runs: list[RunRecord]) -> None:
    """Each fleet (``haqa run --targets``) among the runs: its answers side by side, one row per
    device kind."""
    from haqa.report import answer_words, fleet_id_of, fleet_kinds, run_kind

    fleets = list(dict.fromkeys(f for f in map(fleet_id_of, runs) if f is not None))
    for fleet_id in fleets:
        members = {run_kind(r): r for r in store.fleet_runs(fleet_id)}
        table = Table(title=f"fleet {fleet_id}: one answer per device kind")
        for col in ("device kind", "run", "status", "answer", "tg t/s", "pp t/s", "acc"):
            table.add_column(col, overflow="fold")
        for kind in fleet_kinds(store, fleet_id):
            r = members.get(kind)
            result = (r.result or {}) if r else {}
            table.add_row(
                kind,
                r.run_id if r else "-",
                r.status if r else "not started",
                answer_words(result),
                _num(result.get("decode_tps"), "{:.1f}"),
                _num(result.get("prefill_tps"), "{:.1f}"),
                _num(result.get("accuracy_validation"), "{:.3f}"),
            )
        console.print(table)
