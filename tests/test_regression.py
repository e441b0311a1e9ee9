"""The regression gate's rule (haqa.regression) and the choice of baseline (graph/baseline.py):
limits parsed with one-line errors, each figure judged in its own direction and unit, and a
baseline refused when it was measured on another machine."""

from __future__ import annotations

from pathlib import Path

import pytest

from haqa.errors import HaqaError
from haqa.graph.baseline import resolve_baseline
from haqa.graph.config import RunConfig
from haqa.regression import Figures, RegressionLimits, RegressionReport, check
from haqa.store import Store


def test_limits_parse_in_their_units_and_name_what_to_fix() -> None:
    limits = RegressionLimits.parse("decode=5%, accuracy=1pt,memory=10%")
    assert (limits.decode, limits.accuracy, limits.memory) == (0.05, 1.0, 0.10)
    assert limits.prefill is None and limits.describe() == "decode=5%,accuracy=1pt,memory=10%"
    for text, fix in [
        ("decode=5", "write METRIC=VALUE%"),
        ("accuracy=1%", "accuracy points"),
        ("decode=5pt", "a share of the baseline"),
        ("speed=5%", "one of decode, prefill, accuracy, perplexity, memory"),
        ("decode=5%,decode=3%", "names decode twice"),
        (" , ", "is empty"),
    ]:
        with pytest.raises(HaqaError, match=fix):
            RegressionLimits.parse(text)


def test_each_figure_is_judged_in_its_own_direction() -> None:
    limits = RegressionLimits.parse("decode=5%,prefill=5%,accuracy=1pt,perplexity=2%,memory=10%")
    old = Figures(decode=100, prefill=1000, accuracy=0.80, perplexity=15.0, memory=1000)
    # Slower by 4% (ok), prefill 6% (too slow), accuracy -1.0 pt (at the limit: ok),
    # perplexity +3% (too high), memory -20% (better: ok).
    new = Figures(decode=96, prefill=940, accuracy=0.79, perplexity=15.45, memory=800)
    verdict = {c.metric: c.passed for c in check(limits, old, new)}
    assert verdict == {
        "decode": True,
        "prefill": False,
        "accuracy": True,
        "perplexity": False,
        "memory": True,
    }
    # A negative limit demands a gain: 10% faster.
    demand = RegressionLimits.parse("decode=-10%")
    assert not check(demand, old, Figures(decode=105))[0].passed
    assert check(demand, old, Figures(decode=111))[0].passed


def test_a_figure_one_side_did_not_measure_fails_and_says_so() -> None:
    """A gate that passed because nothing was compared would be a lie."""
    limits = RegressionLimits.parse("perplexity=1%")
    (result,) = check(limits, Figures(perplexity=None), Figures(perplexity=14.0))
    assert not result.compared and not result.passed
    report = RegressionReport(
        baseline_run="r1", limits=limits.describe(), basis="stored figures", checks=[result],
        passed=False,
    )  # fmt: skip
    assert "perplexity: not measured by the baseline" in report.reason()
    assert "\n" not in report.reason()


def _finished_run(
    store: Store,
    *,
    model: str,
    fingerprint: str | None,
    found: bool,
    gate_passed: bool | None = None,
    speed_model: str | None = None,
) -> str:
    config = {"model": model, "speed_model": speed_model}
    run = store.create_run(
        model=model, brain="expert", hardware_fingerprint=fingerprint, config=config
    )
    result: dict[str, object] = {"run_id": run.run_id, "goal": "decode", "found": found}
    if gate_passed is not None:
        result["regression"] = {"baseline_run": "r0", "limits": "decode=5%", "passed": gate_passed}
    store.finish_run(run.run_id, "finished", result=result)
    return run.run_id


def test_a_baseline_from_another_machine_is_refused_and_latest_skips_it(tmp_path: Path) -> None:
    store = Store(tmp_path / "h.duckdb")
    here = "aaaa1111"
    good = _finished_run(store, model="zoo:tiny", fingerprint=here, found=True)
    _finished_run(store, model="zoo:tiny", fingerprint=here, found=False)  # newer, no answer
    other = _finished_run(store, model="zoo:tiny", fingerprint="bbbb2222", found=True)  # newest
    _finished_run(store, model="zoo:other", fingerprint=here, found=True)  # another model

    cfg = RunConfig(model="zoo:tiny", baseline=other)
    with pytest.raises(HaqaError, match=r"measured on another machine.*bbbb2222.*aaaa1111"):
        resolve_baseline(store, cfg, here)
    latest = resolve_baseline(store, RunConfig(model="zoo:tiny", baseline="latest"), here)
    assert latest.baseline_run == good
    nothing = resolve_baseline(store, RunConfig(model="zoo:new", baseline="latest"), here)
    assert nothing.baseline_run is None  # the first run of a pipeline: the gate is skipped
    with pytest.raises(HaqaError, match="is not in"):
        resolve_baseline(store, RunConfig(model="zoo:tiny", baseline="nope"), here)
    with pytest.raises(HaqaError, match="needs --baseline"):
        resolve_baseline(store, RunConfig(model="zoo:tiny", max_regression="decode=5%"), here)


def test_latest_skips_a_run_that_failed_its_own_gate_or_measured_another_speed_model(
    tmp_path: Path,
) -> None:
    """A retried pipeline must not pass by comparing with the regression it just reported, nor
    compare speeds measured on another model."""
    store = Store(tmp_path / "h.duckdb")
    here = "aaaa1111"
    good = _finished_run(store, model="m", fingerprint=here, found=True, gate_passed=True)
    regressed = _finished_run(store, model="m", fingerprint=here, found=True, gate_passed=False)
    bench = _finished_run(store, model="m", fingerprint=here, found=True, speed_model="zoo:b")
    latest = resolve_baseline(store, RunConfig(model="m", baseline="latest"), here)
    assert latest.baseline_run == good
    with_speed = RunConfig(model="m", speed_model="zoo:b", baseline="latest")
    assert resolve_baseline(store, with_speed, here).baseline_run == bench
    with pytest.raises(HaqaError, match="measured speed on zoo:b, this run on its own model"):
        resolve_baseline(store, RunConfig(model="m", baseline=bench), here)
    # Named explicitly, a run whose gate failed is the user's choice.
    assert resolve_baseline(store, RunConfig(model="m", baseline=regressed), here).baseline_run


def test_a_stored_answer_this_version_cannot_read_is_refused(tmp_path: Path) -> None:
    store = Store(tmp_path / "h.duckdb")
    run = store.create_run(model="m", brain="expert", hardware_fingerprint="f")
    store.finish_run(run.run_id, "finished", result={"found": True, "shape": "of another era"})
    with pytest.raises(HaqaError, match="cannot be read by this version"):
        resolve_baseline(store, RunConfig(model="m", baseline=run.run_id), "f")
    latest = resolve_baseline(store, RunConfig(model="m", baseline="latest"), "f")
    assert latest.baseline_run is None
