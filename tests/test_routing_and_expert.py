"""Stop rules, routing and the expert policy, on plain data (no tool runs)."""

from __future__ import annotations

from typing import Any

import pytest

from haqa.agents.analyst.brief import make_brief, rank_quant_types
from haqa.agents.brains.base import DecisionContext, TrialView
from haqa.agents.brains.expert import LEAN_RUNTIME, ExpertBrain
from haqa.agents.routing import next_route, stage_stop_reason, trials_since_improvement
from haqa.agents.tuner.node import hardware_defaults
from haqa.goal import Goal
from haqa.quant import BITS_PER_WEIGHT
from haqa.schemas import DeployConfig
from haqa.space import deploy_space, finetune_space


def view(i: int, obj: float | None, status: str = "ok", **config: Any) -> TrialView:
    return TrialView(
        trial_id=i,
        stage="deploy",
        config=config,
        status=status,
        objective=obj,
        feasible=obj is not None and status == "ok",
        accuracy=0.5 if status == "ok" else None,
    )


def test_stop_rules() -> None:
    hist = [view(1, 10.0), view(2, 12.0), view(3, 11.0), view(4, None, "rejected")]
    assert trials_since_improvement(hist) == 2
    common = {"elapsed_s": 0.0, "wall_clock_s": 100.0}
    assert stage_stop_reason(hist, budget=4, patience=9, **common) == "budget of 4 trials used"
    assert stage_stop_reason(hist, budget=9, patience=2, **common) == (
        "no improvement in the last 2 trials"
    )
    assert stage_stop_reason(hist, budget=9, patience=9, **common) is None
    assert "wall-clock" in str(
        stage_stop_reason(hist, budget=9, patience=9, elapsed_s=101, wall_clock_s=100)
    )
    assert "roofline" in str(
        stage_stop_reason(hist, budget=9, patience=9, roofline=0.95, roofline_stop=0.9, **common)
    )


def test_route_order() -> None:
    assert next_route(analysed=False, finetune_done=False, deploy_done=False) == "analyst"
    assert next_route(analysed=True, finetune_done=False, deploy_done=False) == "planner"
    assert next_route(analysed=True, finetune_done=True, deploy_done=False) == "tuner"
    assert next_route(analysed=True, finetune_done=True, deploy_done=True) == "finish"


def _micro(gemv_seconds: dict[str, float]) -> dict[str, Any]:
    rows = [
        {"backend": "llama.cpp", "dtype": q, "m": 1, "seconds": s} for q, s in gemv_seconds.items()
    ]
    return {"rows": rows, "implications": []}


def test_ranking_follows_measured_kernels_not_bits() -> None:
    types = ["F16", "Q8_0", "Q4_0", "Q4_K_M"]
    # Bandwidth-bound machine: time ∝ bytes → fewer bits first.
    fast4 = _micro({"F16": 16.0, "Q8_0": 8.5, "Q4_0": 4.5, "Q4_K_M": 4.9})
    assert rank_quant_types(types, fast4, 10e9)[0][:2] == ["Q4_0", "Q4_K_M"]
    # No fast 4-bit kernels (the paper's case): 4-bit GEMV slower than 8-bit → Q8_0 first.
    slow4 = _micro({"F16": 16.0, "Q8_0": 8.5, "Q4_0": 12.0, "Q4_K_M": 13.0})
    assert rank_quant_types(types, slow4, 10e9)[0][0] == "Q8_0"


