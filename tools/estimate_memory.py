"""Predict peak memory before anything runs: the supervisor's memory gate.

Two estimates, both fast (no model is loaded: GGUF metadata through ``gguf_header``, Hugging Face
shapes through ``config.json``):

* a llama.cpp deployment (``estimate_deploy_memory``): weights + KV cache + compute buffers +
  the runtime's fixed overhead, predicting the peak resident set (RSS) of a process that loads the
  GGUF, processes a prompt batch and decodes;
* a QLoRA fine-tune (``estimate_finetune_memory``): quantized base + LoRA parameters, gradients and
  AdamW state + activations + framework overhead.

The constants are calibrated against measured peak RSS (``measure_deploy_peak_rss`` runs a real
llama.cpp context in a child process); ``tests/test_estimate_memory.py`` holds the estimate to 15%.
"""

from __future__ import annotations

import functools
import json
import math
import re
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from haqa.errors import HaqaError
from haqa.modelref import check_hf_causal_lm, is_gguf
from haqa.procs import CHILD_PRELUDE, child_env
from haqa.quant import BLOCK, FALLBACK, FTYPE_BASE, FTYPE_IDS
from haqa.recipes import recipe_rules
from haqa.schemas import DeployConfig, FinetuneConfig
from haqa.tools.gguf_header import GgufArray, read_gguf_header

_MIB = 1024**2


# The resident memory of a Python process with llama-cpp-python loaded, before weights, KV cache
# and compute buffers (interpreter, shared libraries, thread pools). It is the machine's, not the
# model's: measured once per machine (``runtime_overhead_bytes``), since it moved by 6-9 MiB
# between machines of this project (40 MiB on one, about 47 on another), 15% of a small model's
# peak. This constant is the fallback where it cannot be measured.
RUNTIME_OVERHEAD_BYTES = 47 * _MIB

_BASELINE_CHILD = r"""
from haqa.tools.llama_session import llama
llama()
with open("/proc/self/status") as f:
    print([int(x.split()[1]) * 1024 for x in f if x.startswith("VmHWM")][0])
"""


def runtime_overhead_bytes() -> int:
    """This machine's llama.cpp process baseline (peak RSS of a child that has loaded and
    initialised llama.cpp through haqa's own set-up), measured once and cached under
    ``$HAQA_HOME/machine/`` per Python, llama-cpp-python, CPU count and architecture."""
    import os
    import platform
    from importlib.metadata import version

    from haqa.paths import haqa_home

    key = "-".join(
        [platform.python_version(), version("llama-cpp-python"), str(os.cpu_count()),
         platform.machine()]
    )  # fmt: skip
    return _measured_overhead(haqa_home() / "machine" / f"llama-process-{key}.json")


@functools.cache
def _measured_overhead(cache: Path) -> int:
    """The baseline from its cache file, or measured into it (read once per process)."""
    try:
        return int(json.loads(cache.read_text())["bytes"])
    except (OSError, ValueError, KeyError):
        pass
    try:
        out = subprocess.run(
            [sys.executable, "-c", CHILD_PRELUDE + _BASELINE_CHILD],
            capture_output=True, text=True, timeout=120, env=child_env(), check=True,
        )  # fmt: skip
        measured = int(out.stdout.strip().splitlines()[-1])
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        return RUNTIME_OVERHEAD_BYTES
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    tmp.write_text(json.dumps({"bytes": measured}))
    tmp.replace(cache)
    return measured


# A BPE tokenizer's merges live in llama.cpp's vocabulary as an ordered map of string pairs, with
# the merged token's text: SmolLM2's 48,900 merges measured 13-14 MiB above the SentencePiece
# models the overhead was calibrated on (which have none).
_BYTES_PER_MERGE = 280
# The gate must not admit a configuration that then exceeds the budget: every estimate is scaled
# by the spread of its calibration across models, so it errs high (1.00-1.10 of the measured
# peak on SmolLM2-135M, whose shape it was not fitted on; up to 1.11 on the tiny model).
SAFETY_FACTOR = 1.05
# Without flash attention the score matrix (n_kv x n_ubatch x n_head fp32) and what lives beside
# it (mask, softmax temporaries): measured 1.4x the bare matrix at full context on the tiny and
# 200M models, 1.5x on SmolLM2-135M at 8192 cells (9 heads): the larger, the gate's side.
_ATTN_SCORE_FACTOR = 1.5
# Activation rows per token live at the peak of a layer's graph, in units of n_embd floats, and
# of n_ff floats (the FFN's gate/up outputs), fitted to llama.cpp's compute-buffer use.
_ACT_EMBD_ROWS = 10.0
_ACT_FF_ROWS = 2.0


