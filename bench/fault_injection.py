"""Fault injection: a real run on the tiny zoo model while a segfaulting trial, an out-of-memory
trial and a hanging trial are injected (each once), and the whole run is killed 5 times (kill -9)
and resumed. Prints faults injected and survived, trials lost and duplicates (both must be 0).

    python bench/fault_injection.py [--kills 5] [--seed 1]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import reproduce_line

from haqa.schemas import DeployConfig, TrialMetrics
from haqa.trials.toolbox import LiveToolbox

FAULTS = ("segfault", "oom", "hang")


class FaultyToolbox(LiveToolbox):
    """Deploy trials misbehave, one fault each, once (a marker file remembers): a segfault and an
    out-of-memory trial at once, a hanging trial after the last kill."""

    def deploy(self, config: DeployConfig, adapter: str | None) -> TrialMetrics:
        marks = Path(os.environ["HAQA_FAULT_DIR"])
        for fault in FAULTS:
            mark = marks / fault
            if fault == "hang" and not (marks / "kills_done").exists():
                continue  # the hang waits for the kills, so no kill pre-empts its timeout
            if not mark.exists():
                mark.write_text(config.model_dump_json())
                if fault == "segfault":
                    ctypes.string_at(0)
                if fault == "oom":
                    hog = []
                    while True:
                        hog.append(bytearray(256 << 20))
                if fault == "hang":
                    time.sleep(3600)
        return super().deploy(config, adapter)


def child(db: str, resume: str | None) -> int:
    """One process of the run (started, or resumed), with the faulty toolbox isolated per trial."""
    from haqa.agents.routing import Budgets
    from haqa.graph.config import RunConfig
    from haqa.graph.run import prepare, resume_run, start_run
    from haqa.schemas import FinetuneConfig
    from haqa.store import Store
    from haqa.trials.isolation import IsolatedToolbox

    store = Store(db)
    cfg = RunConfig(
        model="zoo:tiny",
        budgets=Budgets(finetune_trials=2, deploy_trials=6, patience=10),
        finetune=FinetuneConfig(max_steps=30),
        eval_limit=30,
        n_prompt=32,
        n_gen=8,
        repetitions=1,
        quick_analysis=True,
        max_accuracy_drop=10.0,
    )
    _, settings, _ = prepare(cfg)
    box = IsolatedToolbox(
        settings, timeout_s=20, memory_limit_bytes=1 << 30, factory="fault_injection:FaultyToolbox"
    )
    if resume:
        resume_run(store, resume, toolbox=box)
    else:
        start_run(store, cfg, toolbox=box)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--child", nargs=2, metavar=("DB", "RESUME"))
    args = parser.parse_args()
    if args.child:
        return child(args.child[0], None if args.child[1] == "-" else args.child[1])

    from haqa.store import Store

    work = Path(tempfile.mkdtemp(prefix="haqa-faults-"))
    db = str(work / "haqa.duckdb")
    env = {
        **os.environ,
        "HAQA_FAULT_DIR": str(work),
        "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]
        ),
    }
    rng = random.Random(args.seed)
    kills, run_id, seen = 0, None, {}
    started = time.monotonic()
    while True:
        cmd = [sys.executable, __file__, "--child", db, run_id or "-"]
        proc = subprocess.Popen(cmd, env=env, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        if kills < args.kills:
            time.sleep(rng.uniform(4, 14))
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                kills += 1
            proc.wait()
            if kills >= args.kills:
                (work / "kills_done").write_text("")
        else:
            proc.wait()
        store = Store(db)
        runs = store.list_runs()
        if runs and run_id is None:
            run_id = runs[0].run_id
        if run_id is None:
            continue
        for t in store.list_trials(run_id):
            seen.setdefault(t.trial_id, t)
        if store.get_run(run_id).status == "finished":
            break
    trials = store.list_trials(run_id)
    ids = {t.trial_id: t for t in trials}
    lost = sum(1 for i, t in seen.items() if ids.get(i) != t)
    keys = [(t.stage, json.dumps(t.config, sort_keys=True)) for t in trials]
    duplicates = len(keys) - len(set(keys))
    failed = [t for t in trials if t.status == "failed"]
    injected = [f for f in FAULTS if (work / f).exists()]
    # A fault is survived when its trial failed with the right reason and the run went on; a kill
    # that landed while a fault was in flight pre-empts it (said so, and not counted as survived).
    survived = [
        f for f in injected
        if any({"segfault": "SIGSEGV", "oom": "out of memory", "hang": "timed out"}[f]
               in (t.error or "") for t in failed)
    ]  # fmt: skip
    pre_empted = [f for f in injected if f not in survived]
    print(f"run {run_id}: {len(trials)} trials, finished in {time.monotonic() - started:.0f} s")
    for t in failed:
        print(f"  failed trial {t.trial_id}: {(t.error or '')[:100]}")
    print(f"faults injected: {len(injected)} ({', '.join(injected)}) + {kills} kills")
    print(f"faults survived: {len(survived)} ({', '.join(survived)}) + {kills} kills resumed")
    if pre_empted:
        print(f"faults pre-empted by a kill before they fired: {', '.join(pre_empted)}")
    print(f"trials lost: {lost}")
    print(f"duplicates: {duplicates}")
    print(reproduce_line())
    return 0 if lost == 0 and duplicates == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
