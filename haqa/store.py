"""The DuckDB store: runs, trials and messages. The only module in haqa that writes SQL.

Each write opens the file, commits and closes it again. That costs about a millisecond and buys
three things a tuning run needs: a crash loses at most the write in flight, another process
(``haqa trials``, the TUI) can read the file between writes, and nothing holds DuckDB's file
lock while a trial runs for minutes.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from haqa.errors import HaqaError
from haqa.redact import redact, redact_value
from haqa.schemas import TrialMetrics, TrialStatus

SCHEMA_VERSION = 1
RunStatus = Literal["running", "finished", "failed", "stopped"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS haqa_meta (key VARCHAR PRIMARY KEY, value VARCHAR NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_id VARCHAR PRIMARY KEY,
    created_at TIMESTAMP NOT NULL,
    finished_at TIMESTAMP,
    model VARCHAR NOT NULL,
    hardware_fingerprint VARCHAR,
    hardware VARCHAR,
    goal VARCHAR,
    brain VARCHAR NOT NULL,
    status VARCHAR NOT NULL,
    config VARCHAR,
    result VARCHAR
);
CREATE TABLE IF NOT EXISTS trials (
    run_id VARCHAR NOT NULL,
    trial_id INTEGER NOT NULL,
    stage VARCHAR NOT NULL,
    tool VARCHAR NOT NULL,
    config VARCHAR NOT NULL,
    metrics VARCHAR NOT NULL,
    accuracy DOUBLE,
    prefill_tps DOUBLE,
    decode_tps DOUBLE,
    peak_mem_bytes BIGINT,
    artifact_bytes BIGINT,
    status VARCHAR NOT NULL,
    error VARCHAR,
    started_at TIMESTAMP NOT NULL,
    finished_at TIMESTAMP NOT NULL,
    duration_s DOUBLE NOT NULL,
    PRIMARY KEY (run_id, trial_id)
);
CREATE TABLE IF NOT EXISTS messages (
    run_id VARCHAR NOT NULL,
    seq INTEGER NOT NULL,
    created_at TIMESTAMP NOT NULL,
    agent VARCHAR NOT NULL,
    role VARCHAR NOT NULL,
    content VARCHAR NOT NULL,
    tool_name VARCHAR,
    tool_args VARCHAR,
    tool_result VARCHAR,
    PRIMARY KEY (run_id, seq)
);
"""


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def new_run_id() -> str:
    """Sortable and short enough to type: ``20261123-150512-a1b2``."""
    return utcnow().strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)


class RunRecord(BaseModel):
    model_config = ConfigDict(frozen=True)

    run_id: str
    created_at: datetime
    finished_at: datetime | None = None
    model: str
    hardware_fingerprint: str | None = None
    hardware: dict[str, Any] | None = None
    goal: dict[str, Any] | None = None
    brain: str
    status: RunStatus
    config: dict[str, Any] | None = None
    result: dict[str, Any] | None = None


class TrialResult(BaseModel):
    """A trial as a tool finished it, before the store numbers it."""

    model_config = ConfigDict(frozen=True)

    stage: str
    tool: str
    config: dict[str, Any]
    metrics: TrialMetrics = Field(default_factory=TrialMetrics)
    status: TrialStatus = "ok"
    error: str | None = None
    started_at: datetime
    finished_at: datetime
    duration_s: float = -1.0

    @model_validator(mode="after")
    def _duration(self) -> TrialResult:
        if self.duration_s < 0:
            # Frozen model: set once at construction, from the two timestamps.
            object.__setattr__(
                self, "duration_s", (self.finished_at - self.started_at).total_seconds()
            )
        return self


class TrialRecord(TrialResult):
    """A finished, stored trial. Frozen: a stored trial is never changed."""

    run_id: str
    trial_id: int


