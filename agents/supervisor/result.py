"""The answer of a run: the best feasible deployment, with the evidence and ready command lines."""

from __future__ import annotations

import shlex
from typing import Any

from pydantic import BaseModel, Field

from haqa.agents.runtime import ROLE_INVALID, ROLE_OBSERVATION, RunRuntime
from haqa.agents.search_step import run_trial
from haqa.agents.supervisor.gate import admit
from haqa.agents.supervisor.race import Entrant, spread, winner
from haqa.errors import HaqaError
from haqa.recipes import Weights
from haqa.regression import RegressionReport
from haqa.schemas import DeployConfig, RuntimeSettings
from haqa.stats import (
    compare_paired,
    mean_of_measured,
    resolution_statement,
    wilson_interval,
)
from haqa.store import TrialRecord

#: The quant types llama.cpp users deploy without tuning: the speedup is reported against both.
BASELINE_TYPES = ("F16", "Q4_K_M")


class Baseline(BaseModel):
    quant_type: str
    trial_id: int
    prefill_tps: float | None
    decode_tps: float | None


class RunResult(BaseModel):
    run_id: str
    goal: str
    model_summary: str | None = Field(
        None, description="what the run tuned (a GGUF's requantization is said here)"
    )
    found: bool
    error: str | None = None
    best_trial_id: int | None = None
    config: dict[str, Any] | None = None
    gguf_path: str | None = None
    adapter_path: str | None = None
    base_accuracy: float | None = None
    finetuned_accuracy: float | None = None
    reference_accuracy: float | None = None
    accuracy_validation: float | None = None
    accuracy_test: float | None = None
    prefill_tps: float | None = None
    decode_tps: float | None = Field(
        None, description="mean of the chosen config's two measurements around the baselines"
    )
    search_decode_tps: float | None = Field(None, description="its figure during the search")
    final_trial_ids: list[int] = Field(default_factory=list)
    peak_mem_bytes: int | None = None
    bits_per_weight: float | None = Field(
        None, description="effective bits per weight of the answer's GGUF, from its header"
    )
    fallback_share: float | None = Field(
        None, description="share of its matrix weights that fell back to another type"
    )
    perplexity: float | None = Field(None, description="the answer's perplexity, held-out prose")
    reference_perplexity: float | None = Field(
        None, description="the reference's perplexity over the same prose"
    )
    accuracy_vs_reference: str | None = Field(
        None, description="the answer's paired comparison with the reference (validation)"
    )
    accuracy_resolution: str | None = Field(
        None, description="set when the goal's tolerance is finer than the questions resolve"
    )
    accuracy_interval: tuple[float, float] | None = Field(
        None, description="95% Wilson interval of the validation accuracy"
    )
    accuracy_test_interval: tuple[float, float] | None = Field(
        None, description="95% Wilson interval of the test accuracy"
    )
    decode_spread: float | None = Field(
        None,
        description="relative spread of decode tokens/s: (max - min) / mean of the answer's "
        "final rounds, or its benchmark's relative standard deviation",
    )
    prefill_spread: float | None = Field(None, description="the same for prefill tokens/s")
    roofline_efficiency: float | None = None
    objective: float | None = None
    baselines: list[Baseline] = Field(default_factory=list)
    speedup_decode: dict[str, float] = Field(default_factory=dict)
    speedup_prefill: dict[str, float] = Field(default_factory=dict)
    race_winner: str | None = Field(
        None,
        description="who won the final race: the search's choice, or a llama.cpp default that "
        "met the goal and measured faster side by side",
    )
    llama_server_cmd: str | None = None
    llama_cli_cmd: str | None = None
    quantize_commands: list[str] = Field(
        default_factory=list,
        description="llama.cpp command lines that make the answer's GGUF by hand from its "
        "full-precision file (llama-imatrix, llama-quantize with the recipe's flags)",
    )
    invalid_proposals: int = 0
    rejected_trials: int = 0
    failed_trials: int = 0
    stop_reasons: dict[str, str] = Field(default_factory=dict)
    regression: RegressionReport | None = Field(
        None, description="the regression gate's verdict (--baseline), when one was asked for"
    )

    def headline(self) -> str:
        if not self.found or self.config is None:
            return f"no configuration met the goal: {self.error}"
        speed = ", ".join(
            f"{v:.2f}x vs llama.cpp defaults at {k}" for k, v in self.speedup_decode.items()
        )
        won = (
            f" ({self.race_winner} won the final race)"
            if self.race_winner and self.race_winner != "the search's choice"
            else ""
        )
        return (
            f"best{won}: {_label(self.config)} with {self.config.get('n_threads')} "
            "threads — "
            f"decode {self.decode_tps or 0:.1f} tok/s ({speed or 'no baseline'}), "
            f"accuracy {self.accuracy_validation or 0:.3f} (validation)"
        )


