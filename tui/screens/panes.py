"""What the live-run and the replay screens share: the three tabbed panes, zoom, help."""

from __future__ import annotations

from typing import ClassVar

from textual.screen import Screen
from textual.widgets import TabbedContent

from haqa.tui.screens.help import HelpScreen

TABS = ("tab-trials", "tab-pareto", "tab-brief")


class PaneScreen(Screen[None]):
    """A screen showing ``RunPanes``; ``HELP_TOPIC`` names its page of the help."""

    HELP_TOPIC: ClassVar[str] = "home"

    def action_next_tab(self) -> None:
        tabs = self.query_one(TabbedContent)
        tabs.active = TABS[(TABS.index(tabs.active) + 1) % len(TABS)] if tabs.active else TABS[0]

    def action_maximize_pane(self) -> None:
        if self.maximized is not None:
            self.minimize()
        elif self.focused is not None:
            self.maximize(self.focused)

    def action_help(self) -> None:
        self.app.push_screen(HelpScreen(self.HELP_TOPIC))