class MessageRecord(BaseModel):
    """One entry of a run's trace, in order."""

    model_config = ConfigDict(frozen=True)

    run_id: str
    seq: int
    created_at: datetime
    agent: str
    role: str
    content: str
    tool_name: str | None = None
    tool_args: dict[str, Any] | None = None
    tool_result: Any = None


def _dump(value: Any) -> str | None:
    """JSON for a column; every string passes through the secret redaction on the way in."""
    if value is None:
        return None
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    return json.dumps(redact_value(value), default=str, sort_keys=True)


def _load(text: str | None) -> Any:
    return None if text is None else json.loads(text)


class Store:
    """Runs, trials and messages in one DuckDB file."""

    #: How long a write waits for another process's lock before giving up with a clear message.
    lock_timeout_s: float = 10.0

    def __init__(self, path: str | os.PathLike[str], *, create: bool = True) -> None:
        self.path = Path(path)
        if not create and not self.path.exists():
            raise HaqaError(f"store {self.path} does not exist: pass --db with an existing file")
        if self.path.exists() and self.path.is_dir():
            raise HaqaError(f"store {self.path} is a directory: pass --db with a file path")
        if create:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._connect() as con:
                self._ensure_schema(con)
        else:
            with self._connect(read_only=True) as con:
                self._check_version(con)

    # -- connection ------------------------------------------------------------------------

    @contextmanager
    def _connect(self, *, read_only: bool = False) -> Iterator[Any]:
        import duckdb

        deadline = time.monotonic() + self.lock_timeout_s
        while True:
            try:
                con = duckdb.connect(str(self.path), read_only=read_only)
                break
            except duckdb.IOException as exc:
                text = str(exc)
                if "lock" in text.lower() and time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
                if "lock" in text.lower():
                    raise HaqaError(
                        f"store {self.path} is locked by another process: wait for it or "
                        "pass --db with another file"
                    ) from None
                raise HaqaError(f"store {self.path} cannot be opened: {text}") from None
            except duckdb.Error as exc:
                raise HaqaError(
                    f"store {self.path} is not a haqa DuckDB file ({type(exc).__name__}): "
                    "pass --db with another path"
                ) from None
        try:
            yield con
        finally:
            con.close()

    def _ensure_schema(self, con: Any) -> None:
        con.execute(_SCHEMA)
        row = con.execute("SELECT value FROM haqa_meta WHERE key = 'schema_version'").fetchone()
        if row is None:
            con.execute("INSERT INTO haqa_meta VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)])
        else:
            self._require_version(int(row[0]))

    def _check_version(self, con: Any) -> None:
        try:
            row = con.execute("SELECT value FROM haqa_meta WHERE key = 'schema_version'").fetchone()
        except Exception:
            raise HaqaError(
                f"store {self.path} is a DuckDB file but not a haqa store: pass --db with another"
            ) from None
        self._require_version(int(row[0]) if row else 0)

    def _require_version(self, version: int) -> None:
        if version > SCHEMA_VERSION:
            raise HaqaError(
                f"store {self.path} has schema {version}, newer than this haqa's "
                f"{SCHEMA_VERSION}: upgrade haqa"
            )

    @property
    def schema_version(self) -> int:
        with self._connect(read_only=True) as con:
            row = con.execute("SELECT value FROM haqa_meta WHERE key = 'schema_version'").fetchone()
        return int(row[0])

    # -- runs ------------------------------------------------------------------------------

    def create_run(
        self,
        *,
        model: str,
        brain: str,
        goal: dict[str, Any] | None = None,
        config: dict[str, Any] | None = None,
        hardware: dict[str, Any] | None = None,
        hardware_fingerprint: str | None = None,
        run_id: str | None = None,
    ) -> RunRecord:
        record = RunRecord(
            run_id=run_id or new_run_id(),
            created_at=utcnow(),
            model=model,
            brain=brain,
            goal=goal,
            config=config,
            hardware=hardware,
            hardware_fingerprint=hardware_fingerprint,
            status="running",
        )
        with self._connect() as con:
            con.execute(
                "INSERT INTO runs (run_id, created_at, model, hardware_fingerprint, hardware, goal,"
                " brain, status, config) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    record.run_id,
                    record.created_at,
                    record.model,
                    record.hardware_fingerprint,
                    _dump(record.hardware),
                    _dump(record.goal),
                    record.brain,
                    record.status,
                    _dump(record.config),
                ],
            )
        return record

    def finish_run(
        self, run_id: str, status: RunStatus, result: dict[str, Any] | None = None
    ) -> None:
        with self._connect() as con:
            con.execute(
                "UPDATE runs SET status = ?, finished_at = ?, result = ? WHERE run_id = ?",
                [status, utcnow(), _dump(result), run_id],
            )

    def set_run_hardware(self, run_id: str, *, fingerprint: str, hardware: dict[str, Any]) -> None:
        """Record the machine a run measured on (the hardware analyst's profile and brief)."""
        with self._connect() as con:
            con.execute(
                "UPDATE runs SET hardware_fingerprint = ?, hardware = ? WHERE run_id = ?",
                [fingerprint, _dump(hardware), run_id],
            )

    def set_run_status(self, run_id: str, status: RunStatus) -> None:
        with self._connect() as con:
            con.execute("UPDATE runs SET status = ? WHERE run_id = ?", [status, run_id])

    def get_run(self, run_id: str) -> RunRecord:
        with self._connect(read_only=True) as con:
            row = con.execute("SELECT * FROM runs WHERE run_id = ?", [run_id]).fetchone()
            cols = [d[0] for d in con.description]
        if row is None:
            raise HaqaError(f"run {run_id!r} is not in {self.path}: see `haqa runs` for run ids")
        return _run_from_row(dict(zip(cols, row, strict=True)))

    def list_runs(self, limit: int | None = None) -> list[RunRecord]:
        sql = "SELECT * FROM runs ORDER BY created_at DESC, run_id DESC"
        params: list[Any] = []
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        with self._connect(read_only=True) as con:
            rows = con.execute(sql, params).fetchall()
            cols = [d[0] for d in con.description]
        return [_run_from_row(dict(zip(cols, r, strict=True))) for r in rows]

    # -- trials ----------------------------------------------------------------------------

    def add_trial(self, run_id: str, trial: TrialResult) -> TrialRecord:
        """Store a finished trial, numbered next in its run; committed before returning."""
        m = trial.metrics
        with self._connect() as con:
            con.execute("BEGIN TRANSACTION")
            (next_id,) = con.execute(
                "SELECT coalesce(max(trial_id), 0) + 1 FROM trials WHERE run_id = ?", [run_id]
            ).fetchone()
            con.execute(
                "INSERT INTO trials VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    run_id,
                    next_id,
                    trial.stage,
                    trial.tool,
                    _dump(trial.config),
                    _dump(m),
                    m.accuracy,
                    m.prefill_tps,
                    m.decode_tps,
                    m.peak_mem_bytes,
                    m.artifact_bytes,
                    trial.status,
                    redact(trial.error) if trial.error else None,
                    trial.started_at,
                    trial.finished_at,
                    trial.duration_s,
                ],
            )
            con.execute("COMMIT")
        # The record as stored: redacted the same way.
        return TrialRecord(
            **trial.model_dump(exclude={"metrics", "config", "error"}),
            config=_load(_dump(trial.config)),
            metrics=TrialMetrics(**_load(_dump(m))),
            error=redact(trial.error) if trial.error else None,
            run_id=run_id,
            trial_id=int(next_id),
        )

    def list_trials(
        self,
        run_id: str | None = None,
        *,
        stage: str | None = None,
        status: Sequence[str] | None = None,
    ) -> list[TrialRecord]:
        sql = "SELECT * FROM trials WHERE 1 = 1"
        params: list[Any] = []
        if run_id is not None:
            sql += " AND run_id = ?"
            params.append(run_id)
        if stage is not None:
            sql += " AND stage = ?"
            params.append(stage)
        if status:
            sql += f" AND status IN ({', '.join('?' for _ in status)})"
            params.extend(status)
        sql += " ORDER BY started_at, run_id, trial_id"
        with self._connect(read_only=True) as con:
            rows = con.execute(sql, params).fetchall()
            cols = [d[0] for d in con.description]
        return [_trial_from_row(dict(zip(cols, r, strict=True))) for r in rows]

    # -- messages --------------------------------------------------------------------------

    def add_message(
        self,
        run_id: str,
        *,
        agent: str,
        role: str,
        content: str,
        tool_name: str | None = None,
        tool_args: dict[str, Any] | None = None,
        tool_result: Any = None,
    ) -> MessageRecord:
        created = utcnow()
        with self._connect() as con:
            con.execute("BEGIN TRANSACTION")
            (seq,) = con.execute(
                "SELECT coalesce(max(seq), 0) + 1 FROM messages WHERE run_id = ?", [run_id]
            ).fetchone()
            con.execute(
                "INSERT INTO messages VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    run_id,
                    seq,
                    created,
                    agent,
                    role,
                    redact(content),
                    tool_name,
                    _dump(tool_args),
                    _dump(tool_result),
                ],
            )
            con.execute("COMMIT")
        return MessageRecord(
            run_id=run_id,
            seq=int(seq),
            created_at=created,
            agent=agent,
            role=role,
            content=redact(content),
            tool_name=tool_name,
            tool_args=redact_value(tool_args),
            tool_result=redact_value(tool_result),
        )

    def list_messages(self, run_id: str, *, after_seq: int = 0) -> list[MessageRecord]:
        with self._connect(read_only=True) as con:
            rows = con.execute(
                "SELECT * FROM messages WHERE run_id = ? AND seq > ? ORDER BY seq",
                [run_id, after_seq],
            ).fetchall()
            cols = [d[0] for d in con.description]
        out = []
        for r in rows:
            d = dict(zip(cols, r, strict=True))
            d["tool_args"] = _load(d["tool_args"])
            d["tool_result"] = _load(d["tool_result"])
            out.append(MessageRecord(**d))
        return out


