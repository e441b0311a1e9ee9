"""The replay timeline: where the replay is in the trace, as a bar with the trial marks on it."""

from __future__ import annotations

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget


class Timeline(Widget):
    step: reactive[int] = reactive(0)
    total: reactive[int] = reactive(0)
    speed: reactive[float] = reactive(4.0)
    playing: reactive[bool] = reactive(False)

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.marks: list[int] = []  # steps at which a trial appears

    def render(self) -> Text:
        head = f"{'▶' if self.playing else '❚❚'} step {self.step}/{self.total} · {self.speed:g}/s "
        width = max(10, self.size.width - len(head) - 1)
        bar = ["─"] * width
        if self.total:
            for mark in self.marks:
                bar[min(width - 1, (mark - 1) * width // self.total)] = "┼"
            filled = self.step * width // self.total
            for i in range(min(filled, width)):
                bar[i] = "━" if bar[i] == "─" else "╋"
        text = Text(head, style="bold")
        done = self.step * width // self.total if self.total else 0
        text.append("".join(bar[:done]), style="cyan")
        text.append("".join(bar[done:]), style="dim")
        return text
