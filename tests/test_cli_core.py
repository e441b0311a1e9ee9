"""The CLI's shared behaviour: help is cheap, errors are one line with exit 2, trials are shown."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from haqa.cli import main
from haqa.store import Store

HEAVY = ("torch", "transformers", "peft", "bitsandbytes", "llama_cpp", "textual", "langgraph")


def test_importing_the_cli_pulls_in_no_heavy_library() -> None:
    code = (
        "import sys, haqa.cli; haqa.cli._register(); "
        f"print([m for m in {HEAVY!r} if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_help_lists_the_commands() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "haqa", "--help"], capture_output=True, text=True, check=True
    )
    for command in ("trials", "runs"):
        assert command in out.stdout


def test_trials_on_a_missing_store_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["trials", "--db", str(tmp_path / "nothing.duckdb")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "does not exist" in err
    assert not (tmp_path / "nothing.duckdb").exists()


def test_trials_shows_stored_rows_and_filters_by_run(
    db_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from datetime import timedelta

    from haqa.schemas import TrialMetrics
    from haqa.store import TrialResult, utcnow

    store = Store(db_path)
    runs = [store.create_run(model="zoo:tiny", brain="manual") for _ in range(2)]
    for i, run in enumerate(runs):
        now = utcnow()
        store.add_trial(
            run.run_id,
            TrialResult(
                stage="finetune",
                tool="evaluate",
                config={"split": "test", "index": i},
                metrics=TrialMetrics(accuracy=0.25 + i / 2),
                started_at=now,
                finished_at=now + timedelta(seconds=1),
            ),
        )
    assert main(["trials", "--db", str(db_path), "--run", runs[1].run_id, "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["run_id"], r["metrics"]["accuracy"]) for r in rows] == [(runs[1].run_id, 0.75)]

    assert main(["trials", "--db", str(db_path)]) == 0
    table = capsys.readouterr().out
    assert "0.250" in table and "0.750" in table and "evaluate" in table

    assert main(["trials", "--db", str(db_path), "--run", "no-such-run"]) == 2
    assert "no-such-run" in capsys.readouterr().err


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["trials", "--no-such-flag"]) == 2
    assert "no-such-flag" in capsys.readouterr().err
