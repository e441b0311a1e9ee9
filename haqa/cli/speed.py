"""``haqa export``, ``haqa quantize`` and ``haqa bench``.

``haqa bench`` sweeps llama.cpp settings the way ``llama-bench`` does: every knob takes a comma
list and each combination (their product) is one benchmark row, stored as one trial.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.table import Table

from haqa.cli import app
from haqa.cli.common import DbOption, console, err_console, manual_run, open_store
from haqa.config import validation_message
from haqa.errors import HaqaError
from haqa.schemas import RuntimeSettings, TrialMetrics

_OUTTYPES = ("F32", "F16", "BF16")
_FORMATS = ("md", "json", "csv")


def _split(text: str, what: str) -> list[str]:
    items = [x.strip() for x in text.split(",") if x.strip()]
    if not items:
        raise HaqaError(f"{what} is empty: give a value or a comma list")
    return items


def _ints(text: str, what: str, lo: int, hi: int) -> list[int]:
    out = []
    for item in _split(text, what):
        try:
            n = int(item)
        except ValueError:
            raise HaqaError(f"{what} '{item}' is not an integer") from None
        if not lo <= n <= hi:
            raise HaqaError(f"{what} {n} is out of range: use {lo}..{hi}")
        out.append(n)
    return out


def _bools(text: str, what: str) -> list[bool]:
    return [bool(n) for n in _ints(text, what, 0, 1)]


def _model_gguf(spec: str, outtype: str = "F16") -> tuple[str, Path]:
    """Resolve a model spec to a GGUF: a GGUF as it is, an HF folder / zoo model exported first."""
    from haqa.modelref import resolve_model
    from haqa.tools.export_gguf import Args, check_gguf, export_gguf

    ref = resolve_model(spec)
    if ref.kind == "gguf":
        check_gguf(ref.path)
        return spec, ref.path
    err_console.print(f"exporting {spec} to GGUF ({outtype}) ...")
    return spec, export_gguf(Args(model=ref.path, outtype=outtype)).gguf_path  # type: ignore[arg-type]


# -- export / quantize ---------------------------------------------------------------------------


@app.command("export")
def export_command(
    model: Annotated[str, typer.Option("--model", "-m", help="HF model folder or zoo:NAME")],
    adapter: Annotated[
        Path | None, typer.Option("--adapter", help="peft LoRA adapter folder to merge in")
    ] = None,
    outtype: Annotated[str, typer.Option("--outtype", help="F32, F16 or BF16")] = "F16",
    quant: Annotated[
        str | None, typer.Option("--quant", "-q", help="llama.cpp type, e.g. Q4_K_M")
    ] = None,
    db: DbOption = None,
) -> None:
    """Convert a Hugging Face model (with an optional LoRA adapter merged in) to GGUF and
    quantize it; cached by content, so the same export is never done twice."""
    from haqa.modelref import resolve_model
    from haqa.tools.export_gguf import Args, check_quant_type, export_gguf

    if outtype.upper() not in _OUTTYPES:
        raise HaqaError(f"--outtype {outtype} is not one of {', '.join(_OUTTYPES)}")
    qtype = check_quant_type(quant) if quant else None
    if adapter is not None and not (adapter / "adapter_config.json").is_file():
        raise HaqaError(
            f"--adapter {adapter} is not a peft adapter folder (no adapter_config.json)"
        )
    ref = resolve_model(model)
    if ref.kind != "hf":
        raise HaqaError(f"{model} is already a GGUF: use `haqa quantize` for it")
    args = Args(model=ref.path, adapter=adapter, outtype=outtype.upper(), quant_type=qtype)  # type: ignore[arg-type]
    config = {"model": model, **args.model_dump(mode="json")}
    from haqa.trialrun import run_as_trial

    with manual_run(open_store(db), model=model, command="export", config=config) as run:
        trial, result = run_as_trial(
            stage="deploy",
            tool="export_gguf",
            config=config,
            fn=lambda: export_gguf(args),
            metrics=lambda r: TrialMetrics(artifact_bytes=r.size_bytes),
        )
        run.add(trial)
    if result is None:
        err_console.print(f"export failed: {trial.error}")
        raise typer.Exit(1)
    note = " (cached)" if result.cached else ""
    console.print(f"{result.gguf_path}  {result.quant_type}  {result.size_bytes} bytes{note}")


@app.command("quantize")
def quantize_command(
    gguf: Annotated[Path, typer.Argument(help="input GGUF file (F32/F16/BF16 is best)")],
    quant: Annotated[str, typer.Option("--quant", "-q", help="llama.cpp type, e.g. Q4_K_M")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="also write here")] = None,
    tensor_type: Annotated[
        list[str] | None,
        typer.Option(
            "--tensor-type",
            help="PATTERN=TYPE: tensors whose name matches the regular expression get this ggml "
            "type (repeat; first match wins), e.g. ffn_down=q6_k",
        ),
    ] = None,
    output_tensor_type: Annotated[
        str | None, typer.Option("--output-tensor-type", help="ggml type of output.weight")
    ] = None,
    token_embedding_type: Annotated[
        str | None, typer.Option("--token-embedding-type", help="ggml type of token_embd.weight")
    ] = None,
    imatrix: Annotated[
        Path | None,
        typer.Option(
            "--imatrix",
            help="importance matrix GGUF (from `haqa imatrix` or llama-imatrix) that weighs "
            "each weight's rounding error",
        ),
    ] = None,
    db: DbOption = None,
) -> None:
    """Quantize a GGUF file to a llama.cpp type (cached by the input's content and recipe).

    --tensor-type, --output-tensor-type, --token-embedding-type and --imatrix work as
    llama-quantize's."""
    from haqa.tools.export_gguf import (
        QuantizeArgs,
        TensorRecipe,
        check_gguf,
        check_quant_type,
        quantize_gguf,
    )
    from haqa.trialrun import run_as_trial

    qtype = check_quant_type(quant)
    check_gguf(gguf)
    recipe = TensorRecipe(
        tensor_types=dict(_pattern_type(item) for item in tensor_type or []),
        output_type=output_tensor_type,
        embedding_type=token_embedding_type,
    )
    args = QuantizeArgs(gguf=gguf, quant_type=qtype, output=output, recipe=recipe, imatrix=imatrix)
    config = args.model_dump(mode="json")
    with manual_run(open_store(db), model=str(gguf), command="quantize", config=config) as run:
        trial, result = run_as_trial(
            stage="deploy",
            tool="quantize_gguf",
            config=config,
            fn=lambda: quantize_gguf(args),
            metrics=lambda r: TrialMetrics(artifact_bytes=r.size_bytes),
        )
        run.add(trial)
    if result is None:
        err_console.print(f"quantize failed: {trial.error}")
        raise typer.Exit(1)
    note = " (cached)" if result.cached else ""
    console.print(f"{result.gguf_path}  {result.quant_type}  {result.size_bytes} bytes{note}")


@app.command("imatrix")
def imatrix_command(
    gguf: Annotated[Path, typer.Argument(help="the model's GGUF (F16 is best)")],
    calibration: Annotated[
        Path,
        typer.Option(
            "--calibration", "-f", help="plain text no evaluation uses (llama-imatrix -f)"
        ),
    ],
    ctx_size: Annotated[int, typer.Option("--ctx-size", "-c", help="tokens per chunk")] = 512,
    chunks: Annotated[
        int | None, typer.Option("--chunks", help="chunks to use at most (default: all)")
    ] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="also write here")] = None,
) -> None:
    """Compute an importance matrix (llama.cpp's imatrix GGUF) for `haqa quantize --imatrix`.

    As llama-imatrix: the text in chunks of --ctx-size tokens, the mean squared input of every
    weight's columns; cached by content. The file also works with llama-quantize --imatrix."""
    import shutil

    from haqa.tools.imatrix import ImatrixArgs, compute_imatrix

    try:
        args = ImatrixArgs(gguf=gguf, calibration=calibration, n_ctx=ctx_size, max_chunks=chunks)
    except ValidationError as exc:
        raise HaqaError(f"haqa imatrix: {validation_message(exc)}") from None
    result = compute_imatrix(args)
    path = result.imatrix_path
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, output)
        path = output
    note = " (cached)" if result.cached else f" in {result.time_s:.1f} s"
    console.print(
        f"{path}  {result.n_entries} weights, {result.n_chunks} chunks of {result.chunk_size} "
        f"tokens of {result.dataset}{note}"
    )


