"""``haqa run --json``: the answer as one JSON document a CI job can hold on to.

The document (``RunAnswer``) names the run, where it is stored, whether the goal was met (with the
exit code the command returns), the hardware it was measured on, and the whole ``RunResult``: the
chosen configuration, the llama-server command, the artifact and its sha256, effective bits per
weight, accuracy (paired with the reference's), perplexity, tokens/s with the spread of the
answer's own rounds, peak memory, the baselines measured side by side, and the regression gate's
verdict when the run had a baseline. Its JSON Schema is
published at ``docs/run-answer.schema.json`` (a test keeps it equal to this model's).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from haqa.agents.supervisor.result import RunResult
from haqa.errors import EXIT_GOAL_NOT_MET, EXIT_REGRESSION, EXIT_STOPPED

Status = Literal["met", "not_met", "stopped", "regressed"]
EXIT_CODES: dict[str, int] = {
    "met": 0,
    "not_met": EXIT_GOAL_NOT_MET,
    "stopped": EXIT_STOPPED,
    "regressed": EXIT_REGRESSION,
}

SCHEMA_PATH = Path("docs") / "run-answer.schema.json"


class RunAnswer(BaseModel):
    """The machine-readable answer of ``haqa run`` (``--json`` on stdout, ``--output FILE``)."""

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = 1
    run_id: str
    status: Status = Field(
        description="met: an answer meets the goal; not_met: the run ended without one; "
        "stopped: it stopped before the end and can be resumed; regressed: an answer meets the "
        "goal but the regression gate failed (result.regression says which figure)"
    )
    exit_code: int = Field(description="what `haqa run` exits with (0, 3, 4 or 5)")
    store: str = Field(description="the DuckDB file that holds the run")
    report: str | None = Field(None, description="the Markdown report's path")
    model: str
    brain: str
    goal: str
    hardware_fingerprint: str | None = Field(
        None, description="the machine the figures hold for (compare runs only on the same)"
    )
    artifact_sha256: str | None = Field(None, description="sha256 of the answer's GGUF file")
    result: RunResult | None = Field(None, description="the answer and its measurements")


def sha256_of(path: str | None) -> str | None:
    if not path or not Path(path).is_file():
        return None
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def run_answer(
    *,
    run: Any,
    store_path: Path,
    result: RunResult | None,
    report: Path | None,
) -> RunAnswer:
    """The document for a stored run and its result (None: the run stopped)."""
    return RunAnswer(
        run_id=run.run_id,
        status=(status := answer_status(result)),
        exit_code=EXIT_CODES[status],
        store=str(store_path),
        report=str(report) if report else None,
        model=run.model,
        brain=run.brain,
        goal=result.goal if result else json.dumps(run.goal),
        hardware_fingerprint=run.hardware_fingerprint,
        artifact_sha256=sha256_of(result.gguf_path) if result and result.found else None,
        result=result,
    )


def answer_status(result: RunResult | None) -> Status:
    if result is None:
        return "stopped"
    if not result.found:
        return "not_met"
    return "regressed" if result.regression and not result.regression.passed else "met"


def schema_text() -> str:
    """The published JSON Schema, as the file holds it."""
    return json.dumps(RunAnswer.model_json_schema(), indent=2, sort_keys=True) + "\n"
