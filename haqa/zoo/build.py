"""Building the tiny zoo model into a folder, atomically.

Everything is written into a temporary sibling folder and renamed into place at the end, so a
build that is killed half-way never leaves a half model where ``ensure`` would find it.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from haqa.paths import replace_folder
from haqa.zoo import corpus, tasks_gen
from haqa.zoo.pretrain import TinySpec, build_model, pack, pretrain
from haqa.zoo.tokenizer import BOS_ID, EOS_ID, encode_docs, train_sentencepiece, write_tokenizer

#: Progress callback: (phase, done, total, detail). ``total`` is 0 for phases without steps.
Progress = Callable[[str, int, int, str], None]

METADATA_FILE = "haqa-zoo.json"
TASKS_DIR = "tasks"
TOKENIZER_TRAIN_DOCS = 3000
CORPUS_SEED_OFFSET = 1  # the tokenizer and the training text are drawn independently

_README = """# haqa zoo: tiny

A {params_m:.1f}M-parameter LLaMA-architecture causal LM (`LlamaForCausalLM`: hidden
{hidden}, intermediate {inter}, {layers} layers, {heads} heads, {kv} KV heads, vocabulary {vocab})
with its own SentencePiece tokenizer (BPE, digits split, byte fallback), built offline by
`haqa zoo build tiny` and pre-trained from scratch for {steps} steps ({tokens} tokens, {secs} s)
on a synthetic corpus of number facts written in prose ("8 plus 5 makes 13.").

It exists so that fine-tuning, quantization and deployment can be exercised end to end without
downloading anything. Its answers are only meaningful on its own tasks.

`tasks/<split>/<kind>.jsonl` hold multiple-choice tasks in haqa's JSONL format, 4 choices each,
splits disjoint by question: {kinds}. They ask the corpus's facts in a symbolic form the corpus
never uses (`8 + 5 =`, `max(31, 4, 89, 84) =`, `7 8 9 ->`), so the base model is weak on them
and fine-tuning on the train split is what teaches the format.

Seed {seed}; the same seed builds the same tokenizer, corpus and tasks.
"""


def _emit(
    progress: Progress | None, phase: str, done: int = 0, total: int = 0, detail: str = ""
) -> None:
    if progress is not None:
        progress(phase, done, total, detail)


def build_tiny(
    dest: Path, *, spec: TinySpec | None = None, progress: Progress | None = None
) -> Path:
    """Build the tiny model, tokenizer and tasks into ``dest`` (replaced if it exists)."""
    spec = spec or TinySpec()
    started = time.monotonic()
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = dest.parent / f".{dest.name}.build-{os.getpid()}-{secrets.token_hex(3)}"
    try:
        _emit(progress, "tokenizer")
        tok_texts = [*corpus.documents(spec.seed, TOKENIZER_TRAIN_DOCS)]
        tok_texts += tasks_gen.task_texts(spec.seed)
        sp_model = train_sentencepiece(tok_texts, spec.vocab_size)
        write_tokenizer(work, sp_model)

        _emit(progress, "corpus")
        n_docs = spec.steps * spec.batch_size * spec.block_len // 80 + 1000
        docs = corpus.documents(spec.seed + CORPUS_SEED_OFFSET, n_docs)
        blocks = pack(encode_docs(sp_model, docs), spec.block_len)

        model = build_model(spec, bos_id=BOS_ID, eos_id=EOS_ID, pad_id=EOS_ID)
        report = pretrain(
            model,
            blocks,
            spec,
            progress=lambda s, n, loss: _emit(progress, "pretrain", s, n, f"loss {loss:.3f}"),
        )
        _emit(progress, "save")
        model.generation_config.do_sample = False
        model.generation_config.max_new_tokens = 16
        model.save_pretrained(str(work), safe_serialization=True)
        tasks_gen.write_tasks(work / TASKS_DIR, spec.seed)
        _write_card(work, spec, model.num_parameters(), report, time.monotonic() - started)
        replace_folder(work, dest)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    _emit(progress, "done", detail=f"{time.monotonic() - started:.0f} s")
    return dest


def _write_card(
    work: Path, spec: TinySpec, n_params: int, report: dict[str, Any], secs: float
) -> None:
    meta = {
        "name": "tiny",
        "architecture": "LlamaForCausalLM",
        "parameters": n_params,
        "spec": spec.model_dump(),
        "pretrain": report,
        "build_time_s": round(secs, 1),
        "task_kinds": list(tasks_gen.KINDS),
        "splits": {s: tasks_gen.SPLIT_SIZES[s] for s in tasks_gen.SPLITS},
    }
    (work / METADATA_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    (work / "README.md").write_text(
        _README.format(
            params_m=n_params / 1e6,
            hidden=spec.hidden_size,
            inter=spec.intermediate_size,
            layers=spec.num_hidden_layers,
            heads=spec.num_attention_heads,
            kv=spec.num_key_value_heads,
            vocab=spec.vocab_size,
            steps=report["steps_done"],
            tokens=report["tokens_seen"],
            secs=report["train_time_s"],
            kinds=", ".join(tasks_gen.KINDS),
            seed=spec.seed,
        )
    )
