"""The answer of a run: the best feasible deployment, with the evidence and ready command lines."""

from __future__ import annotations

import shlex
from typing import Any

from pydantic import BaseModel, Field

from haqa.agents.common import run_trial
from haqa.agents.runtime import ROLE_INVALID, RunRuntime
from haqa.agents.supervisor.gate import admit
from haqa.schemas import DeployConfig, RuntimeSettings, TrialMetrics
from haqa.store import TrialRecord

#: The quant types llama.cpp users deploy without tuning: the speedup is reported against both.
BASELINE_TYPES = ("F16", "Q4_K_M")


class Baseline(BaseModel):
    quant_type: str
    trial_id: int
    prefill_tps: float | None
    decode_tps: float | None


class RunResult(BaseModel):
    run_id: str
    goal: str
    found: bool
    error: str | None = None
    best_trial_id: int | None = None
    config: dict[str, Any] | None = None
    gguf_path: str | None = None
    adapter_path: str | None = None
    base_accuracy: float | None = None
    finetuned_accuracy: float | None = None
    reference_accuracy: float | None = None
    accuracy_validation: float | None = None
    accuracy_test: float | None = None
    prefill_tps: float | None = None
    decode_tps: float | None = Field(
        None, description="mean of the chosen config's two measurements around the baselines"
    )
    search_decode_tps: float | None = Field(None, description="its figure during the search")
    final_trial_ids: list[int] = Field(default_factory=list)
    peak_mem_bytes: int | None = None
    roofline_efficiency: float | None = None
    objective: float | None = None
    baselines: list[Baseline] = Field(default_factory=list)
    speedup_decode: dict[str, float] = Field(default_factory=dict)
    speedup_prefill: dict[str, float] = Field(default_factory=dict)
    llama_server_cmd: str | None = None
    llama_cli_cmd: str | None = None
    invalid_proposals: int = 0
    rejected_trials: int = 0
    failed_trials: int = 0
    stop_reasons: dict[str, str] = Field(default_factory=dict)

    def headline(self) -> str:
        if not self.found or self.config is None:
            return f"no configuration met the goal: {self.error}"
        speed = ", ".join(
            f"{v:.2f}x vs llama.cpp defaults at {k}" for k, v in self.speedup_decode.items()
        )
        return (
            f"best: {self.config.get('quant_type')} with {self.config.get('n_threads')} threads — "
            f"decode {self.decode_tps or 0:.1f} tok/s ({speed or 'no baseline'}), "
            f"accuracy {self.accuracy_validation or 0:.3f} (validation)"
        )


def llama_defaults(brief: dict[str, Any]) -> RuntimeSettings:
    """llama.cpp's own defaults: threads = physical cores (``cpu_get_num_math``), batch 2048,
    micro-batch 512, no flash attention (llama-bench's default), f16 KV cache, context 4096."""
    physical = int(brief.get("physical_cores") or brief.get("logical_cores") or 1)
    return RuntimeSettings(n_threads=physical, n_threads_batch=physical)


def commands(gguf: str, cfg: DeployConfig) -> tuple[str, str]:
    """Ready ``llama-server`` / ``llama-cli`` command lines for the chosen deployment."""
    args = [
        "-m",
        gguf,
        "-t",
        str(cfg.n_threads),
        "-tb",
        str(cfg.threads_batch),
        "-c",
        str(cfg.n_ctx),
        "-b",
        str(cfg.n_batch),
        "-ub",
        str(cfg.n_ubatch),
        "-fa",
        "on" if cfg.flash_attn else "off",
        "-ctk",
        cfg.type_k,
        "-ctv",
        cfg.type_v,
        "-ngl",
        str(cfg.n_gpu_layers),
    ]
    if not cfg.use_mmap:
        args.append("--no-mmap")
    if cfg.use_mlock:
        args.append("--mlock")
    return shlex.join(["llama-server", *args]), shlex.join(["llama-cli", *args])


def _mean(values: list[float | None]) -> float | None:
    known = [v for v in values if v]
    return sum(known) / len(known) if known else None


