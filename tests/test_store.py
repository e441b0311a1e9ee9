"""The store's contract: what any implementation must do (one suite, as Optuna's storage tests)."""

from __future__ import annotations

import multiprocessing
from datetime import timedelta
from pathlib import Path

import pytest

from haqa.errors import HaqaError
from haqa.schemas import COMMON_METRICS, TrialMetrics
from haqa.store import (
    SCHEMA_VERSION,
    TRIAL_ROLES,
    Store,
    TrialResult,
    search_trials,
    superseded,
    utcnow,
)


def _trial(stage: str = "deploy", accuracy: float | None = 0.5, **config: object) -> TrialResult:
    start = utcnow()
    return TrialResult(
        stage=stage,
        tool="benchmark_llamacpp",
        config=dict(config) or {"quant_type": "Q4_0"},
        metrics=TrialMetrics(accuracy=accuracy, decode_tps=12.5, peak_mem_bytes=1 << 20),
        started_at=start,
        finished_at=start + timedelta(seconds=2),
    )


def test_run_lifecycle_roundtrip(store: Store) -> None:
    run = store.create_run(model="zoo:tiny", brain="expert", goal={"metric": "decode_tps"})
    assert store.get_run(run.run_id).status == "running"
    store.finish_run(run.run_id, "finished", result={"best": 1})
    got = store.get_run(run.run_id)
    assert got.status == "finished"
    assert got.result == {"best": 1}
    assert got.finished_at is not None
    assert [r.run_id for r in store.list_runs()] == [run.run_id]


def test_trials_are_numbered_per_run_and_persist_across_connections(db_path: Path) -> None:
    store = Store(db_path)
    a = store.create_run(model="m", brain="manual")
    b = store.create_run(model="m", brain="manual")
    t1 = store.add_trial(a.run_id, _trial(quant_type="Q4_0"))
    t2 = store.add_trial(a.run_id, _trial(quant_type="Q8_0"))
    t3 = store.add_trial(b.run_id, _trial(stage="finetune", accuracy=0.9, learning_rate=1e-3))
    assert (t1.trial_id, t2.trial_id, t3.trial_id) == (1, 2, 1)
    assert t1.duration_s == pytest.approx(2.0)

    reopened = Store(db_path)
    rows = reopened.list_trials(a.run_id)
    assert [(r.trial_id, r.config["quant_type"]) for r in rows] == [(1, "Q4_0"), (2, "Q8_0")]
    assert rows[0].metrics.decode_tps == 12.5
    assert reopened.list_trials(stage="finetune")[0].metrics.accuracy == 0.9
    assert len(reopened.list_trials()) == 3


def test_failed_and_rejected_trials_keep_their_reason(store: Store) -> None:
    run = store.create_run(model="m", brain="expert")
    start = utcnow()
    store.add_trial(
        run.run_id,
        TrialResult(
            stage="deploy",
            tool="estimate_memory",
            config={"quant_type": "F16"},
            status="rejected",
            error="predicted 7.1 GiB > budget 4 GiB",
            started_at=start,
            finished_at=start,
        ),
    )
    (row,) = store.list_trials(run.run_id, status=["rejected"])
    assert row.error == "predicted 7.1 GiB > budget 4 GiB"
    assert row.metrics.decode_tps is None


def test_stored_trials_are_frozen(store: Store) -> None:
    run = store.create_run(model="m", brain="manual")
    rec = store.add_trial(run.run_id, _trial())
    with pytest.raises(Exception, match="frozen"):
        rec.status = "failed"  # type: ignore[misc]


def test_messages_keep_order_and_tool_payloads(store: Store) -> None:
    run = store.create_run(model="m", brain="openai")
    store.add_message(run.run_id, agent="supervisor", role="system", content="start")
    store.add_message(
        run.run_id,
        agent="tuner",
        role="tool",
        content="called",
        tool_name="estimate_memory",
        tool_args={"quant_type": "Q4_0"},
        tool_result={"total_bytes": 123},
    )
    msgs = store.list_messages(run.run_id)
    assert [m.seq for m in msgs] == [1, 2]
    assert msgs[1].tool_args == {"quant_type": "Q4_0"}
    assert msgs[1].tool_result == {"total_bytes": 123}
    assert [m.seq for m in store.list_messages(run.run_id, after_seq=1)] == [2]


