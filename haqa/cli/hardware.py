"""``haqa probe`` and ``haqa microbench``: what this machine is, measured.

Neither command writes to the store: a probe describes the machine, not a trial of a model, and
it is cached per hardware fingerprint under ``$HAQA_HOME/probe/`` (``--remeasure`` refreshes it);
a run records the profile it used in its own row.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from haqa.cli import app
from haqa.cli.common import console, err_console
from haqa.errors import HaqaError
from haqa.units import format_bytes


@app.command("probe")
def probe_command(
    as_json: Annotated[bool, typer.Option("--json", help="print the profile as JSON")] = False,
    remeasure: Annotated[
        bool, typer.Option("--remeasure", help="measure again instead of using the cached probe")
    ] = False,
    no_bandwidth: Annotated[
        bool, typer.Option("--no-bandwidth", help="skip the memory bandwidth measurement")
    ] = False,
) -> None:
    """CPU, ISA flags, caches, RAM, measured memory bandwidth, llama.cpp features, GPUs."""
    from haqa.tools.probe_hardware import Args, probe_hardware

    profile = probe_hardware(Args(remeasure=remeasure, measure_bandwidth=not no_bandwidth))
    if as_json:
        print(profile.model_dump_json(indent=2))
        return
    table = Table(title="hardware", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    table.add_row("CPU", f"{profile.cpu_model} ({profile.cpu_vendor}, {profile.arch})")
    table.add_row("cores", f"{profile.physical_cores} physical, {profile.logical_cores} logical")
    on = [k for k, v in profile.flags.items() if v]
    off = [k for k, v in profile.flags.items() if not v]
    table.add_row("ISA flags", ", ".join(on) or "-")
    table.add_row("absent", ", ".join(off) or "-")
    c = profile.caches
    table.add_row(
        "caches",
        f"L1d {format_bytes(c.l1d_bytes)}, L2 {format_bytes(c.l2_bytes)}, "
        f"L3 {format_bytes(c.l3_bytes)}",
    )
    table.add_row(
        "RAM",
        f"{format_bytes(profile.ram_total_bytes)} total, "
        f"{format_bytes(profile.ram_available_bytes)} available",
    )
    if profile.bandwidth:
        bw = profile.bandwidth
        table.add_row(
            "memory bandwidth",
            f"{bw.read_bytes_per_s / 1e9:.1f} GB/s read ({bw.method})"
            + (" [cached]" if profile.from_cache else ""),
        )
    table.add_row("llama.cpp", profile.llama_cpp_system_info or "llama-cpp-python not installed")
    for gpu in profile.gpus:
        table.add_row(
            "GPU",
            f"{gpu.name}, compute capability {gpu.compute_capability}, "
            f"{format_bytes(gpu.total_memory_bytes)}",
        )
    if not profile.gpus:
        table.add_row("GPU", "none visible to torch")
    table.add_row("fingerprint", profile.fingerprint)
    console.print(table)


def _threads(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise HaqaError(f"--threads '{text}' must be a comma list of integers") from None
    top = 4 * (os.cpu_count() or 1)
    if not values or any(not 1 <= v <= top for v in values):
        raise HaqaError(f"--threads '{text}' must list thread counts in 1..{top}")
    return values


@app.command("microbench")
def microbench_command(
    model: Annotated[
        str | None,
        typer.Option("--model", "-m", help="HF folder, GGUF or zoo:NAME whose shapes to use"),
    ] = None,
    hidden: Annotated[int, typer.Option(help="hidden size when no model is given")] = 1024,
    intermediate: Annotated[int, typer.Option(help="FFN size when no model is given")] = 2816,
    threads: Annotated[str | None, typer.Option(help="comma list, default: all cores")] = None,
    repeats: Annotated[int, typer.Option(min=1, max=1000)] = 10,
    no_llama: Annotated[bool, typer.Option("--no-llama", help="skip llama.cpp's kernels")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
) -> None:
    """Time matmuls per data type at a model's shapes (torch, bitsandbytes, llama.cpp)."""
    from haqa.tools.microbench_kernels import Args, microbench_kernels

    path: Path | None = None
    if model is not None:
        from haqa.modelref import resolve_model

        path = resolve_model(model).path
    args = Args(
        model=path,
        hidden=hidden,
        intermediate=intermediate,
        threads=_threads(threads) if threads else [os.cpu_count() or 1],
        repeats=repeats,
        llama_types=[] if no_llama else ["F16", "Q8_0", "Q4_0", "Q4_K_M"],
    )
    err_console.print("timing kernels (about a minute) ...")
    result = microbench_kernels(args)
    if as_json:
        print(json.dumps(result.model_dump(mode="json"), indent=2))
        return
    table = Table(title=f"kernels at hidden {result.hidden}, intermediate {result.intermediate}")
    for col in ("op", "dtype", "backend", "M", "N", "K", "threads", "ms", "GFLOP/s", "GB/s"):
        table.add_column(col, justify="right" if col not in ("op", "dtype", "backend") else "left")
    for r in result.rows:
        table.add_row(
            r.op,
            r.dtype,
            r.backend,
            str(r.m),
            str(r.n),
            str(r.k),
            str(r.threads),
            f"{r.seconds * 1e3:.3f}",
            f"{r.gflops:.1f}",
            f"{r.gbytes_per_s:.1f}",
        )
    console.print(table)
    for line in result.implications:
        console.print(f"- {line}")
    for line in result.skipped:
        err_console.print(f"skipped: {line}")