def _pattern_type(item: str) -> tuple[str, str]:
    pattern, sep, type_name = item.rpartition("=")
    if not sep or not pattern or not type_name:
        raise HaqaError(f"--tensor-type {item!r}: write PATTERN=TYPE, e.g. ffn_down=q6_k")
    return pattern, type_name


# -- bench ---------------------------------------------------------------------------------------


def _settings_grid(
    threads: str,
    batch: str,
    ubatch: str,
    fa: str,
    ctk: str,
    ctv: str,
    n_ctx: int,
    mmap: str,
) -> list[RuntimeSettings]:
    cores = os.cpu_count() or 1
    t_list = _ints(threads, "--threads", 1, 1024)
    for t in t_list:
        if t > cores:
            raise HaqaError(f"--threads {t} is more than this machine's {cores} logical cores")
    grid = itertools.product(
        t_list,
        _ints(batch, "--batch-size", 1, 65536),
        _ints(ubatch, "--ubatch-size", 1, 65536),
        _bools(fa, "--flash-attn"),
        _split(ctk, "--cache-type-k"),
        _split(ctv, "--cache-type-v"),
        _bools(mmap, "--mmap"),
    )
    out = []
    for t, b, ub, f, k, v, mm in grid:
        try:
            out.append(
                RuntimeSettings(
                    n_threads=t,
                    n_batch=b,
                    n_ubatch=ub,
                    flash_attn=f,
                    type_k=k,  # type: ignore[arg-type]
                    type_v=v,  # type: ignore[arg-type]
                    n_ctx=n_ctx,
                    use_mmap=mm,
                )
            )
        except ValidationError as exc:
            raise HaqaError(validation_message(exc)) from None
    return out


