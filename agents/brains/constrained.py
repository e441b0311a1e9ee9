"""Decisions written as JSON of a schema built from the stage's search space.

A small local model asked for free-form tool calls proposes values outside the space (the
planner's ``warmup_ratio`` 0.5, ``learning_rate`` 0.0 with SmolLM2-135M: six invalid proposals in
eight). Made to write only values the schema admits, every proposal is in the space by
construction: categorical knobs become enums, booleans booleans, and numeric knobs an enum of
values spread over their range (a range is written as the values it allows, which a JSON-schema
grammar can also enforce: llama.cpp's do not bound numbers). The llamacpp brain's decoder
(``llamacpp_brain._Decoder``) writes the schema's JSON itself; an OpenAI-compatible server gets
the same schema as the tool's parameters. The node still validates what comes back and gates its
memory: the schema makes a proposal well-formed, not right.

The prompt a local model reads is laid out for llama.cpp's prefix cache (``_messages``)."""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from haqa.agents.brains.base import DecisionContext, Proposal
from haqa.agents.brains.react import InvalidAnswer
from haqa.space import Knob, SearchSpace

#: How many values a numeric knob offers when its range is too wide to list.
NUMERIC_STEPS = 9
#: Longest thought the schema admits: the decision, not an essay. Every token of it is a forward
#: pass of the local model (~25-45 ms on two idle cores, 60 ms and more on busy ones; under the
#: former grammar also a pass over the 49k-token vocabulary): 60 characters are ~10-15 tokens.
THOUGHT_CHARS = 60
#: A space with at most this many configurations is offered as the list of its untried ones.
ENUMERATE_LIMIT = 64

#: (knobs chosen so far, the knob to choose, its values) -> the values still possible.
ValueFilter = Callable[[dict[str, Any], str, list[Any]], list[Any]]


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
    """The values the schema offers for a numeric or categorical knob (its default included)."""
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


def space_configs(ctx: DecisionContext) -> list[dict[str, Any]] | None:
    """Every valid configuration of a small space's free knobs, in the space's own order (None
    when the space has more than ``ENUMERATE_LIMIT`` points or a numeric knob). The listing does
    not depend on the history: the llamacpp brain writes it once near the start of its prompt,
    where llama.cpp's prompt cache keeps it from one call to the next, and its answer may only be
    one of the untried numbers (``untried_numbers``)."""
    from haqa.agents.brains.optuna_brain import is_valid

    free = [k for k in ctx.space.knobs if k.name not in fixed_values(ctx.space)]
    if any(k.kind in ("int", "float") for k in free):
        return None
    options = [[False, True] if k.kind == "bool" else list(k.choices or ()) for k in free]
    if math.prod(len(o) for o in options) > ENUMERATE_LIMIT:
        return None
    fixed = fixed_values(ctx.space)
    out: list[dict[str, Any]] = []
    for values in itertools.product(*options):
        # A knob its other values make meaningless is left out, so those points are one.
        config = ctx.space.applicable(dict(zip([k.name for k in free], values, strict=True)))
        if config not in out and is_valid(ctx, {**ctx.defaults, **fixed, **config}):
            out.append(config)
    return out


def untried_numbers(ctx: DecisionContext, configs: list[dict[str, Any]]) -> tuple[int, ...]:
    """The numbers (from 1) of the configurations the history has no trial of."""
    tried = {_key(t.config, list(configs[0])) for t in ctx.history} if configs else set()
    return tuple(i for i, c in enumerate(configs, 1) if _key(c, list(c)) not in tried)


def untried_configs(ctx: DecisionContext) -> list[dict[str, Any]] | None:
    """Every valid configuration of a small space that the history has no trial of (None when
    the space has more than ``ENUMERATE_LIMIT`` points)."""
    configs = space_configs(ctx)
    if configs is None:
        return None
    return [configs[i - 1] for i in untried_numbers(ctx, configs)]


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


