"""Mixed quantization recipes: a small family of per-tensor rules on top of a llama.cpp file type
that the tuner can reason about, and the weights a deploy trial runs (file type, recipe, imatrix).

A file type such as Q4_K_M is already a recipe (llama.cpp bumps some ``attn_v`` and ``ffn_down``
layers and keeps the output at Q6_K or Q8_0); the family below moves named tensor groups one
step up or down the ladder of tensor types from the file type's base type, as hand-made GGUFs
are made with ``llama-quantize --tensor-type``:

- ``uniform``: the file type as llama.cpp mixes it;
- ``sensitive_up``: ``attn_v`` and ``ffn_down`` one step up (the tensors llama.cpp's own mixes
  protect first; with an imatrix the rest can go lower);
- ``ends_up``: every tensor of the first and the last layer one step up (errors there are not
  averaged out by the layers around them);
- ``output_up``: the output matrix (the token embedding where the model ties them) at Q8_0;
- ``ffn_up_gate_down``: ``ffn_up`` and ``ffn_gate`` one step down (most of the weights, among the
  least sensitive), for a smaller file;
- ``probed``: a target number of bits per weight (``target_bpw``), spent on the tensor groups
  this model's sensitivity probe measured to matter most (``haqa.tools.tensor_sensitivity``:
  the analyst's probe, KLD with one group alone quantized low). Unlike the fixed rules above it
  is resolved where the probe's result is at hand, so ``recipe_rules`` has no rules for it.

A manual type replaces llama.cpp's choice for that tensor, so ``sensitive_up`` on a ``_M`` type
sets every ``attn_v``/``ffn_down`` to one step above the base where llama.cpp bumps half of them
two steps. A type whose blocks do not fit a tensor's rows falls back as llama.cpp decides (a
256-block K-quant on a 576-wide row becomes a 32-block type); the file's header has the truth.
Rules are resolved against the model's layer count (``ends_up``), so a recipe is a name here
and concrete patterns only where a file is made.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, Literal, get_args

from pydantic import BaseModel, ConfigDict, model_validator

from haqa.errors import HaqaError
from haqa.quant import BLOCK, FTYPE_BASE

RecipeName = Literal[
    "uniform", "sensitive_up", "ends_up", "output_up", "ffn_up_gate_down", "probed"
]
RECIPE_NAMES: Final[tuple[str, ...]] = get_args(RecipeName)

RECIPE_DESCRIPTIONS: Final[dict[str, str]] = {
    "uniform": "the file type as llama.cpp mixes it",
    "sensitive_up": "attn_v and ffn_down one step up",
    "ends_up": "first and last layer one step up",
    "output_up": "output (or tied embedding) at Q8_0",
    "ffn_up_gate_down": "ffn_up and ffn_gate one step down (smaller)",
    "probed": "target_bpw bits per weight, spent on the groups the sensitivity probe ranks first",
}

#: The recipe that takes a target bits per weight, and the range that target may take (the
#: lowest K-quant's bits to Q8_0's).
PROBED: Final = "probed"
TARGET_BPW_RANGE: Final[tuple[float, float]] = (2.5, 8.5)

#: One step more bits for a tensor type, within its block family where one exists (so a step up
#: never changes which rows fit): K-quants up to Q6_K then Q8_0, 32-blocks through Q5 to Q8_0.
STEP_UP: Final[dict[str, str]] = {
    "Q2_K": "Q3_K",
    "Q3_K": "Q4_K",
    "Q4_K": "Q5_K",
    "Q5_K": "Q6_K",
    "Q6_K": "Q8_0",
    "IQ4_XS": "Q5_K",
    "Q4_0": "Q5_0",
    "Q4_1": "Q5_1",
    "IQ4_NL": "Q5_0",
    "Q5_0": "Q8_0",
    "Q5_1": "Q8_0",
    "Q8_0": "F16",
}
#: One step fewer bits: the inverse ladder (IQ4_NL's step down is Q4_0's, Q3_K's is Q2_K).
STEP_DOWN: Final[dict[str, str]] = {
    "Q3_K": "Q2_K",
    "Q4_K": "Q3_K",
    "Q5_K": "Q4_K",
    "Q6_K": "Q5_K",
    "Q8_0": "Q6_K",
    "Q5_0": "Q4_0",
    "Q5_1": "Q4_1",
    "IQ4_NL": "Q3_K",
    "Q4_0": "Q3_K",
    "F16": "Q8_0",
}


class Weights(BaseModel):
    """What a deploy trial's GGUF is made of: a file type, a recipe on top and whether an
    importance matrix weighs the rounding. Written ``Q3_K_M+sensitive_up+imatrix``, or with the
    probed recipe's target ``Q4_K_M+probed@4.75+imatrix``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    quant_type: str
    recipe: RecipeName = "uniform"
    imatrix: bool = False
    #: Bits per weight the ``probed`` recipe aims at (None for every other recipe).
    target_bpw: float | None = None

    @model_validator(mode="after")
    def _target_with_probed(self) -> Weights:
        low, high = TARGET_BPW_RANGE
        if self.recipe == PROBED and self.target_bpw is None:
            raise HaqaError(
                f"the probed recipe needs target_bpw: bits per weight in [{low}, {high}]"
            )
        if self.recipe != PROBED and self.target_bpw is not None:
            raise HaqaError(f"target_bpw goes only with the probed recipe, not {self.recipe}")
        base = FTYPE_BASE.get(self.quant_type)
        if self.recipe == PROBED and (base is None or BLOCK[base][0] == 1):
            raise HaqaError(
                f"the probed recipe needs a quantized file type (Q4_K_M, Q3_K_M, ...), "
                f"not {self.quant_type}"
            )
        if self.target_bpw is not None and not low <= self.target_bpw <= high:
            raise HaqaError(f"target_bpw {self.target_bpw:g}: use a number in [{low}, {high}]")
        return self

    @property
    def plain(self) -> bool:
        return self.recipe == "uniform" and not self.imatrix

    @property
    def label(self) -> str:
        parts = [self.quant_type]
        if self.recipe == PROBED:
            parts.append(f"{PROBED}@{self.target_bpw:g}")
        elif self.recipe != "uniform":
            parts.append(self.recipe)
        if self.imatrix:
            parts.append("imatrix")
        return "+".join(parts)

    @classmethod
    def of_config(cls, config: Mapping[str, Any]) -> Weights:
        """The weights a stored deploy configuration (a dict) names."""
        recipe = config.get("recipe", "uniform")
        target = config.get("target_bpw") if recipe == PROBED else None
        return cls(
            quant_type=str(config.get("quant_type", "?")),
            recipe=recipe,
            imatrix=bool(config.get("imatrix", False)),
            target_bpw=None if target is None else float(target),
        )

    @classmethod
    def parse(cls, text: str) -> Weights:
        """``Q4_K_M``, ``Q3_K_M+imatrix``, ``Q4_K_M+sensitive_up+imatrix``,
        ``Q4_K_M+probed@4.75``: one line on error."""
        quant, *rest = [p.strip() for p in text.split("+")]
        imatrix = "imatrix" in rest
        recipes = [p for p in rest if p != "imatrix"]
        target: float | None = None
        if len(recipes) == 1 and recipes[0].startswith(f"{PROBED}@"):
            try:
                target = float(recipes[0].split("@", 1)[1])
            except ValueError:
                target = None
            recipes = [PROBED] if target is not None else recipes
        if (
            len(recipes) > 1
            or any(r not in RECIPE_NAMES for r in recipes)
            or ((recipes == [PROBED]) != (target is not None))
        ):
            raise HaqaError(
                f"weights {text!r}: write TYPE[+RECIPE][+imatrix], RECIPE one of "
                f"{', '.join(r for r in RECIPE_NAMES if r != PROBED)} or probed@BITS"
            )
        return cls(
            quant_type=quant.upper(),
            recipe=recipes[0] if recipes else "uniform",  # type: ignore[arg-type]
            imatrix=imatrix,
            target_bpw=target,
        )


