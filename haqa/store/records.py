"""The store's row types (pydantic) and the JSON codec of its JSON columns."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, Literal, cast, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator

from haqa.redact import redact_value
from haqa.schemas import TrialMetrics, TrialStatus

RunStatus = Literal["running", "finished", "failed", "stopped"]

#: What a trial measured around the search, written as ``config["role"]``; a trial without a
#: role is a search trial (a configuration a brain proposed, or its re-measurement).
#: ``base``: the base model's accuracy before fine-tuning; ``reference``: the fine-tuned model
#: as F16 GGUF, the accuracy floor's reference; ``anchor``: the run's first deployment measured
#: again to catch drift; ``baseline``: llama.cpp's defaults; ``final``: the chosen configuration
#: measured again beside the baselines; ``test``: its accuracy on the test split;
#: ``regression``: the answer or a stored run's answer measured again for the regression gate.
TrialRole = Literal["base", "reference", "anchor", "baseline", "final", "test", "regression"]
TRIAL_ROLES: tuple[TrialRole, ...] = get_args(TrialRole)

#: Keys of a stored configuration that say what the trial is, not what it ran: ``role``,
#: ``remeasure_of`` (measured again after a drift) and ``repeat_of`` (a repeated proposal,
#: pruned without running). Kept in the configuration JSON, where every version wrote them.
BOOKKEEPING_KEYS = ("role", "remeasure_of", "repeat_of")


def search_config(config: dict[str, Any]) -> dict[str, Any]:
    """A configuration as the search sees it: without the bookkeeping keys."""
    return {k: v for k, v in config.items() if k not in BOOKKEEPING_KEYS}


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
    """A trial as a tool finished it, before the store numbers it.

    What kind of trial it is lives in its configuration's bookkeeping keys (where every version
    of the store wrote it) and is read through ``role``, ``is_search``, ``remeasure_of`` and
    ``repeat_of``; an unknown role is refused when the trial is built."""

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

    @model_validator(mode="after")
    def _bookkeeping(self) -> TrialResult:
        role = self.config.get("role")
        if role is not None and role not in TRIAL_ROLES:
            raise ValueError(f"unknown trial role {role!r}: one of {', '.join(TRIAL_ROLES)}")
        for key in ("remeasure_of", "repeat_of"):
            value = self.config.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise ValueError(f"{key} must be a trial number, got {value!r}")
        return self

    @property
    def role(self) -> TrialRole | None:
        """What this trial measured around the search; None for a search trial."""
        role = self.config.get("role")
        return cast(TrialRole, role) if role in TRIAL_ROLES else None

    @property
    def is_search(self) -> bool:
        """A configuration the search proposed (measured, failed, rejected or a pruned repeat),
        or its re-measurement after a drift: what the brains, the budget and the answer count.
        The one definition of a search trial."""
        return self.role is None

    @property
    def remeasure_of(self) -> int | None:
        """The trial this one measured again after a drift, if it is a re-measurement."""
        value = self.config.get("remeasure_of")
        return None if value is None else int(value)

    @property
    def repeat_of(self) -> int | None:
        """The trial whose configuration this pruned repeat proposed again."""
        value = self.config.get("repeat_of")
        return None if value is None else int(value)

    @property
    def answers_proposal(self) -> bool:
        """The trial a brain's proposal got: a search trial that is not a re-measurement."""
        return self.is_search and self.remeasure_of is None

    @property
    def search_config(self) -> dict[str, Any]:
        """The configuration as the search sees it (without bookkeeping keys)."""
        return search_config(self.config)


class TrialRecord(TrialResult):
    """A finished, stored trial. Frozen: a stored trial is never changed."""

    run_id: str
    trial_id: int


def superseded(trials: Iterable[TrialRecord]) -> set[int]:
    """Trials replaced by a re-measurement (``remeasure_of``, taken after a drift) that finished:
    the search, the answer and the TUI use the re-measurement instead."""
    return {t.remeasure_of for t in trials if t.remeasure_of is not None and t.status == "ok"}


def search_trials(trials: Iterable[TrialRecord], stage: str | None = None) -> list[TrialRecord]:
    """The search as it stands: the search trials (``is_search``) of ``stage`` (all stages when
    None), in order, without those a finished re-measurement replaced."""
    trials = list(trials)
    replaced = superseded(trials)
    return [
        t
        for t in trials
        if t.is_search and (stage is None or t.stage == stage) and t.trial_id not in replaced
    ]


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
