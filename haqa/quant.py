"""llama.cpp's quantization types, one table: block layouts, file types, bits per weight, the kernel
family a type shares and the type a tensor falls back to when its rows do not fit the blocks.

Everything that reasons about a type reads it here: the analyst's brief (decode cost per weight),
the expert brain (how aggressive a type is), the memory model (bytes per tensor) and the KV-cache
arithmetic. Facts are llama.cpp's (ggml.h, ggml-common.h, llama-quant.cpp); a type's nominal bits
per weight are computed from its block layout, a mixed file type's from llama.cpp's published
sizes (the per-tensor mix depends on the model: measured figures come from a GGUF's header).
"""

from __future__ import annotations

from typing import Final

#: ggml tensor types: (elements per block, bytes per block), as ggml's ``type_traits``.
BLOCK: Final[dict[str, tuple[int, int]]] = {
    "F32": (1, 4),
    "F16": (1, 2),
    "BF16": (1, 2),
    "Q8_0": (32, 34),
    "Q6_K": (256, 210),
    "Q5_K": (256, 176),
    "Q5_0": (32, 22),
    "Q5_1": (32, 24),
    "Q4_K": (256, 144),
    "Q4_0": (32, 18),
    "Q4_1": (32, 20),
    "IQ4_NL": (32, 18),
    "IQ4_XS": (256, 136),
    "Q3_K": (256, 110),
    "Q2_K": (256, 84),
}

#: ggml type ids (ggml.h ``enum ggml_type``) of the tensor types above.
GGML_TYPE_IDS: Final[dict[str, int]] = {
    "F32": 0,
    "F16": 1,
    "Q4_0": 2,
    "Q4_1": 3,
    "Q5_0": 6,
    "Q5_1": 7,
    "Q8_0": 8,
    "Q2_K": 10,
    "Q3_K": 11,
    "Q4_K": 12,
    "Q5_K": 13,
    "Q6_K": 14,
    "IQ4_NL": 20,
    "IQ4_XS": 23,
    "BF16": 30,
}

#: The default tensor type of each llama.cpp file type (``llama_ftype_get_default_type``).
FTYPE_BASE: Final[dict[str, str]] = {
    "F32": "F32",
    "F16": "F16",
    "BF16": "BF16",
    "Q8_0": "Q8_0",
    "Q6_K": "Q6_K",
    "Q5_K_M": "Q5_K",
    "Q5_K_S": "Q5_K",
    "Q5_0": "Q5_0",
    "Q5_1": "Q5_1",
    "Q4_K_M": "Q4_K",
    "Q4_K_S": "Q4_K",
    "Q4_0": "Q4_0",
    "Q4_1": "Q4_1",
    "IQ4_NL": "IQ4_NL",
    "IQ4_XS": "IQ4_XS",
    "Q3_K_L": "Q3_K",
    "Q3_K_M": "Q3_K",
    "Q3_K_S": "Q3_K",
    "Q2_K": "Q2_K",
}

#: ``general.file_type`` values (llama.h ``llama_ftype``) of the file types above.
FTYPE_IDS: Final[dict[int, str]] = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    7: "Q8_0",
    8: "Q5_0",
    9: "Q5_1",
    10: "Q2_K",
    11: "Q3_K_S",
    12: "Q3_K_M",
    13: "Q3_K_L",
    14: "Q4_K_S",
    15: "Q4_K_M",
    16: "Q5_K_S",
    17: "Q5_K_M",
    18: "Q6_K",
    25: "IQ4_NL",
    30: "IQ4_XS",
    32: "BF16",
}

#: What llama-quant.cpp uses for a tensor whose row length is not a multiple of the block.
FALLBACK: Final[dict[str, str]] = {
    "Q4_K": "Q5_0",
    "Q5_K": "Q5_1",
    "Q6_K": "Q8_0",
    "Q3_K": "Q4_0",
    "Q2_K": "Q4_0",
    "IQ4_XS": "IQ4_NL",
}

#: Nominal bits per weight of the mixed K-quant file types on a LLaMA-7B-like model (llama.cpp's
#: quantize table); single-type files are computed from ``BLOCK``.
_MIXED_BITS: Final[dict[str, float]] = {
    "Q5_K_M": 5.69,
    "Q5_K_S": 5.54,
    "Q4_K_M": 4.89,
    "Q4_K_S": 4.58,
    "Q3_K_L": 4.27,
    "Q3_K_M": 3.91,
    "Q3_K_S": 3.5,
    "Q2_K": 3.35,
}


def block_bits(ggml_type: str) -> float:
    """Bits per weight of one tensor type, block overhead included (Q6_K: 6.5625)."""
    elements, size = BLOCK[ggml_type]
    return 8.0 * size / elements


def nominal_bits(file_type: str) -> float:
    """Bits per weight of a llama.cpp file type before a model's own mix (16 when unknown): how
    aggressive the type is. A model's effective bits come from its file's header instead."""
    if file_type in _MIXED_BITS:
        return _MIXED_BITS[file_type]
    base = FTYPE_BASE.get(file_type)
    return block_bits(base) if base else 16.0


#: Every file type's nominal bits, for ordering types by aggressiveness.
BITS_PER_WEIGHT: Final[dict[str, float]] = {t: nominal_bits(t) for t in FTYPE_BASE}

#: The measured type whose kernels a type shares (K-quants, legacy blocks, 16-bit floats): an
#: unmeasured type is predicted to consume weights at its relative's measured rate.
KERNEL_FAMILY: Final[dict[str, str]] = {
    "Q4_K_S": "Q4_K_M",
    "Q5_K_M": "Q4_K_M",
    "Q5_K_S": "Q4_K_M",
    "Q6_K": "Q4_K_M",
    "Q3_K_M": "Q4_K_M",
    "Q3_K_L": "Q4_K_M",
    "Q3_K_S": "Q4_K_M",
    "Q2_K": "Q4_K_M",
    "IQ4_NL": "Q4_0",
    "IQ4_XS": "Q4_0",
    "Q4_1": "Q4_0",
    "Q5_0": "Q4_0",
    "Q5_1": "Q4_0",
    "BF16": "F16",
    "F32": "F16",
}

#: KV-cache types as llama.cpp's ``-ctk/-ctv`` spell them: (ggml type id, bytes per element).
KV_CACHE_TYPES: Final[dict[str, tuple[int, float]]] = {
    name.lower(): (GGML_TYPE_IDS[name], BLOCK[name][1] / BLOCK[name][0])
    for name in ("F32", "F16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "IQ4_NL", "BF16")
}
