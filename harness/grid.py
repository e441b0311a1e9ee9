"""Recorded grids: measure every deploy configuration of a grid once (``haqa grid record``), then
answer deploy trials from the recording (``haqa run --tabular GRID``, ``haqa compare``).

A tabular run goes through the same graph, brains, memory gate and stop rules as a live run; only
the toolbox differs: it returns the exact recorded measurements, cycling through the recorded
repeats of a configuration, so the noise a brain sees is the machine's real noise.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from haqa.errors import HaqaError
from haqa.schemas import (
    DeployConfig,
    KvCacheSettings,
)
from haqa.space import DEPLOY_QUANT_TYPES
from haqa.store import GridRecord, Store, config_key, iter_grid_configs
from haqa.trials.tabular import GRID_FIXED, TabularToolbox, full_config, grid_search_space
from haqa.trials.toolbox import Toolbox, ToolboxSettings

__all__ = [
    "GRID_FIXED",
    "TabularToolbox",
    "default_grid_space",
    "full_config",
    "grid_search_space",
    "record_grid",
]


def default_grid_space(logical_cores: int, physical_cores: int) -> dict[str, list[Any]]:
    threads = sorted({1, physical_cores, logical_cores})
    return {
        "quant_type": list(DEPLOY_QUANT_TYPES),
        "n_threads": threads,
        "n_threads_batch": [logical_cores],
        "n_ubatch": [128, 512],
        "flash_attn": [False, True],
    }


def record_grid(
    store: Store,
    toolbox: Toolbox,
    settings: ToolboxSettings,
    *,
    model: str,
    speed_model: str | None,
    space: dict[str, list[Any]] | None = None,
    repeats: int = 2,
    adapter: str | None = None,
    grid_id: str | None = None,
    progress: Callable[[int, int, str], None] | None = None,
) -> GridRecord:
    """Measure the grid (resumable: points already recorded are kept)."""
    if repeats < 1:
        raise HaqaError("--repeats must be at least 1")
    if grid_id is not None:
        grid = store.get_grid(grid_id)
    else:
        grid = _new_grid(
            store,
            toolbox,
            settings,
            model=model,
            speed_model=speed_model,
            space=space,
            repeats=repeats,
            adapter=adapter,
        )
    done = {(p.config_key, p.repeat) for p in store.grid_points(grid.grid_id)}
    configs = list(iter_grid_configs(grid.space))
    total = len(configs) * repeats
    test_accuracy: dict[tuple[str, KvCacheSettings], float] = {}
    step = 0
    for point in configs:
        cfg = full_config(point)
        key = config_key(point)
        for repeat in range(repeats):
            step += 1
            if (key, repeat) in done:
                continue
            if progress:
                progress(step, total, f"{cfg.quant_type} {key}")
            _record_point(store, toolbox, grid.grid_id, point, cfg, repeat, adapter, test_accuracy)
    store.set_grid_status(grid.grid_id, "complete")
    return store.get_grid(grid.grid_id)


def _new_grid(
    store: Store,
    toolbox: Toolbox,
    settings: ToolboxSettings,
    *,
    model: str,
    speed_model: str | None,
    space: dict[str, list[Any]] | None,
    repeats: int,
    adapter: str | None,
) -> GridRecord:
    """A new grid for this machine: its hardware profile and micro-benchmarks, and ``space`` or
    the default grid for its cores."""
    profile = toolbox.probe()
    micro = toolbox.microbench()
    logical = int(profile.get("logical_cores") or os.cpu_count() or 1)
    physical = int(profile.get("physical_cores") or logical)
    return store.create_grid(
        model=model,
        speed_model=speed_model,
        hardware_fingerprint=str(profile.get("fingerprint")),
        hardware={"profile": profile, "microbench": micro},
        space=space or default_grid_space(logical, physical),
        settings={**settings.model_dump(mode="json"), "repeats": repeats, "adapter": adapter},
    )


def _record_point(
    store: Store,
    toolbox: Toolbox,
    grid_id: str,
    point: dict[str, Any],
    cfg: DeployConfig,
    repeat: int,
    adapter: str | None,
    test_accuracy: dict[tuple[str, KvCacheSettings], float],
) -> None:
    """Measure one repeat of a grid point and store it with its predicted peak memory and the
    test accuracy of its weights and KV cache (evaluated once per pair, kept in
    ``test_accuracy``)."""
    started = time.monotonic()
    metrics = toolbox.deploy(cfg, adapter)
    weights_and_cache = (cfg.quant_type, KvCacheSettings.deployed(cfg.runtime))
    if weights_and_cache not in test_accuracy:
        test_accuracy[weights_and_cache] = toolbox.final_test(cfg, adapter).accuracy or 0.0
    estimate = toolbox.estimate_deploy(cfg)
    data = {
        **metrics.model_dump(mode="json"),
        "test_accuracy": test_accuracy[weights_and_cache],
        "predicted_peak_mem_bytes": estimate.get("total_bytes"),
    }
    store.add_grid_point(grid_id, point, repeat, data, time.monotonic() - started)
