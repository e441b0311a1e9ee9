"""Importance matrices for quantization, computed in-process by llama.cpp itself.

An importance matrix holds, for every weight matrix of a model, the mean squared activation of
each of its input columns over a calibration text: llama.cpp's quantizers use it to put the
rounding error where the activations are small (``llama-quantize --imatrix``). haqa computes it
the way llama.cpp's ``llama-imatrix`` does, through the same engine: the calibration text is
tokenized by the GGUF's own tokenizer, cut into chunks of ``n_ctx`` tokens (the first of each
replaced by BOS when the model adds one), each chunk decoded from an empty cache with every
token's output requested (so the last layer's FFN sees every row), and llama.cpp's evaluation
callback hands over the input of every matrix multiplication by a ``blk.*`` weight. Computing it
in llama.cpp rather than with hooks on a PyTorch model gives the very tensor names the quantizer
looks up, for any architecture llama.cpp runs, at the size llama.cpp can run.

The result is written in llama.cpp's own imatrix GGUF format (``general.type = imatrix``,
``<tensor>.in_sum2`` and ``<tensor>.counts`` per weight), so the file is also what a user passes to
``llama-quantize --imatrix`` to reproduce haqa's quantization by hand. It is cached by content
(model, calibration text, chunk size and count, llama.cpp version) under
``$HAQA_HOME/artifacts/imatrix/<key>/imatrix.gguf``.

The calibration text must be one no evaluation uses: the zoo's real model ships ``calib.txt``
for it (disjoint from its ``eval.txt``); a run calibrates on its fine-tuning split.

Not covered: mixture-of-experts weights (``MUL_MAT_ID``): their tensors are quantized without
importance data (llama.cpp logs that it found none), as llama-imatrix's output would not be.
"""

from __future__ import annotations

import ctypes
import hashlib
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from haqa.errors import HaqaError
from haqa.paths import artifacts_dir

#: llama-imatrix ignores multiplications by fewer than 16 rows (the tail of a short chunk).
_MIN_ROWS = 16
_GGML_TYPE_F32 = 0


class ImatrixArgs(BaseModel):
    """Compute an importance matrix of a GGUF model over a calibration text."""

    gguf: Path = Field(description="the model whose quantization it guides (best its F16 GGUF)")
    calibration: Path = Field(description="plain text no evaluation uses")
    n_ctx: int = Field(512, ge=32, le=8192, description="tokens per chunk (llama-imatrix -c)")
    max_chunks: int | None = Field(
        None, ge=1, description="chunks to use at most (llama-imatrix --chunks); None: all"
    )
    n_threads: int | None = Field(None, ge=1, description="threads; None: every logical core")


class ImatrixResult(BaseModel):
    imatrix_path: Path = Field(description="llama.cpp imatrix GGUF (llama-quantize --imatrix)")
    n_entries: int = Field(description="weight matrices with importance data")
    n_chunks: int
    chunk_size: int
    n_tokens: int = Field(description="tokens decoded")
    dataset: str = Field(description="the calibration file's name")
    cached: bool
    time_s: float


class _GgmlTensor(ctypes.Structure):
    """``struct ggml_tensor`` of the ggml that llama-cpp-python vendors (ggml.h); checked against
    ``ggml_get_name`` at the first callback, so another layout is an error, not garbage."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("buffer", ctypes.c_void_p),
        ("ne", ctypes.c_int64 * 4),
        ("nb", ctypes.c_size_t * 4),
        ("op", ctypes.c_int),
        ("op_params", ctypes.c_int32 * 16),
        ("flags", ctypes.c_int32),
        ("src", ctypes.c_void_p * 10),
        ("view_src", ctypes.c_void_p),
        ("view_offs", ctypes.c_size_t),
        ("data", ctypes.c_void_p),
        ("name", ctypes.c_char * 64),
        ("extra", ctypes.c_void_p),
        ("padding", ctypes.c_char * 8),
    ]


def _ggml() -> Any:
    """libggml-base, where the tensor and backend functions live."""
    import llama_cpp
    from llama_cpp._ctypes_extensions import load_shared_library

    lib = load_shared_library("ggml-base", Path(llama_cpp.__file__).parent / "lib")
    lib.ggml_op_name.restype = ctypes.c_char_p
    lib.ggml_op_name.argtypes = [ctypes.c_int]
    lib.ggml_get_name.restype = ctypes.c_char_p
    lib.ggml_get_name.argtypes = [ctypes.c_void_p]
    lib.ggml_nbytes.restype = ctypes.c_size_t
    lib.ggml_nbytes.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_buffer_is_host.restype = ctypes.c_bool
    lib.ggml_backend_buffer_is_host.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_tensor_get.restype = None
    lib.ggml_backend_tensor_get.argtypes = [
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_size_t,
    ]
    return lib


def weight_name(raw: bytes) -> str:
    """A weight's name as the quantizer looks it up: a backend copy is named
    ``CUDA0#blk.0.attn_q.weight#0``; the part between the marks is the weight."""
    name = raw.decode(errors="replace")
    if "#" in name:
        parts = name.split("#")
        name = parts[1] if len(parts) > 1 else name
    return name