def test_the_brief_ranks_and_names_types_by_the_bits_they_have_on_this_model() -> None:
    """On a model whose rows do not fit 256-blocks (SmolLM2's 576), Q2_K falls back to Q4_0 and
    weighs what Q4_0 does: the brief ranks it by those bits and says so, in the text the tuner
    reads, rather than by Q2_K's nominal 3.35 bits."""
    types = ["Q8_0", "Q4_0", "Q2_K"]
    # Kernels that consume weights at one rate: a layer's time follows the bits it holds there
    # (the microbenchmarked Q4_K_M layer of this model is 6.17 bits/weight, not 4.89).
    micro = _micro({"Q8_0": 8.5, "Q4_0": 4.6, "Q4_K_M": 6.17})
    nominal = rank_quant_types(types, micro, 10e9)[0]
    assert nominal[0] == "Q2_K", nominal  # 3.35 nominal bits: the cheapest on paper
    micro["weight_bits"] = {
        "Q2_K": {"bits_per_weight": 5.14, "fallback_share": 0.80},
        "Q4_0": {"bits_per_weight": 4.6, "fallback_share": 0.0},
        "Q4_K_M": {"bits_per_weight": 6.17, "fallback_share": 0.80},
        "Q8_0": {"bits_per_weight": 8.5, "fallback_share": 0.0},
    }
    ranked = rank_quant_types(types, micro, 10e9)[0]
    assert ranked.index("Q4_0") < ranked.index("Q2_K"), ranked
    brief = make_brief({"physical_cores": 2, "logical_cores": 2}, micro, types)
    assert "Q2_K 5.14 (nominal 3.35)" in brief["text"], brief["text"]
    assert brief["bits_per_weight"]["Q2_K"] == 5.14
    assert "Q4_0" not in brief["text"].split("effective bits per weight:")[1].split("\n")[0]


def _ctx(history: list[TrialView], stage: str = "deploy", **kw: Any) -> DecisionContext:
    space = deploy_space(2) if stage == "deploy" else finetune_space()
    brief = make_brief(
        {"physical_cores": 2, "logical_cores": 2, "bandwidth": {"read_bytes_per_s": 10e9}},
        _micro({"F16": 16.0, "Q8_0": 8.5, "Q4_0": 4.5, "Q4_K_M": 4.9}),
        [str(q) for q in deploy_space(2).knob("quant_type").choices or ()],
        kw.get("sensitivity"),
    )
    defaults = (
        {"quant_type": "Q4_K_M", **hardware_defaults(brief, 2)}
        if stage == "deploy"
        else finetune_space().defaults()
    )
    return DecisionContext(
        run_id="r",
        agent="tuner" if stage == "deploy" else "planner",
        stage=stage,  # type: ignore[arg-type]
        space=space,
        goal=kw.get("goal", Goal()),
        static_prompt="",
        dynamic_prompt="",
        history=history,
        defaults=defaults,
        budget_left=10,
        brief=brief,
        tools=kw.get("tools"),
    )


def test_expert_deploy_measures_fastest_types_then_refines_runtime() -> None:
    brain = ExpertBrain()
    seen: list[TrialView] = []
    proposals = []
    for i in range(1, 7):
        p = brain.propose(_ctx(seen))
        assert p.action == "trial" and p.thought.startswith("policy:")
        DeployConfig.model_validate(p.config)  # always a valid, complete configuration
        proposals.append(p.config)
        seen.append(view(i, 10.0 + i, **p.config))
    # Fastest measured kernels first, among types that usually keep a 1-point accuracy floor.
    assert [c["quant_type"] for c in proposals[:3]] == ["Q4_0", "IQ4_NL", "Q4_K_M"]
    # All three kept the accuracy floor, so a faster, bolder type is measured next (evidence over
    # the prior), then the best one's runtime settings are refined (same type, other knobs).
    assert proposals[3]["quant_type"] == "Q2_K"
    assert {c["quant_type"] for c in proposals[4:]} == {"Q2_K"}
    assert proposals[4] != proposals[3]
    assert len({json_key(c) for c in proposals}) == len(proposals)  # never the same config twice


def json_key(c: dict[str, Any]) -> str:
    import json

    return json.dumps(c, sort_keys=True)


def test_expert_skips_types_below_an_accuracy_failure() -> None:
    brain = ExpertBrain()
    failed = TrialView(
        trial_id=1,
        stage="deploy",
        config={**_ctx([]).defaults, "quant_type": "Q3_K_M"},
        status="ok",
        accuracy=0.1,
        objective=30.0,
        feasible=False,
    )
    p = brain.propose(_ctx([failed]))
    assert p.config["quant_type"] not in ("Q2_K", "Q3_K_M")


