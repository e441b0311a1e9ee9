"""Decisions decoded under a JSON schema built from the stage's search space.

A small local model asked for free-form tool calls proposes values outside the space (the
planner's ``warmup_ratio`` 0.5, ``learning_rate`` 0.0 with SmolLM2-135M: six invalid proposals in
eight). Decoded under a grammar that only admits the space's values, every proposal is in the space
by construction: categorical knobs become enums, booleans booleans, and numeric knobs an enum of
values spread over their range (llama.cpp's JSON-schema grammars do not bound numbers, so a range
is written as the values it allows). The node still validates what comes back and gates its memory:
the grammar makes a proposal well-formed, not right.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass
from typing import Any

from haqa.agents.brains.base import DecisionContext, Proposal
from haqa.agents.brains.react import InvalidAnswer
from haqa.space import Knob, SearchSpace

#: How many values a numeric knob offers when its range is too wide to list.
NUMERIC_STEPS = 9
#: Longest thought the grammar admits: the decision, not an essay (tokens cost seconds here).
THOUGHT_CHARS = 80
#: A space with at most this many configurations is offered as the list of its untried ones.
ENUMERATE_LIMIT = 64


def _spread(knob: Knob) -> list[float]:
    """``NUMERIC_STEPS`` values over the knob's range (log-spaced for a log knob)."""
    low, high = float(knob.low or 0.0), float(knob.high or 0.0)
    n = NUMERIC_STEPS
    if knob.log and low > 0:
        return [
            math.exp(math.log(low) + i * (math.log(high) - math.log(low)) / (n - 1))
            for i in range(n)
        ]
    return [low + i * (high - low) / (n - 1) for i in range(n)]


def knob_values(knob: Knob) -> list[Any]:
    """The values the grammar offers for a numeric or categorical knob (its default included)."""
    if knob.kind == "categorical":
        return list(knob.choices or ())
    if knob.kind == "int":
        low, high = int(knob.low or 0), int(knob.high or 0)
        if high - low < 32:
            return list(range(low, high + 1))
        values = {round(v) for v in _spread(knob)} | {int(knob.default)}
        return sorted(v for v in values if low <= v <= high)
    values_f = {float(f"{v:.3g}") for v in _spread(knob)} | {float(knob.default)}
    low_f, high_f = float(knob.low or 0.0), float(knob.high or 0.0)
    return sorted(v for v in values_f if low_f <= v <= high_f)


def knob_schema(knob: Knob) -> dict[str, Any]:
    if knob.kind == "bool":
        return {"type": "boolean"}
    return {"enum": knob_values(knob)}


def fixed_values(space: SearchSpace) -> dict[str, Any]:
    """Knobs with one allowed value (a recorded grid fixes some): not asked, filled in."""
    return {
        k.name: k.choices[0]
        for k in space.knobs
        if k.kind == "categorical" and k.choices and len(k.choices) == 1
    }


def untried_configs(ctx: DecisionContext) -> list[dict[str, Any]] | None:
    """Every valid configuration of a small space that the history has no trial of (None when
    the space has more than ``ENUMERATE_LIMIT`` points): offered as the only answers, so the
    model can neither leave the space nor repeat itself."""
    from haqa.agents.brains.optuna_brain import is_valid

    free = [k for k in ctx.space.knobs if k.name not in fixed_values(ctx.space)]
    if any(k.kind in ("int", "float") for k in free):
        return None
    options = [[False, True] if k.kind == "bool" else list(k.choices or ()) for k in free]
    if math.prod(len(o) for o in options) > ENUMERATE_LIMIT:
        return None
    tried = {_key(t.config, [k.name for k in free]) for t in ctx.history}
    fixed = fixed_values(ctx.space)
    out = []
    for values in itertools.product(*options):
        config = dict(zip([k.name for k in free], values, strict=True))
        full = {**ctx.defaults, **fixed, **config}
        if _key(config, list(config)) not in tried and is_valid(ctx, full):
            out.append(config)
    return out


def _key(config: dict[str, Any], names: list[str]) -> str:
    return json.dumps({n: config.get(n) for n in sorted(names)}, default=str)


def config_schema(space: SearchSpace) -> dict[str, Any]:
    """Each free knob of the space restricted to the values it offers."""
    free = [k for k in space.knobs if k.name not in fixed_values(space)]
    return {
        "type": "object",
        "properties": {k.name: knob_schema(k) for k in free},
        "required": [k.name for k in free],
        "additionalProperties": False,
    }


def may_finish(ctx: DecisionContext) -> bool:
    """Finish is offered once a feasible trial exists: before that, ending the stage cannot be
    the right answer (an LLM that finished early left a run with a slower-than-default answer)."""
    return ctx.incumbent() is not None


