"""Starting, resuming and re-running a run: config → runtime → graph → result.

Resume reads everything from the store: the stage marks say where the run was, the stored trials
are the history, and a trial whose configuration this run already finished is reused, never run
again. The trial that was in flight when the run died is simply proposed and run again.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any, NamedTuple

from haqa.agents.brains import make_brain
from haqa.agents.runtime import ROLE_SUPERVISOR, EventSink, RunControl, RunRuntime
from haqa.agents.supervisor.result import RunResult
from haqa.errors import HaqaError
from haqa.goal import Goal
from haqa.graph.build import build_graph
from haqa.graph.config import Fleet, RunConfig
from haqa.modelref import resolve_model
from haqa.recipes import PROBED, RECIPE_NAMES
from haqa.regression import GateSpec
from haqa.space import SearchSpace, deploy_space, finetune_space
from haqa.store import RunRecord, Store, TrialResult, new_run_id
from haqa.trials.cluster import OnCluster
from haqa.trials.registry import reap_strays, registry_dir
from haqa.trials.toolbox import LiveToolbox, Toolbox, ToolboxSettings


def _task_files(
    cfg: RunConfig, model_spec: str, *, fine_tunes: bool
) -> tuple[list[Path], list[Path], list[Path]]:
    """The run's task files: the user's, else the zoo model's own, else (a user's model given
    no tasks) the bundled general-knowledge tasks of ``zoo:smollm2-135m`` — English multiple
    choice that any instruct model can be scored on. A run that does not fine-tune (a GGUF, or
    --finetune-trials 0) needs no train files."""
    from haqa.tasks import load_jsonl

    if cfg.train or cfg.validation or cfg.test:
        needed = (cfg.train, cfg.validation, cfg.test) if fine_tunes else (cfg.validation, cfg.test)
        if not all(needed):
            flags = "--train, --validation and --test" if fine_tunes else "--validation and --test"
            raise HaqaError(f"pass {flags} task files together")
        split = [[Path(p) for p in files or []] for files in (cfg.train, cfg.validation, cfg.test)]
        for files in split:
            for f in files:
                load_jsonl(f, limit=1)  # a clear error for a missing or malformed file, now
        return split[0], split[1], split[2]
    from haqa import zoo

    name = model_spec[len("zoo:") :] if model_spec.startswith("zoo:") else zoo.SMOLLM2
    if name not in ("tiny", zoo.SMOLLM2):
        name = zoo.SMOLLM2  # a speed-only zoo shape has no tasks of its own
    return tuple(zoo.task_files(name, s) for s in ("train", "validation", "test"))  # type: ignore[return-value]


def _eval_text(cfg: RunConfig) -> Path | None:
    """The prose the answer's perplexity is measured on: the user's file, else the bundled
    held-out prose (the tiny zoo model, trained on a toy language, is not scored on English)."""
    if cfg.perplexity_windows == 0 or cfg.model == "zoo:tiny":
        return None
    if cfg.eval_text:
        path = Path(cfg.eval_text)
        if not path.is_file():
            raise HaqaError(f"--eval-text {path}: no such file")
    else:
        from haqa import zoo

        path = zoo.text_file(zoo.SMOLLM2, "eval")
    if cfg.max_perplexity_increase is not None:
        # A perplexity floor scores two disjoint parts: the answer's windows and, after them,
        # the validation windows. A token spans at least one byte, so a text with fewer bytes
        # than both parts' tokens is surely too short (a borderline one fails in the trial).
        needed = 2 * cfg.perplexity_windows * 512
        if path.stat().st_size < needed:
            raise HaqaError(
                f"the held-out prose {path.name} has {path.stat().st_size} bytes: a perplexity "
                f"floor needs 2 x {cfg.perplexity_windows} windows of 512 tokens; give a longer "
                "text or fewer --perplexity-windows"
            )
    return path


def _calibration_text(cfg: RunConfig) -> Path | None:
    """The user's calibration text for importance matrices (None: the training split's)."""
    if not cfg.calibration_text:
        return None
    path = Path(cfg.calibration_text)
    if not path.is_file():
        raise HaqaError(f"--calibration-text {path}: no such file")
    return path


def prepare(cfg: RunConfig) -> tuple[Goal, ToolboxSettings, str]:
    """Validate everything a run needs before anything is stored; build zoo models if needed."""
    goal = cfg.parsed_goal()  # the brain was checked when the config was built
    model = resolve_model(cfg.model)
    if model.kind == "gguf":
        from haqa.tools.export_gguf import check_gguf
        from haqa.tools.llama_session import check_loadable

        check_gguf(model.path)  # a truncated file: one line, before anything is stored
        check_loadable(model.path)
    if model.kind == "gguf" and cfg.budgets.finetune_trials:
        raise HaqaError(
            f"{cfg.model} is a GGUF file: it is tuned for deployment only, so pass "
            "--finetune-trials 0 (fine-tuning needs a Hugging Face folder)"
        )
    speed = resolve_model(cfg.speed_model).path if cfg.speed_model else None
    train, validation, test = _task_files(
        cfg, cfg.model, fine_tunes=cfg.budgets.finetune_trials > 0
    )
    settings = ToolboxSettings(
        model=model.path,
        speed_model=speed,
        train_files=train,
        validation_files=validation,
        test_files=test,
        eval_limit=cfg.eval_limit,
        n_prompt=cfg.n_prompt,
        n_gen=cfg.n_gen,
        repetitions=cfg.repetitions,
        target_rsd=cfg.measurement.target_rsd,
        max_repetitions=cfg.measurement.max_repetitions,
        quick_analysis=cfg.quick_analysis,
        eval_text=_eval_text(cfg),
        perplexity_windows=cfg.perplexity_windows,
        perplexity_floor=cfg.max_perplexity_increase is not None,
        calibration_text=_calibration_text(cfg),
    )
    summary = f"{cfg.model}" + (f" (speed measured on {cfg.speed_model})" if speed else "")
    if model.kind == "gguf":
        from haqa.tools.export_gguf import quantized_source_type

        source = quantized_source_type(model.path)
        summary += (
            f" (a {source} GGUF: deployment tuning only; every type is requantized from its "
            f"{source} weights, so it carries both roundings; the reference is those weights "
            "dequantized to F16)"
            if source
            else " (a GGUF: deployment tuning only)"
        )
    return goal, settings, summary


def default_toolbox(
    cfg: RunConfig, settings: ToolboxSettings, store_path: Path | None = None
) -> Toolbox:
    """Trials in child processes (timeout, memory limit) unless isolation is turned off; with the
    store's path, the trials are recorded in its registry, so a resume kills what a killed run
    left running before it measures anything."""
    if not cfg.isolate_trials and not cfg.cluster:
        return LiveToolbox(settings)
    from haqa.trials.isolation import IsolatedToolbox
    from haqa.units import parse_bytes

    limit = (
        parse_bytes(cfg.trial_memory_limit, what="trial memory limit")
        if cfg.trial_memory_limit
        else None
    )
    if cfg.cluster:  # Ray tasks, each isolated on its node as it would be here
        cluster: Toolbox = _ray_backend().live_cluster_toolbox(
            cfg.cluster, cfg.target, settings, timeout_s=cfg.trial_timeout_s, memory_limit=limit
        )
        return cluster
    return IsolatedToolbox(
        settings,
        timeout_s=cfg.trial_timeout_s,
        memory_limit_bytes=limit,
        store_path=store_path,
    )


def _ray_backend() -> Any:
    """The cluster backend (it imports Ray), or a one-line error naming what to install."""
    try:
        from haqa.trials import ray_backend
    except ImportError as exc:
        raise HaqaError(f"--cluster needs Ray ({exc}): pip install 'haqa[cluster]'") from exc
    return ray_backend


def _runtime(
    store: Store,
    run_id: str,
    cfg: RunConfig,
    goal: Goal,
    toolbox: Toolbox,
    summary: str,
    on_event: EventSink | None,
    control: RunControl | None,
    space: SearchSpace,
) -> RunRuntime:
    brain = make_brain(cfg, store)
    return RunRuntime(
        store=store,
        run_id=run_id,
        goal=goal,
        brain=brain,
        toolbox=toolbox,
        budgets=cfg.budgets,
        finetune_space=finetune_space(cfg.finetune.model_dump()),
        deploy_space=space,
        finetune_defaults=cfg.finetune.model_dump(mode="json"),
        model_summary=summary,
        on_event=on_event,
        control=control or RunControl(),
        seed=cfg.seed,
        gate=_gate(cfg),
        # A recorded grid answers with its recorded measurements: there is no drift to watch.
        measurement=cfg.measurement.model_copy(update={"anchor_every": 0})
        if cfg.tabular
        else cfg.measurement,
    )


def _gate(cfg: RunConfig) -> GateSpec | None:
    limits = cfg.regression_limits()
    if cfg.baseline is None or limits is None:
        return None
    return GateSpec(requested=cfg.baseline, baseline_run=cfg.baseline_run, limits=limits)


def start_run(
    store: Store,
    cfg: RunConfig,
    *,
    toolbox: Toolbox | None = None,
    on_event: EventSink | None = None,
    control: RunControl | None = None,
    run_id: str | None = None,
    share_finetune: str | None = None,
) -> tuple[str, RunResult | None]:
    """Start a run and drive it to its end; ``share_finetune`` (a fleet's later device kinds):
    the run whose fine-tune stage this one takes as its own instead of fine-tuning again."""
    goal, toolbox, space, summary = _setup(store, cfg, toolbox)
    try:  # a cluster joined (or started: `local`) by _setup is left on any error before the run
        make_brain(cfg, store)  # an unknown replay run or a missing LLM setting fails first
        if cfg.baseline is not None or cfg.max_regression is not None:
            from haqa.graph.baseline import resolve_baseline

            target = _cluster_target(toolbox)  # a cluster's runs compare on its target's kind
            cfg = resolve_baseline(store, cfg, target[0] if target else machine_fingerprint())
        record = store.create_run(
            model=cfg.model,
            brain=cfg.brain,
            goal=goal.model_dump(mode="json"),
            config=cfg.model_dump(mode="json"),
            run_id=run_id,
        )
        rt = _runtime(store, record.run_id, cfg, goal, toolbox, summary, on_event, control, space)
    except BaseException:
        _close(toolbox)
        raise
    rt.say(
        "supervisor",
        ROLE_SUPERVISOR,
        f"run {record.run_id}: {goal.describe()}; brain {rt.brain.name} ({rt.brain.kind})",
    )
    # The model on a line of its own, its requantization note first (a path can be long).
    note = summary[len(cfg.model) :].strip(" ()")
    rt.say("supervisor", ROLE_SUPERVISOR, f"model: {note + ': ' if note else ''}{cfg.model}")
    if share_finetune:
        _share_finetune(rt, share_finetune)
    return record.run_id, _drive(rt)


def _setup(
    store: Store, cfg: RunConfig, toolbox: Toolbox | None
) -> tuple[Goal, Toolbox, SearchSpace, str]:
    """Validate the config and build the toolbox and deploy space (live or from a grid)."""
    if cfg.tabular:
        from haqa.trials.tabular import TabularToolbox, grid_search_space

        goal = cfg.parsed_goal()
        given = toolbox if isinstance(toolbox, TabularToolbox) else None
        tabular = given or TabularToolbox(store, cfg.tabular)
        check_grid_matches(tabular.grid, cfg)
        summary = f"{cfg.model} (recorded grid {cfg.tabular})"
        if cfg.cluster and toolbox is None:  # replayed by nodes of the grid's device kind
            toolbox = _ray_backend().recorded_cluster_toolbox(
                cfg.cluster,
                store,
                tabular,
                target=cfg.target,
                time_scale=cfg.replay_time_scale,
                min_s=cfg.replay_min_s,
            )
        return goal, toolbox or tabular, grid_search_space(tabular.grid), summary
    goal, settings, summary = prepare(cfg)
    # Whatever this run's toolbox (in-process included), nothing it measures may run beside the
    # trial processes a killed run on this store left behind.
    reap_strays(registry_dir(store.path))
    toolbox = toolbox or default_toolbox(cfg, settings, store.path)
    target = _cluster_target(toolbox)  # a cluster's threads are its target kind's nodes' CPUs
    space = deploy_space(target[1] if target else os.cpu_count() or 1)
    if not cfg.sensitivity_probe:  # no probe, no probed recipe (and no target_bpw knob)
        space = space.restrict(recipe=[r for r in RECIPE_NAMES if r != PROBED])
    return goal, toolbox, space, summary


def _cluster_target(toolbox: Toolbox) -> tuple[str, int] | None:
    """With a cluster: the device kind the speed trials run on and its nodes' CPUs."""
    return toolbox.speed_target() if isinstance(toolbox, OnCluster) else None


def _close(toolbox: Toolbox) -> None:
    """Leave the cluster, if the toolbox joined one (a local one is stopped)."""
    if isinstance(toolbox, OnCluster):
        toolbox.close()


def check_grid_matches(grid: Any, cfg: RunConfig) -> None:
    """A grid answers only for its own model and machine."""
    if cfg.budgets.finetune_trials:
        raise HaqaError("a tabular run has no fine-tuning stage: pass --finetune-trials 0")
    if cfg.model != grid.model or (cfg.speed_model or None) != grid.speed_model:
        raise HaqaError(
            f"grid {grid.grid_id} was recorded for {grid.model}"
            + (f" with speed model {grid.speed_model}" if grid.speed_model else "")
            + f", not {cfg.model}: record a grid for this model"
        )
    if cfg.cluster and cfg.cluster != "local":
        return  # the cluster must have a node of the grid's kind: checked when it is joined
    here = machine_fingerprint()
    if here != grid.hardware_fingerprint:
        raise HaqaError(
            f"grid {grid.grid_id} was recorded on another machine (fingerprint "
            f"{grid.hardware_fingerprint}, this one is {here}): record a grid here"
        )


@functools.cache
def machine_fingerprint() -> str:
    """This machine's hardware fingerprint, probed once per process (compare checks it per run)."""
    from haqa.tools.probe_hardware import Args, probe_hardware

    return probe_hardware(Args(measure_bandwidth=False)).fingerprint


def resume_run(
    store: Store,
    run_id: str,
    *,
    toolbox: Toolbox | None = None,
    on_event: EventSink | None = None,
    control: RunControl | None = None,
    share_finetune: str | None = None,
) -> RunResult | None:
    record = store.get_run(run_id)
    if record.status == "finished":
        raise HaqaError(f"run {run_id} already finished: see `haqa replay {run_id}`")
    cfg = RunConfig.model_validate(record.config or {})
    if share_finetune is None and cfg.fleet is not None:  # a later kind of a fleet, resumed alone
        first = store.fleet_runs(cfg.fleet.fleet_id)[0].run_id
        share_finetune = first if first != run_id else None
    goal, toolbox, space, summary = _setup(store, cfg, toolbox)
    store.set_run_status(run_id, "running")
    try:
        rt = _runtime(store, run_id, cfg, goal, toolbox, summary, on_event, control, space)
    except BaseException:
        _close(toolbox)
        raise
    done = len(store.list_trials(run_id))
    rt.say("supervisor", ROLE_SUPERVISOR, f"resumed run {run_id}: {done} finished trials kept")
    if share_finetune:
        _share_finetune(rt, share_finetune)
    return _drive(rt)


def _drive(rt: RunRuntime) -> RunResult | None:
    graph = build_graph(rt)
    try:
        final: dict[str, Any] = graph.invoke(
            {"run_id": rt.run_id, "steps": 0}, {"recursion_limit": 10_000}
        )
    except BaseException:
        # A crash or Ctrl-C leaves the run resumable; its finished trials are all stored.
        rt.store.set_run_status(rt.run_id, "stopped")
        raise
    finally:
        _close(rt.toolbox)  # a cluster backend: leave the cluster
    if final.get("route") == "stopped":
        rt.store.set_run_status(rt.run_id, "stopped")
        return None
    run = rt.store.get_run(rt.run_id)
    return RunResult.model_validate(run.result) if run.result else None


# -- fleet runs (--targets) ------------------------------------------------------------------

#: A fleet's id: this prefix and a run id's form (a fleet is not a run: each kind's run is one).
FLEET_PREFIX = "fleet-"


class FleetMember(NamedTuple):
    """One device kind of a fleet: its run and that run's answer (None: it stopped)."""

    kind: str
    run_id: str
    result: RunResult | None


def fleet_of(store: Store, run_id: str) -> str | None:
    """The fleet a stored run is one device kind of, if any."""
    fleet = (store.get_run(run_id).config or {}).get("fleet") or {}
    return str(fleet["fleet_id"]) if fleet.get("fleet_id") else None


def start_fleet(
    store: Store,
    cfg: RunConfig,
    *,
    on_event: EventSink | None = None,
    control: RunControl | None = None,
) -> tuple[str, list[FleetMember]]:
    """A fleet run (``--targets``): the device kinds read from the cluster, then one run per
    kind, in order: the first fine-tunes and deploys, each later one takes the first's fine-tune
    stage as its own and tunes the deployment for its kind (its speed trials on nodes of that
    kind). Each kind's answer is its run's; the fleet ends early only when a run stops."""
    if not (cfg.cluster and cfg.targets):
        raise HaqaError("a fleet run needs --cluster and --targets")
    kinds: list[str] = _ray_backend().fleet_kinds(cfg.cluster, cfg.targets)
    fleet = Fleet(fleet_id=FLEET_PREFIX + new_run_id(), kinds=kinds)
    base = cfg.model_copy(update={"targets": None, "fleet": fleet})
    return fleet.fleet_id, _drive_fleet(store, base, on_event, control)


def resume_fleet(
    store: Store,
    fleet_id: str,
    *,
    on_event: EventSink | None = None,
    control: RunControl | None = None,
) -> list[FleetMember]:
    """Continue a fleet: a kind whose run finished is kept as it is, a stopped run is resumed,
    a kind not started yet is started."""
    runs = store.fleet_runs(fleet_id)
    if not runs:
        raise HaqaError(f"fleet {fleet_id!r} is not in {store.path}: see `haqa runs` for fleet ids")
    # The first kind's config, less what was its own: its kind and the baseline resolved for it.
    stored = RunConfig.model_validate(runs[0].config or {})
    base = stored.model_copy(update={"target": None, "baseline_run": None})
    return _drive_fleet(store, base, on_event, control)


def _drive_fleet(
    store: Store, base: RunConfig, on_event: EventSink | None, control: RunControl | None
) -> list[FleetMember]:
    fleet = base.fleet
    assert fleet is not None
    runs: dict[str, RunRecord] = {}
    for r in store.fleet_runs(fleet.fleet_id):  # a kind's first run is its run
        runs.setdefault(str((r.config or {}).get("target")), r)
    members: list[FleetMember] = []
    first: str | None = None  # the run whose fine-tune stage the later kinds share
    for kind in fleet.kinds:
        run = runs.get(kind)
        if run is None:
            cfg = base.model_copy(update={"target": kind})
            run_id, result = start_run(
                store, cfg, on_event=on_event, control=control, share_finetune=first
            )
        elif run.status == "finished":  # measured once: never again
            run_id = run.run_id
            result = RunResult.model_validate(run.result) if run.result else None
        else:
            run_id = run.run_id
            result = resume_run(
                store, run_id, on_event=on_event, control=control, share_finetune=first
            )
        members.append(FleetMember(kind, run_id, result))
        if result is None:
            break  # stopped: the fleet is resumable from here
        first = first or run_id
    return members


def _share_finetune(rt: RunRuntime, source: str) -> None:
    """Take the fine-tune stage of ``source`` (a fleet's first run) as this run's own: its
    trials, copied as they were measured (the fine-tuned adapter is the same file), and its end
    mark, which names the run it came from. Nothing is copied twice (a resumed run)."""
    if "finetune_done" in rt.supervisor_marks():
        return
    done = rt.store.list_messages(source)
    mark = next(
        (
            m
            for m in reversed(done)
            if m.tool_name == "mark" and (m.tool_args or {}).get("mark") == "finetune_done"
        ),
        None,
    )
    if mark is None or mark.tool_args is None:
        raise HaqaError(f"run {source} has no finished fine-tune stage to share")
    have = len(rt.trials("finetune"))
    for t in rt.store.list_trials(source, stage="finetune")[have:]:
        rt.add_trial(TrialResult.model_validate(t.model_dump(exclude={"run_id", "trial_id"})))
    payload = {k: v for k, v in mark.tool_args.items() if k != "mark"}
    rt.mark(
        "finetune_done",
        f"fine-tuning stage shared with run {source} (the fleet's first device kind): "
        f"{mark.content}",
        **payload,
        shared_from=source,
    )
