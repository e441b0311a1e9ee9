"""Multiple-choice task sets of real-world facts and skills for ``zoo:smollm2-135m``.

Eight kinds, four choices each (chance 0.25), written from the facts in ``facts.py`` or drawn
from a seeded generator, in haqa's JSONL format (``haqa.tasks``), one file per kind and split:

- ``capitals``: "What is the capital of Kenya?" — the other choices are capitals of the same
  continent, so knowing the region is not enough;
- ``continents``: "Which continent is Kenya in?" (transcontinental countries left out);
- ``arithmetic``: sums and differences of numbers up to 20 and the times table up to 9, the wrong
  answers 3, 5 or 10 away;
- ``units``: "How many centimeters are in 3 meters?" — the wrong answers use another unit's factor;
- ``sequences``: "What number comes next: 12, 17, 22, 27, ...?" — one off, one or two steps on;
- ``antonyms``: "What is the opposite of "early"?" — the others are words of other pairs;
- ``past_tense``: the past tense by rule ("goed", "stoped", "cryed") and other verbs' past tenses;
- ``plurals``: "One goose, two" to complete — three of the classic errors ("gooses", "goosees",
  "goose", "geeses") beside the plural.

Why each kind is pitched as it is: the reference model (the shipped Q4_1 weights dequantized, as
the F16 GGUF, scored by ``haqa.tools.evaluate``) was measured on every draft, and a kind is kept
only where it answers clearly above chance and below ceiling — a kind at 0.25 or at 0.95 cannot
show what a quantization type costs. Drafts that were changed: sums of numbers up to 50 with
answers one or two away (0.29: near chance); a next-number kind whose wrong choices held the last
number shown, and past tenses offered beside the bare verb (0.12 and 0.06: below chance, because
a log-likelihood scorer favours a continuation that repeats a word of the question); for the same
reason plurals asked as "What is the plural of "goose"?" drew the singular (0.28 to 0.40), so they
are asked as a sentence that only a plural completes; "which number is the largest" (0.24),
dropped. Without the singular among the choices, plurals were at ceiling (0.96). The test split's
accuracies, with 95% Wilson intervals, are in ``REFERENCE_ACCURACY``: 0.47 to 0.89 per kind.

Plain text, not the chat template: every question is ``Question: ...\\nAnswer:`` (plurals: the
sentence) and every choice a continuation after one space, as lm-evaluation-harness scores.
Wrapped in the model's chat template (system prompt, user turn, then ``Answer:`` in the assistant
turn), samples of 40 to 60 items of a draft scored 0.88 vs 0.82 (capitals), 0.95 vs 0.92
(antonyms), 0.56 vs 0.41 (units) but 0.55 vs 0.63 (plurals): no clear gain, at 2.5 times the
tokens per question (the system prompt). And the llama.cpp scorer (``gguf_loglik``) tokenizes
text without parsing special tokens, so ``<|im_start|>`` would be plain characters there and the
GGUF and Hugging Face backends would score different token sequences; in plain text they agree.

Splits are disjoint by question (and an antonym pair's two directions stay in one split): a
kind's items are shuffled by seed and cut into test, validation and train, in that order, 40/20/40
of the pool (train: all that is left) up to ``SPLIT_CAPS``.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from haqa.tasks import MCExample, write_jsonl
from haqa.zoo.smollm2 import facts

SPLITS: tuple[str, ...] = ("train", "validation", "test")
SEED = 0
#: Most groups per split and kind; a kind with a small pool is cut 40/20/40 instead.
SPLIT_CAPS: dict[str, int] = {"test": 100, "validation": 50, "train": 500}
_SHARES = {"test": 0.4, "validation": 0.2, "train": 0.4}
N_CHOICES = 4
PROMPT = "Question: {q}\nAnswer:"
#: Kinds asked as a sentence to complete instead (see the module's docstring).
CLOZE_KINDS = frozenset({"plurals"})

#: Continents a country is asked about; countries on two continents are left out of that kind.
CONTINENTS = ("Africa", "Asia", "Europe", "North America", "South America", "Oceania")
TRANSCONTINENTAL = frozenset(
    {"Russia", "Turkey", "Georgia", "Armenia", "Azerbaijan", "Kazakhstan", "Cyprus"}
    | {"Trinidad and Tobago"}
)
ARITH_MAX = 20  # sums and differences of 1..ARITH_MAX
TIMES_MAX = 9  # the times table 2..TIMES_MAX
ARITH_OFFSETS = (3, -3, 5, -5, 10, -10)
UNIT_MAX_N = 6
SEQ_MAX_START = 50
SEQ_STEPS = (2, 3, 4, 5, 10)
SEQ_LEN = 4


@dataclass(frozen=True)
class _Item:
    group: str  # the items of one group go to one split
    question: str
    answer: str
    wrong: tuple[str, ...]  # candidate wrong choices, best first; the first three distinct count


def _shuffled(rng: random.Random, values: list[str]) -> tuple[str, ...]:
    values = values[:]
    rng.shuffle(values)
    return tuple(values)


def _capitals(rng: random.Random) -> list[_Item]:
    items = []
    for country, capital, continent in facts.CAPITALS:
        near = [c for _, c, k in facts.CAPITALS if k == continent and c != capital]
        q = f"What is the capital of {country}?"
        items.append(_Item(country, q, capital, _shuffled(rng, near)))
    return items


def _continents(rng: random.Random) -> list[_Item]:
    items = []
    for country, _, continent in facts.CAPITALS:
        if country in TRANSCONTINENTAL:
            continue
        others = [c for c in CONTINENTS if c != continent]
        q = f"Which continent is {country} in?"
        items.append(_Item(country, q, continent, _shuffled(rng, others)))
    return items


def _near(answer: int, offsets: tuple[int, ...]) -> tuple[str, ...]:
    return tuple(str(answer + o) for o in offsets if answer + o >= 0)


def _arithmetic(rng: random.Random) -> list[_Item]:
    items = []
    for a in range(1, ARITH_MAX + 1):
        for b in range(1, ARITH_MAX + 1):
            items.append((f"What is {a} + {b}?", a + b))
            if a > b:
                items.append((f"What is {a} - {b}?", a - b))
    for a in range(2, TIMES_MAX + 1):
        for b in range(2, TIMES_MAX + 1):
            items.append((f"What is {a} times {b}?", a * b))
    return [
        _Item(q, q, str(ans), _shuffled(rng, list(_near(ans, ARITH_OFFSETS)))) for q, ans in items
    ]


def _units(rng: random.Random) -> list[_Item]:
    items = []
    factors = sorted({f for _, f, _, _ in facts.UNITS})
    for unit, factor, smaller, units in facts.UNITS:
        for n in range(1, UNIT_MAX_N + 1):
            many = f"a {unit}" if n == 1 else f"{n} {units}"
            q = f"How many {smaller} are in {many}?"
            wrong = [str(n * f) for f in factors if f != factor]
            items.append(_Item(q, q, str(n * factor), _shuffled(rng, wrong)))
    return items


def _sequences(rng: random.Random) -> list[_Item]:
    items = []
    for step in SEQ_STEPS:
        for start in range(1, SEQ_MAX_START + 1):
            seq = [start + i * step for i in range(SEQ_LEN)]
            ans = seq[-1] + step
            q = f"What number comes next: {', '.join(map(str, seq))}, ...?"
            wrong = [str(ans + 1), str(ans - 1), str(ans + step), str(ans + 2 * step)]
            items.append(_Item(q, q, str(ans), _shuffled(rng, wrong)))
    return items


def _antonyms(rng: random.Random) -> list[_Item]:
    words = [w for pair in facts.ANTONYMS for w in pair]
    items = []
    for a, b in facts.ANTONYMS:
        for word, opposite in ((a, b), (b, a)):
            others = [w for w in words if w not in (a, b)]
            q = f'What is the opposite of "{word}"?'
            items.append(_Item(f"{a}/{b}", q, opposite, _shuffled(rng, others)))
    return items


def _naive_past(verb: str) -> str:
    """The past tense by the bare rule, spelling unchanged: "goed", "stoped", "cryed"."""
    return verb + ("d" if verb.endswith("e") else "ed")


def _rule_past(verb: str) -> str:
    """The past tense by rule with its spelling change for -y: "goed", "cried"."""
    if verb.endswith("y") and verb[-2] not in "aeiou":
        return verb[:-1] + "ied"
    return _naive_past(verb)


def _past_tense(rng: random.Random) -> list[_Item]:
    pasts = [p for _, p in facts.PAST_TENSES]
    items = []
    for verb, past in facts.PAST_TENSES:
        # A learner's guesses first; where they are the answer itself (a regular verb), other
        # verbs' past tenses fill the choices.
        others = _shuffled(rng, [p for p in pasts if p != past])
        q = f'What is the past tense of "{verb}"?'
        items.append(_Item(verb, q, past, (_naive_past(verb), _rule_past(verb), *others)))
    return items


def _plurals(rng: random.Random) -> list[_Item]:
    items = []
    for noun, plural in facts.PLURALS:
        double = plural + ("es" if plural.endswith("s") else "s")
        # The four classic errors, three of them at random: -s, -es, no change, a double plural.
        wrong = [*_shuffled(rng, [noun + "s", noun + "es", noun, double]), noun + "en"]
        items.append(_Item(noun, f"One {noun}, two", plural, tuple(wrong)))
    return items


_POOLS: dict[str, Callable[[random.Random], list[_Item]]] = {
    "capitals": _capitals,
    "continents": _continents,
    "arithmetic": _arithmetic,
    "units": _units,
    "sequences": _sequences,
    "antonyms": _antonyms,
    "past_tense": _past_tense,
    "plurals": _plurals,
}
KINDS: tuple[str, ...] = tuple(_POOLS)

#: The reference's test accuracy per kind: (accuracy, 95% Wilson interval low and high,
#: questions), measured with ``haqa.tools.evaluate`` on the F16 GGUF (llama.cpp, F16 K/V cache):
#: 0.660 over all 524 questions (the shipped Q4_1 file, run by llama.cpp as it is: 0.656). A
#: changed generator or fact changes the questions: measure again and update these.
REFERENCE_ACCURACY: dict[str, tuple[float, float, float, int]] = {
    "capitals": (0.789, 0.67, 0.88, 57),
    "continents": (0.685, 0.55, 0.79, 54),
    "arithmetic": (0.520, 0.42, 0.62, 100),
    "units": (0.474, 0.35, 0.60, 57),
    "sequences": (0.490, 0.39, 0.59, 100),
    "antonyms": (0.889, 0.80, 0.94, 72),
    "past_tense": (0.875, 0.75, 0.94, 48),
    "plurals": (0.833, 0.68, 0.92, 36),
}


def _three_wrong(item: _Item) -> list[str]:
    out: list[str] = []
    for c in item.wrong:
        if c != item.answer and c not in out:
            out.append(c)
    if len(out) < N_CHOICES - 1:
        raise ValueError(f"too few wrong choices for {item.question!r}")
    return out[: N_CHOICES - 1]


def generate(kind: str, seed: int = SEED) -> dict[str, list[MCExample]]:
    """All three splits of one kind; the same seed gives the same items, byte for byte."""
    rng = random.Random(f"smollm2:{kind}:{seed}")
    groups: dict[str, list[_Item]] = {}
    for item in _POOLS[kind](rng):
        groups.setdefault(item.group, []).append(item)
    keys = list(groups)
    rng.shuffle(keys)
    out: dict[str, list[MCExample]] = {}
    start = 0
    for split in ("test", "validation", "train"):
        share = _SHARES[split] if split != "train" else 1.0  # train: what is left
        n = min(SPLIT_CAPS[split], int(len(keys) * share), len(keys) - start)
        chunk = [item for key in keys[start : start + n] for item in groups[key]]
        start += n
        examples = []
        for i, item in enumerate(chunk):
            question = item.question if kind in CLOZE_KINDS else PROMPT.format(q=item.question)
            options = [item.answer, *_three_wrong(item)]
            rng.shuffle(options)
            examples.append(
                MCExample(
                    question=question,
                    choices=tuple(options),
                    answer=options.index(item.answer),
                    id=f"{kind}-{split}-{i}",
                    kind=kind,
                )
            )
        out[split] = examples
    return out


def write_tasks(dest: Path, seed: int = SEED) -> dict[str, dict[str, int]]:
    """``dest/<split>/<kind>.jsonl`` for every kind and split; the number of items of each."""
    counts: dict[str, dict[str, int]] = {s: {} for s in SPLITS}
    for kind in KINDS:
        for split, examples in generate(kind, seed).items():
            write_jsonl(dest / split / f"{kind}.jsonl", examples)
            counts[split][kind] = len(examples)
    return counts
