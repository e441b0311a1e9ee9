"""The Markdown report of a run, with its plots, built only from what the store holds.

Every number in it is read from the stored run result and trials, so the report cannot disagree
with the store (a test checks it).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from haqa.errors import HaqaError
from haqa.recipes import Weights
from haqa.store import RunRecord, Store, TrialRecord, search_trials
from haqa.units import format_bytes


def _fmt(x: float | None, spec: str = ".1f") -> str:
    return "-" if x is None else format(x, spec)


def pareto_front(
    points: Sequence[tuple[float, float, int]],
) -> list[tuple[float, float, int]]:
    """Points (accuracy, decode tok/s, trial) not dominated in both, sorted by speed."""
    front = []
    for acc, tps, tid in points:
        dominated = any(a >= acc and s >= tps and (a, s) != (acc, tps) for a, s, _ in points)
        if not dominated:
            front.append((acc, tps, tid))
    return sorted(front, key=lambda p: p[1])


def _plots(run: RunRecord, trials: list[TrialRecord], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    deploy = [t for t in search_trials(trials, "deploy") if t.status == "ok"]
    points = [
        (t.metrics.accuracy, t.metrics.decode_tps, t.trial_id)
        for t in deploy
        if t.metrics.accuracy is not None and t.metrics.decode_tps is not None
    ]
    if points:
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.scatter([p[1] for p in points], [p[0] for p in points], label="trials", alpha=0.7)
        front = pareto_front(points)  # type: ignore[arg-type]
        ax.plot([p[1] for p in front], [p[0] for p in front], "r-o", label="Pareto front")
        for acc, tps, tid in points:
            ax.annotate(str(tid), (tps, acc), fontsize=7)  # type: ignore[arg-type]
        ax.set_xlabel("decode tokens/s")
        ax.set_ylabel("deployed accuracy")
        ax.set_title("accuracy vs decode speed")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "pareto.png", dpi=100)
        plt.close(fig)
        files.append("pareto.png")
    goal = run.goal or {}
    metric = goal.get("metric", "decode")
    values = []
    for t in search_trials(trials, "deploy"):
        m = t.metrics
        v = {"decode": m.decode_tps, "prefill": m.prefill_tps}.get(metric, m.decode_tps)
        values.append((t.trial_id, v if t.status == "ok" else None))
    if values:
        best, curve = None, []
        for tid, v in values:
            if v is not None and (best is None or v > best):
                best = v
            curve.append((tid, best))
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.step([c[0] for c in curve], [c[1] or 0 for c in curve], where="post")
        ax.set_xlabel("trial")
        ax.set_ylabel(f"best {metric} tokens/s so far")
        ax.set_title("best so far")
        fig.tight_layout()
        fig.savefig(out / "best_so_far.png", dpi=100)
        plt.close(fig)
        files.append("best_so_far.png")
    return files


def _trials_table(trials: list[TrialRecord]) -> list[str]:
    lines = [
        "| # | stage | tool | config | status | acc | bits/weight | pp t/s | tg t/s | peak mem "
        "| reason |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for t in trials:
        cfg = ", ".join(f"{k}={v}" for k, v in t.config.items() if not isinstance(v, dict | list))
        m = t.metrics
        lines.append(
            f"| {t.trial_id} | {t.stage} | {t.tool} | {cfg} | {t.status} | "
            f"{_fmt(m.accuracy, '.3f')} | {_bits(m.bits_per_weight, m.fallback_share)} | "
            f"{_fmt(m.prefill_tps)} | {_fmt(m.decode_tps)} | "
            f"{format_bytes(m.peak_mem_bytes)} | {(t.error or '').replace('|', '/')} |"
        )
    return lines


def _bits(bits: float | None, fallback: float | None) -> str:
    if bits is None:
        return "-"
    return f"{bits:.2f}" + (f" ({fallback:.0%} fell back)" if fallback else "")


def _stability(run: RunRecord, trials: list[TrialRecord]) -> list[str]:
    """How steady the speed measurements were: each benchmark's spread, the anchor checks, and
    the trials measured again after a drift."""
    policy = (run.config or {}).get("measurement") or {}
    benched = [t for t in trials if t.stage == "deploy" and t.metrics.decode_tps is not None]
    if not benched:
        return []
    rsds = sorted(t.metrics.decode_rsd for t in benched if t.metrics.decode_rsd is not None)
    lines = ["## Measurement stability", ""]
    if rsds:
        lines.append(_spread_line(rsds, policy))
    anchors = [t for t in trials if t.role == "anchor"]
    if not anchors:
        lines += ["- anchor checks: none in this run", ""]
        return lines
    lines += [
        "",
        "| anchor check | of trial | decode t/s | drift | outcome |",
        "|---|---|---|---|---|",
    ]
    for t in anchors:
        check = t.metrics
        anchor_of = "-" if check.anchor_of is None else check.anchor_of
        lines.append(
            f"| {t.trial_id} | {anchor_of} | {_fmt(check.decode_tps)} | "
            f"{'-' if check.drift is None else format(check.drift, '+.1%')} | "
            f"{_anchor_outcome(t)} |"
        )
    return [*lines, *_remeasured_lines(trials), ""]


def _spread_line(rsds: list[float], policy: dict[str, Any]) -> str:
    """The median and largest decode spread of the benchmarks (``rsds`` sorted), and how many
    missed the policy's target spread where it has one."""
    target = policy.get("target_rsd")
    over = [r for r in rsds if target is not None and r > target]
    return (
        f"- decode tokens/s spread (stddev ÷ mean) over {len(rsds)} benchmarks: median "
        f"{100 * rsds[len(rsds) // 2]:.1f}%, max {100 * rsds[-1]:.1f}%"
        + (
            f"; target {100 * target:g}% (repeats until met, at most "
            f"{policy.get('max_repetitions')}), missed by {len(over)}"
            if target is not None
            else ""
        )
    )


