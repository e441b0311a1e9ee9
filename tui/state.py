"""What every pane shows, as pure functions of a run's trace (no Textual here, so it is tested
on plain records).

The state at replay step ``k`` is the first ``k`` messages of the trace and the trials finished by
then. A trial counts as finished at step ``k`` when its ``finished_at`` is not later than the
``created_at`` of message ``k``: both come from the same clock in the process that ran the run, a
trial is stored before the observation that reports it is written, and this also places the
trials no message names (the baselines and the test evaluation measured while the supervisor
assembles the result). At the last step every stored trial is shown, whatever its timestamps.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from haqa.goal import Goal
from haqa.report import pareto_front as report_pareto_front
from haqa.store import MessageRecord, RunRecord, TrialRecord, search_trials, superseded
from haqa.units import format_bytes

#: Keys shown first in a configuration summary (the knobs a reader compares).
_SUMMARY_KEYS = (
    "quant_type",
    "n_threads",
    "n_threads_batch",
    "n_batch",
    "n_ubatch",
    "flash_attn",
    "type_k",
    "type_v",
    "lora_r",
    "lora_alpha",
    "learning_rate",
    "max_steps",
)
_SHORT = {
    "quant_type": "",
    "n_threads": "t",
    "n_threads_batch": "tb",
    "n_batch": "b",
    "n_ubatch": "ub",
    "flash_attn": "fa",
    "type_k": "k",
    "type_v": "v",
    "lora_r": "r",
    "lora_alpha": "α",
    "learning_rate": "lr",
    "max_steps": "steps",
}


def config_summary(trial: TrialRecord, width: int = 48) -> str:
    """The knobs of a trial in a few characters: ``Q4_K_M t2 b512 fa``."""
    cfg = trial.config
    parts = []
    for key in _SUMMARY_KEYS:
        if key not in cfg:
            continue
        value = cfg[key]
        if isinstance(value, bool):
            if value:
                parts.append(_SHORT[key])
            continue
        parts.append(f"{_SHORT[key]}{value}")
    if not parts:
        rest = {k: v for k, v in cfg.items() if k != "role"}
        parts.append(json.dumps(rest, sort_keys=True, default=str) if rest else "-")
    text = " ".join(parts)
    return text if len(text) <= width else text[: width - 1] + "…"


def trials_at(
    messages: Sequence[MessageRecord], trials: Sequence[TrialRecord], step: int
) -> list[TrialRecord]:
    """The trials finished by replay step ``step`` (0 = before the first message)."""
    if step <= 0 or not messages:
        return []
    if step >= len(messages):
        return list(trials)
    now = messages[step - 1].created_at
    return [t for t in trials if t.finished_at <= now]


def step_of_trial(
    messages: Sequence[MessageRecord], trials: Sequence[TrialRecord], trial_id: int
) -> int | None:
    """The first step at which ``trial_id`` is shown, or None if the run has no such trial."""
    trial = next((t for t in trials if t.trial_id == trial_id), None)
    if trial is None:
        return None
    for i, m in enumerate(messages, start=1):
        if trial.finished_at <= m.created_at:
            return i
    return len(messages)


def trial_steps(messages: Sequence[MessageRecord], trials: Sequence[TrialRecord]) -> list[int]:
    """The steps at which at least one trial appears, ascending (for next/previous trial)."""
    steps = {step_of_trial(messages, trials, t.trial_id) for t in trials}
    return sorted(s for s in steps if s is not None)


def _marks(messages: Sequence[MessageRecord]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for m in messages:
        if m.tool_name == "mark" and m.tool_args:
            out[str(m.tool_args.get("mark"))] = m.tool_args
    return out


def stage_of(messages: Sequence[MessageRecord], status: str | None = None) -> str:
    """Where the run is: analysis, fine-tune, deploy, result, or how it ended."""
    if any(m.tool_name == "result" for m in messages):
        return "finished"
    marks = _marks(messages)
    if "deploy_done" in marks:
        stage = "result"
    elif "finetune_done" in marks:
        stage = "deploy"
    elif "analysed" in marks:
        stage = "fine-tune"
    elif messages:
        stage = "analysis"
    else:
        stage = "starting"
    if status in ("stopped", "failed") and messages and messages[-1].role == "supervisor":
        return f"{status} ({stage})"
    return stage


def brief_text(messages: Sequence[MessageRecord]) -> str | None:
    """The hardware analyst's brief as of these messages (the ``analysed`` mark carries it)."""
    brief = _marks(messages).get("analysed", {}).get("brief")
    if isinstance(brief, dict) and brief.get("text"):
        return str(brief["text"])
    return None


def goal_of(run: RunRecord) -> Goal | None:
    try:
        return Goal.model_validate(run.goal or {}) if run.goal else None
    except ValueError:  # a manual run stores {"command": ...}, not a goal
        return None


def goal_words(run: RunRecord) -> str:
    """The goal as the user typed it: ``decode ≤1pt 4.0 GiB``."""
    goal = goal_of(run)
    if goal is None:
        command = (run.goal or {}).get("command")
        return str(command) if command else "-"
    metric = (
        f"workload:{goal.prompt_tokens}+{goal.gen_tokens}"
        if goal.metric == "workload"
        else goal.metric
    )
    text = f"{metric} ≤{goal.max_accuracy_drop * 100:g}pt"
    if goal.memory_budget_bytes:
        text += f" {format_bytes(goal.memory_budget_bytes)}"
    return text


def reference_accuracy(trials: Sequence[TrialRecord]) -> float | None:
    return next((t.metrics.accuracy for t in trials if t.role == "reference"), None)


