"""Tool ``run_qlora``: QLoRA fine-tuning of a causal LM on multiple-choice task files.

The base model is loaded quantized by bitsandbytes (4-bit NF4/FP4, optionally with double
quantization, or 8-bit) and frozen; a LoRA adapter (rank ``lora_r``, scale ``lora_alpha/lora_r``)
is attached to ``target_modules`` and trained with AdamW, linear warm-up over ``warmup_ratio`` of
the steps then cosine decay to zero. Each training example is ``question + " " + right choice``,
with the loss on the answer tokens only: the same tokens the multiple-choice evaluation scores.
A plain PyTorch loop; the same code runs on CUDA when present and on the CPU otherwise.

Results are cached by content: the adapter lands in ``artifacts/adapters/<hash>`` where the hash
covers the base model's files, the configuration and the training data, so an identical
fine-tune is never run twice (``cached=True`` in the result).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from haqa.errors import HaqaError
from haqa.modelref import check_hf_causal_lm
from haqa.paths import artifacts_dir
from haqa.schemas import FinetuneConfig
from haqa.tasks import MCExample
from haqa.tools.evaluate import TARGET_DELIMITER, load_examples, split_tokens
from haqa.zoo.cpu import set_torch_threads

if TYPE_CHECKING:
    import torch

#: Progress callback: (step, total_steps, loss of that step).
Progress = Callable[[int, int, float], None]

RESULT_FILE = "haqa-result.json"
IGNORE_INDEX = -100
_FULL_HASH_LIMIT = 256 * 1024 * 1024  # bigger weight files are fingerprinted, not read in full


class Args(BaseModel):
    model_config = ConfigDict(frozen=True)

    model: Path = Field(description="Hugging Face causal LM folder (the base to fine-tune)")
    config: FinetuneConfig = Field(default_factory=FinetuneConfig)
    train_files: list[Path] = Field(min_length=1, description="JSONL multiple-choice task files")
    output_dir: Path | None = Field(
        None, description="where the adapter goes; default: content-addressed artifact cache"
    )


class Result(BaseModel):
    adapter_path: Path
    loss_curve: list[float] = Field(description="mean answer-token loss per optimiser step")
    final_loss: float = Field(description="mean loss of the last 10% of steps")
    steps: int
    train_examples: int
    peak_mem_bytes: int = Field(description="peak resident memory (RSS) during the fine-tune")
    peak_gpu_mem_bytes: int | None = Field(None, description="CUDA peak allocated (GPU runs)")
    train_time_s: float
    device: str
    cached: bool = False


def total_steps(config: FinetuneConfig, n_examples: int) -> int:
    """Optimiser steps: ``max_steps``, or enough for ``epochs`` passes when epochs is set."""
    if config.epochs is None:
        return config.max_steps
    per_step = config.batch_size * config.grad_accum
    return max(1, math.ceil(config.epochs * n_examples / per_step))


def lr_factor(step: int, total: int, warmup_ratio: float) -> float:
    """Multiplier of the peak learning rate at ``step`` (0-based): linear warm-up, cosine to 0."""
    warmup = math.ceil(total * warmup_ratio)
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def format_example(
    tokenizer: object, ex: MCExample, max_seq_len: int
) -> tuple[list[int], list[int]]:
    """``(input_ids, labels)`` for ``question + " " + right choice``; labels are -100 except on the
    answer's tokens. Too long: the question is cut from the left, the answer is kept."""
    ctx, cont = split_tokens(tokenizer, ex.question, TARGET_DELIMITER + ex.choices[ex.answer])
    ids = ctx + cont
    labels = [IGNORE_INDEX] * len(ctx) + cont
    if len(ids) > max_seq_len:
        ids, labels = ids[-max_seq_len:], labels[-max_seq_len:]
    return ids, labels


def longest_example_tokens(model: Path, task_files: Sequence[Path], max_seq_len: int) -> int:
    """Tokens of the longest training example as ``format_example`` builds it: batches are padded
    to their longest row, so this (not max_seq_len) bounds a step's activations."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model))
    examples = load_examples(task_files)
    return max(len(format_example(tokenizer, ex, max_seq_len)[0]) for ex in examples)


def collate(rows: Sequence[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch of ``input_ids``, ``attention_mask`` and shifted-later ``labels``."""
    import torch

    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, (i, lab) in enumerate(rows):
        ids[r, : len(i)] = torch.tensor(i)
        labels[r, : len(lab)] = torch.tensor(lab)
        mask[r, : len(i)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def cache_key(model_dir: Path, config: FinetuneConfig, train_files: Sequence[Path]) -> str:
    """Hash of the base model's files, the configuration and the training data."""
    h = hashlib.sha256()
    for path in sorted(p for p in model_dir.iterdir() if p.is_file()):
        h.update(path.name.encode())
        _hash_file(h, path)
    h.update(config.model_dump_json().encode())
    for path in train_files:
        _hash_file(h, path)
    return h.hexdigest()[:20]


def _hash_file(h: Any, path: Path) -> None:
    size = path.stat().st_size
    h.update(str(size).encode())
    with path.open("rb") as f:
        if size <= _FULL_HASH_LIMIT:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        else:  # multi-GB shards: size plus head and tail bytes identify them well enough
            h.update(f.read(1 << 20))
            f.seek(-(1 << 20), os.SEEK_END)
            h.update(f.read(1 << 20))


def quantization_config(config: FinetuneConfig) -> Any:
    import torch
    from transformers import BitsAndBytesConfig

    if config.quant == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=config.quant,
        bnb_4bit_use_double_quant=config.double_quant,
        bnb_4bit_compute_dtype=getattr(torch, config.compute_dtype),
    )


