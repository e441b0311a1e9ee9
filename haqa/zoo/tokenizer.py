"""The tiny model's own SentencePiece tokenizer, trained on the corpus and the task texts.

A LLaMA-style BPE SentencePiece model: digits split (``49`` is ``4`` ``9``, so arithmetic is per
digit), byte fallback (any text encodes, nothing maps to ``<unk>``), ``<unk>``/``<s>``/``</s>`` as
ids 0/1/2. The folder keeps ``tokenizer.model`` (what llama.cpp's HF-to-GGUF converter reads for
the vocabulary) and the converted ``tokenizer.json`` (what ``AutoTokenizer`` loads, offline).
"""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Iterable
from pathlib import Path

UNK_ID, BOS_ID, EOS_ID = 0, 1, 2
TOKENIZER_CONFIG = {
    "tokenizer_class": "LlamaTokenizer",
    "bos_token": "<s>",
    "eos_token": "</s>",
    "unk_token": "<unk>",
    "pad_token": "</s>",
    "add_bos_token": True,
    "add_eos_token": False,
    "legacy": False,
    "model_max_length": 512,
}


def train_sentencepiece(texts: Iterable[str], vocab_size: int) -> bytes:
    """The serialized SentencePiece model (``tokenizer.model``)."""
    import sentencepiece as spm

    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_writer=out,
        model_type="bpe",
        vocab_size=vocab_size,
        split_digits=True,
        byte_fallback=True,
        character_coverage=1.0,
        unk_id=UNK_ID,
        bos_id=BOS_ID,
        eos_id=EOS_ID,
        pad_id=-1,
        add_dummy_prefix=True,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        max_sentence_length=10_000,
        num_threads=1,
        minloglevel=2,
    )
    return out.getvalue()


def write_tokenizer(dest: Path, model_bytes: bytes) -> None:
    """``tokenizer.model`` plus the Hugging Face files converted from it, into ``dest``."""
    from transformers import AutoTokenizer

    dest.mkdir(parents=True, exist_ok=True)
    stage = dest / ".tokenizer-stage"
    stage.mkdir(exist_ok=True)
    (stage / "tokenizer.model").write_bytes(model_bytes)
    (stage / "tokenizer_config.json").write_text(json.dumps(TOKENIZER_CONFIG, indent=2))
    # transformers converts the SentencePiece model to a fast tokenizer; saving writes
    # tokenizer.json, so later loads need neither the converter nor protobuf.
    tok = AutoTokenizer.from_pretrained(str(stage))
    tok.save_pretrained(str(dest))
    (dest / "tokenizer.model").write_bytes(model_bytes)
    shutil.rmtree(stage)


def encode_docs(model_bytes: bytes, docs: Iterable[str]) -> Iterable[list[int]]:
    """``<s> doc </s>`` token ids per document (SentencePiece itself: fast, same ids as HF)."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_proto=model_bytes)
    for doc in docs:
        yield [BOS_ID, *sp.encode(doc), EOS_ID]
