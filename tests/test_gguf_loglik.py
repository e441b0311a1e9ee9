"""Log-likelihoods under the GGUF model match the HF model's (F32 / F16) on the same tokens."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from haqa.errors import HaqaError
from haqa.schemas import KvCacheSettings
from haqa.tools.export_gguf import Args, export_gguf
from haqa.tools.gguf_loglik import (
    _Model,
    divergence,
    gguf_continuation_logprobs,
    gguf_perplexity,
    gguf_token_distributions,
    split_request,
)

pytestmark = pytest.mark.slow

REQUESTS = [  # shaped like the zoo's multiple-choice tasks: several choices share a context
    ("0 + 2 =", " 2"),
    ("0 + 2 =", " 4"),
    ("1 + 9 =", " 10"),
    ("4 + 3 = ", "7"),  # trailing space moves to the continuation
    ("the cat sat on the", " mat"),
]


def _hf_logprobs(
    model_dir: Path, gguf: Path, requests: list[tuple[str, str]], *, f16: bool
) -> list[float]:
    """The HF model's sums on the exact token ids llama.cpp uses. With ``f16``, in the arithmetic
    llama.cpp's CPU backend uses for an F16 GGUF: every matrix rounded to F16 (norms stay F32,
    as the converter writes them) and every matmul's input rounded to F16 (llama.cpp converts the
    activations to the weights' dot-product type), sums in F32."""
    import torch
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    if f16:
        with torch.no_grad():
            for p in hf.parameters():
                if p.ndim == 2:
                    p.copy_(p.half().float())
        for m in hf.modules():
            if isinstance(m, torch.nn.Linear):
                m.register_forward_pre_hook(lambda _, args: (args[0].half().float(),))
    tok = _Model(gguf, 512, 1)
    out = []
    try:
        for context, continuation in requests:
            c, x = split_request(context, continuation)
            ctx_ids, whole = tok.tokenize(c), tok.tokenize(c + x)
            with torch.no_grad():
                logits = hf(torch.tensor([whole])).logits[0].double()
            lp = torch.log_softmax(logits, -1)
            out.append(sum(lp[i - 1, whole[i]].item() for i in range(len(ctx_ids), len(whole))))
    finally:
        tok.close()
    return out


#: Allowed difference per nat of the HF sum (a floor of 1 nat). With attention in F32
#: (``KvCacheSettings.f32()``) and the HF side rounded as llama.cpp rounds F16 weights and their
#: inputs, what is left is summation order: measured at most 1e-6 per nat for F32 and 4e-5 for F16
#: on two zoo builds here (one trained under bf16 autocast, whose sharper attention made llama.cpp's
#: default F16 K/V cache move F32 log-probs by 2e-4 per nat). Other CPUs take other F16 dot product
#: paths (ARM accumulates in F16), hence the margin. A wrong token, a misplaced tensor or a shifted
#: position costs whole nats: these tolerances still catch all of those.
_TOLERANCE = {"F32": 2e-4, "F16": 3e-3}


@pytest.mark.parametrize("outtype", ["F32", "F16"])
def test_gguf_logprobs_match_the_hf_model(tiny_model: Path, outtype: str) -> None:
    """Attention runs in F32: llama.cpp's default F16 K/V cache rounds K and V (and, in flash
    attention, Q and the V sums), which on a CI machine's zoo build moved F32 log-probs by 1.1e-3
    per nat and F16 ones by 7e-3; that is deployment arithmetic, not export or scoring."""
    gguf = export_gguf(Args(model=tiny_model, outtype=outtype)).gguf_path  # type: ignore[arg-type]
    got = gguf_continuation_logprobs(gguf, REQUESTS, n_threads=1, kv_cache=KvCacheSettings.f32())
    want = _hf_logprobs(tiny_model, gguf, REQUESTS, f16=outtype == "F16")
    for g, w in zip(got, want, strict=True):
        assert g < 0
        assert abs(g - w) < _TOLERANCE[outtype] * max(1.0, abs(w)), (g, w)


def test_order_and_kv_reuse_do_not_change_results(tiny_model: Path) -> None:
    gguf = export_gguf(Args(model=tiny_model, quant_type="Q8_0")).gguf_path
    forward = gguf_continuation_logprobs(gguf, REQUESTS)
    backward = gguf_continuation_logprobs(gguf, REQUESTS[::-1])
    one_by_one = [gguf_continuation_logprobs(gguf, [r])[0] for r in REQUESTS]
    for a, b, c in zip(forward, backward[::-1], one_by_one, strict=True):
        assert math.isfinite(a)
        assert abs(a - b) < 1e-3 and abs(a - c) < 1e-3


