"""What a run's decisions cost, read from its trace: for ``haqa compare``'s table.

Seconds per decision are the time from the agent's dynamic prompt to its decision (whatever the
brain: an LLM's calls and retries, an optimizer's sampling), tokens per decision the LLM calls'
prompt and completion tokens, the valid-proposal rate the decisions over decisions plus invalid
proposals, and the hybrid brain's shares who chose each of its decisions. Only the deploy stage
(the tuner) is counted: a tabular run has no other.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from haqa.store import MessageRecord, Store

AGENT = "tuner"


class DecisionCosts(BaseModel):
    decisions: int
    invalid: int
    fallbacks: int = Field(description="steps decided by the expert because the LLM could not")
    seconds: float = Field(description="prompt to decision, summed over decisions")
    llm_calls: int
    tokens: int
    llm_chosen: int = Field(description="hybrid decisions the LLM chose")
    optimizer_chosen: int = Field(description="hybrid decisions that took the optimizer's first")


def decision_costs(store: Store, run_id: str) -> DecisionCosts:
    messages = [m for m in store.list_messages(run_id) if m.agent == AGENT]
    return DecisionCosts(
        decisions=sum(m.role == "decision" for m in messages),
        invalid=sum(m.role == "invalid" for m in messages),
        fallbacks=sum(m.tool_name == "fallback" for m in messages),
        seconds=_decision_seconds(messages),
        llm_calls=sum(m.role == "llm_call" for m in messages),
        tokens=sum(_tokens(m) for m in messages if m.role == "llm_call"),
        llm_chosen=_hybrid(messages, "llm"),
        optimizer_chosen=_hybrid(messages, "optimizer"),
    )


def _decision_seconds(messages: list[MessageRecord]) -> float:
    total, asked = 0.0, None
    for m in messages:
        if m.role == "user":
            asked = m.created_at
        elif m.role == "decision" and asked is not None:
            total += (m.created_at - asked).total_seconds()
            asked = None
    return total


def _tokens(m: MessageRecord) -> int:
    args = m.tool_args or {}
    return int(args.get("prompt_tokens") or 0) + int(args.get("completion_tokens") or 0)


def _hybrid(messages: list[MessageRecord], source: str) -> int:
    return sum(
        m.tool_name == "hybrid_choice" and (m.tool_args or {}).get("source") == source
        for m in messages
    )
