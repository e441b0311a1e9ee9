"""Log-likelihood of continuations under a GGUF model, through llama.cpp: how the accuracy of the
DEPLOYED artifact (each quantization type) is measured.

Tokenized the way lm-evaluation-harness does: trailing spaces of the context move to the
continuation; tokens of the context and of context+continuation are taken (BOS as the model adds
it), and the continuation is the tail of the latter after the context's tokens. The KV cache is
kept between requests and only the part after the shared prefix is decoded again, so the choices of
one multiple-choice question cost one context plus their own tokens.
"""

from __future__ import annotations

import ctypes
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from haqa.errors import HaqaError
from haqa.schemas import KvCacheSettings, RuntimeSettings

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray


class Args(BaseModel):
    """Score (context, continuation) pairs under a GGUF model."""

    gguf_path: Path = Field(description="the GGUF model file")
    requests: list[tuple[str, str]] = Field(description="(context, continuation) pairs")
    n_threads: int | None = Field(None, ge=1, description="threads (default: all logical cores)")
    n_ctx: int = Field(512, ge=16, description="context window; longer inputs keep their tail")
    kv_cache: KvCacheSettings = Field(
        default_factory=KvCacheSettings, description="K/V cache types the model scores with"
    )


class Result(BaseModel):
    logprobs: list[float] = Field(description="sum of log-probs of each continuation, in order")


