"""GGUF export and quantization: real conversions of the tiny model, cached by content."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from pydantic import ValidationError

from haqa.errors import HaqaError
from haqa.tools.export_gguf import (
    Args,
    QuantizeArgs,
    TensorRecipe,
    check_gguf,
    check_quant_type,
    export_gguf,
    quantize_gguf,
)
from haqa.tools.gguf_header import GgufArray, read_gguf_header

pytestmark = pytest.mark.slow

TYPES = ("F16", "Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_0", "IQ4_NL", "Q3_K_M", "Q2_K")


@pytest.fixture()
def tiny_f16(tiny_model: Path) -> Path:
    return export_gguf(Args(model=tiny_model, outtype="F16")).gguf_path


def test_export_then_quantize_to_every_required_type(tiny_model: Path, tiny_f16: Path) -> None:
    sizes = {}
    for q in TYPES:
        r = export_gguf(Args(model=tiny_model, quant_type=q))  # type: ignore[arg-type]
        assert r.quant_type == q
        assert r.base_gguf_path == tiny_f16
        assert r.gguf_path.read_bytes()[:4] == b"GGUF"
        assert check_gguf(r.gguf_path).n_params == r.n_params
        sizes[q] = r.size_bytes
    # Fewer bits, smaller file: the quantization really happened.
    assert sizes["F16"] > sizes["Q8_0"] > sizes["Q4_0"] > sizes["Q2_K"]


def test_the_same_export_is_never_done_twice(tiny_model: Path) -> None:
    first = export_gguf(Args(model=tiny_model, quant_type="Q5_K_M"))
    stamp = first.gguf_path.stat().st_mtime_ns
    again = export_gguf(Args(model=tiny_model, quant_type="Q5_K_M"))
    assert again.cached is True
    assert again.gguf_path == first.gguf_path
    assert again.gguf_path.stat().st_mtime_ns == stamp  # not rewritten
    assert not list(first.gguf_path.parent.glob("*.tmp"))  # no leftovers of atomic writes


def test_quantize_an_existing_gguf_with_output_copy(tiny_f16: Path, tmp_path: Path) -> None:
    out = tmp_path / "m-q8.gguf"
    r = quantize_gguf(QuantizeArgs(gguf=tiny_f16, quant_type="Q8_0", output=out))
    assert r.gguf_path == out and out.is_file()
    assert r.size_bytes < tiny_f16.stat().st_size
    r2 = quantize_gguf(QuantizeArgs(gguf=tiny_f16, quant_type="Q8_0"))
    assert r2.cached is True
    assert r2.size_bytes == r.size_bytes


def test_a_lora_adapter_is_merged_before_conversion(tiny_model: Path, tmp_path: Path) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.fill_(0.05)  # a non-zero update, so merging changes the weights
    peft_model.save_pretrained(tmp_path / "adapter")
    plain = export_gguf(Args(model=tiny_model, outtype="F32"))
    merged = export_gguf(Args(model=tiny_model, adapter=tmp_path / "adapter", outtype="F32"))
    assert merged.gguf_path != plain.gguf_path
    assert merged.n_params == plain.n_params  # merged in, not added as extra tensors
    assert merged.gguf_path.read_bytes() != plain.gguf_path.read_bytes()


def test_bad_inputs_are_one_line_haqa_errors(tiny_f16: Path, tmp_path: Path) -> None:
    with pytest.raises(HaqaError, match="not a Hugging Face model folder"):
        export_gguf(Args(model=tmp_path))
    text = tmp_path / "notes.gguf"
    text.write_text("hello")
    with pytest.raises(HaqaError, match="not a GGUF"):
        quantize_gguf(QuantizeArgs(gguf=text, quant_type="Q4_0"))
    cut = tmp_path / "cut.gguf"
    data = tiny_f16.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(HaqaError, match="truncated") as exc:
        quantize_gguf(QuantizeArgs(gguf=cut, quant_type="Q4_0"))
    assert "\n" not in str(exc.value)
    header_cut = tmp_path / "header-cut.gguf"
    header_cut.write_bytes(data[:300])  # inside the metadata, before the tensor table
    with pytest.raises(HaqaError, match="truncated or corrupt"):
        check_gguf(header_cut)
    with pytest.raises(HaqaError, match="unknown GGUF type"):
        check_quant_type("Q9_9")
    with pytest.raises(ValidationError):
        QuantizeArgs(gguf=tiny_f16, quant_type="Q9_9")  # type: ignore[arg-type]


def test_cache_key_follows_content_not_path(tiny_model: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model, copy)
    assert export_gguf(Args(model=copy)).cached is True  # same bytes, same artifact


def test_header_reader_agrees_with_gguf_reader(tiny_model: Path) -> None:
    """The fast header reader the tools use reads what gguf's own reader reads."""
    from gguf import GGUFReader

    for q in ("F16", "Q4_K_M", "Q2_K"):
        path = export_gguf(Args(model=tiny_model, quant_type=q)).gguf_path  # type: ignore[arg-type]
        header, reader = read_gguf_header(path), GGUFReader(path)
        assert [
            (t.name, list(t.shape), t.ggml_type, t.data_offset, t.n_elements, t.n_bytes)
            for t in header.tensors
        ] == [
            (t.name, [int(x) for x in t.shape], t.tensor_type.name, t.data_offset,
             int(t.n_elements), int(t.n_bytes))
            for t in reader.tensors
        ]  # fmt: skip
        for key, field in reader.fields.items():
            if key.startswith("GGUF."):  # the reader's own pseudo-fields (version, counts)
                continue
            value = header.fields[key]
            if isinstance(value, GgufArray):
                assert value.length == len(field.data), key
            else:
                assert value == pytest.approx(field.contents()), key
        assert header.data_end == path.stat().st_size


