"""Answering deploy trials from a recorded grid (``haqa run --tabular GRID``, ``haqa compare``):
a Toolbox backend that measures nothing. It returns the exact recorded measurements, cycling
through the recorded repeats of a configuration, so the noise a brain sees is the machine's real
noise; a tabular run goes through the same graph, brains, memory gate and stop rules as a live
one. Grids are recorded by the harness (``harness/grid.py``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Any

from haqa.errors import HaqaError
from haqa.schemas import (
    DeployConfig,
    FinetuneConfig,
    RuntimeSettings,
    TrialMetrics,
)
from haqa.space import SearchSpace, deploy_space
from haqa.store import GridRecord, Store, config_key, iter_grid_configs

#: Knobs held fixed in a grid (llama.cpp defaults where the grid does not vary them).
GRID_FIXED: dict[str, Any] = {
    "n_batch": 2048,
    "type_k": "f16",
    "type_v": "f16",
    "n_ctx": 4096,
    "use_mmap": True,
    "use_mlock": False,
    "n_gpu_layers": 0,
    "recipe": "uniform",
    "imatrix": False,
}


def grid_search_space(grid: GridRecord) -> SearchSpace:
    """The deploy space narrowed to what the grid recorded (fixed knobs: one choice)."""
    cores = max(int(c) for c in grid.space.get("n_threads", [1]))
    space = deploy_space(max(cores, max(grid.space.get("n_threads_batch", [1]))))
    narrowed = {k: v for k, v in grid.space.items() if k in space.names}
    narrowed.update({k: [v] for k, v in GRID_FIXED.items() if k in space.names})
    return space.restrict(**narrowed)


def full_config(point: dict[str, Any]) -> DeployConfig:
    return DeployConfig.model_validate({**GRID_FIXED, **point})


class TabularToolbox:
    """Answers deploy trials from a recorded grid (no model is loaded, nothing is measured)."""

    #: Answers from recorded measurements: nothing is measured again (no drift, no finals).
    recorded = True

    def __init__(self, store: Store, grid_id: str) -> None:
        self.grid = store.get_grid(grid_id)
        if self.grid.status != "complete":
            raise HaqaError(
                f"grid {grid_id} is still recording: finish it with `haqa grid record --resume "
                f"{grid_id}`"
            )
        self.points: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for p in store.grid_points(grid_id):
            self.points[p.config_key].append(p.metrics)
        self._served: dict[str, int] = defaultdict(int)
        self.knobs = sorted(self.grid.space)

    def _key(self, config: DeployConfig | dict[str, Any]) -> str:
        data = config.model_dump() if isinstance(config, DeployConfig) else dict(config)
        for k, v in GRID_FIXED.items():
            if data.get(k, v) != v:
                raise HaqaError(
                    f"{k}={data.get(k)} is outside the recorded grid {self.grid.grid_id} "
                    f"(fixed at {v})"
                )
        return config_key({k: data.get(k) for k in self.knobs})

    def _lookup(self, config: DeployConfig | dict[str, Any]) -> list[dict[str, Any]]:
        key = self._key(config)
        found = self.points.get(key)
        if not found:
            raise HaqaError(f"configuration {key} is not in grid {self.grid.grid_id}")
        return found

    def first_repeat(self, config: DeployConfig | dict[str, Any]) -> TrialMetrics:
        """The first recorded measurement of this configuration (its accuracy, its predicted
        memory, its test accuracy: what every repeat shares)."""
        return TrialMetrics.from_stored(self._lookup(config)[0])

    def _next(self, config: DeployConfig | dict[str, Any]) -> dict[str, Any]:
        """The next recorded repeat of this configuration (cycling), as a live run would see
        a fresh measurement."""
        repeats = self._lookup(config)
        key = self._key(config)
        i = self._served[key]
        self._served[key] += 1
        return repeats[i % len(repeats)]

    def probe(self) -> dict[str, Any]:
        return dict((self.grid.hardware or {}).get("profile", {}))

    def microbench(self) -> dict[str, Any]:
        return dict((self.grid.hardware or {}).get("microbench", {}))

    def tensor_sensitivity(self) -> dict[str, Any] | None:
        return None  # a grid records no probe, and its space has no probed recipe

    def evaluate_base(self) -> TrialMetrics:
        raise HaqaError("a tabular run has no fine-tuning stage: use --finetune-trials 0")

    def finetune(self, config: FinetuneConfig) -> TrialMetrics:
        raise HaqaError("a tabular run has no fine-tuning stage: use --finetune-trials 0")

    def reference(self, adapter: str | None) -> TrialMetrics:
        return TrialMetrics(accuracy=self._first_of("F16").accuracy)

    def _first_of(self, quant: str) -> TrialMetrics:
        """The first recorded measurement of any configuration of this quant type (a grid keeps
        the K/V cache at f16, so accuracy depends on the type alone)."""
        for point in iter_grid_configs(self.grid.space):
            if point["quant_type"] == quant:
                return self.first_repeat(point)
        raise HaqaError(f"grid {self.grid.grid_id} has no {quant} configuration")

    def deploy(self, config: DeployConfig, adapter: str | None) -> TrialMetrics:
        return TrialMetrics.from_stored(self._next(config))

    def baseline(
        self, quant_type: str, runtime: RuntimeSettings, adapter: str | None = None
    ) -> TrialMetrics:
        return TrialMetrics.from_stored(
            self._next(DeployConfig(quant_type=quant_type, **runtime.model_dump()))  # type: ignore[arg-type]
        )

    def final_test(self, config: DeployConfig, adapter: str | None) -> TrialMetrics:
        return TrialMetrics(accuracy=self.first_repeat(config).test_accuracy or 0.0)

    def measure_gguf(self, gguf: str, config: DeployConfig) -> TrialMetrics:
        """The grid's next recording of this configuration: a grid is one model's, so the file
        is named by its quant type."""
        return TrialMetrics.from_stored(self._next(config))

    def estimate_deploy(self, config: DeployConfig) -> dict[str, Any]:
        return {"total_bytes": self.first_repeat(config).predicted_peak_mem_bytes or 0}

    def estimate_finetune(self, config: FinetuneConfig) -> dict[str, Any]:
        return {"total_bytes": 0}

    def mean_objective(
        self, config: dict[str, Any], objective: Callable[[TrialMetrics], float | None]
    ) -> float | None:
        """The configuration's objective averaged over its recorded repeats (the truth a
        brain's noisy observations estimate)."""
        values = [objective(TrialMetrics.from_stored(m)) for m in self._lookup(config)]
        clean = [v for v in values if v is not None]
        return sum(clean) / len(clean) if clean else None
