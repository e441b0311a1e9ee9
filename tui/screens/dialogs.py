"""Small modal dialogs: an error message, the quit question, jump to a trial."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static


class ErrorDialog(ModalScreen[None]):
    """A one-line error (a ``HaqaError``'s message) and what it means for the user."""

    BINDINGS = [Binding("escape,enter,q", "close", "Close")]  # noqa: RUF012

    def __init__(self, message: str, *, title: str = "error") -> None:
        super().__init__()
        self.message = message
        self._title = title

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog error-dialog"):
            yield Label(self._title, classes="dialog-title")
            yield Static(self.message, id="error-message")
            yield Button("OK", id="ok", variant="primary", compact=True)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(None)

    def action_close(self) -> None:
        self.dismiss(None)


class QuitRunDialog(ModalScreen[str]):
    """Asked when leaving a live run: ``stop`` (the run stops after the step in flight, stored
    as stopped, resumable), ``keep`` (quit now, the run stays resumable; only when quitting:
    a run cannot go on behind the home screen) or ``cancel``."""

    BINDINGS = [  # noqa: RUF012
        Binding("escape", "choose('cancel')", "Cancel"),
        Binding("s", "choose('stop')", "Stop"),
        Binding("k", "choose('keep')", "Keep"),
    ]

    def __init__(self, then: str = "quit") -> None:
        super().__init__()
        self.quitting = then == "quit"

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            word = "Quit" if self.quitting else "Go back to the home screen"
            yield Label(f"The run is still going. {word}?", classes="dialog-title")
            text = (
                "[b]s[/b] stop it: the step in flight finishes, then the run is stored as "
                "stopped; resume it from the home screen (r) or with `haqa run --resume RUN`."
            )
            if self.quitting:
                text += (
                    "\n[b]k[/b] keep it resumable: quit now; the step in flight is lost and "
                    "`haqa run --resume RUN` runs it again."
                )
            yield Static(text + "\n[b]escape[/b] stay on the run.")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Stop", id="stop", variant="warning", compact=True)
                if self.quitting:
                    yield Button("Keep resumable", id="keep", compact=True)
                yield Button("Cancel", id="cancel", variant="primary", compact=True)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(str(event.button.id))

    def action_choose(self, choice: str) -> None:
        if choice == "keep" and not self.quitting:
            return
        self.dismiss(choice)


class JumpDialog(ModalScreen[int | None]):
    """Ask for a trial id to jump to."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]  # noqa: RUF012

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label("Jump to trial #", classes="dialog-title")
            yield Input(placeholder="trial id", type="integer", id="jump-input", compact=True)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        value = event.value.strip()
        self.dismiss(int(value) if value.isdigit() else None)

    def action_cancel(self) -> None:
        self.dismiss(None)
