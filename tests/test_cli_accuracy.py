"""``haqa finetune`` / ``haqa eval`` / ``haqa zoo`` through the CLI: one stored trial per call,
settings layered TOML < environment < flags, and bad input refused before the store is touched."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from haqa.cli import main
from haqa.store import Store
from haqa.tools.export_gguf import Args as ExportArgs
from haqa.tools.export_gguf import export_gguf


def _trials(db: Path) -> list[dict[str, object]]:
    return [t.model_dump(mode="json") for t in Store(db, create=False).list_trials(None)]


@pytest.mark.slow
def test_finetune_then_eval_store_one_trial_each(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "h.duckdb"
    assert main(["finetune", "--model", "zoo:tiny", "--max-steps", "3", "--batch-size", "4",
                 "--lr", "1e-3", "--db", str(db)]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "haqa eval --model zoo:tiny --adapter" in out
    (ft,) = _trials(db)
    assert ft["stage"] == "finetune" and ft["tool"] == "run_qlora" and ft["status"] == "ok"
    assert ft["config"]["max_steps"] == 3 and ft["config"]["learning_rate"] == 1e-3  # type: ignore[index]
    metrics = ft["metrics"]
    assert metrics["peak_mem_bytes"] > 0 and metrics["final_loss"] > 0  # type: ignore[index]
    adapter = metrics["adapter_path"]  # type: ignore[index]

    assert main(["eval", "--model", "zoo:tiny", "--adapter", adapter, "--limit", "4",
                 "--split", "validation", "--db", str(db)]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "arithmetic" in out and "acc_norm" in out
    trials = _trials(db)
    assert len(trials) == 2
    ev = trials[1]
    assert ev["tool"] == "evaluate" and ev["stage"] == "finetune"
    assert 0.0 <= ev["metrics"]["accuracy"] <= 1.0  # type: ignore[index]

    assert main(["trials", "--db", str(db)]) == 0
    shown = capsys.readouterr().out
    assert "run_qlora" in shown and "evaluate" in shown


@pytest.mark.slow
def test_settings_layer_toml_then_env_then_flags(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    toml = tmp_path / "ft.toml"
    toml.write_text('model = "zoo:tiny"\n[finetune]\nmax_steps = 5\nlora_r = 4\nbatch_size = 4\n')
    monkeypatch.setenv("HAQA_FINETUNE__MAX_STEPS", "2")
    monkeypatch.setenv("HAQA_FINETUNE__LORA_R", "6")
    db = tmp_path / "h.duckdb"
    assert main(["finetune", "--config", str(toml), "--lora-r", "2", "--db", str(db)]) == 0
    (trial,) = _trials(db)
    cfg = trial["config"]
    # TOML said 5 steps, the environment 2: env wins. Env said r=6, the flag 2: the flag wins.
    assert cfg["max_steps"] == 2 and cfg["lora_r"] == 2 and cfg["batch_size"] == 4  # type: ignore[index]
    assert trial["metrics"]["result"]["steps"] == 2  # type: ignore[index]


def _bad_input_cases(tmp_path: Path) -> dict[str, list[str]]:
    not_lm = tmp_path / "bert"
    not_lm.mkdir()
    (not_lm / "config.json").write_text(json.dumps({"architectures": ["BertModel"]}))
    (not_lm / "model.safetensors").write_bytes(b"")
    unknown_key = tmp_path / "unknown.toml"
    unknown_key.write_text("[finetune]\nlora_rank = 8\n")
    out_of_range = tmp_path / "range.toml"
    out_of_range.write_text("[finetune]\nlearning_rate = 5.0\n")
    top_key = tmp_path / "top.toml"
    top_key.write_text('modle = "zoo:tiny"\n')
    bad_task = tmp_path / "bad.jsonl"
    bad_task.write_text(json.dumps({"question": "1 + 1 =", "answer": 0}) + "\n")
    missing = str(tmp_path / "no-such-model")
    return {
        "finetune missing model": ["finetune", "--model", missing],
        "eval missing model": ["eval", "--model", missing],
        "finetune not a causal LM": ["finetune", "--model", str(not_lm)],
        "eval not a causal LM": ["eval", "--model", str(not_lm)],
        "unknown TOML key": ["finetune", "--config", str(unknown_key)],
        "unknown TOML top-level key": ["finetune", "--config", str(top_key)],
        "out-of-range TOML value": ["finetune", "--config", str(out_of_range)],
        "out-of-range flag": ["finetune", "--lora-r", "0"],
        "task without choices (finetune)": ["finetune", "--tasks", str(bad_task)],
        "task without choices (eval)": ["eval", "--tasks", str(bad_task)],
        "adapter that is not one": ["eval", "--adapter", str(tmp_path)],
        "bad split": ["eval", "--split", "train"],
        "cache type on a model folder": ["eval", "-ctk", "q8_0"],
    }


@pytest.mark.slow
def test_eval_of_a_gguf_scores_with_the_cache_types_asked(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gguf = export_gguf(ExportArgs(model=tiny_model, quant_type="Q4_K_M")).gguf_path
    db = tmp_path / "h.duckdb"
    argv = ["eval", "-m", str(gguf), "--limit", "4", "--db", str(db)]
    assert main([*argv, "-ctk", "q4_0", "-ctv", "q4_0"]) == 0
    (trial,) = _trials(db)
    assert trial["stage"] == "deploy" and trial["status"] == "ok"
    assert trial["config"]["type_k"] == trial["config"]["type_v"] == "q4_0"  # type: ignore[index]
    capsys.readouterr()
    for bad in (["-ctk", "q3_k"], ["-ctv", "f8"]):
        assert main([*argv, *bad]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "cache-type" in err, err
    assert len(_trials(db)) == 1  # nothing stored, nothing lost


@pytest.mark.slow
def test_bad_input_exits_2_with_one_line_and_no_store(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, argv in _bad_input_cases(tmp_path).items():
        db = tmp_path / f"{name.replace(' ', '-')}.duckdb"
        code = main([*argv, "--db", str(db)])
        err = capsys.readouterr().err.strip()
        assert code == 2, (name, code, err)
        assert len(err.splitlines()) == 1 and err.startswith("error: "), (name, err)
        assert not db.exists(), name


def test_bad_env_setting_exits_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HAQA_FINETUNE__LORA_RANK", "8")
    db = tmp_path / "h.duckdb"
    assert main(["finetune", "--db", str(db)]) == 2
    assert "HAQA_FINETUNE__LORA_RANK" in capsys.readouterr().err
    assert not db.exists()


def test_run_with_an_unknown_brain_exits_2_before_building_a_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("HAQA_HOME", str(home))
    db = tmp_path / "h.duckdb"
    assert main(["run", "--brain", "alphago", "--db", str(db)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown brain 'alphago'" in err
    assert not db.exists() and not (home / "zoo").exists()


@pytest.mark.slow
def test_zoo_list_and_build_of_a_built_model(
    tiny_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["zoo", "build", "tiny"]) == 0
    assert "already built" in capsys.readouterr().out
    assert main(["zoo", "list", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    tiny = next(r for r in rows if r["name"] == "tiny")
    assert tiny["built"] and tiny["parameters"] > 1_000_000


def test_zoo_build_of_an_unknown_name_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["zoo", "build", "huge"]) == 2
    assert "unknown zoo model 'huge'" in capsys.readouterr().err