def test_unknown_run_is_a_clear_error(store: Store) -> None:
    with pytest.raises(HaqaError, match="not in"):
        store.get_run("nope")


def test_not_a_duckdb_file_is_a_clear_error(tmp_path: Path) -> None:
    bogus = tmp_path / "notes.duckdb"
    bogus.write_text("hello, I am a text file\n" * 100)
    with pytest.raises(HaqaError) as info:
        Store(bogus)
    assert "\n" not in str(info.value)
    assert str(bogus) in str(info.value)


def test_missing_store_is_not_created_for_reading(tmp_path: Path) -> None:
    with pytest.raises(HaqaError, match="does not exist"):
        Store(tmp_path / "absent.duckdb", create=False)
    assert not (tmp_path / "absent.duckdb").exists()


def test_newer_schema_is_refused(db_path: Path) -> None:
    import duckdb

    Store(db_path)
    con = duckdb.connect(str(db_path))
    con.execute(
        "UPDATE haqa_meta SET value = ? WHERE key = 'schema_version'", [str(SCHEMA_VERSION + 1)]
    )
    con.close()
    with pytest.raises(HaqaError, match="upgrade haqa"):
        Store(db_path)


def _hold_lock(path: str, ready: multiprocessing.synchronize.Event, done: object) -> None:
    import duckdb

    con = duckdb.connect(path)
    ready.set()
    done.wait(30)  # type: ignore[attr-defined]
    con.close()


def test_store_locked_by_another_process_is_a_clear_error(db_path: Path) -> None:
    Store(db_path)
    ctx = multiprocessing.get_context("spawn")
    ready, done = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(str(db_path), ready, done))
    holder.start()
    try:
        assert ready.wait(30)
        slow = Store.__new__(Store)
        slow.path = db_path
        slow.lock_timeout_s = 0.3
        slow._held = None
        with pytest.raises(HaqaError, match="locked by another process"):
            slow.create_run(model="m", brain="manual")
    finally:
        done.set()
        holder.join(30)
    # Once the other writer is gone, the same store works again.
    assert Store(db_path).create_run(model="m", brain="manual").status == "running"


def test_a_version_1_file_is_migrated_keeping_its_data(db_path: Path) -> None:
    import duckdb

    from haqa.store.schema import _SCHEMA_V1

    con = duckdb.connect(str(db_path))
    con.execute(_SCHEMA_V1)
    con.execute("INSERT INTO haqa_meta VALUES ('schema_version', '1')")
    con.execute(
        "INSERT INTO runs (run_id, created_at, model, brain, status) "
        "VALUES ('old-run', now()::TIMESTAMP, 'm', 'manual', 'finished')"
    )
    con.close()
    store = Store(db_path, create=False)
    assert store.schema_version == SCHEMA_VERSION
    assert store.get_run("old-run").status == "finished"
    grid = store.create_grid(
        model="m", speed_model=None, hardware_fingerprint="fp", hardware=None,
        space={"quant_type": ["Q4_0"]}, settings={},
    )  # fmt: skip
    store.add_grid_point(grid.grid_id, {"quant_type": "Q4_0"}, 0, {"decode_tps": 1.0}, 0.5)
    assert store.grid_points(grid.grid_id)[0].metrics == {"decode_tps": 1.0}


def test_what_kind_of_trial_it_is_is_typed(store: Store) -> None:
    """The role, the re-measurement and the repeat are read from the configuration's
    bookkeeping keys, where every version stored them; a role outside the set is refused."""
    run = store.create_run(model="m", brain="expert")
    search = store.add_trial(run.run_id, _trial(quant_type="Q4_0"))
    anchor = store.add_trial(run.run_id, _trial(role="anchor", quant_type="Q4_0"))
    again = store.add_trial(run.run_id, _trial(quant_type="Q4_0", remeasure_of=search.trial_id))
    repeat = store.add_trial(run.run_id, _trial(quant_type="Q8_0", repeat_of=search.trial_id))
    assert (search.role, search.is_search, search.answers_proposal) == (None, True, True)
    assert (anchor.role, anchor.is_search) == ("anchor", False)
    assert again.is_search and not again.answers_proposal and again.remeasure_of == 1
    assert repeat.repeat_of == 1 and repeat.search_config == {"quant_type": "Q8_0"}
    assert superseded(store.list_trials(run.run_id)) == {search.trial_id}
    current = search_trials(store.list_trials(run.run_id), "deploy")
    assert [t.trial_id for t in current] == [again.trial_id, repeat.trial_id]
    assert set(TRIAL_ROLES) == {
        *("base", "reference", "anchor", "baseline", "final", "test", "regression")
    }
    with pytest.raises(ValueError, match="unknown trial role 'anchr'"):
        _trial(role="anchr")
    with pytest.raises(ValueError, match="remeasure_of must be a trial number"):
        _trial(remeasure_of="2")


