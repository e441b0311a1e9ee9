"""query_trials runs an LLM's SQL: every attack is refused or cut off with a clear message."""

from __future__ import annotations

import contextlib
from datetime import timedelta

import pytest

from haqa.errors import HaqaError
from haqa.schemas import TrialMetrics
from haqa.store import Store, TrialResult, sandbox_query, utcnow


@pytest.fixture()
def trials(store: Store) -> list:  # type: ignore[type-arg]
    mine = store.create_run(model="m", brain="openai")
    other = store.create_run(model="secret-model", brain="expert")
    now = utcnow()
    for run, tps in ((mine, 10.0), (mine, 12.0), (other, 99.0)):
        store.add_trial(
            run.run_id,
            TrialResult(
                stage="deploy", tool="deploy_trial", config={"quant_type": "Q4_0"},
                metrics=TrialMetrics(decode_tps=tps), started_at=now,
                finished_at=now + timedelta(seconds=1),
            ),
        )  # fmt: skip
    return store.list_trials(mine.run_id)


def test_a_plain_select_sees_only_its_runs_trials(trials: list) -> None:  # type: ignore[type-arg]
    result = sandbox_query(trials, "SELECT max(decode_tps) AS best, count(*) AS n FROM trials")
    assert result.columns == ["best", "n"] and result.rows == [[12.0, 2]]
    with_cte = "WITH t AS (SELECT decode_tps FROM trials) SELECT sum(decode_tps) FROM t"
    assert sandbox_query(trials, with_cte).rows == [[22.0]]


@pytest.mark.parametrize(
    ("sql", "reason"),
    [
        ("COPY trials TO '/tmp/haqa-stolen.csv'", "only SELECT"),
        ("ATTACH '/tmp/evil.duckdb' AS evil", "only SELECT"),
        ("SELECT * FROM read_csv('/etc/passwd')", "disabled"),
        ("SELECT * FROM read_text('/etc/hostname')", "disabled"),
        ("SELECT * FROM 'https://example.invalid/x.csv'", "disabled"),
        ("INSTALL httpfs", "only SELECT"),
        ("LOAD httpfs", "only SELECT"),
        ("PRAGMA database_list", "only SELECT"),
        ("SET enable_external_access = true", "only SELECT"),
        ("SELECT 1; DROP TABLE trials", "exactly one statement"),
        ("SELECT 1 /* harmless */; DELETE FROM trials -- hidden", "exactly one statement"),
        ("DELETE FROM trials", "only SELECT"),
        ("CREATE TABLE x AS SELECT 1", "only SELECT"),
        ("SELCT nonsense", "not valid SQL"),
        ("SELECT count(*) FROM range(100000000) a, range(100000) b", "stopped"),
    ],
)
def test_attacks_are_refused_with_a_reason(
    trials: list,
    sql: str,
    reason: str,  # type: ignore[type-arg]
) -> None:
    with pytest.raises(HaqaError, match=reason) as info:
        sandbox_query(trials, sql, timeout_s=1.0)
    assert "\n" not in str(info.value)


def test_rows_are_capped(trials: list) -> None:  # type: ignore[type-arg]
    result = sandbox_query(trials, "SELECT * FROM range(10000)", max_rows=50)
    assert len(result.rows) == 50 and result.truncated


def test_the_store_file_is_untouched(store: Store, trials: list) -> None:  # type: ignore[type-arg]
    before = store.path.read_bytes()
    for sql in ("SELECT 1", "COPY trials TO '/tmp/x.csv'"):
        with contextlib.suppress(HaqaError):
            sandbox_query(trials, sql)
    assert store.path.read_bytes() == before
