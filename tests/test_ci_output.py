"""Headless runs in CI: the answer as one JSON document with a published schema, JUnit XML, exit
codes a pipeline can act on (0 met, 2 bad input, 3 no configuration met the goal, 4 stopped,
5 the regression gate failed), and the documented shell pipeline run end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from haqa.cli.answer import SCHEMA_PATH, RunAnswer, schema_text
from haqa.errors import EXIT_BAD_INPUT, EXIT_GOAL_NOT_MET, EXIT_REGRESSION

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


PIPELINE = ROOT / "docs" / "ci" / "haqa-pipeline.sh"


def _pipeline(out: Path, db: Path, *args: str, gate: str | None = None) -> int:
    """docs/ci/haqa-pipeline.sh as a CI job runs it (haqa from this environment)."""
    env = {**os.environ, "HAQA": str(Path(sys.executable).with_name("haqa"))}
    if gate:
        env["HAQA_MAX_REGRESSION"] = gate
    done = subprocess.run(
        ["sh", str(PIPELINE), str(out), "--db", str(db), *args],
        capture_output=True, text=True, env=env, cwd=out.parent, timeout=600,
    )  # fmt: skip
    # Nothing but the JSON answer reached stdout: it parses whole, and equals the file.
    stdout = (out / "stdout.json").read_text()
    assert json.loads(stdout) == json.loads((out / "answer.json").read_text()), done.stderr[-2000:]
    return done.returncode


@pytest.mark.slow
def test_the_documented_pipeline_gates_a_run_against_the_last_good_one(
    tiny_grid: tuple[Path, str], tmp_path: Path
) -> None:
    """docs/ci/haqa-pipeline.sh end to end on the tiny model's recorded grid: the first run has
    no baseline yet (met, gate skipped, exit 0, JSON valid against the published schema, JUnit
    with a skipped gate); a second run whose gate no answer can pass (101 points more accurate
    than the first run's answer, measured again beside it) exits 5 with the failing figure named
    in the JSON and the JUnit; a run whose goal nothing meets exits 3."""
    import jsonschema

    grid_db, grid_id = tiny_grid
    db = tmp_path / "haqa.duckdb"
    db.write_bytes(grid_db.read_bytes())  # the session's grid store stays as it was
    flags = ["--model", "zoo:tiny", "--tabular", grid_id, "--finetune-trials", "0",
             "--deploy-trials", "4"]  # fmt: skip
    schema = json.loads((ROOT / SCHEMA_PATH).read_text())

    assert _pipeline(tmp_path / "first", db, *flags) == 0
    first = json.loads((tmp_path / "first" / "answer.json").read_text())
    jsonschema.validate(first, schema)
    assert first["status"] == "met" and first["result"]["regression"]["baseline_run"] is None
    suite = ET.parse(tmp_path / "first" / "junit.xml").getroot().find("testsuite")
    assert suite is not None and suite.get("failures") == "0" and suite.get("skipped") == "1"

    # Impossible whatever the timing noise: 101 points more accurate (decode may be 10x slower,
    # which a recorded grid never is: that check passes).
    gate = "decode=1000%,accuracy=-101pt"
    assert _pipeline(tmp_path / "second", db, *flags, gate=gate) == EXIT_REGRESSION
    second = json.loads((tmp_path / "second" / "answer.json").read_text())
    jsonschema.validate(second, schema)
    report = second["result"]["regression"]
    assert second["status"] == "regressed" and second["exit_code"] == EXIT_REGRESSION
    assert report["baseline_run"] == first["run_id"] and not report["passed"]
    assert "measured again side by side" in report["basis"]
    by_metric = {c["metric"]: c for c in report["checks"]}
    assert by_metric["decode"]["compared"] and by_metric["decode"]["passed"]
    assert by_metric["accuracy"]["compared"] and not by_metric["accuracy"]["passed"]
    suite = ET.parse(tmp_path / "second" / "junit.xml").getroot().find("testsuite")
    assert suite is not None and suite.get("tests") == "3"  # the goal, decode, accuracy
    failed = [c.get("name") for c in suite.iter("testcase") if c.find("failure") is not None]
    assert failed == [f"regression: accuracy vs run {first['run_id']}"]

    no_fit = [*flags, "--memory-budget", "1MiB"]
    assert _pipeline(tmp_path / "third", db, *no_fit) == EXIT_GOAL_NOT_MET
    third = json.loads((tmp_path / "third" / "answer.json").read_text())
    jsonschema.validate(third, schema)
    assert third["status"] == "not_met" and third["exit_code"] == EXIT_GOAL_NOT_MET


def test_a_killed_write_leaves_the_previous_answer_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--output and --junit are written to a temporary file and renamed: a run killed while
    writing (here: the rename never happens) leaves the previous document, and no stray file."""
    from haqa import paths

    target = tmp_path / "answer.json"
    paths.write_text_atomic(target, '{"run_id": "old"}\n')
    assert target.read_text() == '{"run_id": "old"}\n'

    def killed(src: str, dst: str) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(paths.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        paths.write_text_atomic(target, '{"run_id": "new", "half": ')
    assert target.read_text() == '{"run_id": "old"}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["answer.json"]
