"""A recorded grid on the tiny model, once per test session (imported by ``tests/conftest.py``):
tabular runs answer from it in seconds, so tests of the run's plumbing (resume, compare, CI
output) need no benchmark of their own. Tests that write runs copy its store first."""

from __future__ import annotations

from pathlib import Path

import pytest

from haqa.graph.config import RunConfig
from haqa.graph.run import prepare
from haqa.harness.grid import record_grid
from haqa.store import Store
from haqa.trials.toolbox import LiveToolbox

#: Three weight types, flash attention on and off, one thread: 6 configurations, 2 repeats each.
TINY_GRID_SPACE = {
    "quant_type": ["F16", "Q8_0", "Q4_0"],
    "n_threads": [1],
    "n_threads_batch": [1],
    "n_ubatch": [512],
    "flash_attn": [False, True],
}


@pytest.fixture(scope="session")
def tiny_grid(tmp_path_factory: pytest.TempPathFactory, tiny_home: Path) -> tuple[Path, str]:
    """(the store holding the grid, its grid id)."""
    db = tmp_path_factory.mktemp("grid") / "haqa.duckdb"
    store = Store(db)
    cfg = RunConfig(model="zoo:tiny", eval_limit=10, n_prompt=16, n_gen=4, repetitions=1)
    _, settings, _ = prepare(cfg)
    record = record_grid(
        store, LiveToolbox(settings), settings, model="zoo:tiny", speed_model=None,
        space=TINY_GRID_SPACE, repeats=2,
    )  # fmt: skip
    return db, record.grid_id
