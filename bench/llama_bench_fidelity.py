"""Does haqa's llama.cpp benchmark measure what llama.cpp's own ``llama-bench`` measures?

Builds ``llama-bench`` from the sources llama-cpp-python vendors (once, see
``llama_bench_build.py``) and runs it on the installed wheel's own libraries, so both tools run
the same kernels and only their drivers differ; then runs both on the same GGUF files with the
same knobs, in back-to-back pairs (``--pairs`` per configuration and round, who goes first
alternating pair by pair and round by round; with the control, llama-bench runs in the middle of
haqa's run and its own second one), and prints haqa ÷ llama-bench for pp and tg
tokens/s: a round's ratio is the median of its pairs' ratios, a configuration's the median over
rounds. Target: median pp and tg ratios within 0.95–1.05, every round's ratio within 0.90–1.10.

Why pairs within a round: a virtual machine's speed moves in steps seconds long (a 2-vCPU Zen 5
guest's memory read 48, then 65 GB/s, for seconds at a time, nothing else running), and one
haqa reading against one llama-bench reading a few seconds later is out by a third when a step
falls between them; with several adjacent pairs a step spoils one pair, not the round.

The control (on unless ``--no-control``; without it the last column is how far llama-bench moved
against itself within a round): each pair gets a second llama-bench run, in the place mirrored
from haqa's (see :func:`_pair`), and llama-bench ÷ llama-bench goes through the very same
pairing and medians as haqa ÷ llama-bench, in a column and a summary line of its own. A round
that the control also misses was the machine's. The control is a lower bound on the machine's
share, not all of it: on a 2-vCPU Zen 5 guest a process keeps a speed offset of up to ~7% for
its life, and two llama-bench processes in a row get 70–90% of the same physical pages for their
large buffers (haqa's process after llama-bench's, ~40%), so the twins share more of their luck
than haqa and llama-bench can.

Each test gets llama-bench's own context size (pp: ``n_prompt`` cells, tg: ``n_gen``), so the two
tools do the same work per token. It also prints haqa's host overhead per generated token (time
outside ``llama_decode``/``llama_synchronize``, i.e. Python driving llama.cpp) beside the time of
a token: on a small model that decodes in about a millisecond, a fixed cost per token is what
separates a Python loop from a C++ one.

    .venv/bin/python bench/llama_bench_fidelity.py [--model GGUF_OR_HF ...] [--quant Q4_0,Q8_0,F16]
        [--threads 1,2] [-p 128] [-n 32] [-r 3] [--rounds 2] [--pairs 3] [--no-control]

Any GGUF file, HF folder or zoo name; ``--model`` may be given more than once. Without it:
zoo:bench-60m (a few hundred tokens/s on two cores: the regime where a per-token cost shows), the
zoo's real 135M model (zoo:smollm2-135m) and zoo:bench-200m, each when built, else zoo:tiny.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any, NamedTuple

from llama_bench_build import ensure_llama_bench, tool_env

from haqa.errors import HaqaError
from haqa.schemas import RuntimeSettings
from haqa.tools.benchmark_llamacpp import Args, benchmark_llamacpp
from haqa.tools.export_gguf import Args as ExportArgs
from haqa.tools.export_gguf import (
    QuantizeArgs,
    check_gguf,
    check_quant_type,
    export_gguf,
    quantize_gguf,
)
from haqa.tools.llama_session import extra_bufts_safe


def _default_models() -> list[str]:
    from haqa.zoo import is_built

    names = ("bench-60m", "smollm2-135m", "bench-200m")
    built = [f"zoo:{name}" for name in names if is_built(name)]
    return built or ["zoo:tiny"]


def _base_gguf(spec: str) -> Path:
    from haqa.modelref import resolve_model

    ref = resolve_model(spec)
    if ref.kind == "gguf":
        check_gguf(ref.path)
        return ref.path
    f16 = ref.path / "model-F16.gguf"
    if f16.is_file():  # a zoo folder that carries its own F16 export
        return f16
    print(f"exporting {spec} to GGUF F16 ...", flush=True)
    return export_gguf(ExportArgs(model=ref.path, outtype="F16")).gguf_path


def _tests(p: int, n: int) -> list[tuple[str, int, int]]:
    """The pp and tg tests that have tokens, as (name, n_prompt, n_gen): one process each."""
    return [(test, pp, tg) for test, pp, tg in (("pp", p, 0), ("tg", 0, n)) if pp + tg > 0]


def _llama_bench(exe: Path, gguf: Path, threads: int, p: int, n: int, r: int) -> dict[str, float]:
    """pp and tg as two llama-bench processes, as haqa's side runs them (see :func:`_haqa`)."""
    out: dict[str, float] = {}
    for test, n_prompt, n_gen in _tests(p, n):
        cmd = [str(exe), "-m", str(gguf), "-p", str(n_prompt), "-n", str(n_gen), "-r", str(r)]
        cmd += ["-t", str(threads), "-b", "2048", "-ub", "512", "-fa", "0", "-ctk", "f16"]
        cmd += ["-ctv", "f16", "-ngl", "0", "-lm", "mmap"]
        cmd += ["--repack", str(int(extra_bufts_safe())), "-o", "json"]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=tool_env())
        if proc.returncode != 0:
            tail = [ln for ln in proc.stderr.splitlines() if ln.strip()][-1:]
            raise RuntimeError(f"llama-bench failed ({proc.returncode}): {tail}")
        rows: list[dict[str, Any]] = json.loads(proc.stdout)
        if not rows:
            raise RuntimeError(f"llama-bench printed no result for {test} ({gguf.name})")
        out[test] = float(rows[-1]["avg_ts"])
    return out


