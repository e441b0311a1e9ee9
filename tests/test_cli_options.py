"""Options generated from the schema: every ``FinetuneConfig`` field is a ``haqa finetune`` flag
with its description, what a user typed reaches the config (and nothing else does), and
``--brain`` lists every brain of the registry."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import pytest
import typer
from pydantic import BaseModel, Field
from typer.testing import CliRunner

import haqa.cli.accuracy
from haqa.agents.brains import ALL_BRAINS
from haqa.cli import _register, app, main
from haqa.cli.options import model_options, option_name
from haqa.errors import HaqaError
from haqa.schemas import FinetuneConfig


def _command(name: str) -> Any:
    """The click command typer builds for ``haqa NAME`` (typer bundles its own click)."""
    _register()
    return typer.main.get_command(app).commands[name]  # type: ignore[attr-defined]


def _option(command: Any, flag: str) -> Any:
    (option,) = [p for p in command.params if flag in getattr(p, "opts", ())]
    return option


def test_every_finetune_field_is_a_flag_in_the_help() -> None:
    _register()
    result = CliRunner().invoke(app, ["finetune", "--help"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    command = _command("finetune")
    for name, info in FinetuneConfig.model_fields.items():
        assert option_name(name) in result.output, name
        option = _option(command, option_name(name))
        assert info.description and info.description in (option.help or ""), name


def test_finetune_flags_keep_their_spelling() -> None:
    command = _command("finetune")
    assert _option(command, "--learning-rate").opts == ["--learning-rate", "--lr"]
    assert _option(command, "--double-quant").secondary_opts == ["--no-double-quant"]
    for flag in ("--lora-r", "--target-modules", "--max-steps", "--batch-size", "--seed"):
        _option(command, flag)
    help_of = {flag: _option(command, flag).help or "" for flag in ("--quant", "--lora-r")}
    assert "nf4|fp4|int8" in help_of["--quant"]
    assert "1<=x<=256" in help_of["--lora-r"] and "default: 8" in help_of["--lora-r"]


@pytest.fixture()
def built_config(monkeypatch: pytest.MonkeyPatch) -> list[FinetuneConfig]:
    """The FinetuneConfig ``haqa finetune`` builds; the command stops right after building it."""
    built: list[FinetuneConfig] = []
    real_build = haqa.cli.accuracy.build

    def build(*args: Any, **kwargs: Any) -> Any:
        cfg = real_build(*args, **kwargs)
        built.append(cfg)
        return cfg

    def stop(spec: str) -> Any:
        raise HaqaError("stopped after the config was built")

    monkeypatch.setattr(haqa.cli.accuracy, "build", build)
    monkeypatch.setattr(haqa.cli.accuracy, "_hf_model", stop)
    return built


def test_typed_flags_reach_the_config_and_unset_ones_leave_the_layers_below(
    built_config: list[FinetuneConfig], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    toml = tmp_path / "ft.toml"
    toml.write_text("[finetune]\nbatch_size = 4\nweight_decay = 0.1\n")
    monkeypatch.setenv("HAQA_FINETUNE__WEIGHT_DECAY", "0.2")
    argv = ["finetune", "--config", str(toml), "--lr", "1e-3", "--no-double-quant",
            "--target-modules", "q_proj, v_proj", "--quant", "int8", "--epochs", "2",
            "--db", str(tmp_path / "h.duckdb")]  # fmt: skip
    assert main(argv) == 2
    cfg = built_config[-1]  # the layered one (the TOML table is validated on its own first)
    assert cfg.learning_rate == 1e-3 and cfg.double_quant is False and cfg.quant == "int8"
    assert cfg.target_modules == ("q_proj", "v_proj") and cfg.epochs == 2.0
    # Not typed: the TOML file's batch size, the environment's weight decay, the default rank.
    assert cfg.batch_size == 4 and cfg.weight_decay == 0.2 and cfg.lora_r == 8
    assert not (tmp_path / "h.duckdb").exists()


def test_a_bad_choice_is_the_schemas_one_line_error(
    built_config: list[FinetuneConfig], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["finetune", "--quant", "int3", "--db", str(tmp_path / "h.duckdb")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'quant' = 'int3'" in err, err
    assert built_config == []


class _Knobs(BaseModel):
    """A model the CLI has never seen: each kind of field the options support."""

    depth: int = Field(3, ge=1, le=9, description="how deep")
    ratio: float | None = Field(None, gt=0.0, description="a share")
    fast: bool = Field(False, description="go fast")
    mode: Literal["a", "b"] = Field("a", description="which mode")
    names: tuple[str, ...] = Field(("x",), description="names")


def test_a_new_model_needs_no_cli_code() -> None:
    seen: list[dict[str, Any]] = []
    demo = typer.Typer()

    @demo.command()
    @model_options(_Knobs, aliases={"depth": ("-d",)})
    def knobs(
        label: Annotated[str, typer.Option("--label")] = "",
        *,
        flags: dict[str, Any],
    ) -> None:
        seen.append({"label": label, **flags})

    runner = CliRunner()
    result = runner.invoke(demo, ["--help"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    for flag in ("--label", "--depth", "-d", "--ratio", "--fast", "--no-fast", "--mode", "--names"):
        assert flag in result.output, flag
    for text in ("how deep [1<=x<=9] [default: 3]", "a share [x>0]", "which mode [a|b]"):
        assert text in result.output, text

    result = runner.invoke(demo, ["-d", "5", "--fast", "--names", "p, q,", "--label", "L"])
    assert result.exit_code == 0, result.output
    (typed,) = seen
    assert typed == {
        "label": "L", "depth": 5, "ratio": None, "fast": True, "mode": None, "names": ["p", "q"]
    }  # fmt: skip
    flags = {k: v for k, v in typed.items() if k != "label" and v is not None}
    assert _Knobs.model_validate(flags) == _Knobs(depth=5, fast=True, names=("p", "q"))


def test_model_options_refuse_a_field_without_a_flag_form() -> None:
    class Nested(BaseModel):
        inner: _Knobs = Field(default_factory=_Knobs)

    with pytest.raises(TypeError, match="inner"):
        model_options(Nested)
    with pytest.raises(TypeError, match="nothing"):
        model_options(_Knobs, aliases={"nothing": ("-n",)})


def test_brain_help_lists_every_brain() -> None:
    help_text = _option(_command("run"), "--brain").help or ""
    for brain in ALL_BRAINS:
        assert brain in help_text, brain
