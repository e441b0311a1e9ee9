"""A help screen: the Markdown file that sits beside the screen that asked for it."""

from __future__ import annotations

from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Footer, Markdown

HERE = Path(__file__).parent


def help_text(name: str) -> str:
    """``screens/<name>.md`` followed by the keys every screen shares (``tui/help.md``)."""
    own = (HERE / f"{name}.md").read_text(encoding="utf-8")
    common = (HERE.parent / "help.md").read_text(encoding="utf-8")
    return own + "\n\n" + common


class HelpScreen(ModalScreen[None]):
    BINDINGS = [  # noqa: RUF012
        Binding("escape,q,question_mark", "dismiss", "Close"),
    ]

    def __init__(self, name: str) -> None:
        super().__init__()
        self._text = help_text(name)

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-box"):
            yield Markdown(self._text)
        yield Footer()

    def action_dismiss(self) -> None:  # type: ignore[override]
        self.dismiss(None)