def _haqa(gguf: Path, threads: int, p: int, n: int, r: int) -> dict[str, float]:
    """pp and tg as two benchmarks, each with llama-bench's context size for that test, so each
    in a process of its own; llama-bench's side does the same. Why both: the first timed tg run
    of a fresh process reads 3–5% slow, llama-bench's as haqa's (Zen 5, two threads, 20 runs of
    five tg64: the first was 0.949 of its run's median in haqa's tg process, 0.967 in
    llama-bench's with ``-p 0``, 0.987 in llama-bench's after its own pp), so a tg that follows
    a pp on one side only is a bias of its own, ~2% with ``-r 3``."""
    out: dict[str, float] = {}
    for test, n_prompt, n_gen in _tests(p, n):
        rt = RuntimeSettings(
            n_threads=threads, n_batch=2048, n_ubatch=512, n_ctx=max(n_prompt + n_gen, 16)
        )
        res = benchmark_llamacpp(
            Args(model=gguf, runtime=rt, n_prompt=n_prompt, n_gen=n_gen, repetitions=r)
        )
        if test == "pp" and res.prefill_tps is not None:
            out["pp"] = res.prefill_tps
        if test == "tg" and res.decode_tps is not None:
            out["tg"] = res.decode_tps
            host = res.tests[-1].host_ns_per_token
            if host is not None:
                out["host_us"] = host / 1e3
    return out


def _files(models: list[str], quants: str) -> dict[tuple[str, str], Path]:
    files = {}
    for spec in models:
        base = _base_gguf(spec)
        for q in quants.split(","):
            qt = check_quant_type(q)
            files[(spec, qt)] = quantize_gguf(QuantizeArgs(gguf=base, quant_type=qt)).gguf_path
    return files


#: The runs of a pair: haqa, llama-bench, and (the control) llama-bench again.
ARMS = ("haqa", "llama-bench", "again")


