"""The store: DuckDB is the system of record (runs, trials, messages). This package is the only
code in haqa that writes SQL; everything else uses the ``Store`` API and its pydantic rows."""

from haqa.store.duck import Store
from haqa.store.grids import GridPoint, GridRecord, config_key, iter_grid_configs
from haqa.store.records import (
    MessageRecord,
    RunRecord,
    RunStatus,
    TrialRecord,
    TrialResult,
    new_run_id,
    superseded,
    utcnow,
)
from haqa.store.sandbox import SandboxResult, sandbox_query
from haqa.store.schema import SCHEMA_VERSION

__all__ = [
    "SCHEMA_VERSION",
    "GridPoint",
    "GridRecord",
    "MessageRecord",
    "RunRecord",
    "RunStatus",
    "SandboxResult",
    "Store",
    "TrialRecord",
    "TrialResult",
    "config_key",
    "iter_grid_configs",
    "new_run_id",
    "sandbox_query",
    "superseded",
    "utcnow",
]
