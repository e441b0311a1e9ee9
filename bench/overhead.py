"""Run wall time ÷ the sum of the trials' own tool times: what the graph, the brain, the store and
the trial isolation cost on top of the measurements.

    python bench/overhead.py [--db scratch.duckdb]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from _common import reproduce_line

from haqa.graph.routing import Budgets
from haqa.graph.run import RunConfig, start_run
from haqa.schemas import FinetuneConfig
from haqa.store import Store


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db")
    args = parser.parse_args()
    db = Path(args.db) if args.db else Path(tempfile.mkdtemp()) / "overhead.duckdb"
    store = Store(db)
    cfg = RunConfig(
        model="zoo:tiny",
        budgets=Budgets(finetune_trials=1, deploy_trials=3, patience=5),
        finetune=FinetuneConfig(max_steps=30),
        eval_limit=50,
        quick_analysis=True,
    )
    start = time.monotonic()
    run_id, _ = start_run(store, cfg)
    wall = time.monotonic() - start
    tools = sum(t.duration_s for t in store.list_trials(run_id))
    print(
        f"run {run_id}: wall {wall:.1f} s, trials' own time {tools:.1f} s "
        "(the analyst's probe and microbenchmarks are not trials: they count as overhead)"
    )
    print(f"overhead ratio (wall ÷ trials): {wall / tools:.2f}")
    print(reproduce_line())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
