"""Kernel microbenchmarks: every data type the analyst compares is timed at the model's shapes,
and the implications it reads are computed from those rows."""

from __future__ import annotations

from pathlib import Path

import pytest

from haqa.tools.estimate_memory import read_shape
from haqa.tools.microbench_kernels import Args, microbench_kernels, write_one_layer_gguf


def test_one_layer_gguf_has_the_requested_shapes(tmp_path: Path) -> None:
    path = tmp_path / "layer.gguf"
    write_one_layer_gguf(path, hidden=512, ff=1536)
    shape = read_shape(path)
    assert (shape.n_layer, shape.n_embd, shape.n_ff) == (1, 512, 1536)
    names = {t.name for t in shape.tensors}
    assert {"blk.0.ffn_down.weight", "blk.0.attn_q.weight", "output.weight"} <= names


@pytest.mark.slow
def test_microbench_times_every_type_at_the_model_shapes(tiny_model: Path) -> None:
    result = microbench_kernels(Args(model=tiny_model, threads=[1], repeats=2))
    assert (result.hidden, result.intermediate) == (256, 768)
    matmul = {(r.dtype, r.m) for r in result.rows if r.op == "matmul"}
    for dtype in ("fp32", "bf16", "int8", "nf4"):
        assert (dtype, 1) in matmul or any(dtype in s for s in result.skipped)
        assert (dtype, 128) in matmul or any(dtype in s for s in result.skipped)
    layers = {(r.dtype, r.op) for r in result.rows if r.backend == "llama.cpp"}
    for qtype in ("F16", "Q8_0", "Q4_0", "Q4_K_M"):
        assert {(qtype, "layer_decode"), (qtype, "layer_prompt")} <= layers
    assert any(r.op == "softmax" for r in result.rows)
    assert all(r.seconds > 0 and r.gflops > 0 for r in result.rows)
    assert any("Q8_0" in line and "Q4_0" in line for line in result.implications)
    assert any("nf4" in line for line in result.implications)
