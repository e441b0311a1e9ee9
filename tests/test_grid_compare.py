"""Recorded grids on the tiny model: tabular runs, haqa compare, and their one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest

from haqa.agents.grid import TabularToolbox, record_grid
from haqa.agents.toolbox import LiveToolbox
from haqa.cli import main
from haqa.errors import HaqaError
from haqa.graph.routing import Budgets
from haqa.graph.run import RunConfig, prepare, start_run
from haqa.store import Store

pytestmark = pytest.mark.slow

SPACE = {
    "quant_type": ["F16", "Q8_0", "Q4_0"],
    "n_threads": [1],
    "n_threads_batch": [1],
    "n_ubatch": [512],
    "flash_attn": [False, True],
}


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory, tiny_home: Path) -> tuple[Path, str]:
    db = tmp_path_factory.mktemp("grid") / "haqa.duckdb"
    store = Store(db)
    cfg = RunConfig(model="zoo:tiny", eval_limit=10, n_prompt=16, n_gen=4, repetitions=1)
    _, settings, _ = prepare(cfg)
    record = record_grid(
        store, LiveToolbox(settings), settings, model="zoo:tiny", speed_model=None,
        space=SPACE, repeats=2,
    )  # fmt: skip
    return db, record.grid_id


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
        if t.status == "ok" and "role" not in t.config:
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
        TabularToolbox(store, grid_id) and start_run(
            store, RunConfig(model="zoo:tiny", tabular=grid_id, budgets=Budgets(finetune_trials=0))
        )
