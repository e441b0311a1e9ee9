"""The model zoo: models built offline, once, into ``$HAQA_HOME/zoo/<name>``.

- ``tiny``: a few-million-parameter LLaMA with its own SentencePiece tokenizer, pre-trained from
  scratch in about two minutes on a synthetic corpus, with held-out multiple-choice tasks
  (``build.py``; the tasks in ``tasks_gen.py``, the corpus in ``corpus.py``).
- ``bench-200m``, ``bench-1b``: random-weight models of realistic shapes for speed studies
  (``bench_shapes.py``), using the tiny model's tokenizer.

A folder that exists is complete: builds happen in a temporary folder renamed at the end.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from haqa.errors import HaqaError
from haqa.paths import zoo_dir

ZOO_NAMES = ("tiny", "bench-200m", "bench-1b")
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
    """The zoo model, built first if it is not there yet (or ``force``): the tiny model's Hugging
    Face folder, or a bench shape's GGUF file."""
    dest = zoo_path(name)
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
    if name != "tiny":
        raise HaqaError(f"zoo model '{name}' has no tasks: only zoo:tiny has")
    files = sorted((ensure(name) / "tasks" / split).glob("*.jsonl"))
    if not files:
        raise HaqaError(
            f"{zoo_path(name)} has no {split} tasks: rebuild with haqa zoo build --force"
        )
    return files