class _Collector:
    """llama.cpp's evaluation callback: sums of squared inputs per column of every ``blk.*``
    weight, and the rows counted. An exception inside the callback cannot cross the C frames:
    it is kept and raised after the decode."""

    def __init__(self) -> None:
        import numpy as np

        self.np = np
        self.ggml = _ggml()
        self.sums: dict[str, Any] = {}
        self.counts: dict[str, int] = {}
        self.op_names: dict[int, str] = {}
        self.error: BaseException | None = None
        self.checked = False

    def _op(self, op: int) -> str:
        if op not in self.op_names:
            self.op_names[op] = (self.ggml.ggml_op_name(op) or b"").decode()
        return self.op_names[op]

    def __call__(self, t_ptr: int, ask: bool, _user: Any) -> bool:
        if self.error is not None:
            return False
        try:
            return self._handle(t_ptr, ask)
        except BaseException as exc:  # kept, raised after llama_decode returns
            self.error = exc
            return False

    def _handle(self, t_ptr: int, ask: bool) -> bool:
        t = _GgmlTensor.from_address(t_ptr)
        if not self.checked:
            self._check_layout(t_ptr, t)
        if self._op(t.op) != "MUL_MAT" or not t.src[0] or not t.src[1]:
            return False
        src0 = _GgmlTensor.from_address(t.src[0])
        src1 = _GgmlTensor.from_address(t.src[1])
        name = weight_name(src0.name)
        wanted = (
            name.startswith("blk.")
            and src1.type == _GGML_TYPE_F32
            and src1.ne[1] >= _MIN_ROWS
            and src0.ne[2] * src0.ne[3] == 1
        )
        if ask or not wanted:
            return wanted
        self._add(name, t.src[1], src1)
        return True

    def _check_layout(self, t_ptr: int, t: _GgmlTensor) -> None:
        if t.name != (self.ggml.ggml_get_name(t_ptr) or b""):
            raise HaqaError(
                "this llama.cpp's ggml_tensor layout is not the one haqa reads: "
                "compute the imatrix with llama-imatrix and pass it to haqa quantize --imatrix"
            )
        self.checked = True

    def _add(self, name: str, ptr: int, src1: _GgmlTensor) -> None:
        np = self.np
        nbytes = int(self.ggml.ggml_nbytes(ptr))
        if self.ggml.ggml_backend_buffer_is_host(src1.buffer):
            raw = (ctypes.c_char * nbytes).from_address(src1.data)
        else:  # on a GPU: copy it to the host first
            raw = (ctypes.c_char * nbytes)()
            self.ggml.ggml_backend_tensor_get(ptr, raw, 0, nbytes)
        ne0 = int(src1.ne[0])
        rows = np.lib.stride_tricks.as_strided(
            np.frombuffer(raw, dtype=np.float32),
            shape=(int(src1.ne[3]), int(src1.ne[2]), int(src1.ne[1]), ne0),
            strides=(int(src1.nb[3]), int(src1.nb[2]), int(src1.nb[1]), int(src1.nb[0])),
        ).reshape(-1, ne0)
        squares = np.einsum("ij,ij->j", rows, rows, dtype=np.float64)
        if not np.isfinite(squares).all():
            raise HaqaError(f"non-finite activations at {name}: the model or its file is broken")
        if name in self.sums:
            if self.sums[name].shape[0] != ne0:
                raise HaqaError(f"{name} took inputs of two widths: not a dense weight")
            self.sums[name] += squares
            self.counts[name] += rows.shape[0]
        else:
            self.sums[name] = squares
            self.counts[name] = rows.shape[0]


