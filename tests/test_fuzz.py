"""Fuzzed inputs: whatever a user or an LLM sends, the answer is a value or a one-line HaqaError,
never a traceback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from unittest import mock

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from haqa.agents.brains.base import DecisionContext, Proposal
from haqa.agents.brains.react import AssistantTurn, InvalidAnswer, ToolCall, react_propose
from haqa.cli import main
from haqa.config import build, read_toml
from haqa.errors import HaqaError
from haqa.goal import Goal
from haqa.graph.config import RunConfig
from haqa.schemas import DeployConfig, FinetuneConfig
from haqa.space import deploy_space

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**12), max_value=10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
keys = st.sampled_from(
    [*FinetuneConfig.model_fields, *DeployConfig.model_fields, "bogus", "", "learnig_rate"]
)
FAST = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))


class _WouldRun(Exception):
    """Raised where `haqa run` would start its real work."""


def one_line(exc: HaqaError) -> None:
    assert str(exc) and "\n" not in str(exc)


@FAST
@given(st.dictionaries(keys, json_values, max_size=6))
def test_config_models_answer_with_one_line(raw: dict[str, Any]) -> None:
    for model in (FinetuneConfig, DeployConfig, RunConfig):
        try:
            build(model, raw)
        except HaqaError as exc:
            one_line(exc)


@FAST
@given(st.text(max_size=300))
def test_any_toml_text_is_a_value_or_one_line(tmp_path_factory: Any, text: str) -> None:
    path = Path(tmp_path_factory.mktemp("toml")) / "run.toml"
    path.write_text(text, encoding="utf-8")
    try:
        data = read_toml(path)
        build(RunConfig, data)
    except HaqaError as exc:
        one_line(exc)


@FAST
@given(st.text(max_size=40), st.floats(allow_nan=True), st.text(max_size=12))
def test_goal_parsing(goal: str, drop: float, budget: str) -> None:
    try:
        Goal.parse(goal, max_accuracy_drop_points=drop, memory_budget=budget or None)
    except HaqaError as exc:
        one_line(exc)


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    st.lists(
        st.sampled_from(
            [
                "trials",
                "runs",
                "--db",
                "--run",
                "--json",
                "--limit",
                "-1",
                "x",
                "0",
                "--stage",
                "--status",
                "ok,failed",
                "replay",
                "--rerun",
                "run",
                "--goal",
                "--memory-budget",
                "--brain",
                "nope",
                "--model",
                "quantize",
                "--quant",
                "Q9_9",
                "bench",
                "-t",
                "999",
            ]
        ),
        max_size=6,
    )
)
def test_cli_arguments_never_raise(tmp_path_factory: Any, argv: list[str]) -> None:
    """Arguments that pass every check would start the real job (`haqa run` builds a zoo model
    that is not built yet, then runs the graph for minutes): reaching either counts as an
    answer. Every check before them (the config, the model, the task files) still runs."""
    db = Path(tmp_path_factory.mktemp("db")) / "absent.duckdb"
    argv = [a if a != "x" else str(db) for a in argv]
    with (
        mock.patch("haqa.zoo.ensure", side_effect=_WouldRun),
        mock.patch("haqa.graph.run._drive", side_effect=_WouldRun),
    ):
        try:
            code = main(
                [*argv, "--db", str(db)] if argv and argv[0] in ("trials", "runs") else argv
            )
        except _WouldRun:
            code = 0
    assert code in (0, 1, 2)


def _ctx() -> DecisionContext:
    return DecisionContext(
        run_id="r", agent="tuner", stage="deploy", space=deploy_space(2), goal=Goal(),
        static_prompt="s", dynamic_prompt="d", history=[], defaults={}, budget_left=3,
    )  # fmt: skip


tool_names = st.sampled_from(
    ["propose_trial", "finish", "query_trials", "estimate_memory", "hardware_brief", "rm", ""]
)


@FAST
@given(st.lists(st.tuples(tool_names, st.one_of(st.text(max_size=60), json_values)), max_size=3))
def test_llm_tool_call_payloads(calls: list[tuple[str, Any]]) -> None:
    """Any tool-call payload is a Proposal or an InvalidAnswer with a reason."""
    turn = AssistantTurn(
        tool_calls=[
            ToolCall(id=str(i), name=n, arguments=a if isinstance(a, str) else json.dumps(a))
            for i, (n, a) in enumerate(calls)
        ]
    )
    try:
        out = react_propose(_ctx(), lambda _m, _t: turn, max_steps=2)
    except InvalidAnswer as exc:
        assert str(exc)
    else:
        assert isinstance(out, Proposal)
