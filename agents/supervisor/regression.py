"""The regression gate, measured: the new answer against a stored run's, side by side.

An old figure was taken under whatever load the machine had then; on a noisy machine a 5% limit
against it would fail or pass by chance. So when the baseline's GGUF is still there, both answers
are measured again in one bracket (new, baseline, new; the new figure is the mean of its two
rounds, which cancels a linear drift), and the baseline's validation accuracy is scored again on
this run's questions (an earlier run may have had other task files; not with a speed model, whose
file is not the scored model). A figure that could not be measured again (the artifact is gone,
the trial failed, a speed model's accuracy, perplexity, which is not re-run) is the stored one,
and the report says which basis it used. The rule itself is ``haqa.regression``.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from haqa.agents.runtime import ROLE_OBSERVATION, RunRuntime
from haqa.agents.search_step import run_trial
from haqa.agents.supervisor.result import RunResult
from haqa.regression import Figures, GateSpec, RegressionReport, check
from haqa.schemas import DeployConfig, TrialMetrics
from haqa.stats import mean_of_measured

AGENT = "supervisor"


def _stored(result: RunResult) -> Figures:
    return Figures(
        decode=result.decode_tps,
        prefill=result.prefill_tps,
        accuracy=result.accuracy_validation,
        perplexity=result.perplexity,
        memory=result.peak_mem_bytes,
    )


def _measure(rt: RunRuntime, of: str, round_no: int, gguf: str, cfg: DeployConfig) -> TrialMetrics:
    trial = run_trial(
        rt,
        agent=AGENT,
        stage="deploy",
        tool="benchmark_llamacpp",
        config={"role": "regression", "of": of, "round": round_no, **cfg.model_dump(mode="json")},
        work=lambda: rt.toolbox.measure_gguf(gguf, cfg),
    )
    return trial.metrics if trial.status == "ok" else TrialMetrics()


def _side_by_side(
    rt: RunRuntime, new: RunResult, old: RunResult, old_run: str
) -> tuple[Figures, Figures] | None:
    """Both answers measured again (new, baseline, new), or None when they cannot be."""
    if not (new.gguf_path and new.config and old.gguf_path and old.config) or rt.past_deadline:
        return None
    if not rt.toolbox.recorded and not (
        Path(old.gguf_path).is_file() and Path(new.gguf_path).is_file()
    ):
        return None
    try:
        new_cfg = DeployConfig.model_validate(new.config)
        old_cfg = DeployConfig.model_validate(old.config)
    except ValidationError:  # a configuration stored by another version: compare stored figures
        return None
    first = _measure(rt, "answer", 1, new.gguf_path, new_cfg)
    baseline = _measure(rt, f"run {old_run}", 1, old.gguf_path, old_cfg)
    second = _measure(rt, "answer", 2, new.gguf_path, new_cfg)
    rounds = [m for m in (first, second) if m.decode_tps]
    if not rounds or not baseline.decode_tps:
        return None
    measured_new = Figures(
        decode=mean_of_measured([m.decode_tps for m in rounds]),
        prefill=mean_of_measured([m.prefill_tps for m in rounds]),
        accuracy=rounds[0].accuracy if rounds[0].accuracy is not None else new.accuracy_validation,
        perplexity=new.perplexity,
        memory=mean_of_measured([m.peak_mem_bytes for m in rounds]),
    )
    measured_old = Figures(
        decode=baseline.decode_tps,
        prefill=baseline.prefill_tps,
        accuracy=baseline.accuracy if baseline.accuracy is not None else old.accuracy_validation,
        perplexity=old.perplexity,
        memory=baseline.peak_mem_bytes,
    )
    return measured_old, measured_new


def regression_gate(rt: RunRuntime, spec: GateSpec, result: RunResult) -> RegressionReport:
    """The gate's verdict on the run's answer, said in the trace."""
    if spec.baseline_run is None:
        report = RegressionReport(
            baseline_run=None,
            limits=spec.limits.describe(),
            note=f"--baseline {spec.requested}: no earlier run of this model on this machine met "
            "its goal, so there is nothing to compare with; this run is the next one's baseline",
        )
    else:
        old = RunResult.model_validate(rt.store.get_run(spec.baseline_run).result or {})
        both = _side_by_side(rt, result, old, spec.baseline_run)
        basis = (
            "both answers measured again side by side; perplexity as stored"
            if both
            else "stored figures: the baseline's GGUF is gone or could not be measured again"
        )
        old_fig, new_fig = both or (_stored(old), _stored(result))
        checks = check(spec.limits, old_fig, new_fig)
        report = RegressionReport(
            baseline_run=spec.baseline_run,
            limits=spec.limits.describe(),
            basis=basis,
            checks=checks,
            passed=all(c.passed for c in checks),
        )
    rt.say(
        AGENT,
        ROLE_OBSERVATION,
        report.reason(),
        tool_name="regression_gate",
        tool_result=report.model_dump(mode="json"),
    )
    return report
