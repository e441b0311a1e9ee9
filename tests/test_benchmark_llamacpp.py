"""The llama-bench-style benchmark: real measurements on the tiny model, llama-bench's fields."""

from __future__ import annotations

import os
import statistics
from pathlib import Path

import pytest
from pydantic import ValidationError

from haqa.errors import HaqaError
from haqa.schemas import RuntimeSettings
from haqa.tools.benchmark_llamacpp import Args, benchmark_llamacpp, stdev
from haqa.tools.export_gguf import Args as ExportArgs
from haqa.tools.export_gguf import export_gguf


@pytest.fixture()
def tiny_q8(tiny_model: Path) -> Path:
    return export_gguf(ExportArgs(model=tiny_model, quant_type="Q8_0")).gguf_path


@pytest.mark.slow
def test_benchmark_returns_llama_bench_rows(tiny_q8: Path) -> None:
    rt = RuntimeSettings(n_threads=1, n_ctx=64)
    r = benchmark_llamacpp(
        Args(
            model=tiny_q8,
            runtime=rt,
            n_prompt=32,
            n_gen=8,
            repetitions=3,
            bandwidth_bytes_per_s=10e9,
        )
    )
    assert [t.test for t in r.tests] == ["pp32", "tg8"]
    for t in r.tests:
        assert len(t.samples_ns) == len(t.samples_ts) == 3
        assert all(ts > 0 for ts in t.samples_ts)
        assert t.avg_ts == pytest.approx(statistics.fmean(t.samples_ts))
        assert t.stddev_ts == pytest.approx(statistics.stdev(t.samples_ts), rel=1e-6, abs=1e-6)
    assert r.prefill_tps == r.tests[0].avg_ts and r.decode_tps == r.tests[1].avg_ts
    assert r.model_size > 0 and r.model_n_params > 0 and "llama" in r.model_type.lower()
    assert (r.n_threads, r.n_batch, r.n_ubatch, r.type_k, r.flash_attn) == (
        1,
        2048,
        512,
        "f16",
        False,
    )
    assert 0 < r.bytes_per_token <= r.model_size * 1.5
    assert r.peak_rss_bytes > r.model_size
    assert r.roofline_efficiency == pytest.approx(r.decode_tps * r.bytes_per_token / 10e9)


def test_stdev_is_llama_benchs_sample_stddev() -> None:
    assert stdev([1.0]) == 0.0
    assert stdev([2.0, 4.0, 9.0]) == pytest.approx(statistics.stdev([2.0, 4.0, 9.0]))


def test_bad_inputs_are_haqa_errors(tiny_q8: Path, tmp_path: Path) -> None:
    text = tmp_path / "x.gguf"
    text.write_text("not a model")
    with pytest.raises(HaqaError, match="not a GGUF"):
        benchmark_llamacpp(Args(model=text))
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny_q8.read_bytes()[:5000])
    with pytest.raises(HaqaError, match="truncated"):
        benchmark_llamacpp(Args(model=cut))
    too_many = (os.cpu_count() or 1) + 1
    with pytest.raises(HaqaError, match="logical cores"):
        benchmark_llamacpp(Args(model=tiny_q8, runtime=RuntimeSettings(n_threads=too_many)))
    with pytest.raises(HaqaError, match="n_ctx"):
        benchmark_llamacpp(Args(model=tiny_q8, runtime=RuntimeSettings(n_ctx=64), n_prompt=512))
    with pytest.raises(ValidationError, match="n_ubatch"):
        RuntimeSettings(n_batch=256, n_ubatch=512)
