"""Replay a recorded run: every pane shows the run as it was at one step of its trace.

Step ``k`` is the first ``k`` messages and the trials finished by then (``haqa.tui.state``
explains the rule). Step with the arrows, jump between trials, or play at a chosen speed.
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.timer import Timer
from textual.widgets import Footer, Header

from haqa.store import MessageRecord, RunRecord, Store, TrialRecord
from haqa.tui.screens.dialogs import JumpDialog
from haqa.tui.screens.panes import PaneScreen
from haqa.tui.state import (
    elapsed_at,
    status_line,
    step_of_trial,
    trial_steps,
    trials_at,
)
from haqa.tui.widgets.run_panes import RunPanes
from haqa.tui.widgets.status_bar import StatusBar
from haqa.tui.widgets.timeline import Timeline

SPEEDS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0)


class ReplayScreen(PaneScreen):
    HELP_TOPIC = "replay"
    BINDINGS = [  # noqa: RUF012
        Binding("right,l", "step(1)", "Step", priority=True),
        Binding("left,h", "step(-1)", "Back", priority=True),
        Binding("pagedown", "step(10)", "+10", show=False, priority=True),
        Binding("pageup", "step(-10)", "-10", show=False, priority=True),
        Binding("home", "goto(0)", "Start", show=False, priority=True),
        Binding("end", "goto(-1)", "End", show=False, priority=True),
        Binding("n", "next_trial", "Next trial"),
        Binding("N", "previous_trial", "Prev trial", show=False),
        Binding("j", "jump", "Jump"),
        Binding("space", "play", "Play/pause"),
        Binding("plus,equals_sign", "speed(1)", "Faster", show=False),
        Binding("minus", "speed(-1)", "Slower", show=False),
        Binding("t", "next_tab", "Next tab"),
        Binding("z", "maximize_pane", "Zoom", show=False),
        Binding("escape", "back", "Home"),
        Binding("question_mark", "help", "Help"),
        Binding("q", "app.quit", "Quit"),
    ]

    def __init__(
        self,
        run: RunRecord,
        messages: list[MessageRecord],
        trials: list[TrialRecord],
        *,
        step: int | None = None,
    ) -> None:
        super().__init__()
        self.run = run
        self.all_messages = messages
        self.all_trials = trials
        self.total = len(messages)
        self.step = self.total if step is None else max(0, min(step, self.total))
        self.speed = 4.0
        self._timer: Timer | None = None

    @classmethod
    def from_store(cls, store: Store, run_id: str, *, step: int | None = None) -> ReplayScreen:
        """Raises ``HaqaError`` (one line) for a run id the store does not have."""
        run = store.get_run(run_id)
        return cls(run, store.list_messages(run_id), store.list_trials(run_id), step=step)

    def compose(self) -> ComposeResult:
        yield Header()
        yield RunPanes(id="panes")
        yield Timeline(id="timeline")
        yield StatusBar(id="status")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = f"replay {self.run.run_id}"
        timeline = self.query_one(Timeline)
        timeline.marks = trial_steps(self.all_messages, self.all_trials)
        self.show(self.step)

    # -- state -----------------------------------------------------------------------------

    def visible_trials(self) -> list[TrialRecord]:
        return trials_at(self.all_messages, self.all_trials, self.step)

    def show(self, step: int) -> None:
        self.step = max(0, min(step, self.total))
        messages = self.all_messages[: self.step]
        trials = self.visible_trials()
        self.query_one(RunPanes).sync(self.run, messages, trials)
        timeline = self.query_one(Timeline)
        timeline.total, timeline.step = self.total, self.step
        timeline.speed, timeline.playing = self.speed, self._timer is not None
        where = "end" if self.step == self.total else f"replay {self.run.status}"
        self.query_one(StatusBar).update(
            status_line(
                self.run,
                messages,
                trials,
                elapsed_s=elapsed_at(messages, self.run),
                state=where if self.step == self.total else "replay",
            )
        )

    # -- actions ---------------------------------------------------------------------------

    def action_step(self, delta: int) -> None:
        self.show(self.step + delta)

    def action_goto(self, step: int) -> None:
        self.show(self.total if step < 0 else step)

    def action_next_trial(self) -> None:
        later = [s for s in trial_steps(self.all_messages, self.all_trials) if s > self.step]
        self.show(later[0] if later else self.total)

    def action_previous_trial(self) -> None:
        earlier = [s for s in trial_steps(self.all_messages, self.all_trials) if s < self.step]
        self.show(earlier[-1] if earlier else 0)

    def goto_trial(self, trial_id: int) -> bool:
        step = step_of_trial(self.all_messages, self.all_trials, trial_id)
        if step is None:
            self.notify(f"run {self.run.run_id} has no trial {trial_id}", severity="warning")
            return False
        self.show(step)
        return True

    def action_jump(self) -> None:
        def chosen(trial_id: int | None) -> None:
            if trial_id is not None:
                self.goto_trial(trial_id)

        self.app.push_screen(JumpDialog(), chosen)

    def action_play(self) -> None:
        if self._timer is not None:
            self._stop_playing()
        else:
            if self.step >= self.total:
                self.step = 0
            self._timer = self.set_interval(1.0 / self.speed, self._tick)
        self.show(self.step)

    def _stop_playing(self) -> None:
        if self._timer is not None:
            self._timer.stop()
            self._timer = None

    def _tick(self) -> None:
        if self.step >= self.total:
            self._stop_playing()
        self.show(self.step + 1)

    def action_speed(self, direction: int) -> None:
        i = SPEEDS.index(self.speed) if self.speed in SPEEDS else 2
        self.speed = SPEEDS[max(0, min(len(SPEEDS) - 1, i + direction))]
        if self._timer is not None:
            self._stop_playing()
            self._timer = self.set_interval(1.0 / self.speed, self._tick)
        self.show(self.step)

    def action_back(self) -> None:
        self._stop_playing()
        self.dismiss(None)
