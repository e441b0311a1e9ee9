"""The ``openai`` brain: any OpenAI-compatible chat endpoint through langchain-openai.

A hosted API, vLLM, a llama.cpp server (``python -m llama_cpp.server``, docs/agents.md) or Ollama:
``--llm-base-url`` and ``--llm-model`` say where, the key comes from ``OPENAI_API_KEY`` and is
never written to the trace, the store or logs. An endpoint that is down, answers 5xx or stays
silent past ``--llm-timeout`` raises ``BrainUnavailable``: the step falls back to the expert
policy and the run goes on.
"""

from __future__ import annotations

import json
import os
from typing import Any

from haqa.agents.brains.base import BrainKind, BrainUnavailable, DecisionContext, Proposal
from haqa.agents.brains.llm_call import LlmCall, prompt_chars, timed, trace_call
from haqa.agents.brains.react import AssistantTurn, ToolCall, react_propose
from haqa.errors import HaqaError


class OpenAIBrain:
    name: str = "openai"
    kind: BrainKind = "llm"

    def __init__(self, base_url: str | None, model: str | None, *, timeout_s: float = 60.0) -> None:
        if not model:
            raise HaqaError("the openai brain needs --llm-model (the model name at the endpoint)")
        from langchain_openai import ChatOpenAI

        key = os.environ.get("OPENAI_API_KEY")
        if not key and not base_url:
            raise HaqaError(
                "the openai brain needs OPENAI_API_KEY (or --llm-base-url of a local server)"
            )
        self.model = model
        #: Set once the model answers without calling a tool (a small model rarely calls one by
        #: itself): from then on every round forces ``propose_trial``, whose arguments a server
        #: with grammars (llama.cpp's) decodes under the space's schema.
        self.force_action = False
        self._llm = ChatOpenAI(
            model=model,
            base_url=base_url,
            api_key=key or "not-needed",  # type: ignore[arg-type]
            timeout=timeout_s,
            # No retry: a failed call falls back at once (the next step asks again), so a dead
            # or silent server costs one timeout per step, not two.
            max_retries=0,
            temperature=0.0,
        )

    def _invoke(
        self, ctx: DecisionContext, messages: list[dict[str, Any]], tools: list[dict[str, Any]]
    ) -> Any:
        """The endpoint's reply; BrainUnavailable when it has none (down, 5xx, timeout)."""
        import openai

        if self.force_action:
            bound = self._llm.bind_tools(forced_tools(tools, ctx), tool_choice="propose_trial")
        else:
            bound = self._llm.bind_tools(tools)
        try:
            return bound.invoke(messages)
        except (openai.APIConnectionError, openai.InternalServerError) as exc:
            # APITimeoutError is an APIConnectionError.
            kind = "timed out" if isinstance(exc, openai.APITimeoutError) else "failed"
            detail = " ".join(str(exc).split())[:200]
            raise BrainUnavailable(f"the LLM endpoint {kind}: {detail}") from None

    def _chat(
        self, ctx: DecisionContext, messages: list[dict[str, Any]], tools: list[dict[str, Any]]
    ) -> AssistantTurn:
        purpose = "forced propose_trial" if self.force_action else "react round"
        call = LlmCall(brain=self.name, model=self.model, purpose=purpose)
        call.prompt_chars = prompt_chars(messages)
        try:
            with timed() as took:
                reply = self._invoke(ctx, messages, tools)
        except BrainUnavailable as exc:
            call.latency_s, call.error = took[0], str(exc)
            trace_call(ctx, call)
            raise
        turn = _turn(reply)
        usage = getattr(reply, "usage_metadata", None) or {}
        call.latency_s = took[0]
        call.prompt_tokens = usage.get("input_tokens")
        call.completion_tokens = usage.get("output_tokens")
        call.answer = turn.content
        call.tool_call = "; ".join(f"{c.name}({c.arguments})" for c in turn.tool_calls) or None
        trace_call(ctx, call)
        if not turn.tool_calls and not turn.malformed and not self.force_action:
            self.force_action = True
            ctx.trace(
                agent=ctx.agent,
                role="observation",
                content=f"{self.model} answered without a tool call: from now on each round "
                "forces propose_trial (its arguments constrained to the search space)",
            )
        return turn

    def propose(self, ctx: DecisionContext) -> Proposal:
        return react_propose(ctx, lambda messages, tools: self._chat(ctx, messages, tools))


def forced_tools(tools: list[dict[str, Any]], ctx: DecisionContext) -> list[dict[str, Any]]:
    """``propose_trial`` alone, its configuration every knob of the space, each an enum of the
    values it allows (``constrained.py``): under a grammar, the call is in the space."""
    from haqa.agents.brains.constrained import config_schema, fixed_values

    config = config_schema(ctx.space)
    for name, value in fixed_values(ctx.space).items():
        config["properties"][name] = {"enum": [value]}
        config["required"].append(name)
    action = next(t for t in tools if t["function"]["name"] == "propose_trial")
    function = {
        **action["function"],
        "parameters": {
            "type": "object",
            "properties": {"config": config},
            "required": ["config"],
        },
    }
    return [{"type": "function", "function": function}]


def _turn(reply: Any) -> AssistantTurn:
    """The chat model's reply as an AssistantTurn (its tool calls' arguments as JSON text)."""
    calls = [
        ToolCall(
            id=str(c.get("id") or f"call_{i}"),
            name=str(c["name"]),
            arguments=json.dumps(c.get("args", {})),
        )
        for i, c in enumerate(getattr(reply, "tool_calls", []) or [])
    ]
    malformed = [
        f"{c.get('name')}: {c.get('error') or 'unparseable arguments'}"
        for c in getattr(reply, "invalid_tool_calls", []) or []
    ]
    content = reply.content if isinstance(reply.content, str) else str(reply.content)
    return AssistantTurn(content=content, tool_calls=calls, malformed=malformed)