def test_a_miss_with_a_quantized_kv_cache_is_not_blamed_on_the_weights() -> None:
    """A Q8_0 deployment with a q4_0 K/V cache missed the floor: the cache may have cost the
    accuracy, so types under 8.5 bits stay open (only misses with a float or 8-bit cache, whose
    rounding is far below the weights', set the bits floor)."""
    missed = TrialView(
        trial_id=1,
        stage="deploy",
        config={
            **_ctx([]).defaults,
            "quant_type": "Q8_0",
            "flash_attn": True,
            "type_k": "q4_0",
            "type_v": "q4_0",
        },
        status="ok",
        accuracy=0.1,
        objective=30.0,
        feasible=False,
    )
    p = ExpertBrain().propose(_ctx([missed]))
    assert BITS_PER_WEIGHT[p.config["quant_type"]] < BITS_PER_WEIGHT["Q8_0"], p.config
    float_cache_miss = missed.model_copy(
        update={"config": {**missed.config, "type_k": "f16", "type_v": "f16"}}
    )
    p = ExpertBrain().propose(_ctx([float_cache_miss]))
    assert BITS_PER_WEIGHT[p.config["quant_type"]] > BITS_PER_WEIGHT["Q8_0"], p.config
    q8_cache_miss = missed.model_copy(
        update={"config": {**missed.config, "type_k": "q8_0", "type_v": "q8_0"}}
    )
    p = ExpertBrain().propose(_ctx([q8_cache_miss]))
    assert BITS_PER_WEIGHT[p.config["quant_type"]] > BITS_PER_WEIGHT["Q8_0"], p.config


def test_the_bits_floor_uses_the_bits_a_type_has_on_this_model() -> None:
    """On SmolLM2 the K-quants fall back to 32-block types, so Q3_K_M has more bits (5.46) than
    Q4_0 (5.35): a Q4_0 that missed the floor does not rule Q3_K_M out, and does rule out a type
    with fewer bits on this model (Q2_K, 5.14)."""
    ctx = _ctx([])
    ctx.brief["bits_per_weight"] = {**ctx.brief.get("bits_per_weight", {}), "Q4_0": 5.35,
                                    "Q3_K_M": 5.46, "Q2_K": 5.14}  # fmt: skip
    from haqa.agents.brains.expert import _DeployView

    missed = view(1, None, **{**ctx.defaults, "quant_type": "Q4_0"})
    ctx.history.append(missed)
    v = _DeployView.of(ctx)
    assert v.floor_bits == 5.35
    assert v.bits_of("Q3_K_M") > v.floor_bits >= v.bits_of("Q2_K")


def test_expert_finetune_starts_from_defaults_then_moves_learning_rate() -> None:
    brain = ExpertBrain()
    first = brain.propose(_ctx([], stage="finetune"))
    assert first.config == finetune_space().defaults()
    done = TrialView(
        trial_id=1,
        stage="finetune",
        config=first.config,
        status="ok",
        accuracy=0.6,
        objective=0.6,
        feasible=True,
    )
    second = brain.propose(_ctx([done], stage="finetune"))
    assert second.config["learning_rate"] == pytest.approx(first.config["learning_rate"] * 3)


def test_expert_bisects_between_a_type_that_kept_the_floor_and_one_that_missed_it() -> None:
    """Q4_K_M kept the floor and Q2_K missed it: Q3_K_M, between them and predicted faster than
    Q4_K_M, is measured before the runtime settings are refined."""
    brain = ExpertBrain()
    defaults = _ctx([]).defaults
    kept = view(1, 50.0, **{**defaults, "quant_type": "Q4_K_M"})
    missed = TrialView(
        trial_id=2,
        stage="deploy",
        config={**defaults, "quant_type": "Q2_K"},
        status="ok",
        accuracy=0.1,
        objective=80.0,
        feasible=False,
    )
    also = [view(3 + i, 40.0, **{**defaults, "quant_type": q}) for i, q in enumerate(("Q4_0",))]
    p = brain.propose(_ctx([kept, missed, *also]))
    assert p.config["quant_type"] == "Q3_K_M", p.thought
    assert "between" in p.thought


