"""Headless runs in CI: the answer as one JSON document with a published schema, and exit codes
a pipeline can act on (0 met, 2 bad input, 3 no configuration met the goal, 4 stopped)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from haqa.cli.answer import SCHEMA_PATH, RunAnswer, schema_text
from haqa.errors import EXIT_BAD_INPUT, EXIT_GOAL_NOT_MET

ROOT = Path(__file__).resolve().parent.parent


def test_the_published_schema_is_the_answer_models() -> None:
    """docs/run-answer.schema.json is what a CI job validates against: it must be the schema of
    the document `haqa run --json` writes (regenerate: python -c 'from haqa.cli.answer import
    schema_text; print(schema_text(), end="")' > docs/run-answer.schema.json)."""
    published = (ROOT / SCHEMA_PATH).read_text()
    assert json.loads(published) == json.loads(schema_text())
    schema = json.loads(published)
    assert {"run_id", "status", "exit_code", "store"} <= set(schema["required"])


@pytest.mark.slow
def test_a_run_whose_goal_nothing_meets_exits_3_with_its_json_answer(
    tiny_model: Path, tmp_path: Path
) -> None:
    """A memory budget no deployment fits: the run ends, every trial rejected by the gate. The
    exit code says "goal not met" (3), not "bad command" (2); stdout is only the JSON answer
    (status not_met), the progress went to stderr, and --output holds the same document."""
    out_file = tmp_path / "answer.json"
    argv = ["run", "--model", "zoo:tiny", "--finetune-trials", "0", "--deploy-trials", "2"]
    argv += ["--memory-budget", "1MiB", "--eval-limit", "5", "--json", "--output", str(out_file)]
    done = subprocess.run(
        [sys.executable, "-m", "haqa", *argv, "--db", str(tmp_path / "h.duckdb")],
        capture_output=True,
        text=True,
        env={**os.environ, "HAQA_HOME": os.environ["HAQA_HOME"]},
        cwd=tmp_path,
        timeout=600,
    )
    assert done.returncode == EXIT_GOAL_NOT_MET, done.stdout[-2000:] + done.stderr[-2000:]
    answer = RunAnswer.model_validate_json(done.stdout)
    assert answer.status == "not_met" and answer.exit_code == EXIT_GOAL_NOT_MET
    assert answer.result is not None and not answer.result.found
    assert answer.result.rejected_trials >= 1 and answer.artifact_sha256 is None
    assert Path(answer.store).is_file() and answer.model == "zoo:tiny"
    assert "memory gate rejected" in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("error: run ")
    assert RunAnswer.model_validate_json(out_file.read_text()) == answer


def test_bad_input_still_exits_2(tmp_path: Path) -> None:
    from haqa.cli import main

    assert main(["run", "--goal", "fastest", "--db", str(tmp_path / "h.duckdb")]) == EXIT_BAD_INPUT
