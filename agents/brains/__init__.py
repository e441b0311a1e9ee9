"""Brains: every decision-maker behind one interface (``Brain``), one module each."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from haqa.agents.brains.base import Brain, DecisionContext, Proposal
from haqa.agents.brains.expert import ExpertBrain
from haqa.errors import HaqaError

if TYPE_CHECKING:
    from haqa.store import Store

#: Optimiser baselines (agents/brains/optuna_brain.py), named here so listing them stays cheap.
BRAIN_NAMES = ("random", "tpe", "gp", "nsga2", "cmaes", "local")
ALL_BRAINS = ("expert", "openai", "llamacpp", "hybrid", "replay", *BRAIN_NAMES)

__all__ = ["Brain", "DecisionContext", "ExpertBrain", "Proposal", "make_brain"]


class BrainSettings(Protocol):
    """What choosing a brain reads of a run's config (the graph's ``RunConfig`` has it): the
    agents name what they need rather than import the layer above them."""

    @property
    def brain(self) -> str: ...
    @property
    def llm_base_url(self) -> str | None: ...
    @property
    def llm_model(self) -> str | None: ...
    @property
    def llm_gguf(self) -> str | None: ...
    @property
    def llm_timeout_s(self) -> float: ...
    @property
    def replay_run(self) -> str | None: ...
    @property
    def seed(self) -> int: ...


def make_brain(cfg: BrainSettings, store: Store) -> Brain:
    """The brain a run config names; LLM clients are imported only when asked for."""
    if cfg.brain == "expert":
        return ExpertBrain()
    if cfg.brain == "openai":
        from haqa.agents.brains.openai_brain import OpenAIBrain

        return OpenAIBrain(cfg.llm_base_url, cfg.llm_model, timeout_s=cfg.llm_timeout_s)
    if cfg.brain == "llamacpp":
        from haqa.agents.brains.llamacpp_brain import LlamaCppBrain

        return LlamaCppBrain(cfg.llm_gguf, seed=cfg.seed)
    if cfg.brain == "hybrid":
        from haqa.agents.brains.hybrid_brain import HybridBrain

        return HybridBrain(cfg.llm_gguf, seed=cfg.seed)
    if cfg.brain in BRAIN_NAMES:
        from haqa.agents.brains.optuna_brain import LocalSearchBrain, OptunaBrain

        if cfg.brain == "local":
            return LocalSearchBrain(seed=cfg.seed)
        return OptunaBrain(cfg.brain, seed=cfg.seed)
    if cfg.brain == "replay":
        from haqa.agents.brains.replay import ReplayBrain

        if not cfg.replay_run:
            raise HaqaError("the replay brain needs the run to replay (haqa replay RUN --rerun)")
        return ReplayBrain(store, cfg.replay_run)
    raise HaqaError(f"unknown brain {cfg.brain!r}: use one of {', '.join(ALL_BRAINS)}")
