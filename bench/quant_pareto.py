"""The accuracy/speed/size front of a real model's GGUFs: uniform llama.cpp types against the same
types quantized with an importance matrix and against mixed per-tensor recipes.

Every file is made from the zoo's SmolLM2-135M-Instruct F16 GGUF; the importance matrix is
computed by haqa (``compute_imatrix``) over the model's calibration prose (``calib.txt``), and the
perplexity is measured over held-out prose (``eval.txt``, no paragraph in common), as
``llama-perplexity`` does (512-token windows, second half scored). Decode and prompt speeds are
llama-bench style measurements (``benchmark_llamacpp``) taken in interleaved rounds, every file once
per round, so slow drift of a shared machine spreads over all rows alike; the table has the mean.

A row is on the front of (perplexity, size) or (perplexity, decode tok/s) when no other row is at
least as good on both and better on one. For each non-uniform row the script lists the uniform
types it beats on both figures and the uniform types that beat it.

    python bench/quant_pareto.py [--weights Q4_K_M,Q4_K_M+imatrix,Q3_K_M+sensitive_up+imatrix]
        [--ppl-windows 16] [--imatrix-chunks 32] [--rounds 2] [--threads N] [--plot FILE]
"""

from __future__ import annotations

import argparse
import functools
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from _common import reproduce_line

from haqa.recipes import Weights
from haqa.schemas import RuntimeSettings
from haqa.tools.benchmark_llamacpp import Args as BenchArgs
from haqa.tools.benchmark_llamacpp import benchmark_llamacpp
from haqa.tools.export_gguf import QuantizeArgs, quantize_gguf
from haqa.tools.gguf_header import weight_mix
from haqa.tools.gguf_loglik import gguf_perplexity
from haqa.tools.imatrix import ImatrixArgs, compute_imatrix
from haqa.tools.tensor_sensitivity import (
    SensitivityArgs,
    SensitivityResult,
    tensor_sensitivity,
    weights_tensor_recipe,
)

UNIFORM = "F16,Q8_0,Q6_K,Q5_K_M,Q4_K_M,Q4_0,IQ4_NL,Q3_K_M,Q2_K"
VARIANTS = (
    "Q4_K_M+imatrix,IQ4_NL+imatrix,Q3_K_M+imatrix,Q2_K+imatrix,"
    "Q3_K_M+sensitive_up+imatrix,Q2_K+sensitive_up+imatrix,Q4_K_M+ffn_up_gate_down+imatrix,"
    "Q4_0+sensitive_up+imatrix,Q3_K_M+ends_up+imatrix"
)


@dataclass
class Row:
    weights: Weights
    path: Path
    size_mib: float
    bpw: float
    ppl: float
    decode: list[float]
    prefill: list[float]

    @property
    def tg(self) -> float:
        return sum(self.decode) / len(self.decode) if self.decode else math.nan

    @property
    def pp(self) -> float:
        return sum(self.prefill) / len(self.prefill) if self.prefill else math.nan


def dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """``a`` at least as good as ``b`` on both figures (lower is better) and better on one."""
    return a[0] <= b[0] and a[1] <= b[1] and a != b


def _make(
    f16: Path, w: Weights, imatrix: Path | None, probe: Callable[[], SensitivityResult]
) -> Path:
    if w.quant_type == "F16" and w.plain:
        return f16
    args = QuantizeArgs(
        gguf=f16,
        quant_type=w.quant_type,  # type: ignore[arg-type]
        recipe=weights_tensor_recipe(f16, w, probe),
        imatrix=imatrix if w.imatrix else None,
    )
    return quantize_gguf(args).gguf_path


def _speed(path: Path, threads: int) -> tuple[float, float]:
    rt = RuntimeSettings(n_threads=threads, n_threads_batch=threads)
    res = benchmark_llamacpp(
        BenchArgs(model=path, runtime=rt, n_prompt=256, n_gen=64, repetitions=3)
    )
    return res.decode_tps or 0.0, res.prefill_tps or 0.0


def _front(rows: list[Row], key: str) -> set[str]:
    def point(r: Row) -> tuple[float, float]:
        return (r.ppl, r.size_mib) if key == "size" else (r.ppl, -r.tg)

    return {
        r.weights.label
        for r in rows
        if not any(dominates(point(o), point(r)) for o in rows if o is not r)
    }


