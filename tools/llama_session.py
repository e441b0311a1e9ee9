"""The one place that opens a llama.cpp model and context from haqa's settings.

Every tool that runs llama.cpp (the benchmark, the log-likelihood scorer, the memory measurement,
the kernel microbenchmarks, including the code they run in child processes) loads through here, so
a setting means the same thing in each of them: the load mode, the extra (repacked) buffer types,
the K/V cache types and flash attention, threads and batches.

A support module for the tools, not a tool: plain functions over llama-cpp-python's low-level API,
imported inside the functions that need it (``haqa --help`` stays fast). It imports no pydantic:
the memory measurement's child process loads through it, and what that child imports is part of
the peak it measures. Settings are read by attribute (:class:`LlamaSettings`), which
``RuntimeSettings`` and the child's :class:`ChildSettings` both have.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from haqa.errors import HaqaError
from haqa.quant import KV_CACHE_TYPES


class LlamaSettings(Protocol):
    """What a model load and a context read from haqa's ``RuntimeSettings``."""

    @property
    def n_ctx(self) -> int: ...
    @property
    def n_batch(self) -> int: ...
    @property
    def n_ubatch(self) -> int: ...
    @property
    def n_threads(self) -> int: ...
    @property
    def threads_batch(self) -> int: ...
    @property
    def type_k(self) -> str: ...
    @property
    def type_v(self) -> str: ...
    @property
    def flash_attn(self) -> bool: ...
    @property
    def use_mmap(self) -> bool: ...
    @property
    def use_mlock(self) -> bool: ...
    @property
    def n_gpu_layers(self) -> int: ...


class KvSettings(Protocol):
    """A scorer's K/V cache (``KvCacheSettings``): flash_attn None leaves it to llama.cpp."""

    @property
    def type_k(self) -> str: ...
    @property
    def type_v(self) -> str: ...
    @property
    def flash_attn(self) -> bool | None: ...


@dataclass(frozen=True)
class ChildSettings:
    """``RuntimeSettings``' fields as plain values, for a child process that must stay lean
    (built from ``RuntimeSettings.model_dump()`` in the parent, validated there)."""

    n_ctx: int
    n_batch: int
    n_ubatch: int
    n_threads: int
    n_threads_batch: int | None
    type_k: str
    type_v: str
    flash_attn: bool
    use_mmap: bool
    use_mlock: bool
    n_gpu_layers: int

    @property
    def threads_batch(self) -> int:
        return self.n_threads_batch or self.n_threads


def extra_bufts_safe() -> bool:
    """Whether llama.cpp may repack weights into its extra CPU buffer types. On CPUs with AMX the
    first extra type is AMX, and with the llama.cpp that llama-cpp-python 0.3.36 vendors its
    repacked quantized weights crash ``llama_decode`` (segfault, seen on a Sapphire Rapids VM), so
    haqa turns the extra types off there (the fidelity benchmark passes ``--repack 0`` to match)."""
    try:
        with open("/proc/cpuinfo") as f:
            return " amx_tile" not in f.read()
    except OSError:
        return True


def quiet_llama_cpp() -> None:
    """Route llama.cpp's own log lines to llama-cpp-python's logger at ERROR level: a quantize or
    a model load would otherwise print hundreds of lines to stderr."""
    import logging

    import llama_cpp._logger  # noqa: F401  (installs the callback that honours the level)

    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)


def llama() -> Any:
    """llama-cpp-python's low-level module, its log silenced and its backend initialised."""
    import llama_cpp

    quiet_llama_cpp()
    llama_cpp.llama_backend_init()
    return llama_cpp


def _load_mode(lib: Any, rt: LlamaSettings) -> int:
    if rt.use_mmap:
        return int(lib.LLAMA_LOAD_MODE_MMAP_MLOCK if rt.use_mlock else lib.LLAMA_LOAD_MODE_MMAP)
    return int(lib.LLAMA_LOAD_MODE_MLOCK if rt.use_mlock else lib.LLAMA_LOAD_MODE_NONE)


