"""The tiny model's multiple-choice tasks: three kinds, four choices each, split by seed.

Each task asks, in a terse symbolic surface form, for a number fact that the pre-training corpus
states only in prose (``corpus.py``): ``8 + 5 =`` versus "8 plus 5 makes 13." The base model
knows the facts but not this format, so it is weak on the tasks; fine-tuning on the train split
teaches the format, and because the test split holds different questions, what it measures is
transfer to held-out items, not memorised answers.

Splits are disjoint by question: all candidate questions of a kind are drawn, de-duplicated,
shuffled by seed and cut into test, validation and train, in that order.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

from haqa.tasks import MCExample, write_jsonl

KINDS: tuple[str, ...] = ("arithmetic", "comparison", "sequence")
SPLITS: tuple[str, ...] = ("train", "validation", "test")
SPLIT_SIZES: dict[str, int] = {"test": 150, "validation": 100, "train": 1000}
MAX_NUMBER = 99
_SPLIT_SHARES = (
    ("test", SPLIT_SIZES["test"], 0.4),
    ("validation", SPLIT_SIZES["validation"], 0.2),
    ("train", SPLIT_SIZES["train"], 1.0),
)


def _choices(rng: random.Random, answer: int, candidates: list[int]) -> tuple[list[str], int]:
    """The answer plus three distinct wrong numbers from ``candidates``, shuffled."""
    wrong = [c for c in dict.fromkeys(candidates) if c != answer and 0 <= c <= MAX_NUMBER]
    rng.shuffle(wrong)
    while len(wrong) < 3:  # near the edges of 0..99 the near misses run out
        c = rng.randint(0, MAX_NUMBER)
        if c != answer and c not in wrong:
            wrong.append(c)
    options = [answer, *wrong[:3]]
    rng.shuffle(options)
    return [str(o) for o in options], options.index(answer)


def _arithmetic(rng: random.Random) -> tuple[str, int]:
    a, b = rng.randint(0, 9), rng.randint(0, 9)
    return f"{a} + {b} =", a + b


def _comparison(rng: random.Random) -> tuple[str, int]:
    nums = rng.sample(range(MAX_NUMBER + 1), 4)
    return f"max({', '.join(map(str, nums))}) =", max(nums)


def _sequence(rng: random.Random) -> tuple[str, int]:
    n = rng.randint(3, 5)
    step = rng.choice((1, -1, 2, -2))
    span = n * abs(step)
    start = rng.randint(0, MAX_NUMBER - span) if step > 0 else rng.randint(span, MAX_NUMBER)
    seq = [start + i * step for i in range(n)]
    return f"{' '.join(map(str, seq))} ->", seq[-1] + step


def _answer_choices(kind: str, rng: random.Random, q: str, answer: int) -> tuple[list[str], int]:
    if kind == "arithmetic":
        return _choices(rng, answer, [answer - 1, answer + 1, answer - 2, answer + 2, answer + 10])
    if kind == "comparison":
        # The three other numbers of the question: the model must pick the largest of them.
        nums = [int(t) for t in q[len("max(") : q.index(")")].split(", ")]
        options = nums[:]
        rng.shuffle(options)
        return [str(o) for o in options], options.index(answer)
    # sequence: the last number again, a step the wrong way, and off-by-two / off-by-ten
    last = int(q.split()[-2])
    step = answer - last
    return _choices(rng, answer, [last, last - step, answer + step, answer + 10, answer - 10])


_DRAW: dict[str, Callable[[random.Random], tuple[str, int]]] = {
    "arithmetic": _arithmetic,
    "comparison": _comparison,
    "sequence": _sequence,
}


def generate(kind: str, seed: int) -> dict[str, list[MCExample]]:
    """All three splits of one task kind; the same seed gives the same files, byte for byte."""
    rng = random.Random(f"{kind}:{seed}")
    want = sum(SPLIT_SIZES.values())
    questions: dict[str, int] = {}
    for _ in range(want * 20):
        q, answer = _DRAW[kind](rng)
        questions.setdefault(q, answer)
        if len(questions) >= want:
            break
    items = list(questions.items())
    rng.shuffle(items)
    # Kinds with few distinct questions (single-digit sums: 100) are split 40/20/40 instead.
    sizes = {s: min(n, int(len(items) * share)) for s, n, share in _SPLIT_SHARES}
    out: dict[str, list[MCExample]] = {}
    start = 0
    for split in ("test", "validation", "train"):
        chunk = items[start : start + (sizes[split] if split != "train" else sizes["train"])]
        start += len(chunk)
        examples = []
        for i, (q, answer) in enumerate(chunk):
            choices, idx = _answer_choices(kind, rng, q, answer)
            examples.append(
                MCExample(
                    question=q,
                    choices=tuple(choices),
                    answer=idx,
                    id=f"{kind}-{split}-{i}",
                    kind=kind,
                )
            )
        out[split] = examples
    return out


def write_tasks(dest: Path, seed: int) -> dict[str, dict[str, Path]]:
    """``dest/<split>/<kind>.jsonl`` for every kind and split."""
    paths: dict[str, dict[str, Path]] = {s: {} for s in SPLITS}
    for kind in KINDS:
        for split, examples in generate(kind, seed).items():
            path = dest / split / f"{kind}.jsonl"
            write_jsonl(path, examples)
            paths[split][kind] = path
    return paths


def task_texts(seed: int) -> list[str]:
    """Every question and choice, for the tokenizer to learn the task symbols as pieces."""
    texts: list[str] = []
    for kind in KINDS:
        for examples in generate(kind, seed).values():
            texts.extend(ex.question + " " + " ".join(ex.choices) for ex in examples[:50])
    return texts
