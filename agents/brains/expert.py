"""The ``expert`` brain: what a careful practitioner does, as an explicit offline policy.

It is a rule-based policy, not a language model, and the trace says so.

Fine-tuning (planner): start from the practitioner's default QLoRA recipe, then coordinate search
around the best measured configuration, learning rate first (the knob that matters most), then
rank and training length.

Deployment (tuner): first choose the quantization type by *measured* hardware evidence — the
hardware analyst ranks the types by predicted decode (or prefill) speed from this machine's kernel
microbenchmarks and bandwidth, so a machine without fast 4-bit kernels ranks Q8_0 above Q4 — and
skip types more aggressive than one that already failed the accuracy floor (a type the memory
gate rejected is not proposed again: the rejection is in the history). Then refine the runtime
settings around the best configuration: threads, flash attention, micro-batch, KV-cache type.
"""

from __future__ import annotations

import json
from typing import Any

from haqa.agents.brains.base import BrainKind, DecisionContext, Proposal, TrialView
from haqa.schemas import FLOAT_KV_CACHE_TYPES

#: Bits per weight, roughly, to order types by aggressiveness (higher = safer accuracy).
QUANT_BITS = {
    "F32": 32.0,
    "F16": 16.0,
    "BF16": 16.0,
    "Q8_0": 8.5,
    "Q6_K": 6.56,
    "Q5_K_M": 5.69,
    "Q5_K_S": 5.54,
    "Q5_1": 6.0,
    "Q5_0": 5.5,
    "Q4_K_M": 4.89,
    "Q4_K_S": 4.58,
    "Q4_1": 5.0,
    "Q4_0": 4.5,
    "IQ4_NL": 4.5,
    "IQ4_XS": 4.25,
    "Q3_K_L": 4.27,
    "Q3_K_M": 3.91,
    "Q3_K_S": 3.5,
    "Q2_K": 3.35,
}
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
        tried = {canonical(t.config) for t in ctx.history}
        choices = [str(c) for c in (ctx.space.knob("quant_type").choices or ())]
        rank_key = "quant_prefill_rank" if ctx.goal.metric == "prefill" else "quant_decode_rank"
        ranked = [q for q in ctx.brief.get(rank_key, []) if q in choices]
        ranked += [
            q for q in sorted(choices, key=lambda q: QUANT_BITS.get(q, 16)) if q not in ranked
        ]

        # Accuracy risk first: with a tight accuracy floor, types under ~4.5 bits rarely hold it,
        # so they are measured only after every safer type (and only if budget remains).
        speed_order = list(ranked)  # fastest first, before the accuracy-risk partition
        drop = ctx.goal.max_accuracy_drop
        safe_bits = 4.5 if drop <= 0.02 else 3.9 if drop <= 0.05 else 0.0
        ranked = [q for q in ranked if QUANT_BITS.get(q, 16) >= safe_bits] + [
            q for q in ranked if QUANT_BITS.get(q, 16) < safe_bits
        ]
        measured_types = {t.config.get("quant_type") for t in ctx.history if t.status == "ok"}
        # Misses the weights are to blame for: with a quantized K/V cache it may be the cache.
        failed_accuracy = [
            QUANT_BITS.get(str(t.config.get("quant_type")), 16)
            for t in ctx.history
            if t.status == "ok"
            and not t.feasible
            and t.accuracy is not None
            and t.config.get("type_k", "f16") in FLOAT_KV_CACHE_TYPES
            and t.config.get("type_v", "f16") in FLOAT_KV_CACHE_TYPES
        ]
        # Anything at or below the bits of a type that already missed the accuracy floor would too.
        floor_bits = max(failed_accuracy) if failed_accuracy else 0.0

        if len(measured_types) < QUANT_TYPES_TO_MEASURE:
            for quant in ranked:
                if quant in measured_types or QUANT_BITS.get(quant, 16) <= floor_bits:
                    continue
                candidate = {**ctx.defaults, "quant_type": quant}
                if canonical(candidate) in tried:
                    continue
                position = ranked.index(quant) + 1
                return Proposal(
                    action="trial",
                    config=candidate,
                    thought=(
                        f"policy: {quant} is #{position} by this machine's measured kernel speed "
                        f"({rank_key.replace('_', ' ')}); runtime at the hardware defaults"
                    ),
                )

        # Measured headroom: if the most aggressive type measured so far still met the accuracy
        # floor, a faster, more aggressive type may too — the prior gives way to the evidence.
        # When a bolder type already missed the floor, the types between the two are tried
        # (a bisection on bits): the floor lies somewhere between them.
        measured_ok = [t for t in ctx.history if t.status == "ok" and t.accuracy is not None]
        kept_floor = [t for t in measured_ok if t.feasible]
        if kept_floor:
            boldest = min(kept_floor, key=lambda t: QUANT_BITS.get(str(t.config["quant_type"]), 16))
            bold_name = str(boldest.config["quant_type"])
            bold_bits = QUANT_BITS.get(bold_name, 16)
            for quant in ranked:
                bits = QUANT_BITS.get(quant, 16)
                candidate = {**ctx.defaults, "quant_type": quant}
                if (
                    quant in measured_types
                    or not floor_bits < bits < bold_bits
                    or canonical(candidate) in tried
                ):
                    continue
                if speed_order.index(quant) > speed_order.index(bold_name):
                    continue  # not predicted faster: nothing to gain for the risk
                why = (
                    f"between {bold_name}, which kept the accuracy floor, and a "
                    f"{floor_bits:g}-bit type that missed it"
                    if failed_accuracy
                    else f"{bold_name} kept the accuracy floor, so the faster {quant} may too"
                )
                return Proposal(
                    action="trial",
                    config=candidate,
                    thought=f"policy: {quant} ({bits:g} bits): {why}",
                )

        best = ctx.incumbent()
        if best is None:
            return Proposal(
                action="finish", thought="policy: no feasible configuration was measured"
            )
        for change, why in self._runtime_moves(best, ctx):
            candidate = {**best.config, **change}
            if canonical(candidate) in tried:
                continue
            try:
                ctx.space.validate_config(change)
            except Exception:
                continue
            if candidate.get("type_v", "f16") != "f16" and not candidate.get("flash_attn"):
                continue
            return Proposal(action="trial", config=candidate, thought=f"policy: {why}")
        return Proposal(
            action="finish", thought="policy: every neighbour of the best config was measured"
        )

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


def _round(x: float) -> float:
    return float(f"{x:.3g}")
