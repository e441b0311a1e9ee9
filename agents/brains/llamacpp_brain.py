"""The ``llamacpp`` brain: a local GGUF instruct model through llama-cpp-python's chat completion
with tool calling (``chatml-function-calling`` format) — works with no network at all."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from haqa.agents.brains.base import BrainKind, DecisionContext, Proposal
from haqa.agents.brains.react import AssistantTurn, ToolCall, react_propose
from haqa.errors import HaqaError
from haqa.modelref import is_gguf


class LlamaCppBrain:
    name: str = "llamacpp"
    kind: BrainKind = "llm"

    def __init__(
        self, gguf: str | None, *, n_ctx: int = 4096, chat_format: str | None = None
    ) -> None:
        if not gguf:
            raise HaqaError("the llamacpp brain needs --llm-gguf (a local GGUF instruct model)")
        path = Path(gguf)
        if not path.is_file() or not is_gguf(path):
            raise HaqaError(f"--llm-gguf {gguf} is not a GGUF file: pass a local instruct model")
        from llama_cpp import Llama

        self._llm = Llama(
            model_path=str(path),
            n_ctx=n_ctx,
            chat_format=chat_format or "chatml-function-calling",
            verbose=False,
        )

    def _chat(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> AssistantTurn:
        reply: Any = self._llm.create_chat_completion(
            messages=messages,  # type: ignore[arg-type]
            tools=tools,  # type: ignore[arg-type]
            tool_choice="auto",
            temperature=0.0,
            max_tokens=512,
        )
        message = reply["choices"][0]["message"]
        calls = [
            ToolCall(
                id=str(c.get("id") or f"call_{i}"),
                name=str(c["function"]["name"]),
                arguments=str(c["function"].get("arguments") or "{}"),
            )
            for i, c in enumerate(message.get("tool_calls") or [])
        ]
        return AssistantTurn(content=str(message.get("content") or ""), tool_calls=calls)

    def propose(self, ctx: DecisionContext) -> Proposal:
        return react_propose(ctx, self._chat)
