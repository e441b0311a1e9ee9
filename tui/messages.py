"""The app's own messages: what the run worker tells the screens (posted from its thread)."""

from __future__ import annotations

from dataclasses import dataclass

from textual.message import Message

from haqa.store import MessageRecord, RunRecord, TrialRecord


@dataclass
class RunEvent(Message):
    """One trace message of the live run, with the run's trials as stored right after it (and
    the run row when it may have changed: the first message, stage marks, the result)."""

    record: MessageRecord
    trials: list[TrialRecord]
    run: RunRecord | None = None


@dataclass
class RunEnded(Message):
    """The run's worker returned: the run as stored now, or the one-line error that ended it."""

    run: RunRecord | None
    error: str | None = None


@dataclass
class RunLoaded(Message):
    """A resumed run's trace and trials so far, read before it continues."""

    run: RunRecord
    messages: list[MessageRecord]
    trials: list[TrialRecord]
