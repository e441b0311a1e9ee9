"""Which tensors of a model are sensitive to rounding, measured, and bits spent where they matter.

**The probe** (``tensor_sensitivity``): for each tensor group of the model (every layer's
``attn_q``, ``attn_v``, ``ffn_down``, ..., and the output matrix) a file is made with that group
alone at a low type (Q4_0) and every other tensor at Q8_0, and its token distributions over a
calibration text are compared with the all-Q8_0 file's: the mean KL divergence per token is the
group's sensitivity, as ``llama-perplexity --kl-divergence`` measures a whole file. The background
is Q8_0, not F16, because llama.cpp applies per-tensor types only when it quantizes (an F16 file
type ignores ``--tensor-type``), and Q8_0 is within noise of F16 (the KLD of Q8_0 itself is
reported beside). The result is cached by the file's and the text's content.

**The allocation** (``allocate_bits``): a target number of bits per weight, spent by marginal
analysis as in transform coding. Every probed group starts at the bottom of the file type's
ladder; a group's error at ``b`` bits is modelled as its probed KLD scaled by 4^(probe bits - b)
(one more bit halves the rounding step, so the squared error, which KLD follows for small errors,
falls 4x); while a step up still fits the target, the one that removes the most error per bit
spent is taken. Steps follow ``haqa.recipes``' ladders, and a type whose blocks do not fit a
tensor's rows falls back as llama.cpp does, so the bits counted are those the file will have
(its header tells).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

from haqa.errors import HaqaError
from haqa.paths import artifacts_dir
from haqa.quant import BLOCK, FTYPE_BASE, block_bits
from haqa.recipes import PROBED, STEP_UP, Weights
from haqa.tools.estimate_memory import (
    ModelShape,
    TensorSpec,
    predict_tensor_type,
    read_shape,
    row_fit_type,
    tensor_bytes,
)
from haqa.tools.export_gguf import TensorRecipe

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

#: The type every other tensor has while one group is probed (see the module docstring).
BACKGROUND_TYPE = "Q8_0"
#: The group name of the output matrix (``output.weight``, or the token embedding where tied).
OUTPUT_GROUP = "output"
#: The most bits the allocation gives a group: past Q8_0 a step doubles the bytes for nothing.
TOP_TYPE = "Q8_0"

_LAYER_TENSOR = re.compile(r"^blk\.\d+\.(?P<group>[A-Za-z0-9_]+)\.weight$")


class SensitivityArgs(BaseModel):
    """Measure how much each tensor group's rounding changes the model's predictions."""

    gguf: Path = Field(description="the model's full-precision GGUF (F16, BF16 or F32)")
    text: Path = Field(description="calibration text: a split no evaluation uses")
    probe_type: str = Field(
        "Q4_0",
        description="the low type one group is quantized to (a 32-block type fits any model's "
        "rows, so every group is probed at the same bits)",
    )
    n_ctx: int = Field(256, ge=16, description="tokens per window")
    max_windows: int = Field(2, ge=1, description="windows of the text compared")


class GroupSensitivity(BaseModel):
    group: str = Field(description="tensor group: attn_v, ffn_down, ... or output")
    pattern: str | None = Field(
        description="llama-quantize --tensor-type pattern of the group (None: the output, set "
        "with --output-tensor-type)"
    )
    n_weights: int = Field(description="weights in the group, all layers")
    share: float = Field(description="the group's share of the model's weights")
    kld: float = Field(description="mean KL divergence per token with the group alone low")
    same_top: float = Field(description="share of positions whose top token is unchanged")

    @property
    def per_weight(self) -> float:
        """KLD per billion weights at the probe type: what a bit spent on the group buys."""
        return self.kld / max(1, self.n_weights) * 1e9


class SensitivityResult(BaseModel):
    probe_type: str
    background_type: str = BACKGROUND_TYPE
    background_kld: float = Field(description="KLD of the all-background file against F16")
    n_tokens: int = Field(description="positions compared")
    groups: list[GroupSensitivity] = Field(description="most sensitive (by KLD) first")
    cached: bool = False
    time_s: float = 0.0

    def kld_by_group(self) -> dict[str, float]:
        """Each group's KLD to three significant digits: the allocation reads only the order
        and rough ratios, and a probe repeated on another CPU (a cluster worker) rounds alike."""
        return {g.group: float(f"{g.kld:.3g}") for g in self.groups}

    def summary(self, top: int = 4) -> str:
        """One line for a brief: the most and least sensitive groups per weight."""
        ranked = sorted(self.groups, key=lambda g: -g.per_weight)
        most = ", ".join(f"{g.group} {g.kld:.4f}" for g in ranked[:top])
        least = ", ".join(f"{g.group} {g.kld:.4f}" for g in ranked[top:][-2:]) or "-"
        return (
            f"tensor sensitivity (mean KLD per token with one group alone at {self.probe_type}, "
            f"the rest {self.background_type}; per weight, most first): {most}; least: {least}"
        )


def tensor_group(name: str, tied_embeddings: bool) -> str | None:
    """The group a tensor belongs to (None: not a probed matrix)."""
    if name == "output.weight" or (tied_embeddings and name == "token_embd.weight"):
        return OUTPUT_GROUP
    m = _LAYER_TENSOR.match(name)
    return m.group("group") if m else None


def group_pattern(group: str) -> str:
    """The ``--tensor-type`` regular expression of a layer group (anchored on the dot before
    it, so ``ffn_up`` does not take ``ffn_gate_up``)."""
    return rf"\.{group}\.weight$"


def _group_tensors(shape: ModelShape) -> dict[str, list[TensorSpec]]:
    groups: dict[str, list[TensorSpec]] = {}
    for t in shape.tensors:
        if t.rows <= 1 or "_norm" in t.name:
            continue
        group = tensor_group(t.name, shape.tied_embeddings)
        if group is not None:
            groups.setdefault(group, []).append(t)
    return groups


def _group_recipe(group: str, ggml_type: str) -> TensorRecipe:
    if group == OUTPUT_GROUP:
        return TensorRecipe(output_type=ggml_type)
    return TensorRecipe(tensor_types={group_pattern(group): ggml_type})


def _cache_key(args: SensitivityArgs) -> str:
    from haqa.tools.export_gguf import _pkg_version, file_digest

    parts = (
        "sensitivity-v1",
        file_digest(args.gguf),
        file_digest(args.text),
        args.probe_type,
        str(args.n_ctx),
        str(args.max_windows),
        _pkg_version("llama-cpp-python"),
    )
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]


def tensor_sensitivity(args: SensitivityArgs) -> SensitivityResult:
    """Each tensor group's KLD when it alone is quantized to ``probe_type`` (cached by content).
    Costs one quantization and one evaluation of the windows per group (SmolLM2-135M: 8 groups,
    about 30 s on 2 cores); the probe files are deleted once scored."""
    from haqa.tools.export_gguf import (
        QuantizeArgs,
        _quantize_file,
        check_gguf,
        ggml_type_id,
        quantize_gguf,
        quantized_source_type,
    )
    from haqa.tools.gguf_loglik import divergence, gguf_window_distributions

    t0 = time.perf_counter()
    check_gguf(args.gguf)
    ggml_type_id(args.probe_type, what="probe type")
    if args.probe_type not in BLOCK:
        raise HaqaError(f"probe type {args.probe_type}: use one of {', '.join(BLOCK)}")
    if quantized_source_type(args.gguf) is not None:
        raise HaqaError(
            f"{args.gguf} is already quantized: the probe needs the full-precision GGUF"
        )
    if not args.text.is_file():
        raise HaqaError(f"calibration text {args.text} does not exist: pass a text file")
    out = artifacts_dir() / "sensitivity" / f"{_cache_key(args)}.json"
    if out.is_file():
        stored = SensitivityResult.model_validate_json(out.read_text())
        return stored.model_copy(update={"cached": True, "time_s": time.perf_counter() - t0})

    text = args.text.read_text(encoding="utf-8", errors="replace")
    shape = read_shape(args.gguf)
    groups = _group_tensors(shape)
    total = sum(t.ne0 * t.rows for t in shape.tensors)

    def windows(path: Path) -> list[NDArray[np.float32]]:
        return gguf_window_distributions(path, text, n_ctx=args.n_ctx, max_windows=args.max_windows)

    reference = windows(args.gguf)
    background_path = quantize_gguf(QuantizeArgs(gguf=args.gguf, quant_type="Q8_0")).gguf_path
    background = windows(background_path)
    background_kld, _ = divergence(reference, background)
    del reference
    rows: list[GroupSensitivity] = []
    scratch = artifacts_dir() / "sensitivity"
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scratch) as tmp:
        for group, tensors in sorted(groups.items()):
            probe = Path(tmp) / f"{group}.gguf"
            _quantize_file(args.gguf, "Q8_0", probe, _group_recipe(group, args.probe_type))
            kld, same = divergence(background, windows(probe))
            probe.unlink()
            n = sum(t.ne0 * t.rows for t in tensors)
            rows.append(
                GroupSensitivity(
                    group=group,
                    pattern=None if group == OUTPUT_GROUP else group_pattern(group),
                    n_weights=n,
                    share=n / max(1, total),
                    kld=max(0.0, kld),
                    same_top=same,
                )
            )
    rows.sort(key=lambda g: -g.kld)
    result = SensitivityResult(
        probe_type=args.probe_type,
        background_kld=max(0.0, background_kld),
        n_tokens=sum(len(w) for w in background),
        groups=rows,
        time_s=time.perf_counter() - t0,
    )
    tmp_out = out.with_suffix(f".{os.getpid()}.tmp")  # two workers may probe one file at once
    tmp_out.write_text(json.dumps(result.model_dump(mode="json")))
    tmp_out.replace(out)
    return result


# --------------------------------------------------------------------------- allocation


class Allocation(BaseModel):
    """The per-group types that reach a target bits per weight, and the bits they reach."""

    recipe: TensorRecipe
    types: dict[str, str] = Field(description="group -> the ggml type asked for it")
    bits_per_weight: float = Field(description="predicted for the whole file (header truth)")
    target_bpw: float


def _group_bits(tensors: list[TensorSpec], ggml_type: str) -> int:
    return sum(8 * tensor_bytes(t.ne0, t.rows, row_fit_type(t.ne0, ggml_type)) for t in tensors)


def _group_error(kld: float, probe_bits: float, tensors: list[TensorSpec], ggml_type: str) -> float:
    """The group's modelled KLD at this type: the probed KLD scaled by 4^(probe - bits)."""
    n = sum(t.ne0 * t.rows for t in tensors)
    bits = _group_bits(tensors, ggml_type) / max(1, n)
    return float(kld * 4.0 ** (probe_bits - bits))