def test_an_already_quantized_gguf_is_requantized_and_says_so(tiny_f16: Path) -> None:
    """A user's GGUF may arrive quantized (the zoo's SmolLM2 ships as Q4_1): quantizing it again
    needs llama.cpp's allow_requantize, and the result names the type it was made from; its
    header's weight mix is reported, shares summing to one."""
    q8 = quantize_gguf(QuantizeArgs(gguf=tiny_f16, quant_type="Q8_0"))
    assert q8.requantized_from is None
    assert q8.weights.file_type == "Q8_0" and 8.0 < q8.weights.bits_per_weight < 9.0
    again = quantize_gguf(QuantizeArgs(gguf=q8.gguf_path, quant_type="Q4_0"))
    assert again.requantized_from == "Q8_0"
    assert again.weights.file_type == "Q4_0"
    assert sum(again.weights.type_share.values()) == pytest.approx(1.0)
    assert again.weights.bits_per_weight < q8.weights.bits_per_weight


def test_a_mixed_recipe_sets_the_types_it_names_and_keys_its_own_file(tiny_f16: Path) -> None:
    """Per-tensor types on top of a file type (llama-quantize's --tensor-type and
    --output-tensor-type): the FFN down matrices one step up, the output head at Q6_K, every
    other matrix Q4_0; the file is cached apart from the plain Q4_0 and reproducible by hand."""
    from gguf import GGUFReader

    recipe = TensorRecipe(tensor_types={r"ffn_down": "q8_0"}, output_type="Q6_K")
    mixed = quantize_gguf(QuantizeArgs(gguf=tiny_f16, quant_type="Q4_0", recipe=recipe))
    plain = quantize_gguf(QuantizeArgs(gguf=tiny_f16, quant_type="Q4_0"))
    assert mixed.gguf_path != plain.gguf_path and mixed.size_bytes > plain.size_bytes
    types = {t.name: t.tensor_type.name for t in GGUFReader(mixed.gguf_path).tensors}
    downs = [n for n in types if n.endswith("ffn_down.weight")]
    assert downs and all(types[n] == "Q8_0" for n in downs)
    assert types["output.weight"] == "Q6_K"
    assert {types[n] for n in types if n.endswith(("ffn_up.weight", "attn_q.weight"))} == {"Q4_0"}
    assert recipe.cli_args() == ["--tensor-type ffn_down=q8_0", "--output-tensor-type q6_k"]
    again = quantize_gguf(QuantizeArgs(gguf=tiny_f16, quant_type="Q4_0", recipe=recipe))
    assert again.cached and again.gguf_path == mixed.gguf_path
    for bad, fix in [
        ({"tensor_types": {"ffn_down": "q9"}}, "is not a ggml tensor type"),
        ({"tensor_types": {"ffn_(down": "q8_0"}}, "is not a regular expression"),
        ({"output_type": "Q4_K_M"}, "is not a ggml tensor type"),  # a file type, not a tensor's
    ]:
        with pytest.raises(HaqaError, match=fix):
            TensorRecipe(**bad)