def _verdicts(rows: list[Row]) -> list[str]:
    out = []
    uniform = [r for r in rows if r.weights.plain]
    for r in rows:
        if r.weights.plain:
            continue
        keys = (("size", "size"), ("tg", "decode")) if r.decode else (("size", "size"),)
        for key, name in keys:

            def pt(x: Row, k: str = key) -> tuple[float, float]:
                return (x.ppl, x.size_mib) if k == "size" else (x.ppl, -x.tg)

            beats = [u.weights.label for u in uniform if dominates(pt(r), pt(u))]
            beaten = [u.weights.label for u in uniform if dominates(pt(u), pt(r))]
            out.append(
                f"- {r.weights.label} on (perplexity, {name}): beats "
                f"{', '.join(beats) or 'no uniform type'}; beaten by "
                f"{', '.join(beaten) or 'no uniform type'}"
            )
    return out


def _plot(rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    for ax, key, label in ((axes[0], "size", "file size (MiB)"), (axes[1], "tg", "decode tok/s")):
        for r in rows:
            x = r.size_mib if key == "size" else r.tg
            style = "o" if r.weights.plain else ("s" if r.weights.recipe == "uniform" else "^")
            color = "tab:blue" if r.weights.plain else "tab:red"
            ax.plot(x, r.ppl, style, color=color)
            ax.annotate(
                r.weights.label, (x, r.ppl), fontsize=7, xytext=(3, 3), textcoords="offset points"
            )
        ax.set_xlabel(label)
        ax.set_ylabel("perplexity (held-out prose)")
        ax.grid(alpha=0.3)
    fig.suptitle("SmolLM2-135M-Instruct: uniform types (o), +imatrix (s), mixed recipes (^)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--weights", default=f"{UNIFORM},{VARIANTS}")
    ap.add_argument("--ppl-windows", type=int, default=16)
    ap.add_argument("--imatrix-chunks", type=int, default=32)
    ap.add_argument(
        "--rounds", type=int, default=2, help="interleaved speed rounds (0: sizes only)"
    )
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--plot", type=Path, default=None, help="write the two fronts as a PNG")
    a = ap.parse_args()
    from haqa import zoo

    files = zoo.smollm2_files()
    f16, text = files.f16_gguf, (files.text / "eval.txt").read_text()
    imatrix = compute_imatrix(
        ImatrixArgs(gguf=f16, calibration=files.text / "calib.txt", max_chunks=a.imatrix_chunks)
    )
    print(reproduce_line())
    print(
        f"imatrix: {imatrix.n_chunks} chunks of {imatrix.chunk_size} tokens of "
        f"{imatrix.dataset} ({imatrix.time_s:.0f} s); perplexity over {a.ppl_windows} windows of "
        f"eval.txt; speed: pp256/tg64, {a.threads} threads, {a.rounds} interleaved rounds of 3"
    )

    @functools.cache
    def probe() -> SensitivityResult:
        result = tensor_sensitivity(SensitivityArgs(gguf=f16, text=files.text / "calib.txt"))
        print(f"{result.summary()} ({result.time_s:.0f} s)")
        return result

    rows = []
    for spec in a.weights.split(","):
        w = Weights.parse(spec)
        path = _make(f16, w, imatrix.imatrix_path, probe)
        ppl = gguf_perplexity(path, text, n_threads=a.threads, max_chunks=a.ppl_windows)
        mix = weight_mix(path)
        rows.append(
            Row(w, path, path.stat().st_size / 2**20, mix.bits_per_weight, ppl.perplexity, [], [])
        )
    for _ in range(a.rounds):
        for r in rows:
            tg, pp = _speed(r.path, a.threads)
            r.decode.append(tg)
            r.prefill.append(pp)
    size_front = _front(rows, "size")
    speed_front = _front(rows, "tg") if a.rounds else set()
    print()
    print(
        "| weights | size MiB | bits/weight | perplexity | decode tok/s | prefill tok/s "
        "| front (size) | front (decode) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r.weights.label} | {r.size_mib:.1f} | {r.bpw:.2f} | {r.ppl:.2f} | {r.tg:.0f} "
            f"| {r.pp:.0f} | {'yes' if r.weights.label in size_front else ''} "
            f"| {'yes' if r.weights.label in speed_front else ''} |"
        )
    print()
    print("\n".join(_verdicts(rows)))
    if a.plot:
        _plot(rows, a.plot)
        print(f"\nplot: {a.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
