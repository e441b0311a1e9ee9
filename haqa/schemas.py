"""The domain's configuration and result types, shared by tools, agents, store and CLI.

Pydantic models at every boundary: a fine-tune config, a deploy config, a goal, and the metrics a
trial produces. Field descriptions are written for the reader of ``haqa --help`` and for an LLM
reading the tool schema, so they say units and why a knob matters.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
    model_validator,
)

from haqa.errors import HaqaError
from haqa.recipes import RecipeName, Weights

BnbQuant = Literal["nf4", "fp4", "int8"]
ComputeDtype = Literal["float32", "bfloat16", "float16"]
Stage = Literal["finetune", "deploy"]
TrialStatus = Literal["ok", "failed", "rejected", "pruned"]

#: llama.cpp quantization types haqa can produce (``llama_model_quantize`` ftype names).
GgufQuantType = Literal[
    "F32",
    "F16",
    "BF16",
    "Q8_0",
    "Q6_K",
    "Q5_K_M",
    "Q5_K_S",
    "Q5_0",
    "Q5_1",
    "Q4_K_M",
    "Q4_K_S",
    "Q4_0",
    "Q4_1",
    "IQ4_NL",
    "IQ4_XS",
    "Q3_K_L",
    "Q3_K_M",
    "Q3_K_S",
    "Q2_K",
]
GGUF_QUANT_TYPES: tuple[str, ...] = get_args(GgufQuantType)
#: KV-cache element types llama.cpp accepts for ``type_k`` / ``type_v``.
KvCacheType = Literal["f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1"]
#: K/V cache types that store full-precision floats; the others are block-quantized.
FLOAT_KV_CACHE_TYPES: tuple[str, ...] = ("f32", "f16", "bf16")

DEFAULT_TARGET_MODULES: tuple[str, ...] = (
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
)


class Strict(BaseModel):
    """Base for config models: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class FinetuneConfig(Strict):
    """QLoRA hyper-parameters: how the base is quantized, the adapter, and the optimiser."""

    quant: BnbQuant = Field("nf4", description="bitsandbytes weight type of the frozen base")
    double_quant: bool = Field(True, description="quantize the 4-bit scales too (saves memory)")
    compute_dtype: ComputeDtype = Field("float32", description="dtype of the matmuls")
    lora_r: int = Field(8, ge=1, le=256, description="LoRA rank")
    lora_alpha: int = Field(16, ge=1, le=1024, description="LoRA scaling numerator (alpha/r)")
    lora_dropout: float = Field(0.0, ge=0.0, le=0.5, description="dropout on the LoRA input")
    target_modules: tuple[str, ...] = Field(
        DEFAULT_TARGET_MODULES, min_length=1, description="module names that get an adapter"
    )
    learning_rate: float = Field(2e-4, gt=0.0, le=1.0, description="peak AdamW learning rate")
    weight_decay: float = Field(0.0, ge=0.0, le=1.0, description="AdamW weight decay")
    batch_size: int = Field(8, ge=1, le=1024, description="examples per micro-batch")
    grad_accum: int = Field(1, ge=1, le=256, description="micro-batches per optimiser step")
    max_steps: int = Field(120, ge=1, le=1_000_000, description="optimiser steps (if no epochs)")
    epochs: float | None = Field(
        None, gt=0.0, le=100.0, description="passes over the data; overrides max_steps"
    )
    warmup_ratio: float = Field(0.05, ge=0.0, le=0.5, description="share of steps warming up")
    max_seq_len: int = Field(128, ge=8, le=32768, description="tokens per training example")
    seed: int = Field(0, ge=0, description="seed for init, dropout and data order")


