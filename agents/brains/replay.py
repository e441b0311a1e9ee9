"""The ``replay`` brain: serves the decisions recorded in an earlier run, in order, per agent.

Every decision a node acts on is written to the trace as a ``decision`` message (agent, action,
configuration). Replaying them through the same graph re-executes the same trials in the same
order — how CI runs the graph headless without an LLM, and how a run is reproduced on new hardware.
"""

from __future__ import annotations

from collections import defaultdict, deque
from typing import Any

from haqa.agents.brains.base import BrainKind, DecisionContext, Proposal
from haqa.errors import HaqaError
from haqa.store import Store

DECISION_ROLE = "decision"


class ReplayBrain:
    name: str = "replay"
    kind: BrainKind = "replay"

    def __init__(self, store: Store, source_run_id: str) -> None:
        store.get_run(source_run_id)  # a clear error for an unknown run
        self.source_run_id = source_run_id
        self._queues: dict[str, deque[dict[str, Any]]] = defaultdict(deque)
        for message in store.list_messages(source_run_id):
            if message.role == DECISION_ROLE and message.tool_args is not None:
                self._queues[message.agent].append(message.tool_args)
        if not self._queues:
            raise HaqaError(
                f"run {source_run_id} recorded no decisions: replay a run made by `haqa run`"
            )

    def propose(self, ctx: DecisionContext) -> Proposal:
        queue = self._queues.get(ctx.agent)
        if not queue:
            return Proposal(action="finish", thought=f"replay: {ctx.agent} made no more decisions")
        recorded = queue.popleft()
        return Proposal(
            action=recorded.get("action", "trial"),
            config=dict(recorded.get("config") or {}),
            thought=f"replay of run {self.source_run_id}: " + str(recorded.get("thought", "")),
        )
