"""The ``openai`` brain: any OpenAI-compatible chat endpoint through langchain-openai.

A hosted API, vLLM, a llama.cpp server or Ollama: ``--llm-base-url`` and ``--llm-model`` say
where, the key comes from ``OPENAI_API_KEY`` and is never written to the trace, the store or logs.
"""

from __future__ import annotations

import os
from typing import Any

from haqa.agents.brains.base import BrainKind, DecisionContext, Proposal
from haqa.agents.brains.react import AssistantTurn, ToolCall, react_propose
from haqa.errors import HaqaError


class OpenAIBrain:
    name: str = "openai"
    kind: BrainKind = "llm"

    def __init__(
        self, base_url: str | None, model: str | None, *, timeout_s: float = 120.0
    ) -> None:
        if not model:
            raise HaqaError("the openai brain needs --llm-model (the model name at the endpoint)")
        from langchain_openai import ChatOpenAI

        key = os.environ.get("OPENAI_API_KEY")
        if not key and not base_url:
            raise HaqaError(
                "the openai brain needs OPENAI_API_KEY (or --llm-base-url of a local server)"
            )
        self.model = model
        self._llm = ChatOpenAI(
            model=model,
            base_url=base_url,
            api_key=key or "not-needed",  # type: ignore[arg-type]
            timeout=timeout_s,
            max_retries=1,
            temperature=0.0,
        )

    def _chat(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> AssistantTurn:
        reply = self._llm.bind_tools(tools).invoke(messages)
        calls = [
            ToolCall(
                id=str(c.get("id") or f"call_{i}"),
                name=str(c["name"]),
                arguments=_json(c.get("args", {})),
            )
            for i, c in enumerate(getattr(reply, "tool_calls", []) or [])
        ]
        malformed = [
            f"{c.get('name')}: {c.get('error') or 'unparseable arguments'}"
            for c in getattr(reply, "invalid_tool_calls", []) or []
        ]
        content = reply.content if isinstance(reply.content, str) else str(reply.content)
        return AssistantTurn(content=content, tool_calls=calls, malformed=malformed)

    def propose(self, ctx: DecisionContext) -> Proposal:
        return react_propose(ctx, self._chat)


def _json(value: Any) -> str:
    import json

    return json.dumps(value)