class RuntimeSettings(Strict):
    """llama.cpp runtime settings for one GGUF file (what llama-bench varies)."""

    n_threads: int = Field(1, ge=1, le=1024, description="threads for generation")
    n_threads_batch: int | None = Field(
        None, ge=1, le=1024, description="threads for prompt processing (None: n_threads)"
    )
    n_batch: int = Field(2048, ge=1, le=65536, description="logical batch (tokens per decode call)")
    n_ubatch: int = Field(512, ge=1, le=65536, description="physical batch (tokens per graph)")
    flash_attn: bool = Field(False, description="fused attention kernel")
    type_k: KvCacheType = Field("f16", description="KV-cache K element type")
    type_v: KvCacheType = Field("f16", description="KV-cache V element type (quantized needs FA)")
    n_ctx: int = Field(4096, ge=16, le=1_048_576, description="context length (KV-cache size)")
    use_mmap: bool = Field(True, description="map the model file instead of reading it")
    use_mlock: bool = Field(False, description="pin the model in RAM")
    n_gpu_layers: int = Field(0, ge=0, le=1000, description="layers offloaded to the GPU")

    @model_validator(mode="after")
    def _check(self) -> RuntimeSettings:
        # llama.cpp silently clamps n_ubatch to n_batch; reject it instead so trials are honest.
        if self.n_ubatch > self.n_batch:
            raise ValueError(f"n_ubatch ({self.n_ubatch}) must be <= n_batch ({self.n_batch})")
        # A quantized V cache needs flash attention in llama.cpp; without it the context fails.
        if self.type_v not in FLOAT_KV_CACHE_TYPES and not self.flash_attn:
            raise ValueError(f"type_v={self.type_v} needs flash_attn=true")
        return self

    @property
    def threads_batch(self) -> int:
        return self.n_threads_batch or self.n_threads


class KvCacheSettings(Strict):
    """How llama.cpp keeps K and V while a GGUF is scored: besides the weights, the one runtime
    setting that changes what a deployment answers (a q4_0 cache rounds every key and value to
    4 bits). Threads and batches change only speed."""

    type_k: KvCacheType = Field("f16", description="KV-cache K element type")
    type_v: KvCacheType = Field("f16", description="KV-cache V element type")
    flash_attn: bool | None = Field(
        None,
        description="fused attention; None: llama.cpp decides, and on when type_v is quantized",
    )

    @model_validator(mode="before")
    @classmethod
    def _flash_for_a_quantized_v(cls, data: Any) -> Any:
        # llama.cpp stores a quantized V only through flash attention: unset means on.
        unset = isinstance(data, dict) and data.get("flash_attn") is None
        if unset and data.get("type_v", "f16") not in FLOAT_KV_CACHE_TYPES:
            return {**data, "flash_attn": True}
        return data

    @model_validator(mode="after")
    def _check(self) -> KvCacheSettings:
        if self.type_v not in FLOAT_KV_CACHE_TYPES and not self.flash_attn:
            raise ValueError(f"type_v={self.type_v} needs flash attention")
        return self

    @property
    def quantized(self) -> bool:
        return self.type_k not in FLOAT_KV_CACHE_TYPES or self.type_v not in FLOAT_KV_CACHE_TYPES

    @classmethod
    def f32(cls) -> KvCacheSettings:
        """Attention in F32, as torch computes it: F32 K/V, flash attention off (its kernel
        rounds Q and the V sums to F16). For checks against the HF model."""
        return cls(type_k="f32", type_v="f32", flash_attn=False)

    @classmethod
    def deployed(cls, runtime: RuntimeSettings) -> KvCacheSettings:
        """The cache a deployment runs, with its flash-attention setting where a cache is
        quantized. With float caches flash attention is left to llama.cpp (on, on CPUs): it
        reorders sums, not what is stored (measured on the tiny model: the same answers), so every
        float-cache deployment of a type shares one measurement."""
        kv = cls(type_k=runtime.type_k, type_v=runtime.type_v)
        return kv.model_copy(update={"flash_attn": runtime.flash_attn}) if kv.quantized else kv


class DeployConfig(RuntimeSettings):
    """One llama.cpp deployment: the GGUF's weights (file type, mixed recipe, importance matrix)
    plus the runtime settings."""

    quant_type: GgufQuantType = Field("Q4_K_M", description="GGUF tensor type of the weights")
    recipe: RecipeName = Field(
        "uniform", description="per-tensor rule on top of the type (haqa.recipes)"
    )
    imatrix: bool = Field(
        False, description="quantize with an importance matrix over calibration text"
    )
    target_bpw: float | None = Field(
        None,
        description="bits per weight the probed recipe spends (only with recipe=probed)",
    )

    @model_validator(mode="before")
    @classmethod
    def _target_only_when_probed(cls, data: Any) -> Any:
        """A target bits per weight means nothing to another recipe: it is dropped there (an
        optimiser samples every knob), so such configs stay one configuration."""
        if isinstance(data, dict) and data.get("recipe", "uniform") != "probed":
            return {k: v for k, v in data.items() if k != "target_bpw"}
        return data

    @model_validator(mode="after")
    def _probed_needs_target(self) -> DeployConfig:
        try:
            self.weights  # noqa: B018 - Weights checks the pair (probed, target) and its range
        except HaqaError as exc:
            raise ValueError(str(exc)) from None
        return self

    @property
    def runtime(self) -> RuntimeSettings:
        return RuntimeSettings(**self.model_dump(exclude=set(WEIGHT_FIELDS)))

    @property
    def weights(self) -> Weights:
        return Weights(
            quant_type=self.quant_type,
            recipe=self.recipe,
            imatrix=self.imatrix,
            target_bpw=self.target_bpw,
        )


