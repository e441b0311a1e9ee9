"""The ``expert`` brain: what a careful practitioner does, as an explicit offline policy.

It is a rule-based policy, not a language model, and the trace says so.

Fine-tuning (planner): start from the practitioner's default QLoRA recipe, then coordinate search
around the best measured configuration, learning rate first (the knob that matters most), then
rank and training length.

Deployment (tuner): first choose the quantization type by *measured* hardware evidence — the
hardware analyst ranks the types by predicted decode (or prefill) speed from this machine's kernel
microbenchmarks and bandwidth, so a machine without fast 4-bit kernels ranks Q8_0 above Q4 — and
skip types more aggressive than one that already failed the accuracy floor (a type the memory
gate rejected is not proposed again: the rejection is in the history). With a memory budget,
a type the memory estimate (the gate's own tool) puts over it is not proposed at all: a trial
the gate rejects spends budget and measures nothing. When the types that fit miss the accuracy
floor, the smallest type that does not fit is made smaller instead — the file a practitioner
makes by hand: its FFN up/gate matrices (most of the weights, among the least sensitive) one
step down, with an importance matrix to keep their rounding error where it matters least. A
type that measured faster than the incumbent but missed the accuracy floor gets the same file
quantized with an importance matrix (same size and speed, less rounding error where it
matters), then with its sensitive tensors one step up too. Then refine the runtime settings
around the best configuration: threads, flash attention, micro-batch, KV-cache type.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from haqa.agents.brains.base import BrainKind, DecisionContext, Proposal, TrialView
from haqa.quant import BITS_PER_WEIGHT, FTYPE_BASE
from haqa.recipes import PROBED, TARGET_BPW_RANGE
from haqa.schemas import FLOAT_KV_CACHE_TYPES

#: How many quantization types to measure before refining the runtime settings.
QUANT_TYPES_TO_MEASURE = 3


def canonical(config: dict[str, Any]) -> str:
    return json.dumps(config, sort_keys=True, default=str)


class ExpertBrain:
    """Offline rule-based policy (the default brain)."""

    name: str = "expert"
    kind: BrainKind = "policy"

    def propose(self, ctx: DecisionContext) -> Proposal:
        if ctx.stage == "finetune":
            return self._finetune(ctx)
        return self._deploy(ctx)

    # -- fine-tuning -----------------------------------------------------------------------

    def _finetune(self, ctx: DecisionContext) -> Proposal:
        tried = {canonical(t.config) for t in ctx.history}
        ok = [t for t in ctx.history if t.status == "ok" and t.accuracy is not None]
        if not ok:
            start = dict(ctx.defaults)
            if canonical(start) not in tried:
                return Proposal(
                    action="trial",
                    config=start,
                    thought="policy: start from the standard QLoRA recipe (nf4, r=8, alpha=16)",
                )
        best = max(ok, key=lambda t: t.accuracy or 0.0) if ok else None
        base = dict(best.config) if best else dict(ctx.defaults)
        for change, why in self._finetune_moves(base, ctx):
            candidate = {**base, **change}
            if canonical(candidate) in tried:
                continue
            try:
                ctx.space.validate_config(change)
            except Exception:
                continue
            return Proposal(action="trial", config=candidate, thought=f"policy: {why}")
        return Proposal(action="finish", thought="policy: no untried neighbour of the best config")

    @staticmethod
    def _finetune_moves(
        base: dict[str, Any], ctx: DecisionContext
    ) -> list[tuple[dict[str, Any], str]]:
        lr = float(base.get("learning_rate", 5e-3))
        r = int(base.get("lora_r", 8))
        steps = int(base.get("max_steps", 60))
        alpha = int(base.get("lora_alpha", 16))
        return [
            ({"learning_rate": _round(lr * 3)}, "learning rate matters most: try 3x higher"),
            ({"learning_rate": _round(lr / 3)}, "learning rate matters most: try 3x lower"),
            (
                {"lora_r": r * 2, "lora_alpha": alpha * 2},
                "more adapter capacity (rank x2, same alpha/r)",
            ),
            ({"max_steps": int(steps * 2)}, "train twice as long"),
            ({"lora_r": max(2, r // 2), "lora_alpha": max(4, alpha // 2)}, "smaller adapter"),
            ({"learning_rate": _round(lr * 10)}, "a much higher learning rate"),
        ]

    # -- deployment ------------------------------------------------------------------------

    def _deploy(self, ctx: DecisionContext) -> Proposal:
        """The first policy that has a trial to propose, in this order: measure the ranked
        types; recover accuracy with safer types when nothing measured kept the floor; probe the
        headroom below the boldest type that kept it; refine the runtime settings of the best."""
        view = _DeployView.of(ctx)
        for policy in (
            _measure_ranked_types,
            _recover_accuracy,
            _probe_headroom,
            _shrink_to_fit,
            _rescue_with_imatrix,
        ):
            proposal = policy(ctx, view)
            if proposal is not None:
                return proposal
        return _refine_runtime(ctx, view)

    @staticmethod
    def _runtime_moves(best: TrialView, ctx: DecisionContext) -> list[tuple[dict[str, Any], str]]:
        cfg = best.config
        threads = [int(c) for c in (ctx.space.knob("n_threads").choices or ())]
        # The fused attention first: on CPUs it wins for some types and loses for others, so
        # only measuring tells. Fewer decode threads than the defaults come after it: they pay
        # only where bandwidth is saturated, which a small machine's cores rarely are.
        moves: list[tuple[dict[str, Any], str]] = [
            ({"flash_attn": not cfg.get("flash_attn", False)}, "toggle the fused attention")
        ]
        for t in sorted(threads, reverse=True):
            if t != cfg.get("n_threads"):
                moves.append(({"n_threads": t}, f"decode threads {t}: bandwidth may saturate"))
        if ctx.goal.metric != "decode":
            for ub in (256, 128):
                if ub != cfg.get("n_ubatch"):
                    moves.append(({"n_ubatch": ub}, f"prompt micro-batch {ub} (cache-friendly)"))
            for t in sorted(threads, reverse=True):
                if t != cfg.get("n_threads_batch"):
                    moves.append(({"n_threads_batch": t}, f"prompt threads {t}"))
        moves.append(
            (
                {"flash_attn": True, "type_k": "q8_0", "type_v": "q8_0"},
                "8-bit KV cache with flash attention: less memory read per token",
            )
        )
        return moves


@dataclass(frozen=True)
class _DeployView:
    """What the deploy policies share: the tried configurations, the types ranked by this
    machine's measured speed, and which bits already missed the accuracy floor."""

    tried: set[str]
    ranked: list[str]
    speed_order: list[str]
    rank_key: str
    measured_types: set[str]
    floor_bits: float
    missed_floor: bool
    #: Each type's effective bits per weight on this model (the brief's, from its tensor shapes:
    #: on SmolLM2 Q3_K_M has 5.46 and Q4_0 5.35, as K-quants fall back), else the nominal bits.
    bits: dict[str, float]

    def bits_of(self, quant: object) -> float:
        return self.bits.get(str(quant), _bits(quant))

    def faster_than_incumbent(self, ctx: DecisionContext) -> int:
        """How many types in the speed order come before the incumbent's (all, with none)."""
        best = ctx.incumbent()
        order = self.speed_order
        if best is None or best.config.get("quant_type") not in order:
            return len(order)
        return order.index(str(best.config["quant_type"]))

    @classmethod
    def of(cls, ctx: DecisionContext) -> _DeployView:
        choices = [str(c) for c in (ctx.space.knob("quant_type").choices or ())]
        rank_key = "quant_prefill_rank" if ctx.goal.metric == "prefill" else "quant_decode_rank"
        ranked = [q for q in ctx.brief.get(rank_key, []) if q in choices]
        ranked += [q for q in sorted(choices, key=_bits) if q not in ranked]
        speed_order = list(ranked)  # fastest first, before the accuracy-risk partition
        # Accuracy risk first: with a tight accuracy floor, types under ~4.5 bits rarely hold it,
        # so they are measured only after every safer type (and only if budget remains).
        drop = ctx.goal.max_accuracy_drop
        safe_bits = 4.5 if drop <= 0.02 else 3.9 if drop <= 0.05 else 0.0
        ranked = [q for q in ranked if _bits(q) >= safe_bits] + [
            q for q in ranked if _bits(q) < safe_bits
        ]
        bits = {str(q): float(b) for q, b in (ctx.brief.get("bits_per_weight") or {}).items()}
        # Misses the weights are to blame for: with a K/V cache below 8 bits it may be the cache.
        failed_accuracy = [
            _trial_bits(t.config, bits)
            for t in ctx.history
            if t.status == "ok"
            and not t.feasible
            and t.accuracy is not None
            and _near_lossless_cache(t.config)
        ]
        return cls(
            tried={canonical(t.config) for t in ctx.history},
            ranked=ranked,
            speed_order=speed_order,
            rank_key=rank_key,
            measured_types={
                str(t.config.get("quant_type")) for t in ctx.history if t.status == "ok"
            },
            # Anything at or below the bits of a type that already missed the floor would too.
            floor_bits=max(failed_accuracy) if failed_accuracy else 0.0,
            missed_floor=bool(failed_accuracy),
            bits=bits,
        )

    def untried(self, ctx: DecisionContext, quant: str) -> dict[str, Any] | None:
        """The type at the defaults, or at the leanest runtime that fits the memory budget;
        None when it was tried or no runtime makes it fit."""
        if quant in self.measured_types:
            return None
        return fitting(ctx, {**ctx.defaults, "quant_type": quant}, self.tried)