def completion_filter(ctx: DecisionContext) -> ValueFilter:
    """Which values of a knob can still be part of a valid configuration, given the knobs
    chosen before it. The schema bounds each knob alone; the configuration's own checks tie some
    together (``n_ubatch <= n_batch``; a quantized ``type_v`` needs ``flash_attn``), and an
    answer decoded knob by knob breaks them (SmolLM2 wrote n_batch 128 then n_ubatch 256: an
    invalid proposal). A value stays when the configuration with it, the knobs chosen so far and
    the defaults for the rest is valid, or becomes valid by changing one later knob: every
    constraint between two knobs is then kept by construction, whichever comes first. Never
    empty (all values, should none pass: the node's validation still stands)."""
    from haqa.agents.brains.optuna_brain import is_valid

    fixed = fixed_values(ctx.space)
    options = {
        k.name: [False, True] if k.kind == "bool" else knob_values(k)
        for k in ctx.space.knobs
        if k.name not in fixed
    }
    base = {**ctx.defaults, **fixed}

    def allow(chosen: dict[str, Any], name: str, values: list[Any]) -> list[Any]:
        later = [n for n in options if n != name and n not in chosen]
        out = []
        for value in values:
            config = {**base, **chosen, name: value}
            if is_valid(ctx, config) or any(
                is_valid(ctx, {**config, n: v}) for n in later for v in options[n]
            ):
                out.append(value)
        return out or values

    return allow


def may_finish(ctx: DecisionContext) -> bool:
    """Finish is offered once a feasible trial exists: before that, ending the stage cannot be
    the right answer (an LLM that finished early left a run with a slower-than-default answer)."""
    return ctx.incumbent() is not None


@dataclass(frozen=True)
class Question:
    """What the model is asked and the schema its answer is written in. With ``options``
    the answer is the number of one of them (a token or two, where a whole configuration costs
    fifty: on two busy cores, seconds); without, a complete configuration of the free knobs."""

    messages: list[dict[str, Any]]
    schema: dict[str, Any]
    options: list[dict[str, Any]] | None = None
    #: The option numbers (from 1) the answer may take, when not all of them: the llamacpp brain
    #: lists every configuration of a small space (a listing that stays the same all run, so
    #: llama.cpp's prompt cache keeps it) and admits only the untried ones.
    allowed: tuple[int, ...] | None = None
    #: For a whole configuration: the values of a knob still possible given those chosen so far
    #: (``completion_filter``); the llamacpp brain's decoder offers only those.
    allow: ValueFilter | None = None


def _thought() -> dict[str, Any]:
    return {"type": "string", "maxLength": THOUGHT_CHARS}


def option_line(i: int, config: dict[str, Any]) -> str:
    return f"{i}: " + ", ".join(f"{k}={v}" for k, v in config.items())


def options_question(
    ctx: DecisionContext, options: list[dict[str, Any]], *, allow_finish: bool, intro: str
) -> Question:
    """Ask the model to pick one of ``options`` by number (or finish, when allowed). The options
    change every step (the hybrid's candidates), so they are listed after the history."""
    numbers: list[Any] = list(range(1, len(options) + 1))
    if allow_finish:
        numbers.append("finish")
    listing = "\n".join(option_line(i, c) for i, c in enumerate(options, 1))
    fmt = (
        f"{intro}\n{listing}\n\nAnswer with one JSON object: the number of the option to run"
        + (' (or "finish" to stop this stage)' if allow_finish else "")
        + " and your reason in a few words."
    )
    return Question(messages=_messages(ctx, fmt), schema=_option_schema(numbers), options=options)


def _option_schema(numbers: list[Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"option": {"enum": numbers}, "thought": _thought()},
        "required": ["option", "thought"],
    }


def catalogue_question(
    ctx: DecisionContext, configs: list[dict[str, Any]], allowed: tuple[int, ...]
) -> Question:
    """Pick an untried configuration of a small space by number. Every configuration is listed,
    tried or not, in the same order all run, before the history: that listing (up to 64 lines,
    about a thousand tokens) is then evaluated once per run instead of once per decision, and
    the schema, which admits only the ``allowed`` numbers, keeps the model off tried ones."""
    listing = "\n".join(option_line(i, c) for i, c in enumerate(configs, 1))
    catalogue = (
        "Configurations of this search space, by number (knobs not listed keep their values):\n"
        + listing
    )
    fmt = (
        "Answer with one JSON object: the number of a configuration not tried yet and your "
        "reason in a few words."
    )
    return Question(
        messages=_messages(ctx, fmt, catalogue=catalogue, format_first=True),
        schema=_option_schema(list(allowed)),
        options=configs,
        allowed=allowed,
    )