def load_model(path: Path, rt: LlamaSettings, *, extra_bufts: bool | None = None) -> Any:
    """Load a GGUF with the settings' GPU layers and load mode; ``extra_bufts`` None means
    :func:`extra_bufts_safe`. A file llama.cpp cannot load is a HaqaError."""
    lib = llama()
    mparams = lib.llama_model_default_params()
    mparams.n_gpu_layers = rt.n_gpu_layers
    mparams.load_mode = _load_mode(lib, rt)
    mparams.use_extra_bufts = extra_bufts_safe() if extra_bufts is None else extra_bufts
    model = lib.llama_model_load_from_file(str(path).encode(), mparams)
    if not model:
        raise HaqaError(
            f"llama.cpp could not load {path}: is it a complete GGUF of a model it runs?"
        )
    return model


def check_loadable(path: Path) -> None:
    """Whether llama.cpp runs this GGUF's architecture and reads its vocabulary (the weights are
    not loaded): a model it cannot run is a HaqaError before a run stores anything."""
    lib = llama()
    mparams = lib.llama_model_default_params()
    mparams.vocab_only = True
    model = lib.llama_model_load_from_file(str(path).encode(), mparams)
    if not model:
        raise HaqaError(
            f"llama.cpp cannot load {path} (an architecture or tokenizer it does not know?): "
            "pass a GGUF of a model llama.cpp runs"
        )
    lib.llama_model_free(model)


def new_context(
    model: Any, rt: LlamaSettings, kv: KvSettings | None = None, *, eval_callback: Any = None
) -> Any:
    """A context with the settings' size, batches, threads, K/V cache types and flash attention.
    ``kv`` (a scorer's) overrides the cache types and flash attention; its flash_attn None leaves
    the choice to llama.cpp. ``eval_callback`` (a ``ggml_backend_sched_eval_callback``, kept
    alive by the caller) sees the graph's tensors as they are computed (the imatrix)."""
    lib = llama()
    cparams = lib.llama_context_default_params()
    cparams.n_ctx = rt.n_ctx
    cparams.n_batch = rt.n_batch
    cparams.n_ubatch = rt.n_ubatch
    cparams.n_threads = rt.n_threads
    cparams.n_threads_batch = rt.threads_batch
    type_k, type_v = (kv.type_k, kv.type_v) if kv else (rt.type_k, rt.type_v)
    flash: bool | None = kv.flash_attn if kv else rt.flash_attn
    cparams.type_k = KV_CACHE_TYPES[type_k][0]
    cparams.type_v = KV_CACHE_TYPES[type_v][0]
    if flash is not None:
        cparams.flash_attn_type = (
            lib.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash else lib.LLAMA_FLASH_ATTN_TYPE_DISABLED
        )
    if eval_callback is not None:
        cparams.cb_eval = eval_callback
        cparams.cb_eval_user_data = None
    ctx = lib.llama_init_from_model(model, cparams)
    if not ctx:
        raise HaqaError(
            f"llama.cpp could not create a {rt.n_ctx}-token context with a {type_k}/{type_v} "
            "K/V cache: lower n_ctx or use f16 caches"
        )
    return ctx


def tokenize(vocab: Any, text: str) -> list[int]:
    """``text`` in a model's tokens, with its special tokens (BOS) added as the model asks."""
    lib = llama()
    raw = text.encode()
    n_max = len(raw) + 8
    buf = (lib.llama_token * n_max)()
    n = lib.llama_tokenize(vocab, raw, len(raw), buf, n_max, True, False)
    if n < 0:  # buffer too small: -n is the size needed
        buf = (lib.llama_token * -n)()
        n = lib.llama_tokenize(vocab, raw, len(raw), buf, -n, True, False)
    return list(buf[:n])