#: Runtime settings that cut the peak without touching the weights, mildest first: flash
#: attention drops the attention score matrix (most of the compute buffer at a long context),
#: an 8-bit K/V cache halves the cache. Tried in this order when a configuration is over budget.
LEAN_RUNTIME: tuple[dict[str, Any], ...] = (
    {},
    {"flash_attn": True},
    {"flash_attn": True, "type_k": "q8_0", "type_v": "q8_0"},
)


def fitting(ctx: DecisionContext, config: dict[str, Any], tried: set[str]) -> dict[str, Any] | None:
    """``config``, or the same with the first lean runtime under which the memory estimate puts
    it within the budget; None when it was tried already or nothing in ``LEAN_RUNTIME`` fits."""
    if ctx.goal.memory_budget_bytes is None or ctx.tools is None:
        return None if canonical(config) in tried else config
    for lean in LEAN_RUNTIME:
        candidate = {**config, **lean}
        if canonical(candidate) in tried:
            return None
        try:
            ctx.space.validate_config(candidate)
        except Exception:
            continue
        if predicted_peak(ctx, candidate) is None:
            return candidate
    return None


def predicted_peak(ctx: DecisionContext, config: dict[str, Any]) -> int | None:
    """The peak the memory gate predicts for ``config`` when it is over the goal's budget, else
    None (no budget, no estimate to ask, or an estimate that fails: the gate decides then)."""
    budget = ctx.goal.memory_budget_bytes
    if budget is None or ctx.tools is None:
        return None
    try:
        peak = int(ctx.tools.estimate_memory(config).get("total_bytes", 0))
    except Exception:
        return None
    return None if ctx.goal.fits_memory(peak) else peak


