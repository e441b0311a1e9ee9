"""The store: DuckDB is the system of record (runs, trials, messages). This package is the only
code in haqa that writes SQL; everything else uses the ``Store`` API and its pydantic rows."""

from haqa.store.duck import Store
from haqa.store.grids import GridPoint, GridRecord, config_key, iter_grid_configs
from haqa.store.records import (
    TRIAL_ROLES,
    MessageRecord,
    RunRecord,
    RunStatus,
    TrialRecord,
    TrialResult,
    TrialRole,
    new_run_id,
    search_config,
    search_trials,
    superseded,
    utcnow,
)
from haqa.store.sandbox import SandboxResult, sandbox_query
from haqa.store.schema import SCHEMA_VERSION

__all__ = [
    "SCHEMA_VERSION",
    "TRIAL_ROLES",
    "GridPoint",
    "GridRecord",
    "MessageRecord",
    "RunRecord",
    "RunStatus",
    "SandboxResult",
    "Store",
    "TrialRecord",
    "TrialResult",
    "TrialRole",
    "config_key",
    "iter_grid_configs",
    "new_run_id",
    "sandbox_query",
    "search_config",
    "search_trials",
    "superseded",
    "utcnow",
]
