"""QLoRA fine-tuning: the schedule, the example format, the cache, and a real fine-tune of the
tiny model that must beat the base on held-out questions, with the learning rate mattering."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from haqa.errors import HaqaError
from haqa.schemas import FinetuneConfig
from haqa.tasks import MCExample
from haqa.tools import evaluate as ev
from haqa.tools.run_qlora import (
    IGNORE_INDEX,
    Args,
    cache_key,
    collate,
    format_example,
    lr_factor,
    run_qlora,
    total_steps,
)


def test_lr_warms_up_linearly_then_decays_to_zero() -> None:
    total, ratio = 100, 0.1
    factors = [lr_factor(s, total, ratio) for s in range(total)]
    assert factors[:10] == sorted(factors[:10])  # rising during the 10 warm-up steps
    assert max(factors) == pytest.approx(1.0)
    assert factors[10:] == sorted(factors[10:], reverse=True)
    assert factors[-1] < 0.01
    assert lr_factor(0, 10, 0.0) == 1.0  # no warm-up: start at the peak


def test_epochs_override_max_steps() -> None:
    assert total_steps(FinetuneConfig(max_steps=7), 1000) == 7
    cfg = FinetuneConfig(epochs=2, batch_size=16, grad_accum=2)
    assert total_steps(cfg, 100) == math.ceil(2 * 100 / 32)


@pytest.mark.slow
def test_loss_is_on_the_answer_tokens_only(tiny_model: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model))
    ex = MCExample(question="12 + 5 =", choices=("16", "17"), answer=1)
    ids, labels = format_example(tok, ex, max_seq_len=128)
    assert ids == tok("12 + 5 = 17").input_ids
    answer = [t for t in labels if t != IGNORE_INDEX]
    assert tok.decode(answer).strip() == "17"
    assert labels[: len(ids) - len(answer)] == [IGNORE_INDEX] * (len(ids) - len(answer))
    # Too long: the question is cut from the left, the answer survives.
    short_ids, short_labels = format_example(tok, ex, max_seq_len=4)
    assert len(short_ids) == 4 and [t for t in short_labels if t != IGNORE_INDEX] == answer
    batch = collate([(ids, labels), (short_ids, short_labels)], pad_id=2)
    assert batch["input_ids"].shape == (2, len(ids))
    assert batch["attention_mask"][1].tolist() == [1] * 4 + [0] * (len(ids) - 4)
    assert (batch["labels"][1, 4:] == IGNORE_INDEX).all()


@pytest.mark.slow
def test_cache_key_covers_model_config_and_data(tiny_model: Path, tmp_path: Path) -> None:
    files = sorted((tiny_model / "tasks" / "train").glob("*.jsonl"))
    base = cache_key(tiny_model, FinetuneConfig(), files)
    assert cache_key(tiny_model, FinetuneConfig(), files) == base
    assert cache_key(tiny_model, FinetuneConfig(lora_r=4), files) != base
    assert cache_key(tiny_model, FinetuneConfig(), files[:1]) != base


@pytest.mark.slow
def test_same_finetune_is_not_run_twice(tiny_model: Path) -> None:
    files = sorted((tiny_model / "tasks" / "train").glob("*.jsonl"))
    args = Args(
        model=tiny_model, config=FinetuneConfig(max_steps=3, batch_size=4), train_files=files
    )
    first = run_qlora(args)
    assert not first.cached and first.steps == 3 and len(first.loss_curve) == 3
    assert (first.adapter_path / "adapter_config.json").is_file()
    assert first.peak_mem_bytes > 0 and first.device == "cpu"
    again = run_qlora(args)
    assert again.cached and again.adapter_path == first.adapter_path
    assert again.loss_curve == first.loss_curve


@pytest.mark.slow
@pytest.mark.parametrize("quant", ["int8", "fp4"])
def test_other_bitsandbytes_types_train(tiny_model: Path, tmp_path: Path, quant: str) -> None:
    files = sorted((tiny_model / "tasks" / "train").glob("*.jsonl"))[:1]
    cfg = FinetuneConfig(quant=quant, double_quant=False, max_steps=2, batch_size=4)  # type: ignore[arg-type]
    result = run_qlora(
        Args(model=tiny_model, config=cfg, train_files=files, output_dir=tmp_path / "a")
    )
    assert result.steps == 2 and all(math.isfinite(x) for x in result.loss_curve)


@pytest.mark.slow
def test_unknown_target_module_is_a_user_error(tiny_model: Path, tmp_path: Path) -> None:
    files = sorted((tiny_model / "tasks" / "train").glob("*.jsonl"))[:1]
    cfg = FinetuneConfig(target_modules=("query_key_value",), max_steps=1)
    with pytest.raises(HaqaError, match="query_key_value"):
        run_qlora(Args(model=tiny_model, config=cfg, train_files=files, output_dir=tmp_path / "a"))


@pytest.mark.slow
def test_finetuning_beats_the_base_and_learning_rate_matters(tiny_model: Path) -> None:
    """The acceptance figure: a good config gains >= 10 points of held-out (test split)
    accuracy over the base, and a sweep of learning rates spreads accuracy by >= 10 points."""
    train = sorted((tiny_model / "tasks" / "train").glob("*.jsonl"))
    test = sorted((tiny_model / "tasks" / "test").glob("*.jsonl"))

    def accuracy(adapter: Path | None) -> float:
        return ev.evaluate(ev.Args(model=tiny_model, adapter=adapter, task_files=test)).accuracy

    base = accuracy(None)
    by_lr = {}
    for lr in (1e-5, 5e-3):
        cfg = FinetuneConfig(learning_rate=lr, max_steps=60)
        by_lr[lr] = accuracy(
            run_qlora(Args(model=tiny_model, config=cfg, train_files=train)).adapter_path
        )
    assert by_lr[5e-3] >= base + 0.10, (base, by_lr)
    assert max(by_lr.values()) - min(by_lr.values()) >= 0.10, by_lr
