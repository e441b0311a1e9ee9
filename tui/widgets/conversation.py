"""The agents' conversation: every trace message, coloured by agent.

Prompts, thoughts, tool calls and tool results are collapsed to one line (expand with a click or
Enter); long bodies are folded to a few lines. ``sync`` appends new messages or drops the ones past
a replay step, so stepping through a long run never rebuilds the whole pane.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text
from textual.containers import VerticalScroll
from textual.widget import Widget
from textual.widgets import Collapsible, Static

from haqa.store import MessageRecord
from haqa.tui.state import fold, message_body

#: Roles shown collapsed: long or secondary to the story of the run.
COLLAPSED_ROLES = ("system", "user", "thought", "tool_call", "tool_result")
KNOWN_AGENTS = ("supervisor", "analyst", "planner", "tuner")


def _title(message: MessageRecord) -> str:
    first = message.content.splitlines()[0] if message.content else ""
    return f"{message.seq:>3} {message.agent} · {message.role}: {first[:90]}"


def _entry(message: MessageRecord) -> Widget:
    agent = message.agent if message.agent in KNOWN_AGENTS else "other"
    classes = f"msg agent-{agent} role-{message.role}"
    body, hidden = fold(message_body(message))
    text = Text(body)
    if hidden:
        text.append(f"\n… {hidden} more lines", style="italic dim")
    if message.role in COLLAPSED_ROLES:
        return Collapsible(
            Static(text, classes="msg-body"),
            title=_title(message),
            collapsed=True,
            classes=classes,
        )
    head = Text(f"{message.seq:>3} {message.agent} · {message.role}\n", style="bold")
    return Static(head + text, classes=classes)


class ConversationView(VerticalScroll):
    """The trace as it grows; follows the newest message unless the user scrolled up."""

    can_focus = True

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._shown: list[tuple[int, Widget]] = []  # (seq, widget) in order

    @property
    def count(self) -> int:
        return len(self._shown)

    def sync(self, messages: Sequence[MessageRecord]) -> None:
        """Show exactly ``messages`` (a prefix-growing or -shrinking list of one run's trace)."""
        keep = 0
        while (
            keep < len(self._shown)
            and keep < len(messages)
            and self._shown[keep][0] == messages[keep].seq
        ):
            keep += 1
        follow = self.is_vertical_scroll_end or self.max_scroll_y == 0
        stale = [w for _, w in self._shown[keep:]]
        if stale:
            self.remove_children(stale)
        self._shown = self._shown[:keep]
        new = [(m.seq, _entry(m)) for m in messages[keep:]]
        if new:
            self.mount_all([w for _, w in new])
            self._shown.extend(new)
        if follow and (new or stale):
            self.call_after_refresh(self.scroll_end, animate=False)