def calibration_from_tasks(files: list[Path]) -> Path:
    """A calibration text made of task files' questions with their right answers, one
    paragraph each (a run passes its training split: text no evaluation scores). Written once
    per content under ``$HAQA_HOME/artifacts/calibration/``."""
    from haqa.tasks import load_jsonl

    paragraphs = []
    for f in files:
        for ex in load_jsonl(f):
            paragraphs.append(f"{ex.question} {ex.choices[ex.answer]}")
    text = "\n\n".join(paragraphs) + "\n"
    digest = hashlib.sha256(text.encode()).hexdigest()[:24]
    path = artifacts_dir() / "calibration" / f"{digest}.txt"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    return path


def imatrix_key(args: ImatrixArgs) -> str:
    from haqa.tools.export_gguf import _pkg_version, file_digest

    parts = (
        "imatrix-v1",
        file_digest(args.gguf),
        file_digest(args.calibration),
        str(args.n_ctx),
        str(args.max_chunks),
        _pkg_version("llama-cpp-python"),
    )
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]


def compute_imatrix(args: ImatrixArgs) -> ImatrixResult:
    """The importance matrix of ``args.gguf`` over ``args.calibration`` (cached by content)."""
    from haqa.tools.export_gguf import check_gguf

    t0 = time.perf_counter()
    check_gguf(args.gguf)
    if not args.calibration.is_file():
        raise HaqaError(f"calibration text {args.calibration} does not exist: pass a text file")
    out = artifacts_dir() / "imatrix" / imatrix_key(args) / "imatrix.gguf"
    if out.is_file():
        info = read_imatrix(out)
        return ImatrixResult(imatrix_path=out, cached=True, time_s=time.perf_counter() - t0, **info)
    text = args.calibration.read_text(encoding="utf-8", errors="replace")
    collector, n_chunks = _collect(args, text)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_imatrix(
        out, collector.sums, collector.counts, args.calibration.name, n_chunks, args.n_ctx
    )
    return ImatrixResult(
        imatrix_path=out,
        n_entries=len(collector.sums),
        n_chunks=n_chunks,
        chunk_size=args.n_ctx,
        n_tokens=n_chunks * args.n_ctx,
        dataset=args.calibration.name,
        cached=False,
        time_s=time.perf_counter() - t0,
    )


def _collect(args: ImatrixArgs, text: str) -> tuple[_Collector, int]:
    """Decode the calibration chunks with the collector as llama.cpp's evaluation callback."""
    from haqa.schemas import RuntimeSettings
    from haqa.tools.llama_session import llama, load_model, new_context, tokenize

    lib = llama()
    threads = args.n_threads or os.cpu_count() or 1
    rt = RuntimeSettings(
        n_threads=threads, n_ctx=args.n_ctx, n_batch=args.n_ctx, n_ubatch=min(args.n_ctx, 512)
    )
    model = load_model(args.gguf, rt)
    collector = _Collector()
    callback = lib.ggml_backend_sched_eval_callback(collector)
    try:
        vocab = lib.llama_model_get_vocab(model)
        tokens = tokenize(vocab, text)
        n_chunks = len(tokens) // args.n_ctx
        if args.max_chunks is not None:
            n_chunks = min(n_chunks, args.max_chunks)
        if n_chunks < 1:
            raise HaqaError(
                f"the calibration text has {len(tokens)} tokens, fewer than one chunk of "
                f"{args.n_ctx}: give a longer text or a smaller n_ctx"
            )
        ctx = new_context(model, rt, eval_callback=callback)
        try:
            bos = int(lib.llama_vocab_bos(vocab)) if lib.llama_vocab_get_add_bos(vocab) else None
            _decode_chunks(lib, ctx, tokens, n_chunks, args.n_ctx, bos, collector)
        finally:
            lib.llama_free(ctx)
    finally:
        lib.llama_model_free(model)
    if not collector.sums:
        raise HaqaError(f"{args.gguf}: llama.cpp multiplied no blk.* weight; nothing to record")
    return collector, n_chunks


def _decode_chunks(
    lib: Any,
    ctx: Any,
    tokens: list[int],
    n_chunks: int,
    n_ctx: int,
    bos: int | None,
    collector: _Collector,
) -> None:
    mem = lib.llama_get_memory(ctx)
    batch = lib.llama_batch_init(n_ctx, 0, 1)
    try:
        for c in range(n_chunks):
            chunk = tokens[c * n_ctx : (c + 1) * n_ctx]
            if bos is not None:
                chunk[0] = bos
            lib.llama_memory_clear(mem, True)
            for i, tok in enumerate(chunk):
                batch.token[i] = tok
                batch.pos[i] = i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = 1  # every row through the last layer, as llama-imatrix
            batch.n_tokens = len(chunk)
            status = lib.llama_decode(ctx, batch)
            if collector.error is not None:
                raise collector.error
            if status != 0:
                raise HaqaError(f"llama_decode failed on calibration chunk {c} (status {status})")
    finally:
        lib.llama_batch_free(batch)


