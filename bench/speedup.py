"""The chosen configuration's decode and prefill tok/s ÷ llama.cpp's defaults on the same model
(at F16, and at Q4_K_M — the usual hand choice), measured side by side, interleaved, in one run;
and ÷ the best configuration of a recorded grid when one is given (that configuration is measured
again here, in the same rounds: the grid's own figures were taken at another time).

    python bench/speedup.py --run RUN_ID [--grid GRID_ID [--grid-db DB]] [--rounds 3] [--db DB]

RUN_ID is a finished `haqa run`/`haqa demo` run (its speed model is what is benchmarked).
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from _common import ratio, reproduce_line

from haqa.agents.supervisor.result import llama_defaults
from haqa.errors import HaqaError
from haqa.goal import Goal
from haqa.schemas import DeployConfig
from haqa.store import Store


def _types_below_floor(store: Store, run_id: str) -> set[str]:
    """Quant types whose deployed accuracy this run measured below its accuracy floor."""
    run = store.get_run(run_id)
    reference = (run.result or {}).get("reference_accuracy")
    if reference is None or run.goal is None:
        return set()
    goal = Goal.model_validate(run.goal)
    return {
        str(t.config["quant_type"])
        for t in store.list_trials(run_id)
        if t.stage == "deploy"
        and t.is_search
        and t.status == "ok"
        and not goal.keeps_accuracy(t.metrics.accuracy, reference)
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--grid")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--db", default="haqa.duckdb")
    parser.add_argument("--grid-db", help="store holding the grid (default: --db)")
    args = parser.parse_args()
    from haqa.graph.config import RunConfig
    from haqa.graph.run import prepare
    from haqa.trials.toolbox import LiveToolbox, ToolboxSettings

    store = Store(Path(args.db), create=False)
    run = store.get_run(args.run)
    if not run.result or not run.result.get("found"):
        raise HaqaError(f"run {args.run} has no answer to benchmark")
    cfg = RunConfig.model_validate(run.config)
    _, settings, _ = prepare(cfg)
    box = LiveToolbox(ToolboxSettings(**{**settings.model_dump(), "repetitions": 3}))
    box.probe()
    chosen = DeployConfig.model_validate(run.result["config"])
    brief = (run.hardware or {}).get("brief", {})
    defaults = llama_defaults(brief)
    adapter = run.result.get("adapter_path")
    contenders = {
        "chosen": lambda: box._benchmark(
            box._speed_gguf(adapter, chosen.quant_type), chosen.runtime
        ),
        "defaults@F16": lambda: box.baseline("F16", defaults),
        "defaults@Q4_K_M": lambda: box.baseline("Q4_K_M", defaults),
    }
    grid_best: dict[str, object] | None = None
    if args.grid:
        from haqa.harness.compare import grid_truth
        from haqa.harness.grid import TabularToolbox, full_config
        from haqa.store import iter_grid_configs

        grid_store = Store(Path(args.grid_db), create=False) if args.grid_db else store
        grid_box = TabularToolbox(grid_store, args.grid)
        # The grid's accuracies are its own model's; a quant type this run measured below its
        # accuracy floor (on the fine-tuned model) cannot be its answer, so the grid best is
        # taken among the other types: the best the grid offers under this run's goal.
        missed = _types_below_floor(store, args.run)
        truth, _, _ = grid_truth(grid_box, cfg.parsed_goal())
        recorded_optimum, grid_best = max(
            (
                (value, point)
                for point in iter_grid_configs(grid_box.grid.space)
                if point["quant_type"] not in missed and (value := truth(point)) is not None
            ),
            key=lambda vp: vp[0],
        )
        if missed:
            print(
                f"left out of the grid best: {', '.join(sorted(missed))} (below this run's floor)"
            )
        best = full_config(grid_best)
        if best != chosen:  # the same configuration is not measured twice: its ratio is 1
            contenders["grid best"] = lambda: box._benchmark(
                box._speed_gguf(adapter, best.quant_type), best.runtime
            )
    samples: dict[str, list[tuple[float, float]]] = {k: [] for k in contenders}
    for r in range(args.rounds):
        order = list(contenders) if r % 2 == 0 else list(reversed(contenders))
        for name in order:
            m = contenders[name]()
            samples[name].append((m.prefill_tps or 0.0, m.decode_tps or 0.0))
    med = {
        k: (statistics.median(p for p, _ in v), statistics.median(t for _, t in v))
        for k, v in samples.items()
    }
    if grid_best is not None and "grid best" not in med:
        med["grid best"] = med["chosen"]
        print("the grid best under this run's goal is the chosen configuration itself")
    print(
        f"model: {cfg.speed_model or cfg.model}; chosen: {chosen.quant_type} "
        f"{chosen.runtime.model_dump()}"
    )
    print(f"{'contender':<18}{'pp tok/s':>10}{'tg tok/s':>10}")
    for k, (pp, tg) in med.items():
        print(f"{k:<18}{pp:>10.1f}{tg:>10.1f}")
    for base in ("defaults@F16", "defaults@Q4_K_M"):
        print(
            f"chosen ÷ {base}: decode {ratio(med['chosen'][1], med[base][1])}, "
            f"prefill {ratio(med['chosen'][0], med[base][0])}"
        )
    if grid_best is not None:
        print(
            f"chosen ÷ grid best {grid_best}: decode {ratio(med['chosen'][1], med['grid best'][1])}"
            f" (measured now; the grid recorded {recorded_optimum:.1f})"
        )
        print(
            "grid best ÷ defaults@F16 (the most the grid gains here under this run's goal): "
            f"decode {ratio(med['grid best'][1], med['defaults@F16'][1])}"
        )
    print(
        f"accuracy of the chosen deployment: {run.result.get('accuracy_validation')} "
        f"(reference {run.result.get('reference_accuracy')})"
    )
    print(reproduce_line())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