def _anchor_outcome(t: TrialRecord) -> str:
    """What an anchor check found: failure, a lasting change, a drift, or steady."""
    check = t.metrics
    if t.status != "ok":
        return f"failed: {t.error}"
    if check.level_changed:
        return "lasting change: new level; marked " + _ids(check.marked)
    if check.drifted:
        return "drift: re-tried"
    if check.marked:
        return "steady again; marked " + _ids(check.marked)
    return "steady"


def _remeasured_lines(trials: list[TrialRecord]) -> list[str]:
    """The trials measured again after a drift, each with its old and new decode speed."""
    again = [(t.remeasure_of, t) for t in trials if t.remeasure_of is not None]
    if not again:
        return []
    by_id = {t.trial_id: t for t in trials}
    lines = ["", "Measured again after drift (the new measurement replaces the old):", ""]
    for old_id, t in again:
        old = by_id.get(old_id)
        before = old.metrics.decode_tps if old else None
        lines.append(
            f"- trial {old_id} → trial {t.trial_id}: decode "
            f"{_fmt(before)} → {_fmt(t.metrics.decode_tps)} tok/s"
        )
    return lines


def _finals_note(result: dict[str, Any]) -> str:
    if not result.get("final_trial_ids"):
        return ""
    return (
        f" (measured before and after the baselines, trials {_ids(result['final_trial_ids'])}; "
        f"{_fmt(result.get('search_decode_tps'))} during the search)"
    )


def _ids(ids: Any) -> str:
    return ", ".join(str(i) for i in ids or []) or "none"


def _quality_lines(result: dict[str, Any]) -> list[str]:
    """The answer's weights and what they cost: effective bits, the paired comparison with the
    reference, the resolution note, and perplexity beside the reference's."""
    lines = []
    if result.get("bits_per_weight"):
        fell = result.get("fallback_share") or 0.0
        lines.append(
            f"- effective bits per weight: {result['bits_per_weight']:.2f}"
            + (f" ({fell:.0%} of the matrix weights fell back to another type)" if fell else "")
        )
    if result.get("accuracy_vs_reference"):
        lines.append(f"- paired with the reference (validation): {result['accuracy_vs_reference']}")
    if result.get("accuracy_resolution"):
        lines.append(f"- note: {result['accuracy_resolution']}")
    ppl, ref = result.get("perplexity"), result.get("reference_perplexity")
    if ppl and ref:
        lines.append(
            f"- perplexity on held-out prose: {ppl:.2f} (reference {ref:.2f}, {ppl / ref:.3f}x)"
        )
    return lines