def split_request(context: str, continuation: str) -> tuple[str, str]:
    """lm-evaluation-harness's ``_encode_pair`` rule: trailing spaces belong to the continuation."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    return context, continuation


class _Model:
    """A llama.cpp model and context with all-token logits, freed on ``close``."""

    def __init__(
        self, path: Path, n_ctx: int, n_threads: int, kv_cache: KvCacheSettings | None = None
    ) -> None:
        from haqa.tools.export_gguf import check_gguf
        from haqa.tools.llama_session import llama, load_model, new_context

        check_gguf(path)
        self.lib: Any = llama()
        # The whole text is one batch (all-token logits), in micro-batches of at most 512.
        rt = RuntimeSettings(
            n_threads=n_threads, n_batch=n_ctx, n_ubatch=min(n_ctx, 512), n_ctx=n_ctx
        )
        self.model = load_model(path, rt)
        self.vocab = self.lib.llama_model_get_vocab(self.model)
        self.n_vocab = int(self.lib.llama_vocab_n_tokens(self.vocab))
        try:
            self.ctx = new_context(self.model, rt, kv_cache or KvCacheSettings())
        except HaqaError:
            self.lib.llama_model_free(self.model)
            raise
        self.n_ctx = n_ctx
        self.mem = self.lib.llama_get_memory(self.ctx)
        self.batch = self.lib.llama_batch_init(n_ctx, 0, 1)
        self.cached: list[int] = []  # tokens whose K/V are in the cache, from position 0

    def tokenize(self, text: str) -> list[int]:
        from haqa.tools.llama_session import tokenize

        return tokenize(self.vocab, text)

    def score(self, tokens: list[int], first: int) -> float:
        """Sum of log p(tokens[i] | tokens[:i]) for i in [first, len(tokens))."""
        # Keep the shared prefix, but re-decode from the token before the first scored one: its
        # logits are needed and the cache keeps K/V, not logits.
        keep = 0
        limit = min(len(self.cached), first - 1)
        while keep < limit and self.cached[keep] == tokens[keep]:
            keep += 1
        self.lib.llama_memory_seq_rm(self.mem, 0, keep, -1)
        self.cached = self.cached[:keep]
        todo = tokens[keep:-1]  # the last token is only predicted, never fed
        self._decode(todo, keep, first - 1)
        self.cached = tokens[:-1]
        total = 0.0
        for i in range(len(todo)):
            pos = keep + i
            if pos < first - 1:
                continue
            total += self._logprob(i, tokens[pos + 1])
        return total

    def distributions(self, tokens: list[int]) -> NDArray[np.float64]:
        """log p(· | tokens[:i]) over the vocabulary for i in [1, len(tokens)): one row each."""
        import numpy as np

        todo = tokens[:-1]
        if not 1 <= len(todo) <= self.n_ctx:
            raise HaqaError(f"{len(tokens)} tokens: need 2 to {self.n_ctx + 1} (n_ctx + 1)")
        self.lib.llama_memory_seq_rm(self.mem, 0, 0, -1)
        self.cached = []
        self._decode(todo, 0, 0)
        self.cached = list(todo)
        return np.stack([self._log_softmax(i) for i in range(len(todo))])

    def _decode(self, todo: list[int], start: int, first_logit: int) -> None:
        """Feed ``todo`` at positions ``start...`` of sequence 0, with logits kept from position
        ``first_logit`` on."""
        b = self.batch
        for i, tok in enumerate(todo):
            pos = start + i
            b.token[i] = tok
            b.pos[i] = pos
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = 0
            b.logits[i] = 1 if pos >= first_logit else 0
        b.n_tokens = len(todo)
        if self.lib.llama_decode(self.ctx, b) != 0:
            raise RuntimeError("llama_decode failed")

    def _log_softmax(self, i: int) -> NDArray[np.float64]:
        import numpy as np

        ptr = self.lib.llama_get_logits_ith(self.ctx, i)
        logits = np.ctypeslib.as_array(
            ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), shape=(self.n_vocab,)
        ).astype(np.float64)
        m = float(logits.max())
        out: NDArray[np.float64] = logits - m - math.log(float(np.exp(logits - m).sum()))
        return out

    def _logprob(self, i: int, target: int) -> float:
        return float(self._log_softmax(i)[target])

    def close(self) -> None:
        self.lib.llama_batch_free(self.batch)
        self.lib.llama_free(self.ctx)
        self.lib.llama_model_free(self.model)


def gguf_continuation_logprobs(
    gguf_path: Path,
    requests: list[tuple[str, str]],
    *,
    n_threads: int | None = None,
    n_ctx: int = 512,
    kv_cache: KvCacheSettings | None = None,
) -> list[float]:
    """For each (context, continuation): the sum of the log-probabilities of the continuation's
    tokens given the context, under the GGUF model (llama.cpp on the CPU).

    Attention runs with ``kv_cache`` (default: llama.cpp's own, an F16 K/V cache with flash
    attention where it chooses): a deployment's cache types, so a q4_0 cache's rounding is part
    of what is scored. ``KvCacheSettings.f32()`` computes attention in F32 as torch does: for
    checks against the HF model, where the F16 cache's rounding would otherwise be part of the
    difference."""
    if not requests:
        return []
    model = _Model(Path(gguf_path), n_ctx, n_threads or os.cpu_count() or 1, kv_cache)
    try:
        encoded: list[tuple[list[int], int]] = []
        for context, continuation in requests:
            ctx_text, cont_text = split_request(context, continuation)
            ctx_tokens = model.tokenize(ctx_text)
            whole = model.tokenize(ctx_text + cont_text)
            n_cont = len(whole) - len(ctx_tokens)
            if n_cont <= 0:
                raise HaqaError(f"continuation {continuation!r} adds no tokens: check the task")
            if n_cont >= n_ctx:
                raise HaqaError(f"a continuation of {n_cont} tokens does not fit n_ctx={n_ctx}")
            whole = whole[-(n_ctx + 1) :]  # keep the tail, as lm-eval does
            encoded.append((whole, len(whole) - n_cont))
        # Sorted, requests sharing a context follow each other and reuse its K/V.
        order = sorted(range(len(encoded)), key=lambda i: encoded[i][0])
        out = [0.0] * len(encoded)
        for i in order:
            tokens, first = encoded[i]
            out[i] = model.score(tokens, max(first, 1))
        return out
    finally:
        model.close()


def gguf_token_distributions(
    gguf_path: Path,
    texts: list[str],
    *,
    n_threads: int | None = None,
    n_ctx: int = 512,
    kv_cache: KvCacheSettings | None = None,
) -> list[NDArray[np.float64]]:
    """For each text (BOS added, the tail kept past ``n_ctx``): the model's log-probabilities
    over the whole vocabulary at every position, ``[n_tokens - 1, n_vocab]``. Two quant types of
    one model tokenize alike, so their rows compare position by position (``divergence``).
    Rows are float64, ``n_vocab`` wide: meant for short texts (a 512-token text at a 128k
    vocabulary takes 0.5 GB). ``kv_cache`` as for ``gguf_continuation_logprobs``."""
    model = _Model(Path(gguf_path), n_ctx, n_threads or os.cpu_count() or 1, kv_cache)
    try:
        out = []
        for text in texts:
            tokens = model.tokenize(text)[-(n_ctx + 1) :]
            if len(tokens) < 2:
                raise HaqaError(f"text {text!r} has fewer than 2 tokens: nothing to predict")
            out.append(model.distributions(tokens))
        return out
    finally:
        model.close()


def gguf_window_distributions(
    gguf_path: Path,
    text: str,
    *,
    n_ctx: int = 256,
    max_windows: int = 2,
    n_threads: int | None = None,
) -> list[NDArray[np.float32]]:
    """The model's log-probabilities over the vocabulary at every position of the first
    ``max_windows`` windows of ``n_ctx`` tokens of ``text`` (each decoded from an empty cache,
    as ``gguf_perplexity`` cuts them): ``[n_ctx - 1, n_vocab]`` float32 rows per window. A text
    shorter than one window is one window of all its tokens. Quant types of one model tokenize
    alike, so two files' windows compare row by row (``divergence``)."""
    import numpy as np

    model = _Model(Path(gguf_path), n_ctx, n_threads or os.cpu_count() or 1)
    try:
        tokens = model.tokenize(text)
        windows = [tokens[i : i + n_ctx] for i in range(0, len(tokens) - n_ctx + 1, n_ctx)]
        windows = windows[:max_windows] or [tokens]
        if len(windows[0]) < 2:
            raise HaqaError("the text has fewer than 2 tokens: nothing to predict")
        return [model.distributions(w).astype(np.float32) for w in windows]
    finally:
        model.close()


