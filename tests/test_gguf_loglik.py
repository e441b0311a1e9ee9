"""Log-likelihoods under the GGUF model match the HF model's (F32 / F16) on the same tokens."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from haqa.tools.export_gguf import Args, export_gguf
from haqa.tools.gguf_loglik import _Model, gguf_continuation_logprobs, split_request

pytestmark = pytest.mark.slow

REQUESTS = [  # shaped like the zoo's multiple-choice tasks: several choices share a context
    ("0 + 2 =", " 2"),
    ("0 + 2 =", " 4"),
    ("1 + 9 =", " 10"),
    ("4 + 3 = ", "7"),  # trailing space moves to the continuation
    ("the cat sat on the", " mat"),
]


def _hf_logprobs(model_dir: Path, gguf: Path, requests: list[tuple[str, str]]) -> list[float]:
    """The HF model's sums on the exact token ids llama.cpp uses."""
    import torch
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
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


#: Allowed difference per nat of the HF sum (a floor of 1 nat). F32 differs from torch only in
#: summation order (measured up to 0.0003 per nat). F16 rounds the weights and, on the CPU, each
#: matmul's inputs too (llama.cpp multiplies F16 weights by F16-converted activations): measured
#: up to 0.0009 per nat on zoo builds of two machines; other CPUs take other F16 paths, hence
#: 0.003. A wrong token or a shifted position costs whole nats: these still catch such errors.
_TOLERANCE = {"F32": 1e-3, "F16": 3e-3}


@pytest.mark.parametrize("outtype", ["F32", "F16"])
def test_gguf_logprobs_match_the_hf_model(tiny_model: Path, outtype: str) -> None:
    gguf = export_gguf(Args(model=tiny_model, outtype=outtype)).gguf_path  # type: ignore[arg-type]
    got = gguf_continuation_logprobs(gguf, REQUESTS, n_threads=1)
    want = _hf_logprobs(tiny_model, gguf, REQUESTS)
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
