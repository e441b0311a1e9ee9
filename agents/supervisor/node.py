"""The supervisor: routes between the agents and, at the end, assembles the answer.

Routing reads the stage marks from the trace (so a resumed run continues where it stopped);
finishing measures llama.cpp's defaults on the same model (F16 and Q4_K_M, the usual hand choice)
for the speedup, scores the chosen deployment on the held-out test split, checks the regression
gate when the run has a baseline, and stores the result.
"""

from __future__ import annotations

from typing import Any

from haqa.agents.routing import next_route
from haqa.agents.runtime import ROLE_SUPERVISOR, RunRuntime
from haqa.agents.supervisor.regression import regression_gate
from haqa.agents.supervisor.result import RunResult, build_result


def supervisor_step(rt: RunRuntime) -> dict[str, Any]:
    rt.control.wait_if_paused()
    marks = rt.supervisor_marks()
    if rt.control.stop.is_set() and "deploy_done" not in marks:
        rt.say("supervisor", ROLE_SUPERVISOR, "stopped by the user: the run can be resumed")
        return {"route": "stopped"}
    route = next_route(
        analysed="analysed" in marks,
        finetune_done="finetune_done" in marks,
        deploy_done="deploy_done" in marks,
    )
    last = next(
        (m for m in reversed(rt.messages()) if m.tool_name == "route"),
        None,
    )
    if last is None or (last.tool_args or {}).get("route") != route:
        rt.say(
            "supervisor",
            ROLE_SUPERVISOR,
            f"next: {route}",
            tool_name="route",
            tool_args={"route": route},
        )
    return {"route": route}


def finish_step(rt: RunRuntime) -> dict[str, Any]:
    result: RunResult = build_result(rt)
    if rt.gate is not None and result.found:
        report = regression_gate(rt, rt.gate, result)
        result = result.model_copy(update={"regression": report})
    rt.say(
        "supervisor",
        ROLE_SUPERVISOR,
        result.headline(),
        tool_name="result",
        tool_result=result.model_dump(mode="json"),
    )
    rt.store.finish_run(rt.run_id, "finished", result=result.model_dump(mode="json"))
    return {"route": "done"}