def _pair(
    exe: Path, gguf: Path, threads: int, a: argparse.Namespace, shift: int
) -> dict[str, dict[str, float]]:
    """One pair: haqa and llama-bench back to back, haqa first when ``shift`` (the round plus
    the pair's index) is even. With the control, llama-bench's second run ("again") takes the
    place mirrored from haqa's: haqa, llama-bench, again; then again, llama-bench, haqa. Both
    ratios are then read with the same timing (adjacent, first and second alternating), and
    whatever running just before or just after llama-bench does to a process (it gets much of the
    freed memory of the process before it) falls on haqa and the control alike."""
    arms = list(ARMS if a.control else ARMS[:2])
    if shift % 2:
        arms.reverse()
    out: dict[str, dict[str, float]] = {}
    for arm in arms:
        if arm == "haqa":
            out[arm] = _haqa(gguf, threads, a.n_prompt, a.n_gen, a.repetitions)
        else:
            out[arm] = _llama_bench(exe, gguf, threads, a.n_prompt, a.n_gen, a.repetitions)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--model", action="append", help="GGUF file, HF folder or zoo:NAME")
    ap.add_argument("--quant", default="Q4_0,Q8_0,F16")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("-p", "--n-prompt", type=int, default=128)
    ap.add_argument("-n", "--n-gen", type=int, default=32)
    ap.add_argument("-r", "--repetitions", type=int, default=3)
    ap.add_argument(
        "--rounds", type=int, default=2, help="interleaved rounds, even: each order as often"
    )
    ap.add_argument(
        "--pairs",
        type=int,
        default=3,
        help="back-to-back haqa/llama-bench pairs per configuration and round (odd: a median)",
    )
    ap.add_argument(
        "--no-control",
        dest="control",
        action="store_false",
        help="skip the second llama-bench run per pair (llama-bench ÷ itself, same pairing)",
    )
    a = ap.parse_args()
    if a.pairs < 1 or a.rounds < 1:
        ap.error("--pairs and --rounds must be at least 1")
    if a.rounds % 2:
        print(f"note: {a.rounds} rounds: one order runs once more than the other")
    try:
        exe = ensure_llama_bench()
    except (HaqaError, subprocess.CalledProcessError, OSError) as exc:
        print(f"SKIP: llama-bench could not be built here ({exc})")
        return 0
    try:
        files = _files(a.model or _default_models(), a.quant)
    except HaqaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    threads = [int(t) for t in a.threads.split(",")]
    combos = [(key, t) for key in files for t in threads]
    got: dict[tuple[str, str, int, str], list[Round]] = {}
    control: dict[tuple[str, str, int, str], list[Round]] = {}
    host_us: dict[tuple[str, str, int], list[tuple[float, float]]] = {}
    print(
        f"llama-bench: {exe}\np={a.n_prompt} n={a.n_gen} r={a.repetitions} pairs={a.pairs} "
        f"control={a.control}"
    )
    for rnd in range(a.rounds):
        for (spec, q), t in combos:
            gguf = files[(spec, q)]
            runs = [_pair(exe, gguf, t, a, shift=rnd + i) for i in range(a.pairs)]
            for run in runs:
                ours, ref = run["haqa"], run["llama-bench"]
                if "host_us" in ours and "tg" in ref:
                    host_us.setdefault((spec, q, t), []).append((ours["host_us"], 1e6 / ref["tg"]))
            tests = [test for test, _, _ in _tests(a.n_prompt, a.n_gen)]
            for test in tests:
                for sink, arm in ((got, "haqa"), (control, "again")):
                    both = [
                        (run[arm][test], run["llama-bench"][test]) for run in runs if arm in run
                    ]
                    if both:
                        sink.setdefault((spec, q, t, test), []).append(Round.of(both))
            # Each pair's readings, tok/s: haqa/llama-bench, and /again (the control's run).
            arms = ARMS if a.control else ARMS[:2]
            shown = "  ".join(
                f"{test} "
                + " ".join("/".join(f"{run[arm][test]:.0f}" for arm in arms) for run in runs)
                for test in tests
            )
            print(f"  round {rnd + 1}/{a.rounds} {spec} {q} t={t}: {'/'.join(arms)} {shown}")
    print()
    _print_table(got, control, a.n_prompt, a.n_gen)
    _print_host(host_us)
    return 0


