"""What defines a run: ``RunConfig`` (stored with the run, so resume and --rerun need nothing
else) and the bundled defaults ``haqa demo`` runs."""

from __future__ import annotations

from typing import Any

from pydantic import Field, ValidationInfo, field_validator, model_validator

from haqa.agents.brains import ALL_BRAINS
from haqa.agents.routing import Budgets
from haqa.errors import HaqaError
from haqa.goal import Goal
from haqa.regression import DEFAULT_LIMITS, RegressionLimits
from haqa.schemas import FinetuneConfig, MeasurementPolicy, Strict

BRAINS = ALL_BRAINS


def _gguf_deploys_only(data: dict[str, Any]) -> dict[str, Any]:
    """A GGUF model has no fine-tuning stage: unless the budgets say otherwise (an error later,
    naming the flag), its run starts at the deployment."""
    if not str(data.get("model", "")).lower().endswith(".gguf"):
        return data
    budgets = data.get("budgets")
    if isinstance(budgets, Budgets):
        if "finetune_trials" in budgets.model_fields_set:
            return data
        budgets = budgets.model_copy(update={"finetune_trials": 0})
    elif isinstance(budgets, dict):
        budgets = {"finetune_trials": 0, **budgets}
    elif budgets is None:
        budgets = {"finetune_trials": 0}
    return {**data, "budgets": budgets}


class Fleet(Strict):
    """The fleet a run is one device kind of (``--targets``), stored with each of its runs."""

    fleet_id: str
    kinds: list[str] = Field(min_length=1)


