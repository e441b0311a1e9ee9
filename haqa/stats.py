"""How sure a measured accuracy is: intervals for one model, and paired comparisons of two models
answering the same questions.

A deployment is judged against its reference on the *same* questions, so the comparison is
paired: only the questions where the two disagree carry information (McNemar's test). With 100
questions a single flipped answer moves accuracy one point, and the 95% interval of a paired
difference is several points wide, so a 1-point goal judged on them is finer than the measurement
can resolve; :func:`compare_paired` says so instead of letting noise decide.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from pydantic import BaseModel, Field

Z95 = 1.959963984540054


def mean_of_measured(values: Sequence[float | int | None]) -> float | None:
    """The mean of the figures that were measured (None or 0: nothing measured); None if none."""
    known = [v for v in values if v]
    return sum(known) / len(known) if known else None


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """95% Wilson score interval of a proportion k/n (sound near 0 and 1, unlike k/n ± z·se)."""
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def _binom_two_sided(b: int, c: int) -> float:
    """Exact two-sided p of McNemar's test: b of b + c discordant pairs under p = 1/2."""
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0**n
    return min(1.0, 2 * tail)


class PairedComparison(BaseModel):
    """A candidate's answers against the reference's, question by question."""

    n: int = Field(description="questions both answered")
    reference_accuracy: float
    candidate_accuracy: float
    difference: float = Field(description="candidate - reference accuracy")
    lost: int = Field(description="questions the reference got right and the candidate wrong")
    gained: int = Field(description="questions the candidate got right and the reference wrong")
    ci_low: float = Field(description="95% interval of the difference, low end")
    ci_high: float = Field(description="95% interval of the difference, high end")
    p_value: float = Field(description="exact McNemar two-sided p (no difference)")
    resolution: float = Field(
        description="half-width of the 95% interval: differences smaller than this are noise"
    )

    def resolves(self, tolerance: float) -> bool:
        """Whether a tolerance this fine can be told apart from noise on these questions: the
        interval's half-width is no wider than the tolerance."""
        return self.resolution <= tolerance + 1e-12

    def summary(self) -> str:
        return (
            f"{self.difference * 100:+.1f} pt on {self.n} paired questions (lost {self.lost}, "
            f"gained {self.gained}; 95% CI {self.ci_low * 100:+.1f} to {self.ci_high * 100:+.1f} "
            f"pt; McNemar p={self.p_value:.2g})"
        )


def compare_paired(reference: str, candidate: str) -> PairedComparison:
    """Paired comparison of two '1'/'0' answer strings over the same questions, in order.

    The interval of the difference is the Wald interval of paired proportions with a continuity
    correction of one question, floored at one question either way: honest on a few hundred
    questions, and never narrower than the measurement's own granularity."""
    if len(reference) != len(candidate):
        raise ValueError(
            f"answers of different question sets ({len(reference)} vs {len(candidate)})"
        )
    n = len(reference)
    if n == 0:
        raise ValueError("no questions to compare")
    lost = sum(1 for r, c in zip(reference, candidate, strict=True) if r == "1" and c == "0")
    gained = sum(1 for r, c in zip(reference, candidate, strict=True) if r == "0" and c == "1")
    ref_acc = reference.count("1") / n
    cand_acc = candidate.count("1") / n
    diff = (gained - lost) / n
    var = max(0.0, (gained + lost) - (gained - lost) ** 2 / n) / (n * n)
    half = Z95 * math.sqrt(var) + 1.0 / n
    return PairedComparison(
        n=n,
        reference_accuracy=ref_acc,
        candidate_accuracy=cand_acc,
        difference=diff,
        lost=lost,
        gained=gained,
        ci_low=diff - half,
        ci_high=diff + half,
        p_value=_binom_two_sided(lost, gained),
        resolution=half,
    )


def questions_to_resolve(tolerance: float, disagreement: float = 0.1) -> int:
    """About how many questions a paired comparison needs for its 95% interval to be no wider
    than ``tolerance`` either way, when the two models disagree on ``disagreement`` of them."""
    if tolerance <= 0:
        return 10**9
    # half = z·sqrt(d/n) + 1/n <= t  →  solve for n by iteration (monotone in n).
    n = 1
    while Z95 * math.sqrt(disagreement / n) + 1.0 / n > tolerance and n < 10**9:
        n *= 2
    lo, hi = n // 2, n
    while lo + 1 < hi:
        mid = (lo + hi) // 2
        if Z95 * math.sqrt(disagreement / mid) + 1.0 / mid > tolerance:
            lo = mid
        else:
            hi = mid
    return hi


def paired_resolution(n: int, disagreement: float = 0.1) -> float:
    """Half-width of the 95% interval of a paired difference on ``n`` questions when the two
    models disagree on ``disagreement`` of them (the same formula as ``compare_paired``)."""
    if n <= 0:
        return 1.0
    return Z95 * math.sqrt(disagreement / n) + 1.0 / n


def resolution_statement(n: int, tolerance: float, disagreement: float = 0.1) -> str | None:
    """A plain sentence when a goal's accuracy tolerance (a fraction) is finer than ``n`` paired
    questions can resolve; None when it is not. The 10% disagreement is what a 4-bit type of a
    small real model shows against its reference (SmolLM2-135M: Q4_K_M differs on 8-12%)."""
    half = paired_resolution(n, disagreement)
    if half <= tolerance + 1e-12:
        return None
    need = questions_to_resolve(tolerance, disagreement)
    return (
        f"the goal's tolerance of {tolerance * 100:g} points is finer than this measurement "
        f"resolves: on {n} paired questions a difference within ±{half * 100:.1f} points is "
        f"noise (95%, at {disagreement:.0%} of answers differing); about {need} questions "
        "would resolve it, so a type judged feasible or not by less than that may be judged "
        "by chance"
    )