def _label(config: dict[str, Any]) -> str:
    """The answer's weights as a user writes them (Q4_K_M+probed@5.75+imatrix)."""
    try:
        return Weights.of_config(config).label
    except (HaqaError, ValueError):
        return str(config.get("quant_type"))


def llama_defaults(brief: dict[str, Any], max_threads: int | None = None) -> RuntimeSettings:
    """llama.cpp's own defaults: threads = physical cores (``cpu_get_num_math``), batch 2048,
    micro-batch 512, no flash attention (llama-bench's default), f16 KV cache, context 4096.
    ``max_threads``: the cores the run's target may use (a fleet kind's node advertises fewer
    CPUs than the machine it probes has): a default is not given more than the search was."""
    physical = int(brief.get("physical_cores") or brief.get("logical_cores") or 1)
    if max_threads is not None:
        physical = max(1, min(physical, max_threads))
    return RuntimeSettings(n_threads=physical, n_threads_batch=physical)


def commands(gguf: str, cfg: DeployConfig) -> tuple[str, str]:
    """Ready ``llama-server`` / ``llama-cli`` command lines for the chosen deployment."""
    args = [
        "-m",
        gguf,
        "-t",
        str(cfg.n_threads),
        "-tb",
        str(cfg.threads_batch),
        "-c",
        str(cfg.n_ctx),
        "-b",
        str(cfg.n_batch),
        "-ub",
        str(cfg.n_ubatch),
        "-fa",
        "on" if cfg.flash_attn else "off",
        "-ctk",
        cfg.type_k,
        "-ctv",
        cfg.type_v,
        "-ngl",
        str(cfg.n_gpu_layers),
    ]
    if not cfg.use_mmap:
        args.append("--no-mmap")
    if cfg.use_mlock:
        args.append("--mlock")
    return shlex.join(["llama-server", *args]), shlex.join(["llama-cli", *args])


def build_result(rt: RunRuntime) -> RunResult:
    """The run's answer: the best feasible deployment of the search (the choice), then a final
    race measured side by side against llama.cpp's defaults (the measurements), then the test
    accuracy of the winner."""
    ft = rt.last_mark_payload("finetune_done") or {}
    deploy_trials = rt.trials("deploy")
    reference = next((t.metrics.accuracy for t in deploy_trials if t.role == "reference"), None)
    result = _shell(rt, ft, reference)
    views = rt.views("deploy", reference)
    feasible = [v for v in views if v.feasible and v.objective is not None]
    if not feasible:
        measured = [v for v in views if v.status == "ok"]
        why = (
            "no deployment was measured"
            if not measured
            else f"none of {len(measured)} measured deployments kept accuracy within "
            f"{rt.goal.max_accuracy_drop * 100:g} points of "
            + ("its reference" if reference is None else f"{reference:.3f}")
            + (
                f", perplexity within {rt.goal.max_perplexity_increase * 100:g}% of the reference's"
                if rt.goal.max_perplexity_increase is not None
                else ""
            )
            + " and fit the memory budget"
        )
        return result.model_copy(update={"error": why})
    best_view = max(feasible, key=lambda v: v.objective or 0.0)
    best = next(t for t in deploy_trials if t.trial_id == best_view.trial_id)
    race = _race(rt, best, ft.get("adapter"), reference)
    return _answer(rt, result, race, best_view.objective, ft.get("adapter"))


