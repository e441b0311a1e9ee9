"""The final race: the answer never loses to a default it measured.

A search trial's speed was taken once, under whatever load the machine had then; the defaults a
user would otherwise deploy (llama.cpp's own settings at F16 and Q4_K_M) are measured only at the
end. So the answer is decided by a race measured side by side: the chosen configuration before and
after the baselines, the runners-up in the same brackets, and the defaults in between. A runner-up
must beat the chosen configuration by more than the measurement's noise to take its place. A
default that meets the goal takes it as soon as it measured faster at all: a configuration the
race cannot tell from the default is worth nothing over it, the default is what a user runs
without haqa, and an answer reported slower than a default it was measured beside is no answer
(the demo's 0.97x: flash attention on against off, a tie on a small model). Pure functions over
the measured figures, so the rule is tested without running anything.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, Field

#: A rival must beat the chosen configuration by more than this share (or twice the measured
#: relative standard deviation, whichever is larger) to take its place: within noise, the search's
#: choice stands, so the same run on the same machine answers the same.
MIN_MARGIN = 0.02


class Entrant(BaseModel):
    """One configuration in the race, with what the race measured of it."""

    name: str = Field(description="'chosen', 'runner-up N' or 'default Q4_K_M'")
    config: dict[str, object]
    objective: float | None = Field(description="the goal's objective, mean of its rounds")
    rsd: float = Field(0.0, description="relative spread of its rounds (or the benchmark's rsd)")
    meets_goal: bool = Field(
        description="kept the accuracy floor (and the perplexity floor, where the goal has one) "
        "and fits the memory budget"
    )
    default: bool = Field(False, description="llama.cpp's defaults: wins a tie it measured faster")
    trial_ids: list[int] = Field(default_factory=list)


def winner(chosen: Entrant, rivals: Sequence[Entrant]) -> Entrant:
    """The chosen configuration, unless a rival that meets the goal beats it: a default by any
    measured amount, a runner-up beyond noise (the fastest such rival then)."""
    if chosen.objective is None:
        return chosen
    best = chosen
    for rival in rivals:
        if not rival.meets_goal or rival.objective is None or rival.config == chosen.config:
            continue
        margin = 0.0 if rival.default else max(MIN_MARGIN, 2 * max(chosen.rsd, rival.rsd))
        if rival.objective > chosen.objective * (1 + margin) and (
            best is chosen or rival.objective > (best.objective or 0.0)
        ):
            best = rival
    return best


def spread(values: Sequence[float | None]) -> float:
    """(max - min) / mean of the measured values (0 with fewer than two)."""
    known = [v for v in values if v]
    if len(known) < 2:
        return 0.0
    mean = sum(known) / len(known)
    return (max(known) - min(known)) / mean
