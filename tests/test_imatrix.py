"""Importance matrices: computed by llama.cpp's own evaluation (checked against an independent
PyTorch computation on the same tokens), written as llama-imatrix writes them, and used by the
quantizer, where on the real model they lower Q2_K's perplexity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from haqa.cli import main
from haqa.errors import HaqaError
from haqa.tools.export_gguf import QuantizeArgs, quantize_gguf
from haqa.tools.gguf_header import read_gguf_header
from haqa.tools.gguf_loglik import gguf_perplexity
from haqa.tools.imatrix import (
    ImatrixArgs,
    agreement,
    compute_imatrix,
    importance,
    read_imatrix,
    weight_name,
)
from haqa.zoo.smollm2 import Files

pytestmark = pytest.mark.slow

#: GGUF weight -> the Llama module whose input it multiplies (the converter's own mapping).
_HF_MODULES = {
    "attn_q": "self_attn.q_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_down": "mlp.down_proj",
}


def _hf_mean_squares(hf: Path, tokens: list[int], layers: list[int]) -> dict[str, np.ndarray]:
    """Mean squared input per column of some Llama linear layers, by forward hooks: the
    importance computed without llama.cpp at all."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32).eval()
    out: dict[str, np.ndarray] = {}
    hooks = []
    for i in layers:
        for gguf, module in _HF_MODULES.items():
            name = f"blk.{i}.{gguf}.weight"

            def keep(_m: object, inputs: tuple[torch.Tensor, ...], _o: object, n: str = name):
                x = inputs[0].reshape(-1, inputs[0].shape[-1]).double()
                out[n] = (x * x).mean(dim=0).numpy()

            hooks.append(
                model.get_submodule(f"model.layers.{i}.{module}").register_forward_hook(keep)
            )
    with torch.no_grad():
        model(torch.tensor([tokens]))
    for h in hooks:
        h.remove()
    return out


def test_importance_agrees_with_pytorch_on_the_same_tokens(smol: Files, tmp_path: Path) -> None:
    from haqa.schemas import RuntimeSettings
    from haqa.tools.llama_session import llama, load_model, tokenize

    n_ctx = 128
    result = compute_imatrix(
        ImatrixArgs(
            gguf=smol.f16_gguf, calibration=smol.text / "calib.txt", n_ctx=n_ctx, max_chunks=1
        )
    )
    assert (result.n_chunks, result.chunk_size, result.dataset) == (1, n_ctx, "calib.txt")
    # Every blk.* matrix of the model, no more: 30 layers x 7 matrices.
    header = read_gguf_header(smol.f16_gguf)
    matrices = {t.name for t in header.tensors if t.name.startswith("blk.") and len(t.shape) == 2}
    ours = importance(result.imatrix_path)
    assert set(ours) == matrices
    assert all(ours[t.name].shape == (t.shape[0],) for t in header.tensors if t.name in ours)

    lib = llama()
    model = load_model(smol.f16_gguf, RuntimeSettings(n_ctx=n_ctx))
    try:
        vocab = lib.llama_model_get_vocab(model)
        tokens = tokenize(vocab, (smol.text / "calib.txt").read_text())[:n_ctx]
        if lib.llama_vocab_get_add_bos(vocab):  # as llama-imatrix starts each chunk
            tokens[0] = int(lib.llama_vocab_bos(vocab))
    finally:
        lib.llama_model_free(model)
    last = sum(1 for n in matrices if n.endswith("attn_q.weight")) - 1
    theirs = _hf_mean_squares(smol.hf, tokens, [0, last])
    close = agreement(ours, theirs)
    assert close["common"] == len(theirs) == 8
    # F16 weights and llama.cpp's kernels against float32 PyTorch: the same importances
    # (measured: cosine >= 0.9999997, means within 0.03%).
    assert close["min_cosine"] > 0.9999, close
    assert close["max_rel_mean_diff"] < 0.005, close


def test_an_imatrix_lowers_q2_k_perplexity_on_the_real_model(smol: Files) -> None:
    imatrix = compute_imatrix(
        ImatrixArgs(gguf=smol.f16_gguf, calibration=smol.text / "calib.txt", max_chunks=2)
    )
    again = compute_imatrix(
        ImatrixArgs(gguf=smol.f16_gguf, calibration=smol.text / "calib.txt", max_chunks=2)
    )
    assert again.cached and again.imatrix_path == imatrix.imatrix_path
    text = (smol.text / "eval.txt").read_text()  # held out: no calibration text in it
    plain = quantize_gguf(QuantizeArgs(gguf=smol.f16_gguf, quant_type="Q2_K"))
    weighted = quantize_gguf(
        QuantizeArgs(gguf=smol.f16_gguf, quant_type="Q2_K", imatrix=imatrix.imatrix_path)
    )
    assert weighted.gguf_path != plain.gguf_path  # the imatrix is part of the cache key
    assert weighted.weights.bits_per_weight == pytest.approx(plain.weights.bits_per_weight)
    header = read_gguf_header(weighted.gguf_path)
    assert header.str_field("quantize.imatrix.dataset") == "calib.txt"
    assert header.int_field("quantize.imatrix.entries_count") == imatrix.n_entries
    ppl_plain = gguf_perplexity(plain.gguf_path, text, max_chunks=4).perplexity
    ppl_weighted = gguf_perplexity(weighted.gguf_path, text, max_chunks=4).perplexity
    # Measured here over 8 windows: 22.4 without, 19.2 with 4 chunks of calibration.
    assert ppl_weighted < 0.95 * ppl_plain, (ppl_plain, ppl_weighted)


def test_imatrix_and_quantize_commands(
    smol: Files, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "smol.imatrix.gguf"
    db = str(tmp_path / "h.duckdb")
    args = ["imatrix", str(smol.f16_gguf), "-f", str(smol.text / "calib.txt"), "-c", "64"]
    assert main([*args, "--chunks", "2", "-o", str(out)]) == 0
    assert "210 weights, 2 chunks of 64 tokens of calib.txt" in capsys.readouterr().out
    assert read_imatrix(out)["n_chunks"] == 2
    q = ["quantize", str(smol.f16_gguf), "-q", "Q4_0", "--imatrix", str(out), "--db", db]
    assert main(q) == 0
    capsys.readouterr()
    # Bad input: one line naming what to fix, exit 2.
    assert (
        main(
            [
                "quantize",
                str(smol.f16_gguf),
                "-q",
                "Q3_K_M",
                "--imatrix",
                str(smol.f16_gguf),
                "--db",
                db,
            ]
        )
        == 2
    )
    assert "is not an imatrix GGUF" in capsys.readouterr().err
    assert main(["imatrix", str(smol.f16_gguf), "-f", str(tmp_path / "none.txt")]) == 2
    assert "does not exist" in capsys.readouterr().err
    short = tmp_path / "short.txt"
    short.write_text("Too short to fill a chunk.")
    assert main(["imatrix", str(smol.f16_gguf), "-f", str(short)]) == 2
    assert "fewer than one chunk" in capsys.readouterr().err


def test_weight_names_of_backend_copies() -> None:
    assert weight_name(b"blk.3.ffn_down.weight") == "blk.3.ffn_down.weight"
    assert weight_name(b"CUDA0#blk.3.ffn_down.weight#0") == "blk.3.ffn_down.weight"


def test_a_calibration_file_that_is_missing(tmp_path: Path, smol: Files) -> None:
    with pytest.raises(HaqaError, match="does not exist"):
        compute_imatrix(ImatrixArgs(gguf=smol.f16_gguf, calibration=tmp_path / "x.txt"))