def _shell(rt: RunRuntime, ft: dict[str, Any], reference: float | None) -> RunResult:
    """What the answer says whether or not a configuration met the goal."""
    deploy = rt.last_mark_payload("deploy_done") or {}
    base = next((t for t in rt.trials("finetune") if t.role == "base"), None)
    return RunResult(
        run_id=rt.run_id,
        goal=rt.goal.describe(),
        model_summary=rt.model_summary,
        found=False,
        adapter_path=ft.get("adapter"),
        base_accuracy=base.metrics.accuracy if base else None,
        finetuned_accuracy=ft.get("accuracy"),
        reference_accuracy=reference,
        invalid_proposals=sum(1 for m in rt.messages() if m.role == ROLE_INVALID),
        rejected_trials=sum(1 for t in rt.trials() if t.status == "rejected"),
        failed_trials=sum(1 for t in rt.trials() if t.status == "failed"),
        stop_reasons={
            "finetune": str(ft.get("reason", "")),
            "deploy": str(deploy.get("reason", "")),
        },
    )


class _Race(BaseModel):
    """The final measurements: the chosen configuration before and after the baselines."""

    chosen: TrialRecord
    finals: list[TrialRecord] = Field(default_factory=list)
    baselines: list[tuple[Baseline, TrialRecord]] = Field(default_factory=list)
    winner: Entrant | None = None
    entrants: list[Entrant] = Field(default_factory=list)


def _race(rt: RunRuntime, best: TrialRecord, adapter: str | None, reference: float | None) -> _Race:
    """The chosen configuration is measured again around the baselines (chosen, baselines,
    chosen): speedups are ratios taken side by side, and the mean of the two bracketing
    measurements cancels a drift that is linear over the few seconds between them. The search
    trial's figure was taken earlier, under whatever load the machine had then. A recorded grid
    answers with its recordings: measuring again there adds nothing."""
    cfg = DeployConfig.model_validate(best.search_config)

    def measure_chosen(round_no: int) -> TrialRecord:
        return run_trial(
            rt,
            agent="supervisor",
            stage="deploy",
            tool="benchmark_llamacpp",
            config={"role": "final", "round": round_no, **cfg.model_dump(mode="json")},
            work=lambda: rt.toolbox.deploy(cfg, adapter),
        )

    race = _Race(chosen=best)
    if rt.past_deadline:
        # --time-limit holds for the answer too: past it, nothing more is benchmarked (the race
        # is four benchmarks); the answer is the search's best, not raced against the defaults.
        rt.say(
            "supervisor",
            ROLE_OBSERVATION,
            f"wall-clock limit of {rt.budgets.wall_clock_s:.0f} s reached: the answer is the "
            "search's best, not measured again beside llama.cpp's defaults (no speedup figures)",
        )
        race.entrants = _entrants(rt, race, reference)
        race.winner = race.entrants[0]
        return race
    recorded = rt.toolbox.recorded
    before = None if recorded else measure_chosen(1)
    race.baselines = _measure_baselines(rt, adapter)
    after = None if recorded else measure_chosen(2)
    race.finals = [t for t in (before, after) if t]
    race.entrants = _entrants(rt, race, reference)
    race.winner = winner(race.entrants[0], race.entrants[1:])
    if race.winner is not race.entrants[0]:
        rt.say(
            "supervisor",
            ROLE_OBSERVATION,
            f"final race: {race.winner.name} ({race.winner.objective or 0:.4g}) beat the search's "
            f"choice ({race.entrants[0].objective or 0:.4g}) side by side and meets the goal: "
            "it is the answer",
        )
    return race


