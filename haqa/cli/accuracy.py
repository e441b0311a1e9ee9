"""``haqa finetune`` and ``haqa eval``: one trial per call, stored in a manual run.

Settings of ``finetune`` come from a TOML file (``[finetune]`` table, top-level ``model`` and
``tasks``), then ``HAQA_FINETUNE__<FIELD>`` variables, then flags, each overriding the last.
Everything is validated before the run is opened, so bad input leaves the store untouched.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, get_args

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from haqa.cli import app
from haqa.cli.common import DbOption, console, err_console, manual_run, open_store
from haqa.cli.options import model_options
from haqa.config import build, env_overrides, read_toml
from haqa.errors import HaqaError
from haqa.modelref import ModelRef, resolve_model
from haqa.schemas import FinetuneConfig, KvCacheSettings, KvCacheType, TrialMetrics
from haqa.units import format_bytes

_TOML_TOP_KEYS = ("model", "tasks", "finetune")
DEFAULT_MODEL = "zoo:tiny"

ModelOption = Annotated[
    str | None,
    typer.Option("--model", "-m", help="zoo:tiny, a Hugging Face model folder or a .gguf file"),
]
TasksOption = Annotated[
    list[Path] | None,
    typer.Option("--tasks", help="JSONL task file (repeatable); default: zoo:tiny's tasks"),
]


def _bar() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
        console=err_console,
    )


def _toml_settings(path: Path | None) -> tuple[dict[str, Any], str | None, list[Path]]:
    """(``[finetune]`` table, model, tasks) from the TOML file; tasks relative to the file."""
    if path is None:
        return {}, None, []
    data = read_toml(path)
    unknown = [k for k in data if k not in _TOML_TOP_KEYS]
    if unknown:
        raise HaqaError(
            f"{path}: unknown key '{unknown[0]}': use {', '.join(_TOML_TOP_KEYS)} at the top level"
        )
    table = data.get("finetune", {})
    if not isinstance(table, dict):
        raise HaqaError(f"{path}: 'finetune' must be a table ([finetune])")
    model = data.get("model")
    if model is not None and not isinstance(model, str):
        raise HaqaError(f"{path}: 'model' must be a string such as \"zoo:tiny\"")
    tasks = data.get("tasks", [])
    if isinstance(tasks, str):
        tasks = [tasks]
    if not isinstance(tasks, list) or not all(isinstance(t, str) for t in tasks):
        raise HaqaError(f"{path}: 'tasks' must be a list of JSONL file paths")
    build(FinetuneConfig, table, source=f"{path} [finetune]")  # its own errors name the file
    return (
        table,
        model,
        [(path.parent / t) if not Path(t).is_absolute() else Path(t) for t in tasks],
    )


def _task_files(ref: ModelRef, tasks: list[Path], split: str) -> list[Path]:
    """The given files (each validated), or the tiny zoo model's ``split`` files."""
    from haqa import zoo
    from haqa.tasks import load_jsonl

    files = tasks or zoo.task_files("tiny", split)
    for f in files:
        load_jsonl(f)  # every line is checked now, before a run is opened
    return files


def _hf_model(spec: str) -> ModelRef:
    ref = resolve_model(spec)
    if ref.kind != "hf":
        raise HaqaError(f"{spec} is a GGUF file: fine-tuning needs a Hugging Face model folder")
    return ref


@app.command("finetune")
@model_options(FinetuneConfig, aliases={"learning_rate": ("--lr",)})
def finetune_command(
    model: ModelOption = None,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", "-c", help="TOML file: \\[finetune] table, top-level model and tasks"
        ),
    ] = None,
    tasks: TasksOption = None,
    output_dir: Annotated[
        Path | None, typer.Option("--output-dir", help="adapter folder (default: cache)")
    ] = None,
    *,
    flags: dict[str, Any],  # one option per FinetuneConfig field (haqa.cli.options)
    db: DbOption = None,
) -> None:
    """QLoRA fine-tune: quantized base + LoRA adapter on multiple-choice tasks (one trial)."""
    from haqa.tools.run_qlora import Args, run_qlora
    from haqa.trialrun import run_as_trial

    toml_layer, toml_model, toml_tasks = _toml_settings(config)
    cfg = build(
        FinetuneConfig,
        toml_layer,
        env_overrides("finetune", FinetuneConfig),
        flags,
        source="finetune settings",
    )
    spec = model or toml_model or DEFAULT_MODEL
    ref = _hf_model(spec)
    files = _task_files(ref, list(tasks or toml_tasks), "train")
    args = Args(model=ref.path, config=cfg, train_files=files, output_dir=output_dir)
    trial_config = {**cfg.model_dump(mode="json"), "model": spec, "tasks": [str(f) for f in files]}

    store = open_store(db)
    with (
        manual_run(store, model=spec, command="finetune", config=trial_config) as run,
        _bar() as bar,
    ):
        task = bar.add_task("fine-tuning", total=None, detail="")

        def progress(step: int, total: int, loss: float) -> None:
            bar.update(task, completed=step, total=total, detail=f"loss {loss:.4f}")

        trial, result = run_as_trial(
            stage="finetune",
            tool="run_qlora",
            config=trial_config,
            fn=lambda: run_qlora(args, progress=progress),
            metrics=lambda r: TrialMetrics(
                peak_mem_bytes=r.peak_mem_bytes,
                peak_gpu_mem_bytes=r.peak_gpu_mem_bytes,
                final_loss=r.final_loss,
                train_time_s=r.train_time_s,
                adapter_path=str(r.adapter_path),
            ),
        )
        stored = run.add(trial)
    if result is None:
        err_console.print(
            f"fine-tune failed (trial {stored.run_id}#{stored.trial_id}): {trial.error}"
        )
        raise typer.Exit(1)
    table = Table(title=f"fine-tune of {spec}" + (" (cached)" if result.cached else ""))
    table.add_column("")
    table.add_column("value")
    table.add_row("adapter", str(result.adapter_path))
    table.add_row("steps", f"{result.steps} on {result.train_examples} examples")
    table.add_row("first / final loss", f"{result.loss_curve[0]:.4f} / {result.final_loss:.4f}")
    table.add_row("peak memory", format_bytes(result.peak_mem_bytes))
    if result.peak_gpu_mem_bytes is not None:
        table.add_row("peak GPU memory", format_bytes(result.peak_gpu_mem_bytes))
    table.add_row("time", f"{result.train_time_s:.1f} s on {result.device}")
    table.add_row("trial", f"{stored.run_id} #{stored.trial_id}")
    console.print(table)
    console.print(f"evaluate it: haqa eval --model {spec} --adapter {result.adapter_path}")


