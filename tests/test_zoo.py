"""The tiny zoo model: deterministic tasks with disjoint splits, a corpus that never uses the
tasks' surface form, an atomic build, and a folder that Hugging Face loads offline."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from haqa import zoo
from haqa.cli import main
from haqa.errors import HaqaError
from haqa.zoo import build as zoo_build
from haqa.zoo import corpus, tasks_gen
from haqa.zoo.pretrain import TinySpec


def _answer(ex_question: str, kind: str) -> int:
    nums = [int(n) for n in re.findall(r"\d+", ex_question)]
    if kind == "arithmetic":
        return nums[0] + nums[1]
    if kind == "comparison":
        return max(nums)
    return nums[-1] + (nums[-1] - nums[-2])


@pytest.mark.parametrize("kind", tasks_gen.KINDS)
def test_tasks_are_right_deterministic_and_split_by_question(kind: str) -> None:
    splits = tasks_gen.generate(kind, seed=0)
    assert splits == tasks_gen.generate(kind, seed=0)
    assert splits != tasks_gen.generate(kind, seed=1)
    questions = {s: {ex.question for ex in exs} for s, exs in splits.items()}
    assert not questions["train"] & questions["test"]
    assert not questions["train"] & questions["validation"]
    assert not questions["validation"] & questions["test"]
    assert len(splits["test"]) >= 40
    for exs in splits.values():
        for ex in exs:
            assert len(ex.choices) == 4 and len(set(ex.choices)) == 4
            assert int(ex.choices[ex.answer]) == _answer(ex.question, kind)
            assert ex.kind == kind


def test_answers_are_spread_over_positions() -> None:
    answers = [ex.answer for kind in tasks_gen.KINDS for ex in tasks_gen.generate(kind, 0)["test"]]
    for pos in range(4):
        assert answers.count(pos) > len(answers) / 8


def test_corpus_states_facts_in_prose_never_in_task_form() -> None:
    text = " ".join(corpus.documents(seed=0, n_docs=300))
    assert " plus " in text and "counting up from" in text and "the biggest of" in text
    for symbol in (" + ", " = ", "max(", "->"):
        assert symbol not in text
    assert text == " ".join(corpus.documents(seed=0, n_docs=300))


@pytest.mark.slow
def test_small_build_is_a_complete_hf_folder(tmp_path: Path) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    dest = tmp_path / "zoo" / "tiny"
    zoo_build.build_tiny(dest, spec=TinySpec(steps=2, batch_size=2))
    expected = ("config.json", "model.safetensors", "generation_config.json", "tokenizer.model")
    expected += ("tokenizer.json", "tokenizer_config.json", "README.md", "haqa-zoo.json")
    for name in expected:
        assert (dest / name).is_file(), name
    assert [p.name for p in tmp_path.joinpath("zoo").iterdir()] == ["tiny"]  # no temp leftovers
    config = AutoConfig.from_pretrained(str(dest))
    assert config.architectures == ["LlamaForCausalLM"]
    assert config.hidden_size % 256 == 0 and config.intermediate_size % 256 == 0
    assert config.vocab_size % 64 == 0
    tok = AutoTokenizer.from_pretrained(str(dest))
    assert len(tok) <= config.vocab_size
    pieces = tok.convert_ids_to_tokens(tok("12 + 345 =", add_special_tokens=False).input_ids)
    assert [p for p in pieces if p.strip("▁").isdigit()] == ["1", "2", "3", "4", "5"]
    assert tok.decode(tok("héllo wörld 42").input_ids, skip_special_tokens=True) == "héllo wörld 42"
    model = AutoModelForCausalLM.from_pretrained(str(dest))
    assert model.num_parameters() > 1_000_000
    for split in zoo.TASK_SPLITS:
        assert sorted(p.stem for p in (dest / "tasks" / split).glob("*.jsonl")) == sorted(
            tasks_gen.KINDS
        )
    meta = json.loads((dest / "haqa-zoo.json").read_text())
    assert meta["pretrain"]["steps_done"] == 2


@pytest.mark.slow
def test_a_failed_build_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("killed mid-build")

    monkeypatch.setattr(zoo_build, "pretrain", boom)
    with pytest.raises(RuntimeError):
        zoo_build.build_tiny(tmp_path / "tiny", spec=TinySpec(steps=2, batch_size=2))
    assert list(tmp_path.iterdir()) == []


def test_unknown_names_and_splits_are_user_errors() -> None:
    with pytest.raises(HaqaError, match="unknown zoo model"):
        zoo.zoo_path("gpt-5")
    with pytest.raises(HaqaError, match="unknown split"):
        zoo.task_files("tiny", "dev")


@pytest.mark.slow
def test_ensure_reuses_the_built_model(tiny_model: Path) -> None:
    stamp = (tiny_model / "model.safetensors").stat().st_mtime_ns
    assert zoo.ensure("tiny") == tiny_model
    assert (tiny_model / "model.safetensors").stat().st_mtime_ns == stamp
    files = zoo.task_files("tiny", "test")
    assert [f.stem for f in files] == sorted(tasks_gen.KINDS)
    meta = json.loads((tiny_model / "haqa-zoo.json").read_text())
    assert meta["architecture"] == "LlamaForCausalLM"


def test_a_tiny_model_from_an_older_recipe_is_not_served(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A cached tiny model whose recorded spec is not today's TinySpec counts as not built, so
    ``ensure`` rebuilds it instead of serving a model the docs no longer describe."""
    monkeypatch.setenv("HAQA_HOME", str(tmp_path))
    folder = zoo.zoo_path("tiny")
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    assert not zoo.is_built("tiny")  # no haqa-zoo.json: not a finished build
    current = TinySpec().model_dump()
    older = {k: v for k, v in current.items() if k != "embedding_init_std"}
    for spec, built in ((older, False), ({**current, "steps": 1}, False), (current, True)):
        (folder / zoo_build.METADATA_FILE).write_text(json.dumps({"spec": spec}))
        assert zoo.is_built("tiny") is built, spec
        assert (zoo.status("tiny") == "stale") is not built, spec
        capsys.readouterr()
        assert main(["zoo", "list", "--json"]) == 0
        rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        row = next(r for r in rows if r["name"] == "tiny")
        assert (row["built"], row["stale"]) == (built, not built)