def _measure_baselines(rt: RunRuntime, adapter: str | None) -> list[tuple[Baseline, TrialRecord]]:
    """llama.cpp's defaults at each BASELINE_TYPES on the run's own model (the fine-tuned one:
    a default that wins the race is then the answer, and its file must be that model's),
    through the memory gate like any trial."""
    brief = (rt.last_mark_payload("analysed") or {}).get("brief", {})
    threads = (
        rt.deploy_space.knob("n_threads").choices if "n_threads" in rt.deploy_space.names else None
    )
    defaults = llama_defaults(brief, max(int(t) for t in threads) if threads else None)
    out = []
    for quant in BASELINE_TYPES:
        config = {"role": "baseline", "quant_type": quant, **defaults.model_dump()}
        # Baselines pass the memory gate too: a default that does not fit is not run.
        deploy_cfg = DeployConfig(quant_type=quant, **defaults.model_dump())  # type: ignore[arg-type]
        if not admit(rt, agent="supervisor", config=deploy_cfg, raw=config):
            continue
        trial = run_trial(
            rt,
            agent="supervisor",
            stage="deploy",
            tool="benchmark_llamacpp",
            config=config,
            work=lambda q=quant: rt.toolbox.baseline(q, defaults, adapter),  # type: ignore[misc]
        )
        baseline = Baseline(
            quant_type=quant,
            trial_id=trial.trial_id,
            prefill_tps=trial.metrics.prefill_tps,
            decode_tps=trial.metrics.decode_tps,
        )
        out.append((baseline, trial))
    return out


def _measured_with(rt: RunRuntime, quant: str, config: dict[str, Any]) -> TrialRecord | None:
    """The search trial that measured these weights with this K/V cache (its accuracy and
    answers are what any configuration of the same weights and cache would score)."""
    cache = (config.get("type_k", "f16"), config.get("type_v", "f16"))
    # The weights are the type, the recipe and the imatrix: IQ4_NL with and without an
    # importance matrix answer differently (on SmolLM2, 17 points apart).
    weights = Weights.of_config({**config, "quant_type": quant})
    for t in rt.trials("deploy"):
        if not (t.is_search and t.status == "ok") or Weights.of_config(t.config) != weights:
            continue
        if (t.config.get("type_k", "f16"), t.config.get("type_v", "f16")) != cache:
            continue
        if t.metrics.accuracy is not None:
            return t
    return None


def _baseline_accuracy(
    rt: RunRuntime, quant: str, reference: float | None, config: dict[str, Any]
) -> float | None:
    """A default's deployed accuracy, from what the run measured with the same weights and an
    f16 K/V cache: F16 is the reference itself; another type counts only if a trial of the
    search measured it (an unmeasured default cannot be said to meet the goal)."""
    if quant == "F16":
        return reference
    trial = _measured_with(rt, quant, config)
    return trial.metrics.accuracy if trial else None


def _baseline_perplexity(rt: RunRuntime, quant: str, config: dict[str, Any]) -> dict[str, Any]:
    """A default's validation perplexity beside the reference's, from the search trial that
    measured the same weights and cache (nothing for F16, the reference, or when none did)."""
    trial = None if quant == "F16" else _measured_with(rt, quant, config)
    if trial is None:
        return {}
    m = trial.metrics
    return {"perplexity": m.perplexity, "reference_perplexity": m.reference_perplexity}


def _entrants(rt: RunRuntime, race: _Race, reference: float | None) -> list[Entrant]:
    """The chosen configuration first (its figure: the mean of its final rounds), then each
    default with what it measured and whether it meets the goal."""
    ok = [t.metrics for t in race.finals if t.status == "ok" and t.metrics.decode_tps]
    chosen_metrics = race.chosen.metrics
    if ok:
        chosen_metrics = chosen_metrics.model_copy(
            update={
                "decode_tps": mean_of_measured([m.decode_tps for m in ok]),
                "prefill_tps": mean_of_measured([m.prefill_tps for m in ok]),
            }
        )
    out = [
        Entrant(
            name="the search's choice",
            config=race.chosen.search_config,
            objective=rt.goal.objective(chosen_metrics),
            rsd=spread([m.decode_tps for m in ok]),
            meets_goal=True,
            trial_ids=[t.trial_id for t in race.finals],
        )
    ]
    for baseline, trial in race.baselines:
        if trial.status != "ok":
            continue
        config = trial.search_config
        accuracy = _baseline_accuracy(rt, baseline.quant_type, reference, config)
        metrics = trial.metrics.model_copy(
            update={"accuracy": accuracy, **_baseline_perplexity(rt, baseline.quant_type, config)}
        )
        # Under a perplexity floor a default counts only where its weights' perplexity was
        # measured (F16 is the reference itself): an unmeasured one cannot be said to keep it.
        ppl_known = (
            rt.goal.max_perplexity_increase is None
            or baseline.quant_type == "F16"
            or metrics.perplexity is not None
        )
        out.append(
            Entrant(
                name=f"llama.cpp's defaults at {baseline.quant_type}",
                config=config,
                objective=rt.goal.objective(trial.metrics),
                rsd=trial.metrics.decode_rsd or 0.0,
                meets_goal=accuracy is not None
                and ppl_known
                and rt.goal.feasible(metrics, reference),
                trial_ids=[trial.trial_id],
                default=True,
            )
        )
    return out