def build_result(rt: RunRuntime) -> RunResult:
    brief = (rt.last_mark_payload("analysed") or {}).get("brief", {})
    ft = rt.last_mark_payload("finetune_done") or {}
    deploy = rt.last_mark_payload("deploy_done") or {}
    adapter = ft.get("adapter")
    deploy_trials = rt.trials("deploy")
    reference = next(
        (t.metrics.accuracy for t in deploy_trials if t.config.get("role") == "reference"), None
    )
    base = next((t for t in rt.trials("finetune") if t.config.get("role") == "base"), None)
    views = rt.views("deploy", reference)
    result = RunResult(
        run_id=rt.run_id,
        goal=rt.goal.describe(),
        found=False,
        adapter_path=adapter,
        base_accuracy=base.metrics.accuracy if base else None,
        finetuned_accuracy=ft.get("accuracy"),
        reference_accuracy=reference,
        invalid_proposals=sum(1 for m in rt.messages() if m.role == ROLE_INVALID),
        rejected_trials=sum(1 for t in rt.trials() if t.status == "rejected"),
        failed_trials=sum(1 for t in rt.trials() if t.status == "failed"),
        stop_reasons={
            "finetune": str(ft.get("reason", "")),
            "deploy": str(deploy.get("reason", "")),
        },
    )
    feasible = [v for v in views if v.feasible and v.objective is not None]
    if not feasible:
        measured = [v for v in views if v.status == "ok"]
        why = (
            "no deployment was measured"
            if not measured
            else f"none of {len(measured)} measured deployments kept accuracy within "
            f"{rt.goal.max_accuracy_drop * 100:g} points of {reference} and fit the memory budget"
        )
        return result.model_copy(update={"error": why})
    best_view = max(feasible, key=lambda v: v.objective or 0.0)
    best = next(t for t in deploy_trials if t.trial_id == best_view.trial_id)
    cfg = DeployConfig.model_validate(best_view.config)

    # The chosen configuration is measured again around the baselines (chosen, baselines,
    # chosen): speedups are ratios taken side by side, and the mean of the two bracketing
    # measurements cancels a drift that is linear over the few seconds between them. The search
    # trial's figure was taken earlier, under whatever load the machine had then.
    def measure_chosen(round_no: int) -> TrialRecord:
        return run_trial(
            rt,
            agent="supervisor",
            stage="deploy",
            tool="benchmark_llamacpp",
            config={"role": "final", "round": round_no, **cfg.model_dump(mode="json")},
            work=lambda: rt.toolbox.deploy(cfg, adapter),
        )

    # A recorded grid answers with its recordings: measuring again there adds nothing.
    recorded = bool(getattr(rt.toolbox, "recorded", False))
    before = None if recorded else measure_chosen(1)
    baselines = []
    defaults = llama_defaults(brief)
    for quant in BASELINE_TYPES:
        config = {"role": "baseline", "quant_type": quant, **defaults.model_dump()}
        # Baselines pass the memory gate too: a default that does not fit is not run.
        deploy_cfg = DeployConfig(quant_type=quant, **defaults.model_dump())  # type: ignore[arg-type]
        if not admit(rt, agent="supervisor", config=deploy_cfg, raw=config):
            continue
        trial = run_trial(
            rt,
            agent="supervisor",
            stage="deploy",
            tool="benchmark_llamacpp",
            config=config,
            work=lambda q=quant: rt.toolbox.baseline(q, defaults),  # type: ignore[misc]
        )
        baselines.append(
            Baseline(
                quant_type=quant,
                trial_id=trial.trial_id,
                prefill_tps=trial.metrics.prefill_tps,
                decode_tps=trial.metrics.decode_tps,
            )
        )
    after = None if recorded else measure_chosen(2)
    finals = [t.metrics for t in (before, after) if t and t.status == "ok" and t.metrics.decode_tps]
    m = best.metrics
    decode = _mean([f.decode_tps for f in finals]) or m.decode_tps
    prefill = _mean([f.prefill_tps for f in finals]) or m.prefill_tps
    test_trial = run_trial(
        rt,
        agent="supervisor",
        stage="deploy",
        tool="evaluate",
        config={
            "role": "test",
            "quant_type": cfg.quant_type,
            "type_k": cfg.type_k,
            "type_v": cfg.type_v,
            "adapter": adapter,
        },
        work=lambda: TrialMetrics(accuracy=rt.toolbox.final_test(cfg, adapter)),
    )
    gguf = str(getattr(m, "gguf", "") or f"model-{cfg.quant_type}.gguf")
    server, cli = commands(gguf, cfg)
    return result.model_copy(
        update={
            "found": True,
            "best_trial_id": best.trial_id,
            "config": cfg.model_dump(mode="json"),
            "gguf_path": gguf,
            "accuracy_validation": m.accuracy,
            "accuracy_test": test_trial.metrics.accuracy,
            "prefill_tps": prefill,
            "decode_tps": decode,
            "search_decode_tps": m.decode_tps,
            "final_trial_ids": [t.trial_id for t in (before, after) if t],
            "peak_mem_bytes": m.peak_mem_bytes,
            "roofline_efficiency": getattr(m, "roofline_efficiency", None),
            "objective": best_view.objective,
            "baselines": baselines,
            "speedup_decode": {
                b.quant_type: decode / b.decode_tps for b in baselines if decode and b.decode_tps
            },
            "speedup_prefill": {
                b.quant_type: prefill / b.prefill_tps
                for b in baselines
                if prefill and b.prefill_tps
            },
            "llama_server_cmd": server,
            "llama_cli_cmd": cli,
        }
    )
