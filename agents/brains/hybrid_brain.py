"""The ``hybrid`` brain: an optuna sampler and a local LLM share one study.

Each step the optimizer (TPE by default) asks its study for a few new candidates, its best guess
first; the LLM, given the static prompt (goal, hardware brief, space) and the trial history, picks
one by number (only the candidates' numbers can be written) and says why. The sampler's model
still learns from every trial that runs, whoever chose it. An answer that picks nothing (cut off,
unparseable) or a model that fails takes the optimizer's first candidate, and the trace says so:
every decision is written as a ``hybrid_choice`` (who decided, which candidate), so both shares
can be counted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from haqa.agents.brains.base import BrainKind, DecisionContext, Proposal
from haqa.agents.brains.constrained import fixed_values, options_question, picked_option
from haqa.agents.brains.llamacpp_brain import LocalModel
from haqa.agents.brains.llm_call import trace_call
from haqa.agents.brains.optuna_brain import OptunaBrain
from haqa.agents.brains.react import InvalidAnswer

#: Candidates the optimizer offers per step.
CANDIDATES = 4
#: ``messages.tool_name`` of a hybrid decision (``tool_args.source``: ``llm`` or ``optimizer``).
HYBRID_CHOICE = "hybrid_choice"


class HybridBrain:
    name: str = "hybrid"
    kind: BrainKind = "llm"

    def __init__(
        self, gguf: str | Path | None, *, seed: int = 0, sampler: str = "tpe", k: int = CANDIDATES
    ) -> None:
        self.optimizer = OptunaBrain(sampler, seed=seed)
        self.model = LocalModel(gguf, seed=seed)
        self.k = k

    def _pick(self, ctx: DecisionContext, options: list[dict[str, Any]]) -> tuple[int, str, str]:
        """(index of the chosen candidate, who chose it, the reason)."""
        intro = (
            f"The optimizer ({self.optimizer.name}) proposes these untried candidates, its best "
            "guess first. Pick the one most likely to improve the goal on this hardware:"
        )
        question = options_question(ctx, options, allow_finish=False, intro=intro)
        try:
            call = self.model.answer(
                question.messages, question.schema, brain=self.name, purpose="pick a candidate"
            )
        except Exception as exc:  # the model itself failed: the optimizer decides
            return 0, "optimizer", f"the LLM failed ({' '.join(str(exc).split())[:200]})"
        trace_call(ctx, call)
        try:
            index = picked_option(call.answer, question)
        except InvalidAnswer as exc:
            return 0, "optimizer", f"the LLM's answer picks nothing ({exc})"
        if index is None:  # no finish is offered; a server ignoring the grammar might say it
            return 0, "optimizer", "the LLM answered finish, which is not offered"
        import json

        thought = str(json.loads(call.answer).get("thought") or "")
        return index, "llm", thought

    def propose(self, ctx: DecisionContext) -> Proposal:
        asked = self.optimizer.candidates(ctx, self.k)
        if not asked:
            return Proposal(action="finish", thought="hybrid: the optimizer repeats itself")
        fixed = fixed_values(ctx.space)
        free = [k for k in ctx.space.names if k not in fixed]
        options = [{k: c.get(k) for k in free} for c in asked]
        index, source, why = self._pick(ctx, options)
        chosen = asked[index]
        self.optimizer.keep(ctx, chosen, asked)
        ctx.trace(
            agent=ctx.agent,
            role="observation",
            content=f"hybrid: {source} chose candidate {index + 1} of {len(asked)} "
            f"from {self.optimizer.name}" + (f": {why}" if why else ""),
            tool_name=HYBRID_CHOICE,
            tool_args={"source": source, "pick": index + 1, "candidates": len(asked)},
        )
        return Proposal(
            action="trial",
            config=chosen,
            thought=f"hybrid ({source} chose {index + 1}/{len(asked)} of {self.optimizer.name})"
            + (f": {why}" if why else ""),
        )