def load_for_training(model_dir: Path, config: FinetuneConfig, device: str) -> tuple[Any, Any]:
    """(peft model, tokenizer): quantized frozen base with a fresh LoRA adapter."""
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    torch.manual_seed(config.seed)
    model = AutoModelForCausalLM.from_pretrained(
        str(model_dir),
        quantization_config=quantization_config(config),
        dtype=getattr(torch, config.compute_dtype),
        device_map={"": 0 if device == "cuda" else "cpu"},
    )
    # Casts the remaining float weights (norms, embeddings) to float32 for stable training and
    # lets gradients reach the adapter through the frozen quantized layers.
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [m for m in config.target_modules if m not in present]
    if missing:
        raise HaqaError(
            f"target_modules {missing} are not modules of {model_dir.name}: use some of "
            + ", ".join(sorted(n for n in present if n.endswith("proj")) or sorted(present)[:10])
        )
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=list(config.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora), tokenizer


def run_qlora(args: Args, progress: Progress | None = None) -> Result:
    """Fine-tune a LoRA adapter on a bitsandbytes-quantized base (QLoRA) with the given
    hyper-parameters on multiple-choice training files; returns the adapter path, the loss
    curve, peak memory and time. An identical earlier fine-tune is returned from the cache."""
    check_hf_causal_lm(args.model)
    cfg = args.config
    examples = load_examples(args.train_files)
    out = args.output_dir or artifacts_dir() / "adapters" / cache_key(
        args.model, cfg, args.train_files
    )
    if (out / RESULT_FILE).is_file():
        cached = Result.model_validate_json((out / RESULT_FILE).read_text())
        return cached.model_copy(update={"cached": True, "adapter_path": out})

    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        set_torch_threads()
    else:
        torch.cuda.reset_peak_memory_stats()
    started = time.monotonic()
    rss = _PeakRss()
    try:
        model, tokenizer = load_for_training(args.model, cfg, device)
        rows = [format_example(tokenizer, ex, cfg.max_seq_len) for ex in examples]
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        losses = _train(model, rows, cfg, device, pad_id, progress)
    finally:
        peak_rss = rss.stop()
    train_time = time.monotonic() - started

    tail = losses[-max(1, len(losses) // 10) :]
    result = Result(
        adapter_path=out,
        loss_curve=[round(x, 5) for x in losses],
        final_loss=sum(tail) / len(tail),
        steps=len(losses),
        train_examples=len(rows),
        peak_mem_bytes=peak_rss,
        peak_gpu_mem_bytes=int(torch.cuda.max_memory_allocated()) if device == "cuda" else None,
        train_time_s=round(train_time, 2),
        device=device,
    )
    _save_atomically(model, result, out)
    return result


def _train(
    model: Any,
    rows: list[tuple[list[int], list[int]]],
    cfg: FinetuneConfig,
    device: str,
    pad_id: int,
    progress: Progress | None,
) -> list[float]:
    """The optimiser loop; returns the loss of every step. A non-finite loss stops it with an
    error naming the step (the trial fails with a reason an agent can act on)."""
    import torch

    steps = total_steps(cfg, len(rows))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    order: list[int] = []
    losses: list[float] = []
    model.train()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = cfg.learning_rate * lr_factor(step, steps, cfg.warmup_ratio)
        step_loss = 0.0
        for _ in range(cfg.grad_accum):
            if len(order) < cfg.batch_size:  # a fresh shuffled pass over the data
                order += torch.randperm(len(rows), generator=gen).tolist()
            batch_idx, order = order[: cfg.batch_size], order[cfg.batch_size :]
            batch = collate([rows[i] for i in batch_idx], pad_id)
            loss = model(**{k: v.to(device) for k, v in batch.items()}).loss / cfg.grad_accum
            loss.backward()
            step_loss += float(loss.detach())
        if not math.isfinite(step_loss):
            raise RuntimeError(
                f"fine-tune diverged: loss {step_loss} at step {step + 1}; lower the learning rate"
            )
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(step_loss)
        if progress is not None:
            progress(step + 1, steps, step_loss)
    return losses


class _PeakRss:
    """Peak RSS while the fine-tune runs, sampled every 20 ms by a thread. The process-lifetime
    peak (``ru_maxrss``) would blame this trial for whatever ran before it in the process."""

    def __init__(self) -> None:
        import psutil

        self._proc = psutil.Process()
        self.peak = self._proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self._proc.memory_info().rss)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)
        return int(self.peak)


def _save_atomically(model: Any, result: Result, out: Path) -> None:
    """Adapter and result into a temporary folder, renamed into place: no half adapters."""
    out.parent.mkdir(parents=True, exist_ok=True)
    work = out.parent / f".{out.name}.tmp-{secrets.token_hex(3)}"
    try:
        model.save_pretrained(str(work))
        (work / RESULT_FILE).write_text(json.dumps(result.model_dump(mode="json"), indent=1))
        if out.exists():
            shutil.rmtree(out)
        work.rename(out)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