def _print_rows(rows: list[dict[str, Any]], fmt: str) -> None:
    if fmt == "json":
        for r in rows:
            print(json.dumps(r))
        return
    cols = ["quant", "size", "threads", "n_batch", "n_ubatch", "fa", "type_k", "type_v", "test"]
    cols += ["t/s", "stddev", "rsd", "reps", "peak_rss_mb"]
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            for t in r["tests"]:
                w.writerow(_flat(r, t))
        print(buf.getvalue(), end="")
        return
    table = Table(title="llama.cpp benchmark (tokens/s, mean ± stddev over repetitions)")
    for c in cols:
        table.add_column(c, justify="right" if c not in ("quant", "test") else "left")
    for r in rows:
        for t in r["tests"]:
            flat = _flat(r, t)
            table.add_row(*[str(flat[c]) for c in cols])
    console.print(table)


def _flat(r: dict[str, Any], t: dict[str, Any]) -> dict[str, Any]:
    return {
        "quant": r["quant"],
        "size": f"{r['model_size'] / 2**20:.1f} MiB",
        "threads": r["n_threads"],
        "n_batch": r["n_batch"],
        "n_ubatch": r["n_ubatch"],
        "fa": int(r["flash_attn"]),
        "type_k": r["type_k"],
        "type_v": r["type_v"],
        "test": t["test"],
        "t/s": f"{t['avg_ts']:.2f}",
        "stddev": f"{t['stddev_ts']:.2f}",
        "rsd": f"{100 * t.get('rsd', 0.0):.1f}%",
        "reps": len(t["samples_ts"]),
        "peak_rss_mb": f"{r['peak_rss_bytes'] / 2**20:.0f}",
    }


