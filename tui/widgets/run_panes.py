"""The four panes both the live run and the replay show: conversation on one side, and trials,
Pareto plot and hardware brief as tabs on the other. Wide terminals put them side by side,
narrow ones stack them (``haqa.tcss``)."""

from __future__ import annotations

from collections.abc import Sequence

from textual.app import ComposeResult
from textual.containers import Container
from textual.widgets import TabbedContent, TabPane

from haqa.store import MessageRecord, RunRecord, TrialRecord
from haqa.tui.widgets.brief import BriefPane
from haqa.tui.widgets.conversation import ConversationView
from haqa.tui.widgets.pareto import ParetoPane
from haqa.tui.widgets.trials_table import TrialsTable


class RunPanes(Container):
    def compose(self) -> ComposeResult:
        yield ConversationView(id="conversation")
        with TabbedContent(id="tabs", initial="tab-trials"):
            with TabPane("Trials", id="tab-trials"):
                yield TrialsTable(id="trials")
            with TabPane("Pareto", id="tab-pareto"):
                yield ParetoPane(id="pareto")
            with TabPane("Brief", id="tab-brief"):
                yield BriefPane(id="brief")

    def sync(
        self,
        run: RunRecord,
        messages: Sequence[MessageRecord],
        trials: Sequence[TrialRecord],
    ) -> None:
        self.query_one(ConversationView).sync(messages)
        self.query_one(TrialsTable).sync(trials)
        self.query_one(ParetoPane).sync(run, trials)
        self.query_one(BriefPane).sync(run, messages)
