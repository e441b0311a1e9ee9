"""What each llama.cpp quant type costs a real model: size, effective bits per weight, perplexity
and KL divergence from the reference over held-out English prose, top-token agreement, and
multiple-choice accuracy with its 95% interval and a paired comparison with the reference.

The model is the zoo's SmolLM2-135M-Instruct, the zoo model that ships held-out prose: the
reference is its F16 GGUF (for the zoo model: the shipped Q4_1 weights dequantized), every type is
quantized from it. Perplexity follows ``llama-perplexity`` (512-token windows, second half
scored); KL divergence and "same top" follow ``llama-perplexity --kl-divergence`` on the first
``--kl-windows`` windows.

    python bench/real_model_quality.py [--model zoo:smollm2-135m]
        [--quants F16,Q8_0,Q6_K,Q5_K_M,Q4_K_M,Q4_0,IQ4_NL,Q3_K_M,Q2_K] [--split test]
        [--ppl-windows 48] [--kl-windows 4] [--threads N]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from _common import reproduce_line

from haqa.modelref import resolve_model
from haqa.stats import compare_paired, wilson_interval
from haqa.tools.evaluate import Args as EvalArgs
from haqa.tools.evaluate import evaluate
from haqa.tools.export_gguf import QuantizeArgs, check_quant_type, quantize_gguf
from haqa.tools.gguf_header import weight_mix
from haqa.tools.gguf_loglik import divergence, gguf_perplexity, gguf_token_distributions

DEFAULT_QUANTS = "F16,Q8_0,Q6_K,Q5_K_M,Q4_K_M,Q4_0,IQ4_NL,Q3_K_M,Q2_K"


def _reference(spec: str) -> tuple[Path, str]:
    """The reference GGUF and the held-out text of a zoo model that ships prose and tasks."""
    from haqa import zoo

    if spec != "zoo:smollm2-135m":
        raise SystemExit(f"{spec}: only zoo:smollm2-135m ships held-out prose and tasks")
    resolve_model(spec)  # builds it once if needed
    return zoo.smollm2_files().f16_gguf, zoo.text_file("smollm2-135m", "eval").read_text()


def _windows(text: str, n: int) -> list[str]:
    """About ``n`` pieces of ~512 tokens (paragraphs joined), for the KL divergence."""
    paras = [p for p in text.split("\n\n") if p.strip()]
    out, cur = [], ""
    for p in paras:
        cur = f"{cur}\n\n{p}" if cur else p
        if len(cur) > 1800:  # ~400-500 tokens of English
            out.append(cur)
            cur = ""
        if len(out) == n:
            break
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--model", default="zoo:smollm2-135m")
    ap.add_argument("--quants", default=DEFAULT_QUANTS)
    ap.add_argument("--split", default="test", choices=("train", "validation", "test"))
    ap.add_argument("--ppl-windows", type=int, default=48, help="512-token windows for perplexity")
    ap.add_argument("--kl-windows", type=int, default=4, help="texts for the KL divergence")
    ap.add_argument("--limit", type=int, default=None, help="questions per task kind")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    a = ap.parse_args()
    from haqa import zoo

    f16, text = _reference(a.model)
    tasks = zoo.task_files(a.model.removeprefix("zoo:"), a.split)
    kl_texts = _windows(text, a.kl_windows)
    ref_dist = gguf_token_distributions(f16, kl_texts, n_threads=a.threads)
    ref_eval = evaluate(EvalArgs(model=f16, task_files=tasks, limit=a.limit, n_threads=a.threads))
    ref_ppl = gguf_perplexity(f16, text, n_threads=a.threads, max_chunks=a.ppl_windows)
    print(reproduce_line())
    print(
        f"reference: {f16.name}; perplexity over {ref_ppl.n_tokens} tokens "
        f"({ref_ppl.n_chunks} windows); {ref_eval.n_examples} {a.split} questions"
    )
    print()
    print(
        "| type | size MiB | bits/weight | weights | perplexity | x ref | KLD | same top "
        "| accuracy (95% CI) | vs reference, paired |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for q in a.quants.split(","):
        qt = check_quant_type(q)
        gguf = (
            f16 if qt == "F16" else quantize_gguf(QuantizeArgs(gguf=f16, quant_type=qt)).gguf_path
        )
        mix = weight_mix(gguf)
        ppl = (
            ref_ppl
            if qt == "F16"
            else gguf_perplexity(gguf, text, n_threads=a.threads, max_chunks=a.ppl_windows)
        )
        kld, same = divergence(
            ref_dist, gguf_token_distributions(gguf, kl_texts, n_threads=a.threads)
        )
        res = (
            ref_eval
            if qt == "F16"
            else evaluate(
                EvalArgs(model=gguf, task_files=tasks, limit=a.limit, n_threads=a.threads)
            )
        )
        k = res.correct.count("1")
        lo, hi = wilson_interval(k, len(res.correct))
        paired = compare_paired(ref_eval.correct, res.correct)
        top = sorted(mix.type_share.items(), key=lambda kv: -kv[1])[:2]
        print(
            f"| {qt} | {gguf.stat().st_size / 2**20:.1f} | {mix.bits_per_weight:.2f} | "
            f"{', '.join(f'{t} {s:.0%}' for t, s in top)} | {ppl.perplexity:.2f} | "
            f"{ppl.perplexity / ref_ppl.perplexity:.3f} | {kld:.4f} | {same:.1%} | "
            f"{res.accuracy:.3f} ({lo:.3f}–{hi:.3f}) | {paired.summary()} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
