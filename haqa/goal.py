"""The user's goal, stated explicitly: one primary metric, quality floors and a memory budget.

``decode``  maximise generation tokens/s (chat, streaming);
``prefill`` maximise prompt-processing tokens/s (RAG, classification of long inputs);
``workload:P+G`` minimise the latency of one request of P prompt and G generated tokens, i.e.
maximise ``1 / (P / pp_tps + G / tg_tps)`` requests per second — the weighted mix a user means by
"1500 prompt + 200 generated tokens".

Constraints: deployed accuracy ≥ reference − ``max_accuracy_drop`` (the reference is the
fine-tuned model's accuracy before quantization), and predicted/measured peak memory ≤ budget.
Optionally also perplexity ≤ the reference's × (1 + ``max_perplexity_increase``), over held-out
prose: the floor llama.cpp users judge a quantization by (``llama-perplexity``). It resolves far
finer than task accuracy: a few hundred multiple-choice questions tell apart only differences of
several points (±4–5 at 95% for 261 paired questions), while the perplexity of two files of one
model over the same 4,096 scored tokens moves by well under 1% between runs, so a goal such as
"within 3% of the reference's perplexity under 235 MiB" is judged by the files, not by chance.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field

from haqa.errors import HaqaError
from haqa.schemas import Strict, TrialMetrics
from haqa.units import format_bytes, parse_bytes

GoalMetric = Literal["decode", "prefill", "workload"]
_WORKLOAD = re.compile(r"^workload:(\d+)\+(\d+)$")


class Goal(Strict):
    metric: GoalMetric = Field("decode", description="what to maximise")
    prompt_tokens: int = Field(1500, ge=1, le=1_000_000, description="workload prompt length")
    gen_tokens: int = Field(200, ge=1, le=1_000_000, description="workload generated tokens")
    max_accuracy_drop: float = Field(
        0.01, ge=0.0, le=1.0, description="allowed accuracy loss vs the reference, 0..1"
    )
    memory_budget_bytes: int | None = Field(None, ge=1, description="peak memory allowed")
    max_perplexity_increase: float | None = Field(
        None,
        ge=0.0,
        le=100.0,
        description="allowed perplexity rise over the reference's, as a fraction (0.03: 3%); "
        "None: perplexity is not a floor",
    )

    @classmethod
    def parse(
        cls,
        text: str,
        *,
        max_accuracy_drop_points: float = 1.0,
        memory_budget: str | None = None,
        max_perplexity_increase_pct: float | None = None,
    ) -> Goal:
        """From CLI words: ``decode``, ``prefill`` or ``workload:1500+200``; the floors in
        points (accuracy) and percent (perplexity)."""
        text = text.strip().lower()
        drop = max_accuracy_drop_points / 100.0
        if not 0.0 <= drop <= 1.0:
            raise HaqaError(
                f"--max-accuracy-drop {max_accuracy_drop_points} is out of range: use 0..100 points"
            )
        ppl_rise = None
        if max_perplexity_increase_pct is not None:
            ppl_rise = max_perplexity_increase_pct / 100.0
            if not 0.0 <= ppl_rise <= 100.0:
                raise HaqaError(
                    f"--max-perplexity-increase {max_perplexity_increase_pct} is out of range: "
                    "use 0..10000 percent of the reference's perplexity (e.g. 3)"
                )
        budget = parse_bytes(memory_budget, what="memory budget") if memory_budget else None
        if budget is not None and budget <= 0:
            raise HaqaError("memory budget must be positive, e.g. 4GiB")
        match = _WORKLOAD.match(text)
        if match:
            return cls(
                metric="workload",
                prompt_tokens=int(match.group(1)),
                gen_tokens=int(match.group(2)),
                max_accuracy_drop=drop,
                memory_budget_bytes=budget,
                max_perplexity_increase=ppl_rise,
            )
        if text not in ("decode", "prefill"):
            raise HaqaError(
                f"unknown goal {text!r}: use decode, prefill or workload:PROMPT+GEN "
                "(e.g. workload:1500+200)"
            )
        return cls(
            metric=text,  # type: ignore[arg-type]
            max_accuracy_drop=drop,
            memory_budget_bytes=budget,
            max_perplexity_increase=ppl_rise,
        )

    def keeps_accuracy(self, accuracy: float | None, reference: float | None) -> bool:
        """Accuracy at or above ``reference - max_accuracy_drop`` (a tolerance of 1e-9 absorbs
        float rounding); true when either side was not measured: nothing to judge."""
        if accuracy is None or reference is None:
            return True
        return accuracy >= reference - self.max_accuracy_drop - 1e-9

    def keeps_perplexity(self, perplexity: float | None, reference: float | None) -> bool:
        """Perplexity at or below the reference's × (1 + ``max_perplexity_increase``); true
        without that floor or when either side was not measured (as ``keeps_accuracy``)."""
        rise = self.max_perplexity_increase
        if rise is None or perplexity is None or reference is None:
            return True
        return perplexity <= reference * (1.0 + rise) * (1 + 1e-9)

    def fits_memory(self, peak_bytes: int | None) -> bool:
        """Within the memory budget (true without a budget or a figure)."""
        budget = self.memory_budget_bytes
        return budget is None or peak_bytes is None or peak_bytes <= budget

    def feasible(self, metrics: TrialMetrics, reference: float | None) -> bool:
        """The supervisor's rule for a measured deployment: it measured what the goal
        maximises, kept the accuracy floor (and the perplexity floor: the trial's perplexity
        beside the reference's over the same windows) and fits the memory budget."""
        return (
            self.objective(metrics) is not None
            and self.keeps_accuracy(metrics.accuracy, reference)
            and self.keeps_perplexity(metrics.perplexity, metrics.reference_perplexity)
            and self.fits_memory(metrics.peak_mem_bytes)
        )

    def objective(self, metrics: TrialMetrics) -> float | None:
        """Higher is better; None when the trial did not measure what the goal needs."""
        pp, tg = metrics.prefill_tps, metrics.decode_tps
        if self.metric == "decode":
            return tg
        if self.metric == "prefill":
            return pp
        if not pp or not tg:
            return None
        return 1.0 / (self.prompt_tokens / pp + self.gen_tokens / tg)

    @property
    def objective_name(self) -> str:
        return {
            "decode": "decode tok/s",
            "prefill": "prefill tok/s",
            "workload": f"requests/s ({self.prompt_tokens}+{self.gen_tokens} tokens)",
        }[self.metric]

    def describe(self) -> str:
        budget = format_bytes(self.memory_budget_bytes) if self.memory_budget_bytes else "none"
        ppl = (
            ""
            if self.max_perplexity_increase is None
            else f", perplexity <= reference x {1 + self.max_perplexity_increase:g}"
        )
        return (
            f"maximise {self.objective_name} subject to accuracy >= reference - "
            f"{self.max_accuracy_drop * 100:g} points{ppl} and peak memory <= {budget}"
        )
