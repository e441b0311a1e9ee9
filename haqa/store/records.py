"""The store's row types (pydantic) and the JSON codec of its JSON columns."""

from __future__ import annotations

import json
import secrets
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from haqa.redact import redact_value
from haqa.schemas import TrialMetrics, TrialStatus

RunStatus = Literal["running", "finished", "failed", "stopped"]


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def new_run_id() -> str:
    """Sortable and short enough to type: ``20261123-150512-a1b2``."""
    return utcnow().strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)


class RunRecord(BaseModel):
    model_config = ConfigDict(frozen=True)

    run_id: str
    created_at: datetime
    finished_at: datetime | None = None
    model: str
    hardware_fingerprint: str | None = None
    hardware: dict[str, Any] | None = None
    goal: dict[str, Any] | None = None
    brain: str
    status: RunStatus
    config: dict[str, Any] | None = None
    result: dict[str, Any] | None = None


class TrialResult(BaseModel):
    """A trial as a tool finished it, before the store numbers it."""

    model_config = ConfigDict(frozen=True)

    stage: str
    tool: str
    config: dict[str, Any]
    metrics: TrialMetrics = Field(default_factory=TrialMetrics)
    status: TrialStatus = "ok"
    error: str | None = None
    started_at: datetime
    finished_at: datetime
    duration_s: float = -1.0

    @model_validator(mode="after")
    def _duration(self) -> TrialResult:
        if self.duration_s < 0:
            # Frozen model: set once at construction, from the two timestamps.
            object.__setattr__(
                self, "duration_s", (self.finished_at - self.started_at).total_seconds()
            )
        return self


class TrialRecord(TrialResult):
    """A finished, stored trial. Frozen: a stored trial is never changed."""

    run_id: str
    trial_id: int


def superseded(trials: list[TrialRecord]) -> set[int]:
    """Trials replaced by a re-measurement (``remeasure_of``, taken after a drift) that finished:
    the search, the answer and the TUI use the re-measurement instead."""
    return {
        int(t.config["remeasure_of"])
        for t in trials
        if "remeasure_of" in t.config and t.status == "ok"
    }


class MessageRecord(BaseModel):
    """One entry of a run's trace, in order."""

    model_config = ConfigDict(frozen=True)

    run_id: str
    seq: int
    created_at: datetime
    agent: str
    role: str
    content: str
    tool_name: str | None = None
    tool_args: dict[str, Any] | None = None
    tool_result: Any = None


def _dump(value: Any) -> str | None:
    """JSON for a column; every string passes through the secret redaction on the way in."""
    if value is None:
        return None
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    return json.dumps(redact_value(value), default=str, sort_keys=True)


def _load(text: str | None) -> Any:
    return None if text is None else json.loads(text)
