"""Tool ``evaluate``: multiple-choice accuracy by log-likelihood, the way lm-eval scores it.

For every example and every choice, the score is the summed log-probability of the continuation
``" " + choice`` given the question. ``acc`` counts the examples whose right choice has the highest
score; ``acc_norm`` divides each score by the continuation's length in UTF-8 bytes first (so long
choices are not penalised for having more tokens). Tokenization follows lm-eval: the context and
context+continuation are encoded separately (with the BOS token) and the continuation's tokens are
the tail of the second beyond the length of the first.

Two backends, scored by the same functions (``build_requests``, ``score``):

- a Hugging Face folder: the model in float32, unquantized. With ``adapter``, the LoRA adapter is
  attached to that full-precision base with ``PeftModel.from_pretrained`` and merged, which is
  exactly the model that gets exported to GGUF, so HF and GGUF accuracies compare fairly (the
  4-bit base used during QLoRA training is not what is evaluated);
- a GGUF file: llama.cpp through ``haqa.tools.gguf_loglik`` (an adapter is not accepted: merge it
  before exporting), with the K/V cache types of the deployment (``kv_cache``; default F16), since
  a quantized cache changes the answers too.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

from haqa.errors import HaqaError
from haqa.modelref import check_hf_causal_lm, is_gguf
from haqa.schemas import KvCacheSettings
from haqa.tasks import MCExample, load_jsonl
from haqa.zoo.cpu import set_torch_threads

if TYPE_CHECKING:
    import torch

TARGET_DELIMITER = " "


class Args(BaseModel):
    model_config = ConfigDict(frozen=True)

    model: Path = Field(description="a Hugging Face causal LM folder or a .gguf file")
    adapter: Path | None = Field(None, description="LoRA adapter folder (HF models only)")
    task_files: list[Path] = Field(min_length=1, description="JSONL multiple-choice task files")
    limit: int | None = Field(None, ge=1, description="at most this many examples per file")
    n_threads: int | None = Field(None, ge=1, description="CPU threads (default: all)")
    batch_size: int = Field(32, ge=1, le=4096, description="sequences per forward pass (HF)")
    kv_cache: KvCacheSettings | None = Field(
        None, description="llama.cpp K/V cache types to score a GGUF with (default: f16)"
    )


class KindScore(BaseModel):
    accuracy: float
    acc_norm: float
    n: int


class Result(BaseModel):
    accuracy: float = Field(description="share of examples whose right choice scores highest")
    acc_norm: float = Field(description="the same with scores divided by continuation bytes")
    n_examples: int
    per_kind: dict[str, KindScore]
    backend: Literal["hf", "gguf"]
    eval_time_s: float
    correct: str = Field(
        "",
        description="one character per example, in order: 1 right, 0 wrong (acc) — what a "
        "paired comparison of two models on the same questions needs",
    )


def load_examples(task_files: Sequence[Path], limit: int | None = None) -> list[MCExample]:
    """Examples from every file, ``limit`` per file; an example without a kind gets the file's
    name as its kind so per-kind scores stay meaningful for a user's own files."""
    out: list[MCExample] = []
    for path in task_files:
        for ex in load_jsonl(path, limit=limit):
            out.append(ex if ex.kind else ex.model_copy(update={"kind": Path(path).stem}))
    return out


def build_requests(examples: Sequence[MCExample]) -> list[tuple[str, str]]:
    """One ``(context, continuation)`` per choice, example by example, in order."""
    return [(ex.question, TARGET_DELIMITER + choice) for ex in examples for choice in ex.choices]


def score(
    examples: Sequence[MCExample], logliks: Sequence[float]
) -> tuple[float, float, dict[str, KindScore]]:
    """``(acc, acc_norm, per_kind)`` from one log-likelihood per request of ``build_requests``."""
    expected = sum(len(ex.choices) for ex in examples)
    if len(logliks) != expected:
        raise ValueError(f"got {len(logliks)} log-likelihoods for {expected} choices")
    hits: dict[str, list[tuple[bool, bool]]] = {}
    i = 0
    for ex in examples:
        lls = list(logliks[i : i + len(ex.choices)])
        i += len(ex.choices)
        lens = [len((TARGET_DELIMITER + c).encode("utf-8")) for c in ex.choices]
        normed = [ll / n for ll, n in zip(lls, lens, strict=True)]
        acc = max(range(len(lls)), key=lls.__getitem__) == ex.answer
        acc_n = max(range(len(normed)), key=normed.__getitem__) == ex.answer
        hits.setdefault(ex.kind or "default", []).append((acc, acc_n))
    per_kind = {
        kind: KindScore(
            accuracy=sum(a for a, _ in h) / len(h), acc_norm=sum(b for _, b in h) / len(h), n=len(h)
        )
        for kind, h in sorted(hits.items())
    }
    all_hits = [h for hs in hits.values() for h in hs]
    n = max(1, len(all_hits))
    return sum(a for a, _ in all_hits) / n, sum(b for _, b in all_hits) / n, per_kind


