"""What every node of one run shares: the store, the run, the goal, the brain, the tools, the trace.

The store is the system of record: a node reads the history it needs from it at each step, so a
resumed run rebuilds its state by reading what was recorded, and nothing lives only in memory.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from haqa.agents.brains.base import Brain, TrialView
from haqa.agents.brains.expert import ExpertBrain
from haqa.agents.routing import Budgets
from haqa.goal import Goal
from haqa.regression import GateSpec
from haqa.schemas import MeasurementPolicy
from haqa.space import SearchSpace
from haqa.store import MessageRecord, Store, TrialRecord, TrialResult, search_trials
from haqa.trials.toolbox import Toolbox

#: Roles written to ``messages``.
ROLE_SYSTEM = "system"  # an agent's static prompt
ROLE_USER = "user"  # an agent's dynamic prompt for one step
ROLE_THOUGHT = "thought"
ROLE_TOOL_CALL = "tool_call"
ROLE_TOOL_RESULT = "tool_result"
ROLE_DECISION = "decision"  # what the node acted on (what the replay brain serves)
ROLE_INVALID = "invalid"  # a proposal that failed validation, with the reason
ROLE_OBSERVATION = "observation"  # what the agent is told after a trial or a rejection
ROLE_SUPERVISOR = "supervisor"  # routing, stage ends, the memory gate, the result

EventSink = Callable[[MessageRecord], None]


@dataclass
class RunControl:
    """Pause and stop requests from outside the graph (the TUI, a signal handler)."""

    pause: threading.Event = field(default_factory=threading.Event)
    stop: threading.Event = field(default_factory=threading.Event)

    def wait_if_paused(self) -> None:
        while self.pause.is_set() and not self.stop.is_set():
            time.sleep(0.05)


@dataclass
class RunRuntime:
    store: Store
    run_id: str
    goal: Goal
    brain: Brain
    toolbox: Toolbox
    budgets: Budgets
    finetune_space: SearchSpace
    deploy_space: SearchSpace
    finetune_defaults: dict[str, Any]
    model_summary: str
    expert: ExpertBrain = field(default_factory=ExpertBrain)
    on_event: EventSink | None = None
    control: RunControl = field(default_factory=RunControl)
    started_monotonic: float = field(default_factory=time.monotonic)
    seed: int = 0
    measurement: MeasurementPolicy = field(default_factory=MeasurementPolicy)
    #: The regression gate (--baseline): checked after the answer, before the run finishes.
    gate: GateSpec | None = None
    invalid_proposals: int = 0
    #: Proposals asked for per stage by this process (the brain's and the expert fallback's),
    #: held under ``brain_call_cap``.
    brain_calls: dict[str, int] = field(default_factory=dict)
    #: Trials stored before this process started (a resumed run) that a decision of this process
    #: has been answered with: each answers one replayed decision, once.
    claimed: set[int] = field(default_factory=set)
    # Append-only caches of this run's trace and trials: read from the store once (a resumed
    # run), then extended by every write this process makes. The store stays the record.
    _messages: list[MessageRecord] | None = None
    _trials: list[TrialRecord] | None = None
    _stored_before: frozenset[int] = frozenset()

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self.started_monotonic

    @property
    def past_deadline(self) -> bool:
        """The wall-clock limit is reached: no trial starts and no brain is asked any more."""
        return self.elapsed_s >= self.budgets.wall_clock_s

    def stored_before(self, trial_id: int) -> bool:
        """Whether the trial was in the store before this process started (a resumed run)."""
        self._all_trials()
        return trial_id in self._stored_before

    def say(
        self,
        agent: str,
        role: str,
        content: str,
        *,
        tool_name: str | None = None,
        tool_args: dict[str, Any] | None = None,
        tool_result: Any = None,
    ) -> MessageRecord:
        """Append to the trace (committed now) and tell any live listener."""
        record = self.store.add_message(
            self.run_id,
            agent=agent,
            role=role,
            content=content,
            tool_name=tool_name,
            tool_args=tool_args,
            tool_result=tool_result,
        )
        self.messages().append(record)
        if self.on_event is not None:
            self.on_event(record)
        return record

    def trace(self, **entry: Any) -> None:
        """What a brain's inner loop records (read-only tool calls), as ``say`` takes it."""
        self.say(
            str(entry.pop("agent")), str(entry.pop("role")), str(entry.pop("content")), **entry
        )

    def messages(self) -> list[MessageRecord]:
        if self._messages is None:
            self._messages = self.store.list_messages(self.run_id)
        return self._messages

    def add_trial(self, trial: TrialResult) -> TrialRecord:
        record = self.store.add_trial(self.run_id, trial)
        self._all_trials().append(record)
        return record

    def _all_trials(self) -> list[TrialRecord]:
        if self._trials is None:
            self._trials = self.store.list_trials(self.run_id)
            self._stored_before = frozenset(t.trial_id for t in self._trials)
        return self._trials

    def supervisor_marks(self) -> set[str]:
        """Stage marks in the trace (``analysed``, ``finetune_done``…); resume reads them."""
        marks = set()
        for m in self.messages():
            if m.role == ROLE_SUPERVISOR and m.tool_name == "mark" and m.tool_args:
                marks.add(str(m.tool_args.get("mark")))
        return marks

    def mark(self, mark: str, content: str, **payload: Any) -> None:
        self.say(
            "supervisor",
            ROLE_SUPERVISOR,
            content,
            tool_name="mark",
            tool_args={"mark": mark, **payload},
        )

    def last_mark_payload(self, mark: str) -> dict[str, Any] | None:
        found = None
        for m in self.messages():
            args = m.tool_args or {}
            if m.role == ROLE_SUPERVISOR and m.tool_name == "mark" and args.get("mark") == mark:
                found = args
        return found

    def trials(self, stage: str | None = None) -> list[TrialRecord]:
        return [t for t in self._all_trials() if stage is None or t.stage == stage]

    def views(self, stage: str, reference_accuracy: float | None = None) -> list[TrialView]:
        """The stage's search trials as brains see them (baselines and references left out; a
        trial measured again after drift is replaced by its re-measurement)."""
        out = []
        for t in search_trials(self.trials(stage)):
            m = t.metrics
            if stage == "finetune":
                objective = m.accuracy
                feasible = t.status == "ok" and m.accuracy is not None
            else:
                objective = self.goal.objective(m) if t.status == "ok" else None
                feasible = t.status == "ok" and self.goal.feasible(m, reference_accuracy)
            out.append(
                TrialView(
                    trial_id=t.trial_id,
                    stage=t.stage,
                    config=t.search_config,
                    status=t.status,
                    error=t.error,
                    accuracy=m.accuracy,
                    prefill_tps=m.prefill_tps,
                    decode_tps=m.decode_tps,
                    peak_mem_bytes=m.peak_mem_bytes,
                    perplexity_ratio=(
                        m.perplexity / m.reference_perplexity
                        if m.perplexity and m.reference_perplexity
                        else None
                    ),
                    objective=objective,
                    feasible=feasible,
                )
            )
        return out


def canonical(config: dict[str, Any]) -> str:
    return json.dumps(config, sort_keys=True, default=str)
