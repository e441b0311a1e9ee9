"""Microbenchmarks of the operations that matter, at the target model's layer shapes, per data
type: the evidence for "is INT4 really faster than INT8 on this machine?".

* torch matmuls (GEMV with M = 1 as in decode, GEMM with M = a prompt batch) in fp32, bf16, fp16,
  int8 (``torch._int_mm``) and bitsandbytes 4-bit (NF4 ``Linear4bit``), plus softmax;
* llama.cpp's own kernels, timed through a one-layer LLaMA GGUF of the same shapes quantized per
  type (F16, Q8_0, Q4_0, Q4_K): decode (GEMV) and a prompt batch (GEMM) in a child process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from haqa.errors import HaqaError
from haqa.procs import CHILD_PRELUDE, child_env
from haqa.schemas import RuntimeSettings

TorchDtype = Literal["fp32", "bf16", "fp16", "int8", "nf4"]
LlamaType = Literal["F16", "Q8_0", "Q4_0", "Q4_K_M"]
_DEFAULT_DTYPES: tuple[TorchDtype, ...] = ("fp32", "bf16", "int8", "nf4")
_DEFAULT_LLAMA_TYPES: tuple[LlamaType, ...] = ("F16", "Q8_0", "Q4_0", "Q4_K_M")


class Args(BaseModel):
    model: Path | None = Field(
        None, description="an HF model folder (or its config.json) or a GGUF whose shapes to use"
    )
    hidden: int = Field(1024, ge=32, description="hidden size (when no model is given)")
    intermediate: int = Field(2816, ge=32, description="FFN size (when no model is given)")
    dtypes: list[TorchDtype] = Field(
        default_factory=lambda: list(_DEFAULT_DTYPES),
        description="torch data types to time (fp16 is often slow on CPUs; add it to see)",
    )
    llama_types: list[LlamaType] = Field(
        default_factory=lambda: list(_DEFAULT_LLAMA_TYPES),
        description="llama.cpp weight types timed on a one-layer GGUF",
    )
    threads: list[int] = Field(default_factory=lambda: [os.cpu_count() or 1], min_length=1)
    prompt_m: int = Field(128, ge=2, le=4096, description="M of the GEMM (prompt batch)")
    repeats: int = Field(10, ge=1, le=1000, description="timed repeats (best is kept)")
    budget_s: float = Field(
        0.5, gt=0, description="stop repeating a case once its timed calls add up to this"
    )


class KernelTiming(BaseModel):
    op: str = Field(description="matmul, softmax, layer_decode (GEMV) or layer_prompt (GEMM)")
    dtype: str
    m: int
    n: int
    k: int
    threads: int
    seconds: float = Field(description="best time of one call (one token for layer_decode)")
    gflops: float
    gbytes_per_s: float = Field(description="weight bytes read per second")
    backend: str = Field(description="torch, bitsandbytes or llama.cpp")
    note: str | None = None


class Result(BaseModel):
    hidden: int
    intermediate: int
    rows: list[KernelTiming]
    implications: list[str] = Field(description="short measured comparisons for the analyst")
    skipped: list[str] = Field(default_factory=list, description="what could not run, and why")


def _shapes(args: Args) -> tuple[int, int]:
    if args.model is None:
        return args.hidden, args.intermediate
    from haqa.tools.estimate_memory import read_shape

    path = args.model
    if path.name == "config.json":
        path = path.parent
    shape = read_shape(path)
    return shape.n_embd, shape.n_ff


def _best(fn: Callable[[], object], repeats: int, budget_s: float) -> float:
    """Best of up to ``repeats`` timed calls after a warm-up, stopping early once the timed calls
    add up to ``budget_s``, as timeit's autorange and Google Benchmark's min_time bound a case by
    time. A kernel that takes seconds here (bf16 GEMM without native bf16) is timed once or not
    at all beyond its warm-up: a warm-up over four budgets is the measurement, because first-call
    allocations and packing (milliseconds) are lost in it, and its spread is small beside it."""
    start = time.perf_counter()
    fn()  # warm-up: first-call allocations and packing are not the kernel
    warm_up = time.perf_counter() - start
    if warm_up >= 4 * budget_s:
        return warm_up
    best, spent = float("inf"), 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        took = time.perf_counter() - start
        best, spent = min(best, took), spent + took
        if spent >= budget_s:
            break
    return best


def _torch_rows(args: Args, hidden: int, ff: int, threads: int, skipped: list[str]) -> list[Any]:
    import torch

    torch.set_num_threads(threads)
    rows: list[KernelTiming] = []
    # (n, k): out x in of the layer's matrices: attention projection, FFN up, FFN down.
    mats = [(hidden, hidden), (ff, hidden), (hidden, ff)]
    gen = torch.Generator().manual_seed(0)
    for n, k in mats:
        w32 = torch.randn(n, k, generator=gen) * 0.02
        for m in (1, args.prompt_m):
            x32 = torch.randn(m, k, generator=gen)
            for dtype in args.dtypes:
                fn, w_bytes, backend, note = _kernel(dtype, x32, w32, skipped)
                if fn is None:
                    continue
                with torch.no_grad():
                    sec = _best(fn, args.repeats, args.budget_s)
                rows.append(
                    KernelTiming(
                        op="matmul",
                        dtype=dtype,
                        m=m,
                        n=n,
                        k=k,
                        threads=threads,
                        seconds=sec,
                        gflops=2 * m * n * k / sec / 1e9,
                        gbytes_per_s=w_bytes / sec / 1e9,
                        backend=backend,
                        note=note,
                    )
                )
    scores = torch.randn(args.prompt_m * max(1, hidden // 64), 512, generator=gen)
    sec = _best(lambda: torch.softmax(scores, dim=-1), args.repeats, args.budget_s)
    rows.append(
        KernelTiming(
            op="softmax",
            dtype="fp32",
            m=scores.shape[0],
            n=512,
            k=1,
            threads=threads,
            seconds=sec,
            gflops=5 * scores.numel() / sec / 1e9,
            gbytes_per_s=2 * scores.numel() * 4 / sec / 1e9,
            backend="torch",
            note="rows = prompt batch x heads, 512 keys",
        )
    )
    return rows


def _kernel(
    dtype: str, x32: Any, w32: Any, skipped: list[str]
) -> tuple[Callable[[], object] | None, int, str, str | None]:
    import torch

    n, k = w32.shape
    if dtype in ("fp32", "bf16", "fp16"):
        tdt = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
        w, x = w32.to(tdt).t().contiguous().t(), x32.to(tdt)
        return (lambda: x @ w.t()), n * k * w.element_size(), "torch", None
    if dtype == "int8":
        wq = (w32 / w32.abs().max() * 127).round().to(torch.int8).t().contiguous()
        xq = (x32 / x32.abs().max() * 127).round().to(torch.int8)
        try:
            torch._int_mm(xq, wq)
        except RuntimeError as exc:
            skipped.append(f"int8 torch._int_mm m={x32.shape[0]}: {str(exc).splitlines()[0]}")
            return None, 0, "", None
        return (lambda: torch._int_mm(xq, wq)), n * k, "torch", "torch._int_mm int8 -> int32"
    # nf4: bitsandbytes Linear4bit, the QLoRA base layer.
    try:
        import bitsandbytes as bnb
    except ImportError:
        skipped.append("nf4: bitsandbytes is not installed")
        return None, 0, "", None
    layer = bnb.nn.Linear4bit(k, n, bias=False, compute_dtype=torch.float32, quant_type="nf4")
    layer.weight = bnb.nn.Params4bit(w32.clone(), requires_grad=False, quant_type="nf4")
    layer = layer.to("cpu")
    note = "bnb Linear4bit nf4, fp32 compute"
    return (lambda: layer(x32)), n * k // 2 + n * k // 64 * 4, "bitsandbytes", note


# ------------------------------------------------------------------------ llama.cpp layer


def write_one_layer_gguf(path: Path, hidden: int, ff: int, vocab: int = 256) -> None:
    """An F16 LLaMA GGUF with one transformer block of the given shapes and a tiny vocabulary:
    the smallest model through which llama.cpp runs its own matmul kernels at those shapes."""
    import gguf
    import numpy as np

    head_dim = 64 if hidden % 64 == 0 else hidden
    n_head = hidden // head_dim
    n_kv = max(1, n_head // 4)
    rng = np.random.default_rng(0)

    def rand(rows: int, cols: int) -> Any:
        return (rng.standard_normal((rows, cols), dtype=np.float32) * 0.02).astype(np.float16)

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_context_length(4096)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(ff)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_rope_dimension_count(head_dim)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(1)
    writer.add_vocab_size(vocab)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(["<unk>", "<s>", "</s>"] + [f"<t{i}>" for i in range(3, vocab)])
    writer.add_token_scores([0.0] * vocab)
    writer.add_token_types([2, 3, 3] + [1] * (vocab - 3))
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    ones = np.ones(hidden, dtype=np.float32)
    tensors = {
        "token_embd.weight": rand(vocab, hidden),
        "output_norm.weight": ones,
        "output.weight": rand(vocab, hidden),
        "blk.0.attn_norm.weight": ones,
        "blk.0.attn_q.weight": rand(n_head * head_dim, hidden),
        "blk.0.attn_k.weight": rand(n_kv * head_dim, hidden),
        "blk.0.attn_v.weight": rand(n_kv * head_dim, hidden),
        "blk.0.attn_output.weight": rand(hidden, n_head * head_dim),
        "blk.0.ffn_norm.weight": ones,
        "blk.0.ffn_gate.weight": rand(ff, hidden),
        "blk.0.ffn_up.weight": rand(ff, hidden),
        "blk.0.ffn_down.weight": rand(hidden, ff),
    }
    for name, data in tensors.items():
        writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


_LAYER_CHILD = r"""
import json, sys, time
from pathlib import Path
from haqa.tools.llama_session import ChildSettings, llama, load_model, new_context
cfg = json.loads(sys.argv[1])
L = llama()
rt = ChildSettings(**cfg["runtime"])
model = load_model(Path(cfg["model"]), rt, extra_bufts=cfg["extra_bufts"])
ctx = new_context(model, rt)
mem = L.llama_get_memory(ctx)
def prompt():
    L.llama_memory_clear(mem, True)
    arr = (L.llama_token * cfg["m"])(*[3 + i % 200 for i in range(cfg["m"])])
    assert L.llama_decode(ctx, L.llama_batch_get_one(arr, cfg["m"])) == 0