class Round(NamedTuple):
    """One configuration's pairs in one round: the medians of each side and the median of the
    pairs' ratios (each pair ran back to back), and how far llama-bench moved against itself."""

    ours: float
    ref: float
    ratio: float
    ref_spread: float  # slowest to fastest llama-bench reading of the round, as a ratio

    @classmethod
    def of(cls, pairs: list[tuple[float, float]]) -> Round:
        refs = [r for _, r in pairs]
        return cls(
            ours=statistics.median(o for o, _ in pairs),
            ref=statistics.median(refs),
            ratio=statistics.median(o / r for o, r in pairs),
            ref_spread=max(refs) / min(refs),
        )


def _print_table(
    got: dict[tuple[str, str, int, str], list[Round]],
    control: dict[tuple[str, str, int, str], list[Round]],
    p: int,
    n: int,
) -> None:
    # A configuration's ratio is the median of its per-round ratios; a round's ratio is the
    # median of its pairs' ratios: each pair ran back to back, so a step in the machine's speed
    # between pairs (a VM's memory moves between states seconds long) cancels within a pair.
    # The control's rounds (llama-bench ÷ llama-bench) are judged by the very same rule.
    last = "llama-bench ÷ itself, per round" if control else "llama-bench vs itself"
    head = "| model | quant | threads | test | haqa t/s | llama-bench t/s | ratio | per round"
    print(f"{head} | {last} |")
    print("|---|---|---|---|---|---|---|---|---|")
    ratios: dict[str, list[float]] = {"pp": [], "tg": []}
    for (spec, q, t, test), rounds in got.items():
        h = statistics.median(r.ours for r in rounds)
        lb = statistics.median(r.ref for r in rounds)
        per_round = [r.ratio for r in rounds]
        ratios[test] += per_round
        name = f"pp{p}" if test == "pp" else f"tg{n}"
        per = " ".join(f"{r:.2f}" for r in per_round)
        twin = control.get((spec, q, t, test))
        if twin:
            mine = " ".join(f"{r.ratio:.2f}" for r in twin)
        else:
            mine = f"{max(r.ref_spread for r in rounds):.2f}x"
        print(
            f"| {spec} | {q} | {t} | {name} | {h:.2f} | {lb:.2f} | "
            f"{statistics.median(per_round):.3f} | {per} | {mine} |"
        )
    print()
    _summarise("haqa ÷ llama-bench", ratios)
    if control:
        mine_ratios: dict[str, list[float]] = {"pp": [], "tg": []}
        for (_, _, _, test), rounds in control.items():
            mine_ratios[test] += [r.ratio for r in rounds]
        _summarise("control, llama-bench ÷ llama-bench", mine_ratios)


def _summarise(label: str, ratios: dict[str, list[float]]) -> None:
    every = [r for rs in ratios.values() for r in rs]
    for test, rs in ratios.items():
        if rs:
            print(
                f"{label}: {test}: median ratio {statistics.median(rs):.3f} over {len(rs)} round "
                f"ratios (range {min(rs):.2f}–{max(rs):.2f}; target median 0.95–1.05)"
            )
    if every:
        ok = all(0.90 <= r <= 1.10 for r in every)
        print(
            f"{label}: every round's ratio within 0.90–1.10: {ok} "
            f"({sum(not 0.9 <= r <= 1.1 for r in every)} out)"
        )


def _print_host(host_us: dict[tuple[str, str, int], list[tuple[float, float]]]) -> None:
    """haqa's own loop per generated token, beside the time llama-bench takes for a token."""
    if not host_us:
        return
    print("\n| model | quant | threads | haqa host µs/token | llama-bench µs/token | share |")
    print("|---|---|---|---|---|---|")
    for (spec, q, t), pairs in host_us.items():
        host = statistics.median(x for x, _ in pairs)
        token = statistics.median(y for _, y in pairs)
        print(f"| {spec} | {q} | {t} | {host:.1f} | {token:.0f} | {host / token:.1%} |")


if __name__ == "__main__":
    raise SystemExit(main())
