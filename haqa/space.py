"""Search spaces as data: each knob has a name, a type, its range or choices, a default and a
description. Agents read them (the LLM sees them in its static prompt), optimisers sample them,
and ``SearchSpace.validate`` checks a proposal, naming the offending knob and what is allowed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from haqa.errors import HaqaError
from haqa.recipes import PROBED, RECIPE_DESCRIPTIONS, RECIPE_NAMES, TARGET_BPW_RANGE

KnobKind = Literal["int", "float", "categorical", "bool"]
Scalar = int | float | str | bool


class Knob(BaseModel):
    """One tunable setting."""

    model_config = ConfigDict(frozen=True)

    name: str
    kind: KnobKind
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Scalar, ...] | None = None
    default: Scalar
    description: str = ""
    #: ``(knob, value)``: this knob means something only while that knob has that value
    #: (``target_bpw`` only with the ``probed`` recipe); elsewhere a config leaves it out.
    only_with: tuple[str, Scalar] | None = None

    @model_validator(mode="after")
    def _check(self) -> Knob:
        numeric = self.kind in ("int", "float")
        if numeric and (self.low is None or self.high is None or self.low > self.high):
            raise ValueError(f"knob {self.name}: numeric knobs need low <= high")
        if self.kind == "categorical" and not self.choices:
            raise ValueError(f"knob {self.name}: categorical knobs need choices")
        return self

    def allowed(self) -> str:
        """The allowed values, as a user reads them in an error message."""
        if self.kind == "bool":
            return "true or false"
        if self.kind == "categorical":
            return "one of " + ", ".join(str(c) for c in self.choices or ())
        kind = "an integer" if self.kind == "int" else "a number"
        return f"{kind} in [{_fmt(self.low)}, {_fmt(self.high)}]"

    def check(self, value: Any) -> Scalar:
        """The value if allowed (ints widened to floats where the knob is float), else HaqaError."""
        bad = HaqaError(f"knob '{self.name}' = {value!r} is not allowed: use {self.allowed()}")
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise bad
            return value
        if self.kind == "categorical":
            choices = self.choices or ()
            # True == 1 in Python: a boolean matches boolean choices only, and only booleans do.
            boolean = bool(choices) and all(isinstance(c, bool) for c in choices)
            if isinstance(value, bool) is not boolean or value not in choices:
                raise bad
            return value  # type: ignore[no-any-return]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad
        if self.kind == "int" and not float(value).is_integer():
            raise bad
        low, high = self.low, self.high
        if math.isnan(value) or low is None or high is None or not low <= value <= high:
            raise bad
        return int(value) if self.kind == "int" else float(value)

    def nearest(self, value: Any) -> Scalar:
        """The allowed value closest to ``value`` (itself when allowed): a number is clamped or
        moved to the nearest numeric choice; anything else falls back to the knob's default."""
        try:
            return self.check(value)
        except HaqaError:
            pass
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if self.kind in ("int", "float") and number and self.low is not None:
            clamped = min(max(value, self.low), self.high if self.high is not None else value)
            return round(clamped) if self.kind == "int" else float(clamped)
        numeric = [c for c in self.choices or () if isinstance(c, int | float)]
        numeric = [c for c in numeric if not isinstance(c, bool)]
        if self.kind == "categorical" and number and numeric:
            return min(numeric, key=lambda c: abs(c - value))
        return self.default


def _fmt(x: float | None) -> str:
    if x is None:
        return "?"
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e6 else f"{x:g}"