def feasible(run: RunRecord, trial: TrialRecord, reference: float | None) -> bool:
    """The supervisor's rule: measured, within the accuracy drop and the memory budget."""
    goal = goal_of(run)
    if goal is None or trial.status != "ok" or trial.stage != "deploy" or not trial.is_search:
        return False
    return goal.feasible(trial.metrics, reference)


@dataclass(frozen=True)
class Best:
    trial_id: int
    objective: float
    unit: str


def best_so_far(run: RunRecord, trials: Sequence[TrialRecord]) -> Best | None:
    goal = goal_of(run)
    if goal is None:
        return None
    ref = reference_accuracy(trials)
    replaced = superseded(list(trials))
    best: Best | None = None
    for t in trials:
        if t.trial_id in replaced or not feasible(run, t, ref):
            continue
        value = goal.objective(t.metrics)
        if value is not None and (best is None or value > best.objective):
            best = Best(t.trial_id, value, goal.objective_name)
    return best


def best_series(run: RunRecord, trials: Sequence[TrialRecord]) -> list[tuple[int, float]]:
    """(trial id, best feasible objective so far) after each feasible improvement."""
    out: list[tuple[int, float]] = []
    for i in range(len(trials)):
        best = best_so_far(run, trials[: i + 1])
        if best is not None and (not out or best.objective > out[-1][1]):
            out.append((trials[i].trial_id, best.objective))
    return out


def pareto_points(
    trials: Sequence[TrialRecord],
) -> list[tuple[int, float, float]]:
    """(trial id, decode tok/s, accuracy) of measured deploy search trials."""
    return [
        (t.trial_id, float(t.metrics.decode_tps), float(t.metrics.accuracy))
        for t in search_trials(trials, "deploy")
        if t.status == "ok" and t.metrics.decode_tps is not None and t.metrics.accuracy is not None
    ]


def pareto_front(points: Sequence[tuple[int, float, float]]) -> list[tuple[int, float, float]]:
    """The points (trial, decode tok/s, accuracy) no other point beats on both, by ascending
    speed — the report's front (one definition), in the TUI's tuple order."""
    front = report_pareto_front([(acc, tps, tid) for tid, tps, acc in points])
    return [(tid, tps, acc) for acc, tps, tid in front]


def budget_used(run: RunRecord, trials: Sequence[TrialRecord]) -> tuple[int, int | None]:
    """Search trials counted against the budget, and the run's total budget (None if unknown).
    As in the stop rules (``haqa.agents.routing.COUNTED_STATUSES``), a repeated proposal pruned
    without running counts too."""
    used = sum(
        1 for t in search_trials(trials) if t.status in ("ok", "failed", "rejected", "pruned")
    )
    budgets = (run.config or {}).get("budgets") or {}
    try:
        total = int(budgets.get("finetune_trials", 0)) + int(budgets.get("deploy_trials", 0))
    except (TypeError, ValueError):
        return used, None
    return used, (total if budgets else None)


def format_elapsed(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def elapsed_at(messages: Sequence[MessageRecord], run: RunRecord) -> float:
    """Seconds from the run's start to the last of these messages (replay's clock)."""
    if not messages:
        return 0.0
    start: datetime = min(run.created_at, messages[0].created_at)
    return (messages[-1].created_at - start).total_seconds()


def status_line(
    run: RunRecord,
    messages: Sequence[MessageRecord],
    trials: Sequence[TrialRecord],
    *,
    elapsed_s: float,
    state: str,
) -> str:
    """The status bar: stage │ budget │ best │ elapsed │ state."""
    used, total = budget_used(run, trials)
    best = best_so_far(run, trials)
    best_text = f"best {best.objective:.4g} (#{best.trial_id})" if best else "best -"
    parts = [
        f"stage {stage_of(messages, run.status)}",
        f"trials {used}/{total}" if total is not None else f"trials {used}",
        best_text,
        format_elapsed(elapsed_s),
        state,
    ]
    return " │ ".join(parts)


def result_headline(run: RunRecord) -> str:
    """One line for the home screen's ``best`` column; a fleet's run (``--targets``) names its
    device kind first, so a fleet's answers read side by side, one row per kind."""
    config = run.config or {}
    kind = f"{config['target']}: " if config.get("fleet") and config.get("target") else ""
    result = run.result or {}
    if not result:
        return f"{kind}-"
    if not result.get("found"):
        return f"{kind}none met the goal"
    cfg = result.get("config") or {}
    tg = result.get("decode_tps")
    speed = f" {tg:.1f} tg/s" if isinstance(tg, int | float) else ""
    return f"{kind}{cfg.get('quant_type', '?')} t{cfg.get('n_threads', '?')}{speed}"


def fold(text: str, *, max_lines: int = 12, max_chars: int = 1200) -> tuple[str, int]:
    """A long text cut for display, and how many lines were left out."""
    lines = text.splitlines() or [""]
    hidden = max(0, len(lines) - max_lines)
    shown = "\n".join(lines[:max_lines])
    if len(shown) > max_chars:
        shown = shown[:max_chars] + "…"
    return shown, hidden


def message_body(message: MessageRecord) -> str:
    """What a conversation entry shows: the content, then any tool arguments or result."""
    parts = [message.content]
    if message.tool_args and message.tool_name not in ("mark", "route"):
        parts.append("args: " + json.dumps(message.tool_args, sort_keys=True, default=str))
    if message.tool_result is not None and message.tool_name != "result":
        parts.append(json.dumps(message.tool_result, indent=1, sort_keys=True, default=str))
    return "\n".join(p for p in parts if p)