def _run_from_row(d: dict[str, Any]) -> RunRecord:
    for key in ("hardware", "goal", "config", "result"):
        d[key] = _load(d[key])
    return RunRecord(**d)


def _trial_from_row(d: dict[str, Any]) -> TrialRecord:
    return TrialRecord(
        run_id=d["run_id"],
        trial_id=d["trial_id"],
        stage=d["stage"],
        tool=d["tool"],
        config=_load(d["config"]),
        metrics=TrialMetrics(**_load(d["metrics"])),
        status=d["status"],
        error=d["error"],
        started_at=d["started_at"],
        finished_at=d["finished_at"],
        duration_s=d["duration_s"],
    )


# -- the read-only SQL sandbox for agents ----------------------------------------------------

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
    import threading

    import duckdb

    con = duckdb.connect(
        ":memory:",
        config={
            "enable_external_access": False,
            "autoload_known_extensions": False,
            "autoinstall_known_extensions": False,
            "threads": 1,
            "memory_limit": "256MB",
        },
    )
    try:
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
            con.executemany(
                "INSERT INTO trials VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows_in
            )
        con.execute("SET lock_configuration = true")
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
        timer = threading.Timer(timeout_s, con.interrupt)
        timer.start()
        try:
            cursor = con.execute(sql)
            rows = cursor.fetchmany(max_rows + 1)
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
    finally:
        con.close()
    return SandboxResult(
        columns=columns,
        rows=[list(r) for r in rows[:max_rows]],
        truncated=len(rows) > max_rows,
    )


def _first_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]
