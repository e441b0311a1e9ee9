"""The new-run form. Each field is checked with the same models the command line uses (``Goal``,
the run configuration); a bad value is explained under its field and nothing is started."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.screen import Screen
from textual.widgets import Button, Checkbox, Footer, Header, Input, Label, Select, Static

from haqa.errors import HaqaError
from haqa.goal import Goal
from haqa.tui.backend import RunBackend
from haqa.tui.screens.help import HelpScreen
from haqa.units import parse_bytes
from haqa.zoo import zoo_path

#: Settings of a quick run (small evaluation, short benchmark, brief fine-tune): a demo, a test.
QUICK: dict[str, Any] = {
    "eval_limit": 20,
    "n_prompt": 32,
    "n_gen": 8,
    "repetitions": 1,
    "quick_analysis": True,
    "finetune": {"max_steps": 20},
}

#: (field id, label, default, placeholder)
FIELDS = (
    ("model", "model", "zoo:tiny", "zoo:tiny or a Hugging Face model folder"),
    ("goal", "goal", "decode", "decode, prefill or workload:1500+200"),
    ("max_accuracy_drop", "max accuracy drop", "1.0", "points below the reference"),
    ("memory_budget", "memory budget", "", "e.g. 4GiB (empty: no budget)"),
    ("finetune_trials", "fine-tune trials", "1", "0 skips fine-tuning"),
    ("deploy_trials", "deploy trials", "4", "deployments to measure"),
)


def _error_field(loc: tuple[Any, ...]) -> str:
    head = str(loc[0]) if loc else "form"
    if head == "budgets" and len(loc) > 1:
        return str(loc[1]) if str(loc[1]) in ("finetune_trials", "deploy_trials") else "form"
    return head if head in {f[0] for f in FIELDS} | {"brain"} else "form"


class NewRunScreen(Screen[None]):
    BINDINGS = [  # noqa: RUF012
        Binding("ctrl+s", "submit", "Start run", priority=True),
        Binding("escape", "back", "Home"),
        Binding("f1", "help", "Help"),
    ]

    def __init__(self, backend: RunBackend, defaults: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.backend = backend
        self.defaults = defaults or {}
        self.config: Any = None

    def compose(self) -> ComposeResult:
        yield Header()
        with VerticalScroll(id="form"):
            yield Static("New run: fill in, then press ctrl+s (or Start).", id="form-title")
            for field_id, label, default, placeholder in FIELDS:
                with Horizontal(classes="form-row"):
                    yield Label(label, classes="form-label")
                    yield Input(value=default, placeholder=placeholder, id=field_id, compact=True)
                yield Label("", id=f"{field_id}-error", classes="form-error")
            with Horizontal(classes="form-row"):
                yield Label("brain", classes="form-label")
                brains = self.backend.brains
                yield Select(
                    [(b, b) for b in brains],
                    value=brains[0],
                    allow_blank=False,
                    id="brain",
                    compact=True,
                )
            yield Label("", id="brain-error", classes="form-error")
            yield Checkbox(
                "quick settings (short eval and benchmark: a demo)", id="quick", compact=True
            )
            yield Label("", id="form-error", classes="form-error")
            yield Button("Start", id="start", variant="primary", compact=True)
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#model", Input).focus()

    def _value(self, field_id: str) -> str:
        return self.query_one(f"#{field_id}", Input).value.strip()

    def fields(self) -> dict[str, Any]:
        """The form as run-configuration data (strings are checked by the models, not here)."""
        data: dict[str, Any] = dict(self.defaults)
        if self.query_one("#quick", Checkbox).value:
            data.update(QUICK)
        budgets = dict(data.get("budgets") or {})
        for key in ("finetune_trials", "deploy_trials"):
            budgets[key] = self._value(key)
        data.update(
            model=self._value("model"),
            goal=self._value("goal"),
            max_accuracy_drop=self._value("max_accuracy_drop"),
            memory_budget=self._value("memory_budget") or None,
            brain=str(self.query_one("#brain", Select).value),
            budgets=budgets,
        )
        return data

    def _show_errors(self, errors: dict[str, str]) -> None:
        for field_id in [f[0] for f in FIELDS] + ["brain", "form"]:
            label = self.query_one(f"#{field_id}-error", Label)
            label.update(errors.get(field_id, ""))
            label.set_class(field_id in errors, "-shown")

    def check(self) -> dict[str, str]:
        """Errors by field id (empty when the run can start); sets ``self.config`` when valid."""
        errors: dict[str, str] = {}
        model = self._value("model")
        if not model:
            errors["model"] = "a model is needed: zoo:tiny or a model folder"
        elif model.startswith("zoo:"):
            try:
                zoo_path(model.removeprefix("zoo:"))
            except HaqaError as exc:
                errors["model"] = str(exc)
        elif not Path(model).expanduser().exists():
            errors["model"] = f"{model} does not exist: pass zoo:NAME or an existing folder"
        memory = self._value("memory_budget")
        if memory:
            try:
                parse_bytes(memory, what="memory budget")
            except HaqaError as exc:
                errors["memory_budget"] = str(exc)
        try:
            drop = float(self._value("max_accuracy_drop"))
        except ValueError:
            errors["max_accuracy_drop"] = "a number of accuracy points, e.g. 1.0"
            drop = 1.0
        try:
            Goal.parse(self._value("goal"), max_accuracy_drop_points=drop)
        except HaqaError as exc:
            target = "max_accuracy_drop" if "accuracy" in str(exc) else "goal"
            errors.setdefault(target, str(exc))
        if errors:
            return errors
        try:
            self.config = self.backend.validate(self.fields())
        except ValidationError as exc:
            for err in exc.errors():
                field = _error_field(tuple(err["loc"]))
                errors.setdefault(field, f"{err['msg']} (got {err.get('input')!r})")
        except HaqaError as exc:
            errors["form"] = str(exc)
        return errors

    def action_submit(self) -> None:
        errors = self.check()
        self._show_errors(errors)
        if errors:
            self.notify("fix the fields marked in red", severity="error", timeout=3)
            return
        self.app.start_run(config=self.config, replace=self)  # type: ignore[attr-defined]

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "start":
            self.action_submit()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.action_submit()

    def action_back(self) -> None:
        self.dismiss(None)

    def action_help(self) -> None:
        self.app.push_screen(HelpScreen("new_run"))
