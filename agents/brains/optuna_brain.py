"""Optimiser brains — the classic baselines the paper compares against — through optuna's samplers
(ask/tell), not re-implemented: ``random`` (RandomSampler), ``tpe`` (TPESampler), ``gp``
(GPSampler, Bayesian optimisation with a Gaussian process), ``nsga2`` (NSGAIISampler over accuracy ×
the goal's speed) and ``cmaes`` (CmaEsSampler). Optuna has no hill-climbing sampler, so ``local`` is
a small first-improvement local search over neighbouring configurations (one knob one step).

Each brain keeps one optuna study per stage and tells it every trial of the history it has not seen
yet (so it also works after a resume, or on a history it did not propose). Infeasible results (the
accuracy floor missed, rejected by the memory gate) are told as the worst value, failures as FAIL.
"""

from __future__ import annotations

import json
import random
from typing import Any

from haqa.agents.brains.base import BrainKind, DecisionContext, Proposal, TrialView
from haqa.errors import HaqaError
from haqa.space import Knob, SearchSpace

OPTUNA_BRAINS = ("random", "tpe", "gp", "nsga2", "cmaes")


def is_valid(ctx: DecisionContext, config: dict[str, Any]) -> bool:
    from pydantic import ValidationError

    from haqa.schemas import DeployConfig, FinetuneConfig

    model = DeployConfig if ctx.stage == "deploy" else FinetuneConfig
    try:
        model.model_validate(config)
    except ValidationError:
        return False
    return True


def _key(config: dict[str, Any], names: list[str]) -> str:
    return json.dumps({k: config.get(k) for k in names}, sort_keys=True, default=str)


def _conditional(ctx: DecisionContext, name: str) -> bool:
    return ctx.space.knob(name).only_with is not None


def _distribution(knob: Knob) -> Any:
    import optuna

    if knob.kind == "bool":
        return optuna.distributions.CategoricalDistribution([False, True])
    if knob.kind == "categorical":
        return optuna.distributions.CategoricalDistribution(list(knob.choices or ()))
    if knob.kind == "int":
        return optuna.distributions.IntDistribution(
            int(knob.low or 0), int(knob.high or 0), log=knob.log
        )
    return optuna.distributions.FloatDistribution(
        float(knob.low or 0), float(knob.high or 0), log=knob.log
    )


def _sampler(name: str, seed: int, multi: bool) -> Any:
    import optuna

    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=3, multivariate=True)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=3)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=4)
    if name == "cmaes":
        # CMA-ES handles the numeric knobs; categorical ones fall back to random sampling.
        return optuna.samplers.CmaEsSampler(
            seed=seed, n_startup_trials=3, warn_independent_sampling=False
        )
    raise HaqaError(
        f"unknown optimiser {name!r}: use one of {', '.join((*OPTUNA_BRAINS, 'local'))}"
    )


class OptunaBrain:
    kind: BrainKind = "optimizer"

    def __init__(self, name: str, seed: int = 0) -> None:
        if name not in OPTUNA_BRAINS:
            raise HaqaError(f"unknown optimiser {name!r}: use one of {', '.join(OPTUNA_BRAINS)}")
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.name: str = name
        self.seed = seed
        self._studies: dict[str, Any] = {}
        self._told: dict[str, set[int]] = {}
        self._pending: dict[str, dict[str, Any]] = {}

    def _study(self, ctx: DecisionContext) -> Any:
        import optuna

        if ctx.stage not in self._studies:
            multi = self.name == "nsga2" and ctx.stage == "deploy"
            directions = ["maximize", "maximize"] if multi else ["maximize"]
            self._studies[ctx.stage] = optuna.create_study(
                directions=directions, sampler=_sampler(self.name, self.seed, multi)
            )
            self._told[ctx.stage] = set()
        return self._studies[ctx.stage]

    def _values(self, t: TrialView, multi: bool) -> list[float] | None:
        if t.status in ("failed",):
            return None
        if not t.feasible or t.objective is None:
            return [0.0, 0.0] if multi else [0.0]
        if multi:
            return [float(t.accuracy or 0.0), float(t.objective)]
        return [float(t.objective)]

    def _tell_history(self, ctx: DecisionContext, study: Any) -> None:
        import optuna

        names = ctx.space.names
        distributions = {k.name: _distribution(k) for k in ctx.space.knobs}
        multi = len(study.directions) > 1
        for t in ctx.history:
            if t.trial_id in self._told[ctx.stage]:
                continue
            self._told[ctx.stage].add(t.trial_id)
            key = _key(t.config, names)
            values = self._values(t, multi)
            pending = self._pending.pop(key, None)
            if pending is not None:
                if values is None:
                    study.tell(pending, state=optuna.trial.TrialState.FAIL)
                else:
                    study.tell(pending, values if multi else values[0])
                continue
            # A knob the config left out as meaningless (target_bpw of a uniform recipe) is
            # told at its default: the sampler's distributions cover every knob.
            params = {k: t.config.get(k, ctx.space.knob(k).default) for k in names}
            params = {k: v for k, v in params.items() if k in t.config or _conditional(ctx, k)}
            if set(params) != set(names) or values is None:
                continue
            try:
                study.add_trial(
                    optuna.trial.create_trial(
                        params=params,
                        distributions=distributions,
                        values=values,
                    )
                )
            except ValueError:
                continue  # a value outside today's space (a narrower machine): not comparable

    def candidates(self, ctx: DecisionContext, k: int) -> list[dict[str, Any]]:
        """Up to ``k`` distinct new valid configurations the sampler asks for, best guess first;
        each stays pending in the study until ``keep`` says which one runs."""
        if self._told.get(ctx.stage, set()) - {t.trial_id for t in ctx.history}:
            # A trial the study was told about was replaced (re-measured after a drift): tell
            # a new study the history as it stands, as a resumed run would. The asked trials
            # still pending belong to the old study (telling the new one of them raised
            # "No trial with trial_id N exists"): their configs are told from the history.
            self._studies.pop(ctx.stage, None)
            self._pending.clear()
        study = self._study(ctx)
        self._tell_history(ctx, study)
        distributions = {k.name: _distribution(k) for k in ctx.space.knobs}
        multi = len(study.directions) > 1
        tried = {_key(t.config, ctx.space.names): self._values(t, multi) for t in ctx.history}
        import optuna

        out: list[dict[str, Any]] = []
        for _ in range(20 * k):
            if len(out) == k:
                break
            trial = study.ask(distributions)
            config = ctx.space.applicable({**ctx.defaults, **trial.params})
            key = _key(config, ctx.space.names)
            if not is_valid(ctx, config):
                # A combination the config model forbids (a quantized V cache without flash
                # attention): the sampler learns it as a failure instead of wasting a proposal.
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                continue
            if key not in tried and key not in self._pending:
                self._pending[key] = trial
                out.append(config)
                continue
            # A repeat of a measured configuration (with another value of a knob it leaves out,
            # such as target_bpw of a uniform recipe): told the value it measured, so a model-
            # based sampler learns the point instead of asking it again; else pruned.
            known = tried.get(key)
            if known is not None:
                study.tell(trial, known if multi else known[0])
            else:
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        return out

    def keep(
        self, ctx: DecisionContext, chosen: dict[str, Any], asked: list[dict[str, Any]]
    ) -> None:
        """The chosen candidate runs (told when its trial is in the history); the others are
        told as failed, which TPE and GP leave out of their models: not chosen, not measured."""
        import optuna

        study = self._studies[ctx.stage]
        for config in asked:
            key = _key(config, ctx.space.names)
            if key != _key(chosen, ctx.space.names) and key in self._pending:
                study.tell(self._pending.pop(key), state=optuna.trial.TrialState.FAIL)

    def propose(self, ctx: DecisionContext) -> Proposal:
        asked = self.candidates(ctx, 1)
        if not asked:
            return Proposal(action="finish", thought=f"optimiser {self.name} repeats itself")
        sampler = type(self._studies[ctx.stage].sampler).__name__
        return Proposal(
            action="trial", config=asked[0], thought=f"optimiser {self.name} (optuna {sampler})"
        )


