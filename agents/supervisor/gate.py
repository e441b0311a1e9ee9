"""The supervisor's memory gate: every proposed configuration is estimated before it runs.

Over budget → a ``rejected`` trial with the predicted figure and an observation to the agent; the
configuration is never executed.
"""

from __future__ import annotations

from typing import Any

from haqa.agents.runtime import RunRuntime
from haqa.agents.search_step import find_finished, record_rejection
from haqa.errors import HaqaError
from haqa.schemas import DeployConfig, FinetuneConfig
from haqa.units import format_bytes


def admit(
    rt: RunRuntime, *, agent: str, config: FinetuneConfig | DeployConfig, raw: dict[str, Any]
) -> bool:
    """True when the configuration may run; otherwise the rejection is recorded."""
    budget = rt.goal.memory_budget_bytes
    if budget is None:
        return True
    stage = "deploy" if isinstance(config, DeployConfig) else "finetune"
    earlier = find_finished(rt, stage, raw)
    if earlier is not None and earlier.status == "rejected":
        return False  # rejected before (a resumed run): not estimated or recorded again
    try:
        if isinstance(config, DeployConfig):
            estimate = rt.toolbox.estimate_deploy(config)
        else:
            estimate = rt.toolbox.estimate_finetune(config)
    except HaqaError:
        # Weights that cannot be made cannot be estimated either (a probed recipe without its
        # probe): the trial runs, fails with the same one-line reason and is recorded so.
        return True
    predicted = int(estimate.get("total_bytes", 0))
    if rt.goal.fits_memory(predicted):
        return True
    record_rejection(
        rt,
        agent=agent,
        stage=stage,
        config=raw,
        predicted=predicted,
        reason=f"predicted peak {format_bytes(predicted)} > budget {format_bytes(budget)}",
    )
    return False
