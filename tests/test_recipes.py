"""Mixed recipes: the family's rules per file type, and the weights label a user writes."""

from __future__ import annotations

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
