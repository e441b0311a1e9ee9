"""The bounded ReAct loop shared by the LLM brains (``openai``, ``llamacpp``).

Thought → action → observation: the model may call read-only tools (trial history through SQL,
the memory estimate, the hardware brief) a bounded number of times, and must end with exactly one
action tool: ``propose_trial`` or ``finish``. Anything else — malformed JSON arguments, an unknown
tool, prose without a tool call, two actions at once — raises ``InvalidAnswer`` with the reason;
the node records it and asks again with the reason as feedback.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, Field

from haqa.agents.brains.base import DecisionContext, Proposal
from haqa.space import Knob, SearchSpace

READ_ONLY_TOOLS = ("query_trials", "estimate_memory", "hardware_brief")
ACTION_TOOLS = ("propose_trial", "finish")


class InvalidAnswer(Exception):
    """The model's answer cannot be acted on; the message says why (it goes back to the model)."""


class ToolCall(BaseModel):
    id: str
    name: str
    arguments: str = Field(description="the raw JSON text the model produced")


class AssistantTurn(BaseModel):
    content: str = ""
    tool_calls: list[ToolCall] = Field(default_factory=list)
    malformed: list[str] = Field(
        default_factory=list, description="calls the client could not parse"
    )


ChatFn = Callable[[list[dict[str, Any]], list[dict[str, Any]]], AssistantTurn]


def _knob_schema(knob: Knob) -> dict[str, Any]:
    schema: dict[str, Any] = {"description": knob.description}
    if knob.kind == "bool":
        schema["type"] = "boolean"
    elif knob.kind == "categorical":
        schema["enum"] = list(knob.choices or ())
    else:
        schema["type"] = "integer" if knob.kind == "int" else "number"
        schema["minimum"] = knob.low
        schema["maximum"] = knob.high
    return schema


def tool_schemas(space: SearchSpace) -> list[dict[str, Any]]:
    """OpenAI function-calling schemas; the action's config schema is the stage's search space."""

    def fn(
        name: str, description: str, properties: dict[str, Any], required: list[str]
    ) -> dict[str, Any]:
        return {
            "type": "function",
            "function": {
                "name": name,
                "description": description,
                "parameters": {"type": "object", "properties": properties, "required": required},
            },
        }

    config_schema = {
        "type": "object",
        "description": "knob values; knobs left out keep their defaults",
        "properties": {k.name: _knob_schema(k) for k in space.knobs},
        "additionalProperties": False,
    }
    return [
        fn(
            "query_trials",
            "Read-only SQL (one SELECT) over this run's trials: table trials(trial_id, stage, "
            "config JSON, accuracy, prefill_tps, decode_tps, peak_mem_bytes, status, error).",
            {"sql": {"type": "string"}},
            ["sql"],
        ),
        fn(
            "estimate_memory",
            "Predicted peak memory (bytes) of a configuration of this stage, before running it.",
            {"config": config_schema},
            ["config"],
        ),
        fn(
            "hardware_brief",
            "The hardware analyst's brief: facts and measured implications.",
            {},
            [],
        ),
        fn(
            "propose_trial",
            "ACTION: run one trial with this configuration. Ends your turn.",
            {"config": config_schema, "thought": {"type": "string"}},
            ["config"],
        ),
        fn(
            "finish",
            "ACTION: stop this stage; more trials are unlikely to help. Ends your turn.",
            {"thought": {"type": "string"}},
            [],
        ),
    ]


def _arguments(call: ToolCall) -> dict[str, Any]:
    try:
        args = json.loads(call.arguments or "{}")
    except json.JSONDecodeError as exc:
        raise InvalidAnswer(f"malformed JSON in the arguments of {call.name}: {exc.msg}") from None
    if not isinstance(args, dict):
        raise InvalidAnswer(f"the arguments of {call.name} must be a JSON object")
    return args