def test_expert_reaches_the_safer_types_before_it_gives_up() -> None:
    """The real-model case: the three fastest 4-bit-ish types all missed a 1-point floor. With
    budget left the expert measures types with more bits (Q5_K_M, Q6_K, Q8_0, ...) instead of
    finishing with "no configuration met the goal", and never again a type at or below a miss."""
    brain = ExpertBrain()
    defaults = _ctx([]).defaults
    history: list[TrialView] = []
    for i, quant in enumerate(("Q4_0", "IQ4_NL", "Q4_K_M"), start=1):
        history.append(
            TrialView(
                trial_id=i,
                stage="deploy",
                config={**defaults, "quant_type": quant},
                status="ok",
                accuracy=0.1,
                objective=50.0,
                feasible=False,
            )
        )
    proposed = []
    for i in range(4, 9):
        p = brain.propose(_ctx(history))
        if p.action == "finish":
            break
        proposed.append(p.config["quant_type"])
        history.append(
            TrialView(
                trial_id=i,
                stage="deploy",
                config=p.config,
                status="ok",
                accuracy=0.1,
                objective=40.0,
                feasible=False,
            )
        )
    assert proposed, "finished with budget left and the safer types untried"
    assert all(BITS_PER_WEIGHT[q] > BITS_PER_WEIGHT["Q4_K_M"] for q in proposed), proposed
    assert "Q8_0" in proposed and "Q6_K" in proposed, proposed


def test_hardware_defaults_meet_a_narrowed_space() -> None:
    """A recorded grid can fix a knob at a value the hardware default is not (prompt threads 2
    on a 2-core machine, recorded with -t 1); the tuner's defaults are moved onto the space, or
    every proposal built on them is invalid and the run measures nothing."""
    space = deploy_space(2).restrict(
        quant_type=["F16", "Q8_0"], n_threads=[1], n_threads_batch=[2], n_ubatch=[512]
    )
    defaults = {"quant_type": "Q4_K_M", **hardware_defaults({"physical_cores": 2}, 2)}
    moved = space.within(defaults)
    assert moved["n_threads"] == 1 and moved["n_threads_batch"] == 2
    assert moved["quant_type"] in ("F16", "Q8_0") and moved["n_batch"] == 2048
    space.validate_config(moved)  # every knob now allowed
    full = deploy_space(2)
    assert full.within(defaults) == defaults  # a live run's defaults are unchanged


def test_expert_rescues_a_faster_type_that_missed_the_floor_with_an_imatrix() -> None:
    """Q4_0 measured faster than the incumbent Q4_K_M but missed the accuracy floor: the expert
    tries the same Q4_0 with an importance matrix, then with attn_v/ffn_down one step up, and
    never rescues a type slower than the incumbent (Q8_0) or one that missed on memory."""
    from haqa.agents.brains.expert import _DeployView, _rescue_with_imatrix

    base = {"n_threads": 2, "n_threads_batch": 2, "flash_attn": False}
    history = [
        view(1, 20.0, quant_type="Q4_K_M", **base),
        view(2, None, quant_type="Q4_0", **base),  # measured, infeasible: missed the floor
        view(3, None, quant_type="Q8_0", **base),  # slower than the incumbent
    ]
    proposals = []
    for i in range(4, 7):
        ctx = _ctx(history)
        p = _rescue_with_imatrix(ctx, _DeployView.of(ctx))
        if p is None:
            break
        proposals.append(p.config)
        DeployConfig.model_validate(p.config)
        history.append(view(i, None, **p.config))
    assert [(c["quant_type"], c.get("recipe", "uniform"), c["imatrix"]) for c in proposals] == [
        ("Q4_0", "uniform", True),
        ("Q4_0", "sensitive_up", True),
    ]
    over = TrialView(
        trial_id=9,
        stage="deploy",
        config={"quant_type": "Q4_0", **base},
        status="ok",
        accuracy=0.9,
        peak_mem_bytes=2_000_000_000,
        feasible=False,
    )
    ctx = _ctx([history[0], over], goal=Goal(memory_budget_bytes=1_000_000_000))
    assert _rescue_with_imatrix(ctx, _DeployView.of(ctx)) is None


