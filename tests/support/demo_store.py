"""A store holding a small finished expert run and a stopped one, filled deterministically (fixed
ids and timestamps) and written as the agents write it: the TUI's state, Pilot and snapshot tests
and ``scripts/tui_tmux.sh`` share it."""

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

import haqa.store.duck as store_module
from haqa.agents.analyst.node import AGENT as ANALYST
from haqa.agents.planner.node import AGENT as PLANNER
from haqa.agents.runtime import (
    ROLE_DECISION,
    ROLE_OBSERVATION,
    ROLE_SUPERVISOR,
    ROLE_SYSTEM,
    ROLE_THOUGHT,
    ROLE_TOOL_CALL,
    ROLE_TOOL_RESULT,
)
from haqa.agents.tuner.node import AGENT as TUNER
from haqa.schemas import TrialMetrics
from haqa.store import MessageRecord, Store, TrialResult

SUPERVISOR = "supervisor"  # the supervisor's agent name (agents/supervisor/node.py)
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
            agent=SUPERVISOR,
            role=ROLE_SUPERVISOR,
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
    say(SUPERVISOR, ROLE_SUPERVISOR, f"run {run_id}: maximise decode tok/s; brain expert")
    say(
        SUPERVISOR,
        ROLE_SUPERVISOR,
        "next: analyst",
        tool_name="route",
        tool_args={"route": ANALYST},
    )
    say(ANALYST, ROLE_SYSTEM, "You are the hardware analyst.\n" + "Rules.\n" * 30)
    say(ANALYST, ROLE_TOOL_CALL, "probe_hardware()", tool_name="probe_hardware", tool_args={})
    say(
        ANALYST,
        ROLE_TOOL_RESULT,
        "probed Demo CPU",
        tool_name="probe_hardware",
        tool_result={"cpu_model": "Demo CPU", "flags": ["avx2", "fma"], "cores": 2},
    )
    say(ANALYST, "assistant", BRIEF)
    say(
        SUPERVISOR,
        ROLE_SUPERVISOR,
        "hardware brief written",
        tool_name="mark",
        tool_args={"mark": "analysed", "brief": {"text": BRIEF}},
    )
    trial("finetune", "evaluate", {"role": "base"}, accuracy=0.41)
    say(PLANNER, ROLE_THOUGHT, "start from the defaults: rank 8, lr 2e-3")
    say(PLANNER, ROLE_DECISION, "trial: {lora_r: 8}", tool_args={"action": "trial"})
    trial("finetune", "run_qlora", {"lora_r": 8, "learning_rate": 0.002}, accuracy=0.62)
    say(PLANNER, ROLE_OBSERVATION, "trial 2: accuracy 0.620")
    say(
        SUPERVISOR,
        ROLE_SUPERVISOR,
        "fine-tuning finished",
        tool_name="mark",
        tool_args={"mark": "finetune_done", "accuracy": 0.62},
    )
    trial("deploy", "evaluate", {"role": "reference", "quant_type": "F16"}, accuracy=0.62)
    say(TUNER, ROLE_OBSERVATION, "reference accuracy (fine-tuned model, F16 GGUF): 0.620")
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
        say(TUNER, ROLE_THOUGHT, f"try {cfg['quant_type']} with {cfg['n_threads']} threads")
        say(TUNER, ROLE_DECISION, f"trial: {cfg}", tool_args={"action": "trial", "config": cfg})
        tid = trial("deploy", "deploy_trial", cfg, **metrics)
        say(TUNER, ROLE_OBSERVATION, f"trial {tid} ({cfg['quant_type']}): {metrics}")
    say(
        SUPERVISOR,
        ROLE_SUPERVISOR,
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
        SUPERVISOR,
        ROLE_SUPERVISOR,
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