class TensorSpec(BaseModel):
    name: str = Field(description="GGUF tensor name, e.g. blk.0.attn_v.weight")
    ne0: int = Field(description="row length (elements)")
    rows: int = Field(description="number of rows (product of the other dimensions)")
    ggml_type: str | None = Field(None, description="type in the file, when read from a GGUF")
    n_bytes: int | None = None


class ModelShape(BaseModel):
    model_config = ConfigDict(frozen=True)  # read_shape shares one instance per file state

    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ff: int
    n_vocab: int
    tied_embeddings: bool
    file_type: str | None = Field(None, description="GGUF file type (None for an HF folder)")
    tensors: list[TensorSpec]
    n_merges: int = Field(0, description="BPE merges of the tokenizer (0 for SentencePiece)")


class MemoryEstimate(BaseModel):
    weights_bytes: int
    kv_cache_bytes: int
    compute_bytes: int
    overhead_bytes: int
    margin_bytes: int = Field(0, description="the safety margin added to the sum of the terms")
    total_bytes: int
    notes: list[str] = Field(default_factory=list, description="how each term was computed")

    def summary(self) -> str:
        margin = f" + margin {self.margin_bytes / _MIB:.0f}" if self.margin_bytes else ""
        return (
            f"{self.total_bytes / _MIB:.0f} MiB = weights {self.weights_bytes / _MIB:.0f} + "
            f"KV {self.kv_cache_bytes / _MIB:.0f} + compute {self.compute_bytes / _MIB:.0f} + "
            f"overhead {self.overhead_bytes / _MIB:.0f}{margin} MiB"
        )


class DeployMemoryArgs(BaseModel):
    model: Path = Field(description="a GGUF file (any type) or a Hugging Face model folder")
    config: DeployConfig
    tensor_recipe: dict[str, Any] | None = Field(
        None,
        description="the per-tensor types the file will have (TensorRecipe fields), replacing "
        "the config's named recipe: the probed recipe is known only this way",
    )


class FinetuneMemoryArgs(BaseModel):
    model: Path = Field(description="a Hugging Face model folder")
    config: FinetuneConfig
    example_tokens: int | None = Field(
        None,
        ge=1,
        description="tokens of the longest training example (batches are padded to their "
        "longest, so shorter data never reach max_seq_len); None: max_seq_len",
    )


# --------------------------------------------------------------------------------- shapes


