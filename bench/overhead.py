"""Run wall time ÷ the tools' own time: what the graph, the brain, the store and the trial
isolation cost on top of the measurements.

The tools' time is every trial's duration (fine-tunes, exports, evaluations, benchmarks, each
including its child process's start-up) plus the analyst's two tool calls (probe_hardware and
microbench_kernels), timed from the trace: a tool call's message to its result's. Both ratios
are printed, with and without counting the analyst's calls as tool time.

    python bench/overhead.py            # the demo's run (zoo:smollm2-135m)
    python bench/overhead.py --quick    # a smaller run on zoo:tiny alone
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from _common import reproduce_line

from haqa.agents.routing import Budgets
from haqa.graph.config import RunConfig, demo_config
from haqa.graph.run import start_run
from haqa.schemas import FinetuneConfig
from haqa.store import MessageRecord, Store

ANALYST_TOOLS = ("probe_hardware", "microbench_kernels")


def analyst_tool_seconds(messages: list[MessageRecord]) -> float:
    """Seconds between each analyst tool call and its result, from the stored trace."""
    total, started = 0.0, {}
    for m in messages:
        if m.tool_name not in ANALYST_TOOLS:
            continue
        if m.role == "tool_call":
            started[m.tool_name] = m.created_at
        elif m.role == "tool_result" and m.tool_name in started:
            total += (m.created_at - started.pop(m.tool_name)).total_seconds()
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db")
    parser.add_argument("--quick", action="store_true", help="a small run on zoo:tiny alone")
    args = parser.parse_args()
    db = Path(args.db) if args.db else Path(tempfile.mkdtemp()) / "overhead.duckdb"
    store = Store(db)
    if args.quick:
        cfg = RunConfig(
            model="zoo:tiny",
            budgets=Budgets(finetune_trials=1, deploy_trials=3, patience=5),
            finetune=FinetuneConfig(max_steps=30),
            eval_limit=50,
            quick_analysis=True,
        )
    else:
        from haqa.cli.agents import build_zoo_models

        cfg = demo_config()
        build_zoo_models(cfg.model, cfg.speed_model)  # not timed: a one-time build
    start = time.monotonic()
    run_id, _ = start_run(store, cfg)
    wall = time.monotonic() - start
    trials = sum(t.duration_s for t in store.list_trials(run_id))
    analyst = analyst_tool_seconds(store.list_messages(run_id))
    tools = trials + analyst
    print(
        f"run {run_id}: wall {wall:.1f} s; trials {trials:.1f} s; analyst's probe and "
        f"microbenchmarks {analyst:.1f} s; everything else {wall - tools:.1f} s"
    )
    print(f"overhead ratio (wall ÷ tools' own time): {wall / tools:.3f}")
    print(
        f"  counting the analyst's tool calls as overhead too (wall ÷ trials): {wall / trials:.3f}"
    )
    print(reproduce_line())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
