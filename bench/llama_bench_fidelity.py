"""Does haqa's llama.cpp benchmark measure what llama.cpp's own ``llama-bench`` measures?

Builds ``llama-bench`` from the sources llama-cpp-python vendors (once, see
``llama_bench_build.py``), then runs both side by side on the same GGUF files with the same knobs,
interleaved and repeated (the order alternates each round) so that load from other processes falls
on both alike, and prints haqa ÷ llama-bench for pp and tg tokens/s: the median over rounds of
the ratio within each round.
Target: every ratio within 0.90–1.10.

    .venv/bin/python bench/llama_bench_fidelity.py [--model GGUF_OR_HF] [--quant Q4_0,Q8_0,F16]
        [--threads 1,2] [-p 128] [-n 32] [-r 3] [--rounds 3]

Without ``--model`` it uses zoo:bench-200m when that is built, else zoo:tiny.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from llama_bench_build import ensure_llama_bench

from haqa.errors import HaqaError
from haqa.schemas import RuntimeSettings
from haqa.tools.benchmark_llamacpp import Args, benchmark_llamacpp, extra_bufts_safe
from haqa.tools.export_gguf import Args as ExportArgs
from haqa.tools.export_gguf import (
    QuantizeArgs,
    check_gguf,
    check_quant_type,
    export_gguf,
    quantize_gguf,
)


def _base_gguf(spec: str | None) -> Path:
    from haqa.modelref import resolve_model
    from haqa.zoo import zoo_path

    if spec is None:
        big = zoo_path("bench-200m")
        spec = "zoo:bench-200m" if (big / "config.json").is_file() else "zoo:tiny"
    ref = resolve_model(spec)
    if ref.kind == "gguf":
        check_gguf(ref.path)
        return ref.path
    print(f"exporting {spec} to GGUF F16 ...", flush=True)
    return export_gguf(ExportArgs(model=ref.path, outtype="F16")).gguf_path


def _llama_bench(exe: Path, gguf: Path, threads: int, p: int, n: int, r: int) -> dict[str, float]:
    cmd = [str(exe), "-m", str(gguf), "-p", str(p), "-n", str(n), "-r", str(r)]
    cmd += ["-t", str(threads), "-b", "2048", "-ub", "512", "-fa", "0", "-ctk", "f16"]
    cmd += ["-ctv", "f16", "-ngl", "0", "-lm", "mmap", "--repack", str(int(extra_bufts_safe()))]
    cmd += ["-o", "json"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = [ln for ln in proc.stderr.splitlines() if ln.strip()][-1:]
        raise RuntimeError(f"llama-bench failed ({proc.returncode}): {tail}")
    rows: list[dict[str, Any]] = json.loads(proc.stdout)
    return {
        ("pp" if row["n_prompt"] > 0 else "tg"): float(row["avg_ts"])
        for row in rows
        if row["n_prompt"] > 0 or row["n_gen"] > 0
    }


def _haqa(gguf: Path, threads: int, p: int, n: int, r: int) -> dict[str, float]:
    # llama-bench sizes each test's context to its tokens; n_ctx = max(p, n) is the same padded
    # size for the pp test and only a larger, unread KV allocation for the tg test.
    rt = RuntimeSettings(n_threads=threads, n_batch=2048, n_ubatch=512, n_ctx=max(p, n, 16))
    res = benchmark_llamacpp(Args(model=gguf, runtime=rt, n_prompt=p, n_gen=n, repetitions=r))
    out = {}
    if res.prefill_tps is not None:
        out["pp"] = res.prefill_tps
    if res.decode_tps is not None:
        out["tg"] = res.decode_tps
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--model", help="GGUF file, HF folder or zoo:NAME")
    ap.add_argument("--quant", default="Q4_0,Q8_0,F16")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("-p", "--n-prompt", type=int, default=128)
    ap.add_argument("-n", "--n-gen", type=int, default=32)
    ap.add_argument("-r", "--repetitions", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median taken)")
    a = ap.parse_args()
    try:
        exe = ensure_llama_bench()
    except (HaqaError, subprocess.CalledProcessError, OSError) as exc:
        print(f"SKIP: llama-bench could not be built here ({exc})")
        return 0
    try:
        base = _base_gguf(a.model)
        files = {}
        for q in a.quant.split(","):
            qt = check_quant_type(q)
            files[qt] = quantize_gguf(QuantizeArgs(gguf=base, quant_type=qt)).gguf_path
    except HaqaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    threads = [int(t) for t in a.threads.split(",")]
    combos = [(q, t) for q in files for t in threads]
    got: dict[tuple[str, int, str], list[tuple[float, float]]] = {}
    print(f"llama-bench: {exe}\nmodel: {base}  p={a.n_prompt} n={a.n_gen} r={a.repetitions}")
    for rnd in range(a.rounds):
        for i, (q, t) in enumerate(combos):
            # Alternate who goes first, so a slow spell of the machine is shared out evenly.
            if (rnd + i) % 2 == 0:
                ours = _haqa(files[q], t, a.n_prompt, a.n_gen, a.repetitions)
                ref = _llama_bench(exe, files[q], t, a.n_prompt, a.n_gen, a.repetitions)
            else:
                ref = _llama_bench(exe, files[q], t, a.n_prompt, a.n_gen, a.repetitions)
                ours = _haqa(files[q], t, a.n_prompt, a.n_gen, a.repetitions)
            for test in ("pp", "tg"):
                if test in ours and test in ref:
                    got.setdefault((q, t, test), []).append((ours[test], ref[test]))
            print(f"  round {rnd + 1}/{a.rounds} {q} t={t}: haqa {ours} llama-bench {ref}")
    print()
    # The ratio is the median of the per-round ratios: each pair ran back to back, so load from
    # other processes mostly cancels within a pair, which it does not across rounds.
    print("| quant | threads | test | haqa t/s | llama-bench t/s | ratio | per-round ratios |")
    print("|---|---|---|---|---|---|---|")
    ratios = {}
    for (q, t, test), pairs in got.items():
        h = statistics.median(p[0] for p in pairs)
        lb = statistics.median(p[1] for p in pairs)
        ratio = ratios[(q, t, test)] = statistics.median(x / y for x, y in pairs)
        per = " ".join(f"{x / y:.2f}" for x, y in pairs)
        name = f"pp{a.n_prompt}" if test == "pp" else f"tg{a.n_gen}"
        print(f"| {q} | {t} | {name} | {h:.2f} | {lb:.2f} | {ratio:.3f} | {per} |")
    worst = max(ratios.values(), key=lambda r: abs(r - 1), default=1.0)
    ok = all(0.90 <= r <= 1.10 for r in ratios.values())
    print(f"\nworst ratio {worst:.3f}; all within 0.90–1.10: {ok}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