def _runtime_words(ctx: DecisionContext, candidate: dict[str, Any]) -> str:
    """How the candidate's runtime differs from the hardware defaults, in words."""
    changed = sorted(
        k for k, v in candidate.items() if k != "quant_type" and ctx.defaults.get(k) != v
    )
    if not changed:
        return "the hardware defaults"
    return (
        "the hardware defaults but "
        + ", ".join(f"{k}={candidate[k]}" for k in changed)
        + (" (to fit the memory budget)")
    )


def _near_lossless_cache(config: dict[str, Any]) -> bool:
    """A K/V cache of 8 bits or more: its rounding is far below the weights' (llama.cpp measures
    a q8_0 cache within a few thousandths of f16 in perplexity), so a miss is the weights'. A
    q4_0 or q5 cache may be to blame itself."""
    return all(
        config.get(k, "f16") in (*FLOAT_KV_CACHE_TYPES, "q8_0") for k in ("type_k", "type_v")
    )


def _floor(ctx: DecisionContext) -> str:
    """What a miss missed, in the policy's words: a goal with a perplexity floor has two, and
    the expert treats a miss of either alike (both are the weights' rounding)."""
    if ctx.goal.max_perplexity_increase is None:
        return "accuracy floor"
    return "accuracy or perplexity floor"


def _bits(quant_type: object) -> float:
    return BITS_PER_WEIGHT.get(str(quant_type), 16.0)


def _trial_bits(config: dict[str, Any], bits: dict[str, float]) -> float:
    """The bits per weight of a trial's file: a probed recipe's target (its file has those, not
    its type's), else the type's effective bits on this model."""
    if config.get("recipe") == PROBED and config.get("target_bpw") is not None:
        return float(config["target_bpw"])
    quant = config.get("quant_type")
    return bits.get(str(quant), _bits(quant))