class RunConfig(Strict):
    """Everything that defines a run (stored with it, so resume and --rerun need nothing else)."""

    model: str = Field(
        "zoo:tiny",
        description="zoo:NAME, a Hugging Face model folder, or a GGUF file (deployment only)",
    )
    speed_model: str | None = Field(
        None,
        description="benchmark speed on this other model (a GGUF or HF folder); default: the "
        "model itself, so accuracy and speed are measured on the same GGUF",
    )
    goal: str = Field("decode", description="decode, prefill or workload:PROMPT+GEN")
    max_accuracy_drop: float = Field(1.0, ge=0, le=100, description="points below the reference")
    memory_budget: str | None = Field(None, description="peak memory allowed, e.g. 4GiB")
    max_perplexity_increase: float | None = Field(
        None,
        ge=0,
        le=10_000,
        description="percent over the reference's perplexity a deployment may score on held-out "
        "prose (None: no perplexity floor)",
    )
    brain: str = Field(
        "expert", description="expert, openai, llamacpp, replay, or random/tpe/gp/nsga2/cmaes/local"
    )
    budgets: Budgets = Field(default_factory=Budgets)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    train: list[str] | None = Field(None, description="train JSONL files (default: the zoo's)")
    validation: list[str] | None = Field(None, description="validation JSONL files")
    test: list[str] | None = Field(None, description="test JSONL files")
    eval_limit: int | None = Field(100, ge=1, description="examples per task file and split")
    eval_text: str | None = Field(
        None,
        description="held-out prose (a text file) for the answer's perplexity beside the "
        "reference's; default: the bundled English prose (CPython's documentation)",
    )
    perplexity_windows: int = Field(
        16, ge=0, le=10_000, description="512-token windows of it scored (0: no perplexity)"
    )
    calibration_text: str | None = Field(
        None,
        description="text the importance matrix of an imatrix trial is computed over (no "
        "evaluation may use it); default: the training split's questions and answers",
    )
    sensitivity_probe: bool = Field(
        True,
        description="the analyst probes each tensor group's sensitivity (about nine "
        "quantizations and short evaluations of the model) and the deploy stage may spend a "
        "target bits per weight by it (recipe probed); false: neither, for a model too large "
        "to probe in the time it is worth",
    )
    n_prompt: int = Field(256, ge=1, le=65536, description="benchmark prompt tokens (pp)")
    n_gen: int = Field(64, ge=1, le=65536, description="benchmark generated tokens (tg)")
    repetitions: int = Field(3, ge=1, le=100, description="benchmark repetitions")
    llm_base_url: str | None = Field(None, description="OpenAI-compatible endpoint")
    llm_model: str | None = Field(None, description="model name at that endpoint")
    llm_gguf: str | None = Field(None, description="local GGUF instruct model (llamacpp brain)")
    llm_timeout_s: float = Field(
        60.0, gt=0, le=3600, description="an LLM endpoint silent this long: the step falls back"
    )
    replay_run: str | None = Field(None, description="run whose decisions the replay brain serves")
    seed: int = Field(0, ge=0)
    trial_timeout_s: float = Field(3600.0, gt=0, description="a trial running longer fails")
    trial_memory_limit: str | None = Field(
        None, description="a trial using more memory fails (default: 90% of RAM)"
    )
    isolate_trials: bool = Field(True, description="run each trial in a child process")
    tabular: str | None = Field(
        None, description="answer deploy trials from this recorded grid (haqa grid record)"
    )
    cluster: str | None = Field(
        None,
        description="run trials as Ray tasks on this cluster: auto, ray://HOST:PORT, HOST:PORT, "
        "or local (a one-node cluster of this machine); default: on this machine, no Ray",
    )
    target: str | None = Field(
        None,
        description="with --cluster: the device kind (hardware fingerprint) speed trials run on; "
        "default: the cluster's only kind (a recorded grid: the grid's)",
    )
    targets: list[str] | None = Field(
        None,
        description="with --cluster: a fleet run, tuned for several device kinds at once: all "
        "(every kind in the cluster) or fingerprints; one fine-tune stage, then a deploy stage "
        "and an answer per kind, each kind's its own run",
    )
    fleet: Fleet | None = Field(
        None,
        description="set by haqa on each run of a fleet (--targets): the fleet's id and its "
        "device kinds, in the order their deploy stages run",
    )
    replay_time_scale: float = Field(
        1.0,
        ge=0,
        le=100,
        description="with --cluster and --tabular: a replayed trial takes its recorded duration "
        "times this (tests and benches of dispatch shorten it)",
    )
    replay_min_s: float = Field(
        0.0,
        ge=0,
        le=3600,
        description="with --cluster and --tabular: a replayed deploy trial lasts at least this "
        "(a fault test's trial must still be running when its node is killed)",
    )
    quick_analysis: bool = Field(
        False, description="microbenchmark one thread count and fewer repeats (tests, demos)"
    )
    measurement: MeasurementPolicy = Field(
        default_factory=MeasurementPolicy,
        description="benchmark repeats until steady; anchor re-measurement and drift",
    )
    baseline: str | None = Field(
        None,
        description="a stored run (RUN or latest) whose answer this run's must not be worse "
        "than (on the same hardware fingerprint)",
    )
    max_regression: str | None = Field(
        None,
        description=f"how much worse than the baseline it may be, e.g. {DEFAULT_LIMITS} "
        "(default with --baseline)",
    )
    baseline_run: str | None = Field(
        None,
        description="the baseline as resolved when the run started (latest: the run it was "
        "then), so a resume compares with the same run",
    )

    @model_validator(mode="before")
    @classmethod
    def _model_recipe(cls, data: Any) -> Any:
        """The model's own fine-tuning recipe (the tiny zoo model's toy learning rate) fills the
        fine-tune settings nobody set; stored with the run, so a resume reads the same values."""
        from haqa.zoo import finetune_recipe

        if not isinstance(data, dict):
            return data
        data = _gguf_deploys_only(data)
        recipe = finetune_recipe(str(data.get("model", "zoo:tiny")))
        finetune = data.get("finetune") or {}
        if isinstance(finetune, FinetuneConfig):
            given = {k: getattr(finetune, k) for k in finetune.model_fields_set}
        elif isinstance(finetune, dict):
            given = dict(finetune)
        else:
            return data
        if not recipe:
            return data
        return {**data, "finetune": {**recipe, **given}}

    @field_validator("brain")
    @classmethod
    def _known_brain(cls, value: str) -> str:
        # Checked with the config, so a typo fails before `haqa run` builds a zoo model.
        if value not in BRAINS:
            raise ValueError(f"unknown brain {value!r}: use one of {', '.join(BRAINS)}")
        return value

    @field_validator("max_regression")
    @classmethod
    def _limits(cls, value: str | None) -> str | None:
        # Parsed with the config, so a typo fails before anything is built or measured.
        return None if value is None else RegressionLimits.parse(value).describe()

    @field_validator("target")
    @classmethod
    def _target_on_a_cluster(cls, value: str | None, info: ValidationInfo) -> str | None:
        # A device kind is a cluster's: checked with the config, before anything is built.
        if value is not None and not info.data.get("cluster"):
            raise ValueError("a device kind of a cluster: pass --cluster too")
        return value

    @field_validator("targets")
    @classmethod
    def _fleet_on_a_cluster(cls, value: list[str] | None, info: ValidationInfo) -> list[str] | None:
        # Checked with the config, so a fleet that cannot be run fails before anything is built.
        if value is None:
            return None
        kinds = [k.strip() for item in value for k in item.split(",") if k.strip()]
        if not kinds:
            raise ValueError("--targets: all, or device kinds (fingerprints)")
        if not info.data.get("cluster"):
            raise ValueError("device kinds of a cluster: pass --cluster too")
        if info.data.get("target") is not None:
            raise ValueError("--target (one device kind) or --targets (a fleet), not both")
        if info.data.get("tabular"):
            raise ValueError(
                "a recorded grid answers for its own device kind only: a fleet (--targets) "
                "needs live trials"
            )
        if "all" in kinds and len(kinds) > 1:
            raise ValueError("--targets: all, or a list of fingerprints, not both")
        return list(dict.fromkeys(kinds))

    def regression_limits(self) -> RegressionLimits | None:
        """The gate's limits: None without a baseline."""
        if self.baseline is None:
            if self.max_regression is not None:
                raise HaqaError("--max-regression needs --baseline RUN or --baseline latest")
            return None
        return RegressionLimits.parse(self.max_regression or DEFAULT_LIMITS)

    def parsed_goal(self) -> Goal:
        """The goal, with a perplexity floor only where there is prose to score."""
        if self.max_perplexity_increase is not None and self.tabular:
            raise HaqaError(
                "a recorded grid holds no perplexity: --max-perplexity-increase needs a live run"
            )
        if self.max_perplexity_increase is not None and (
            self.perplexity_windows == 0 or self.model == "zoo:tiny"
        ):
            raise HaqaError(
                "--max-perplexity-increase needs perplexity on held-out prose: "
                + (
                    "--perplexity-windows is 0; give 1 or more"
                    if self.perplexity_windows == 0
                    else "zoo:tiny is trained on a toy language and is not scored on prose"
                )
            )
        return Goal.parse(
            self.goal,
            max_accuracy_drop_points=self.max_accuracy_drop,
            memory_budget=self.memory_budget,
            max_perplexity_increase_pct=self.max_perplexity_increase,
        )


