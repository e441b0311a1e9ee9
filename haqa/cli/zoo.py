"""``haqa zoo``: build the offline models (``build``) and list them (``list``)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from haqa.cli import app
from haqa.cli.common import console
from haqa.errors import HaqaError
from haqa.units import format_bytes

zoo_app = typer.Typer(help="Models built offline: tiny (trainable) and bench-* (speed shapes).")
app.add_typer(zoo_app, name="zoo")


@zoo_app.command("build")
def build_command(
    name: Annotated[
        str, typer.Argument(help="tiny, bench-60m, bench-200m, bench-1b or smollm2-135m")
    ],
    force: Annotated[bool, typer.Option("--force", help="rebuild even if it exists")] = False,
) -> None:
    """Build a zoo model into $HAQA_HOME/zoo/NAME (once; --force rebuilds)."""
    from haqa import zoo

    dest = zoo.zoo_path(name)  # validates the name before anything runs
    if zoo.is_built(name) and not force:
        console.print(f"{name}: already built at {dest} (--force rebuilds)")
        return
    started = time.monotonic()
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[count]}"),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as bar:
        task = bar.add_task(f"building {name}", total=1, count="", detail="")

        def progress(phase: str, done: int, total: int, detail: str) -> None:
            # Phases without steps (tokenizer, corpus, save) show an empty bar and no count.
            bar.update(
                task,
                description=f"{name}: {phase}",
                completed=done if total else (1 if phase == "done" else 0),
                total=total or 1,
                count=f"{done}/{total}" if total else "",
                detail=detail,
            )

        path = zoo.ensure(name, force=True, progress=progress)
    console.print(f"built {name} at {path} in {time.monotonic() - started:.0f} s")


def _parameters(path: Path) -> int | None:
    """Parameter count from the build's metadata (tiny: haqa-zoo.json, bench: bench_model.json)."""
    for meta_file, key in (("haqa-zoo.json", "parameters"), ("bench_model.json", "n_params")):
        if (path / meta_file).is_file():
            try:
                value = json.loads((path / meta_file).read_text()).get(key)
            except json.JSONDecodeError:
                raise HaqaError(f"{path / meta_file} is damaged: rebuild with --force") from None
            return value if isinstance(value, int) else None
    return None


@zoo_app.command("list")
def list_command(
    as_json: Annotated[bool, typer.Option("--json", help="print JSON lines")] = False,
) -> None:
    """List the zoo models: whether built (or stale: built by an older recipe, rebuilt on next
    use), where, and their size."""
    from haqa import zoo

    rows: list[dict[str, object]] = []
    for name in zoo.ZOO_NAMES:
        path = zoo.zoo_path(name)
        state = zoo.status(name)
        built = state == "built"
        size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if built else None
        params = _parameters(path) if built else None
        rows.append(
            {
                "name": name,
                "built": built,
                "stale": state == "stale",
                "path": str(path),
                "bytes": size,
                "parameters": params,
            }
        )
    if as_json:
        for row in rows:
            print(json.dumps(row))
        return
    table = Table(title="haqa zoo")
    for col in ("name", "built", "parameters", "size", "path"):
        table.add_column(col, overflow="fold")
    for row in rows:
        n_params, n_bytes = row["parameters"], row["bytes"]
        table.add_row(
            str(row["name"]),
            "yes" if row["built"] else "stale (rebuilt on next use)" if row["stale"] else "no",
            f"{n_params / 1e6:.1f}M" if isinstance(n_params, int) else "-",
            format_bytes(n_bytes) if isinstance(n_bytes, int) else "-",
            str(row["path"]),
        )
    console.print(table)