def _next(ladder: Mapping[str, str], tensors: list[TensorSpec], ggml_type: str) -> str | None:
    """The next type on a ladder that changes what these tensors hold (a step whose fallback
    lands on the same type is skipped), never past ``TOP_TYPE``."""
    current = _group_bits(tensors, ggml_type)
    step = ladder.get(ggml_type)
    while step is not None and step != "F16":
        if _group_bits(tensors, step) != current:
            return step
        step = ladder.get(step)
    return None


#: The K-quant tensor types: a K-quant file's ladder starts at Q2_K.
_K_TYPES = frozenset({"Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"})


def _ladder_bottom(base: str) -> str:
    """Where a file type's ladder starts: Q2_K for the K-quants (their family goes that low);
    a 32-block or IQ type's own base (Q4_0, IQ4_NL: their ladders go up through Q5_0 to Q8_0,
    never into K-quants, so the file keeps the kernels its type was chosen for)."""
    return "Q2_K" if base in _K_TYPES else base


def allocate_bits(
    shape: ModelShape,
    quant_type: str,
    target_bpw: float,
    kld_by_group: Mapping[str, float],
    probe_type: str = "Q4_0",
) -> Allocation:
    """Per-group types for ``quant_type``'s file that bring it to ``target_bpw`` bits per weight
    (whole file, as llama.cpp reports it), the error spent where the probe measured it matters
    least. The file type chooses the ladder (K-quants from Q2_K up, or a 32-block type from
    itself up) and the types of the tensors the probe did not measure (its own mix); the target
    decides the bits. The result is the closest the ladder allows at or below the target (its
    bottom, when the target is below that)."""
    base = FTYPE_BASE.get(quant_type)
    if base is None or BLOCK[base][0] == 1:
        raise HaqaError(
            f"{quant_type}: the probed recipe needs a quantized file type (Q4_K_M, Q3_K_M, ...)"
        )
    groups = {g: ts for g, ts in _group_tensors(shape).items() if g in kld_by_group}
    if not groups:
        raise HaqaError("the sensitivity probe measured none of this model's tensor groups")
    probe_bits = block_bits(probe_type)
    # Every group starts at the bottom of the file type's ladder and only climbs: the greedy
    # choice of the step with the most error removed per bit is then optimal for this convex
    # error model. (Starting from the type's own mix and stepping down first left the result
    # depending on the path: on SmolLM2 a quarter bit more once gave ffn_down fewer bits.)
    bottom = _ladder_bottom(base)
    types = dict.fromkeys(groups, bottom)
    in_groups = {t.name for ts in groups.values() for t in ts}
    fixed = sum(
        8 * tensor_bytes(t.ne0, t.rows, predict_tensor_type(t, quant_type, shape))
        for t in shape.tensors
        if t.name not in in_groups
    )
    n_weights = sum(t.ne0 * t.rows for t in shape.tensors)
    budget = target_bpw * n_weights

    def total() -> int:
        return fixed + sum(_group_bits(groups[g], types[g]) for g in groups)

    def error(g: str, ggml_type: str) -> float:
        return _group_error(kld_by_group[g], probe_bits, groups[g], ggml_type)

    # The most error removed per bit spent, while a step still fits.
    while True:
        room = budget - total()
        ups = [
            (g, s)
            for g in groups
            if types[g] != TOP_TYPE
            and (s := _next(STEP_UP, groups[g], types[g]))
            and _group_bits(groups[g], s) - _group_bits(groups[g], types[g]) <= room
        ]
        if not ups:
            break
        g, step = max(
            ups,
            key=lambda u: (
                (error(u[0], types[u[0]]) - error(u[0], u[1]))
                / max(1, _group_bits(groups[u[0]], u[1]) - _group_bits(groups[u[0]], types[u[0]]))
            ),
        )
        types[g] = step
    tensor_types = {group_pattern(g): t for g, t in sorted(types.items()) if g != OUTPUT_GROUP}
    recipe = TensorRecipe(
        tensor_types=tensor_types,
        output_type=types.get(OUTPUT_GROUP),
    )
    return Allocation(
        recipe=recipe,
        types=dict(sorted(types.items())),
        bits_per_weight=total() / max(1, n_weights),
        target_bpw=target_bpw,
    )


def weights_tensor_recipe(
    model: Path, weights: Weights, probe: Callable[[], SensitivityResult]
) -> TensorRecipe:
    """The per-tensor types of ``weights`` on ``model`` (a GGUF, or an HF folder for the
    probed recipe's estimate): a named rule of ``haqa.recipes``, or for the probed recipe the
    allocation of its target by the sensitivity ``probe`` returns (called only then)."""
    from haqa.tools.export_gguf import weights_recipe

    if weights.recipe != PROBED or weights.target_bpw is None:
        return weights_recipe(model, weights.recipe, weights.quant_type)
    result = probe()
    return allocate_bits(
        read_shape(model),
        weights.quant_type,
        weights.target_bpw,
        result.kld_by_group(),
        result.probe_type,
    ).recipe
