"""Deployed accuracy per llama.cpp quant type: the real model by default; on the tiny model side by
side with the HF model plus its adapter.

The zoo's tiny model is fine-tuned (the same QLoRA settings as the accuracy test; the adapter is
cached) and exported with the adapter merged to every type asked for; each GGUF is scored on the
same questions as the HF model. Besides accuracy (overall and per task kind) it prints the mean
log-likelihood of the right answers, which moves before accuracy does, and the weight error of
the type: ||W_q - W|| / ||W|| over the GGUF's matrices, against the F16 export (for a noise
row, over the matrices the noise was added to), and how far each type's next-token distributions
move from F16's on held-out corpus text: the mean KL divergence and the share of positions whose
top token stays the same, as llama.cpp's ``llama-perplexity --kl-divergence`` reports them; those
move long before accuracy does. ``--noise`` adds
Gaussian noise of that share of each matrix's std to every transformer-block matrix of the HF
model (not the embeddings or the output head) and scores again: how much weight error the
model's learned function tolerates at all, which is what decides whether Q2_K's errors show.
``--kv-caches`` scores one weight type (``--kv-quant``) again with each quantized K/V cache type
(K and V alike), as the tuner's deploy trials run it.

    python bench/quant_accuracy.py [--model zoo:smollm2-135m] [...]   # the real model (default)
    python bench/quant_accuracy.py --model zoo:tiny [--quants F16,Q8_0,Q4_K_M,Q3_K_M,Q2_K]
        [--split test] [--noise 0.3,1.0] [--kv-quant Q4_K_M] [--kv-caches q8_0,q4_0]

Without ``--model zoo:tiny`` it runs ``real_model_quality.py`` on SmolLM2-135M-Instruct (every
type from F16 to Q2_K: size, bits/weight, perplexity, KLD, top-1 agreement, MC accuracy with its
95% interval); the tiny-model study below is kept for the noise and K/V-cache questions.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import get_args

from _common import reproduce_line

from haqa import zoo
from haqa.schemas import FinetuneConfig, KvCacheSettings, KvCacheType
from haqa.tasks import MCExample
from haqa.tools.evaluate import build_requests, hf_logliks, load_examples, load_hf, score
from haqa.tools.export_gguf import Args as ExportArgs
from haqa.tools.export_gguf import export_gguf
from haqa.tools.gguf_loglik import (
    divergence,
    gguf_continuation_logprobs,
    gguf_token_distributions,
)
from haqa.tools.run_qlora import Args as QloraArgs
from haqa.tools.run_qlora import run_qlora
from haqa.zoo import corpus

#: The accuracy test's fine-tune (tests/test_deployed_accuracy.py), so the adapter is shared.
FINETUNE = FinetuneConfig(learning_rate=5e-3, max_steps=60)
BLOCK_MATRICES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
#: Held-out prose for the KL divergence: a corpus seed the build never draws from (it uses the
#: model's seed for the tokenizer and seed + 1 for the training text).
KL_TEXT_SEED = 12345
KL_TEXTS = 40


def _weight_error(gguf_path: Path, f16_path: Path) -> float:
    """||W_q - W|| / ||W|| over every matrix of ``gguf_path``, W read from the F16 export."""
    import numpy as np
    from gguf import GGUFReader
    from gguf.quants import dequantize

    reference = {t.name: t for t in GGUFReader(f16_path).tensors}
    err = total = 0.0
    for t in GGUFReader(gguf_path).tensors:
        if len(t.shape) < 2:
            continue
        w = dequantize(reference[t.name].data, reference[t.name].tensor_type).astype(np.float64)
        wq = dequantize(t.data, t.tensor_type).astype(np.float64)
        err += float(((wq - w) ** 2).sum())
        total += float((w**2).sum())
    return (err / total) ** 0.5


def _row(
    name: str,
    size_mib: float | None,
    w_err: float | None,
    examples: Sequence[MCExample],
    lls: list[float],
    divergence: str = "      - |      -",
) -> str:
    acc, _, per_kind = score(examples, lls)
    right, i = [], 0
    for ex in examples:
        right.append(lls[i + ex.answer])
        i += len(ex.choices)
    kinds = " ".join(f"{k} {v.accuracy:.3f}" for k, v in per_kind.items())
    size = f"{size_mib:7.1f}" if size_mib is not None else "      -"
    err = f"{w_err:.3f}" if w_err is not None else "    -"
    mean_right = statistics.fmean(right)
    return (
        f"| {name:<14} | {size} | {err} | {acc:.3f} | {mean_right:8.3f} | {divergence} | {kinds} |"
    )


def main() -> int:
    # --model picks the study; every other flag belongs to that study's own parser.
    pick = argparse.ArgumentParser(add_help=False)
    pick.add_argument("--model", default="zoo:smollm2-135m")
    picked, rest = pick.parse_known_args()
    if picked.model != "zoo:tiny":
        # The real model (the default): size, bits, perplexity, KLD, top-1 agreement and MC
        # accuracy with its interval per type, measured by the real-model bench.
        import real_model_quality

        sys.argv = [sys.argv[0], "--model", picked.model, *rest]
        return real_model_quality.main()
    sys.argv = [sys.argv[0], *rest]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quants", default="F16,Q8_0,Q4_K_M,Q3_K_M,Q2_K")
    parser.add_argument("--split", default="test", choices=zoo.TASK_SPLITS)
    parser.add_argument("--noise", default="0.3,1.0", help="shares of weight std ('' for none)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kv-quant", default="Q4_K_M", help="weight type of the K/V cache rows")
    parser.add_argument("--kv-caches", default="q8_0,q4_0", help="K/V cache types ('' for none)")
    args = parser.parse_args()
    kv_caches = []
    for cache in (c.strip() for c in args.kv_caches.split(",") if c.strip()):
        if cache not in get_args(KvCacheType):
            parser.error(f"--kv-caches {cache}: use {', '.join(get_args(KvCacheType))}")
        kv_caches.append(KvCacheSettings.model_validate({"type_k": cache, "type_v": cache}))

    model = zoo.ensure("tiny")  # the tasks are the tiny model's
    tasks = zoo.task_files("tiny", args.split)
    train = zoo.task_files("tiny", "train")
    adapter = run_qlora(QloraArgs(model=model, config=FINETUNE, train_files=train)).adapter_path
    examples = load_examples(tasks)
    requests = build_requests(examples)
    print(f"{len(examples)} {args.split} questions; adapter {adapter.name}")
    print("| model | MiB | w err | acc | right ll | KLD vs F16 | same top % | per kind |")
    print("|---|---|---|---|---|---|---|---|")
    hf, tokenizer = load_hf(model, adapter)
    lls = hf_logliks(hf, tokenizer, requests, 32)
    print(_row("HF+adapter", None, None, examples, lls), flush=True)

    import torch

    for share in [float(s) for s in args.noise.split(",") if s.strip()]:
        noisy, _ = load_hf(model, adapter)
        gen = torch.Generator().manual_seed(args.seed)
        err = total = 0.0
        with torch.no_grad():
            for name, p in noisy.named_parameters():  # type: ignore[attr-defined]
                if p.ndim == 2 and any(m in name for m in BLOCK_MATRICES):
                    noise = torch.randn(p.shape, generator=gen) * float(p.std()) * share
                    err += float((noise**2).sum())
                    total += float((p**2).sum())
                    p.add_(noise)
        lls = hf_logliks(noisy, tokenizer, requests, 32)
        print(_row(f"HF+noise {share:g}σ", None, (err / total) ** 0.5, examples, lls), flush=True)

    texts = list(corpus.documents(KL_TEXT_SEED, KL_TEXTS))
    f16 = export_gguf(ExportArgs(model=model, adapter=adapter, quant_type="F16")).gguf_path
    reference = gguf_token_distributions(f16, texts)
    for quant in args.quants.split(","):
        out = export_gguf(ExportArgs(model=model, adapter=adapter, quant_type=quant.strip()))
        lls = gguf_continuation_logprobs(out.gguf_path, requests)
        w_err = _weight_error(out.gguf_path, out.base_gguf_path)
        size_mib = out.size_bytes / 2**20
        kl, same = divergence(reference, gguf_token_distributions(out.gguf_path, texts))
        cells = f"{kl:.5f} | {100 * same:6.2f}"
        print(_row(out.quant_type, size_mib, w_err, examples, lls, cells), flush=True)
    for kv in kv_caches:
        kv_gguf = export_gguf(ExportArgs(model=model, adapter=adapter, quant_type=args.kv_quant))
        lls = gguf_continuation_logprobs(kv_gguf.gguf_path, requests, kv_cache=kv)
        dists = gguf_token_distributions(kv_gguf.gguf_path, texts, kv_cache=kv)
        kl, same = divergence(reference, dists)
        cells = f"{kl:.5f} | {100 * same:6.2f}"
        name = f"{kv_gguf.quant_type} kv {kv.type_k}"
        size_mib = kv_gguf.size_bytes / 2**20
        print(_row(name, size_mib, None, examples, lls, cells), flush=True)
    print(reproduce_line())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