def recipe_rules(recipe: str, quant_type: str, n_layer: int | None) -> dict[str, Any]:
    """The recipe as ``TensorRecipe`` fields (tensor_types, output_type) for this file type and
    layer count; empty when the recipe changes nothing at this type (F16 has no step up)."""
    if recipe not in RECIPE_NAMES:
        raise HaqaError(f"unknown recipe {recipe!r}: use one of {', '.join(RECIPE_NAMES)}")
    if recipe == PROBED:
        raise HaqaError(
            "the probed recipe is made from the model's sensitivity probe and a target_bpw "
            "(haqa.tools.tensor_sensitivity.allocate_bits), not from fixed rules"
        )
    base = FTYPE_BASE.get(quant_type)
    if base is None:
        raise HaqaError(f"{quant_type} is not a llama.cpp file type haqa knows")
    up, down = STEP_UP.get(base), STEP_DOWN.get(base)
    if recipe == "sensitive_up" and up:
        return {"tensor_types": {r"attn_v\.weight": up, r"ffn_down\.weight": up}}
    if recipe == "ends_up" and up:
        if not n_layer or n_layer < 2:
            raise HaqaError("the ends_up recipe needs the model's layer count (block_count)")
        return {"tensor_types": {rf"^blk\.(0|{n_layer - 1})\.": up}}
    if recipe == "output_up" and base not in ("Q8_0", "F16", "F32", "BF16"):
        return {"output_type": "Q8_0"}
    if recipe == "ffn_up_gate_down" and down:
        return {"tensor_types": {r"ffn_(up|gate)\.weight": down}}
    return {}
