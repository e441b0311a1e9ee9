"""Honest measurements on a noisy machine: benchmarks repeat until steady, and an anchor
configuration measured again every few trials catches drift.

The noise here is real: a "noisy neighbour" toolbox starts a busy process while chosen
benchmarks run, so the slowdown the anchor sees is measured, not
invented. Nothing about the measurements is faked; only when the neighbour runs is scripted.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from support.runs import small_run_config

from haqa.agents.routing import Budgets
from haqa.agents.tuner.anchor import _affected, anchor_state
from haqa.graph.run import prepare, start_run
from haqa.report import write_report
from haqa.schemas import DeployConfig, KvCacheSettings, MeasurementPolicy, TrialMetrics
from haqa.store import Store, TrialRecord, superseded, utcnow
from haqa.tools.benchmark_llamacpp import Args, benchmark_llamacpp, needs_more
from haqa.tools.export_gguf import Args as ExportArgs
from haqa.tools.export_gguf import export_gguf
from haqa.trials.toolbox import LiveToolbox, ToolboxSettings


def test_a_target_rsd_repeats_until_steady_or_the_cap() -> None:
    steady = [1_000_000, 1_000_100, 999_900]
    jumpy = [1_000_000, 2_000_000, 1_000_000]
    assert needs_more(steady[:2], minimum=3, target_rsd=None, cap=10)  # below the minimum
    assert not needs_more(steady, minimum=3, target_rsd=None, cap=10)  # llama-bench: fixed
    assert not needs_more(steady, minimum=3, target_rsd=0.05, cap=10)
    assert needs_more(jumpy, minimum=3, target_rsd=0.05, cap=10)
    assert not needs_more(jumpy, minimum=3, target_rsd=0.05, cap=3)  # the cap wins
    assert needs_more(steady[:1], minimum=1, target_rsd=0.05, cap=10)  # one sample: no spread


@pytest.mark.slow
def test_the_benchmark_runs_more_repetitions_for_a_tight_target(tiny_model: Path) -> None:
    gguf = export_gguf(ExportArgs(model=tiny_model, quant_type="Q8_0")).gguf_path
    base = {"model": gguf, "n_prompt": 16, "n_gen": 8, "repetitions": 2}
    loose = benchmark_llamacpp(Args(**base, target_rsd=0.99, max_repetitions=6))
    # No real timing is steady to a millionth: every test runs to the cap.
    tight = benchmark_llamacpp(Args(**base, target_rsd=1e-6, max_repetitions=6))
    assert [len(t.samples_ns) for t in loose.tests] == [2, 2]
    assert [len(t.samples_ns) for t in tight.tests] == [6, 6]
    for t in tight.tests:
        assert t.rsd == pytest.approx(t.stddev_ts / t.avg_ts)


class NoisyNeighbourToolbox(LiveToolbox):
    """The live tools, with CPU-bound neighbours running during the deploy calls numbered in
    ``noisy_calls`` (1-based, in call order): real contention, as another job would cause."""

    def __init__(self, settings: ToolboxSettings, noisy_calls: set[int]) -> None:
        super().__init__(settings)
        self.noisy_calls = noisy_calls
        self.calls = 0

    def deploy(self, config: DeployConfig, adapter: str | None) -> TrialMetrics:
        self.calls += 1
        if self.calls not in self.noisy_calls:
            return super().deploy(config, adapter)
        # Quantize and evaluate first (cached for the real call): only the benchmark runs
        # beside the neighbour, as when a job starts on a shared machine mid-measurement.
        self._speed_gguf(adapter, config.quant_type)
        self._deployed_accuracy(
            adapter, config.quant_type, KvCacheSettings.deployed(config.runtime)
        )
        spin = [sys.executable, "-c", "while True: pass"]
        # Two spinning processes a core: every thread of the benchmark gets about a third of a
        # core, whatever the machine, so the slowdown (decode -85% and more) stands far beyond
        # the machine's own steps (up to a third on a Zen 5 guest). One hog fewer than the cores
        # slowed decode by only about half there, within reach of a step.
        hogs = [subprocess.Popen(spin) for _ in range(2 * (os.cpu_count() or 2))]
        try:
            return super().deploy(config, adapter)
        finally:
            for h in hogs:
                h.kill()
                h.wait()


@pytest.mark.slow
def test_drift_marks_the_trials_measured_under_it_and_measures_them_again(
    tiny_model: Path, tmp_path: Path
) -> None:
    cfg = small_run_config(
        speed_model="zoo:bench-200m",  # ~10 ms a token: steadier than the tiny model
        budgets=Budgets(finetune_trials=0, deploy_trials=3, patience=5),
        n_prompt=16,
        n_gen=32,
        repetitions=3,
        isolate_trials=False,
        # A quiet VM's decode speed moves between runs of the same benchmark: ~15% on the Xeon
        # here, and up to a third on a 2-vCPU Zen 5 guest whose memory steps between ~48 and
        # ~65 GB/s for seconds at a time (a 20% threshold read such a step, lasting through both
        # re-tries, as a lasting change of level once in four CI runs there). The neighbour costs
        # far more (see NoisyNeighbourToolbox); 45% tells the two apart.
        measurement=MeasurementPolicy(
            anchor_every=2, drift_threshold=0.45, anchor_retry_pause_s=1.0, max_repetitions=3
        ),
    )
    _, settings, _ = prepare(cfg)
    # Deploy calls: 1-3 the three search trials, 4 the anchor check once two have followed the
    # anchor's own (the first). The
    # neighbour runs during the third trial and the anchor check, then leaves.
    box = NoisyNeighbourToolbox(settings, noisy_calls={3, 4})
    store = Store(tmp_path / "haqa.duckdb")
    run_id, result = start_run(store, cfg, toolbox=box)
    assert result is not None and result.found

    trials = store.list_trials(run_id)
    search = [t for t in trials if t.stage == "deploy" and t.is_search]
    _, second, third = search[:3]
    anchors = [t for t in trials if t.role == "anchor"]
    # The check under the neighbour drifts; re-tries follow until one is steady (at most 2).
    assert 2 <= len(anchors) <= 3
    checks = [a.metrics.model_dump() for a in anchors]
    drifts = [(c["drift"], c["drifted"], c.get("level_changed")) for c in checks]
    assert checks[0]["drifted"] is True and float(checks[0]["drift"]) < -0.45, drifts
    assert all(c["drifted"] is True for c in checks[:-1]), drifts
    assert checks[-1]["drifted"] is False and not checks[-1].get("level_changed"), drifts
    assert checks[-1]["marked"] == [second.trial_id, third.trial_id]  # the anchor's own: level

    again = {t.remeasure_of: t for t in trials if t.remeasure_of is not None}
    assert sorted(again) == [second.trial_id, third.trial_id]
    assert superseded(trials) == {second.trial_id, third.trial_id}
    slowed, remeasured = third.metrics.decode_tps or 0, again[third.trial_id].metrics.decode_tps
    assert remeasured is not None and remeasured > 1.10 * slowed

    # Every benchmark stored its spread.
    benched = [t for t in trials if t.stage == "deploy" and t.metrics.decode_tps is not None]
    assert all(t.metrics.decode_rsd is not None for t in benched)

    marks = [m for m in store.list_messages(run_id) if (m.tool_args or {}).get("mark") == "drift"]
    assert len(marks) == 1 and "marked for re-measurement" in marks[0].content
    report = write_report(store, run_id, tmp_path / "report").read_text()
    assert "## Measurement stability" in report
    assert "drift: re-tried" in report and "steady again; marked" in report
    assert f"trial {third.trial_id} → trial {again[third.trial_id].trial_id}" in report


def _trial(i: int, tps: float, *, status: str = "ok", **config: Any) -> TrialRecord:
    extra = config.pop("extra", {})
    now = utcnow()
    return TrialRecord(
        run_id="r", trial_id=i, stage="deploy", tool="deploy_trial",
        config={"quant_type": "Q4_K_M", **config}, metrics=TrialMetrics(decode_tps=tps, **extra),
        status=status, started_at=now, finished_at=now,  # type: ignore[arg-type]
    )  # fmt: skip


def _history(records: list[TrialRecord]) -> Any:
    """What ``anchor_state`` reads of a run: its deploy trials, from the store."""
    return SimpleNamespace(trials=lambda stage=None: records)


def test_the_anchor_state_is_read_back_from_the_stored_trials() -> None:
    """A run killed after the steady anchor marked trials 2 and 3, and after 2 was measured
    again, resumes with only 3 still due; the anchor's level is its first measurement."""
    history = [
        _trial(1, 100.0),  # the anchor's own, the reference level
        _trial(2, 90.0, n_threads=1),
        _trial(3, 60.0, flash_attn=True),  # measured under load
        _trial(4, 55.0, role="anchor", extra={"drifted": True, "drift": -0.45}),
        _trial(5, 98.0, role="anchor", extra={"drifted": False, "drift": -0.02, "marked": [2, 3]}),
        _trial(6, 91.0, n_threads=1, remeasure_of=2),
    ]
    state = anchor_state(_history(history))  # type: ignore[arg-type]
    assert state.anchor is not None and state.anchor.trial_id == 1 and state.level == 100.0
    assert (state.last_drifted, state.retries, state.steady_after) == (False, 0, 5)
    assert state.pending == [3] and state.since_anchor == 0
    assert superseded(history) == {2}
    assert anchor_state(_history(history[:5])).pending == [2, 3]  # killed before any re-measure
    # One drifted check so far: the next step re-tries the anchor (retries counts it).
    mid = anchor_state(_history(history[:4]))  # type: ignore[arg-type]
    assert mid.last_drifted and mid.retries == 1 and mid.pending == []


def test_a_lasting_change_of_level_marks_every_trial() -> None:
    history = [
        _trial(1, 100.0),
        _trial(2, 90.0, n_threads=1),
        _trial(3, 70.0, role="anchor", extra={"drifted": False, "level": 70.0,
                                               "level_changed": True, "marked": [1, 2]}),
    ]  # fmt: skip
    rt = _history(history)
    state = anchor_state(rt)  # type: ignore[arg-type]
    assert state.level == 70.0 and state.pending == [1, 2]
    assert _affected(rt, state, level_changed=True) == [1, 2]
    assert _affected(rt, state, level_changed=False) == []  # after the steady check at 3
