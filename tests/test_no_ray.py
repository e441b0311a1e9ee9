"""Without ``--cluster`` nothing imports Ray: not the CLI, not a whole run (a fresh interpreter
each, so nothing another test imported counts)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path


def _modules_after(code: str, cwd: Path | None = None) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=cwd
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


def test_the_cli_and_the_trial_backends_import_no_ray() -> None:
    code = (
        "import sys, haqa.cli; haqa.cli._register(); "
        "import haqa.graph.run, haqa.trials.isolation, haqa.trials.cluster, haqa.harness.grid; "
        "print('ray' in sys.modules)"
    )
    assert _modules_after(code) == "False"


def test_a_run_without_cluster_imports_no_ray(tiny_grid: tuple[Path, str], tmp_path: Path) -> None:
    db, grid_id = tiny_grid
    store = tmp_path / "haqa.duckdb"
    shutil.copy(db, store)
    argv = [
        "run", "--tabular", grid_id, "--model", "zoo:tiny", "--finetune-trials", "0",
        "--deploy-trials", "2", "--db", str(store),
    ]  # fmt: skip
    code = (
        "import sys; from haqa.cli import main; "
        f"code = main({argv!r}); print(code, 'ray' in sys.modules)"
    )
    assert _modules_after(code, cwd=tmp_path) in ("0 False", "3 False")