@app.command("bench")
def bench_command(
    model: Annotated[str, typer.Option("--model", "-m", help="GGUF file, HF folder or zoo:NAME")],
    quant: Annotated[
        str | None,
        typer.Option(
            "--quant", "-q", help="comma list of types to quantize to first, e.g. F16,Q8_0"
        ),
    ] = None,
    threads: Annotated[str, typer.Option("-t", "--threads", help="comma list")] = "1",
    batch: Annotated[str, typer.Option("-b", "--batch-size", help="comma list")] = "2048",
    ubatch: Annotated[str, typer.Option("-ub", "--ubatch-size", help="comma list")] = "512",
    fa: Annotated[str, typer.Option("-fa", "--flash-attn", help="comma list of 0/1")] = "0",
    ctk: Annotated[str, typer.Option("-ctk", "--cache-type-k", help="comma list")] = "f16",
    ctv: Annotated[str, typer.Option("-ctv", "--cache-type-v", help="comma list")] = "f16",
    n_prompt: Annotated[int, typer.Option("-p", "--n-prompt", min=0, max=65536)] = 512,
    n_gen: Annotated[int, typer.Option("-n", "--n-gen", min=0, max=65536)] = 128,
    repetitions: Annotated[int, typer.Option("-r", "--repetitions", min=1, max=1000)] = 5,
    target_rsd: Annotated[
        float | None,
        typer.Option(
            "--target-rsd",
            help="repeat until stddev/mean <= this, e.g. 0.03 (default: exactly -r runs)",
        ),
    ] = None,
    max_reps: Annotated[
        int, typer.Option("--max-reps", min=1, max=1000, help="cap on runs with --target-rsd")
    ] = 20,
    n_ctx: Annotated[
        int | None, typer.Option("-c", "--ctx-size", help="default: n_prompt + n_gen")
    ] = None,
    mmap: Annotated[str, typer.Option("-mmp", "--mmap", help="comma list of 0/1")] = "1",
    bandwidth_gbs: Annotated[
        float | None, typer.Option("--bandwidth-gbs", help="memory bandwidth, for the roofline")
    ] = None,
    output: Annotated[str, typer.Option("-o", "--output", help="md, json or csv")] = "md",
    db: DbOption = None,
) -> None:
    """Benchmark prompt processing (pp) and generation (tg) tokens/s with llama.cpp, as
    llama-bench does; one stored trial per combination of the comma-listed knobs."""
    from haqa.tools.benchmark_llamacpp import Args, Result, benchmark_llamacpp, validate
    from haqa.tools.export_gguf import QuantizeArgs, check_quant_type, quantize_gguf
    from haqa.trialrun import run_as_trial

    # Everything is validated before the store is touched.
    if output not in _FORMATS:
        raise HaqaError(f"--output {output} is not one of {', '.join(_FORMATS)}")
    if n_prompt == 0 and n_gen == 0:
        raise HaqaError("--n-prompt and --n-gen are both 0: nothing to measure")
    if bandwidth_gbs is not None and bandwidth_gbs <= 0:
        raise HaqaError("--bandwidth-gbs must be positive")
    if target_rsd is not None and not 0 < target_rsd < 1:
        raise HaqaError(f"--target-rsd {target_rsd} must be between 0 and 1, e.g. 0.03")
    ctx = n_ctx if n_ctx is not None else max(n_prompt + n_gen, 16)
    qtypes = [check_quant_type(q) for q in _split(quant, "--quant")] if quant else []
    grid = _settings_grid(threads, batch, ubatch, fa, ctk, ctv, ctx, mmap)
    spec, base = _model_gguf(model)
    for rt in grid:
        validate(Args(model=base, runtime=rt, n_prompt=n_prompt, n_gen=n_gen))

    ggufs: list[tuple[str, Path]] = [] if qtypes else [(base.stem, base)]
    for q in qtypes:
        err_console.print(f"quantizing to {q} ...")
        ggufs.append((q, quantize_gguf(QuantizeArgs(gguf=base, quant_type=q)).gguf_path))

    bandwidth = bandwidth_gbs * 1e9 if bandwidth_gbs else None
    combos = [(label, path, rt) for label, path in ggufs for rt in grid]
    rows: list[dict[str, Any]] = []
    config_all = {"quant": qtypes, "n_prompt": n_prompt, "n_gen": n_gen, "reps": repetitions}
    with manual_run(open_store(db), model=spec, command="bench", config=config_all) as run:
        for i, (label, path, rt) in enumerate(combos, 1):
            args = Args(
                model=path,
                runtime=rt,
                n_prompt=n_prompt,
                n_gen=n_gen,
                repetitions=repetitions,
                target_rsd=target_rsd,
                max_repetitions=max_reps,
                bandwidth_bytes_per_s=bandwidth,
            )
            config = {"model": spec, "gguf": str(path), "quant_type": label, **rt.model_dump()}
            config |= {"n_prompt": n_prompt, "n_gen": n_gen, "repetitions": repetitions}
            if target_rsd is not None:
                config |= {"target_rsd": target_rsd, "max_repetitions": max_reps}
            err_console.print(
                f"[{i}/{len(combos)}] {label} t={rt.n_threads} b={rt.n_batch} "
                f"ub={rt.n_ubatch} fa={int(rt.flash_attn)} ctk={rt.type_k} ctv={rt.type_v}"
            )

            def metrics(r: Result, path: Path = path) -> TrialMetrics:
                return TrialMetrics(
                    prefill_tps=r.prefill_tps,
                    decode_tps=r.decode_tps,
                    peak_mem_bytes=r.peak_rss_bytes,
                    artifact_bytes=path.stat().st_size,
                )

            trial, result = run_as_trial(
                stage="deploy",
                tool="benchmark_llamacpp",
                config=config,
                fn=lambda args=args: benchmark_llamacpp(args),  # type: ignore[misc]
                metrics=metrics,
            )
            run.add(trial)
            if result is None:
                err_console.print(f"  failed: {trial.error}")
                continue
            rows.append({"quant": label, **result.model_dump(mode="json")})
    _print_rows(rows, output)
    if len(rows) < len(combos):
        raise typer.Exit(1)
