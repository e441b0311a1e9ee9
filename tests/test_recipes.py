"""Mixed recipes: the family's rules per file type, and the weights label a user writes."""

from __future__ import annotations

from pathlib import Path

import pytest

from haqa.errors import HaqaError
from haqa.recipes import RECIPE_NAMES, Weights, recipe_rules
from haqa.schemas import DeployConfig
from haqa.space import deploy_space


def test_rules_step_from_the_file_types_base_type() -> None:
    assert recipe_rules("uniform", "Q4_K_M", 30) == {}
    assert recipe_rules("sensitive_up", "Q4_K_M", 30) == {
        "tensor_types": {r"attn_v\.weight": "Q5_K", r"ffn_down\.weight": "Q5_K"}
    }
    assert recipe_rules("sensitive_up", "Q3_K_M", 30)["tensor_types"][r"ffn_down\.weight"] == "Q4_K"
    assert recipe_rules("sensitive_up", "IQ4_NL", 30)["tensor_types"][r"attn_v\.weight"] == "Q5_0"
    assert recipe_rules("ends_up", "Q2_K", 30) == {"tensor_types": {r"^blk\.(0|29)\.": "Q3_K"}}
    assert recipe_rules("ffn_up_gate_down", "Q4_0", 30) == {
        "tensor_types": {r"ffn_(up|gate)\.weight": "Q3_K"}
    }
    assert recipe_rules("output_up", "Q4_K_M", 30) == {"output_type": "Q8_0"}
    # Nothing to change: a rule with no step from this type is the type itself.
    assert recipe_rules("output_up", "Q8_0", 30) == {}
    with pytest.raises(HaqaError, match="layer count"):
        recipe_rules("ends_up", "Q4_K_M", None)
    with pytest.raises(HaqaError, match="unknown recipe"):
        recipe_rules("bold", "Q4_K_M", 30)


def test_weights_labels_round_trip_and_bad_labels_say_what_to_write() -> None:
    for label in ("Q4_K_M", "Q3_K_M+imatrix", "Q2_K+sensitive_up+imatrix", "Q4_0+ends_up"):
        assert Weights.parse(label).label == label
    assert Weights.parse("q4_k_m+imatrix") == Weights(quant_type="Q4_K_M", imatrix=True)
    with pytest.raises(HaqaError, match=r"TYPE\[\+RECIPE\]\[\+imatrix\]"):
        Weights.parse("Q4_K_M+bold")
    cfg = DeployConfig(quant_type="Q3_K_M", recipe="sensitive_up", imatrix=True)
    assert cfg.weights.label == "Q3_K_M+sensitive_up+imatrix"
    assert "recipe" not in cfg.runtime.model_dump() and "imatrix" not in cfg.runtime.model_dump()


def test_the_deploy_space_searches_recipes_and_the_imatrix() -> None:
    space = deploy_space(2)
    assert tuple(space.knob("recipe").choices or ()) == RECIPE_NAMES
    assert space.defaults()["recipe"] == "uniform" and space.defaults()["imatrix"] is False
    with pytest.raises(HaqaError):
        space.validate_config({"recipe": "bold"})


def test_the_probed_recipe_carries_its_target_and_only_it_does() -> None:
    label = "Q4_K_M+probed@4.75+imatrix"
    w = Weights.parse(label)
    assert (w.recipe, w.target_bpw, w.imatrix, w.label) == ("probed", 4.75, True, label)
    for bad in ("Q4_K_M+probed", "Q4_K_M+probed@x", "Q4_K_M+probed@12"):
        with pytest.raises(HaqaError):
            Weights.parse(bad)
    with pytest.raises(HaqaError, match="needs target_bpw"):
        Weights(quant_type="Q4_K_M", recipe="probed")
    with pytest.raises(HaqaError, match=r"made from the model.s sensitivity probe"):
        recipe_rules("probed", "Q4_K_M", 30)
    with pytest.raises(HaqaError, match="only with the probed recipe"):
        Weights(quant_type="Q4_K_M", recipe="sensitive_up", target_bpw=5.0)
    with pytest.raises(HaqaError, match="needs a quantized file type"):
        Weights(quant_type="F16", recipe="probed", target_bpw=5.0)
    # A config: the target of another recipe is dropped (an optimiser samples every knob), and a
    # probed config without one is invalid with a message that says what to add.
    assert DeployConfig(recipe="uniform", target_bpw=5.0).target_bpw is None
    probed = DeployConfig(recipe="probed", target_bpw=5.0, imatrix=True)
    assert probed.weights.label == "Q4_K_M+probed@5+imatrix"
    assert "target_bpw" not in probed.runtime.model_dump()
    with pytest.raises(ValueError, match="needs target_bpw"):
        DeployConfig(recipe="probed")
    assert Weights.of_config(probed.model_dump()) == probed.weights


def test_target_bpw_is_a_knob_only_with_the_probed_recipe() -> None:
    space = deploy_space(2)
    knob = space.knob("target_bpw")
    assert knob.kind == "categorical" and knob.choices == tuple(2.5 + 0.25 * i for i in range(25))
    assert space.applicable({"recipe": "probed"}) == {"recipe": "probed", "target_bpw": 4.5}
    assert space.applicable({"recipe": "uniform", "target_bpw": 5.0}) == {"recipe": "uniform"}
    assert space.applicable({"target_bpw": 5.0}) == {}  # the default recipe is uniform
    kept = {"recipe": "probed", "target_bpw": 5.0}
    assert space.applicable(kept) == kept
    # A space that cannot choose the probed recipe (a recorded grid's) has no target to ask.
    narrowed = space.restrict(recipe=["uniform"])
    assert "target_bpw" not in narrowed.names
    assert narrowed.applicable({"recipe": "uniform", "target_bpw": None}) == {"recipe": "uniform"}


def test_without_the_sensitivity_probe_a_run_has_no_probed_recipe(
    tiny_model: Path, tmp_path: Path
) -> None:
    """``--no-sensitivity-probe`` (a model too large to probe in the time it is worth): the
    run's deploy space offers no probed recipe and no target_bpw, so the analyst does not probe
    and no brain can propose it."""
    from support.instant import InstantToolbox
    from support.runs import small_run_config

    from haqa.graph.run import _setup
    from haqa.store import Store

    store = Store(tmp_path / "haqa.duckdb")
    _, _, space, _ = _setup(store, small_run_config(), InstantToolbox())
    assert "probed" in (space.knob("recipe").choices or ()) and "target_bpw" in space.names
    off = small_run_config(sensitivity_probe=False)
    _, _, space, _ = _setup(store, off, InstantToolbox())
    assert "probed" not in (space.knob("recipe").choices or ())
    assert "target_bpw" not in space.names
