"""The read-only SQL sandbox in which an agent's untrusted query runs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from haqa.errors import HaqaError
from haqa.store.records import TrialRecord, _dump

if TYPE_CHECKING:
    import duckdb

#: Statement types an agent's SQL may be (after DuckDB's own parser says what it is).
_SANDBOX_ALLOWED = {"StatementType.SELECT"}
_SANDBOX_COLUMNS = (
    "trial_id INTEGER, stage VARCHAR, tool VARCHAR, config VARCHAR, accuracy DOUBLE, "
    "prefill_tps DOUBLE, decode_tps DOUBLE, peak_mem_bytes BIGINT, artifact_bytes BIGINT, "
    "status VARCHAR, error VARCHAR, duration_s DOUBLE"
)


class SandboxResult(BaseModel):
    columns: list[str]
    rows: list[list[Any]]
    truncated: bool


def sandbox_query(
    trials: Sequence[TrialRecord], sql: str, *, max_rows: int = 200, timeout_s: float = 2.0
) -> SandboxResult:
    """Run an untrusted SELECT over a copy of one run's trials, in a separate in-memory database.

    The agent's SQL never touches the store file: it sees table ``trials`` holding only its run's
    rows, external access (files, network, extensions) is disabled and the configuration locked
    before its SQL is parsed, exactly one SELECT/WITH statement is accepted, at most ``max_rows``
    rows come back, and a query running past ``timeout_s`` is interrupted.
    """
    con = _sandbox_connection()
    try:
        _load_trials(con, trials)
        con.execute("SET lock_configuration = true")
        _check_one_select(con, sql)
        # One row more than max_rows tells whether the result was truncated.
        columns, rows = _fetch_with_timeout(con, sql, max_rows + 1, timeout_s)
    finally:
        con.close()
    return SandboxResult(
        columns=columns,
        rows=[list(r) for r in rows[:max_rows]],
        truncated=len(rows) > max_rows,
    )


def _sandbox_connection() -> duckdb.DuckDBPyConnection:
    """A fresh in-memory DuckDB with external access and extension loading disabled."""
    import duckdb

    return duckdb.connect(
        ":memory:",
        config={
            "enable_external_access": False,
            "autoload_known_extensions": False,
            "autoinstall_known_extensions": False,
            "threads": 1,
            "memory_limit": "256MB",
        },
    )


def _load_trials(con: duckdb.DuckDBPyConnection, trials: Sequence[TrialRecord]) -> None:
    """Create table ``trials`` in ``con`` and copy the given trials into it."""
    con.execute(f"CREATE TABLE trials ({_SANDBOX_COLUMNS})")
    rows_in = [
        [
            t.trial_id,
            t.stage,
            t.tool,
            _dump(t.config),
            t.metrics.accuracy,
            t.metrics.prefill_tps,
            t.metrics.decode_tps,
            t.metrics.peak_mem_bytes,
            t.metrics.artifact_bytes,
            t.status,
            t.error,
            t.duration_s,
        ]
        for t in trials
    ]
    if rows_in:
        con.executemany("INSERT INTO trials VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows_in)


def _check_one_select(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    """HaqaError unless DuckDB's parser reads ``sql`` as exactly one SELECT statement."""
    import duckdb

    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as exc:
        raise HaqaError(f"query_trials: not valid SQL: {_first_line(exc)}") from None
    if len(statements) != 1:
        raise HaqaError(f"query_trials: exactly one statement allowed, got {len(statements)}")
    kind = str(statements[0].type)
    if kind not in _SANDBOX_ALLOWED:
        raise HaqaError(
            f"query_trials: only SELECT (or WITH … SELECT) is allowed, got "
            f"{kind.removeprefix('StatementType.')}"
        )


def _fetch_with_timeout(
    con: duckdb.DuckDBPyConnection, sql: str, limit: int, timeout_s: float
) -> tuple[list[str], list[Any]]:
    """The column names and up to ``limit`` rows of ``sql``, interrupted after ``timeout_s``."""
    import threading

    import duckdb

    timer = threading.Timer(timeout_s, con.interrupt)
    timer.start()
    try:
        cursor = con.execute(sql)
        rows = cursor.fetchmany(limit)
        columns = [d[0] for d in cursor.description or []]
    except duckdb.InterruptException:
        raise HaqaError(
            f"query_trials: the query ran past {timeout_s:g} s and was stopped; "
            "add a WHERE or a LIMIT"
        ) from None
    except duckdb.Error as exc:
        raise HaqaError(f"query_trials: {_first_line(exc)}") from None
    finally:
        timer.cancel()
    return columns, rows


def _first_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]
