"""Prompt-processing (pp) and generation (tg) tokens/s of a GGUF model under llama.cpp, measured
the way llama.cpp's ``llama-bench`` measures them (tools/llama-bench/llama-bench.cpp):

* each test (pp, then tg) gets a fresh context and a ggml thread pool attached to it (llama-bench
  does the same; without one, ggml creates and joins threads for every graph, which a server does
  not do either);
* one warm-up run (the whole pp test; one tg token), then ``repetitions`` timed runs, the KV cache
  cleared before each; with ``target_rsd`` set (haqa's addition, for a noisy machine), further runs
  until the relative standard deviation of the samples is at most that, or ``max_repetitions``;
* pp: ``n_prompt`` random token ids (BOS first when the model adds one) decoded in ``n_batch``-sized
  ``llama_decode`` calls, then ``llama_synchronize``; tg: ``n_gen`` single-token decodes, each
  followed by ``llama_synchronize``;
* samples_ts = tokens / seconds per repetition; avg_ts and stddev_ts (sample stddev) over them.

Each benchmark runs in a child process (``python -m haqa.tools.benchmark_llamacpp``) that reports
its own peak resident memory (``VmHWM`` of ``/proc/self/status``: model pages touched through
mmap, KV cache, compute buffers, plus the interpreter's ~0.1 GB), so one model's pages never count
against the next benchmark.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, model_validator

from haqa.errors import HaqaError
from haqa.procs import child_env, die_with_parent
from haqa.quant import KV_CACHE_TYPES
from haqa.schemas import RuntimeSettings
from haqa.tools.gguf_header import read_gguf_header

_RESULT_TAG = "HAQA_BENCH_RESULT "


class Args(BaseModel):
    """Benchmark a GGUF file's pp and tg tokens/s with the given llama.cpp runtime settings."""

    model: Path = Field(description="the GGUF file")
    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings)
    n_prompt: int = Field(512, ge=0, le=1_048_576, description="prompt tokens of the pp test")
    n_gen: int = Field(128, ge=0, le=1_048_576, description="generated tokens of the tg test")
    repetitions: int = Field(5, ge=1, le=1000, description="timed runs per test")
    target_rsd: float | None = Field(
        None, gt=0, lt=1, description="repeat until stddev/mean <= this (None: llama-bench's fixed)"
    )
    max_repetitions: int = Field(
        20, ge=1, le=1000, description="cap on timed runs per test when target_rsd is set"
    )
    bandwidth_bytes_per_s: float | None = Field(
        None, gt=0, description="measured memory bandwidth, for roofline_efficiency"
    )

    @model_validator(mode="after")
    def _check(self) -> Args:
        if self.n_prompt == 0 and self.n_gen == 0:
            raise ValueError("n_prompt and n_gen are both 0: nothing to measure")
        return self


class TestResult(BaseModel):
    """One row of llama-bench's output: a pp test (n_gen=0) or a tg test (n_prompt=0)."""

    test: str = Field(description="pp<n> or tg<n>, as llama-bench labels it")
    n_prompt: int
    n_gen: int
    avg_ns: int
    stddev_ns: int
    avg_ts: float = Field(description="mean tokens/s over the repetitions")
    stddev_ts: float = Field(description="sample standard deviation of tokens/s")
    rsd: float = Field(0.0, description="stddev_ts / avg_ts: the relative standard deviation")
    samples_ns: list[int]
    samples_ts: list[float]
    host_ns_per_token: float | None = Field(
        None,
        description="tg: median ns per token spent outside llama_decode/llama_synchronize, "
        "i.e. haqa's own loop",
    )