class Perplexity(BaseModel):
    perplexity: float = Field(description="exp of the mean negative log-likelihood per token")
    n_tokens: int = Field(description="tokens scored")
    n_chunks: int


def gguf_perplexity(
    gguf_path: Path,
    text: str,
    *,
    n_ctx: int = 512,
    n_threads: int | None = None,
    kv_cache: KvCacheSettings | None = None,
    max_chunks: int | None = None,
    skip_chunks: int = 0,
) -> Perplexity:
    """Perplexity of a GGUF over ``text`` as llama.cpp's ``llama-perplexity`` measures it: the
    tokenized text cut into windows of ``n_ctx`` tokens, each decoded from an empty cache, and
    only the second half of each window scored (every scored token sees at least n_ctx/2 tokens
    of context). Streams window by window, so a long text costs no memory. ``skip_chunks``
    windows are passed over first: two disjoint parts of one text, one to select on and one to
    report (a run's validation and test perplexity)."""
    model = _Model(Path(gguf_path), n_ctx, n_threads or os.cpu_count() or 1, kv_cache)
    try:
        tokens = model.tokenize(text)
        windows = [tokens[i : i + n_ctx] for i in range(0, len(tokens) - n_ctx + 1, n_ctx)]
        windows = windows[skip_chunks:]
        if max_chunks is not None:
            windows = windows[:max_chunks]
        if not windows:
            raise HaqaError(
                f"the text has {len(tokens)} tokens: fewer than {skip_chunks + 1} windows of "
                f"{n_ctx}; give a longer text"
            )
        nll, scored = 0.0, 0
        for window in windows:
            model.cached = []  # each window starts from an empty cache, as llama-perplexity
            model.lib.llama_memory_seq_rm(model.mem, 0, 0, -1)
            nll -= model.score(window, n_ctx // 2)
            scored += len(window) - n_ctx // 2
        return Perplexity(perplexity=math.exp(nll / scored), n_tokens=scored, n_chunks=len(windows))
    finally:
        model.close()


def divergence(
    reference: Sequence[NDArray[np.floating[Any]]], other: Sequence[NDArray[np.floating[Any]]]
) -> tuple[float, float]:
    """``(mean KL(reference || other) per position, share of positions with the same top
    token)`` over two models' ``gguf_token_distributions`` of the same texts: what llama.cpp's
    ``llama-perplexity --kl-divergence`` reports as mean KLD and "same top p"."""
    import numpy as np

    if [r.shape for r in reference] != [o.shape for o in other]:
        raise HaqaError("the two models' distributions differ in shape: score the same texts")
    pairs = list(zip(reference, other, strict=True))
    kl = np.concatenate([_kl_rows(p, q) for p, q in pairs])
    same = np.concatenate([p.argmax(axis=1) == q.argmax(axis=1) for p, q in pairs])
    return float(kl.mean()), float(same.mean())


def _kl_rows(p: NDArray[np.floating[Any]], q: NDArray[np.floating[Any]]) -> NDArray[np.float64]:
    """KL(p || q) of each row of two log-probability arrays, summed in float64 (float32 rows
    of two close models would lose the difference in the rounding)."""
    import numpy as np

    p64, q64 = p.astype(np.float64), q.astype(np.float64)
    out: NDArray[np.float64] = (np.exp(p64) * (p64 - q64)).sum(axis=1)
    return out


def gguf_loglik(args: Args) -> Result:
    """Typed wrapper of ``gguf_continuation_logprobs`` for agents and the CLI."""
    return Result(
        logprobs=gguf_continuation_logprobs(
            args.gguf_path,
            args.requests,
            n_threads=args.n_threads,
            n_ctx=args.n_ctx,
            kv_cache=args.kv_cache,
        )
    )