def correct_answers(examples: Sequence[MCExample], logliks: Sequence[float]) -> str:
    """'1'/'0' per example: whether its right choice has the highest log-likelihood (acc)."""
    out, i = [], 0
    for ex in examples:
        lls = list(logliks[i : i + len(ex.choices)])
        i += len(ex.choices)
        out.append("1" if max(range(len(lls)), key=lls.__getitem__) == ex.answer else "0")
    return "".join(out)


def split_tokens(tokenizer: object, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's split: trailing spaces of the context move to the continuation, then
    ``enc(context + continuation)[len(enc(context)):]`` are the continuation's tokens."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole: list[int] = tokenizer(context + continuation).input_ids  # type: ignore[operator]
    ctx: list[int] = tokenizer(context).input_ids  # type: ignore[operator]
    return whole[: len(ctx)], whole[len(ctx) :]


def load_hf(model_dir: Path, adapter: Path | None) -> tuple[object, object]:
    """(model, tokenizer): float32 base, adapter merged in when given."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype="float32")
    except (OSError, ValueError) as exc:
        raise HaqaError(f"cannot load {model_dir} as a causal LM: {exc}") from None
    if adapter is not None:
        from peft import PeftModel

        if not (adapter / "adapter_config.json").is_file():
            raise HaqaError(f"{adapter} is not a LoRA adapter (no adapter_config.json)")
        model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    model.eval()
    return model, tokenizer


def hf_logliks(
    model: object, tokenizer: object, requests: Sequence[tuple[str, str]], batch_size: int
) -> list[float]:
    """Summed continuation log-probs, batched right-padded forward passes."""
    import torch

    pairs = [split_tokens(tokenizer, c, x) for c, x in requests]
    # Longest first, as lm-eval does: similar lengths share a batch, little padding is wasted.
    order = sorted(range(len(pairs)), key=lambda j: -(len(pairs[j][0]) + len(pairs[j][1])))
    out = [0.0] * len(pairs)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        seqs = [(pairs[j][0] + pairs[j][1])[:-1] for j in idx]
        width = max(len(s) for s in seqs)
        ids = torch.zeros((len(seqs), width), dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for r, s in enumerate(seqs):
            ids[r, : len(s)] = torch.tensor(s)
            mask[r, : len(s)] = 1
        with torch.inference_mode():
            logits = model(input_ids=ids, attention_mask=mask).logits  # type: ignore[operator]
            logprobs: torch.Tensor = torch.log_softmax(logits.float(), dim=-1)
        for r, j in enumerate(idx):
            ctx, cont = pairs[j]
            n_in = len(ctx) + len(cont) - 1
            positions = torch.arange(n_in - len(cont), n_in)
            out[j] = float(logprobs[r, positions, torch.tensor(cont)].sum())
    return out


def evaluate(args: Args) -> Result:
    """Multiple-choice accuracy of a model (optionally with a LoRA adapter) on JSONL task files,
    scored by log-likelihood like lm-evaluation-harness (acc and acc_norm, per task kind)."""
    started = time.monotonic()
    examples = load_examples(args.task_files, args.limit)
    requests = build_requests(examples)
    if not args.model.exists():
        raise HaqaError(f"model {args.model} does not exist: pass a model folder or a .gguf file")
    backend: Literal["hf", "gguf"]
    if args.model.is_file():
        if not is_gguf(args.model):
            raise HaqaError(f"{args.model} is not a GGUF file: pass a .gguf file or a model folder")
        if args.adapter is not None:
            raise HaqaError("an adapter cannot be applied to a GGUF file: merge it before export")
        from haqa.tools.gguf_loglik import gguf_continuation_logprobs

        logliks = gguf_continuation_logprobs(
            args.model, requests, n_threads=args.n_threads, kv_cache=args.kv_cache
        )
        backend = "gguf"
    else:
        if args.kv_cache is not None:
            raise HaqaError(
                "K/V cache types apply to a GGUF file (llama.cpp): drop them for a model folder"
            )
        check_hf_causal_lm(args.model)
        set_torch_threads(args.n_threads)
        model, tokenizer = load_hf(args.model, args.adapter)
        logliks = hf_logliks(model, tokenizer, requests, args.batch_size)
        backend = "hf"
    acc, acc_norm, per_kind = score(examples, logliks)
    return Result(
        accuracy=acc,
        acc_norm=acc_norm,
        n_examples=len(examples),
        per_kind=per_kind,
        backend=backend,
        eval_time_s=round(time.monotonic() - started, 3),
        correct=correct_answers(examples, logliks),
    )