DEMO_MODEL = "zoo:smollm2-135m"


def demo_config(memory_budget: str | None = "4GiB") -> RunConfig:
    """The bundled defaults `haqa demo` runs: the real SmolLM2-135M-Instruct fine-tuned once
    (QLoRA) on the bundled tasks, then its deployment tuned on this machine, accuracy and speed
    measured on the same GGUF. Sized for about ten minutes on two cores: one fine-tune, five
    deploy trials, every validation question (8 kinds, 261 questions). No wall-clock limit: on a
    machine busy with other work a limit ended the stage before its first deployment (the demo
    then answered nothing at all); the budgets bound the demo instead.

    The goal allows 5 points, the finest difference its 261 paired validation questions resolve
    (±4.2 points at 95%): a finer goal would be judged by noise, and the answer would say so. On
    SmolLM2 after the fine-tune, Q4_0 costs about 7 points and Q4_K_M about 4, so the goal is
    where the search has a real choice to make."""
    return RunConfig(
        model=DEMO_MODEL,
        goal="decode",
        max_accuracy_drop=5.0,
        memory_budget=memory_budget,
        budgets=Budgets(finetune_trials=1, deploy_trials=5, patience=3),
        eval_limit=None,
        n_prompt=128,
        n_gen=32,
        repetitions=3,
    )