def _validation_answers(rt: RunRuntime, cfg: DeployConfig, config: dict[str, Any]) -> str | None:
    """The answer's validation answers, question by question (the reference's for F16 with an
    f16 cache, else those of the search trial that measured its weights and cache)."""
    ref = next((t.metrics.correct for t in rt.trials("deploy") if t.role == "reference"), None)
    if cfg.quant_type == "F16" and (cfg.type_k, cfg.type_v) == ("f16", "f16"):
        return ref
    trial = _measured_with(rt, cfg.quant_type, config)
    return trial.metrics.correct if trial else None


def _disagreement(rt: RunRuntime, ref: str) -> float:
    """The largest share of questions on which a measured deployment answered otherwise than
    the reference: what the paired comparisons of this run actually face (10% when none)."""
    shares = [
        sum(a != b for a, b in zip(ref, t.metrics.correct, strict=True)) / len(ref)
        for t in rt.trials("deploy")
        if t.is_search and t.metrics.correct and len(t.metrics.correct) == len(ref)
    ]
    return max(shares) if shares and max(shares) > 0 else 0.1


def _paired(rt: RunRuntime, cfg: DeployConfig, config: dict[str, Any]) -> dict[str, Any]:
    """The answer's validation answers against the reference's, question by question, the
    accuracy's 95% interval, and the plain statement when the goal's tolerance is finer than
    those questions resolve (at the disagreement this run measured)."""
    ref = next((t.metrics.correct for t in rt.trials("deploy") if t.role == "reference"), None)
    mine = _validation_answers(rt, cfg, config)
    out: dict[str, Any] = {}
    if mine:
        out["accuracy_interval"] = wilson_interval(mine.count("1"), len(mine))
    if not ref or not mine or len(ref) != len(mine):
        return out
    return {
        **out,
        "accuracy_vs_reference": compare_paired(ref, mine).summary(),
        "accuracy_resolution": resolution_statement(
            len(ref), rt.goal.max_accuracy_drop, _disagreement(rt, ref)
        ),
    }


def _spreads(race: _Race, winning_trial: TrialRecord, chosen: bool) -> dict[str, float | None]:
    """How far the winner's speed figures moved: the relative spread of the search's choice's
    final rounds, or the benchmark's own relative standard deviation (one round, a default)."""
    finals = [t.metrics for t in race.finals if t.status == "ok" and t.metrics.decode_tps]
    m = winning_trial.metrics
    if chosen and len(finals) >= 2:
        return {
            "decode_spread": spread([f.decode_tps for f in finals]),
            "prefill_spread": spread([f.prefill_tps for f in finals]),
        }
    return {"decode_spread": m.decode_rsd, "prefill_spread": m.prefill_rsd}