@dataclass(frozen=True)
class Question:
    """What the model is asked and the grammar its answer is decoded under. With ``options``
    the answer is the number of one of them (a token or two, where a whole configuration costs
    fifty: on two busy cores, seconds); without, a complete configuration of the free knobs."""

    messages: list[dict[str, Any]]
    schema: dict[str, Any]
    options: list[dict[str, Any]] | None = None


def _thought() -> dict[str, Any]:
    return {"type": "string", "maxLength": THOUGHT_CHARS}


def option_line(i: int, config: dict[str, Any]) -> str:
    return f"{i}: " + ", ".join(f"{k}={v}" for k, v in config.items())


def options_question(
    ctx: DecisionContext, options: list[dict[str, Any]], *, allow_finish: bool, intro: str
) -> Question:
    """Ask the model to pick one of ``options`` by number (or finish, when allowed)."""
    numbers: list[Any] = list(range(1, len(options) + 1))
    if allow_finish:
        numbers.append("finish")
    listing = "\n".join(option_line(i, c) for i, c in enumerate(options, 1))
    fmt = (
        f"{intro}\n{listing}\n\nAnswer with one JSON object: the number of the option to run"
        + (' (or "finish" to stop this stage)' if allow_finish else "")
        + " and your reason in a few words."
    )
    schema = {
        "type": "object",
        "properties": {"option": {"enum": numbers}, "thought": _thought()},
        "required": ["option", "thought"],
    }
    return Question(messages=_messages(ctx, fmt), schema=schema, options=options)


def decision_question(ctx: DecisionContext) -> Question:
    """The llamacpp brain's question: pick an untried configuration of a small space, or write a
    configuration of a large one."""
    untried = untried_configs(ctx)
    if untried:
        # No finish while untried configurations remain: the stop rules (budget, patience) end
        # the stage, and a small model picks "finish" as readily as any option.
        intro = "Untried configurations (knobs not listed keep their values):"
        return options_question(ctx, untried, allow_finish=False, intro=intro)
    actions = ["trial", "finish"] if may_finish(ctx) or untried == [] else ["trial"]
    schema = {
        "type": "object",
        "properties": {
            "action": {"enum": actions},
            "config": config_schema(ctx.space),
            "thought": _thought(),
        },
        "required": ["action", "config", "thought"],
    }
    fmt = (
        "Answer with one JSON object: the action (trial or finish), the configuration of the "
        "trial and your reason in a few words. Propose a configuration not in the history yet."
    )
    return Question(messages=_messages(ctx, fmt), schema=schema)


def _messages(ctx: DecisionContext, answer_format: str) -> list[dict[str, Any]]:
    """The chat the model answers: static prompt, then the dynamic prompt, recent feedback and
    what to answer (last, so the prompt's stable start is reused from llama.cpp's cache)."""
    user = ctx.dynamic_prompt
    if ctx.feedback:
        user += "\n\n" + "\n".join(ctx.feedback[-3:])
    return [
        {"role": "system", "content": ctx.static_prompt},
        {"role": "user", "content": user + "\n\n" + answer_format},
    ]


def _load(text: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidAnswer(f"the answer is not JSON ({exc.msg}): {text[:120]!r}") from None
    if not isinstance(data, dict):
        raise InvalidAnswer(f"the answer is not a JSON object: {text[:120]!r}")
    return data


def picked_option(text: str, question: Question) -> int | None:
    """The index (from 0) of the option the answer picks, None for finish; InvalidAnswer when
    it picks none (cut off by the token limit, or a server that ignored the schema)."""
    option = _load(text).get("option")
    if option == "finish":
        return None
    n = len(question.options or [])
    if isinstance(option, bool) or not isinstance(option, int) or not 1 <= option <= n:
        raise InvalidAnswer(f"the answer picks no option 1..{n}: {text[:120]!r}")
    return option - 1


def parse_decision(text: str, question: Question, space: SearchSpace) -> Proposal:
    """The answer to a ``decision_question`` as a Proposal (InvalidAnswer when it is none)."""
    data = _load(text)
    thought = str(data.get("thought") or "")
    if question.options is not None:
        index = picked_option(text, question)
        if index is None:
            return Proposal(action="finish", thought=thought)
        config = question.options[index]
    else:
        if data.get("action") not in ("trial", "finish"):
            raise InvalidAnswer(f"the answer names no action trial/finish: {text[:120]!r}")
        if data["action"] == "finish":
            return Proposal(action="finish", thought=thought)
        written = data.get("config")
        if not isinstance(written, dict):
            raise InvalidAnswer("a trial needs a 'config' object")
        config = written
    return Proposal(action="trial", config={**fixed_values(space), **config}, thought=thought)


def schema_text(schema: dict[str, Any]) -> str:
    return json.dumps(schema, separators=(",", ":"))
