"""The run's facts: model, goal, brain, the hardware analyst's brief and, when there is one, the
result with its ready command line."""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import Static

from haqa.store import MessageRecord, RunRecord
from haqa.tui.state import brief_text, goal_of


def brief_renderable(run: RunRecord, messages: Sequence[MessageRecord]) -> Text:
    goal = goal_of(run)
    out = Text()
    out.append("run ", style="bold")
    out.append(f"{run.run_id}\n")
    out.append("model ", style="bold")
    out.append(f"{run.model}   ")
    out.append("brain ", style="bold")
    out.append(f"{run.brain}\n")
    out.append("goal ", style="bold")
    out.append((goal.describe() if goal else "-") + "\n\n")
    brief = brief_text(messages)
    out.append("Hardware brief\n", style="bold underline")
    out.append((brief or "(the hardware analyst has not reported yet)") + "\n")
    result = next((m.tool_result for m in messages if m.tool_name == "result"), None)
    if isinstance(result, dict):
        out.append("\nResult\n", style="bold underline")
        done = next(m for m in messages if m.tool_name == "result")
        out.append(done.content + "\n")
        if result.get("llama_server_cmd"):
            out.append(str(result["llama_server_cmd"]) + "\n", style="dim")
    return out


class BriefPane(VerticalScroll):
    can_focus = True

    def compose(self) -> ComposeResult:
        yield Static(id="brief-text")

    def sync(self, run: RunRecord, messages: Sequence[MessageRecord]) -> None:
        self.query_one("#brief-text", Static).update(brief_renderable(run, messages))
