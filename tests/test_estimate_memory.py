"""The memory gate: weights predicted exactly as llama.cpp quantizes them, and the whole deploy
estimate within 15% of the peak RSS measured in a real llama.cpp process; the QLoRA estimate
within 25% of a measured training run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.qlora_child import qlora_in_child
from support.zoo import bench_200m_gguf

from haqa.errors import HaqaError
from haqa.schemas import DeployConfig, FinetuneConfig
from haqa.tools.estimate_memory import (
    DeployMemoryArgs,
    FinetuneMemoryArgs,
    estimate_deploy_memory,
    estimate_finetune_memory,
    measure_deploy_peak_rss,
    read_shape,
    weights_bytes,
)
from haqa.tools.export_gguf import Args as ExportArgs
from haqa.tools.export_gguf import QuantizeArgs, export_gguf, quantize_gguf, weights_recipe
from haqa.zoo.smollm2 import Files

QUANT_TYPES = ("F16", "Q8_0", "Q4_0", "Q4_K_M")


@pytest.fixture()
def tiny_f16(tiny_model: Path) -> Path:
    return export_gguf(ExportArgs(model=tiny_model, outtype="F16", quant_type=None)).gguf_path


@pytest.mark.parametrize("quant_type", ["Q8_0", "Q4_0", "Q4_K_M", "Q5_K_M", "Q6_K"])
def test_predicted_weights_match_the_quantized_file(tiny_f16: Path, quant_type: str) -> None:
    quantized = quantize_gguf(QuantizeArgs(gguf=tiny_f16, quant_type=quant_type)).gguf_path
    actual = sum(t.n_bytes or 0 for t in read_shape(quantized).tensors)
    predicted, note = weights_bytes(read_shape(tiny_f16), quant_type)
    assert predicted == actual
    assert "predicted" in note


@pytest.mark.parametrize(
    ("quant_type", "recipe"),
    [
        ("Q4_K_M", "ffn_up_gate_down"),
        ("Q4_K_M", "sensitive_up"),
        ("Q4_0", "ends_up"),
        ("Q4_0", "output_up"),
    ],
)
def test_predicted_weights_of_a_mixed_recipe_match_the_file(
    tiny_f16: Path, quant_type: str, recipe: str
) -> None:
    """The memory gate sizes a mixed recipe as llama.cpp makes it, so a recipe that shrinks a
    type that is over the budget is admitted exactly when its file fits."""
    made = QuantizeArgs(
        gguf=tiny_f16, quant_type=quant_type, recipe=weights_recipe(tiny_f16, recipe, quant_type)
    )
    actual = sum(t.n_bytes or 0 for t in read_shape(quantize_gguf(made).gguf_path).tensors)
    plain, _ = weights_bytes(read_shape(tiny_f16), quant_type)
    predicted, note = weights_bytes(read_shape(tiny_f16), quant_type, recipe)
    assert predicted == actual
    assert predicted != plain  # the recipe changed the file, and the prediction saw it
    assert f"{quant_type}+{recipe}" in note


def test_a_shrinking_recipe_is_sized_with_the_fallback_of_a_real_model(smol: Files) -> None:
    """SmolLM2's 576-wide rows fit no 256-block type: Q4_K falls back to Q5_0, and the recipe's
    Q3_K for ffn_up/ffn_gate to Q4_0. The estimate follows llama.cpp through both."""
    shape = read_shape(smol.f16_gguf)
    recipe = weights_recipe(smol.f16_gguf, "ffn_up_gate_down", "Q4_K_M")
    made = quantize_gguf(QuantizeArgs(gguf=smol.f16_gguf, quant_type="Q4_K_M", recipe=recipe))
    actual = sum(t.n_bytes or 0 for t in read_shape(made.gguf_path).tensors)
    assert weights_bytes(shape, "Q4_K_M", "ffn_up_gate_down")[0] == actual
    assert actual < weights_bytes(shape, "Q4_K_M")[0]
    config = DeployConfig(quant_type="Q4_K_M", recipe="ffn_up_gate_down")
    mixed = estimate_deploy_memory(DeployMemoryArgs(model=smol.f16_gguf, config=config))
    uniform = estimate_deploy_memory(
        DeployMemoryArgs(model=smol.f16_gguf, config=DeployConfig(quant_type="Q4_K_M"))
    )
    assert mixed.total_bytes < uniform.total_bytes


def test_hf_folder_and_its_gguf_give_the_same_shape(tiny_model: Path, tiny_f16: Path) -> None:
    hf, gg = read_shape(tiny_model), read_shape(tiny_f16)
    assert (hf.n_layer, hf.n_embd, hf.n_head_kv, hf.head_dim, hf.n_ff, hf.n_vocab) == (
        gg.n_layer,
        gg.n_embd,
        gg.n_head_kv,
        gg.head_dim,
        gg.n_ff,
        gg.n_vocab,
    )
    config = DeployConfig(quant_type="Q4_K_M", n_ctx=1024)
    a = estimate_deploy_memory(DeployMemoryArgs(model=tiny_model, config=config))
    b = estimate_deploy_memory(DeployMemoryArgs(model=tiny_f16, config=config))
    assert a.total_bytes == b.total_bytes


def test_kv_cache_grows_with_context_and_shrinks_with_its_type(tiny_f16: Path) -> None:
    def kv(**kw: object) -> int:
        config = DeployConfig(quant_type="F16", **kw)  # type: ignore[arg-type]
        return estimate_deploy_memory(
            DeployMemoryArgs(model=tiny_f16, config=config)
        ).kv_cache_bytes

    assert kv(n_ctx=4096) == 8 * kv(n_ctx=512)
    assert kv(n_ctx=4096, type_k="q8_0", type_v="q8_0", flash_attn=True) == pytest.approx(
        kv(n_ctx=4096) * 34 / 64
    )


def test_not_a_model_is_a_user_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"nope")
    with pytest.raises(HaqaError):
        estimate_deploy_memory(DeployMemoryArgs(model=junk, config=DeployConfig()))


def _check(model: Path, config: DeployConfig, table: list[str]) -> float:
    estimate = estimate_deploy_memory(DeployMemoryArgs(model=model, config=config)).total_bytes
    measured = measure_deploy_peak_rss(model, config).peak_rss_bytes
    ratio = estimate / measured
    table.append(
        f"{model.name:28} {config.quant_type:7} n_ctx={config.n_ctx:5} fa={config.flash_attn!s:5} "
        f"estimate {estimate / 2**20:7.1f} MiB measured {measured / 2**20:7.1f} MiB "
        f"ratio {ratio:.3f}"
    )
    return ratio


@pytest.mark.slow
def test_deploy_estimate_within_15_percent_of_measured_peak_rss(
    request: pytest.FixtureRequest, tiny_model: Path, tiny_f16: Path
) -> None:
    table: list[str] = []
    ratios = []
    for quant_type in QUANT_TYPES:
        path = (
            tiny_f16
            if quant_type == "F16"
            else quantize_gguf(QuantizeArgs(gguf=tiny_f16, quant_type=quant_type)).gguf_path
        )
        # n_ctx 512..4096, flash attention off and on; the long contexts are spread over the
        # types to keep the test short (each case fills its whole context).
        long_ctx = 4096 if quant_type in ("F16", "Q4_K_M") else 2048
        for n_ctx, fa in ((512, False), (long_ctx, True)):
            config = DeployConfig(
                quant_type=quant_type, n_ctx=n_ctx, n_batch=512, n_ubatch=512, flash_attn=fa,
                n_threads=2,
            )  # fmt: skip
            ratios.append(_check(path, config, table))
    # The ~200M shape, where the weights dominate: F16 as built, Q4_0 quantized (cached).
    big_f16 = bench_200m_gguf(request, tiny_model)
    big_q4 = quantize_gguf(QuantizeArgs(gguf=big_f16, quant_type="Q4_0")).gguf_path
    for path, quant_type, n_ctx, fa in (
        (big_f16, "F16", 512, False),
        (big_q4, "Q4_0", 1024, False),
    ):
        config = DeployConfig(
            quant_type=quant_type, n_ctx=n_ctx, n_batch=512, n_ubatch=256, flash_attn=fa,
            n_threads=2,
        )  # fmt: skip
        ratios.append(_check(path, config, table))
    print("\n".join(table))
    assert all(0.85 <= r <= 1.15 for r in ratios), "\n".join(table)


@pytest.mark.slow
def test_finetune_estimate_within_25_percent_of_a_measured_qlora_run(
    tiny_model: Path, tmp_path: Path
) -> None:
    # Questions long enough that every example fills max_seq_len: the estimate's worst case.
    data = tmp_path / "long.jsonl"
    with data.open("w") as f:
        for i in range(48):
            question = " ".join(f"{(i * 7 + j) % 100} +" for j in range(150)) + " ="
            row = {"question": question, "choices": ["1", "2", "3", "4"], "answer": i % 4}
            f.write(json.dumps({**row, "id": f"long-{i}", "kind": "arithmetic"}) + "\n")
    # A configuration the constants were not fitted on (they were fitted at r=8, 8x64..32x256).
    config = FinetuneConfig(max_steps=2, batch_size=12, max_seq_len=160, lora_r=16)
    measured = qlora_in_child(tiny_model, [data], tmp_path / "out", config)["peak"]
    estimate = estimate_finetune_memory(FinetuneMemoryArgs(model=tiny_model, config=config))
    ratio = estimate.total_bytes / measured
    print(
        f"QLoRA estimate {estimate.summary()} vs measured {measured / 2**20:.0f} MiB: {ratio:.3f}"
    )
    assert 0.75 <= ratio <= 1.25
