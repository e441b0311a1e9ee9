"""``haqa grid record|list`` and ``haqa compare``: recorded grids and brain comparisons."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from haqa.cli import app
from haqa.cli.common import DbOption, console, open_store
from haqa.errors import HaqaError

grid_app = typer.Typer(help="Record a full grid of deploy configurations (a tabular benchmark).")
app.add_typer(grid_app, name="grid")


def _parse_list(text: str, what: str) -> list[str]:
    items = [x.strip() for x in text.split(",") if x.strip()]
    if not items:
        raise HaqaError(f"{what} must be a comma list, got {text!r}")
    return items


@grid_app.command("record")
def grid_record(
    model: Annotated[str, typer.Option("--model", help="model whose accuracy is measured")] = (
        "zoo:tiny"
    ),
    speed_model: Annotated[
        str | None, typer.Option("--speed-model", help="model whose speed is measured")
    ] = None,
    quant: Annotated[
        str | None, typer.Option("--quant", help="comma list of quant types (default: all)")
    ] = None,
    threads: Annotated[str | None, typer.Option("--threads", "-t", help="comma list")] = None,
    ubatch: Annotated[str | None, typer.Option("--ubatch-size", "-ub", help="comma list")] = None,
    flash_attn: Annotated[str | None, typer.Option("--flash-attn", "-fa", help="0,1")] = None,
    repeats: Annotated[int, typer.Option("--repeats", help="measurements per config")] = 2,
    n_prompt: Annotated[int, typer.Option("--n-prompt")] = 128,
    n_gen: Annotated[int, typer.Option("--n-gen")] = 32,
    repetitions: Annotated[int, typer.Option("--repetitions")] = 2,
    eval_limit: Annotated[int, typer.Option("--eval-limit")] = 100,
    resume: Annotated[str | None, typer.Option("--resume", help="finish a grid")] = None,
    db: DbOption = None,
) -> None:
    """Measure every combination once per repeat into the store (resumable with --resume)."""
    import os

    from haqa.graph.config import RunConfig
    from haqa.graph.run import prepare
    from haqa.harness.grid import default_grid_space, record_grid
    from haqa.schemas import GGUF_QUANT_TYPES
    from haqa.trials.toolbox import LiveToolbox

    store = open_store(db)
    if resume:
        grid = store.get_grid(resume)
        cfg = RunConfig(model=grid.model, speed_model=grid.speed_model)
    else:
        cfg = RunConfig(
            model=model,
            speed_model=speed_model,
            eval_limit=eval_limit,
            n_prompt=n_prompt,
            n_gen=n_gen,
            repetitions=repetitions,
        )
    cores = os.cpu_count() or 1
    space = default_grid_space(cores, cores)
    if quant:
        space["quant_type"] = _parse_list(quant, "--quant")
        bad = [q for q in space["quant_type"] if q not in GGUF_QUANT_TYPES]
        if bad:
            raise HaqaError(f"unknown quant type {bad[0]}: use {', '.join(GGUF_QUANT_TYPES)}")
    if threads:
        space["n_threads"] = [int(t) for t in _parse_list(threads, "--threads")]
        if max(space["n_threads"]) > cores or min(space["n_threads"]) < 1:
            raise HaqaError(f"--threads must be between 1 and the {cores} logical cores")
    if ubatch:
        space["n_ubatch"] = [int(u) for u in _parse_list(ubatch, "--ubatch-size")]
    if flash_attn:
        space["flash_attn"] = [bool(int(f)) for f in _parse_list(flash_attn, "--flash-attn")]
    _, settings, _ = prepare(cfg)
    # In-process: each benchmark already runs in its own child process (its peak memory its own),
    # and a child per grid point would add seconds of start-up to every one of them.
    toolbox = LiveToolbox(settings)

    def progress(step: int, total: int, what: str) -> None:
        console.print(f"[dim]{step:>4}/{total}[/] {what}")

    grid = record_grid(
        store,
        toolbox,
        settings,
        model=cfg.model,
        speed_model=cfg.speed_model,
        space=space,
        repeats=repeats,
        grid_id=resume,
        progress=progress,
    )
    console.print(f"grid {grid.grid_id}: {len(store.grid_points(grid.grid_id))} measurements")


@grid_app.command("list")
def grid_list(db: DbOption = None) -> None:
    """The recorded grids."""
    store = open_store(db, create=False)
    table = Table(title="grids")
    for col in ("grid", "model", "speed model", "machine", "points", "status"):
        table.add_column(col)
    for g in store.list_grids():
        table.add_row(
            g.grid_id,
            g.model,
            g.speed_model or "-",
            g.hardware_fingerprint,
            str(len(store.grid_points(g.grid_id))),
            g.status,
        )
    console.print(table)


def _reach_range(reach: list[int | None], budget: int) -> str:
    """' (lo–hi)' over seeds; a seed that never reached shows as >budget."""
    values = [r if r is not None else budget + 1 for r in reach]
    if not values:
        return ""
    show = [str(v) if v <= budget else f">{budget}" for v in (min(values), max(values))]
    return f" ({show[0]}–{show[1]})"


@app.command("compare")
def compare_command(
    tabular: Annotated[str, typer.Option("--tabular", help="the recorded grid to run on")],
    brains: Annotated[
        str, typer.Option("--brains", help="comma list")
    ] = "expert,random,local,tpe,gp,nsga2,cmaes",
    seeds: Annotated[int, typer.Option("--seeds")] = 10,
    budget: Annotated[int, typer.Option("--budget", help="deploy trials per run")] = 15,
    goal: Annotated[str, typer.Option("--goal")] = "decode",
    max_accuracy_drop: Annotated[float, typer.Option("--max-accuracy-drop")] = 1.0,
    memory_budget: Annotated[str | None, typer.Option("--memory-budget")] = None,
    out: Annotated[Path, typer.Option("--out", help="folder for the table and the plot")] = Path(
        "haqa-compare"
    ),
    llm_gguf: Annotated[
        str | None, typer.Option("--llm-gguf", help="llamacpp/hybrid model (default: the zoo's)")
    ] = None,
    db: DbOption = None,
) -> None:
    """Compare brains at the same budget over seeds on a recorded grid: the paper's table and a
    convergence plot."""
    from haqa.harness.compare import compare_brains, plot_convergence

    names = _parse_list(brains, "--brains")
    if seeds <= 0:
        raise HaqaError(f"--seeds must be at least 1, got {seeds}")
    store = open_store(db, create=False)
    out.mkdir(parents=True, exist_ok=True)
    scratch_path = out / "compare.duckdb"
    scratch_path.unlink(missing_ok=True)
    # Every run of the comparison is kept in its own store beside the table, held open (fast).
    from haqa.store import Store

    scratch = Store(scratch_path, keep_open=True)
    result = compare_brains(
        store,
        scratch=scratch,
        grid_id=tabular,
        brains=names,
        seeds=seeds,
        budget=budget,
        goal=goal,
        max_accuracy_drop=max_accuracy_drop,
        memory_budget=memory_budget,
        llm_gguf=llm_gguf,
    )
    table = Table(title=f"{result.goal} — budget {budget}, {seeds} seeds, grid {tabular}")
    cols = ("brain", "best (mean ± std)", "regret", "trials to 98% (median, range)", "invalid")
    for col in (*cols, "valid", "s/decision", "tokens/decision", "LLM share"):
        table.add_column(col)
    for s in result.scores:
        reach = (
            f"{s.trials_to_reach_median:g}"
            if s.trials_to_reach_median is not None and s.trials_to_reach_median <= budget
            else f">{budget}"
        )
        table.add_row(
            s.brain,
            f"{s.best_mean:.2f} ± {s.best_std:.2f}",
            f"{s.regret_mean:.2f}",
            reach + _reach_range(s.trials_to_reach, budget),
            f"{s.invalid_mean:.1f}",
            f"{s.valid_rate:.0%}",
            f"{s.seconds_per_decision:.2f}",
            "-" if s.tokens_per_decision is None else f"{s.tokens_per_decision:.0f}",
            "-" if s.llm_share is None else f"{s.llm_share:.0%}",
        )
    console.print(table)
    scratch.close()
    console.print(f"grid optimum {result.optimum:.2f}: {result.optimum_config}")
    (out / "compare.json").write_text(result.model_dump_json(indent=2))
    png = plot_convergence(result, out / "convergence.png")
    console.print(f"table: {out / 'compare.json'}  plot: {png}  runs: {scratch_path}")