def _kv_cache(ref: ModelRef, ctk: str | None, ctv: str | None) -> KvCacheSettings | None:
    if ctk is None and ctv is None:
        return None
    if ref.kind != "gguf":
        raise HaqaError("--cache-type-k/-v apply to a .gguf model (llama.cpp): drop them")
    for flag, value in (("--cache-type-k", ctk), ("--cache-type-v", ctv)):
        if value is not None and value not in get_args(KvCacheType):
            raise HaqaError(f"{flag} {value}: use one of {', '.join(get_args(KvCacheType))}")
    return KvCacheSettings.model_validate({"type_k": ctk or "f16", "type_v": ctv or "f16"})


@app.command("eval")
def eval_command(
    model: ModelOption = None,
    adapter: Annotated[
        Path | None, typer.Option("--adapter", help="LoRA adapter folder (HF models)")
    ] = None,
    tasks: TasksOption = None,
    split: Annotated[
        str, typer.Option("--split", help="zoo:tiny split when no --tasks: test or validation")
    ] = "test",
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="examples per file")] = None,
    n_threads: Annotated[int | None, typer.Option("--threads", min=1, help="CPU threads")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="HF batch")] = 32,
    ctk: Annotated[
        str | None,
        typer.Option("-ctk", "--cache-type-k", help="GGUF: K cache type to score with (f16)"),
    ] = None,
    ctv: Annotated[
        str | None,
        typer.Option("-ctv", "--cache-type-v", help="GGUF: V cache type to score with (f16)"),
    ] = None,
    db: DbOption = None,
) -> None:
    """Multiple-choice accuracy by log-likelihood (lm-eval style acc and acc_norm; one trial).
    A GGUF file is scored as llama.cpp deploys it, K/V cache types included."""
    from haqa.tools.evaluate import Args, evaluate
    from haqa.trialrun import run_as_trial

    if split not in ("test", "validation"):
        raise HaqaError(f"--split {split}: use test or validation")
    spec = model or DEFAULT_MODEL
    ref = resolve_model(spec)
    if adapter is not None:
        if ref.kind == "gguf":
            raise HaqaError(
                "--adapter needs a Hugging Face model: merge it before exporting to GGUF"
            )
        if not (adapter / "adapter_config.json").is_file():
            raise HaqaError(f"{adapter} is not a LoRA adapter folder (no adapter_config.json)")
    files = _task_files(ref, list(tasks or []), split)
    kv_cache = _kv_cache(ref, ctk, ctv)
    args = Args(
        model=ref.path,
        adapter=adapter,
        task_files=files,
        limit=limit,
        n_threads=n_threads,
        batch_size=batch_size,
        kv_cache=kv_cache,
    )
    stage = "deploy" if ref.kind == "gguf" else "finetune"
    trial_config = {
        "model": spec,
        "adapter": str(adapter) if adapter else None,
        "tasks": [str(f) for f in files],
        "limit": limit,
        **(kv_cache.model_dump(exclude={"flash_attn"}) if kv_cache else {}),
    }
    store = open_store(db)
    with manual_run(store, model=spec, command="eval", config=trial_config) as run:
        with console.status(f"scoring {spec} on {len(files)} task file(s) ..."):
            trial, result = run_as_trial(
                stage=stage,
                tool="evaluate",
                config=trial_config,
                fn=lambda: evaluate(args),
                metrics=lambda r: TrialMetrics(accuracy=r.accuracy, acc_norm=r.acc_norm),
            )
        stored = run.add(trial)
    if result is None:
        err_console.print(
            f"evaluation failed (trial {stored.run_id}#{stored.trial_id}): {trial.error}"
        )
        raise typer.Exit(1)
    shown = spec if spec.startswith("zoo:") else ref.path.name
    title = shown + (f" + adapter {adapter.name}" if adapter else "") + f" ({result.backend})"
    if kv_cache is not None:
        title += f", K/V cache {kv_cache.type_k}/{kv_cache.type_v}"
    table = Table(title=title)
    for col in ("kind", "n", "acc", "acc_norm"):
        table.add_column(col)
    for kind, s in result.per_kind.items():
        table.add_row(kind, str(s.n), f"{s.accuracy:.3f}", f"{s.acc_norm:.3f}")
    table.add_row("all", str(result.n_examples), f"{result.accuracy:.3f}", f"{result.acc_norm:.3f}")
    console.print(table)
    console.print(f"{result.eval_time_s:.1f} s; trial {stored.run_id} #{stored.trial_id}")