def test_metrics_are_declared_and_old_rows_still_load(db_path: Path) -> None:
    """A trial cannot carry an undeclared metric; a row an older version wrote with a key this
    one does not know still loads (the key is left out of the record, the row keeps it)."""
    import duckdb

    with pytest.raises(ValueError, match="roofline_efficency"):
        TrialMetrics(decode_tps=1.0, roofline_efficency=0.5)  # type: ignore[call-arg]
    store = Store(db_path)
    run = store.create_run(model="m", brain="manual")
    stored = store.add_trial(run.run_id, _trial())
    # Only what the trial measured is stored: the common figures, and the others where set.
    assert set(stored.metrics.model_dump()) == set(COMMON_METRICS)
    con = duckdb.connect(str(db_path))
    con.execute(
        "UPDATE trials SET metrics = ?",
        ['{"accuracy": 0.5, "decode_tps": 12.5, "gguf": "m.gguf", "retired_figure": 1}'],
    )
    con.close()
    (old,) = Store(db_path).list_trials(run.run_id)
    assert (old.metrics.decode_tps, old.metrics.gguf) == (12.5, "m.gguf")
    assert "retired_figure" not in old.metrics.model_dump()


def test_a_duckdb_file_of_another_program_is_refused(db_path: Path) -> None:
    import duckdb

    con = duckdb.connect(str(db_path))
    con.execute("CREATE TABLE invoices (id INTEGER)")
    con.close()
    with pytest.raises(HaqaError, match="not a haqa store"):
        Store(db_path)


def test_no_room_errors_are_recognised_through_library_wrappers() -> None:
    import errno

    from haqa.errors import no_room_message

    full = OSError(errno.ENOSPC, "No space left on device", "/data/x.gguf")
    assert "writing /data/x.gguf" in (no_room_message(full) or "")
    try:
        try:
            raise full
        except OSError as inner:
            raise RuntimeError("conversion failed") from inner
    except RuntimeError as wrapped:
        assert no_room_message(wrapped) is not None  # found through __cause__
    duck = Exception('IO Error: Could not write file "haqa.duckdb": No space left on device')
    assert "No space left on device" in (no_room_message(duck) or "")
    assert no_room_message(OSError("196608 requested and 194400 written")) is not None  # numpy
    assert no_room_message(ValueError("bad value")) is None


@pytest.mark.slow
def test_a_full_disk_is_a_one_line_error_and_keeps_what_was_stored(
    tiny_model: Path, db_path: Path
) -> None:
    """`haqa export` under a file-size limit smaller than the GGUF it writes (ulimit -f: the
    kernel answers EFBIG exactly where a full disk answers ENOSPC)."""
    import os
    import resource
    import subprocess
    import sys

    store = Store(db_path)
    run = store.create_run(model="zoo:tiny", brain="manual")
    now = utcnow()
    store.add_trial(
        run.run_id,
        TrialResult(
            stage="deploy", tool="benchmark_llamacpp", config={"quant_type": "Q4_0"},
            metrics=TrialMetrics(decode_tps=42.0), started_at=now, finished_at=now,
        ),
    )  # fmt: skip
    store.close()
    limit = db_path.stat().st_size + (2 << 20)  # room for the store, not for a 6.7 MB GGUF
    home = db_path.parent / "home"  # a cache without the tiny model's GGUFs: export must write
    (home / "zoo").mkdir(parents=True)
    (home / "zoo" / "tiny").symlink_to(tiny_model, target_is_directory=True)

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    done = subprocess.run(
        [sys.executable, "-m", "haqa", "export", "--model", "zoo:tiny", "--db", str(db_path)],
        env={**os.environ, "HAQA_HOME": str(home)},
        preexec_fn=small_files,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert lines[-1].startswith("error: no room to write"), lines[-3:]
    assert "Traceback" not in done.stderr
    kept = Store(db_path)
    assert [t.metrics.decode_tps for t in kept.list_trials(run.run_id)] == [42.0]
