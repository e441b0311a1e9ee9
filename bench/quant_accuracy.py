"""Deployed accuracy per llama.cpp quant type, side by side with the HF model plus its adapter.

The tiny model is fine-tuned (the same QLoRA settings as the accuracy test; the adapter is cached)
and exported with the adapter merged to every type asked for; each GGUF is scored on the same
questions as the HF model. Besides accuracy (overall and per task kind) it prints the mean
log-likelihood of the right answers, which moves before accuracy does. ``--noise`` adds Gaussian
noise of that share of each weight's own std to every transformer-block matrix of the HF model
(not the embeddings or the output head) and scores again: how much weight error the model's
learned function tolerates at all, which is what decides whether Q2_K's errors show.

    python bench/quant_accuracy.py [--model zoo:tiny] [--quants F16,Q8_0,Q4_K_M,Q3_K_M,Q2_K]
                                   [--split test] [--noise 0.3,1.0]
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Sequence

from _common import reproduce_line

from haqa import zoo
from haqa.modelref import resolve_model
from haqa.schemas import FinetuneConfig
from haqa.tasks import MCExample
from haqa.tools.evaluate import build_requests, hf_logliks, load_examples, load_hf, score
from haqa.tools.export_gguf import Args as ExportArgs
from haqa.tools.export_gguf import export_gguf
from haqa.tools.gguf_loglik import gguf_continuation_logprobs
from haqa.tools.run_qlora import Args as QloraArgs
from haqa.tools.run_qlora import run_qlora

#: The accuracy test's fine-tune (tests/test_deployed_accuracy.py), so the adapter is shared.
FINETUNE = FinetuneConfig(learning_rate=5e-3, max_steps=60)
BLOCK_MATRICES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _row(name: str, size_mib: float | None, examples: Sequence[MCExample], lls: list[float]) -> str:
    acc, _, per_kind = score(examples, lls)
    right, i = [], 0
    for ex in examples:
        right.append(lls[i + ex.answer])
        i += len(ex.choices)
    kinds = " ".join(f"{k} {v.accuracy:.3f}" for k, v in per_kind.items())
    size = f"{size_mib:7.1f}" if size_mib is not None else "      -"
    return f"| {name:<14} | {size} | {acc:.3f} | {statistics.fmean(right):8.3f} | {kinds} |"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="zoo:tiny")
    parser.add_argument("--quants", default="F16,Q8_0,Q4_K_M,Q3_K_M,Q2_K")
    parser.add_argument("--split", default="test", choices=zoo.TASK_SPLITS)
    parser.add_argument("--noise", default="0.3,1.0", help="shares of weight std ('' for none)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    model = resolve_model(args.model).path
    tasks = zoo.task_files("tiny", args.split)
    train = zoo.task_files("tiny", "train")
    adapter = run_qlora(QloraArgs(model=model, config=FINETUNE, train_files=train)).adapter_path
    examples = load_examples(tasks)
    requests = build_requests(examples)
    print(f"{len(examples)} {args.split} questions; adapter {adapter.name}")
    print("| model          | MiB     | acc   | right ll | per kind |")
    print("|---|---|---|---|---|")
    hf, tokenizer = load_hf(model, adapter)
    print(_row("HF+adapter", None, examples, hf_logliks(hf, tokenizer, requests, 32)), flush=True)

    import torch

    for share in [float(s) for s in args.noise.split(",") if s.strip()]:
        noisy, _ = load_hf(model, adapter)
        gen = torch.Generator().manual_seed(args.seed)
        with torch.no_grad():
            for name, p in noisy.named_parameters():  # type: ignore[attr-defined]
                if p.ndim == 2 and any(m in name for m in BLOCK_MATRICES):
                    p.add_(torch.randn(p.shape, generator=gen) * float(p.std()) * share)
        lls = hf_logliks(noisy, tokenizer, requests, 32)
        print(_row(f"HF+noise {share:g}σ", None, examples, lls), flush=True)

    for quant in args.quants.split(","):
        out = export_gguf(ExportArgs(model=model, adapter=adapter, quant_type=quant.strip()))
        lls = gguf_continuation_logprobs(out.gguf_path, requests)
        print(_row(out.quant_type, out.size_bytes / 2**20, examples, lls), flush=True)
    print(reproduce_line())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
