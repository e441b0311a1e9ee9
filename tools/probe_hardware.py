"""Probe the machine: CPU, ISA flags, caches, RAM, measured memory bandwidth, llama.cpp's build
features and CUDA GPUs.

Decode speed is bound by memory bandwidth, so the bandwidth is *measured* (a STREAM-like read with
one thread per logical core, each reading its own slice of a buffer far larger than the last-level
cache), not looked up. The result is cached per hardware fingerprint under ``$HAQA_HOME/probe/``
because the measurement takes seconds.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import statistics
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

from haqa.paths import haqa_home

if TYPE_CHECKING:  # numpy is imported where it is used: `haqa --help` stays fast
    import numpy as np

#: The ISA features that matter for quantized kernels, as /proc/cpuinfo spells them.
ISA_FLAGS: tuple[str, ...] = (
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
    "avx_vnni",
    "neon",
    "asimd",
    "asimddp",
    "i8mm",
    "sve",
)

_MIB = 1024**2
_GIB = 1024**3


class Args(BaseModel):
    measure_bandwidth: bool = Field(True, description="measure the memory read bandwidth")
    bandwidth_seconds: float = Field(
        1.5, gt=0.0, le=60.0, description="time budget of the bandwidth measurement"
    )
    bandwidth_buffer_bytes: int | None = Field(
        None,
        ge=16 * _MIB,
        description="buffer read by the bandwidth kernel (default: >= 2x L3, >= 1 GiB, "
        "at most a quarter of available RAM)",
    )
    remeasure: bool = Field(False, description="ignore the cached probe and measure again")
    use_cache: bool = Field(True, description="read and write $HAQA_HOME/probe/<fingerprint>.json")


class Caches(BaseModel):
    l1d_bytes: int | None = None
    l2_bytes: int | None = None
    l3_bytes: int | None = None


class Bandwidth(BaseModel):
    read_bytes_per_s: float = Field(
        description="all-core read bandwidth the machine sustains (median round), bytes/s"
    )
    best_read_bytes_per_s: float | None = Field(None, description="the fastest round, bytes/s")
    spread: float | None = Field(None, description="(fastest - slowest round) / median")
    in_cache_bytes_per_s: float | None = Field(
        None,
        description="one thread's read kernel on a buffer in its L2: the kernel's own ceiling, "
        "to show the measured figure is the memory's",
    )
    version: int = Field(1, description="BANDWIDTH_METHOD_VERSION of the measurement")
    threads: int
    buffer_bytes: int
    repeats: int
    method: str = Field(description="how it was measured, in words")


class GpuInfo(BaseModel):
    name: str
    compute_capability: str
    total_memory_bytes: int


class HardwareProfile(BaseModel):
    """What the hardware analyst reads about this machine."""

    fingerprint: str = Field(description="stable short hash of the hardware (not of measurements)")
    cpu_model: str
    cpu_vendor: str
    arch: str
    os: str
    physical_cores: int
    logical_cores: int
    flags: dict[str, bool] = Field(description="ISA features that matter for quantized kernels")
    caches: Caches
    ram_total_bytes: int
    ram_available_bytes: int
    llama_cpp_system_info: str | None = None
    bandwidth: Bandwidth | None = None
    gpus: list[GpuInfo] = Field(default_factory=list)
    probed_at: float = Field(default_factory=time.time, description="unix time of the probe")
    from_cache: bool = False

    def summary_lines(self) -> list[str]:
        """Short lines for a prompt or a terminal."""
        on = [k for k, v in self.flags.items() if v]
        lines = [
            f"CPU: {self.cpu_model} ({self.arch}), {self.physical_cores} physical / "
            f"{self.logical_cores} logical cores",
            f"ISA: {', '.join(on) or 'none of interest'}",
            f"RAM: {self.ram_total_bytes / _GIB:.1f} GiB total, "
            f"{self.ram_available_bytes / _GIB:.1f} GiB available",
        ]
        if self.bandwidth:
            lines.append(f"memory read bandwidth: {self.bandwidth.read_bytes_per_s / 1e9:.1f} GB/s")
        lines += [f"GPU: {g.name} (sm {g.compute_capability})" for g in self.gpus]
        return lines


def _cpuinfo() -> tuple[str, str, set[str], int | None]:
    """Model name, vendor, flags and physical core count from /proc/cpuinfo (Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown", "unknown", set(), None
    model = vendor = ""
    flags: set[str] = set()
    cores: set[tuple[str, str]] = set()
    phys = core = "0"
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key in ("model name", "Model", "cpu model") and not model:
            model = value
        elif key in ("vendor_id", "CPU implementer") and not vendor:
            vendor = value
        elif key in ("flags", "Features"):
            flags |= set(value.split())
        elif key == "physical id":
            phys = value
        elif key == "core id":
            core = value
            cores.add((phys, core))
    return (
        model or platform.processor() or "unknown",
        vendor or "unknown",
        flags,
        len(cores) or None,
    )


def _darwin_flags() -> tuple[str, set[str]]:
    # macOS on Apple silicon: NEON and dot-product are architectural; sysctl names the chip.
    import subprocess

    try:
        model = subprocess.run(
            ["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True, timeout=5
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        model = "unknown"
    flags = {"neon", "asimd", "asimddp"} if platform.machine() == "arm64" else set()
    return model, flags


def _cache_sizes() -> Caches:
    base = Path("/sys/devices/system/cpu/cpu0/cache")
    out = Caches()
    for index in sorted(base.glob("index*")):
        try:
            level = (index / "level").read_text().strip()
            kind = (index / "type").read_text().strip()
            size_text = (index / "size").read_text().strip()
        except OSError:
            continue
        match = re.match(r"(\d+)([KMG]?)", size_text)
        if not match:
            continue
        size = int(match.group(1)) * {"": 1, "K": 1024, "M": _MIB, "G": _GIB}[match.group(2)]
        if level == "1" and kind == "Data":
            out.l1d_bytes = size
        elif level == "2":
            out.l2_bytes = size
        elif level == "3":
            out.l3_bytes = size
    return out


#: What a GPU torch could use leaves on Linux: the NVIDIA driver, WSL's GPU bridge, ROCm's
#: kernel driver (ROCm builds of torch answer through ``torch.cuda``), Jetson's nvgpu.
_GPU_DRIVER_PATHS = (
    "/proc/driver/nvidia", "/dev/nvidiactl", "/dev/dxg", "/dev/kfd", "/dev/nvhost-ctrl-gpu",
)  # fmt: skip


def _gpu_driver_present() -> bool:
    """Linux with none of those has no device for torch to find: the probe then skips importing
    torch, which alone takes about 3 s on a small CPU, and every trial's child process probes
    (from the cache) before it benchmarks."""
    if platform.system() != "Linux":
        return True
    return any(Path(p).exists() for p in _GPU_DRIVER_PATHS)


def _gpus() -> list[GpuInfo]:
    if not _gpu_driver_present():
        return []
    try:
        import torch
    except ImportError:
        return []
    if not torch.cuda.is_available():
        return []
    gpus = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        gpus.append(
            GpuInfo(
                name=props.name,
                compute_capability=f"{props.major}.{props.minor}",
                total_memory_bytes=int(props.total_memory),
            )
        )
    return gpus


def _llama_system_info() -> str | None:
    try:
        import llama_cpp
    except ImportError:
        return None
    info = llama_cpp.llama_print_system_info()
    text = info.decode() if isinstance(info, bytes) else str(info)
    return text.strip().rstrip("|").strip()


def default_buffer_bytes(l3_bytes: int | None, available_bytes: int) -> int:
    """Large enough to defeat the last-level cache, small enough not to crowd the machine."""
    want = max(_GIB, 2 * (l3_bytes or 0))
    return int(min(want, max(256 * _MIB, available_bytes // 4)))


#: Bump when the measurement changes: a cached profile measured another way is measured again.
BANDWIDTH_METHOD_VERSION = 3


def read_kernel(chunk: np.ndarray) -> None:
    """Read every byte of ``chunk`` once: a uint64 minimum, numpy's SIMD min/max loop (one
    compare per 8 bytes, no dependency chain). A core's read rate from memory depends on how many
    loads its loop keeps in flight, not only on whether the loop outruns memory: the wrapping
    uint64 sum used before ran 33 GB/s in L2 on this project's Xeon, "bandwidth-bound" by that
    test, yet read 8.0 GB/s a core from memory where the min/max loop reads 12.8 — the probe sat
    at 0.64-0.74 of the reference. The float32 BLAS dot before that hid two thread pools (OpenBLAS
    threads its own ``sdot``). The reference (``bench/stream_bandwidth.py``) is the maximum:
    another operation of the same loop family, written and timed separately."""
    import numpy as np

    np.minimum.reduce(chunk.view(np.uint64))


def _timed_rounds(
    slices: list[np.ndarray], seconds: float, min_rounds: int, max_rounds: int
) -> list[float]:
    """Seconds per round of every thread reading its own slice at once. The threads are started
    once and released together by a barrier each round, so thread start-up is not timed."""
    threads = len(slices)
    start = threading.Barrier(threads + 1)
    done = threading.Barrier(threads + 1)
    stop = False

    def worker(chunk: np.ndarray) -> None:
        while True:
            start.wait()
            if stop:
                return
            read_kernel(chunk)
            done.wait()

    pool = [threading.Thread(target=worker, args=(s,), daemon=True) for s in slices]
    for t in pool:
        t.start()
    rounds: list[float] = []
    deadline = time.perf_counter() + seconds
    try:
        while len(rounds) < min_rounds or (
            time.perf_counter() < deadline and len(rounds) < max_rounds
        ):
            t0 = time.perf_counter()
            start.wait()
            done.wait()
            rounds.append(time.perf_counter() - t0)
    finally:
        stop = True
        start.wait()
        for t in pool:
            t.join()
    return rounds


def in_cache_read_rate(cache_bytes: int | None) -> float:
    """Bytes/s one thread's read kernel reaches on a buffer that stays in its L2 (the compute
    ceiling of the kernel): a bandwidth far below this is the memory's, not the loop's."""
    import numpy as np

    size = max(64 * 1024, min(cache_bytes or 256 * 1024, 1024 * 1024) // 2)
    chunk = np.ones(size // 4, dtype=np.float32)
    rounds = 0
    t0 = time.perf_counter()
    while rounds < 20 or time.perf_counter() - t0 < 0.05:
        read_kernel(chunk)
        rounds += 1
    return chunk.nbytes * rounds / (time.perf_counter() - t0)


def measure_read_bandwidth(
    buffer_bytes: int, threads: int, seconds: float, *, l2_bytes: int | None = None
) -> Bandwidth:
    """All-core STREAM-like read: one thread per core, each reading its own slice of a buffer far
    larger than the last-level cache, repeated for ``seconds``.

    The figure is the *median* round, not the best: decode reads the weights for seconds on end, so
    the roofline needs the bandwidth the machine sustains. A best-of-N keeps the single fastest
    moment, and on a virtual machine whose host moves its vCPUs that moment can read 50% above
    every other round (seen on a 2-vCPU Zen 5 guest: 75 GB/s one run in four, ~50 otherwise)."""
    import numpy as np

    n = buffer_bytes // 8 * 2  # float32 elements; even, so the uint64 view covers it all
    data = np.ones(n, dtype=np.float32)  # touched by the fill, so every page is resident
    bounds = [(i * n // threads) // 2 * 2 for i in range(threads + 1)]
    slices = [data[bounds[i] : bounds[i + 1]] for i in range(threads)]
    rounds = _timed_rounds(slices, seconds, min_rounds=5, max_rounds=200)
    rates = sorted(data.nbytes / r for r in rounds)
    median = statistics.median(rates)
    return Bandwidth(
        read_bytes_per_s=median,
        best_read_bytes_per_s=rates[-1],
        spread=(rates[-1] - rates[0]) / median,
        in_cache_bytes_per_s=in_cache_read_rate(l2_bytes),
        threads=threads,
        buffer_bytes=int(data.nbytes),
        repeats=len(rounds),
        method=f"numpy uint64 min, {threads} threads each reading its own slice of a "
        f"{data.nbytes / _MIB:.0f} MiB buffer, median of {len(rounds)} rounds",
        version=BANDWIDTH_METHOD_VERSION,
    )


def _fingerprint(stable: dict[str, object]) -> str:
    # Only what identifies the hardware; nothing measured (bandwidth, free RAM) goes in.
    blob = json.dumps(stable, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def probe_dir() -> Path:
    return haqa_home() / "probe"


def _cpu_identity() -> tuple[str, str, set[str], int | None]:
    """CPU model, vendor, ISA flags and physical cores (None: unknown), corrected per platform."""
    model, vendor, cpu_flags, physical = _cpuinfo()
    if platform.system() == "Darwin":
        model, cpu_flags = _darwin_flags()
    if platform.machine() in ("aarch64", "arm64"):
        cpu_flags.add("neon")  # NEON is mandatory on AArch64; cpuinfo calls it asimd
    return model, vendor, cpu_flags, physical


def probe_hardware(args: Args | None = None) -> HardwareProfile:
    """Describe this machine for the hardware analyst: CPU model and cores, ISA flags (AVX2,
    AVX-512 VNNI/BF16, AMX, NEON dot-product, ...), cache sizes, RAM, llama.cpp's compiled
    features, CUDA GPUs, and the measured all-core memory read bandwidth (bytes/s) that bounds
    decode speed. Cached per hardware fingerprint; ``remeasure`` measures again."""
    import psutil

    args = args or Args()
    model, vendor, cpu_flags, physical = _cpu_identity()
    arch = platform.machine()
    logical = os.cpu_count() or 1
    physical = physical or psutil.cpu_count(logical=False) or logical
    mem = psutil.virtual_memory()
    gpus = _gpus()
    flags = {name: name in cpu_flags for name in ISA_FLAGS}
    base: dict[str, object] = {
        "cpu_model": model,
        "arch": arch,
        "physical_cores": physical,
        "logical_cores": logical,
        "flags": flags,
        "ram_gib": round(mem.total / _GIB),
        "gpus": sorted(g.name for g in gpus),
    }
    fingerprint = _fingerprint(base)
    cache_file = probe_dir() / f"{fingerprint}.json"
    cached = _current_cache(cache_file, args)
    if cached is not None:
        # RAM available changes run to run: report the current figure.
        return cached.model_copy(
            update={"from_cache": True, "ram_available_bytes": int(mem.available)}
        )
    caches = _cache_sizes()
    bandwidth = _bandwidth(args, caches, mem.available, logical)
    profile = HardwareProfile(
        fingerprint=fingerprint,
        cpu_model=model,
        cpu_vendor=vendor,
        arch=arch,
        os=f"{platform.system()} {platform.release()}",
        physical_cores=physical,
        logical_cores=logical,
        flags=flags,
        caches=caches,
        ram_total_bytes=int(mem.total),
        ram_available_bytes=int(mem.available),
        llama_cpp_system_info=_llama_system_info(),
        bandwidth=bandwidth,
        gpus=gpus,
    )
    if args.use_cache and bandwidth is not None:
        _write_cache(cache_file, profile)
    return profile


def _current_cache(cache_file: Path, args: Args) -> HardwareProfile | None:
    """The cached profile, unless the cache is off or bypassed, unreadable, or stale: measured
    by an older bandwidth method, or without a bandwidth where one is wanted."""
    if not (args.use_cache and not args.remeasure and cache_file.is_file()):
        return None
    try:
        cached = HardwareProfile.model_validate_json(cache_file.read_text())
    except ValueError:
        return None
    current = (
        cached.bandwidth.version == BANDWIDTH_METHOD_VERSION
        if cached.bandwidth is not None
        else not args.measure_bandwidth
    )
    return cached if current else None


def _bandwidth(args: Args, caches: Caches, available: int, logical: int) -> Bandwidth | None:
    """The measured all-core read bandwidth, or None where ``args`` turns the measurement off."""
    if not args.measure_bandwidth:
        return None
    size = args.bandwidth_buffer_bytes or default_buffer_bytes(caches.l3_bytes, available)
    return measure_read_bandwidth(size, logical, args.bandwidth_seconds, l2_bytes=caches.l2_bytes)


def _write_cache(cache_file: Path, profile: HardwareProfile) -> None:
    """Store ``profile`` as ``cache_file`` atomically: a reader never sees half a file."""
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_file.with_suffix(".tmp")
    tmp.write_text(profile.model_dump_json(indent=2))
    tmp.replace(cache_file)
