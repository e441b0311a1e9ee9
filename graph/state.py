"""The graph's state. Deliberately small: the store holds the history (trials, trace), every node
reads what it needs from it, and a resumed run rebuilds from it. The state carries the route."""

from __future__ import annotations

from typing import Literal, TypedDict

Route = Literal["analyst", "planner", "tuner", "finish", "stopped", "done"]


class RunState(TypedDict, total=False):
    run_id: str
    route: Route
    steps: int