def _measure_ranked_types(ctx: DecisionContext, view: _DeployView) -> Proposal | None:
    """The first few types in this machine's measured speed order, skipping any type at or below
    the bits of one that already missed the accuracy floor."""
    if len(view.measured_types) >= QUANT_TYPES_TO_MEASURE:
        return None
    for quant in view.ranked:
        candidate = view.untried(ctx, quant)
        if candidate is None or view.bits_of(quant) <= view.floor_bits:
            continue
        return Proposal(
            action="trial",
            config=candidate,
            thought=(
                f"policy: {quant} is #{view.ranked.index(quant) + 1} by this machine's measured "
                f"kernel speed ({view.rank_key.replace('_', ' ')}); runtime at "
                f"{_runtime_words(ctx, candidate)}"
            ),
        )
    if not ctx.history and view.ranked:
        # Every type is predicted over the budget: the smallest goes to the gate once, so the
        # store holds by how much the budget is short, and the run ends "goal not met".
        smallest = min(view.ranked, key=_bits)
        return Proposal(
            action="trial",
            config={**ctx.defaults, "quant_type": smallest},
            thought=f"policy: every type is predicted over the memory budget, even {smallest}",
        )
    return None


def _recover_accuracy(ctx: DecisionContext, view: _DeployView) -> Proposal | None:
    """Nothing measured kept the accuracy floor: try the types with more bits than any that
    missed it, fastest first, before giving up. On a real model the floor is often held only by
    8-bit or 6-bit weights; finishing with budget left and those untried would answer "no
    configuration met the goal" to a goal that Q8_0 meets."""
    if ctx.incumbent() is not None or not view.missed_floor:
        return None
    safer = [q for q in view.speed_order if view.bits_of(q) > view.floor_bits]
    for quant in safer:
        candidate = view.untried(ctx, quant)
        if candidate is None:
            continue
        return Proposal(
            action="trial",
            config=candidate,
            thought=(
                f"policy: no type measured so far kept the {_floor(ctx)}; {quant} "
                f"({view.bits_of(quant):.2f} bits) has more bits than every type that missed it"
            ),
        )
    return None


def _probe_headroom(ctx: DecisionContext, view: _DeployView) -> Proposal | None:
    """Measured headroom: if the most aggressive type measured so far still met the accuracy
    floor, a faster, more aggressive type may too — the prior gives way to the evidence. When a
    bolder type already missed the floor, the types between the two are tried (a bisection on
    bits): the floor lies somewhere between them."""
    kept_floor = [
        t for t in ctx.history if t.status == "ok" and t.accuracy is not None and t.feasible
    ]
    if not kept_floor:
        return None
    boldest = min(kept_floor, key=lambda t: view.bits_of(t.config["quant_type"]))
    bold_name = str(boldest.config["quant_type"])
    bold_bits = view.bits_of(bold_name)
    for quant in view.ranked:
        bits = view.bits_of(quant)
        candidate = view.untried(ctx, quant)
        if candidate is None or not view.floor_bits < bits < bold_bits:
            continue
        if view.speed_order.index(quant) > view.speed_order.index(bold_name):
            continue  # not predicted faster: nothing to gain for the risk
        why = (
            f"between {bold_name}, which kept the {_floor(ctx)}, and a "
            f"{view.floor_bits:g}-bit type that missed it"
            if view.missed_floor
            else f"{bold_name} kept the {_floor(ctx)}, so the faster {quant} may too"
        )
        return Proposal(
            action="trial", config=candidate, thought=f"policy: {quant} ({bits:g} bits): {why}"
        )
    return None


#: How the expert makes a type that is over the memory budget smaller: its FFN up/gate matrices
#: one step down, with an importance matrix (haqa.recipes: ``ffn_up_gate_down``).
SHRINK: dict[str, Any] = {"recipe": "ffn_up_gate_down", "imatrix": True}