class _SizeByBits:
    """An estimate as the gate's: bytes from the type's bits, 10% less with the FFN up/gate
    one step down; the attention scores without flash attention and a 16-bit K/V cache on top
    (the read-only tools an expert may ask)."""

    def estimate_memory(self, config: dict[str, Any]) -> dict[str, Any]:
        shrink = 0.9 if config.get("recipe") == "ffn_up_gate_down" else 1.0
        weights = BITS_PER_WEIGHT[config["quant_type"]] * 1e8 * shrink
        scores = 0.0 if config.get("flash_attn") else 1e8
        cache = 0.0 if config.get("type_k") == config.get("type_v") == "q8_0" else 0.5e8
        return {"total_bytes": int(weights + scores + cache)}

    def query_trials(self, sql: str) -> list[dict[str, Any]]:
        return []

    def hardware_brief(self) -> str:
        return ""


def test_expert_shrinks_the_type_over_the_budget_when_what_fits_misses_the_floor() -> None:
    """A memory budget below Q4_K_M's peak, and every type that fits misses the accuracy floor:
    the expert never spends a trial on a type the estimate puts over the budget, and makes the
    smallest such type fit (FFN up/gate one step down, with an importance matrix) before it
    rescues the types that fit. A type is proposed at the mildest runtime that fits it (flash
    attention, then an 8-bit K/V cache as well)."""
    budget = int((BITS_PER_WEIGHT["Q4_0"] + BITS_PER_WEIGHT["Q4_K_M"]) / 2 * 1e8)
    goal = Goal(max_accuracy_drop=0.02, memory_budget_bytes=budget)
    tools = _SizeByBits()
    history: list[TrialView] = []
    proposed: list[dict[str, Any]] = []
    for i in range(1, 12):
        ctx = _ctx(history, goal=goal, tools=tools)
        p = ExpertBrain().propose(ctx)
        if p.action == "finish":
            break
        config = DeployConfig.model_validate(p.config).model_dump(mode="json")
        assert tools.estimate_memory(config)["total_bytes"] <= budget, p.thought
        proposed.append(config)
        shrunk = config["recipe"] == "ffn_up_gate_down"
        history.append(view(i, 10.0 if shrunk else None, **p.config))
        if shrunk:
            break
    assert proposed, "the expert proposed nothing"
    last = proposed[-1]
    assert (last["quant_type"], last["recipe"], last["imatrix"]) == (
        "Q4_K_M",
        "ffn_up_gate_down",
        True,
    )
    # Before it, only types that fit, measured plainly: no rescue spent the budget first.
    assert all(c["recipe"] == "uniform" and not c["imatrix"] for c in proposed[:-1])
    # Each at the mildest runtime that fits: the shrunk Q4_K_M needs both lean settings.
    mildest = {"flash_attn": False, "type_k": "f16", "type_v": "f16"}
    for c in proposed:
        lean = [k for k in LEAN_RUNTIME if {**c, **k} == c][-1]
        for milder in LEAN_RUNTIME[: LEAN_RUNTIME.index(lean)]:
            assert tools.estimate_memory({**c, **mildest, **milder})["total_bytes"] > budget
    assert last["flash_attn"] and last["type_k"] == last["type_v"] == "q8_0"


def test_when_nothing_fits_the_smallest_type_goes_to_the_gate_once() -> None:
    """A budget below every type: the smallest is proposed once, so the gate records by how much
    the budget is short, and then the expert finishes."""
    goal = Goal(memory_budget_bytes=10)
    ctx = _ctx([], goal=goal, tools=_SizeByBits())
    first = ExpertBrain().propose(ctx)
    smallest = min(BITS_PER_WEIGHT[str(q)] for q in ctx.space.knob("quant_type").choices or ())
    assert first.action == "trial"
    assert BITS_PER_WEIGHT[first.config["quant_type"]] == smallest
    after = _ctx([view(1, None, "rejected", **first.config)], goal=goal, tools=_SizeByBits())
    assert ExpertBrain().propose(after).action == "finish"


#: A sensitivity probe's result as the analyst's brief holds it (SmolLM2's figures).
PROBE = {
    "probe_type": "Q4_0",
    "groups": [
        {"group": "ffn_down", "kld": 0.11, "n_weights": 26_542_080, "share": 0.2},
        {"group": "attn_v", "kld": 0.085, "n_weights": 3_317_760, "share": 0.025},
    ],
    "summary": "tensor sensitivity (...): attn_v 0.0854, ffn_down 0.1097",
}


