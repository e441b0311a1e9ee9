"""The TUI's view of a run, as pure functions over a store filled deterministically (fixed ids and
timestamps), and the builder of that store that the Pilot and snapshot tests share."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import haqa.store.duck as store_module
from haqa.schemas import TrialMetrics
from haqa.store import MessageRecord, Store, TrialResult
from haqa.tui import state

RUN_ID = "20261123-120000-demo"
T0 = datetime(2026, 11, 23, 12, 0, 0)
BRIEF = (
    "Facts:\n- CPU: Demo CPU @ 2.0GHz, 2 cores, AVX2 FMA\n- memory bandwidth 18.0 GB/s\n"
    "Measured implications:\n- Q8_0 decodes faster than Q4_K_M here (no fast int4 dot product)"
)


@contextmanager
def fixed_clock(start: datetime = T0, step_s: float = 1.0) -> Iterator[list[datetime]]:
    """The store's clock, advancing ``step_s`` per reading: stable timestamps for snapshots."""
    now = [start]

    def tick() -> datetime:
        now[0] = now[0] + timedelta(seconds=step_s)
        return now[0]

    original = store_module.utcnow
    store_module.utcnow = tick
    try:
        yield now
    finally:
        store_module.utcnow = original


def _deploy(threads: int, quant: str, **extra: Any) -> dict[str, Any]:
    return {"quant_type": quant, "n_threads": threads, "n_batch": 512, **extra}


def fill_store(path: Path) -> Store:
    """A finished expert run and a stopped one, written as the agents write them."""
    s = Store(path)
    with fixed_clock():
        write_demo_run(s)
        stopped = s.create_run(
            model="zoo:tiny",
            brain="expert",
            goal={"metric": "prefill", "max_accuracy_drop": 0.01},
            run_id="20261123-130000-stop",
        )
        s.add_message(
            stopped.run_id,
            agent="supervisor",
            role="supervisor",
            content="stopped by the user: the run can be resumed",
        )
        s.finish_run(stopped.run_id, "stopped")
    return s


def write_demo_run(
    s: Store,
    *,
    run_id: str = RUN_ID,
    on_event: Callable[[MessageRecord], None] | None = None,
) -> None:
    """The trace of a small finished expert run, told to ``on_event`` as it is written (what a
    live run does); timestamps come from the store's clock (``fixed_clock`` for stable ones)."""

    def trial(stage: str, tool: str, config: dict[str, Any], **kw: Any) -> int:
        started = store_module.utcnow()
        finished = store_module.utcnow()
        status = kw.pop("status", "ok")
        error = kw.pop("error", None)
        t = s.add_trial(
            run_id,
            TrialResult(
                stage=stage,
                tool=tool,
                config=config,
                metrics=TrialMetrics(**kw),
                status=status,
                error=error,
                started_at=started,
                finished_at=finished,
            ),
        )
        return t.trial_id

    def say(agent: str, role: str, content: str, **kw: Any) -> None:
        record = s.add_message(run_id, agent=agent, role=role, content=content, **kw)
        if on_event is not None:
            on_event(record)

    s.create_run(
        model="zoo:tiny",
        brain="expert",
        goal={"metric": "decode", "max_accuracy_drop": 0.02, "memory_budget_bytes": 2 << 30},
        config={"budgets": {"finetune_trials": 1, "deploy_trials": 4}},
        run_id=run_id,
    )
    say("supervisor", "supervisor", f"run {run_id}: maximise decode tok/s; brain expert")
    say(
        "supervisor",
        "supervisor",
        "next: analyst",
        tool_name="route",
        tool_args={"route": "analyst"},
    )
    say("analyst", "system", "You are the hardware analyst.\n" + "Rules.\n" * 30)
    say("analyst", "tool_call", "probe_hardware()", tool_name="probe_hardware", tool_args={})
    say(
        "analyst",
        "tool_result",
        "probed Demo CPU",
        tool_name="probe_hardware",
        tool_result={"cpu_model": "Demo CPU", "flags": ["avx2", "fma"], "cores": 2},
    )
    say("analyst", "assistant", BRIEF)
    say(
        "supervisor",
        "supervisor",
        "hardware brief written",
        tool_name="mark",
        tool_args={"mark": "analysed", "brief": {"text": BRIEF}},
    )
    trial("finetune", "evaluate", {"role": "base"}, accuracy=0.41)
    say("planner", "thought", "start from the defaults: rank 8, lr 2e-3")
    say("planner", "decision", "trial: {lora_r: 8}", tool_args={"action": "trial"})
    trial("finetune", "run_qlora", {"lora_r": 8, "learning_rate": 0.002}, accuracy=0.62)
    say("planner", "observation", "trial 2: accuracy 0.620")
    say(
        "supervisor",
        "supervisor",
        "fine-tuning finished",
        tool_name="mark",
        tool_args={"mark": "finetune_done", "accuracy": 0.62},
    )
    trial("deploy", "evaluate", {"role": "reference", "quant_type": "F16"}, accuracy=0.62)
    say("tuner", "observation", "reference accuracy (fine-tuned model, F16 GGUF): 0.620")
    deploys = [
        (
            _deploy(2, "Q4_K_M"),
            {
                "accuracy": 0.60,
                "prefill_tps": 210.0,
                "decode_tps": 61.0,
                "peak_mem_bytes": 300 << 20,
            },
        ),
        (
            _deploy(2, "Q8_0", flash_attn=True),
            {
                "accuracy": 0.62,
                "prefill_tps": 240.0,
                "decode_tps": 74.5,
                "peak_mem_bytes": 420 << 20,
            },
        ),
        (_deploy(2, "F16"), {"status": "rejected", "error": "predicted 3.1 GiB > budget 2 GiB"}),
        (_deploy(1, "Q4_0"), {"status": "failed", "error": "llama.cpp: cannot load model"}),
    ]
    for cfg, metrics in deploys:
        say("tuner", "thought", f"try {cfg['quant_type']} with {cfg['n_threads']} threads")
        say("tuner", "decision", f"trial: {cfg}", tool_args={"action": "trial", "config": cfg})
        tid = trial("deploy", "deploy_trial", cfg, **metrics)
        say("tuner", "observation", f"trial {tid} ({cfg['quant_type']}): {metrics}")
    say(
        "supervisor",
        "supervisor",
        "deployment stage finished: budget used",
        tool_name="mark",
        tool_args={"mark": "deploy_done", "reason": "budget"},
    )
    trial(
        "deploy",
        "benchmark_llamacpp",
        {"role": "baseline", "quant_type": "F16", "n_threads": 2},
        prefill_tps=150.0,
        decode_tps=30.0,
    )
    trial(
        "deploy",
        "benchmark_llamacpp",
        {"role": "baseline", "quant_type": "Q4_K_M", "n_threads": 2},
        prefill_tps=200.0,
        decode_tps=58.0,
    )
    trial("deploy", "evaluate", {"role": "test", "quant_type": "Q8_0"}, accuracy=0.61)
    result = {
        "found": True,
        "config": {"quant_type": "Q8_0", "n_threads": 2},
        "decode_tps": 74.5,
        "llama_server_cmd": "llama-server -m model-Q8_0.gguf -t 2 -fa on",
    }
    say(
        "supervisor",
        "supervisor",
        "best: Q8_0 with 2 threads — decode 74.5 tok/s (2.48x vs llama.cpp defaults at F16)",
        tool_name="result",
        tool_result=result,
    )
    s.finish_run(run_id, "finished", result=result)