#: The fields of a deploy configuration that decide the GGUF file (the rest only how it runs).
WEIGHT_FIELDS: tuple[str, ...] = ("quant_type", "recipe", "imatrix", "target_bpw")


#: The figures every trial stores (the store's ``trials`` table has a column for each).
COMMON_METRICS: tuple[str, ...] = (
    "accuracy",
    "acc_norm",
    "prefill_tps",
    "decode_tps",
    "peak_mem_bytes",
    "artifact_bytes",
    "decode_rsd",
    "prefill_rsd",
)


class TrialNode(BaseModel):
    """Where a trial ran on a cluster (``haqa run --cluster``): the node that returned its
    result, so a figure can be traced to the machine that measured it."""

    node_id: str = Field(description="the Ray node id")
    hostname: str = Field(description="the node's host name")
    fingerprint: str | None = Field(
        None, description="the hardware fingerprint the node advertises (None: not a haqa node)"
    )
    attempts: int = Field(1, ge=1, description="attempts the trial took (a retry after a fault)")


class TrialMetrics(BaseModel):
    """What a trial measured; all optional (a fine-tune has no tok/s, a bench no accuracy).

    Every field is declared: an undeclared key is an error when a trial is built, so a typo
    cannot store a figure nothing reads. Rows written by older versions are loaded with
    ``from_stored``, which is lenient about keys this version no longer knows."""

    model_config = ConfigDict(extra="forbid")

    # -- the common figures (``COMMON_METRICS``) ----------------------------------------------
    accuracy: float | None = Field(None, description="multiple-choice accuracy, 0..1")
    acc_norm: float | None = Field(None, description="length-normalised accuracy, 0..1")
    prefill_tps: float | None = Field(None, description="prompt processing tokens/s (pp)")
    decode_tps: float | None = Field(None, description="generation tokens/s (tg)")
    peak_mem_bytes: int | None = Field(None, description="peak resident memory of the trial")
    artifact_bytes: int | None = Field(None, description="size of the produced artifact")
    decode_rsd: float | None = Field(None, description="relative stddev of the tg samples")
    prefill_rsd: float | None = Field(None, description="relative stddev of the pp samples")

    # -- an evaluation -----------------------------------------------------------------------
    per_kind: dict[str, dict[str, float | int]] | None = Field(
        None, description="accuracy, acc_norm and example count n per task kind"
    )
    eval_backend: Literal["hf", "gguf"] | None = Field(
        None, description="what scored the answers: the HF model (torch) or a GGUF (llama.cpp)"
    )
    correct: str | None = Field(
        None,
        description="'1'/'0' per question scored, in file order: what a paired comparison with "
        "the reference reads",
    )
    perplexity: float | None = Field(
        None, description="perplexity of the scored GGUF over the run's held-out prose"
    )
    reference_perplexity: float | None = Field(
        None, description="the reference's (F16) perplexity over the same prose, side by side"
    )
    test_accuracy: float | None = Field(
        None, description="accuracy on the test split (a recorded grid point carries it)"
    )

    # -- a fine-tune -------------------------------------------------------------------------
    adapter_path: str | None = Field(None, description="folder of the trained LoRA adapter")
    final_loss: float | None = Field(None, description="mean training loss of the last steps")
    train_time_s: float | None = Field(None, description="seconds spent training")
    seed: int | None = Field(None, description="the seed the fine-tune ran with, where reported")
    peak_gpu_mem_bytes: int | None = Field(None, description="CUDA peak allocated (GPU runs)")

    # -- a benchmark -------------------------------------------------------------------------
    roofline_efficiency: float | None = Field(
        None, description="decode_tps × bytes_per_token ÷ bandwidth (1.0 = memory-bound peak)"
    )
    bytes_per_token: float | None = Field(
        None, description="bytes read from memory per generated token"
    )
    benchmark: dict[str, Any] | None = Field(
        None, description="the benchmark's full result (tests, spreads), without raw samples"
    )
    gguf: str | None = Field(None, description="path of the GGUF file that was benchmarked")
    bits_per_weight: float | None = Field(
        None, description="effective bits per weight of that GGUF, from its header"
    )
    fallback_share: float | None = Field(
        None, description="share of its matrix weights stored in a fallback type (rows too short)"
    )
    quantize_commands: list[str] | None = Field(
        None,
        description="llama.cpp command lines that make the scored GGUF by hand (llama-imatrix, "
        "llama-quantize), from its full-precision file",
    )

    # -- the memory gate ---------------------------------------------------------------------
    predicted_peak_mem_bytes: int | None = Field(
        None, description="peak memory the estimate predicted (a rejected trial, a grid point)"
    )

    # -- an anchor check (``agents/tuner/anchor.py``) ----------------------------------------
    anchor_of: int | None = Field(None, description="the trial whose configuration was re-run")
    drift: float | None = Field(
        None, description="decode tok/s relative to the anchor's level, minus 1 (-0.1: 10% slower)"
    )
    drifted: bool | None = Field(None, description="the drift exceeded the threshold")
    level: float | None = Field(
        None, description="the anchor's new decode tok/s level after a lasting change"
    )
    level_changed: bool | None = Field(
        None, description="the re-tries ran out: the machine's speed changed for good"
    )
    marked: list[int] | None = Field(
        None, description="trials this check marked for re-measurement"
    )

    # -- a trial on a cluster (``trials/ray_backend.py``) ------------------------------------
    node: TrialNode | None = Field(None, description="the cluster node the trial ran on")

    # -- a CLI command's trial (``haqa.trialrun``) -------------------------------------------
    result: dict[str, Any] | None = Field(
        None, description="the tool's full result, less what the fields above already hold"
    )

    @model_serializer(mode="wrap")
    def _measured_only(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """The common figures always, the others only where measured: a stored row holds what
        its trial measured, as it did before these fields were declared."""
        data: dict[str, Any] = handler(self)
        return {k: v for k, v in data.items() if k in COMMON_METRICS or v is not None}

    @classmethod
    def from_stored(cls, data: dict[str, Any]) -> TrialMetrics:
        """Metrics as the store holds them (a trial's row, a grid point), written by this or an
        older version. A key this version does not declare is left out rather than refused:
        an old file must stay readable, the row itself keeps the key, and nothing here reads
        it. Known keys are validated as usual."""
        return cls.model_validate({k: v for k, v in data.items() if k in cls.model_fields})


class MeasurementPolicy(Strict):
    """How a run keeps its speed measurements honest on a machine that other work shares.

    Each benchmark repeats until the relative standard deviation of its samples is at most
    ``target_rsd`` (or ``max_repetitions`` runs). Every ``anchor_every`` deploy trials the tuner
    measures a fixed anchor configuration again (the run's first measured deployment); when its
    decode speed has moved more than ``drift_threshold`` from its reference level, the trials
    measured since the last steady anchor are marked and measured again, so configurations are
    compared under the same machine conditions. The anchor is retried after a pause first: a
    transient load passes, and the re-measurement then happens on a quiet machine."""

    target_rsd: float | None = Field(
        0.05, gt=0, lt=1, description="repeat a benchmark until stddev/mean <= this"
    )
    max_repetitions: int = Field(10, ge=1, le=1000, description="cap on benchmark repetitions")
    anchor_every: int = Field(
        4, ge=0, le=1000, description="re-measure the anchor after this many trials (0: never)"
    )
    drift_threshold: float = Field(
        0.10, gt=0, lt=1, description="anchor speed change that marks trials for re-measurement"
    )
    anchor_retries: int = Field(2, ge=0, le=10, description="re-tries of a drifted anchor")
    anchor_retry_pause_s: float = Field(2.0, ge=0, le=600, description="pause before a re-try")
