"""The wiring, and nothing else: supervisor → analyst → planner (loop) → tuner (loop) → finish."""

from __future__ import annotations

from typing import Any

from langgraph.graph import END, START, StateGraph

from haqa.agents.analyst.node import analyst_step
from haqa.agents.planner.node import planner_step
from haqa.agents.runtime import RunRuntime
from haqa.agents.supervisor.node import finish_step, supervisor_step
from haqa.agents.tuner.node import tuner_step
from haqa.graph.state import RunState


def _node(step: Any, rt: RunRuntime) -> Any:
    def run(state: RunState) -> dict[str, Any]:
        update = step(rt)
        return {**update, "steps": state.get("steps", 0) + 1}

    return run


def _route(state: RunState) -> str:
    return state.get("route", "analyst")


def build_graph(rt: RunRuntime) -> Any:
    graph = StateGraph(RunState)
    graph.add_node("supervisor", _node(supervisor_step, rt))
    graph.add_node("analyst", _node(analyst_step, rt))
    graph.add_node("planner", _node(planner_step, rt))
    graph.add_node("tuner", _node(tuner_step, rt))
    graph.add_node("finish", _node(finish_step, rt))
    graph.add_edge(START, "supervisor")
    graph.add_conditional_edges(
        "supervisor",
        _route,
        {
            "analyst": "analyst",
            "planner": "planner",
            "tuner": "tuner",
            "finish": "finish",
            "stopped": END,
        },
    )
    for agent in ("analyst", "planner", "tuner"):
        graph.add_edge(agent, "supervisor")
    graph.add_edge("finish", END)
    return graph.compile()
