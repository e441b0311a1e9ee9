"""Accuracy against decode speed for the measured deployments (the Pareto front joined), and the
best feasible objective found so far, trial after trial."""

from __future__ import annotations

from collections.abc import Sequence

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual_plotext import PlotextPlot

from haqa.store import RunRecord, TrialRecord
from haqa.tui.state import best_series, goal_of, pareto_front, pareto_points


class ParetoPane(Horizontal):
    def compose(self) -> ComposeResult:
        yield PlotextPlot(id="pareto-scatter")
        yield PlotextPlot(id="pareto-best")

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._key: tuple[object, ...] | None = ("unset",)

    def on_mount(self) -> None:
        self.sync(None, [])

    def sync(self, run: RunRecord | None, trials: Sequence[TrialRecord]) -> None:
        key = (run.run_id if run else None, tuple(t.trial_id for t in trials))
        if key == self._key:
            return  # nothing new: plotting is the slowest thing a replay step does
        self._key = key
        points = pareto_points(trials)
        scatter = self.query_one("#pareto-scatter", PlotextPlot)
        plt = scatter.plt
        plt.clear_figure()
        plt.title("accuracy vs decode tok/s")
        plt.xlabel("tg tok/s")
        if points:
            plt.scatter([p[1] for p in points], [p[2] for p in points], marker="dot")
            front = pareto_front(points)
            if len(front) > 1:
                plt.plot([p[1] for p in front], [p[2] for p in front], marker="braille")
        scatter.refresh()
        best = self.query_one("#pareto-best", PlotextPlot)
        plt = best.plt
        plt.clear_figure()
        goal = goal_of(run) if run else None
        plt.title(f"best so far ({goal.objective_name})" if goal else "best so far")
        plt.xlabel("trial #")
        series = best_series(run, trials) if run else []
        if series:
            xs = [s[0] for s in series]
            ys = [s[1] for s in series]
            last = max(t.trial_id for t in trials)
            if last > xs[-1]:  # the best holds until the latest trial
                xs.append(last)
                ys.append(ys[-1])
            plt.plot(xs, ys, marker="braille")
        best.refresh()