def _shrink_to_fit(ctx: DecisionContext, view: _DeployView) -> Proposal | None:
    """Nothing that fits kept the accuracy floor (or a type faster than the incumbent does not
    fit): make the smallest type that is over the budget smaller, and propose it if the memory
    estimate now admits it. A type with more bits keeps more accuracy than any lower type that
    fits, and a shrunk type differs from it only in the FFN up/gate matrices."""
    budget = ctx.goal.memory_budget_bytes
    if budget is None or ctx.tools is None or "recipe" not in ctx.space.names:
        return None
    order = view.speed_order
    limit = view.faster_than_incumbent(ctx)
    over: list[tuple[int, str]] = []
    for quant in order[:limit]:
        if view.bits_of(quant) <= view.floor_bits:
            continue  # fewer bits than a type that missed the floor: shrunk, it would miss too
        leanest = {**ctx.defaults, "quant_type": quant, **LEAN_RUNTIME[-1]}
        peak = predicted_peak(ctx, leanest)
        if peak is not None:  # over the budget at every runtime setting
            over.append((peak, quant))
    for peak, quant in sorted(over):
        probed = _probed_to_fit(ctx, view, quant)
        candidate: dict[str, Any] | None
        if probed is not None:
            candidate, target = probed
            how = (
                f"at {target:g} bits per weight, the most the budget allows, spent on the "
                "tensor groups the sensitivity probe ranks first, with an importance matrix"
            )
        else:
            base = {**ctx.defaults, "quant_type": quant, **SHRINK}
            candidate = fitting(ctx, base, view.tried)
            how = "with ffn_up/ffn_gate one step down and an importance matrix"
        if candidate is None:
            continue
        return Proposal(
            action="trial",
            config=candidate,
            thought=(
                f"policy: {quant} is predicted over the memory budget at any runtime setting "
                f"({peak / 2**20:.0f} MiB at the leanest); {how} it fits"
            ),
        )
    return None


#: The step of the target bits per weight the expert tries (finer steps move a group or two).
BPW_STEP = 0.25


def _probed_file_tried(ctx: DecisionContext, config: dict[str, Any]) -> bool:
    """A probed recipe at this target (and imatrix) was measured on a file type of the same
    ladder: the allocation starts every probed group at the ladder's bottom, so Q3_K_M and
    Q4_K_M probed at one target are the same tensors (they differ only where the probe did not
    look), and a second trial would measure that file again."""
    if config.get("recipe") != PROBED:
        return False

    def same(other: dict[str, Any]) -> bool:
        return (
            other.get("recipe") == PROBED
            and other.get("target_bpw") == config.get("target_bpw")
            and bool(other.get("imatrix")) == bool(config.get("imatrix"))
            and _ladder(other.get("quant_type")) == _ladder(config.get("quant_type"))
        )

    return any(same(t.config) for t in ctx.history)


def _ladder(quant_type: object) -> str:
    """The ladder a file type's probed recipe climbs: the K-quants share one."""
    base = FTYPE_BASE.get(str(quant_type), str(quant_type))
    return "K" if base.endswith("_K") else base


def _has_probe(ctx: DecisionContext) -> bool:
    """The analyst measured the tensor sensitivity and the space has the probed recipe."""
    probe = ctx.brief.get("tensor_sensitivity") or {}
    recipes = ctx.space.knob("recipe").choices if "recipe" in ctx.space.names else ()
    return (
        bool(probe.get("groups")) and PROBED in (recipes or ()) and "target_bpw" in ctx.space.names
    )


def _probed_to_fit(
    ctx: DecisionContext, view: _DeployView, quant: str
) -> tuple[dict[str, Any], float] | None:
    """The probed recipe of ``quant`` at the highest target bits per weight (steps of
    ``BPW_STEP`` below the type's own bits) that the memory estimate admits at some lean
    runtime, with an importance matrix; None without a probe or when no target fits."""
    if not _has_probe(ctx):
        return None
    low, _ = TARGET_BPW_RANGE
    target = math.floor(view.bits_of(quant) / BPW_STEP) * BPW_STEP
    config = {**ctx.defaults, "quant_type": quant, "recipe": PROBED, "imatrix": True}
    while target >= low:
        for lean in LEAN_RUNTIME:
            candidate = {**config, "target_bpw": target, **lean}
            if canonical(candidate) in view.tried or _probed_file_tried(ctx, candidate):
                return None  # the most bits that fit were measured already: not fewer again
            if predicted_peak(ctx, candidate) is None:
                return candidate, target
        target -= BPW_STEP
    return None


#: What the expert tries on a type that missed the accuracy floor, in order: the same file
#: quantized with an importance matrix, then with attn_v and ffn_down one step up as well.
RESCUES: tuple[tuple[dict[str, Any], str], ...] = (
    ({"imatrix": True}, "an importance matrix: same size and speed, less rounding error"),
    (
        {"imatrix": True, "recipe": "sensitive_up"},
        "an importance matrix and attn_v/ffn_down one step up",
    ),
)