def decision_question(ctx: DecisionContext) -> Question:
    """The llamacpp brain's question: pick an untried configuration of a small space, or write a
    configuration of a large one."""
    configs = space_configs(ctx)
    allowed = untried_numbers(ctx, configs) if configs is not None else None
    if configs and allowed:
        # No finish while untried configurations remain: the stop rules (budget, patience) end
        # the stage, and a small model picks "finish" as readily as any option.
        return catalogue_question(ctx, configs, allowed)
    all_tried = configs is not None and not allowed
    actions = ["trial", "finish"] if may_finish(ctx) or all_tried else ["trial"]
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
    return Question(
        messages=_messages(ctx, fmt, format_first=True),
        schema=schema,
        allow=completion_filter(ctx),
    )


def _split_history(ctx: DecisionContext) -> tuple[str, str]:
    """(the trial history table, the rest of the dynamic prompt without it). The table's rows
    are only ever appended to, so with the table first, the prompt of one step starts with the
    whole prompt of the step before; the dynamic prompt's own first line (trial count, budget
    left) changes every step and would make everything after it new to the cache. A dynamic
    prompt without the table (a test's) is kept whole."""
    from haqa.agents.search_step import history_table

    table = history_table(ctx.history, ctx.space.names)
    if not ctx.history or table not in ctx.dynamic_prompt:
        return "", ctx.dynamic_prompt
    rest = ctx.dynamic_prompt.replace(table, "(the trial history above)", 1)
    return "Trial history:\n" + table, _latest_feedback(rest, ctx.feedback)


def _latest_feedback(text: str, feedback: list[str]) -> str:
    """``text`` with its feedback list cut to the latest item. The earlier ones are mostly the
    observations of trials the history table already holds, and the tail is evaluated anew
    every step (~45 tokens an observation: 2-5 s a step on a loaded machine); the latest, the
    one the model has not seen, may be a rejection or a memory-gate verdict, which the table
    does not show."""
    block = "Feedback:\n" + "\n".join(f"- {f}" for f in feedback)
    if len(feedback) < 2 or block not in text:
        return text
    return text.replace(block, f"Latest feedback:\n- {feedback[-1]}", 1)


def _messages(
    ctx: DecisionContext, answer_format: str, *, catalogue: str = "", format_first: bool = False
) -> list[dict[str, Any]]:
    """The chat a local model answers, laid out for llama.cpp's prompt cache.

    llama-cpp-python evaluates a prompt from the first token that differs from the previous
    call's; everything before it is reused from the KV cache. Evaluating a token of the prompt
    costs ~3 ms on two cores (SmolLM2-135M F16), so a 1.5k-token prompt re-read in full is 4-5 s
    a decision (far more on a loaded machine). Hence, in order of how long each part stays the
    same: the static prompt (goal, model, hardware brief, space: the whole stage) as the system
    message; then in the user message a small space's catalogue (the whole stage), the trial
    history (rows only appended), and last what changes every step: the trial count and budget
    left, the reference accuracy, the latest feedback, and what to answer. A step then evaluates
    its new history row and that tail, ~100-200 tokens. (The feedback is in the dynamic prompt
    already; it is not repeated.) An answer format that stays the same all stage
    (``format_first``: the llamacpp brain's) goes before the history too; one listing options
    that change every step (the hybrid's candidates) goes last."""
    history, rest = _split_history(ctx)
    parts = (
        (catalogue, answer_format, history, rest)
        if format_first
        else (catalogue, history, rest, answer_format)
    )
    user = "\n\n".join(p for p in parts if p)
    return [
        {"role": "system", "content": ctx.static_prompt},
        {"role": "user", "content": user},
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
    if question.allowed is not None and option not in question.allowed:
        raise InvalidAnswer(f"the answer picks option {option}, which was tried already")
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