class SearchSpace(BaseModel):
    """An ordered set of knobs for one stage."""

    model_config = ConfigDict(frozen=True)

    stage: Literal["finetune", "deploy"]
    knobs: tuple[Knob, ...] = Field(min_length=1)

    def knob(self, name: str) -> Knob:
        for knob in self.knobs:
            if knob.name == name:
                return knob
        raise HaqaError(
            f"unknown knob '{name}' for the {self.stage} stage: use one of {', '.join(self.names)}"
        )

    @property
    def names(self) -> list[str]:
        return [k.name for k in self.knobs]

    def defaults(self) -> dict[str, Scalar]:
        return {k.name: k.default for k in self.knobs}

    def within(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """``values`` with each knob of this space moved onto what it allows (``Knob.nearest``);
        keys that are not knobs here pass through. Hardware defaults meet a narrowed space this
        way (a recorded grid that fixes prompt threads at 1 on a 2-core machine)."""
        names = set(self.names)
        return {k: self.knob(k).nearest(v) if k in names else v for k, v in values.items()}

    def applicable(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """``config`` without the knobs its other values make meaningless (``Knob.only_with``):
        two proposals that differ only there are one configuration, measured once. A
        conditional knob that applies but is unset gets its default, as any unset knob does."""
        out = dict(config)
        for knob in self.knobs:
            if knob.only_with is not None:
                other, value = knob.only_with
                if out.get(other, self.knob(other).default) != value:
                    out.pop(knob.name, None)
                elif out.get(knob.name) is None:
                    out[knob.name] = knob.default  # unset, it keeps its default as any knob
        # A conditional knob this space lost (restricted away) is left out too.
        for name, _ in _CONDITIONAL_KNOBS:
            if name not in self.names:
                out.pop(name, None)
        return out

    def validate_config(self, proposal: Mapping[str, Any]) -> dict[str, Scalar]:
        """Checked values for the knobs named in ``proposal``; the first bad knob raises."""
        return {name: self.knob(name).check(value) for name, value in proposal.items()}

    def restrict(self, **choices: Sequence[Scalar]) -> SearchSpace:
        """A copy with some knobs narrowed to the given choices (e.g. threads up to this
        machine's cores, or a knob a recorded grid holds fixed). A boolean or numeric knob
        narrowed becomes categorical, so no brain can propose a value outside the choices."""
        knobs = []
        for knob in self.knobs:
            if knob.name in choices:
                allowed = tuple(choices[knob.name])
                default = knob.default if knob.default in allowed else allowed[0]
                update: dict[str, Any] = {"choices": allowed, "default": default}
                if knob.kind != "categorical":
                    update.update(kind="categorical", low=None, high=None, log=False)
                knob = knob.model_copy(update=update)
            knobs.append(knob)
        # A knob whose condition can no longer hold leaves the space (a grid that fixes the
        # recipe at uniform has no target_bpw to ask for).
        by_name = {k.name: k for k in knobs}
        knobs = [k for k in knobs if k.only_with is None or _can_hold(by_name, k.only_with)]
        return self.model_copy(update={"knobs": tuple(knobs)})


def _can_hold(knobs: Mapping[str, Knob], condition: tuple[str, Scalar]) -> bool:
    other, value = condition
    knob = knobs.get(other)
    return knob is not None and (knob.kind != "categorical" or value in (knob.choices or ()))


#: The knobs of ``finetune_space``, before a model's own recipe replaces their defaults.
_FINETUNE_KNOBS = (
    Knob(
        name="learning_rate",
        kind="float",
        low=1e-5,
        high=1e-1,
        log=True,
        default=2e-4,
        description="peak AdamW learning rate; the knob that matters most",
    ),
    Knob(
        name="lora_r",
        kind="categorical",
        choices=(2, 4, 8, 16, 32),
        default=8,
        description="LoRA rank: capacity of the adapter",
    ),
    Knob(
        name="lora_alpha",
        kind="categorical",
        choices=(4, 8, 16, 32, 64),
        default=16,
        description="LoRA alpha; the update is scaled by alpha/r",
    ),
    Knob(
        name="lora_dropout",
        kind="float",
        low=0.0,
        high=0.3,
        default=0.0,
        description="dropout on the adapter input",
    ),
    Knob(
        name="max_steps",
        kind="int",
        low=10,
        high=2000,
        log=True,
        default=120,
        description="optimiser steps",
    ),
    Knob(
        name="batch_size",
        kind="categorical",
        choices=(4, 8, 16, 32),
        default=8,
        description="examples per micro-batch",
    ),
    Knob(
        name="quant",
        kind="categorical",
        choices=("nf4", "fp4", "int8"),
        default="nf4",
        description="bitsandbytes type of the frozen base weights",
    ),
    Knob(
        name="double_quant",
        kind="bool",
        default=True,
        description="quantize the 4-bit scales too",
    ),
    Knob(
        name="warmup_ratio",
        kind="float",
        low=0.0,
        high=0.3,
        default=0.05,
        description="share of steps spent warming up the learning rate",
    ),
)


def finetune_space(defaults: Mapping[str, Any] | None = None) -> SearchSpace:
    """QLoRA hyper-parameters worth tuning, with ranges a practitioner would search. The
    defaults are QLoRA's recipe for a pretrained model (``FinetuneConfig``'s); ``defaults``
    replaces those a model's own recipe sets (the tiny zoo model's, a run's explicit settings)."""
    space = SearchSpace(stage="finetune", knobs=_FINETUNE_KNOBS)
    if not defaults:
        return space
    knobs = []
    for knob in space.knobs:
        try:
            value = knob.check(defaults[knob.name]) if knob.name in defaults else None
        except HaqaError:
            value = None  # a setting outside the search range stays the run's, not the knob's
        knobs.append(knob if value is None else knob.model_copy(update={"default": value}))
    return space.model_copy(update={"knobs": tuple(knobs)})


#: The quantization types the kernel tuner searches (llama.cpp's common CPU/GPU types).
DEPLOY_QUANT_TYPES = ("F16", "Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_0", "IQ4_NL", "Q3_K_M", "Q2_K")


#: The deployment knob that picks the GGUF weight type.
_QUANT_TYPE_KNOB = Knob(
    name="quant_type",
    kind="categorical",
    choices=DEPLOY_QUANT_TYPES,
    default="Q4_K_M",
    description="GGUF weight type: bytes read per token vs accuracy",
)

#: The deployment knobs that change the GGUF's weights beyond its file type (haqa.recipes).
_WEIGHT_KNOBS = (
    Knob(
        name="recipe",
        kind="categorical",
        choices=RECIPE_NAMES,
        default="uniform",
        description="per-tensor rule on top of quant_type: "
        + "; ".join(f"{k}: {v}" for k, v in RECIPE_DESCRIPTIONS.items()),
    ),
    Knob(
        name="target_bpw",
        kind="categorical",
        # Quarter bits: a finer target moves no whole tensor group on a small model, and each
        # distinct value would be a trial of the same file.
        choices=tuple(
            TARGET_BPW_RANGE[0] + 0.25 * i
            for i in range(round((TARGET_BPW_RANGE[1] - TARGET_BPW_RANGE[0]) / 0.25) + 1)
        ),
        default=4.5,
        description="bits per weight of the whole file for the probed recipe, spent on the "
        "tensor groups the analyst's sensitivity probe ranks first (only with recipe=probed)",
        only_with=("recipe", PROBED),
    ),
    Knob(
        name="imatrix",
        kind="bool",
        default=False,
        description="quantize with an importance matrix (same size and speed, less error)",
    ),
)

#: Every knob that exists only with another knob's value: (knob, why).
_CONDITIONAL_KNOBS: tuple[tuple[str, str], ...] = (("target_bpw", "only with recipe=probed"),)

#: The deployment knobs after the thread counts: batching, attention and the KV cache.
_BATCH_AND_CACHE_KNOBS = (
    Knob(
        name="n_batch",
        kind="categorical",
        choices=(128, 256, 512, 1024, 2048),
        default=2048,
        description="logical batch for prompt processing",
    ),
    Knob(
        name="n_ubatch",
        kind="categorical",
        choices=(32, 64, 128, 256, 512),
        default=512,
        description="physical batch per compute graph",
    ),
    Knob(
        name="flash_attn",
        kind="bool",
        default=False,
        description="fused attention; needed for a quantized V cache",
    ),
    Knob(
        name="type_k",
        kind="categorical",
        choices=("f16", "q8_0", "q4_0"),
        default="f16",
        description="KV-cache K type",
    ),
    Knob(
        name="type_v",
        kind="categorical",
        choices=("f16", "q8_0", "q4_0"),
        default="f16",
        description="KV-cache V type (quantized needs flash_attn)",
    ),
)


def _thread_knobs(threads: tuple[int, ...]) -> tuple[Knob, Knob]:
    """The generation and prompt-processing thread knobs, each defaulting to the most threads."""
    return (
        Knob(
            name="n_threads",
            kind="categorical",
            choices=threads,
            default=threads[-1],
            description="threads for generation (decode is bandwidth-bound)",
        ),
        Knob(
            name="n_threads_batch",
            kind="categorical",
            choices=threads,
            default=threads[-1],
            description="threads for prompt processing (compute-bound)",
        ),
    )


def deploy_space(logical_cores: int | None = None) -> SearchSpace:
    """llama.cpp deployment knobs; threads are bounded by the target machine's logical cores."""
    cores = logical_cores or 64
    threads = tuple(sorted({1, 2, 4, 8, 16, 32, 64, cores} & set(range(1, cores + 1))))
    knobs = (_QUANT_TYPE_KNOB, *_WEIGHT_KNOBS, *_thread_knobs(threads), *_BATCH_AND_CACHE_KNOBS)
    return SearchSpace(stage="deploy", knobs=knobs)