def render(run: RunRecord, trials: list[TrialRecord], plots: list[str]) -> str:
    result: dict[str, Any] = run.result or {}
    brief = (run.hardware or {}).get("brief", {})
    lines = [f"# haqa run {run.run_id}", ""]
    lines += [
        f"- model: `{run.model}`"
        + (f": {result['model_summary']}" if result.get("model_summary") else ""),
        f"- brain: {run.brain}",
        f"- goal: {result.get('goal', run.goal)}",
        f"- status: {run.status}",
        "",
        "## Answer",
        "",
    ]
    if result.get("found"):
        lines += _answer_lines(result)
    else:
        lines.append(f"No configuration met the goal: {result.get('error', 'run did not finish')}")
    lines += ["", "## Hardware brief", "", str(brief.get("text", "(none)")), ""]
    lines += _stability(run, trials)
    lines += ["## Trials", "", *_trials_table(trials), ""]
    rejected = [t for t in trials if t.status in ("rejected", "failed")]
    lines += [
        "## Rejected and failed",
        "",
        f"- invalid proposals: {result.get('invalid_proposals', 0)}",
        *[f"- trial {t.trial_id} {t.status}: {t.error}" for t in rejected],
        "",
    ]
    if plots:
        lines += ["## Plots", "", *[f"![{p}]({p})" for p in plots], ""]
    return "\n".join(lines)


def _answer_lines(result: dict[str, Any]) -> list[str]:
    """The answer of a run that found one: its configuration, accuracy, speed, the speedups over
    llama.cpp's defaults and the ready command lines."""
    cfg = result.get("config") or {}
    return [
        "```json",
        json.dumps(cfg, indent=2, sort_keys=True),
        "```",
        "",
        f"- deployed accuracy: {_fmt(result.get('accuracy_validation'), '.3f')} (validation), "
        f"{_fmt(result.get('accuracy_test'), '.3f')} (test); reference "
        f"{_fmt(result.get('reference_accuracy'), '.3f')}, base model "
        f"{_fmt(result.get('base_accuracy'), '.3f')}, fine-tuned "
        f"{_fmt(result.get('finetuned_accuracy'), '.3f')}",
        *_quality_lines(result),
        f"- prefill {_fmt(result.get('prefill_tps'))} tok/s, decode "
        f"{_fmt(result.get('decode_tps'))} tok/s{_finals_note(result)}, peak memory "
        f"{format_bytes(result.get('peak_mem_bytes'))}",
        f"- roofline efficiency (decode bytes/s ÷ measured bandwidth): "
        f"{_fmt(result.get('roofline_efficiency'), '.2f')}",
        *_gate_lines(result),
        "",
        *_speedup_table(result),
        "",
        *_made_lines(result),
        "```sh",
        str(result.get("llama_server_cmd")),
        str(result.get("llama_cli_cmd")),
        "```",
    ]


def _made_lines(result: dict[str, Any]) -> list[str]:
    """How the answer's GGUF is made by hand with llama.cpp's own tools (a mixed recipe or an
    importance matrix cannot be read off the type's name)."""
    made = result.get("quantize_commands") or []
    if not made:
        return []
    return ["To make the GGUF with llama.cpp's own tools:", "", "```sh", *made, "```", ""]


def _gate_lines(result: dict[str, Any]) -> list[str]:
    """The regression gate's verdict, when the run had a baseline."""
    if not result.get("regression"):
        return []
    from haqa.regression import RegressionReport

    return [f"- {RegressionReport.model_validate(result['regression']).reason()}"]


def _speedup_table(result: dict[str, Any]) -> list[str]:
    """The answer's decode and prefill speedup over each llama.cpp default it was raced with,
    or why there is none (every default over the memory budget: the gate rejects them)."""
    if not result.get("baselines"):
        return [
            "No llama.cpp default was raced with the answer: none was measured (with a memory "
            "budget, the gate rejects each default that is predicted over it)."
        ]
    lines = [
        "Speedup vs llama.cpp defaults on the same model (measured side by side):",
        "",
        "| baseline | decode | prefill |",
        "|---|---|---|",
    ]
    for b in result.get("baselines", []):
        q = b["quant_type"]
        lines.append(
            f"| {q} (trial {b['trial_id']}) | "
            f"{_fmt(result.get('speedup_decode', {}).get(q), '.2f')}x | "
            f"{_fmt(result.get('speedup_prefill', {}).get(q), '.2f')}x |"
        )
    return lines