def write_imatrix(
    path: Path,
    sums: Mapping[str, Any],
    counts: Mapping[str, int],
    dataset: str,
    n_chunks: int,
    chunk_size: int,
) -> None:
    """Write llama.cpp's imatrix GGUF (what ``llama-imatrix -o x.gguf`` writes), atomically."""
    import numpy as np
    from gguf import GGUFType, GGUFWriter, Keys

    tmp = path.with_name(path.name + ".tmp")
    writer = GGUFWriter(tmp, arch="")
    writer.kv_data[0].pop(Keys.General.ARCHITECTURE, None)  # an imatrix belongs to no model
    writer.add_type(GGUFType.IMATRIX)
    writer.add_array(Keys.IMatrix.DATASETS, [dataset])
    writer.add_uint32(Keys.IMatrix.CHUNK_COUNT, n_chunks)
    writer.add_uint32(Keys.IMatrix.CHUNK_SIZE, chunk_size)
    for name in sorted(sums):
        writer.add_tensor(f"{name}.in_sum2", np.asarray(sums[name], dtype=np.float32)[None, :])
        writer.add_tensor(f"{name}.counts", np.array([[counts[name]]], dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.replace(path)


def read_imatrix(path: Path) -> dict[str, Any]:
    """An imatrix GGUF's summary (entries, chunks, chunk size, tokens, dataset)."""
    from gguf import Keys

    reader = _reader(path)
    entries = [t for t in reader.tensors if t.name.endswith(".in_sum2")]

    def field(key: str) -> Any:
        f = reader.get_field(key)
        return None if f is None else f.contents()

    chunks = int(field(Keys.IMatrix.CHUNK_COUNT) or 0)
    size = int(field(Keys.IMatrix.CHUNK_SIZE) or 0)
    datasets = field(Keys.IMatrix.DATASETS) or [""]
    return {
        "n_entries": len(entries),
        "n_chunks": chunks,
        "chunk_size": size,
        "n_tokens": chunks * size,
        "dataset": str(datasets[0]),
    }


def _reader(path: Path) -> Any:
    from gguf import GGUFReader

    try:
        reader = GGUFReader(path)
    except (ValueError, OSError) as exc:
        raise HaqaError(
            f"{path} is not an imatrix GGUF ({exc}): pass llama-imatrix's output"
        ) from None
    kind = reader.get_field("general.type")
    if kind is None or kind.contents() != "imatrix":
        raise HaqaError(f"{path} is not an imatrix GGUF (general.type is not imatrix)")
    return reader


def importance(path: Path) -> dict[str, Any]:
    """Per weight, the mean squared input per column (sum / count), as llama-quantize loads an
    imatrix GGUF: what the quantizers weigh the rounding error with."""
    import numpy as np

    reader = _reader(path)
    by_name = {t.name: np.asarray(t.data, dtype=np.float64) for t in reader.tensors}
    out: dict[str, Any] = {}
    for name, sums in by_name.items():
        if not name.endswith(".in_sum2"):
            continue
        weight = name.removesuffix(".in_sum2")
        counts = by_name[f"{weight}.counts"].reshape(-1)
        rows = sums.reshape(len(counts), -1)
        mean = np.where(counts[:, None] > 0, rows / np.maximum(counts[:, None], 1), 1.0)
        out[weight] = mean.reshape(-1).astype(np.float32)
    return out


def agreement(ours: Mapping[str, Any], theirs: Mapping[str, Any]) -> dict[str, float]:
    """How close two importance matrices are: the weights both have, the worst cosine
    similarity of their per-column importances, and the largest relative difference of a
    weight's mean importance (the scale the quantizer sees)."""
    import numpy as np

    common = sorted(set(ours) & set(theirs))
    if not common:
        return {"common": 0.0, "min_cosine": math.nan, "max_rel_mean_diff": math.nan}
    cosines, rel = [], []
    for name in common:
        a = np.asarray(ours[name], dtype=np.float64)
        b = np.asarray(theirs[name], dtype=np.float64)
        cosines.append(float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))))
        rel.append(abs(float(a.mean()) - float(b.mean())) / float(b.mean()))
    return {
        "common": float(len(common)),
        "only_ours": float(len(set(ours) - set(theirs))),
        "only_theirs": float(len(set(theirs) - set(ours))),
        "min_cosine": min(cosines),
        "max_rel_mean_diff": max(rel),
    }
