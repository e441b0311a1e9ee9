"""The tiny model's pre-training corpus: number facts in prose, generated from a seed.

The corpus states the facts the tasks ask about (sums, order, counting) but never in the tasks'
symbolic surface form: it says "8 plus 5 makes 13." where a task asks ``8 + 5 =``, "the biggest
of 31, 4, 89 and 84 is 89." where a task asks ``max(31, 4, 89, 84) =``, and "counting up from
7: 7, 8, 9." where a task asks ``7 8 9 ->``. Pre-training therefore teaches the vocabulary and the
knowledge; the format, and so most of the task accuracy, is left for fine-tuning to learn.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

MAX_NUMBER = 99


def _addition(rng: random.Random) -> str:
    a, b = rng.randint(0, 9), rng.randint(0, 9)
    return f"{a} plus {b} makes {a + b}."


def _order(rng: random.Random) -> str:
    a, b = rng.sample(range(MAX_NUMBER + 1), 2)
    if rng.random() < 0.5:
        return f"{max(a, b)} is more than {min(a, b)}."
    return f"{min(a, b)} is less than {max(a, b)}."


def _biggest(rng: random.Random) -> str:
    nums = rng.sample(range(MAX_NUMBER + 1), rng.randint(2, 4))
    listed = ", ".join(map(str, nums[:-1])) + f" and {nums[-1]}"
    return f"the biggest of {listed} is {max(nums)}."


def _counting(rng: random.Random) -> str:
    step = rng.choice((1, -1, 2, -2))
    n = rng.randint(4, 9)
    span = n * abs(step)
    start = rng.randint(0, MAX_NUMBER - span) if step > 0 else rng.randint(span, MAX_NUMBER)
    seq = ", ".join(str(start + i * step) for i in range(n + 1))
    how = {1: "up", -1: "down", 2: "up by twos", -2: "down by twos"}[step]
    return f"counting {how} from {start}: {seq}."


def _successor(rng: random.Random) -> str:
    a = rng.randint(0, MAX_NUMBER - 1)
    return f"after {a} comes {a + 1}." if rng.random() < 0.5 else f"before {a + 1} comes {a}."


SENTENCES: tuple[tuple[Callable[[random.Random], str], float], ...] = (
    (_addition, 0.3),
    (_order, 0.05),
    (_biggest, 0.2),
    (_counting, 0.3),
    (_successor, 0.15),
)


def documents(seed: int, n_docs: int, sentences_per_doc: int = 6) -> Iterator[str]:
    """``n_docs`` documents of a few fact sentences each, deterministic by ``seed``."""
    rng = random.Random(f"corpus:{seed}")
    makers = [m for m, _ in SENTENCES]
    weights = [w for _, w in SENTENCES]
    for _ in range(n_docs):
        picks = rng.choices(makers, weights=weights, k=sentences_per_doc)
        yield " ".join(make(rng) for make in picks)