def _hf_shape(folder: Path) -> ModelShape:
    check_hf_causal_lm(folder)
    cfg = json.loads((folder / "config.json").read_text())
    if "text_config" in cfg:
        cfg = {**cfg, **cfg["text_config"]}
    try:
        n_embd = int(cfg["hidden_size"])
        n_head = int(cfg["num_attention_heads"])
        n_layer = int(cfg["num_hidden_layers"])
        n_ff = int(cfg["intermediate_size"])
        n_vocab = int(cfg["vocab_size"])
    except KeyError as exc:
        raise HaqaError(f"{folder}/config.json lacks {exc}: pass a LLaMA-style model") from None
    n_head_kv = int(cfg.get("num_key_value_heads") or n_head)
    head_dim = int(cfg.get("head_dim") or n_embd // n_head)
    tied = bool(cfg.get("tie_word_embeddings", False))
    tensors = [
        TensorSpec(name="token_embd.weight", ne0=n_embd, rows=n_vocab),
        TensorSpec(name="output_norm.weight", ne0=n_embd, rows=1),
    ]
    if not tied:
        tensors.append(TensorSpec(name="output.weight", ne0=n_embd, rows=n_vocab))
    for i in range(n_layer):
        p = f"blk.{i}."
        tensors += [
            TensorSpec(name=p + "attn_norm.weight", ne0=n_embd, rows=1),
            TensorSpec(name=p + "ffn_norm.weight", ne0=n_embd, rows=1),
            TensorSpec(name=p + "attn_q.weight", ne0=n_embd, rows=n_head * head_dim),
            TensorSpec(name=p + "attn_k.weight", ne0=n_embd, rows=n_head_kv * head_dim),
            TensorSpec(name=p + "attn_v.weight", ne0=n_embd, rows=n_head_kv * head_dim),
            TensorSpec(name=p + "attn_output.weight", ne0=n_head * head_dim, rows=n_embd),
            TensorSpec(name=p + "ffn_gate.weight", ne0=n_embd, rows=n_ff),
            TensorSpec(name=p + "ffn_up.weight", ne0=n_embd, rows=n_ff),
            TensorSpec(name=p + "ffn_down.weight", ne0=n_ff, rows=n_embd),
        ]
    return ModelShape(
        n_layer=n_layer,
        n_embd=n_embd,
        n_head=n_head,
        n_head_kv=n_head_kv,
        head_dim=head_dim,
        n_ff=n_ff,
        n_vocab=n_vocab,
        tied_embeddings=tied,
        tensors=tensors,
        n_merges=_hf_merges(folder),
    )


def _hf_merges(folder: Path) -> int:
    """BPE merges llama.cpp will keep for the folder's tokenizer: a byte-level BPE's (GPT-2
    style, which the converter writes as ``tokenizer.ggml.merges``); a SentencePiece model
    (byte fallback) becomes llama.cpp's SPM vocabulary, which keeps none, so the HF folder and
    its GGUF are estimated alike."""
    path = folder / "tokenizer.json"
    if not path.is_file():
        return 0
    try:
        model = json.loads(path.read_text(encoding="utf-8")).get("model", {})
    except (OSError, ValueError, AttributeError):
        return 0
    merges = model.get("merges") if isinstance(model, dict) else None
    if model.get("type") != "BPE" or model.get("byte_fallback") or not isinstance(merges, list):
        return 0
    return len(merges)


def _gguf_shape(path: Path) -> ModelShape:
    header = read_gguf_header(path)
    arch = header.str_field("general.architecture") or "llama"

    def num(key: str, default: int | None = None) -> int:
        value = header.int_field(f"{arch}.{key}")
        if value is None:
            if default is None:
                raise HaqaError(
                    f"{path} lacks {arch}.{key}: re-export the GGUF with a current tool"
                )
            return default
        return value

    n_embd = num("embedding_length")
    n_head = num("attention.head_count")
    tensors = []
    for t in header.tensors:
        tensors.append(
            TensorSpec(
                name=t.name,
                ne0=t.shape[0],
                rows=math.prod(t.shape[1:]) if len(t.shape) > 1 else 1,
                ggml_type=t.ggml_type,
                n_bytes=t.n_bytes,
            )
        )
    names = {t.name for t in tensors}
    embd = next((t for t in tensors if t.name == "token_embd.weight"), None)
    merges = header.fields.get("tokenizer.ggml.merges")
    ftype_id = header.int_field("general.file_type")
    return ModelShape(
        n_layer=num("block_count"),
        n_embd=n_embd,
        n_head=n_head,
        n_head_kv=num("attention.head_count_kv", n_head),
        head_dim=num("attention.key_length", n_embd // n_head),
        n_ff=num("feed_forward_length"),
        n_vocab=num("vocab_size", embd.rows if embd else 0),
        tied_embeddings="output.weight" not in names,
        file_type=FTYPE_IDS.get(ftype_id) if ftype_id is not None else None,
        tensors=tensors,
        n_merges=merges.length if isinstance(merges, GgufArray) else 0,
    )


def read_shape(model: Path) -> ModelShape:
    """The model's shape and tensors, from GGUF metadata or an HF config.json (no weights read).

    Kept per file state (path, and size and modification time of the file or of the folder's
    files): the memory gate and the expert estimate dozens of configurations of one model per
    decision, and parsing its headers is ~45 ms (SmolLM2's HF folder) against ~1 ms for the rest
    of an estimate."""
    if model.is_file() and is_gguf(model):
        st = model.stat()
        return _cached_shape(str(model.resolve()), ((model.name, st.st_mtime_ns, st.st_size),))
    if model.is_dir():
        stamp = tuple(
            sorted((f.name, f.stat().st_mtime_ns, f.stat().st_size) for f in model.iterdir())
        )
        return _cached_shape(str(model.resolve()), stamp)
    raise HaqaError(f"{model} is neither a GGUF file nor a model folder: pass one of them")


@functools.lru_cache(maxsize=16)
def _cached_shape(path: str, stamp: tuple[tuple[str, int, int], ...]) -> ModelShape:
    """``read_shape`` of one state of the files (``stamp`` is only the cache key)."""
    model = Path(path)
    return _hf_shape(model) if model.is_dir() else _gguf_shape(model)


# --------------------------------------------------------------------------- weight types


def _use_more_bits(i_layer: int, n_layers: int) -> bool:
    return (
        i_layer < n_layers // 8
        or i_layer >= 7 * n_layers // 8
        or (i_layer - n_layers // 8) % 3 == 2
    )


#: A recipe as ``predict_tensor_type`` takes it: a name of ``haqa.recipes`` or its concrete rules
#: (``TensorRecipe`` fields: ``tensor_types``, ``output_type``), as the probed recipe is given.
RecipeSpec = str | Mapping[str, Any]


def _rules(recipe: RecipeSpec, quant_type: str, shape: ModelShape) -> Mapping[str, Any]:
    if not isinstance(recipe, str):
        return recipe
    return recipe_rules(recipe, quant_type, shape.n_layer) if recipe != "uniform" else {}


def _is_plain(recipe: RecipeSpec) -> bool:
    return recipe == "uniform" or (not isinstance(recipe, str) and not any(recipe.values()))


def predict_tensor_type(
    spec: TensorSpec, quant_type: str, shape: ModelShape, recipe: RecipeSpec = "uniform"
) -> str:
    """The ggml type llama.cpp's quantizer gives this tensor for ``quant_type`` (an approximation
    of ``llama_tensor_get_type`` in llama-quant.cpp, for LLaMA-style dense models): 1-D tensors
    stay F32; the output matrix (or the tied embedding) gets Q6_K unless the type is Q8_0; the K_M
    mixes give attn_v and ffn_down more bits in the first/last eighth and every third layer; rows
    whose length is not a multiple of the block size fall back to a 32-block type or F16.

    A mixed ``recipe`` (``haqa.recipes``) goes first, as llama.cpp applies ``--tensor-type``: the
    first pattern that matches the name replaces the mix's choice (the fallback still applies),
    and an output type replaces the output's (the tied embedding's)."""
    base = FTYPE_BASE[quant_type]
    if spec.rows == 1 or not spec.name.endswith("weight") or "_norm" in spec.name:
        return "F32"
    if BLOCK[base][0] == 1:
        return base  # llama.cpp applies no per-tensor types to an unquantized file type
    name = spec.name
    is_output = name == "output.weight" or (shape.tied_embeddings and name == "token_embd.weight")
    rules = _rules(recipe, quant_type, shape)
    manual = next(
        (t for pattern, t in rules.get("tensor_types", {}).items() if re.search(pattern, name)),
        None,
    )
    if is_output and rules.get("output_type"):
        manual = str(rules["output_type"])
    new = manual or _mix_type(name, quant_type, shape, base, is_output=is_output, ne0=spec.ne0)
    return row_fit_type(spec.ne0, new)


def row_fit_type(ne0: int, ggml_type: str) -> str:
    """The type llama.cpp writes for ``ggml_type`` on rows of ``ne0`` elements: itself when its
    blocks fit, else its 32-block fallback, else F16."""
    if ne0 % BLOCK[ggml_type][0] == 0:
        return ggml_type
    fallback = FALLBACK.get(ggml_type, ggml_type)
    return fallback if ne0 % BLOCK[fallback][0] == 0 else "F16"


def _mix_type(
    name: str, quant_type: str, shape: ModelShape, base: str, *, is_output: bool, ne0: int
) -> str:
    """What the file type's own mix gives this tensor, before the fallback for its row length."""
    layer = int(name.split(".")[1]) if name.startswith("blk.") else -1
    n = shape.n_layer
    gqa = shape.n_head // max(1, shape.n_head_kv)
    new = base
    if is_output:
        if ne0 % BLOCK[base][0] != 0:
            new = "Q8_0"
        elif base != "Q8_0":
            new = "Q6_K"
    elif name.endswith("attn_v.weight"):
        if quant_type == "Q2_K":
            new = "Q4_K" if gqa >= 4 else "Q3_K"
        elif quant_type == "Q3_K_M":
            new = "Q5_K" if layer < 2 else "Q4_K"
        elif quant_type == "Q3_K_L" or (quant_type in ("IQ4_NL", "IQ4_XS") and gqa >= 4):
            new = "Q5_K"
        elif quant_type in ("Q4_K_M", "Q5_K_M") and _use_more_bits(layer, n):
            new = "Q6_K"
        elif quant_type == "Q4_K_S" and layer < 4:
            new = "Q5_K"
    elif name.endswith("ffn_down.weight"):
        if quant_type == "Q2_K":
            new = "Q3_K"
        elif quant_type == "Q3_K_M":
            new = "Q5_K" if layer < n // 16 else "Q4_K"
        elif quant_type == "Q3_K_L":
            new = "Q5_K"
        elif quant_type in ("Q4_K_M", "Q5_K_M") and _use_more_bits(layer, n):
            new = "Q6_K"
        elif quant_type in ("IQ4_NL", "IQ4_XS", "Q4_K_S") and layer < n // 8:
            new = "Q5_K"
    elif name.endswith("attn_output.weight"):
        new = {"Q2_K": "Q3_K", "Q3_K_M": "Q4_K", "Q3_K_L": "Q5_K"}.get(quant_type, base)
    return new


def tensor_bytes(ne0: int, rows: int, ggml_type: str) -> int:
    block, size = BLOCK[ggml_type]
    return rows * (ne0 // block) * size if ne0 % block == 0 else rows * ne0 * 2


def weights_bytes(
    shape: ModelShape, quant_type: str, recipe: RecipeSpec = "uniform"
) -> tuple[int, str]:
    """Bytes of the weights as llama.cpp holds them: read from the file when it already has
    ``quant_type`` (as llama.cpp mixes it), else predicted tensor by tensor, ``recipe`` included."""
    plain = _is_plain(recipe)
    if (
        plain
        and shape.file_type == quant_type
        and all(t.n_bytes is not None for t in shape.tensors)
    ):
        return sum(t.n_bytes or 0 for t in shape.tensors), f"read from the GGUF ({quant_type})"
    total = 0
    counts: dict[str, int] = {}
    for t in shape.tensors:
        ggml_type = predict_tensor_type(t, quant_type, shape, recipe)
        counts[ggml_type] = counts.get(ggml_type, 0) + 1
        total += tensor_bytes(t.ne0, t.rows, ggml_type)
    mix = ", ".join(f"{k}x{v}" for k, v in sorted(counts.items()))
    what = quant_type if plain else f"{quant_type}+{recipe if isinstance(recipe, str) else 'rules'}"
    return total, f"predicted for {what} from the tensor shapes ({mix} tensors)"


class PredictedBits(BaseModel):
    """A file type's effective bits per weight on one model, predicted from its tensor shapes
    (the same per-tensor rule as ``weights_bytes``), before any file of that type exists."""

    quant_type: str
    bits_per_weight: float = Field(description="8 x predicted tensor bytes / parameters")
    fallback_share: float = Field(
        description="share of the matrix weights whose rows do not fit the base type's blocks"
    )


def predict_bits(
    shape: ModelShape, quant_type: str, recipe: RecipeSpec = "uniform"
) -> PredictedBits:
    """What ``quant_type`` becomes on this model. A hidden size that is not a multiple of 256
    (SmolLM2's 576) sends a K-quant's matrices to a 32-block type, so its file is far bigger
    than the type's name says: the brief ranks types by these bits, not the nominal ones."""
    base = FTYPE_BASE[quant_type]
    n_bytes = params = matrix = fell = 0
    for t in shape.tensors:
        ggml_type = predict_tensor_type(t, quant_type, shape, recipe)
        n = t.ne0 * t.rows
        params += n
        n_bytes += tensor_bytes(t.ne0, t.rows, ggml_type)
        if ggml_type != "F32" and t.rows > 1:
            matrix += n
            if BLOCK[base][0] > 1 and t.ne0 % BLOCK[base][0] != 0:
                fell += n
    return PredictedBits(
        quant_type=quant_type,
        bits_per_weight=8.0 * n_bytes / max(1, params),
        fallback_share=fell / max(1, matrix),
    )


# ------------------------------------------------------------------------------ deploy


def _kv_bytes_per_element(kv_type: str) -> float:
    block, size = BLOCK[kv_type.upper()]
    return size / block


def kv_cache_size(shape: ModelShape, config: DeployConfig) -> int:
    # llama.cpp pads the cache to a multiple of 256 cells; n_ctx is shared by all sequences.
    cells = math.ceil(config.n_ctx / 256) * 256
    row = shape.n_head_kv * shape.head_dim
    per_cell = row * (_kv_bytes_per_element(config.type_k) + _kv_bytes_per_element(config.type_v))
    return int(shape.n_layer * cells * per_cell)


def compute_size(shape: ModelShape, config: DeployConfig) -> tuple[int, str]:
    """Compute-buffer bytes actually touched while a full physical batch is processed.

    llama.cpp reserves the buffer for the worst graph (all n_ubatch logits), but a prompt batch
    keeps only the last token's logits, so the resident part is the larger of the per-layer
    activations (n_ubatch x (a*n_embd + b*n_ff) floats) and, without flash attention, the
    attention scores (n_ctx x n_ubatch x n_head floats) plus the activations alive beside them.
    Flash attention drops the score matrix but not the KQ mask: an n_ctx x n_ubatch fp32 input
    that the host writes for every ubatch (without it, the estimate fell 6% short at 4096 cells)."""
    n_ub = min(config.n_ubatch, config.n_batch, config.n_ctx)
    cells = math.ceil(config.n_ctx / 256) * 256
    act = n_ub * (_ACT_EMBD_ROWS * shape.n_embd + _ACT_FF_ROWS * shape.n_ff) * 4
    if config.flash_attn:
        attn = cells * n_ub * 4.0
        how = f"flash attention: no score matrix, the {cells} x {n_ub} fp32 KQ mask"
    else:
        attn = _ATTN_SCORE_FACTOR * cells * n_ub * shape.n_head * 4.0
        how = f"attention scores {cells} x {n_ub} x {shape.n_head} heads fp32 (no flash-attn)"
    logits = shape.n_vocab * 4.0 * 2  # the last token's logits and the host output buffer
    total = act + attn + logits
    return int(total), f"activations of a {n_ub}-token ubatch + {how} + one row of logits"


def estimate_deploy_memory(args: DeployMemoryArgs) -> MemoryEstimate:
    """Predicted peak resident memory (bytes) of serving ``args.model`` with llama.cpp under
    ``args.config`` on the CPU: weights (read from the GGUF when it already has the config's
    quant_type, else predicted per tensor from llama.cpp's type mix), KV cache (n_ctx x layers x
    KV heads x head dim x bytes of type_k/type_v), compute buffers (from n_ubatch, and n_ctx when
    flash attention is off) and the runtime's calibrated fixed overhead. Fast: reads metadata
    only. With mmap the weights count as resident once read (they are all read every token)."""
    shape = read_shape(args.model)
    config = args.config
    if args.tensor_recipe is None and config.recipe == "probed":
        raise HaqaError(
            "the probed recipe's memory needs its tensor types: pass tensor_recipe "
            "(haqa.tools.tensor_sensitivity.allocate_bits)"
        )
    recipe: RecipeSpec = config.recipe if args.tensor_recipe is None else args.tensor_recipe
    w_bytes, w_note = weights_bytes(shape, config.quant_type, recipe)
    kv = kv_cache_size(shape, config)
    compute, c_note = compute_size(shape, config)
    vocab = shape.n_merges * _BYTES_PER_MERGE
    overhead = runtime_overhead_bytes() + vocab
    notes = [
        f"weights: {w_note}"
        + ("; mmap: file pages, resident once read" if config.use_mmap else "; read into RAM"),
        f"KV cache: {shape.n_layer} layers x {math.ceil(config.n_ctx / 256) * 256} cells x "
        f"{shape.n_head_kv} KV heads x {shape.head_dim} x ({config.type_k} + {config.type_v})",
        f"compute: {c_note}",
        f"overhead: Python + llama.cpp process, measured on this machine "
        f"{(overhead - vocab) / _MIB:.0f} MiB, + {vocab / _MIB:.1f} MiB for {shape.n_merges} "
        "BPE merges",
        f"x {SAFETY_FACTOR:g}: the calibration's spread, so the gate errs on the safe side",
    ]
    if config.n_gpu_layers > 0:
        notes.append("n_gpu_layers > 0: host memory only is estimated, as if all on the CPU")
    subtotal = w_bytes + kv + compute + overhead
    total = int(subtotal * SAFETY_FACTOR)
    return MemoryEstimate(
        weights_bytes=w_bytes,
        kv_cache_bytes=kv,
        compute_bytes=compute,
        overhead_bytes=overhead,
        margin_bytes=total - subtotal,
        total_bytes=total,
        notes=notes,
    )


# ---------------------------------------------------------------------------- fine-tune

# Resident memory of a Python process with torch, transformers, peft and bitsandbytes imported
# and a training step's allocator caches warm; calibrated (see the test).
FINETUNE_OVERHEAD_BYTES = 512 * _MIB


def estimate_finetune_memory(args: FinetuneMemoryArgs) -> MemoryEstimate:
    """Predicted peak resident memory (bytes) of one QLoRA training run on the CPU: the frozen
    base quantized by bitsandbytes (4-bit: 0.5 byte/weight + one fp32 absmax per 64 weights, or
    ~1 byte + 1/256 fp32 with double quantization; int8: 1 byte + per-row fp32 scales), embeddings
    and norms in the compute dtype, LoRA A/B (r x (in + out) per target module) with fp32
    gradients and two fp32 AdamW moments, activations at batch x sequence length, and a calibrated
    framework overhead. Reads config.json only."""
    shape = _hf_shape(args.model)
    cfg = args.config
    act_bytes = 2 if cfg.compute_dtype in ("bfloat16", "float16") else 4
    targets = set(cfg.target_modules)
    modules = _linear_modules(shape)
    linear = sum(i * o for i, o in modules.values()) * shape.n_layer
    per_weight, scales = _base_weight_and_scale_bytes(cfg, modules, shape.n_layer, linear)
    base_q = linear * per_weight + scales
    # Embeddings, output head and norms stay unquantized (fp32 on CPU loads by default).
    embed = shape.n_vocab * shape.n_embd * (1 if shape.tied_embeddings else 2) * 4
    lora_params = sum(cfg.lora_r * (i + o) for name, (i, o) in modules.items() if name in targets)
    lora_params *= shape.n_layer
    # fp32 parameters + gradients + AdamW exp_avg + exp_avg_sq.
    lora_state = lora_params * 4 * 4
    seq = min(cfg.max_seq_len, args.example_tokens or cfg.max_seq_len)
    activations = _activation_bytes(shape, cfg.batch_size, seq, act_bytes)
    total = int(base_q + embed + lora_state + activations + FINETUNE_OVERHEAD_BYTES)
    return MemoryEstimate(
        weights_bytes=int(base_q + embed),
        kv_cache_bytes=0,
        compute_bytes=int(lora_state + activations),
        overhead_bytes=FINETUNE_OVERHEAD_BYTES,
        total_bytes=total,
        notes=[
            f"base: {linear / 1e6:.1f}M linear weights as {cfg.quant} "
            f"({'double-quant ' if cfg.double_quant and cfg.quant != 'int8' else ''}scales "
            f"{scales / _MIB:.1f} MiB) + embeddings {embed / _MIB:.0f} MiB fp32",
            f"LoRA: {lora_params / 1e6:.2f}M params x (weight + grad + 2 AdamW moments) fp32",
            f"activations: {cfg.batch_size} x {seq} tokens x {shape.n_layer} layers "
            f"({act_bytes}-byte {cfg.compute_dtype}) + attention probs + 3 x logits fp32",
            f"overhead: torch/transformers/peft/bitsandbytes, {FINETUNE_OVERHEAD_BYTES / _MIB:.0f} "
            "MiB calibrated",
        ],
    )


def _linear_modules(shape: ModelShape) -> dict[str, tuple[int, int]]:
    """(in, out) features of each linear module of one decoder layer, by its peft target name."""
    hd, h, ff = shape.head_dim, shape.n_embd, shape.n_ff
    return {
        "q_proj": (h, shape.n_head * hd),
        "k_proj": (h, shape.n_head_kv * hd),
        "v_proj": (h, shape.n_head_kv * hd),
        "o_proj": (shape.n_head * hd, h),
        "gate_proj": (h, ff),
        "up_proj": (h, ff),
        "down_proj": (ff, h),
    }


def _base_weight_and_scale_bytes(
    cfg: FinetuneConfig, modules: dict[str, tuple[int, int]], n_layer: int, linear: int
) -> tuple[float, float]:
    """Bytes per frozen linear weight as bitsandbytes stores it under ``cfg.quant``, and the
    bytes of all its quantization scales."""
    if cfg.quant == "int8":
        per_weight = 1.0
        scales: float = sum(o for _, o in modules.values()) * n_layer * 4.0
    else:
        per_weight = 0.5
        # absmax per 64-weight block: fp32, or 8-bit + an fp32 per 256 blocks when double-quant.
        scales = linear / 64 * (1 + 4 / 256 if cfg.double_quant else 4)
    return per_weight, scales


def _activation_bytes(shape: ModelShape, batch_size: int, seq: int, act_bytes: int) -> int:
    """Bytes of the activations a training step saves, and of its logits, at ``batch_size``
    sequences of ``seq`` tokens."""
    tokens = batch_size * seq
    # Saved activations per token per layer, fitted to measured QLoRA steps of the tiny model at
    # full sequence length (eager attention, fp32 compute): ~(24 x hidden + 7 x ff) values (the
    # residual stream, norms, q/k/v/o, the FFN's gate/up/act, LoRA inputs, and their gradients
    # in flight), plus the attention scores and probabilities (~3.3 x heads x seq fp32).
    per_layer = tokens * (24 * shape.n_embd + 7 * shape.n_ff) * act_bytes
    per_layer += int(tokens * shape.n_head * seq * 4 * 3.3)
    logits = tokens * shape.n_vocab * 4 * 3
    return shape.n_layer * per_layer + logits


# ------------------------------------------------------------------------- measurement

_CHILD = r"""
import json, sys
from pathlib import Path
from haqa.tools.llama_session import ChildSettings, llama, load_model, new_context
cfg = json.loads(sys.argv[1])
L = llama()
rt = ChildSettings(**cfg["runtime"])
# Extra (repacked) buffer types would hold a second copy of some weights, and their prompt
# kernels crash on some CPUs in this llama.cpp build: measure the plain CPU buffers.
model = load_model(Path(cfg["model"]), rt, extra_bufts=False)
ctx = new_context(model, rt)
n_gen = cfg["n_gen"]
# Fill the context, n_batch tokens per call: the last batches attend over the whole cache, the
# worst case the gate must cover.
n_prompt = max(1, rt.n_ctx - n_gen)
toks = [(i * 7919) % 97 + 3 for i in range(n_prompt)]
for start in range(0, n_prompt, rt.n_batch):
    chunk = toks[start : start + rt.n_batch]
    arr = (L.llama_token * len(chunk))(*chunk)
    if L.llama_decode(ctx, L.llama_batch_get_one(arr, len(chunk))) != 0:
        sys.exit("prompt decode failed")
for _ in range(n_gen):
    one = (L.llama_token * 1)(5)
    if L.llama_decode(ctx, L.llama_batch_get_one(one, 1)) != 0:
        sys.exit("decode failed")
with open("/proc/self/status") as f:
    hwm = [int(x.split()[1]) * 1024 for x in f if x.startswith("VmHWM")][0]
print(json.dumps({"peak_rss_bytes": hwm, "n_prompt": n_prompt}))
"""


class MeasuredMemory(BaseModel):
    peak_rss_bytes: int
    n_prompt: int


def measure_deploy_peak_rss(gguf: Path, config: DeployConfig, n_gen: int = 8) -> MeasuredMemory:
    """Peak RSS of a child process that loads ``gguf`` with the config's runtime settings,
    fills the context with a prompt (n_ctx - n_gen tokens, n_batch per call) and decodes ``n_gen``
    tokens (Linux: VmHWM). The ground truth the estimate is calibrated against."""
    # Prompt threads for every graph: the peak comes from the prompt batches.
    runtime = config.runtime.model_copy(update={"n_threads": config.threads_batch})
    payload = {"model": str(gguf), "runtime": runtime.model_dump(mode="json"), "n_gen": n_gen}
    proc = subprocess.run(
        [sys.executable, "-c", CHILD_PRELUDE + _CHILD, json.dumps(payload)],
        capture_output=True,
        text=True,
        check=False,
        env=child_env(),  # dies with this process (haqa.procs)
        timeout=600,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"measurement failed (rc {proc.returncode}): {proc.stderr[-500:]}")
    return MeasuredMemory.model_validate_json(proc.stdout.strip().splitlines()[-1])
