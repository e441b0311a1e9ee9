"""The read-only tools an LLM brain may call inside its ReAct loop, bound to one run and stage."""

from __future__ import annotations

from typing import Any

from haqa.agents.runtime import RunRuntime
from haqa.schemas import DeployConfig, FinetuneConfig
from haqa.store import sandbox_query


class RunReadOnlyTools:
    def __init__(self, rt: RunRuntime, stage: str, defaults: dict[str, Any]) -> None:
        self.rt = rt
        self.stage = stage
        self.defaults = defaults

    def query_trials(self, sql: str) -> list[dict[str, Any]]:
        result = sandbox_query(self.rt.trials(), sql)
        rows = [dict(zip(result.columns, row, strict=True)) for row in result.rows]
        if result.truncated:
            rows.append({"note": f"truncated at {len(result.rows)} rows"})
        return rows

    def estimate_memory(self, config: dict[str, Any]) -> dict[str, Any]:
        full = {**self.defaults, **config}
        if self.stage == "deploy":
            return self.rt.toolbox.estimate_deploy(DeployConfig.model_validate(full))
        return self.rt.toolbox.estimate_finetune(FinetuneConfig.model_validate(full))

    def hardware_brief(self) -> str:
        brief = (self.rt.last_mark_payload("analysed") or {}).get("brief", {})
        return str(brief.get("text", "(no brief yet)"))
