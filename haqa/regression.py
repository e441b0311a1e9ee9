"""The regression gate: is a new answer worse than a stored run's, by more than the user allows?

``--max-regression decode=5%,accuracy=1pt`` names, per figure, how much worse the new answer may
be than the baseline's before the gate fails. Speeds (``decode``, ``prefill``) may fall by that
share, ``perplexity`` and ``memory`` (peak) may rise by it, ``accuracy`` may fall by that many
points (validation, the split the goal is judged on). A negative limit demands an improvement of
at least that much (``decode=-10%``: at least 10% faster), which is how a pipeline checks that a
change it made pays off. A limited figure that either side did not measure fails the gate, named
in the reason (``compared=False``): a gate that passed because nothing was compared would be a
lie.

Pure functions over the figures, so the rule is tested without running anything; measuring the
baseline again beside the new answer is the supervisor's (``agents/supervisor/regression.py``).
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, Field

from haqa.errors import HaqaError

RegressionMetric = Literal["decode", "prefill", "accuracy", "perplexity", "memory"]
#: Figures where higher is better; the others (perplexity, memory) are better lower.
HIGHER_IS_BETTER: tuple[RegressionMetric, ...] = ("decode", "prefill", "accuracy")
#: The unit each limit is written in: accuracy in points, the others as a share of the baseline.
UNITS: dict[RegressionMetric, str] = {
    "decode": "%",
    "prefill": "%",
    "accuracy": "pt",
    "perplexity": "%",
    "memory": "%",
}
#: What ``--baseline`` gates on when no ``--max-regression`` is given.
DEFAULT_LIMITS = "decode=5%,accuracy=1pt"
_ITEM = re.compile(r"^\s*([a-z_]+)\s*=\s*(-?[0-9]*\.?[0-9]+)\s*(%|pt)\s*$")


class RegressionLimits(BaseModel):
    """How much worse than the baseline each figure may be (None: not gated)."""

    decode: float | None = Field(None, description="share of decode tokens/s it may lose")
    prefill: float | None = Field(None, description="share of prefill tokens/s it may lose")
    accuracy: float | None = Field(None, description="accuracy points it may lose (validation)")
    perplexity: float | None = Field(None, description="share its perplexity may rise")
    memory: float | None = Field(None, description="share its peak memory may rise")

    @classmethod
    def parse(cls, text: str) -> RegressionLimits:
        """``decode=5%,accuracy=1pt`` → limits; a one-line error names the item to fix."""
        limits: dict[str, float] = {}
        for item in (i for i in text.split(",") if i.strip()):
            match = _ITEM.match(item)
            if not match:
                raise HaqaError(
                    f"--max-regression item {item.strip()!r}: write METRIC=VALUE% (accuracy: "
                    f"VALUE pt), e.g. {DEFAULT_LIMITS}"
                )
            name, value, unit = match.groups()
            if name not in UNITS:
                raise HaqaError(
                    f"--max-regression: unknown figure {name!r}; one of {', '.join(UNITS)}"
                )
            if unit != UNITS[name]:  # type: ignore[index]
                raise HaqaError(
                    f"--max-regression {name}: write it in {UNITS[name]}"  # type: ignore[index]
                    + (
                        " (accuracy points, e.g. accuracy=1pt)"
                        if name == "accuracy"
                        else f" (a share of the baseline's figure, e.g. {name}=5%)"
                    )
                )
            if name in limits:
                raise HaqaError(f"--max-regression names {name} twice")
            limits[name] = float(value) / 100 if unit == "%" else float(value)
        if not limits:
            raise HaqaError(f"--max-regression is empty: e.g. {DEFAULT_LIMITS}")
        return cls(**limits)

    def items(self) -> list[tuple[RegressionMetric, float]]:
        return [(m, v) for m in UNITS if (v := getattr(self, m)) is not None]

    def describe(self) -> str:
        return ",".join(
            f"{m}={v:g}pt" if m == "accuracy" else f"{m}={v * 100:g}%" for m, v in self.items()
        )


class GateSpec(BaseModel):
    """What a run is gated against: the run as resolved at its start, and the limits."""

    requested: str = Field(description="--baseline as given: a run id or latest")
    baseline_run: str | None = Field(description="None: latest found no run to compare with")
    limits: RegressionLimits


class Figures(BaseModel):
    """One side of the comparison, and how its figures were obtained."""

    decode: float | None = Field(None, description="decode tokens/s")
    prefill: float | None = Field(None, description="prefill tokens/s")
    accuracy: float | None = Field(None, description="validation accuracy, 0..1")
    perplexity: float | None = None
    memory: float | None = Field(None, description="peak memory, bytes")


class RegressionCheck(BaseModel):
    """One figure, compared."""

    metric: RegressionMetric
    baseline: float | None
    new: float | None
    change: float | None = Field(
        None, description="new vs baseline: a share (speed, perplexity, memory) or points"
    )
    limit: float
    compared: bool = Field(description="both sides measured it")
    passed: bool

    def describe(self) -> str:
        unit = UNITS[self.metric]
        size = abs(self.limit)
        amount = f"{size:g} pt" if unit == "pt" else f"{size * 100:g}%"
        limit = f"may be {amount} worse" if self.limit >= 0 else f"must be {amount} better"
        if not self.compared:
            side = "the baseline" if self.baseline is None else "this run"
            return f"{self.metric}: not measured by {side} ({limit}): FAILED"
        change = self.change or 0.0
        moved = f"{change:+.1f} pt" if unit == "pt" else f"{change * 100:+.1f}%"
        return f"{self.metric} {moved} ({limit}): {'ok' if self.passed else 'FAILED'}"


class RegressionReport(BaseModel):
    """The gate's verdict against one stored run."""

    baseline_run: str | None = Field(description="the run compared with (None: none found)")
    limits: str = Field(description="the limits, as --max-regression takes them")
    basis: str = Field(
        "", description="how the baseline's figures were obtained (measured again or stored)"
    )
    checks: list[RegressionCheck] = Field(default_factory=list)
    passed: bool = True
    note: str | None = None

    def reason(self) -> str:
        """One line: what failed, or what passed."""
        if self.baseline_run is None:
            return f"regression gate skipped: {self.note or 'no baseline'}"
        failed = [c for c in self.checks if not c.passed]
        shown = failed or self.checks
        verdict = "FAILED" if failed else "passed"
        return (
            f"regression gate {verdict} against run {self.baseline_run} ({self.basis}): "
            + "; ".join(c.describe() for c in shown)
        )


def check(limits: RegressionLimits, baseline: Figures, new: Figures) -> list[RegressionCheck]:
    """Each limited figure of ``new`` against ``baseline``."""
    out = []
    for metric, limit in limits.items():
        old, now = getattr(baseline, metric), getattr(new, metric)
        if old is None or now is None or (metric != "accuracy" and not old):
            out.append(
                RegressionCheck(
                    metric=metric, baseline=old, new=now, limit=limit, compared=False, passed=False
                )
            )
            continue
        change = (now - old) * 100 if metric == "accuracy" else now / old - 1  # points: accuracy
        worse = -change if metric in HIGHER_IS_BETTER else change
        # 1e-9: a figure equal to its limit passes (float noise of a ratio must not fail it).
        out.append(
            RegressionCheck(
                metric=metric,
                baseline=old,
                new=now,
                change=change,
                limit=limit,
                compared=True,
                passed=worse <= limit + 1e-9,
            )
        )
    return out