def write_report(store: Store, run_id: str, out_dir: Path) -> Path:
    """Write ``report.md``, ``result.json`` and the plots into ``out_dir``."""
    run = store.get_run(run_id)
    trials = store.list_trials(run_id)
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = _plots(run, trials, out_dir)
    path = out_dir / "report.md"
    text = render(run, trials, plots)
    fleet = fleet_id_of(run)
    if fleet is not None:  # one device kind of a fleet: its siblings' answers beside its own
        text += "\n" + "\n".join(_fleet_section(store, fleet)) + "\n"
    path.write_text(text, encoding="utf-8")
    (out_dir / "result.json").write_text(
        json.dumps(run.result or {}, indent=2, sort_keys=True, default=str), encoding="utf-8"
    )
    return path


# -- fleets (haqa run --targets) -------------------------------------------------------------


def fleet_id_of(run: RunRecord) -> str | None:
    """The fleet a run is one device kind of (its config's ``fleet``), if any."""
    fleet = (run.config or {}).get("fleet") or {}
    return str(fleet["fleet_id"]) if fleet.get("fleet_id") else None


def run_kind(run: RunRecord) -> str | None:
    """The device kind a cluster run tuned for (its config's ``target``)."""
    target = (run.config or {}).get("target")
    return str(target) if target else None


def fleet_kinds(store: Store, fleet_id: str) -> list[str]:
    """A fleet's device kinds, in the order their deploy stages run."""
    runs = store.fleet_runs(fleet_id)
    fleet = ((runs[0].config or {}).get("fleet") or {}) if runs else {}
    return [str(k) for k in fleet.get("kinds") or []]


def answer_words(result: dict[str, Any]) -> str:
    """A run's answer in a few words (its type and threads), or why there is none."""
    if not result:
        return "-"
    if not result.get("found"):
        return "none met the goal"
    cfg = result.get("config") or {}
    try:
        weights = Weights.of_config(cfg).label
    except (HaqaError, ValueError):  # a row of a version that knew other recipes
        weights = f"{cfg.get('quant_type', '?')}+{cfg.get('recipe', '?')}"
    return f"{weights} n_threads={cfg.get('n_threads', '?')}"


def fleet_table(runs: Sequence[RunRecord], kinds: Sequence[str]) -> list[str]:
    """A fleet's answers side by side, one row per device kind (Markdown)."""
    by_kind = {run_kind(r): r for r in runs}
    lines = [
        "| device kind | run | status | answer | decode tok/s | prefill tok/s | accuracy "
        "(validation) | decode speedup vs defaults |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for kind in kinds:
        run = by_kind.get(kind)
        if run is None:
            lines.append(f"| {kind} | - | not started | - | - | - | - | - |")
            continue
        result: dict[str, Any] = run.result or {}
        speedups = result.get("speedup_decode") or {}
        lines.append(
            f"| {kind} | {run.run_id} | {run.status} | {answer_words(result)} | "
            f"{_fmt(result.get('decode_tps'))} | {_fmt(result.get('prefill_tps'))} | "
            f"{_fmt(result.get('accuracy_validation'), '.3f')} | "
            + (", ".join(f"{q} {_fmt(v, '.2f')}x" for q, v in speedups.items()) or "-")
            + " |"
        )
    return lines


def _fleet_section(store: Store, fleet_id: str) -> list[str]:
    return [
        f"## Fleet {fleet_id}",
        "",
        "One fine-tune stage, then a deploy stage and an answer per device kind:",
        "",
        *fleet_table(store.fleet_runs(fleet_id), fleet_kinds(store, fleet_id)),
    ]


def write_fleet_report(store: Store, fleet_id: str, out_dir: Path) -> Path:
    """Write a fleet's ``report.md`` into ``out_dir``: its answers side by side, with links to
    each kind's own report (``out_dir/KIND/report.md``, where ``haqa run`` writes them)."""
    runs = store.fleet_runs(fleet_id)
    kinds = fleet_kinds(store, fleet_id)
    first = runs[0] if runs else None
    lines = [f"# haqa fleet {fleet_id}", ""]
    if first is not None:
        lines += [f"- model: `{first.model}`", f"- brain: {first.brain}"]
        lines += [f"- goal: {(first.result or {}).get('goal', first.goal)}"]
    shared = f" (run {first.run_id})" if first is not None else ""
    lines += [
        f"- device kinds: {', '.join(kinds)}",
        f"- fine-tune stage: once, in the first kind's run{shared}; every later kind's run "
        "takes it as its own",
        "",
        "## Answers",
        "",
        *fleet_table(runs, kinds),
        "",
    ]
    written = [f"[{k}]({k}/report.md)" for k in kinds if (out_dir / k / "report.md").is_file()]
    if written:
        lines += [f"Each kind's own report: {', '.join(written)}", ""]
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
