"""The hardware analyst: probe the machine, microbenchmark the kernels, write the brief."""

from __future__ import annotations

import os
from typing import Any

from haqa.agents.analyst.brief import make_brief
from haqa.agents.runtime import ROLE_TOOL_CALL, ROLE_TOOL_RESULT, RunRuntime
from haqa.agents.search_step import ensure_system_prompt, static_prompt
from haqa.errors import failure_reason
from haqa.recipes import PROBED
from haqa.trials.cluster import OnCluster

AGENT = "analyst"


def _summarise_micro(micro: dict[str, Any]) -> dict[str, Any]:
    """The microbenchmark result without its bulk, for the trace."""
    return {
        "implications": micro.get("implications", []),
        "rows": len(micro.get("rows") or []),
    }


def _probe_sensitivity(rt: RunRuntime) -> dict[str, Any] | None:
    """The model's tensor sensitivity, where the deploy stage can use it (a probed recipe in its
    space): which groups the brief names and the probed recipe spends bits on. A failed probe
    is said in the trace and the brief goes on without it."""
    recipes = rt.deploy_space.knob("recipe").choices if "recipe" in rt.deploy_space.names else ()
    if PROBED not in (recipes or ()) or rt.budgets.deploy_trials == 0:
        return None
    try:
        result = rt.toolbox.tensor_sensitivity()
    except Exception as exc:
        result = {"error": f"sensitivity probe failed: {failure_reason(exc, 300)}"}
    if result is None:
        return None  # nothing to probe with (a recorded grid): no call in the trace
    rt.say(
        AGENT,
        ROLE_TOOL_CALL,
        "tensor_sensitivity()",
        tool_name="tensor_sensitivity",
        tool_args={},
    )
    rt.say(
        AGENT,
        ROLE_TOOL_RESULT,
        str(result.get("summary") or result.get("error")),
        tool_name="tensor_sensitivity",
        tool_result=result,
    )
    return result


def analyst_step(rt: RunRuntime) -> dict[str, Any]:
    ensure_system_prompt(
        rt, AGENT, static_prompt(AGENT, model=rt.model_summary, goal=rt.goal.describe())
    )
    rt.say(AGENT, ROLE_TOOL_CALL, "probe_hardware()", tool_name="probe_hardware", tool_args={})
    try:
        profile = rt.toolbox.probe()
    except Exception as exc:  # the run goes on with what is known; the brief says what failed
        # On a cluster the cores are those of a node of the target kind, not the driver's.
        cores = rt.toolbox.speed_target()[1] if isinstance(rt.toolbox, OnCluster) else None
        profile = {"error": f"probe failed: {exc}", "logical_cores": cores or os.cpu_count()}
    rt.say(
        AGENT,
        ROLE_TOOL_RESULT,
        f"probed {profile.get('cpu_model')}",
        tool_name="probe_hardware",
        tool_result=profile,
    )
    rt.say(
        AGENT, ROLE_TOOL_CALL, "microbench_kernels()", tool_name="microbench_kernels", tool_args={}
    )
    try:
        micro = rt.toolbox.microbench()
    except Exception as exc:
        micro = {"rows": [], "implications": [f"microbenchmarks failed: {exc}"]}
    rt.say(
        AGENT,
        ROLE_TOOL_RESULT,
        "; ".join(micro.get("implications") or []) or "microbenchmarks done",
        tool_name="microbench_kernels",
        tool_result=micro,
    )
    quant_types = [str(q) for q in (rt.deploy_space.knob("quant_type").choices or ())]
    brief = make_brief(profile, micro, quant_types, _probe_sensitivity(rt))
    rt.store.set_run_hardware(
        rt.run_id,
        fingerprint=str(profile.get("fingerprint")),
        hardware={"profile": profile, "brief": brief, "microbench": _summarise_micro(micro)},
    )
    rt.say(AGENT, "assistant", brief["text"])
    rt.mark("analysed", "hardware brief written", brief=brief)
    return {}
