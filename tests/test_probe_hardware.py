"""The hardware probe: flags that agree with llama.cpp's own detection, a stable fingerprint, a
cache that a re-measure bypasses, and a bandwidth that agrees with an independent measurement."""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import statistics
from pathlib import Path
from types import ModuleType

import pytest

from haqa.cli import main
from haqa.tools.probe_hardware import ISA_FLAGS, Args, probe_hardware


def test_flags_agree_with_llama_cpp_detection() -> None:
    profile = probe_hardware(Args(measure_bandwidth=False, use_cache=False))
    assert set(profile.flags) == set(ISA_FLAGS)
    assert profile.logical_cores == os.cpu_count()
    assert 1 <= profile.physical_cores <= profile.logical_cores
    assert profile.ram_total_bytes >= profile.ram_available_bytes > 0
    info = profile.llama_cpp_system_info or ""
    # llama.cpp detects the ISA itself at run time; the probe must not contradict it.
    if platform.machine() in ("x86_64", "AMD64") and "AVX2 = " in info:
        assert profile.flags["avx2"] == ("AVX2 = 1" in info)
        assert profile.flags["fma"] == ("FMA = 1" in info)
        assert profile.flags["avx512_vnni"] == ("AVX512_VNNI = 1" in info)
        assert profile.flags["amx_int8"] == ("AMX_INT8 = 1" in info)


def test_fingerprint_is_stable_and_the_probe_is_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HAQA_HOME", str(tmp_path))
    small = 64 * 1024 * 1024
    first = probe_hardware(Args(bandwidth_seconds=0.2, bandwidth_buffer_bytes=small))
    again = probe_hardware(Args(bandwidth_seconds=0.2, bandwidth_buffer_bytes=small))
    assert len(first.fingerprint) == 12
    assert (tmp_path / "probe" / f"{first.fingerprint}.json").is_file()
    assert not first.from_cache and again.from_cache
    assert again.bandwidth == first.bandwidth
    fresh = probe_hardware(
        Args(bandwidth_seconds=0.2, bandwidth_buffer_bytes=small, remeasure=True)
    )
    assert not fresh.from_cache and fresh.fingerprint == first.fingerprint
    assert fresh.probed_at > first.probed_at


def _stream_reference() -> ModuleType:
    """The independent read lives with its benchmark (bench/stream_bandwidth.py)."""
    path = Path(__file__).resolve().parents[1] / "bench" / "stream_bandwidth.py"
    spec = importlib.util.spec_from_file_location("stream_bandwidth", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_bandwidth_agrees_with_an_independent_stream_read() -> None:
    """The probe against a separately written kernel (uint64 max, not the probe's uint64 min)
    that is bandwidth-bound here (checked: its in-L2 rate per thread is well above the all-core
    figure per thread), with the same statistic (median round), compared pair by pair: five
    half-second readings of each, adjacent in time, the order alternating, and the median of the
    five ratios held to 0.7-1.3.

    Why pairs and not the median of each side: a virtual machine's memory bandwidth itself moves
    between states that last seconds (a 2-vCPU Zen 5 guest here read 48 then 65 GB/s every few
    seconds, one buffer, one process, nothing else running), so two readings seconds apart can
    differ by 35% while both are right; two adjacent half-second readings mostly fall in one
    state, and a flip between them moves one ratio of five, not the median. Other work that takes
    a core for a moment likewise spoils one pair, not the verdict."""
    ref = _stream_reference()
    threads = os.cpu_count() or 1
    size = 1024**3
    readings = ref.paired_readings(size, threads, seconds=0.5, pairs=5)
    for ours, _ in readings:
        assert ours.threads == threads and ours.buffer_bytes == size
        assert ours.in_cache_bytes_per_s is not None
        assert ours.in_cache_bytes_per_s > 1.5 * ours.read_bytes_per_s / threads
    reference = readings[-1][1]
    assert ref.reference_in_cache_rate() > 1.5 * reference / threads, "reference not memory-bound"
    ratios = [ours.read_bytes_per_s / theirs for ours, theirs in readings]
    assert 0.7 <= statistics.median(ratios) <= 1.3, ratios


def test_cli_probe_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["probe", "--json", "--no-bandwidth"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["fingerprint"] and "avx2" in data["flags"]