class LocalSearchBrain:
    """First-improvement hill climbing: start from the defaults, try one-knob moves around the
    incumbent in random order, move when a neighbour is better; restart from a random
    configuration when every neighbour has been measured."""

    name: str = "local"
    kind: BrainKind = "optimizer"

    def __init__(self, seed: int = 0) -> None:
        self.rng = random.Random(seed)

    @staticmethod
    def _neighbours(config: dict[str, Any], space: SearchSpace) -> list[dict[str, Any]]:
        out = []
        for knob in space.knobs:
            if knob.name not in space.applicable({**config, knob.name: knob.default}):
                continue  # a knob this config leaves out (target_bpw of a uniform recipe)
            value = config.get(knob.name)
            value = knob.default if value is None else value
            if knob.kind == "bool":
                out.append({**config, knob.name: not value})
            elif knob.kind == "categorical":
                choices = list(knob.choices or ())
                if value in choices:
                    i = choices.index(value)
                    for j in (i - 1, i + 1):
                        if 0 <= j < len(choices):
                            out.append({**config, knob.name: choices[j]})
            else:
                low, high = float(knob.low or 0), float(knob.high or 0)
                factor = 2.0 if knob.log else None
                for direction in (-1, 1):
                    if factor:
                        new = float(value) * (factor**direction)
                    else:
                        new = float(value) + direction * (high - low) / 8
                    new = min(high, max(low, new))
                    out.append({**config, knob.name: round(new) if knob.kind == "int" else new})
        return [space.applicable(c) for c in out]

    def _random_config(self, ctx: DecisionContext) -> dict[str, Any]:
        config = dict(ctx.defaults)
        for knob in ctx.space.knobs:
            if knob.kind == "bool":
                config[knob.name] = self.rng.random() < 0.5
            elif knob.kind == "categorical":
                config[knob.name] = self.rng.choice(list(knob.choices or ()))
            else:
                low, high = float(knob.low or 0), float(knob.high or 0)
                v = self.rng.uniform(low, high)
                config[knob.name] = round(v) if knob.kind == "int" else v
        return ctx.space.applicable(config)

    def propose(self, ctx: DecisionContext) -> Proposal:
        names = ctx.space.names
        tried = {_key(t.config, names) for t in ctx.history}
        start = dict(ctx.defaults)
        if _key(start, names) not in tried:
            return Proposal(
                action="trial", config=start, thought="local search: start at the defaults"
            )
        best = ctx.incumbent()
        centre = dict(best.config) if best else start
        moves = self._neighbours(centre, ctx.space)
        self.rng.shuffle(moves)
        for move in moves:
            if _key(move, names) not in tried and is_valid(ctx, move):
                return Proposal(
                    action="trial", config=move, thought="local search: a neighbour of the best"
                )
        for _ in range(50):
            config = self._random_config(ctx)
            if _key(config, names) not in tried and is_valid(ctx, config):
                return Proposal(
                    action="trial", config=config, thought="local search: random restart"
                )
        return Proposal(action="finish", thought="local search: neighbourhood exhausted")
