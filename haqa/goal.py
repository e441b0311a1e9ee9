"""The user's goal, stated explicitly: one primary metric, an accuracy floor and a memory budget.

``decode``  maximise generation tokens/s (chat, streaming);
``prefill`` maximise prompt-processing tokens/s (RAG, classification of long inputs);
``workload:P+G`` minimise the latency of one request of P prompt and G generated tokens, i.e.
maximise ``1 / (P / pp_tps + G / tg_tps)`` requests per second — the weighted mix a user means by
"1500 prompt + 200 generated tokens".

Constraints: deployed accuracy ≥ reference − ``max_accuracy_drop`` (the reference is the
fine-tuned model's accuracy before quantization), and predicted/measured peak memory ≤ budget.
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

    @classmethod
    def parse(
        cls, text: str, *, max_accuracy_drop_points: float = 1.0, memory_budget: str | None = None
    ) -> Goal:
        """From CLI words: ``decode``, ``prefill`` or ``workload:1500+200``."""
        text = text.strip().lower()
        drop = max_accuracy_drop_points / 100.0
        if not 0.0 <= drop <= 1.0:
            raise HaqaError(
                f"--max-accuracy-drop {max_accuracy_drop_points} is out of range: use 0..100 points"
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
            )
        if text not in ("decode", "prefill"):
            raise HaqaError(
                f"unknown goal {text!r}: use decode, prefill or workload:PROMPT+GEN "
                "(e.g. workload:1500+200)"
            )
        return cls(metric=text, max_accuracy_drop=drop, memory_budget_bytes=budget)  # type: ignore[arg-type]

    def keeps_accuracy(self, accuracy: float | None, reference: float | None) -> bool:
        """Accuracy at or above ``reference - max_accuracy_drop`` (a tolerance of 1e-9 absorbs
        float rounding); true when either side was not measured: nothing to judge."""
        if accuracy is None or reference is None:
            return True
        return accuracy >= reference - self.max_accuracy_drop - 1e-9

    def fits_memory(self, peak_bytes: int | None) -> bool:
        """Within the memory budget (true without a budget or a figure)."""
        budget = self.memory_budget_bytes
        return budget is None or peak_bytes is None or peak_bytes <= budget

    def feasible(self, metrics: TrialMetrics, reference: float | None) -> bool:
        """The supervisor's rule for a measured deployment: it measured what the goal
        maximises, kept the accuracy floor and fits the memory budget."""
        return (
            self.objective(metrics) is not None
            and self.keeps_accuracy(metrics.accuracy, reference)
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
        return (
            f"maximise {self.objective_name} subject to accuracy >= reference - "
            f"{self.max_accuracy_drop * 100:g} points and peak memory <= {budget}"
        )
