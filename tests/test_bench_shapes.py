"""The speed-study zoo models: realistic shapes, random weights, said so plainly, built
atomically."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.zoo import bench_200m_gguf

from haqa.errors import HaqaError
from haqa.zoo import bench_shapes


def test_shapes_are_the_advertised_sizes() -> None:
    assert 180e6 < bench_shapes.SHAPES["bench-200m"].n_params() < 220e6
    assert 55e6 < bench_shapes.SHAPES["bench-60m"].n_params() < 65e6
    one_b = bench_shapes.SHAPES["bench-1b"]
    # Llama-3.2-1B has 1.236B parameters with tied embeddings.
    assert abs(one_b.n_params() - 1.2358e9) / 1.2358e9 < 0.01
    assert (one_b.hidden, one_b.layers, one_b.kv_heads, one_b.vocab) == (2048, 16, 8, 128256)


def test_unknown_shape_and_missing_tokenizer_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(HaqaError, match="bench-200m"):
        bench_shapes.build("bench-7b", tmp_path / "x", tmp_path)
    with pytest.raises(HaqaError, match="tokenizer"):
        bench_shapes.build("bench-200m", tmp_path / "x", tmp_path)
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_bench_200m_is_a_loadable_random_weight_gguf(
    request: pytest.FixtureRequest, tiny_model: Path
) -> None:
    import gguf
    import llama_cpp

    path = bench_200m_gguf(request, tiny_model)
    reader = gguf.GGUFReader(str(path))
    fields = {k: reader.fields[k].contents() for k in reader.fields if not k.startswith("tok")}
    assert fields["llama.block_count"] == 12
    assert fields["llama.embedding_length"] == 1024
    assert fields["llama.attention.head_count_kv"] == 4
    assert len(reader.fields["tokenizer.ggml.tokens"].contents()) == 32000
    n_params = sum(int(t.n_elements) for t in reader.tensors)
    assert abs(n_params - bench_shapes.SHAPES["bench-200m"].n_params()) < 1e5
    meta = json.loads((path.parent / "bench_model.json").read_text())
    assert meta["random_weights"] is True
    assert "random" in (path.parent / "README.md").read_text().lower()
    # No temporary build folder or HF copy is left beside it.
    assert sorted(p.name for p in path.parent.iterdir()) == sorted(
        [path.name, "README.md", "bench_model.json"]
    )
    assert not list(path.parent.parent.glob(".bench-200m-build-*"))
    llm = llama_cpp.Llama(str(path), n_ctx=64, n_threads=2, verbose=False, logits_all=False)
    out = llm.create_completion("1 + 2 =", max_tokens=4, temperature=0.0)
    assert out["usage"]["completion_tokens"] >= 1
