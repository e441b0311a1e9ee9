"""The one interface every decision-maker implements, and what it is given to decide with.

A brain gets a ``DecisionContext`` (the agent's static prompt, its dynamic prompt, the search space,
the trial history, the feedback on its last proposal, read-only tools) and returns a ``Proposal``:
run one trial with this configuration, or finish. The node validates the proposal (schema, search
space, memory gate) — a brain is never trusted to have done so.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from haqa.goal import Goal
from haqa.space import SearchSpace

BrainKind = Literal["policy", "llm", "optimizer", "replay"]


class Proposal(BaseModel):
    """A brain's answer: one trial (a possibly partial configuration) or finish."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    action: Literal["trial", "finish"]
    config: dict[str, Any] = Field(default_factory=dict)
    thought: str = ""


class BrainUnavailable(Exception):
    """The brain's model could not answer at all: its server died, answered 5xx or timed out.

    Not an invalid proposal (the model said nothing): the step falls back to the expert policy
    at once, without asking a dead endpoint twice more, and the trace says what happened. The
    next step asks the model again, so a server that comes back is used again."""


class TrialView(BaseModel):
    """A trial as a brain sees it: full configuration, outcome and objective."""

    model_config = ConfigDict(frozen=True)

    trial_id: int
    stage: str
    config: dict[str, Any]
    status: str
    error: str | None = None
    accuracy: float | None = None
    prefill_tps: float | None = None
    decode_tps: float | None = None
    peak_mem_bytes: int | None = None
    #: Perplexity ÷ the reference's over the same validation prose (a goal with a perplexity
    #: floor measures it; None otherwise).
    perplexity_ratio: float | None = None
    objective: float | None = None
    feasible: bool = False


class ReadOnlyTools(Protocol):
    """What an LLM brain may call inside its ReAct loop; nothing here changes anything."""

    def query_trials(self, sql: str) -> list[dict[str, Any]]: ...

    def estimate_memory(self, config: dict[str, Any]) -> dict[str, Any]: ...

    def hardware_brief(self) -> str: ...


TraceFn = Callable[..., None]


def _no_trace(**_: Any) -> None:
    return None


@dataclass
class DecisionContext:
    """Everything one decision step can see."""

    run_id: str
    agent: str
    stage: Literal["finetune", "deploy"]
    space: SearchSpace
    goal: Goal
    static_prompt: str
    dynamic_prompt: str
    history: list[TrialView]
    defaults: dict[str, Any]
    budget_left: int
    feedback: list[str] = field(default_factory=list)
    brief: dict[str, Any] = field(default_factory=dict)
    tools: ReadOnlyTools | None = None
    trace: TraceFn = _no_trace
    seed: int = 0

    def incumbent(self) -> TrialView | None:
        """The best feasible trial so far (highest objective), if any."""
        feasible = [t for t in self.history if t.feasible and t.objective is not None]
        return max(feasible, key=lambda t: t.objective or 0.0) if feasible else None


class Brain(Protocol):
    """Decide the next action from the context. A name; nothing else."""

    name: str
    kind: BrainKind

    def propose(self, ctx: DecisionContext) -> Proposal: ...
