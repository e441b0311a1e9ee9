"""The DuckDB store: runs, trials and messages, one file.

Each write opens the file, commits and closes it again. That costs about a millisecond and buys
three things a tuning run needs: a crash loses at most the write in flight, another process
(``haqa trials``, the TUI) can read the file between writes, and nothing holds DuckDB's file
lock while a trial runs for minutes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from haqa.errors import HaqaError
from haqa.redact import redact, redact_value
from haqa.schemas import TrialMetrics
from haqa.store.grids import GridMixin
from haqa.store.records import (
    MessageRecord,
    RunRecord,
    RunStatus,
    TrialRecord,
    TrialResult,
    _dump,
    _load,
    new_run_id,
    utcnow,
)
from haqa.store.schema import MIGRATIONS, SCHEMA, SCHEMA_VERSION


class Store(GridMixin):
    """Runs, trials and messages in one DuckDB file."""

    #: How long a write waits for another process's lock before giving up with a clear message.
    lock_timeout_s: float = 10.0

    def __init__(
        self, path: str | os.PathLike[str], *, create: bool = True, keep_open: bool = False
    ) -> None:
        """``keep_open`` holds one connection for this object's life: much faster writes, but no
        other process can open the file meanwhile (for scratch stores such as ``haqa compare``)."""
        self.path = Path(path)
        self._held: Any = None
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
                version = self._check_version(con)
            if version < SCHEMA_VERSION:
                with self._connect() as con:
                    self._ensure_schema(con)
        if keep_open:
            import duckdb

            self._held = duckdb.connect(str(self.path))

    def close(self) -> None:
        if self._held is not None:
            self._held.close()
            self._held = None

    # -- connection ------------------------------------------------------------------------

    @contextmanager
    def _connect(self, *, read_only: bool = False) -> Iterator[Any]:
        import duckdb

        if self._held is not None:
            yield self._held
            return

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
        """Create a new file's tables, or migrate an older file's, one version at a time."""
        (has_meta,) = con.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = 'haqa_meta'"
        ).fetchone()
        if not has_meta:
            (others,) = con.execute("SELECT count(*) FROM information_schema.tables").fetchone()
            if others:
                raise HaqaError(
                    f"store {self.path} is a DuckDB file but not a haqa store: pass --db with "
                    "another path"
                )
            con.execute("BEGIN TRANSACTION")
            con.execute(SCHEMA)
            con.execute("INSERT INTO haqa_meta VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)])
            con.execute("COMMIT")
            return
        version = self._check_version(con)
        for old in range(version, SCHEMA_VERSION):
            con.execute("BEGIN TRANSACTION")
            con.execute(MIGRATIONS[old])
            con.execute(
                "UPDATE haqa_meta SET value = ? WHERE key = 'schema_version'", [str(old + 1)]
            )
            con.execute("COMMIT")

    def _check_version(self, con: Any) -> int:
        try:
            row = con.execute("SELECT value FROM haqa_meta WHERE key = 'schema_version'").fetchone()
        except Exception:
            raise HaqaError(
                f"store {self.path} is a DuckDB file but not a haqa store: pass --db with another"
            ) from None
        version = int(row[0]) if row else 0
        self._require_version(version)
        return version

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

    def fleet_runs(self, fleet_id: str) -> list[RunRecord]:
        """The runs of a fleet (``haqa run --targets``), one per device kind, oldest first: each
        stores its fleet in its config (``fleet.fleet_id``)."""
        with self._connect(read_only=True) as con:
            rows = con.execute(
                "SELECT * FROM runs WHERE json_extract_string(config, '$.fleet.fleet_id') = ? "
                "ORDER BY created_at, run_id",
                [fleet_id],
            ).fetchall()
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
            metrics=TrialMetrics.model_validate(_load(_dump(m))),
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
        # Lenient: a row of an older version may hold a metric key this one no longer declares.
        metrics=TrialMetrics.from_stored(_load(d["metrics"])),
        status=d["status"],
        error=d["error"],
        started_at=d["started_at"],
        finished_at=d["finished_at"],
        duration_s=d["duration_s"],
    )