def test_with_a_probe_the_rescue_spends_bits_where_it_was_measured() -> None:
    """The analyst measured which tensors are sensitive: the second rescue of a type that missed
    the floor is the probed recipe at half a bit more than the type's own, not the fixed
    attn_v/ffn_down rule; and the brief names the groups."""
    from haqa.agents.brains.expert import _DeployView, _rescue_with_imatrix

    base = {"n_threads": 2, "n_threads_batch": 2, "flash_attn": False}
    history = [
        view(1, 20.0, quant_type="Q4_K_M", **base),
        view(2, None, quant_type="Q4_0", **base),
    ]
    proposals = []
    for i in range(3, 6):
        ctx = _ctx(history, sensitivity=PROBE)
        p = _rescue_with_imatrix(ctx, _DeployView.of(ctx))
        if p is None:
            break
        proposals.append(DeployConfig.model_validate(p.config).weights.label)
        history.append(view(i, None, **p.config))
    assert proposals == ["Q4_0+imatrix", "Q4_0+probed@5+imatrix"]
    assert "attn_v 0.0854" in _ctx([], sensitivity=PROBE).brief["text"]


class _SizeByTarget(_SizeByBits):
    """The estimate of a probed recipe: its target bits per weight."""

    def estimate_memory(self, config: dict[str, Any]) -> dict[str, Any]:
        if config.get("recipe") != "probed":
            return super().estimate_memory(config)
        estimate = super().estimate_memory({**config, "recipe": "uniform"})
        own = BITS_PER_WEIGHT[config["quant_type"]] * 1e8
        return {"total_bytes": int(estimate["total_bytes"] - own + config["target_bpw"] * 1e8)}


def test_with_a_probe_the_shrink_is_the_most_bits_the_budget_allows() -> None:
    """Over the budget at every runtime, Q4_K_M is made to fit by the probed recipe at the
    highest target bits per weight (quarter-bit steps) the memory estimate admits, with an
    importance matrix: the target knob is where the budget is spent, not a fixed rule."""
    budget = int((BITS_PER_WEIGHT["Q4_0"] + BITS_PER_WEIGHT["Q4_K_M"]) / 2 * 1e8)
    goal = Goal(max_accuracy_drop=0.02, memory_budget_bytes=budget)
    tools = _SizeByTarget()
    history: list[TrialView] = []
    for i in range(1, 12):
        ctx = _ctx(history, goal=goal, tools=tools, sensitivity=PROBE)
        p = ExpertBrain().propose(ctx)
        assert p.action == "trial", p.thought
        config = DeployConfig.model_validate(p.config)
        assert tools.estimate_memory(p.config)["total_bytes"] <= budget, p.thought
        if config.recipe != "uniform":
            break
        history.append(view(i, None, **p.config))
    assert config.weights.label == "Q4_K_M+probed@4.5+imatrix", p.thought
    assert "4.5 bits per weight" in p.thought
    assert tools.estimate_memory({**p.config, "target_bpw": 4.75})["total_bytes"] > budget


def test_the_expert_does_not_measure_one_probed_file_twice() -> None:
    """Probed at one target, two K-quant file types make the same tensors (the allocation
    starts every group at Q2_K): a Q3_K_M miss is not rescued with the probed file a Q4_K_M
    shrink already measured (seen in a SmolLM2 run: the same file, measured twice)."""
    from haqa.agents.brains.expert import _DeployView, _rescue_with_imatrix

    base = {"n_threads": 2, "n_threads_batch": 2, "flash_attn": False}
    probed = {"recipe": "probed", "target_bpw": 4.25, "imatrix": True}
    history = [
        view(1, None, quant_type="Q4_K_M", **probed, **base),
        view(2, None, quant_type="Q3_K_M", **base),
        view(3, None, quant_type="Q3_K_M", imatrix=True, **base),
    ]
    ctx = _ctx(history, sensitivity=PROBE)
    assert _rescue_with_imatrix(ctx, _DeployView.of(ctx)) is None
    # Without the Q4_K_M trial the same rescue is proposed.
    ctx = _ctx(history[1:], sensitivity=PROBE)
    rescue = _rescue_with_imatrix(ctx, _DeployView.of(ctx))
    assert rescue is not None
    assert DeployConfig.model_validate(rescue.config).weights.label == "Q3_K_M+probed@4.25+imatrix"