class Result(BaseModel):
    model_filename: str
    model_type: str = Field(description="llama.cpp's model description (arch size type)")
    model_size: int = Field(description="bytes of weights (llama_model_size)")
    model_n_params: int
    n_batch: int
    n_ubatch: int
    n_threads: int
    n_threads_batch: int
    type_k: str
    type_v: str
    flash_attn: bool
    n_gpu_layers: int
    use_mmap: bool
    n_ctx: int
    n_prompt: int
    n_gen: int
    repetitions: int = Field(description="timed runs asked for (at least this many were done)")
    target_rsd: float | None = None
    tests: list[TestResult]
    prefill_tps: float | None = Field(description="avg_ts of the pp test")
    decode_tps: float | None = Field(description="avg_ts of the tg test")
    peak_rss_bytes: int = Field(description="peak resident memory of the benchmark process")
    bytes_per_token: float = Field(
        description="bytes read per generated token: weights minus the unread rows of the token "
        "embedding, plus the KV cache at the tg test's mean position"
    )
    roofline_efficiency: float | None = Field(
        None, description="decode_tps × bytes_per_token ÷ bandwidth (1.0 = memory-bound peak)"
    )
    time_s: float


# -- statistics as llama-bench computes them -----------------------------------------------------


def avg(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def stdev(values: list[float]) -> float:
    """llama-bench's ``stdev``: sample standard deviation, 0 for fewer than two values."""
    n = len(values)
    if n <= 1:
        return 0.0
    mean = avg(values)
    sq = sum(v * v for v in values)
    return math.sqrt(max(0.0, sq / (n - 1) - mean * mean * n / (n - 1)))


def rsd(values: list[float]) -> float:
    """Relative standard deviation (0 for fewer than two values)."""
    mean = avg(values)
    return stdev(values) / mean if mean > 0 else 0.0


def needs_more(samples_ns: list[int], *, minimum: int, target_rsd: float | None, cap: int) -> bool:
    """Whether another timed run is due: fewer than ``minimum``, or (with a target) the samples'
    relative standard deviation above it and fewer than ``cap`` runs so far."""
    if len(samples_ns) < minimum:
        return True
    if target_rsd is None or len(samples_ns) >= cap:
        return False
    if len(samples_ns) < 2:
        return True  # one sample says nothing about the spread
    return rsd([1.0 / t for t in samples_ns]) > target_rsd


def make_test_result(name: str, n_prompt: int, n_gen: int, samples_ns: list[int]) -> TestResult:
    n_tokens = n_prompt + n_gen
    ts = [1e9 * n_tokens / t for t in samples_ns]
    ns = [float(t) for t in samples_ns]
    return TestResult(
        test=name,
        n_prompt=n_prompt,
        n_gen=n_gen,
        avg_ns=int(avg(ns)),
        stddev_ns=int(stdev(ns)),
        avg_ts=avg(ts),
        stddev_ts=stdev(ts),
        rsd=rsd(ts),
        samples_ns=samples_ns,
        samples_ts=ts,
    )


# -- validation and the bytes-per-token model ----------------------------------------------------


def validate(args: Args) -> None:
    """Everything that can be checked before a child process starts; HaqaError, one line."""
    from haqa.tools.export_gguf import check_gguf

    check_gguf(Path(args.model))
    rt = args.runtime
    cores = os.cpu_count() or 1
    for name, n in (("n_threads", rt.n_threads), ("n_threads_batch", rt.threads_batch)):
        if n > cores:
            raise HaqaError(f"{name}={n} is more than this machine's {cores} logical cores")
    if rt.n_ubatch > rt.n_batch:
        raise HaqaError(f"n_ubatch ({rt.n_ubatch}) must be <= n_batch ({rt.n_batch})")
    if rt.n_ctx < max(args.n_prompt, args.n_gen):
        raise HaqaError(
            f"n_ctx={rt.n_ctx} is smaller than the test (n_prompt={args.n_prompt}, "
            f"n_gen={args.n_gen}): raise n_ctx"
        )


def bytes_per_token(model: Path, runtime: RuntimeSettings, n_gen: int) -> float:
    """Bytes read to generate one token. Weights: every tensor's bytes, except that only one row
    of the token-embedding table is read (unless the output layer reuses it). KV cache: K and V of
    every layer at the tg test's mean position (n_gen / 2), at type_k / type_v."""
    header = read_gguf_header(model)
    tensors = {t.name: t for t in header.tensors}
    weights = float(sum(t.n_bytes for t in header.tensors))
    emb = tensors.get("token_embd.weight")
    if emb is not None and "output.weight" in tensors:
        n_rows = emb.shape[-1] if len(emb.shape) > 1 else 1
        weights -= emb.n_bytes * (1 - 1 / max(n_rows, 1))

    arch = header.str_field("general.architecture") or "llama"
    n_layer = header.int_field(f"{arch}.block_count") or 0
    n_embd = header.int_field(f"{arch}.embedding_length") or 0
    # Some architectures store head counts per layer (an array): the first layer's, as before.
    n_head = header.int_field(f"{arch}.attention.head_count", first_of_array=True) or 1
    n_head_kv = header.int_field(f"{arch}.attention.head_count_kv", first_of_array=True) or n_head
    head_k = header.int_field(f"{arch}.attention.key_length") or n_embd // n_head
    head_v = header.int_field(f"{arch}.attention.value_length") or n_embd // n_head
    per_cell = (
        n_layer
        * n_head_kv
        * (head_k * KV_CACHE_TYPES[runtime.type_k][1] + head_v * KV_CACHE_TYPES[runtime.type_v][1])
    )
    return weights + per_cell * (n_gen / 2)


# -- the measurement (runs in the child process) -------------------------------------------------


class _ThreadpoolParams(ctypes.Structure):
    # ggml.h ``struct ggml_threadpool_params`` (GGML_MAX_N_THREADS = 512).
    _fields_ = [
        ("cpumask", ctypes.c_bool * 512),
        ("n_threads", ctypes.c_int),
        ("prio", ctypes.c_int),
        ("poll", ctypes.c_uint32),
        ("strict_cpu", ctypes.c_bool),
        ("paused", ctypes.c_bool),
    ]


def _ggml_threadpool_api(llama_cpp: Any) -> tuple[Any, Any, Any, Any]:
    """``ggml_threadpool_params_default``, ``_new``, ``_free`` and ``llama_attach_threadpool``:
    llama-cpp-python does not bind them, the shared libraries it loaded export them."""
    lib_dir = Path(llama_cpp.__file__).parent / "lib"
    base = ctypes.CDLL(str(lib_dir / "libggml-base.so"))
    cpu = ctypes.CDLL(str(lib_dir / "libggml-cpu.so"))
    llama = llama_cpp.llama_cpp._lib
    base.ggml_threadpool_params_default.argtypes = [ctypes.c_int]
    base.ggml_threadpool_params_default.restype = _ThreadpoolParams
    cpu.ggml_threadpool_new.argtypes = [ctypes.POINTER(_ThreadpoolParams)]
    cpu.ggml_threadpool_new.restype = ctypes.c_void_p
    cpu.ggml_threadpool_free.argtypes = [ctypes.c_void_p]
    cpu.ggml_threadpool_free.restype = None
    llama.llama_attach_threadpool.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    llama.llama_attach_threadpool.restype = None
    return (
        base.ggml_threadpool_params_default,
        cpu.ggml_threadpool_new,
        cpu.ggml_threadpool_free,
        llama.llama_attach_threadpool,
    )


def _thread_pools(lib: Any, ctx: Any, rt: RuntimeSettings) -> list[Any]:
    """ggml thread pools attached to ``ctx`` (one per distinct thread count), as llama-bench
    attaches them: without one, ggml creates and joins threads for every graph."""
    tp_default, tp_new, _, attach = _ggml_threadpool_api(lib)
    pools = []
    for n in dict.fromkeys((rt.n_threads, rt.threads_batch)):
        params = tp_default(n)  # poll=50, normal priority: llama-bench's defaults
        pools.append(tp_new(ctypes.byref(params)))
    attach(ctx, pools[0], pools[-1])
    return pools


class _Decoder:
    """The timed loops, as lean per token as llama-bench's C++ (tools/llama-bench): token ids are
    drawn (:meth:`draw`) before the clock starts, a generated token goes through one persistent
    single-token batch with llama.cpp's own positions (``llama_batch_get_one``), and nothing is
    allocated per token. Time spent outside ``llama_decode`` and ``llama_synchronize`` is
    counted per token as ``host_ns``: the overhead of driving llama.cpp from Python."""

    def __init__(self, lib: Any, model: Any, rt: RuntimeSettings) -> None:
        import numpy as np

        self.lib, self.rt = lib, rt
        vocab = lib.llama_model_get_vocab(model)
        self.n_vocab = int(lib.llama_vocab_n_tokens(vocab))
        self.bos = int(lib.llama_vocab_bos(vocab)) if lib.llama_vocab_get_add_bos(vocab) else -1
        self.rng = np.random.default_rng(0)
        cap = max(rt.n_batch, 1)
        self.tokens = (lib.llama_token * cap)()
        self.one = (lib.llama_token * 1)()
        self.host_ns = 0

    def draw(self, n: int) -> list[int]:
        """``n`` random token ids, BOS first when the model adds one; drawn outside the timing."""
        ids = [int(t) for t in self.rng.integers(0, self.n_vocab, size=n)]
        if ids and self.bos >= 0:
            ids[0] = self.bos  # the first token of a sequence, as llama-bench
        return ids

    def prompt(self, ctx: Any, ids: list[int]) -> None:
        """The prompt ``ids`` in ``n_batch``-sized calls, logits of the last token of each."""
        lib, n_prompt, done = self.lib, len(ids), 0
        while done < n_prompt:
            n = min(n_prompt - done, self.rt.n_batch)
            self.tokens[:n] = ids[done : done + n]
            if lib.llama_decode(ctx, lib.llama_batch_get_one(self.tokens, n)) != 0:
                raise RuntimeError("llama_decode failed")
            done += n
        lib.llama_synchronize(ctx)

    def generate(self, ctx: Any, ids: list[int]) -> None:
        """One single-token decode per id, each followed by ``llama_synchronize``."""
        lib, one = self.lib, self.one
        batch = lib.llama_batch_get_one(one, 1)
        decode, sync, clock = lib.llama_decode, lib.llama_synchronize, time.perf_counter_ns
        inside = 0
        start = clock()
        for token in ids:
            one[0] = token
            t0 = clock()
            if decode(ctx, batch) != 0:
                raise RuntimeError("llama_decode failed")
            sync(ctx)
            inside += clock() - t0
        self.host_ns = clock() - start - inside


def measure(args: Args) -> dict[str, Any]:
    """Run the pp and tg tests in this process; the llama-bench fields, without peak RSS."""
    from haqa.tools.llama_session import llama, load_model, new_context

    lib, rt = llama(), args.runtime
    model = load_model(Path(args.model), rt)
    desc = ctypes.create_string_buffer(128)
    lib.llama_model_desc(model, desc, 128)
    decoder = _Decoder(lib, model, rt)
    _, _, tp_free, _ = _ggml_threadpool_api(lib)
    tests: list[dict[str, Any]] = []
    for kind, n_prompt, n_gen in (("pp", args.n_prompt, 0), ("tg", 0, args.n_gen)):
        if n_prompt + n_gen == 0:
            continue
        ctx = new_context(model, rt)
        pools = _thread_pools(lib, ctx, rt)
        memory = lib.llama_get_memory(ctx)
        run = decoder.prompt if kind == "pp" else decoder.generate
        try:
            lib.llama_memory_clear(memory, False)
            run(ctx, decoder.draw(n_prompt if kind == "pp" else 1))  # warm-up: pp run, 1 token
            samples: list[int] = []
            host: list[int] = []
            cap = max(args.repetitions, args.max_repetitions)
            while needs_more(
                samples, minimum=args.repetitions, target_rsd=args.target_rsd, cap=cap
            ):
                ids = decoder.draw(n_prompt or n_gen)  # before the clock, not on it
                lib.llama_memory_clear(memory, False)
                t0 = time.perf_counter_ns()
                run(ctx, ids)
                samples.append(time.perf_counter_ns() - t0)
                host.append(decoder.host_ns)
        finally:
            lib.llama_free(ctx)
            for pool in pools:
                tp_free(pool)
        name = f"pp{n_prompt}" if kind == "pp" else f"tg{n_gen}"
        result = make_test_result(name, n_prompt, n_gen, samples)
        if kind == "tg":
            result.host_ns_per_token = sorted(host)[len(host) // 2] / n_gen
        tests.append(result.model_dump())
    out = {
        "model_type": desc.value.decode(errors="replace"),
        "model_size": int(lib.llama_model_size(model)),
        "model_n_params": int(lib.llama_model_n_params(model)),
        "tests": tests,
    }
    lib.llama_model_free(model)
    return out


def _run_child(args: Args) -> tuple[dict[str, Any], int]:
    """Measure in a child process; its result and its peak RSS in bytes.

    The child dies with this process (``haqa.procs``): a benchmark left running by a killed run
    would take the cores from the next run's measurements. It stays in this process's group (no
    new session), so a trial worker's group, killed as a whole, includes it."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "haqa.tools.benchmark_llamacpp"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    # RUSAGE_CHILDREN would be a maximum over every child so far; the child reports its own.
    out, err = proc.communicate(args.model_dump_json())
    if proc.returncode != 0:
        lines = [ln for ln in err.splitlines() if ln.strip()]
        raise RuntimeError(f"benchmark process failed: {lines[-1] if lines else proc.returncode}")
    for line in out.splitlines():
        if line.startswith(_RESULT_TAG):
            data = json.loads(line[len(_RESULT_TAG) :])
            return data, int(data.pop("peak_rss_bytes"))
    raise RuntimeError("benchmark process printed no result")


def benchmark_llamacpp(args: Args) -> Result:
    """Measure prompt processing (pp) and generation (tg) tokens/s of a GGUF model with llama.cpp
    on this machine, as llama-bench does (warm-up, repetitions, mean ± stddev), plus peak memory,
    bytes read per generated token and, given the memory bandwidth, the roofline efficiency."""
    t0 = time.perf_counter()
    validate(args)
    data, peak_rss = _run_child(args)
    rt = args.runtime
    tests = [TestResult(**t) for t in data["tests"]]
    pp = next((t.avg_ts for t in tests if t.n_prompt > 0), None)
    tg = next((t.avg_ts for t in tests if t.n_gen > 0), None)
    bpt = bytes_per_token(Path(args.model), rt, args.n_gen)
    roof = None
    if tg is not None and args.bandwidth_bytes_per_s:
        roof = tg * bpt / args.bandwidth_bytes_per_s
    return Result(
        model_filename=str(args.model),
        model_type=data["model_type"],
        model_size=data["model_size"],
        model_n_params=data["model_n_params"],
        n_batch=rt.n_batch,
        n_ubatch=rt.n_ubatch,
        n_threads=rt.n_threads,
        n_threads_batch=rt.threads_batch,
        type_k=rt.type_k,
        type_v=rt.type_v,
        flash_attn=rt.flash_attn,
        n_gpu_layers=rt.n_gpu_layers,
        use_mmap=rt.use_mmap,
        n_ctx=rt.n_ctx,
        n_prompt=args.n_prompt,
        n_gen=args.n_gen,
        repetitions=args.repetitions,
        target_rsd=args.target_rsd,
        tests=tests,
        prefill_tps=pp,
        decode_tps=tg,
        peak_rss_bytes=peak_rss,
        bytes_per_token=bpt,
        roofline_efficiency=roof,
        time_s=time.perf_counter() - t0,
    )


def _peak_rss_bytes() -> int:
    """This process's peak RSS. VmHWM belongs to the address space made by exec; ru_maxrss would
    not do on Linux, where it carries over the parent's peak across fork and exec."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _child_main() -> None:
    die_with_parent()  # first: a benchmark never outlives the process that asked for it
    args = Args.model_validate_json(sys.stdin.read())
    data = measure(args)
    data["peak_rss_bytes"] = _peak_rss_bytes()
    print(_RESULT_TAG + json.dumps(data), flush=True)


if __name__ == "__main__":
    _child_main()