@functools.cache
def _demo_template() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="haqa-tui-demo-"))
    atexit.register(shutil.rmtree, folder, True)
    fill_store(folder / "haqa.duckdb")
    return folder / "haqa.duckdb"


def demo_copy(dest: Path) -> Path:
    """A copy of the demo store at ``dest`` (filled once per test session: ~45 writes)."""
    shutil.copyfile(_demo_template(), dest)
    return dest


@pytest.fixture()
def demo_store(tmp_path: Path) -> Store:
    return Store(demo_copy(tmp_path / "haqa.duckdb"))


def test_trials_at_a_step_are_those_finished_before_that_message(demo_store: Store) -> None:
    messages = demo_store.list_messages(RUN_ID)
    trials = demo_store.list_trials(RUN_ID)
    assert state.trials_at(messages, trials, 0) == []
    # The base evaluation is stored after the `analysed` mark (step 7), before the next message.
    assert state.trials_at(messages, trials, 7) == []
    assert [t.trial_id for t in state.trials_at(messages, trials, 8)] == [1]
    assert state.trials_at(messages, trials, len(messages)) == trials
    # Each observation naming a trial sees that trial: the rule agrees with the trace.
    for k, m in enumerate(messages, start=1):
        if m.role == "observation" and m.content.startswith("trial "):
            named = int(m.content.split()[1].rstrip(":"))
            assert named in [t.trial_id for t in state.trials_at(messages, trials, k)]


def test_status_best_and_budget_follow_the_goal(demo_store: Store) -> None:
    run = demo_store.get_run(RUN_ID)
    trials = demo_store.list_trials(RUN_ID)
    best = state.best_so_far(run, trials)
    assert best is not None and best.trial_id == 5 and best.objective == 74.5
    # rejected and failed count against the budget; measurements around the search do not
    assert state.budget_used(run, trials) == (5, 5)
    assert state.stage_of(demo_store.list_messages(RUN_ID)) == "finished"
    assert [p[0] for p in state.pareto_front(state.pareto_points(trials))] == [5]
    assert state.goal_words(run) == "decode ≤2pt 2.0 GiB"


def test_step_of_trial_is_the_first_step_showing_it(demo_store: Store) -> None:
    messages = demo_store.list_messages(RUN_ID)
    trials = demo_store.list_trials(RUN_ID)
    for t in trials:
        k = state.step_of_trial(messages, trials, t.trial_id)
        assert k is not None
        assert t in state.trials_at(messages, trials, k)
        assert t not in state.trials_at(messages, trials, k - 1)
    assert state.step_of_trial(messages, trials, 999) is None