#: The bits per weight the probed rescue adds to the type's own: about what ``sensitive_up``
#: adds on a LLaMA-shaped model (a fifth of the weights one step up), spent where it was measured
#: to matter instead of on fixed groups.
RESCUE_EXTRA_BPW = 0.5


def _rescues(
    ctx: DecisionContext, view: _DeployView, t: TrialView
) -> tuple[tuple[dict[str, Any], str], ...]:
    """``RESCUES``, with the fixed sensitive groups replaced by the probed recipe when the
    analyst measured which groups are sensitive on this model; none for a probed miss."""
    recipe = t.config.get("recipe", "uniform")
    if recipe == PROBED:
        return ()  # its bits already went where the probe says; a fixed rule would not do better
    if not _has_probe(ctx) or recipe != "uniform":
        return RESCUES
    _, high = TARGET_BPW_RANGE
    bits = view.bits_of(t.config.get("quant_type"))
    target = min(high, math.floor((bits + RESCUE_EXTRA_BPW) / BPW_STEP) * BPW_STEP)
    if target <= bits:
        return RESCUES[:1]  # no bits left above the type's own (Q8_0): the same file again
    probed = {"imatrix": True, "recipe": PROBED, "target_bpw": target}
    return (
        RESCUES[0],
        (
            probed,
            f"an importance matrix and {target:g} bits per weight, spent on the tensor groups "
            "the sensitivity probe ranks first",
        ),
    )


def _missed_accuracy(t: TrialView, ctx: DecisionContext) -> bool:
    """Measured, infeasible and within the memory budget: the accuracy floor is what it missed
    (a K/V cache below 8 bits may be to blame instead, so those trials are left out)."""
    budget = ctx.goal.memory_budget_bytes
    over_memory = budget is not None and (t.peak_mem_bytes or 0) > budget
    return (
        t.status == "ok"
        and not t.feasible
        and t.accuracy is not None
        and not over_memory
        and _near_lossless_cache(t.config)
    )


def _rescue_with_imatrix(ctx: DecisionContext, view: _DeployView) -> Proposal | None:
    """A type faster than the incumbent (any type, when nothing kept the floor) that missed the
    accuracy floor only on its rounding: the same file with an importance matrix, then with its
    sensitive tensors one step up. The closest miss (most bits) first."""
    if "imatrix" not in ctx.space.names:
        return None
    order = view.speed_order
    limit = view.faster_than_incumbent(ctx)
    missed = [t for t in ctx.history if _missed_accuracy(t, ctx)]
    for t in sorted(missed, key=lambda t: -view.bits_of(t.config.get("quant_type"))):
        quant = str(t.config.get("quant_type"))
        if quant in order and order.index(quant) >= limit:
            continue  # not faster than what already holds the floor
        for change, why in _rescues(ctx, view, t):
            candidate = ctx.space.applicable({**t.config, **change})
            if canonical(candidate) in view.tried or _probed_file_tried(ctx, candidate):
                continue
            if predicted_peak(ctx, candidate) is not None:
                continue
            try:
                ctx.space.validate_config(candidate)
            except Exception:
                continue
            return Proposal(
                action="trial",
                config=candidate,
                thought=f"policy: {quant} missed the {_floor(ctx)} (trial {t.trial_id}); {why}",
            )
    return None


def _refine_runtime(ctx: DecisionContext, view: _DeployView) -> Proposal:
    """The runtime settings around the best configuration, one move at a time."""
    best = ctx.incumbent()
    if best is None:
        return Proposal(action="finish", thought="policy: no feasible configuration was measured")
    for change, why in ExpertBrain._runtime_moves(best, ctx):
        candidate = {**best.config, **change}
        if canonical(candidate) in view.tried:
            continue
        try:
            ctx.space.validate_config(change)
        except Exception:
            continue
        if candidate.get("type_v", "f16") != "f16" and not candidate.get("flash_attn"):
            continue
        if predicted_peak(ctx, candidate) is not None:
            continue  # the gate would reject it: a move that spends the budget on nothing
        return Proposal(action="trial", config=candidate, thought=f"policy: {why}")
    return Proposal(
        action="finish", thought="policy: every neighbour of the best config was measured"
    )


def _round(x: float) -> float:
    return float(f"{x:.3g}")