TEXTS = ["8 plus 5 makes 13. counting up from 7: 7, 8, 9, 10.", "the biggest of 31 and 4 is 31."]


def test_token_distributions_agree_with_scoring_and_order_quant_types(tiny_model: Path) -> None:
    """Each row is a distribution over the vocabulary whose entry at the next token is the
    continuation scorer's log-prob; and the further a type rounds the weights, the further its
    distributions move from F16's: Q8_0 barely, Q2_K by far more."""
    paths = {
        q: export_gguf(Args(model=tiny_model, quant_type=q)).gguf_path
        for q in ("F16", "Q8_0", "Q2_K")
    }
    dists = {q: gguf_token_distributions(p, TEXTS, n_threads=1) for q, p in paths.items()}
    scored = gguf_continuation_logprobs(paths["Q8_0"], [("", t) for t in TEXTS], n_threads=1)
    tok = _Model(paths["Q8_0"], 512, 1)
    try:
        ids = [tok.tokenize(t) for t in TEXTS]
    finally:
        tok.close()
    for rows, tokens, want in zip(dists["Q8_0"], ids, scored, strict=True):
        assert rows.shape == (len(tokens) - 1, tok.n_vocab)
        assert np.allclose(np.exp(rows).sum(axis=1), 1.0, atol=1e-6)
        got = sum(rows[i, tokens[i + 1]] for i in range(len(tokens) - 1))
        assert abs(got - want) < 1e-3, (got, want)
    (kl_q8, same_q8), (kl_q2, same_q2) = (
        divergence(dists["F16"], dists[q]) for q in ("Q8_0", "Q2_K")
    )
    assert 0 < kl_q8 < kl_q2 / 10, (kl_q8, kl_q2)
    assert same_q2 < same_q8 <= 1.0
    assert divergence(dists["Q8_0"], dists["Q8_0"]) == (0.0, 1.0)
    with pytest.raises(HaqaError, match="same texts"):
        divergence(dists["F16"], dists["Q8_0"][::-1])
    with pytest.raises(HaqaError, match="fewer than 2 tokens"):
        gguf_token_distributions(paths["Q8_0"], [""], n_threads=1)


def test_a_quantized_kv_cache_is_part_of_what_is_scored(tiny_model: Path) -> None:
    """A deployment's q4_0 cache rounds every key and value to 4 bits, so scoring with it moves
    log-probs (here up to 0.9 nat on a request), q8_0 by far less; flash attention with an f16
    cache only reorders sums (0.004 nat at most). Measured on F16 weights."""
    gguf = export_gguf(Args(model=tiny_model, outtype="F16")).gguf_path

    def moved(**kv: object) -> float:
        got = gguf_continuation_logprobs(
            gguf, REQUESTS, n_threads=1, kv_cache=KvCacheSettings.model_validate(kv)
        )
        return sum(abs(g - b) for g, b in zip(got, base, strict=True))

    base = gguf_continuation_logprobs(
        gguf, REQUESTS, n_threads=1, kv_cache=KvCacheSettings(flash_attn=False)
    )
    flash = moved(flash_attn=True)
    q8 = moved(type_k="q8_0", type_v="q8_0")
    q4 = moved(type_k="q4_0", type_v="q4_0")
    assert q4 > 0.05 and q8 < q4 and flash < q4 / 10, (flash, q8, q4)
    with pytest.raises(ValidationError, match="needs flash attention"):
        KvCacheSettings(type_v="q4_0", flash_attn=False)


def test_skipped_windows_split_a_texts_perplexity_into_disjoint_parts(tiny_model: Path) -> None:
    """A run selects on the windows after the answer's (validation) and reports the answer on
    the first ones (test): each window is scored alone, so the two parts' log-perplexities average
    to the whole's, and the parts differ (they are different text)."""
    gguf = export_gguf(Args(model=tiny_model, quant_type="Q8_0")).gguf_path
    text = " ".join(TEXTS * 12)
    whole = gguf_perplexity(gguf, text, n_ctx=32, max_chunks=2, n_threads=1)
    first = gguf_perplexity(gguf, text, n_ctx=32, max_chunks=1, n_threads=1)
    second = gguf_perplexity(gguf, text, n_ctx=32, max_chunks=1, skip_chunks=1, n_threads=1)
    assert whole.n_chunks == 2 and first.n_chunks == second.n_chunks == 1
    mean_log = (math.log(first.perplexity) + math.log(second.perplexity)) / 2
    assert abs(math.log(whole.perplexity) - mean_log) < 1e-4, (whole, first, second)
    assert first.perplexity != second.perplexity
    with pytest.raises(HaqaError, match="give a longer text"):
        gguf_perplexity(gguf, text, n_ctx=32, skip_chunks=10_000, n_threads=1)
