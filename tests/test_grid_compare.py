"""Recorded grids on the tiny model: tabular runs, haqa compare, and their one-line errors."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from haqa.agents.routing import Budgets
from haqa.cli import main
from haqa.errors import HaqaError
from haqa.graph.config import RunConfig
from haqa.graph.run import start_run
from haqa.store import Store

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def grid(tiny_grid: tuple[Path, str]) -> tuple[Path, str]:
    """The session's recorded tiny grid (``support.grid``)."""
    return tiny_grid


def test_the_grid_holds_every_combination_and_repeat(grid: tuple[Path, str]) -> None:
    db, grid_id = grid
    points = Store(db).grid_points(grid_id)
    assert len(points) == 3 * 2 * 2
    assert all(p.metrics["decode_tps"] > 0 and p.metrics["accuracy"] is not None for p in points)


def test_a_tabular_run_serves_the_recorded_measurements(grid: tuple[Path, str]) -> None:
    db, grid_id = grid
    store = Store(db)
    cfg = RunConfig(
        model="zoo:tiny", tabular=grid_id, budgets=Budgets(finetune_trials=0, deploy_trials=4)
    )
    run_id, result = start_run(store, cfg)
    assert result is not None and result.found
    recorded = {json.dumps(p.metrics, sort_keys=True) for p in store.grid_points(grid_id)}
    for t in store.list_trials(run_id, stage="deploy"):
        if t.status == "ok" and t.is_search:
            served = {k: v for k, v in t.metrics.model_dump().items()}
            assert any(json.loads(r)["decode_tps"] == served["decode_tps"] for r in recorded)


def test_compare_prints_the_table_and_writes_the_plot(
    grid: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db, grid_id = grid
    code = main(
        ["compare", "--db", str(db), "--tabular", grid_id, "--brains", "expert,random,tpe",
         "--seeds", "2", "--budget", "4", "--out", str(tmp_path / "cmp")]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    for brain in ("expert", "random", "tpe"):
        assert brain in out
    assert (tmp_path / "cmp" / "convergence.png").stat().st_size > 1000
    result = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert [s["brain"] for s in result["scores"]] == ["expert", "random", "tpe"]
    assert all(len(s["curves"]) == 2 for s in result["scores"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--brains", "expert,alphago"], "unknown brain alphago"),
        (["--seeds", "0"], "--seeds must be at least 1"),
        (["--tabular", "grid-nope"], "grid 'grid-nope' is not in"),
    ],
)
def test_compare_bad_input_is_one_line(
    grid: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str],
    args: list[str], message: str,
) -> None:  # fmt: skip
    db, grid_id = grid
    base = ["compare", "--db", str(db), "--tabular", grid_id, "--out", str(tmp_path / "c")]
    code = main(base + args)
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1


def test_a_grid_from_another_model_or_machine_is_refused(
    grid: tuple[Path, str], tmp_path: Path
) -> None:
    db, grid_id = grid
    copy = tmp_path / "copy.duckdb"
    copy.write_bytes(db.read_bytes())
    store = Store(copy)
    other_model = RunConfig(
        model="zoo:bench-200m", tabular=grid_id, budgets=Budgets(finetune_trials=0)
    )
    with pytest.raises(HaqaError, match="recorded for zoo:tiny"):
        start_run(store, other_model)
    con = duckdb.connect(str(copy))
    con.execute("UPDATE grids SET hardware_fingerprint = 'elsewhere'")
    con.close()
    with pytest.raises(HaqaError, match="another machine"):
        start_run(
            store, RunConfig(model="zoo:tiny", tabular=grid_id, budgets=Budgets(finetune_trials=0))
        )


def _haqa(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "haqa", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def test_kill_anywhere_then_resume_gives_the_uninterrupted_answer(
    grid: tuple[Path, str], tmp_path: Path
) -> None:
    """kill -9 at ≥ 20 random points (in a trial, a store write, a prompt), resuming each time:
    the store is never corrupt, no finished trial is lost or run twice, and the final answer
    equals an uninterrupted run's."""
    db, grid_id = grid
    flags = ["--model", "zoo:tiny", "--tabular", grid_id, "--finetune-trials", "0",
             "--deploy-trials", "6", "--patience", "6"]  # fmt: skip
    reference_db = tmp_path / "reference.duckdb"
    reference_db.write_bytes(db.read_bytes())
    done = subprocess.run(
        [sys.executable, "-m", "haqa", "run", "--db", str(reference_db), *flags,
         "--report-dir", str(tmp_path / "r0")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    ref_store = Store(reference_db)
    reference = ref_store.get_run(ref_store.list_runs()[0].run_id).result

    killed_db = tmp_path / "killed.duckdb"
    killed_db.write_bytes(db.read_bytes())
    rng = random.Random(7)
    kills, run_id = 0, None
    seen: dict[int, object] = {}
    while True:
        args = ["--resume", run_id] if run_id else flags
        proc = _haqa("run", "--db", str(killed_db), *args, "--report-dir", str(tmp_path / "r"))
        if kills < 20:
            time.sleep(rng.uniform(0.3, 3.5))
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                kills += 1
            proc.wait(30)
        else:
            out, _ = proc.communicate(timeout=300)
            assert proc.returncode == 0, out
        store = Store(killed_db)  # opens: the file survived the kill
        runs = store.list_runs()
        if run_id is None and runs:
            run_id = runs[0].run_id
        if run_id is not None:
            trials = {t.trial_id: t for t in store.list_trials(run_id)}
            for trial_id, before in seen.items():
                assert trials[trial_id] == before  # kept, unchanged
            seen.update(trials)
            if store.get_run(run_id).status == "finished":
                if kills >= 20:
                    break
                # Finished before 20 kills: start a fresh run and keep killing.
                killed_db.write_bytes(db.read_bytes())
                run_id, seen = None, {}
    final = store.list_trials(run_id)
    keys = [(t.stage, json.dumps(t.config, sort_keys=True)) for t in final]
    assert len(keys) == len(set(keys)), "a trial ran twice"
    result = store.get_run(run_id).result
    assert result["config"] == reference["config"]
    assert result["decode_tps"] == reference["decode_tps"]
    assert kills >= 20
