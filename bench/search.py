"""Trials to reach 98% of the grid best per brain (median over seeds), as ratios to `random`, and
time-to-best: the grid's recorded measuring time of the configurations a brain tried until it
reached 98% of the best, ÷ the time of measuring the whole grid.

    python bench/search.py --grid GRID_ID [--seeds 10] [--budget 20] [--db haqa.duckdb]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from _common import reproduce_line

from haqa.goal import Goal
from haqa.harness.compare import REACH, compare_brains, grid_truth
from haqa.harness.grid import TabularToolbox
from haqa.store import Store, config_key


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", required=True)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--budget", type=int, default=20)
    parser.add_argument("--brains", default="expert,random,local,tpe,gp,nsga2,cmaes")
    parser.add_argument("--db", default="haqa.duckdb")
    args = parser.parse_args()
    store = Store(Path(args.db), create=False)
    scratch = Store(Path(tempfile.mkdtemp()) / "search.duckdb", keep_open=True)
    result = compare_brains(
        store, scratch=scratch, grid_id=args.grid, brains=args.brains.split(","),
        seeds=args.seeds, budget=args.budget,
    )  # fmt: skip
    grid = store.get_grid(args.grid)
    points = store.grid_points(args.grid)
    grid_time = sum(p.duration_s for p in points)
    cost: dict[str, float] = {}
    for p in points:  # one measurement of a configuration: its first recorded repeat's time
        cost.setdefault(p.config_key, p.duration_s)
    truth, optimum, best = grid_truth(TabularToolbox(store, args.grid), Goal.parse("decode"))
    knobs = sorted(grid.space)

    def time_to_best(run_id: str) -> float | None:
        spent = 0.0
        for t in scratch.list_trials(run_id, stage="deploy"):
            if not t.is_search:
                continue
            spent += cost.get(config_key({k: t.config[k] for k in knobs}), 0.0)
            value = truth(t.config) if t.status == "ok" else None
            if value is not None and value >= REACH * optimum:
                return spent / grid_time
        return None

    by = {s.brain: s for s in result.scores}
    base = by["random"].trials_to_reach_median if "random" in by else None
    print(
        f"grid {args.grid}: optimum {optimum:.2f} decode tok/s at {best}; "
        f"measuring the whole grid took {grid_time:.0f} s"
    )
    print(f"{'brain':<8}{'trials to 98%':>15}{'÷ random':>10}{'time-to-best ÷ grid time':>26}")
    for s in result.scores:
        med = s.trials_to_reach_median
        shown = f"{med:g}" if med is not None and med <= args.budget else f">{args.budget}"
        rel = f"{med / base:.2f}" if med and base else "n/a"
        times = [x for x in (time_to_best(r) for r in result.run_ids[s.brain]) if x is not None]
        ttb = f"{statistics.median(times):.3f}" if times else "never"
        print(f"{s.brain:<8}{shown:>15}{rel:>10}{ttb:>26}")
    print(reproduce_line())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
