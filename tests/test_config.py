"""Config layering (TOML < env < CLI), search-space validation, sizes and task files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from haqa.config import build, env_overrides, read_toml
from haqa.errors import HaqaError
from haqa.schemas import DeployConfig, FinetuneConfig
from haqa.space import deploy_space, finetune_space
from haqa.tasks import load_jsonl
from haqa.units import format_bytes, parse_bytes


def test_cli_beats_env_beats_toml_beats_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    toml = tmp_path / "ft.toml"
    toml.write_text("[finetune]\nlearning_rate = 0.01\nlora_r = 4\nmax_steps = 30\n")
    monkeypatch.setenv("HAQA_FINETUNE__LORA_R", "16")
    monkeypatch.setenv("HAQA_FINETUNE__MAX_STEPS", "40")
    cfg = build(
        FinetuneConfig,
        read_toml(toml)["finetune"],
        env_overrides("finetune", FinetuneConfig),
        {"max_steps": 50, "lora_alpha": None},
    )
    assert cfg.learning_rate == 0.01  # TOML
    assert cfg.lora_r == 16  # env over TOML
    assert cfg.max_steps == 50  # CLI over env
    assert cfg.lora_alpha == 16  # default (a CLI flag left unset does not override)


def test_unknown_toml_key_names_it(tmp_path: Path) -> None:
    with pytest.raises(HaqaError, match="unknown key 'learnig_rate'"):
        build(FinetuneConfig, {"learnig_rate": 1e-3}, source=str(tmp_path / "x.toml"))


def test_out_of_range_value_names_knob_and_bound() -> None:
    with pytest.raises(HaqaError) as info:
        build(FinetuneConfig, {"lora_r": 0})
    assert "'lora_r' = 0: must be greater than or equal to 1" in str(info.value)


def test_bad_env_variable_names_the_allowed_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HAQA_FINETUNE__LR", "1")
    with pytest.raises(HaqaError, match="HAQA_FINETUNE__LEARNING_RATE"):
        env_overrides("finetune", FinetuneConfig)


def test_malformed_toml_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[finetune\nlr = ")
    with pytest.raises(HaqaError) as info:
        read_toml(bad)
    assert "\n" not in str(info.value)


def test_deploy_config_rejects_inconsistent_batches_and_v_cache() -> None:
    with pytest.raises(HaqaError, match="n_ubatch"):
        build(DeployConfig, {"n_batch": 128, "n_ubatch": 512})
    with pytest.raises(HaqaError, match="flash_attn"):
        build(DeployConfig, {"type_v": "q8_0", "flash_attn": False})
    assert build(DeployConfig, {"type_v": "q8_0", "flash_attn": True}).runtime.flash_attn


def test_search_space_names_knob_and_allowed_values() -> None:
    space = deploy_space(logical_cores=2)
    assert space.knob("n_threads").choices == (1, 2)
    with pytest.raises(HaqaError) as info:
        space.validate_config({"quant_type": "Q9_9"})
    assert "quant_type" in str(info.value) and "Q4_K_M" in str(info.value)
    with pytest.raises(HaqaError, match=r"n_threads.*one of 1, 2"):
        space.validate_config({"n_threads": 8})
    with pytest.raises(HaqaError, match="unknown knob 'threads'"):
        space.validate_config({"threads": 2})
    ft = finetune_space()
    assert ft.validate_config({"learning_rate": 1e-3, "max_steps": 100}) == {
        "learning_rate": 1e-3,
        "max_steps": 100,
    }
    with pytest.raises(HaqaError, match=r"learning_rate.*\[1e-05, 0.1\]"):
        ft.validate_config({"learning_rate": 3.0})
    with pytest.raises(HaqaError, match="max_steps"):
        ft.validate_config({"max_steps": 10.5})
    with pytest.raises(HaqaError, match="double_quant"):
        ft.validate_config({"double_quant": "yes"})


def test_a_knob_narrowed_to_fixed_values_refuses_the_others() -> None:
    """A recorded grid holds imatrix (a boolean) fixed: narrowed, it is categorical, so a brain
    offered the space cannot propose a value the grid never measured. A number narrowed too."""
    space = deploy_space(2).restrict(imatrix=[False])
    assert space.knob("imatrix").kind == "categorical" and space.knob("imatrix").choices == (False,)
    assert space.validate_config({"imatrix": False}) == {"imatrix": False}
    for bad in (True, 0):
        with pytest.raises(HaqaError, match="imatrix"):
            space.validate_config({"imatrix": bad})
    ft = finetune_space().restrict(learning_rate=[2e-4, 1e-3])
    assert ft.validate_config({"learning_rate": 1e-3}) == {"learning_rate": 1e-3}
    with pytest.raises(HaqaError, match="learning_rate"):
        ft.validate_config({"learning_rate": 5e-4})


def test_every_default_is_inside_its_own_space() -> None:
    for space in (finetune_space(), deploy_space(8)):
        space.validate_config(space.defaults())
    # The defaults of the pydantic configs agree with the spaces where both name a knob.
    ft_defaults = FinetuneConfig().model_dump()
    for name, value in finetune_space().defaults().items():
        assert ft_defaults[name] == value, name


@pytest.mark.parametrize(
    ("text", "expected"),
    [("4GiB", 4 * 1024**3), ("512 MiB", 512 * 1024**2), ("1.5G", 1_500_000_000), (1024, 1024)],
)
def test_parse_bytes(text: str | int, expected: int) -> None:
    assert parse_bytes(text) == expected


def test_parse_bytes_rejects_nonsense() -> None:
    with pytest.raises(HaqaError, match="memory budget"):
        parse_bytes("four gigs", what="memory budget")
    assert format_bytes(1536) == "1.5 KiB"


def test_task_jsonl_errors_name_file_line_and_field(tmp_path: Path) -> None:
    path = tmp_path / "tasks.jsonl"
    good = {"question": "2 + 2 =", "choices": ["4", "5"], "answer": 0}
    path.write_text(json.dumps(good) + "\n" + json.dumps({"question": "x", "answer": 0}) + "\n")
    with pytest.raises(HaqaError, match=r"tasks.jsonl:2: missing required key 'choices'"):
        load_jsonl(path)
    path.write_text(json.dumps({**good, "answer": 2}) + "\n")
    with pytest.raises(HaqaError, match="out of range"):
        load_jsonl(path)
    path.write_text(json.dumps(good) + "\n")
    assert load_jsonl(path)[0].choices == ("4", "5")
