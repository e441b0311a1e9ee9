"""Running a tool as a trial: time it, catch its failure, and return a ``TrialResult``.

The caller (a CLI command, the supervisor) stores the result; a ``HaqaError`` raised by the tool is
the user's to fix and propagates, any other exception becomes a ``failed`` trial with its reason.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import BaseModel

from haqa.errors import HaqaError, no_room_message
from haqa.schemas import TrialMetrics
from haqa.store import TrialResult, utcnow

R = TypeVar("R", bound=BaseModel)


def run_as_trial(
    *,
    stage: str,
    tool: str,
    config: dict[str, Any],
    fn: Callable[[], R],
    metrics: Callable[[R], TrialMetrics],
) -> tuple[TrialResult, R | None]:
    """Run ``fn``; the trial's metrics come from ``metrics(result)``."""
    started = utcnow()
    try:
        result = fn()
    except HaqaError:
        raise
    except Exception as exc:
        no_room = no_room_message(exc)
        if no_room:  # the user's to fix, like bad input: one line, exit 2
            raise HaqaError(no_room) from exc
        tail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        return (
            TrialResult(
                stage=stage,
                tool=tool,
                config=config,
                status="failed",
                error=" ".join(tail.split())[:2000],
                started_at=started,
                finished_at=utcnow(),
            ),
            None,
        )
    measured = metrics(result)
    # The full tool result goes with the metrics, so nothing a tool measured is lost; what the
    # metrics already hold is not repeated.
    rest = {
        k: v
        for k, v in result.model_dump(mode="json").items()
        if k not in measured.model_fields_set
    }
    return (
        TrialResult(
            stage=stage,
            tool=tool,
            config=config,
            metrics=measured.model_copy(update={"result": rest}),
            status="ok",
            started_at=started,
            finished_at=utcnow(),
        ),
        result,
    )
