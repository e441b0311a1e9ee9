"""The tensor-sensitivity probe (KLD with one group alone quantized low) and the allocation of a
target bits per weight by it: measured on the tiny model and on SmolLM2, checked against the
quantized file's own header."""

from __future__ import annotations

from pathlib import Path

import pytest

from haqa.errors import HaqaError
from haqa.tools.estimate_memory import read_shape, weights_bytes
from haqa.tools.export_gguf import Args as ExportArgs
from haqa.tools.export_gguf import QuantizeArgs, export_gguf, quantize_gguf
from haqa.tools.gguf_header import weight_mix
from haqa.tools.gguf_loglik import divergence, gguf_window_distributions
from haqa.tools.imatrix import calibration_from_tasks
from haqa.tools.tensor_sensitivity import (
    OUTPUT_GROUP,
    SensitivityArgs,
    allocate_bits,
    tensor_sensitivity,
)
from haqa.zoo.smollm2 import Files

LAYER_GROUPS = {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"}


@pytest.fixture()
def tiny_f16(tiny_model: Path) -> Path:
    return export_gguf(ExportArgs(model=tiny_model, outtype="F16", quant_type=None)).gguf_path


def test_the_probe_measures_every_group_and_is_cached(
    tiny_model: Path, tiny_f16: Path, tmp_path: Path
) -> None:
    tasks = calibration_from_tasks(sorted((tiny_model / "tasks" / "train").glob("*.jsonl")))
    # A text of this test's own (a run in the same session may have probed the training split).
    text = tmp_path / "calibration.txt"
    text.write_text(tasks.read_text() + f"\n{tmp_path.name}\n")
    args = SensitivityArgs(gguf=tiny_f16, text=text)
    first = tensor_sensitivity(args)
    assert {g.group for g in first.groups} == LAYER_GROUPS | {OUTPUT_GROUP}
    assert not first.cached and first.n_tokens > 200
    assert all(g.kld > 0 for g in first.groups), first.groups
    assert [g.kld for g in first.groups] == sorted((g.kld for g in first.groups), reverse=True)
    assert sum(g.share for g in first.groups) == pytest.approx(1.0, abs=0.05)
    # Each group's KLD is part of the whole file's: every matrix at the probe type moves the
    # predictions more than any one group alone does.
    whole = quantize_gguf(QuantizeArgs(gguf=tiny_f16, quant_type="Q4_0")).gguf_path
    background = quantize_gguf(QuantizeArgs(gguf=tiny_f16, quant_type="Q8_0")).gguf_path
    body = text.read_text()
    all_low, _ = divergence(
        gguf_window_distributions(background, body, n_ctx=256, max_windows=2),
        gguf_window_distributions(whole, body, n_ctx=256, max_windows=2),
    )
    assert all_low > max(g.kld for g in first.groups)
    again = tensor_sensitivity(args)
    assert again.cached and again.groups == first.groups
    with pytest.raises(HaqaError, match="already quantized"):
        tensor_sensitivity(SensitivityArgs(gguf=whole, text=text))
    with pytest.raises(HaqaError, match="does not exist"):
        tensor_sensitivity(SensitivityArgs(gguf=tiny_f16, text=text.with_name("missing.txt")))


@pytest.mark.parametrize("quant_type", ["Q4_K_M", "Q3_K_M"])
def test_the_allocation_reaches_its_target_and_the_file_has_those_bits(
    smol: Files, quant_type: str
) -> None:
    """On SmolLM2 (576-wide rows: K-quants fall back to 32-block types) the predicted bits are
    the file's: the header agrees to the byte, the target is met from below within one step,
    and the bits go to the groups measured sensitive per weight first."""
    shape = read_shape(smol.f16_gguf)
    kld = {"attn_v": 0.08, "ffn_down": 0.11, "output": 0.10, "ffn_up": 0.045,
           "ffn_gate": 0.025, "attn_q": 0.017, "attn_k": 0.016, "attn_output": 0.016}  # fmt: skip
    previous = 0
    for target in (5.25, 5.75, 6.5):
        alloc = allocate_bits(shape, quant_type, target, kld)
        assert alloc.bits_per_weight <= target + 1e-9
        assert alloc.bits_per_weight > target - 0.35, (target, alloc)
        made = quantize_gguf(
            QuantizeArgs(gguf=smol.f16_gguf, quant_type=quant_type, recipe=alloc.recipe)
        ).gguf_path
        header = read_shape(made)
        on_disk = sum(t.n_bytes or 0 for t in header.tensors)
        assert on_disk == weights_bytes(shape, quant_type, alloc.recipe.model_dump())[0]
        assert weight_mix(made).bits_per_weight == pytest.approx(alloc.bits_per_weight, abs=0.01)
        assert on_disk > previous
        previous = on_disk
        per_weight = {
            g: sum(t.n_bytes or 0 for t in header.tensors if f".{g}." in t.name)
            / sum(t.ne0 * t.rows for t in header.tensors if f".{g}." in t.name)
            for g in LAYER_GROUPS
        }
        # attn_v has 5x the KLD per weight of any other layer group: it never has fewer bits.
        assert per_weight["attn_v"] == max(per_weight.values()), (target, per_weight)


def test_a_target_below_what_the_ladders_reach_gives_the_lowest_file(smol: Files) -> None:
    shape = read_shape(smol.f16_gguf)
    kld = dict.fromkeys(LAYER_GROUPS | {OUTPUT_GROUP}, 0.01)
    lowest = allocate_bits(shape, "Q2_K", 2.5, kld)
    assert lowest.bits_per_weight > 2.5  # the 576-wide rows cannot go below their 32-block type
    assert allocate_bits(shape, "Q2_K", 3.0, kld).types == lowest.types
    with pytest.raises(HaqaError, match="quantized file type"):
        allocate_bits(shape, "F16", 5.0, kld)
    with pytest.raises(HaqaError, match="none of this model"):
        allocate_bits(shape, "Q4_K_M", 5.0, {"ssm_in": 0.1})