def react_propose(ctx: DecisionContext, chat: ChatFn, *, max_steps: int = 6) -> Proposal:
    """Run the loop; return the action as a Proposal (validated later by the node)."""
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": ctx.static_prompt},
        {"role": "user", "content": ctx.dynamic_prompt},
    ]
    if ctx.feedback:
        messages.append({"role": "user", "content": "\n".join(ctx.feedback[-3:])})
    tools = tool_schemas(ctx.space)
    for _ in range(max_steps):
        turn = chat(messages, tools)
        action = _action_call(turn)
        if action is not None:
            return _proposal(turn, action)
        messages.append(_assistant_message(turn))
        messages.extend(_read_only_results(ctx, turn))
    raise InvalidAnswer(f"no action after {max_steps} tool rounds: call propose_trial or finish")


def _action_call(turn: AssistantTurn) -> ToolCall | None:
    """The turn's one action call, or None when it calls only read-only tools; InvalidAnswer
    for a malformed call, no call at all, an unknown tool or more than one action."""
    if turn.malformed:
        raise InvalidAnswer("malformed tool call: " + "; ".join(turn.malformed)[:300])
    if not turn.tool_calls:
        raise InvalidAnswer(
            "no tool call: answer by calling propose_trial or finish (after any read-only tools)"
        )
    actions = [c for c in turn.tool_calls if c.name in ACTION_TOOLS]
    unknown = [c.name for c in turn.tool_calls if c.name not in (*ACTION_TOOLS, *READ_ONLY_TOOLS)]
    if unknown:
        raise InvalidAnswer(
            f"unknown tool {', '.join(unknown)}: use {', '.join(READ_ONLY_TOOLS + ACTION_TOOLS)}"
        )
    if len(actions) > 1:
        raise InvalidAnswer("more than one action in one answer: call exactly one")
    return actions[0] if actions else None


def _proposal(turn: AssistantTurn, call: ToolCall) -> Proposal:
    """The Proposal an action call makes, its thought the turn's text and the call's own."""
    args = _arguments(call)
    thought = " ".join(filter(None, [turn.content.strip(), str(args.get("thought", ""))]))
    if call.name == "finish":
        return Proposal(action="finish", thought=thought)
    config = args.get("config")
    if not isinstance(config, dict):
        raise InvalidAnswer("propose_trial needs a 'config' object")
    return Proposal(action="trial", config=config, thought=thought)


def _assistant_message(turn: AssistantTurn) -> dict[str, Any]:
    """The turn as an assistant chat message, its tool calls in OpenAI's format."""
    return {
        "role": "assistant",
        "content": turn.content,
        "tool_calls": [
            {
                "id": c.id,
                "type": "function",
                "function": {"name": c.name, "arguments": c.arguments},
            }
            for c in turn.tool_calls
        ],
    }


def _read_only_results(ctx: DecisionContext, turn: AssistantTurn) -> list[dict[str, Any]]:
    """Run each read-only call of the turn, tracing it; the tool messages of their results."""
    results = []
    for call in turn.tool_calls:
        result = _run_read_only(ctx, call)
        ctx.trace(
            agent=ctx.agent,
            role="tool_call",
            content=f"{call.name}({call.arguments})",
            tool_name=call.name,
            tool_args=_safe_args(call),
            tool_result=result,
        )
        results.append(
            {
                "role": "tool",
                "tool_call_id": call.id,
                "content": json.dumps(result, default=str)[:4000],
            }
        )
    return results


def _safe_args(call: ToolCall) -> dict[str, Any] | None:
    try:
        args = json.loads(call.arguments or "{}")
    except json.JSONDecodeError:
        return None
    return args if isinstance(args, dict) else None


def _run_read_only(ctx: DecisionContext, call: ToolCall) -> Any:
    """A read-only tool's result, or its error as the observation (never an exception)."""
    if ctx.tools is None:
        return {"error": "no tools in this context"}
    try:
        args = _arguments(call)
        if call.name == "query_trials":
            return {"rows": ctx.tools.query_trials(str(args.get("sql", "")))}
        if call.name == "estimate_memory":
            config = args.get("config")
            if not isinstance(config, dict):
                return {"error": "estimate_memory needs a 'config' object"}
            return ctx.tools.estimate_memory(config)
        return {"brief": ctx.tools.hardware_brief()}
    except InvalidAnswer as exc:
        return {"error": str(exc)}
    except Exception as exc:  # a tool's refusal is an observation for the model
        return {"error": " ".join(str(exc).split())[:500]}
