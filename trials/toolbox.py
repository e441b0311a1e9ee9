"""What the agents can do to the world, as one small interface over the typed tools.

``LiveToolbox`` composes the real tools (fine-tune, evaluate, export, quantize, benchmark, probe,
estimate); a recorded grid can stand behind the same interface. Each method does its work once:
artifacts are cached by the tools themselves, and a deployment's accuracy, which of its runtime
settings only the K/V cache types change, is cached here per (quant type, K/V cache types).

The joint study follows the paper: the deploy stage starts from the best fine-tuned adapter and
measures deployed accuracy on each quantized GGUF of it. With a separate *speed model* (a
realistic-shape model such as ``zoo:bench-200m``), tokens/s and memory are measured on that model
quantized to the same type, while accuracy comes from the fine-tuned model — the honest way to
study speed at realistic shapes on a machine where the accurate model is tiny.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel, ConfigDict

from haqa.errors import HaqaError
from haqa.recipes import PROBED, Weights
from haqa.schemas import (
    DeployConfig,
    FinetuneConfig,
    KvCacheSettings,
    RuntimeSettings,
    TrialMetrics,
)

if TYPE_CHECKING:
    from haqa.tools.export_gguf import QuantizeArgs, TensorRecipe
    from haqa.tools.imatrix import ImatrixArgs
    from haqa.tools.tensor_sensitivity import SensitivityResult


class ToolboxSettings(BaseModel):
    """How the live tools are driven in a run (sizes chosen for a 2-core machine by default)."""

    model_config = ConfigDict(frozen=True)

    model: Path
    speed_model: Path | None = None
    train_files: list[Path]
    validation_files: list[Path]
    test_files: list[Path]
    eval_limit: int | None = 100
    n_prompt: int = 256
    n_gen: int = 64
    repetitions: int = 3
    target_rsd: float | None = None
    max_repetitions: int = 10
    quick_analysis: bool = False
    #: Held-out prose the answer's perplexity is measured on beside the reference's (None: no
    #: perplexity), and how many 512-token windows of it.
    eval_text: Path | None = None
    perplexity_windows: int = 16
    #: The goal has a perplexity floor: every deploy trial's perplexity is measured beside the
    #: reference's over the ``perplexity_windows`` windows *after* the answer's (validation
    #: windows: the answer's reported perplexity stays on text no selection looked at).
    perplexity_floor: bool = False
    #: Text an importance matrix is computed over (a trial with ``imatrix``); None: the
    #: training split's questions and answers, which no evaluation uses.
    calibration_text: Path | None = None
    imatrix_chunks: int = 16


class Toolbox(Protocol):
    #: True when the answers come from recorded measurements (a grid): nothing measured again
    #: gives a new figure, so the supervisor skips the closing re-measurement of the answer.
    recorded: bool

    def probe(self) -> dict[str, Any]: ...

    def microbench(self) -> dict[str, Any]: ...

    def tensor_sensitivity(self) -> dict[str, Any] | None:
        """Each tensor group's KLD with that group alone quantized low, on the run's model
        (``haqa.tools.tensor_sensitivity``); None where nothing can be probed (a recorded
        grid)."""
        ...

    def evaluate_base(self) -> TrialMetrics: ...

    def finetune(self, config: FinetuneConfig) -> TrialMetrics: ...

    def reference(self, adapter: str | None) -> TrialMetrics: ...

    def deploy(self, config: DeployConfig, adapter: str | None) -> TrialMetrics: ...

    def baseline(
        self, quant_type: str, runtime: RuntimeSettings, adapter: str | None = None
    ) -> TrialMetrics:
        """llama.cpp's defaults on the run's own model: the fine-tuned one when there is an
        adapter (what a user would deploy without haqa's tuning)."""
        ...

    def estimate_deploy(self, config: DeployConfig) -> dict[str, Any]: ...

    def estimate_finetune(self, config: FinetuneConfig) -> dict[str, Any]: ...

    def final_test(self, config: DeployConfig, adapter: str | None) -> TrialMetrics: ...

    def measure_gguf(self, gguf: str, config: DeployConfig) -> TrialMetrics:
        """A GGUF file as ``config`` deploys it (a stored run's answer, for the regression
        gate): speed, peak memory and, for the model the run scores, validation accuracy."""
        ...


def _store_json(path: Path, data: dict[str, Any]) -> None:
    """An evaluation cache entry, written whole or not at all (a reader never sees half)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)


class LiveToolbox:
    """Runs the real tools in this process."""

    recorded = False

    def __init__(self, settings: ToolboxSettings) -> None:
        self.s = settings
        self._accuracy_by_quant: dict[
            tuple[str | None, Weights, KvCacheSettings], TrialMetrics
        ] = {}
        self._bandwidth: float | None = None
        self._longest: int | None = None
        self._sensitivity: SensitivityResult | None = None

    # -- hardware --------------------------------------------------------------------------

    def probe(self) -> dict[str, Any]:
        from haqa.tools.probe_hardware import Args, probe_hardware

        profile = probe_hardware(Args())
        if profile.bandwidth is not None:
            self._bandwidth = profile.bandwidth.read_bytes_per_s
        return dict(profile.model_dump(mode="json"))

    def microbench(self) -> dict[str, Any]:
        from haqa.tools.microbench_kernels import Args, microbench_kernels

        shapes = self._shape_source()
        # Quick analysis (tests, demos): fewer repeats; the kernels timed are the same.
        result = microbench_kernels(Args(model=shapes, repeats=3 if self.s.quick_analysis else 10))
        return {**result.model_dump(mode="json"), "weight_bits": self.weight_bits()}

    def weight_bits(self) -> dict[str, dict[str, float]]:
        """Each file type's effective bits per weight on the benchmarked model, predicted from
        its tensor shapes: the brief ranks and names types by what they become on this model."""
        from haqa.quant import FTYPE_BASE
        from haqa.tools.estimate_memory import predict_bits, read_shape

        shape = read_shape(self._shape_source())
        return {
            q: predict_bits(shape, q).model_dump(exclude={"quant_type"})
            for q in FTYPE_BASE
            if q != "F32"
        }

    def _shape_source(self) -> Path:
        """The model whose layer shapes matter for speed: the speed model when there is one."""
        return self.s.speed_model or self.s.model

    # -- accuracy side ---------------------------------------------------------------------

    def _evaluate(
        self,
        model: Path,
        adapter: Path | None,
        files: list[Path],
        kv_cache: KvCacheSettings | None = None,
    ) -> TrialMetrics:
        from haqa.tools.evaluate import Args, evaluate

        result = evaluate(
            Args(
                model=model,
                adapter=adapter,
                task_files=files,
                limit=self.s.eval_limit,
                kv_cache=kv_cache,
            )
        )
        return TrialMetrics(
            accuracy=result.accuracy,
            acc_norm=result.acc_norm,
            per_kind={k: v.model_dump() for k, v in result.per_kind.items()},
            eval_backend=result.backend,
            correct=result.correct,
        )

    def evaluate_base(self) -> TrialMetrics:
        return self._evaluate(self.s.model, None, self.s.validation_files)

    def finetune(self, config: FinetuneConfig) -> TrialMetrics:
        from haqa.tools.run_qlora import Args, run_qlora

        trained = run_qlora(Args(model=self.s.model, config=config, train_files=self.s.train_files))
        scored = self._evaluate(self.s.model, trained.adapter_path, self.s.validation_files)
        return TrialMetrics(
            **{
                **scored.model_dump(),
                "peak_mem_bytes": trained.peak_mem_bytes,
                "adapter_path": str(trained.adapter_path),
                "final_loss": trained.final_loss,
                "train_time_s": trained.train_time_s,
            }
        )

    # -- deployment side -------------------------------------------------------------------

    def _gguf(self, adapter: str | None, weights: Weights | str) -> Path:
        """The fine-tuned model as GGUF of these weights (cached by content in the artifact
        store). A GGUF model is quantized from itself: its F16 is its own weights dequantized
        (the reference), its other types carry its rounding and theirs when it is quantized.
        A recipe or an importance matrix is applied to the model's full-precision GGUF."""
        from haqa.tools.export_gguf import Args, QuantizeArgs, export_gguf, quantize_gguf

        spec = Weights(quant_type=weights) if isinstance(weights, str) else weights
        if not spec.plain:
            return self._mixed_gguf(adapter, spec)
        quant_type = spec.quant_type
        if self.s.model.is_file():
            if adapter:
                raise HaqaError("a GGUF model takes no adapter: it is tuned for deployment only")
            return quantize_gguf(
                QuantizeArgs(gguf=self.s.model, quant_type=quant_type)  # type: ignore[arg-type]
            ).gguf_path

        return export_gguf(
            Args(
                model=self.s.model,
                adapter=Path(adapter) if adapter else None,
                quant_type=quant_type,  # type: ignore[arg-type]
            )
        ).gguf_path

    def _mixed_gguf(self, adapter: str | None, spec: Weights) -> Path:
        from haqa.tools.export_gguf import quantize_gguf

        return quantize_gguf(self._quantize_args(adapter, spec)).gguf_path

    def _quantize_args(self, adapter: str | None, spec: Weights) -> QuantizeArgs:
        """How these weights are made from the model's full-precision GGUF."""
        from haqa.tools.export_gguf import QuantizeArgs

        base = self._gguf(adapter, "F16")
        return QuantizeArgs(
            gguf=base,
            quant_type=spec.quant_type,  # type: ignore[arg-type]
            recipe=self._tensor_recipe(base, spec),
            imatrix=self._imatrix(base)[1] if spec.imatrix else None,
        )

    def _tensor_recipe(self, model: Path, spec: Weights) -> TensorRecipe:
        """The per-tensor types of these weights on ``model`` (its layer count and shapes): a
        named rule, or for the probed recipe the allocation of ``target_bpw`` by the
        sensitivity the analyst's probe measured on the run's model."""
        from haqa.tools.tensor_sensitivity import weights_tensor_recipe

        return weights_tensor_recipe(model, spec, self.sensitivity)

    def sensitivity(self) -> SensitivityResult:
        """Each tensor group's sensitivity on the run's model before fine-tuning (its
        full-precision GGUF), over the calibration text the importance matrix also reads:
        measured once (cached on disk by content), read by the analyst's brief and by every
        probed recipe. An adapter moves the weights little; probing each adapter's file would
        rank the same groups at 25 s a time."""
        if self._sensitivity is None:
            from haqa.tools.tensor_sensitivity import SensitivityArgs, tensor_sensitivity

            self._sensitivity = tensor_sensitivity(
                SensitivityArgs(gguf=self._gguf(None, "F16"), text=self._calibration_text())
            )
        return self._sensitivity

    def tensor_sensitivity(self) -> dict[str, Any] | None:
        """The probe's result for the brief: every group's KLD and a one-line summary."""
        probe = self.sensitivity()
        return {**probe.model_dump(mode="json"), "summary": probe.summary()}

    def _calibration_text(self) -> Path:
        from haqa.tools.imatrix import calibration_from_tasks

        return self.s.calibration_text or calibration_from_tasks(self.s.train_files)

    def _imatrix(self, f16: Path) -> tuple[ImatrixArgs, Path]:
        """The importance matrix of this full-precision GGUF over the run's calibration text
        (cached by content: computed once per model and text): its arguments and its file."""
        from haqa.tools.imatrix import ImatrixArgs, compute_imatrix

        text = self._calibration_text()
        args = ImatrixArgs(gguf=f16, calibration=text, max_chunks=self.s.imatrix_chunks)
        return args, compute_imatrix(args).imatrix_path

    def _quantize_commands(self, adapter: str | None, spec: Weights, out: Path) -> list[str]:
        """The llama.cpp command lines that make the scored GGUF ``out`` by hand."""
        from haqa.tools.export_gguf import quantize_commands

        if spec.quant_type == "F16" and spec.plain:
            return []
        args = self._quantize_args(adapter, spec)
        source = None
        if spec.imatrix:
            im, _ = self._imatrix(args.gguf)
            source = (im.calibration, im.n_ctx, im.max_chunks or 0)
        return quantize_commands(args, out, source)

    def _speed_gguf(self, adapter: str | None, weights: Weights | str) -> Path:
        """The GGUF whose speed is measured: the scored one, or the speed model made the same
        way (its own layer count for the recipe; an importance matrix changes no byte of the
        file's layout, so the speed model is quantized without one)."""
        if self.s.speed_model is None:
            return self._gguf(adapter, weights)
        from haqa.tools.export_gguf import QuantizeArgs, quantize_gguf

        spec = Weights(quant_type=weights) if isinstance(weights, str) else weights
        plain_f16 = spec.quant_type == "F16" and spec.recipe == "uniform"
        if plain_f16 and self.s.speed_model.suffix == ".gguf":
            return self.s.speed_model
        return quantize_gguf(
            QuantizeArgs(
                gguf=self.s.speed_model,
                quant_type=spec.quant_type,  # type: ignore[arg-type]
                recipe=self._tensor_recipe(self.s.speed_model, spec),
            )
        ).gguf_path

    def _deployed_accuracy(
        self, adapter: str | None, weights: Weights | str, kv_cache: KvCacheSettings | None = None
    ) -> TrialMetrics:
        """Validation accuracy (and the answers, question by question) of the GGUF of this type
        with these K/V cache types (default f16), measured once: cached in memory and on disk
        (keyed by the content-addressed GGUF, the cache types and the task files), so neither a
        second runtime setting with the same weights and cache nor a resumed run evaluates it
        again. Threads and batches change only speed; a q8_0 or q4_0 cache changes the answers,
        so it is scored as it deploys."""
        kv = kv_cache or KvCacheSettings()
        spec = Weights(quant_type=weights) if isinstance(weights, str) else weights
        key = (adapter, spec, kv)
        if key not in self._accuracy_by_quant:
            self._accuracy_by_quant[key] = self._validation_answers(self._gguf(adapter, spec), kv)
        return self._accuracy_by_quant[key]

    def _validation_answers(self, gguf: Path, kv: KvCacheSettings) -> TrialMetrics:
        """Validation accuracy and answers of this GGUF with this cache, from the disk cache
        when it was scored before (by any run)."""
        cache = self._eval_cache_path(gguf, self.s.validation_files, kv)
        stored = json.loads(cache.read_text()) if cache.is_file() else {}
        if "correct" in stored:  # an entry written before answers were kept is scored again
            return TrialMetrics(accuracy=stored["accuracy"], correct=stored["correct"])
        scored = self._evaluate(gguf, None, self.s.validation_files, kv)
        _store_json(cache, {"accuracy": scored.accuracy, "correct": scored.correct})
        return TrialMetrics(accuracy=scored.accuracy, correct=scored.correct)

    def _eval_cache_path(
        self, gguf: Path, files: list[Path], kv_cache: KvCacheSettings | None = None
    ) -> Path:
        from haqa.paths import artifacts_dir

        h = hashlib.sha256(str(gguf.resolve()).encode())
        h.update(str(gguf.stat().st_size).encode())
        for f in files:
            h.update(f.read_bytes())
        h.update(str(self.s.eval_limit).encode())
        if kv_cache is not None and kv_cache != KvCacheSettings():
            h.update(kv_cache.model_dump_json().encode())  # f16 keeps its earlier key
        return artifacts_dir() / "evals" / f"{h.hexdigest()[:24]}.json"

    def reference(self, adapter: str | None) -> TrialMetrics:
        return self._deployed_accuracy(adapter, "F16")

    def _benchmark(self, gguf: Path, runtime: RuntimeSettings) -> TrialMetrics:
        from haqa.tools.benchmark_llamacpp import Args, benchmark_llamacpp
        from haqa.tools.gguf_header import weight_mix

        if self._bandwidth is None:
            self.probe()  # the probe is cached per machine: this reads the measured bandwidth

        result = benchmark_llamacpp(
            Args(
                model=gguf,
                runtime=runtime,
                n_prompt=self.s.n_prompt,
                n_gen=self.s.n_gen,
                repetitions=self.s.repetitions,
                target_rsd=self.s.target_rsd,
                max_repetitions=self.s.max_repetitions,
                bandwidth_bytes_per_s=self._bandwidth,
            )
        )
        rsd = {("pp" if t.n_prompt else "tg"): t.rsd for t in result.tests}
        mix = weight_mix(gguf)
        return TrialMetrics(
            prefill_tps=result.prefill_tps,
            decode_tps=result.decode_tps,
            peak_mem_bytes=result.peak_rss_bytes,
            artifact_bytes=result.model_size,
            roofline_efficiency=result.roofline_efficiency,
            bytes_per_token=result.bytes_per_token,
            decode_rsd=rsd.get("tg"),
            prefill_rsd=rsd.get("pp"),
            benchmark=result.model_dump(mode="json", exclude={"samples_ns"}),
            gguf=str(gguf),
            bits_per_weight=mix.bits_per_weight,
            fallback_share=mix.fallback_share,
        )

    def _perplexity(self, gguf: Path, kv: KvCacheSettings, *, validation: bool) -> float:
        """Perplexity of this GGUF with this cache over the run's prose: the validation windows
        (those after the answer's) or the answer's own, from the disk cache when measured
        before (keyed as accuracy is, by the file, the text, the windows and the cache)."""
        from haqa.tools.gguf_loglik import gguf_perplexity

        assert self.s.eval_text is not None
        w = self.s.perplexity_windows
        skip = w if validation else 0
        keyed = self._eval_cache_path(gguf, [self.s.eval_text], kv)
        cache = keyed.with_name(f"ppl-{skip}-{w}-{keyed.name}")
        if cache.is_file():
            return float(json.loads(cache.read_text())["perplexity"])
        text = self.s.eval_text.read_text()
        scored = gguf_perplexity(gguf, text, kv_cache=kv, max_chunks=w, skip_chunks=skip)
        if validation and scored.n_chunks < w:
            # Fewer validation windows than asked would judge the floor on less text than the
            # user chose; the run-level check only catches texts too short by their bytes.
            raise HaqaError(
                f"{self.s.eval_text.name} gives {scored.n_chunks} validation windows after the "
                f"answer's {w}: a perplexity floor needs {w}; give a longer text or fewer "
                "--perplexity-windows"
            )
        _store_json(cache, {"perplexity": scored.perplexity})
        return scored.perplexity

    def _validation_perplexity(
        self, adapter: str | None, weights: Weights, kv: KvCacheSettings
    ) -> dict[str, float]:
        """The deployed file's validation perplexity beside the reference's (F16, f16 cache),
        for a goal with a perplexity floor; nothing otherwise."""
        if not self.s.perplexity_floor or self.s.eval_text is None:
            return {}
        return {
            "perplexity": self._perplexity(self._gguf(adapter, weights), kv, validation=True),
            "reference_perplexity": self._perplexity(
                self._gguf(adapter, "F16"), KvCacheSettings(), validation=True
            ),
        }

    def deploy(self, config: DeployConfig, adapter: str | None) -> TrialMetrics:
        kv = KvCacheSettings.deployed(config.runtime)
        scored = self._deployed_accuracy(adapter, config.weights, kv)
        ppl = self._validation_perplexity(adapter, config.weights, kv)
        speed = self._benchmark(self._speed_gguf(adapter, config.weights), config.runtime)
        made = self._quantize_commands(adapter, config.weights, self._gguf(adapter, config.weights))
        return TrialMetrics(
            **{
                **speed.model_dump(),
                "accuracy": scored.accuracy,
                "correct": scored.correct,
                "quantize_commands": made or None,
                **ppl,
            }
        )

    def baseline(
        self, quant_type: str, runtime: RuntimeSettings, adapter: str | None = None
    ) -> TrialMetrics:
        return self._benchmark(self._speed_gguf(adapter, quant_type), runtime)

    def measure_gguf(self, gguf: str, config: DeployConfig) -> TrialMetrics:
        """Speed and memory of the file as deployed; its validation accuracy too unless speed is
        measured on a separate model (then the file is that model's, not the scored one's)."""
        path = Path(gguf)
        if not path.is_file():
            raise HaqaError(f"{gguf}: the GGUF file is gone; nothing to measure")
        speed = self._benchmark(path, config.runtime)
        if self.s.speed_model is not None:
            return speed
        scored = self._validation_answers(path, KvCacheSettings.deployed(config.runtime))
        return speed.model_copy(update={"accuracy": scored.accuracy, "correct": scored.correct})

    def final_test(self, config: DeployConfig, adapter: str | None) -> TrialMetrics:
        """The answer's accuracy on the test split and, where the run has held-out prose, its
        perplexity beside the reference's (F16) over the same windows, as it deploys."""
        gguf = self._gguf(adapter, config.weights)
        kv = KvCacheSettings.deployed(config.runtime)
        scored = self._evaluate(gguf, None, self.s.test_files, kv)
        out = TrialMetrics(accuracy=scored.accuracy, correct=scored.correct)
        if self.s.eval_text is None:
            return out
        return out.model_copy(
            update={
                "perplexity": self._perplexity(gguf, kv, validation=False),
                "reference_perplexity": self._perplexity(
                    self._gguf(adapter, "F16"), KvCacheSettings(), validation=False
                ),
            }
        )

    # -- memory gate -----------------------------------------------------------------------

    def estimate_deploy(self, config: DeployConfig) -> dict[str, Any]:
        from haqa.tools.estimate_memory import DeployMemoryArgs, estimate_deploy_memory

        # The model that is benchmarked decides memory; an HF folder is read from its config.
        source = self.s.speed_model or self.s.model
        rules = None
        if config.recipe == PROBED:
            rules = self._tensor_recipe(source, config.weights).model_dump(mode="json")
        estimate = estimate_deploy_memory(
            DeployMemoryArgs(model=source, config=config, tensor_recipe=rules)
        )
        return dict(estimate.model_dump(mode="json"))

    def estimate_finetune(self, config: FinetuneConfig) -> dict[str, Any]:
        from haqa.tools.estimate_memory import FinetuneMemoryArgs, estimate_finetune_memory

        longest = self._longest_example(config.max_seq_len)
        estimate = estimate_finetune_memory(
            FinetuneMemoryArgs(model=self.s.model, config=config, example_tokens=longest)
        )
        return dict(estimate.model_dump(mode="json"))

    def _longest_example(self, max_seq_len: int) -> int:
        """The longest training example in tokens (cut at ``max_seq_len``), tokenized once."""
        if self._longest is None:
            from haqa.tools.run_qlora import longest_example_tokens

            self._longest = longest_example_tokens(self.s.model, self.s.train_files, 1 << 20)
        return min(self._longest, max_seq_len)