def _answer(
    rt: RunRuntime,
    result: RunResult,
    race: _Race,
    search_objective: float | None,
    adapter: str | None,
) -> RunResult:
    """The winner of the race, its test accuracy, speedups and command lines."""
    won = race.winner or race.entrants[0]
    chosen = won is race.entrants[0]
    winning_trial = _winning_trial(race, won, chosen)
    cfg = DeployConfig.model_validate(won.config)
    decode, prefill = _winner_speeds(race, winning_trial, chosen)
    test_trial = _final_test(rt, cfg, adapter)
    m = race.chosen.metrics
    gguf = winning_trial.metrics.gguf or m.gguf or f"model-{cfg.quant_type}.gguf"
    server, cli = commands(gguf, cfg)
    baselines = [b for b, _ in race.baselines]
    accuracy = (
        m.accuracy
        if chosen
        else _baseline_accuracy(rt, cfg.quant_type, result.reference_accuracy, won.config)
    )
    return result.model_copy(
        update={
            "found": True,
            "best_trial_id": winning_trial.trial_id,
            "config": cfg.model_dump(mode="json"),
            "gguf_path": gguf,
            "accuracy_validation": accuracy,
            "accuracy_test": test_trial.metrics.accuracy,
            "prefill_tps": prefill,
            "decode_tps": decode,
            "search_decode_tps": winning_trial.metrics.decode_tps,
            "final_trial_ids": won.trial_ids,
            "peak_mem_bytes": winning_trial.metrics.peak_mem_bytes,
            "bits_per_weight": winning_trial.metrics.bits_per_weight,
            "fallback_share": winning_trial.metrics.fallback_share,
            "perplexity": test_trial.metrics.perplexity,
            "reference_perplexity": test_trial.metrics.reference_perplexity,
            **_paired(rt, cfg, won.config),
            **_spreads(race, winning_trial, chosen),
            "accuracy_test_interval": _interval(test_trial.metrics.correct),
            "roofline_efficiency": winning_trial.metrics.roofline_efficiency,
            "objective": search_objective if chosen else won.objective,
            "baselines": baselines,
            "race_winner": won.name,
            **_speedups(baselines, decode, prefill),
            "llama_server_cmd": server,
            "llama_cli_cmd": cli,
            "quantize_commands": winning_trial.metrics.quantize_commands or [],
        }
    )


def _interval(correct: str | None) -> tuple[float, float] | None:
    return wilson_interval(correct.count("1"), len(correct)) if correct else None


def _winning_trial(race: _Race, won: Entrant, chosen: bool) -> TrialRecord:
    """The trial behind the race's winner: the search's choice, or the baseline it ran."""
    if chosen:
        return race.chosen
    return next(t for _, t in race.baselines if t.trial_id in won.trial_ids)


def _winner_speeds(
    race: _Race, winning_trial: TrialRecord, chosen: bool
) -> tuple[float | None, float | None]:
    """The winner's decode and prefill speeds: for the search's choice the mean of its final
    rounds (its search figure where none measured), for a baseline what its trial measured."""
    if not chosen:
        return winning_trial.metrics.decode_tps, winning_trial.metrics.prefill_tps
    finals = [t.metrics for t in race.finals if t.status == "ok" and t.metrics.decode_tps]
    m = race.chosen.metrics
    decode = mean_of_measured([f.decode_tps for f in finals]) or m.decode_tps
    prefill = mean_of_measured([f.prefill_tps for f in finals]) or m.prefill_tps
    return decode, prefill


def _final_test(rt: RunRuntime, cfg: DeployConfig, adapter: str | None) -> TrialRecord:
    """The winner's accuracy on the test split, recorded as the run's ``test`` trial; its
    configuration names the whole weights (a recipe and an importance matrix where the answer
    has them), so the stored row says which file was scored."""
    weights: dict[str, str | bool | float] = (
        {"recipe": cfg.recipe} if cfg.recipe != "uniform" else {}
    )
    if cfg.target_bpw is not None:
        weights["target_bpw"] = cfg.target_bpw
    if cfg.imatrix:
        weights["imatrix"] = True
    return run_trial(
        rt,
        agent="supervisor",
        stage="deploy",
        tool="evaluate",
        config={
            "role": "test",
            "quant_type": cfg.quant_type,
            **weights,
            "type_k": cfg.type_k,
            "type_v": cfg.type_v,
            "adapter": adapter,
        },
        work=lambda: rt.toolbox.final_test(cfg, adapter),
    )


def _speedups(
    baselines: list[Baseline], decode: float | None, prefill: float | None
) -> dict[str, dict[str, float]]:
    """The winner's decode and prefill speed over each baseline's, where both were measured."""
    return {
        "speedup_decode": {
            b.quant_type: decode / b.decode_tps for b in baselines if decode and b.decode_tps
        },
        "speedup_prefill": {
            b.quant_type: prefill / b.prefill_tps for b in baselines if prefill and b.prefill_tps
        },
    }
