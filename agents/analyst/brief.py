"""The hardware brief: facts from the probe and implications from the microbenchmarks.

The ranking of quantization types is the hardware-aware part. Decode reads every weight once per
token, so its time per token is about Σ bytes(type) ÷ the speed at which *this machine's kernel for
that type* consumes weights. The microbenchmarks measure that speed (llama.cpp GEMV on a one-layer
GGUF of the target's shapes, per type); a type the microbenchmarks did not cover is assumed to run
at the measured memory bandwidth. Prompt processing is compute-bound and ranked by the measured
GEMM time instead. On a machine without fast 4-bit kernels this ranks Q8_0 above Q4 types —
the counter-intuitive choice the paper reports — because it was measured, not assumed.

Bits are the model's own where the toolbox predicted them from its tensor shapes (``weight_bits``
in the microbenchmark result): a K-quant whose rows do not fit its 256-blocks falls back to a
32-block type, so on such a model Q2_K weighs about what Q4_0 does, and the brief says so.
"""

from __future__ import annotations

from typing import Any

from haqa.quant import BITS_PER_WEIGHT, KERNEL_FAMILY


def _llama_rows(micro: dict[str, Any]) -> list[dict[str, Any]]:
    rows = micro.get("rows") or []
    return [r for r in rows if str(r.get("backend", "")).startswith("llama")]


def _best_time(rows: list[dict[str, Any]], dtype: str, gemv: bool) -> float | None:
    """Fastest measured seconds for a llama.cpp type, GEMV (m = 1) or GEMM (m > 1)."""
    times = [
        float(r["seconds"])
        for r in rows
        if str(r.get("dtype", "")).upper() == dtype.upper()
        and (int(r.get("m", 1)) == 1) == gemv
        and r.get("seconds")
    ]
    return min(times) if times else None


def effective_bits(micro: dict[str, Any]) -> dict[str, float]:
    """Bits per weight of every file type: the model's own where predicted, else nominal."""
    predicted = micro.get("weight_bits") or {}
    return {
        q: float((predicted.get(q) or {}).get("bits_per_weight") or nominal)
        for q, nominal in BITS_PER_WEIGHT.items()
    }


def _measured_rate(
    rows: list[dict[str, Any]], quant: str, gemv: bool, bits: dict[str, float]
) -> float | None:
    """Bits of weights consumed per second by the type's kernel, measured on this machine, or
    by its kernel family's measured kernel when the type itself was not timed."""
    for name in (quant, KERNEL_FAMILY.get(quant)):
        if name is None:
            continue
        t = _best_time(rows, name, gemv)
        if t:
            return bits.get(name, 16.0) / t
    return None


def rank_quant_types(
    quant_types: list[str], micro: dict[str, Any], bandwidth_bytes_per_s: float | None
) -> tuple[list[str], list[str], dict[str, float]]:
    """Types ordered by predicted decode speed and by predicted prefill speed (fastest first),
    and the predicted decode-time factor of each (relative; lower is faster)."""
    rows = _llama_rows(micro)
    bits = effective_bits(micro)
    bandwidth_bits = (bandwidth_bytes_per_s or 0.0) * 8
    decode_cost: dict[str, float] = {}
    for q in quant_types:
        b = bits.get(q, 16.0)
        rate = _measured_rate(rows, q, True, bits)
        # No measurement at all: decode streams the weights at the measured memory bandwidth.
        decode_cost[q] = b / rate if rate else b / bandwidth_bits if bandwidth_bits else b
    decode_rank = sorted(quant_types, key=lambda q: (decode_cost[q], -bits.get(q, 16)))
    prefill_cost: dict[str, float] = {}
    for q in quant_types:
        rate = _measured_rate(rows, q, False, bits)
        prefill_cost[q] = bits.get(q, 16.0) / rate if rate else float("inf")
    prefill_rank = sorted(
        quant_types, key=lambda q: (prefill_cost[q], decode_cost[q], -bits.get(q, 16))
    )
    return decode_rank, prefill_rank, decode_cost


def fallback_notes(micro: dict[str, Any], quant_types: list[str]) -> list[str]:
    """One line naming the types that fall back on this model, with their effective bits."""
    predicted = micro.get("weight_bits") or {}
    fell = [
        f"{q} {float(p['bits_per_weight']):.2f} (nominal {BITS_PER_WEIGHT.get(q, 16.0):.2f})"
        for q in quant_types
        if (p := predicted.get(q)) and float(p.get("fallback_share") or 0.0) >= 0.05
    ]
    if not fell:
        return []
    share = max(float((predicted.get(q) or {}).get("fallback_share") or 0) for q in quant_types)
    return [
        f"on this model {share:.0%} of the matrix weights have rows that do not fit the "
        "K-quants' 256-blocks, so these types fall back to 32-block types; effective bits per "
        "weight: " + ", ".join(fell)
    ]


def make_brief(
    profile: dict[str, Any],
    micro: dict[str, Any],
    quant_types: list[str],
    sensitivity: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The brief as data (for brains) plus a text rendering (for prompts and the report).
    ``sensitivity`` is the tensor-sensitivity probe's result: the brief names the groups it
    measured most sensitive per weight (where a probed recipe spends bits first)."""
    bandwidth = (profile.get("bandwidth") or {}).get("read_bytes_per_s")
    decode_rank, prefill_rank, cost = rank_quant_types(quant_types, micro, bandwidth)
    flags = [k for k, v in (profile.get("flags") or {}).items() if v]
    facts = [
        f"CPU: {profile.get('cpu_model', '?')} ({profile.get('arch', '?')}), "
        f"{profile.get('physical_cores', '?')} physical / {profile.get('logical_cores', '?')} "
        "logical cores",
        f"ISA flags: {', '.join(flags) or 'none of interest'}",
        f"RAM: {(profile.get('ram_total_bytes') or 0) / 2**30:.1f} GiB total, "
        f"{(profile.get('ram_available_bytes') or 0) / 2**30:.1f} GiB available",
    ]
    if bandwidth:
        facts.append(f"measured memory read bandwidth (all cores): {bandwidth / 1e9:.1f} GB/s")
    for gpu in profile.get("gpus") or []:
        facts.append(f"GPU: {gpu.get('name')} (compute capability {gpu.get('compute_capability')})")
    implications = list(micro.get("implications") or []) + fallback_notes(micro, quant_types)
    if sensitivity:
        implications.append(str(sensitivity.get("summary") or sensitivity.get("error")))
    fastest = decode_rank[0] if decode_rank else None
    if fastest:
        implications.append(
            "predicted decode order on this machine (fastest first): " + ", ".join(decode_rank)
        )
    text = "\n".join(["Facts:", *[f"- {f}" for f in facts], "Measured implications:"])
    text += "\n" + "\n".join(f"- {i}" for i in implications) if implications else ""
    return {
        "facts": facts,
        "implications": implications,
        "quant_decode_rank": decode_rank,
        "quant_prefill_rank": prefill_rank,
        "decode_cost": cost,
        "bits_per_weight": {q: round(b, 3) for q, b in effective_bits(micro).items()},
        "physical_cores": profile.get("physical_cores"),
        "logical_cores": profile.get("logical_cores"),
        "bandwidth_bytes_per_s": bandwidth,
        "llc_bytes": (profile.get("caches") or {}).get("l3_bytes"),
        "fingerprint": profile.get("fingerprint"),
        "tensor_sensitivity": sensitivity,
        "text": text,
    }
