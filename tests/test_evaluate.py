"""Multiple-choice scoring: lm-eval's acc / acc_norm, its tokenization split, and the HF backend."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from haqa.errors import HaqaError
from haqa.tasks import MCExample, write_jsonl
from haqa.tools.evaluate import (
    Args,
    build_requests,
    evaluate,
    hf_logliks,
    load_hf,
    score,
    split_tokens,
)


def _ex(choices: tuple[str, ...], answer: int, kind: str = "k") -> MCExample:
    return MCExample(question="q =", choices=choices, answer=answer, kind=kind)


def test_requests_are_question_and_space_choice_in_order() -> None:
    exs = [_ex(("1", "22"), 1), _ex(("a", "b", "c"), 0)]
    assert build_requests(exs) == [
        ("q =", " 1"),
        ("q =", " 22"),
        ("q =", " a"),
        ("q =", " b"),
        ("q =", " c"),
    ]


def test_acc_picks_highest_loglik_and_acc_norm_divides_by_bytes() -> None:
    # Choice " 1" (2 bytes) at -3 against " 2222" (5 bytes) at -5: raw favours the short one,
    # per byte (-1.5 vs -1.0) favours the long one.
    exs = [_ex(("1", "2222"), 1, "a"), _ex(("x", "y"), 0, "b")]
    acc, acc_norm, per_kind = score(exs, [-3.0, -5.0, -1.0, -2.0])
    assert acc == 0.5
    assert acc_norm == 1.0
    assert per_kind["a"].accuracy == 0.0 and per_kind["a"].acc_norm == 1.0
    assert per_kind["b"].accuracy == 1.0 and per_kind["b"].n == 1


def test_score_rejects_a_wrong_number_of_logliks() -> None:
    with pytest.raises(ValueError, match="3 log-likelihoods for 4"):
        score([_ex(("1", "2"), 0), _ex(("1", "2"), 0)], [0.0, 0.0, 0.0])


@pytest.mark.slow
def test_split_moves_trailing_space_and_keeps_the_tail(tiny_model: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model))
    ctx, cont = split_tokens(tok, "3 + 4 =", " 7")
    assert ctx == tok("3 + 4 =").input_ids
    assert ctx + cont == tok("3 + 4 = 7").input_ids
    assert tok.decode(cont).strip() == "7"
    # A trailing space in the question belongs to the continuation, as in lm-eval.
    assert split_tokens(tok, "3 + 4 = ", "7") == (ctx, cont)


@pytest.mark.slow
def test_batched_logliks_equal_one_at_a_time(tiny_model: Path) -> None:
    import torch

    model, tok = load_hf(tiny_model, None)
    reqs = [("3 + 4 =", " 7"), ("max(31, 4, 89, 84) =", " 89"), ("7 8 9 ->", " 10"), ("1 =", " 1")]
    batched = hf_logliks(model, tok, reqs, batch_size=4)
    single = hf_logliks(model, tok, reqs, batch_size=1)
    assert batched == pytest.approx(single, abs=1e-4)
    # And the value is the log-probability of the continuation tokens, computed by hand.
    ctx, cont = split_tokens(tok, *reqs[0])
    with torch.inference_mode():
        logp = torch.log_softmax(model(input_ids=torch.tensor([ctx + cont])).logits[0], -1)
    by_hand = sum(float(logp[len(ctx) - 1 + i, t]) for i, t in enumerate(cont))
    assert batched[0] == pytest.approx(by_hand, abs=1e-4)
    assert all(x < 0 for x in batched)


@pytest.mark.slow
def test_evaluate_tiny_reports_each_kind(tiny_model: Path) -> None:
    files = sorted((tiny_model / "tasks" / "test").glob("*.jsonl"))
    result = evaluate(Args(model=tiny_model, task_files=files, limit=8))
    assert result.backend == "hf"
    assert result.n_examples == 24
    assert set(result.per_kind) == {"arithmetic", "comparison", "sequence"}
    assert all(s.n == 8 for s in result.per_kind.values())
    assert 0.0 <= result.accuracy <= 1.0


@pytest.mark.slow
def test_examples_without_kind_are_reported_by_file_name(tiny_model: Path, tmp_path: Path) -> None:
    path = tmp_path / "mine.jsonl"
    write_jsonl(path, [MCExample(question="2 + 2 =", choices=("4", "5"), answer=0)])
    result = evaluate(Args(model=tiny_model, task_files=[path]))
    assert list(result.per_kind) == ["mine"]


def test_a_file_that_is_not_gguf_is_a_user_error(tmp_path: Path) -> None:
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"NOPE" + b"\0" * 16)
    tasks = tmp_path / "t.jsonl"
    tasks.write_text(json.dumps({"question": "q", "choices": ["a", "b"], "answer": 0}) + "\n")
    with pytest.raises(HaqaError, match="not a GGUF file"):
        evaluate(Args(model=fake, task_files=[tasks]))


def test_an_adapter_on_a_gguf_is_a_user_error(tmp_path: Path) -> None:
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"GGUF" + b"\0" * 16)
    tasks = tmp_path / "t.jsonl"
    tasks.write_text(json.dumps({"question": "q", "choices": ["a", "b"], "answer": 0}) + "\n")
    with pytest.raises(HaqaError, match="merge it before export"):
        evaluate(Args(model=fake, adapter=tmp_path, task_files=[tasks]))