def decode(n):
    L.llama_memory_clear(mem, True)
    for i in range(n):
        one = (L.llama_token * 1)(3 + i % 200)
        assert L.llama_decode(ctx, L.llama_batch_get_one(one, 1)) == 0
out = {}
for name, fn in (("prompt", prompt), ("decode", lambda: decode(cfg["n_gen"]))):
    fn()
    best = float("inf")
    for _ in range(cfg["repeats"]):
        t = time.perf_counter(); fn(); best = min(best, time.perf_counter() - t)
    out[name] = best
print(json.dumps(out))
"""


def _llama_rows(
    args: Args, hidden: int, ff: int, threads: int, skipped: list[str]
) -> list[KernelTiming]:
    from haqa.tools.estimate_memory import read_shape

    rows: list[KernelTiming] = []
    n_gen = 16
    with tempfile.TemporaryDirectory(prefix="haqa-microbench-") as tmp:
        f16 = Path(tmp) / "layer-F16.gguf"
        write_one_layer_gguf(f16, hidden, ff)
        for qtype in args.llama_types:
            path = f16 if qtype == "F16" else _quantize(f16, qtype)
            shape = read_shape(path)
            layer_bytes = sum(t.n_bytes or 0 for t in shape.tensors if t.name.startswith("blk."))
            layer_params = sum(
                t.ne0 * t.rows for t in shape.tensors if t.name.startswith("blk.") and t.rows > 1
            )
            timing, note = _run_layer_child(path, args, threads, n_gen)
            if timing is None:
                skipped.append(f"llama.cpp {qtype}: {note}")
                continue
            for op, m, sec in (
                ("layer_decode", 1, timing["decode"] / n_gen),
                ("layer_prompt", args.prompt_m, timing["prompt"]),
            ):
                rows.append(
                    KernelTiming(
                        op=op,
                        dtype=qtype,
                        m=m,
                        n=ff,
                        k=hidden,
                        threads=threads,
                        seconds=sec,
                        gflops=2 * m * layer_params / sec / 1e9,
                        gbytes_per_s=layer_bytes / sec / 1e9,
                        backend="llama.cpp",
                        note=note,
                    )
                )
    return rows


def _quantize(f16: Path, qtype: str) -> Path:
    # The one-layer model is seeded, so the export tool's content-keyed cache reuses it next time.
    from haqa.tools.export_gguf import QuantizeArgs, quantize_gguf

    return Path(quantize_gguf(QuantizeArgs(gguf=f16, quant_type=qtype)).gguf_path)


def _run_layer_child(
    path: Path, args: Args, threads: int, n_gen: int
) -> tuple[dict[str, float] | None, str | None]:
    """Time in a child process: with llama.cpp's repacked weight buffers first (its default),
    and without them when that crashes (some builds crash on prompt batches)."""
    note = None
    for extra in (True, False):
        runtime = RuntimeSettings(
            n_ctx=1024, n_batch=args.prompt_m, n_ubatch=args.prompt_m, n_threads=threads
        )
        payload = {
            "model": str(path),
            "runtime": runtime.model_dump(mode="json"),
            "m": args.prompt_m,
            "repeats": args.repeats,
            "n_gen": n_gen,
            "extra_bufts": extra,
        }
        proc = subprocess.run(
            [sys.executable, "-c", CHILD_PRELUDE + _LAYER_CHILD, json.dumps(payload)],
            capture_output=True,
            text=True,
            check=False,
            env=child_env(),  # dies with this process (haqa.procs)
            timeout=300,
        )
        if proc.returncode == 0:
            return json.loads(proc.stdout.strip().splitlines()[-1]), note
        note = (
            f"llama.cpp's repacked weight buffers failed here (rc {proc.returncode}); "
            "timed with plain CPU buffers"
        )
    return None, f"the one-layer model failed to run (rc {proc.returncode})"


# ---------------------------------------------------------------------------- implications


def _implications(rows: list[KernelTiming]) -> list[str]:
    def find(op: str, dtype: str, m: int, n: int | None = None) -> KernelTiming | None:
        for r in rows:
            if r.op == op and r.dtype == dtype and r.m == m and (n is None or r.n == n):
                return r
        return None

    out: list[str] = []
    ff_n = max((r.n for r in rows if r.op == "matmul"), default=0)
    for m, label in ((1, "GEMV (decode)"), (max((r.m for r in rows), default=1), "GEMM (prompt)")):
        op = "layer_decode" if m == 1 else "layer_prompt"
        q8, q4, q4k, f16 = (find(op, t, m) for t in ("Q8_0", "Q4_0", "Q4_K_M", "F16"))
        if q8 and q4:
            out.append(_compare(f"llama.cpp Q8_0 {label}", q8, "Q4_0", q4))
        if q8 and q4k:
            out.append(_compare(f"llama.cpp Q8_0 {label}", q8, "Q4_K_M", q4k))
        if f16 and q8:
            out.append(_compare(f"llama.cpp F16 {label}", f16, "Q8_0", q8))
        i8, nf4, fp32, bf16 = (find("matmul", t, m, ff_n) for t in ("int8", "nf4", "fp32", "bf16"))
        if i8 and nf4:
            out.append(_compare(f"torch INT8 {label}", i8, "4-bit (bnb nf4)", nf4))
        if fp32 and bf16:
            out.append(_compare(f"torch BF16 {label}", bf16, "FP32", fp32))
        if fp32 and nf4:
            out.append(_compare(f"bnb nf4 {label}", nf4, "FP32", fp32))
    crashed = sorted({r.dtype for r in rows if r.note and "repacked" in r.note})
    if crashed:
        out.append(
            "llama.cpp's repacked (extra) weight buffers crashed on a prompt batch for "
            f"{', '.join(crashed)} here; those timings use plain CPU buffers (load models with "
            "use_extra_bufts off on this machine)"
        )
    dec = [r for r in rows if r.op == "layer_decode"]
    if dec:
        best = max(dec, key=lambda r: r.gbytes_per_s)
        out.append(
            f"best llama.cpp decode streams weights at {best.gbytes_per_s:.1f} GB/s ({best.dtype})"
        )
    return out


def _compare(a_label: str, a: KernelTiming, b_label: str, b: KernelTiming) -> str:
    ratio = b.seconds / a.seconds
    word = "faster" if ratio >= 1 else "slower"
    factor = ratio if ratio >= 1 else 1 / ratio
    return f"{a_label} is {factor:.2f}x {word} than {b_label} here (n={a.n}, k={a.k})"


def microbench_kernels(args: Args) -> Result:
    """Time matmuls (GEMV M=1 for decode, GEMM M=prompt batch) at the model's layer shapes for
    each data type (torch fp32/bf16/fp16, int8 ``_int_mm``, bitsandbytes nf4) and llama.cpp's own
    kernels through a one-layer GGUF per weight type (F16, Q8_0, Q4_0, Q4_K_M), plus softmax, for
    each thread count. ``implications`` states measured ratios such as whether INT8 beats 4-bit
    here; ``rows`` hold seconds, GFLOP/s and weight GB/s per case."""
    hidden, ff = _shapes(args)
    if hidden % 32 or ff % 32:
        raise HaqaError(f"hidden ({hidden}) and intermediate ({ff}) must be multiples of 32")
    rows: list[KernelTiming] = []
    skipped: list[str] = []
    for threads in args.threads:
        rows += _torch_rows(args, hidden, ff, threads, skipped)
        if args.llama_types:
            rows += _llama_rows(args, hidden, ff, threads, skipped)
    return Result(
        hidden=hidden,
        intermediate=ff,
        rows=rows,
        implications=_implications(rows),
        skipped=sorted(set(skipped)),
    )
