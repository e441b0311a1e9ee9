"""One call to a language model, as the trace shows it and as ``haqa compare`` counts it.

Every LLM brain writes each call it makes as an ``llm_call`` message: how big the prompt was
(characters and tokens), what came back (the text and the tool call or JSON decision), how long
it took, and the error when it failed. A person reading the trace sees what the model was asked
and what it answered; ``haqa compare`` sums seconds and tokens per decision from the same records,
so the cost it reports is the cost the run paid.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from haqa.agents.brains.base import DecisionContext

#: The trace role of an LLM call (``messages.role``).
ROLE_LLM_CALL = "llm_call"
#: ``messages.tool_name`` of an LLM call: the brain that made it.
LLM_CALL_TOOL = "llm"


class LlmCall(BaseModel):
    """What one request to a model cost and returned."""

    model_config = ConfigDict(extra="forbid")

    brain: str
    model: str
    purpose: str = Field(description="what the call decides: propose, pick, react round")
    prompt_chars: int = 0
    prompt_tokens: int | None = Field(None, description="as the model's tokenizer counted them")
    completion_tokens: int | None = None
    latency_s: float = 0.0
    threads: int | None = Field(None, description="CPU threads of a local model's call")
    prompt_cached: int | None = Field(
        None, description="prompt tokens a local model reused from its cache (not evaluated)"
    )
    forward_passes: int | None = Field(
        None, description="a local model's evaluations (batches) to write the answer"
    )
    answer: str = Field("", description="the model's text (JSON under a grammar)")
    tool_call: str | None = Field(None, description="name(arguments) of the call it made")
    error: str | None = Field(None, description="why the call failed, when it did")

    def line(self) -> str:
        """The call in one readable line (the trace message's content)."""
        tokens = (
            f"{self.prompt_tokens} tok" if self.prompt_tokens is not None else "? tok"
        ) + f" / {self.prompt_chars} chars"
        if self.prompt_cached is not None:
            tokens += f" ({self.prompt_cached} cached)"
        head = f"{self.brain} → {self.model} ({self.purpose}): prompt {tokens}, "
        head += f"{self.latency_s:.2f} s"
        if self.threads is not None:
            head += f" on {self.threads} thread{'s' if self.threads > 1 else ''}"
        if self.error:
            return head + f", FAILED: {self.error}"
        out = f", {self.completion_tokens} tokens out" if self.completion_tokens is not None else ""
        if self.forward_passes is not None:
            out += f" in {self.forward_passes} passes"
        what = f"tool call {self.tool_call}" if self.tool_call else f"answer {self.answer}"
        return head + out + f"\n{what[:600]}"


def prompt_chars(messages: list[dict[str, Any]]) -> int:
    """Characters of text the model is sent (message contents only)."""
    return sum(len(str(m.get("content") or "")) for m in messages)


def trace_call(ctx: DecisionContext, call: LlmCall) -> None:
    """Write the call to the run's trace (``llm_call``, its figures in ``tool_args``)."""
    ctx.trace(
        agent=ctx.agent,
        role=ROLE_LLM_CALL,
        content=call.line(),
        tool_name=LLM_CALL_TOOL,
        tool_args=call.model_dump(exclude={"answer"}),
        tool_result={"answer": call.answer[:4000]},
    )


@contextmanager
def timed() -> Iterator[list[float]]:
    """Seconds spent in the block, in the yielded one-element list once it ends."""
    out = [0.0]
    start = time.perf_counter()
    try:
        yield out
    finally:
        out[0] = time.perf_counter() - start
