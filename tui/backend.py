"""What the TUI needs from the run machinery, as a protocol: the caller (``haqa tui``) passes the
real implementation, so the TUI imports neither the graph nor LangGraph and tests can hand it
the same real backend.

``start`` and ``resume`` block until the run ends: the run screen calls them in a worker thread.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Protocol

from haqa.store import MessageRecord, Store

EventSink = Callable[[MessageRecord], None]


class Control(Protocol):
    """Pause and stop requests (``haqa.agents.runtime.RunControl`` has this shape)."""

    pause: threading.Event
    stop: threading.Event


class RunBackend(Protocol):
    @property
    def brains(self) -> tuple[str, ...]:
        """Brains the new-run form offers."""
        ...

    def validate(self, fields: dict[str, Any]) -> Any:
        """A run configuration from form fields; raises ``HaqaError`` or pydantic's
        ``ValidationError`` naming the bad field."""
        ...

    def new_control(self) -> Control: ...

    def start(
        self, store: Store, config: Any, *, run_id: str, on_event: EventSink, control: Control
    ) -> None:
        """Run to the end (or until stopped), telling ``on_event`` every trace message."""
        ...

    def resume(
        self, store: Store, run_id: str, *, on_event: EventSink, control: Control
    ) -> None: ...

    def abandon(self, store: Store, run_id: str) -> None:
        """The user leaves while the run's thread is mid-step: mark the run resumable now."""
        ...
