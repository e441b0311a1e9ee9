"""Fleet runs (``haqa run --cluster ... --targets``) without a cluster: the config's rules, how a
resumed fleet treats each kind's run, and how the report, ``haqa runs`` and the TUI show one
answer per device kind. ``tests/test_cluster.py`` runs a real fleet on a two-kind cluster."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from haqa.graph import run as graph_run
from haqa.graph.config import Fleet, RunConfig
from haqa.store import RunStatus, Store


def test_targets_need_a_cluster_live_trials_and_no_target() -> None:
    from pydantic import ValidationError

    assert RunConfig(cluster="auto", targets=["aaaa,bbbb", "aaaa"]).targets == ["aaaa", "bbbb"]
    assert RunConfig(cluster="auto", targets=["all"]).targets == ["all"]
    for bad, message in (
        ({"targets": ["all"]}, "pass --cluster too"),
        ({"cluster": "auto", "target": "aaaa", "targets": ["all"]}, "not both"),
        ({"cluster": "auto", "tabular": "g", "targets": ["all"]}, "needs live trials"),
        ({"cluster": "auto", "targets": ["all,aaaa"]}, "not both"),
        ({"cluster": "auto", "targets": [" , "]}, "all, or device kinds"),
    ):
        with pytest.raises(ValidationError, match=message):
            RunConfig(**bad)


def test_a_fleet_resumed_keeps_its_finished_kinds(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Resume: a finished kind is kept, a stopped one resumed, one not started yet started; each
    later kind shares the first kind's fine-tune stage."""
    fleet = Fleet(fleet_id="fleet-x", kinds=["aaaa", "bbbb", "cccc"])
    # The first kind's baseline, resolved for its kind: not the later kinds'.
    base = RunConfig(cluster="auto", fleet=fleet, baseline="latest", baseline_run="aaaa-run")

    done = graph_run.RunResult(run_id="r", goal="decode", found=True)

    def member(kind: str, status: RunStatus) -> str:
        cfg = base.model_copy(update={"target": kind}).model_dump(mode="json")
        run = store.create_run(model="zoo:tiny", brain="expert", config=cfg)
        result = done.model_dump(mode="json") if status == "finished" else None
        store.finish_run(run.run_id, status, result=result)
        return run.run_id

    first, second = member("aaaa", "finished"), member("bbbb", "stopped")
    store.create_run(model="zoo:tiny", brain="expert", config=RunConfig().model_dump(mode="json"))
    assert [r.run_id for r in store.fleet_runs("fleet-x")] == [first, second]
    calls: list[tuple[str, str, object]] = []

    def resume(_store: Store, run_id: str, **kw: object) -> object:
        calls.append(("resume", run_id, kw.get("share_finetune")))
        return done

    def start(_store: Store, cfg: RunConfig, **kw: object) -> tuple[str, object]:
        assert cfg.baseline == "latest" and cfg.baseline_run is None and cfg.fleet == fleet
        calls.append(("start", str(cfg.target), kw.get("share_finetune")))
        return "new", done

    monkeypatch.setattr(graph_run, "resume_run", resume)
    monkeypatch.setattr(graph_run, "start_run", start)
    members = graph_run.resume_fleet(store, "fleet-x")
    assert calls == [("resume", second, first), ("start", "cccc", first)]
    assert [(m.kind, m.run_id) for m in members] == [
        ("aaaa", first),
        ("bbbb", second),
        ("cccc", "new"),
    ]
    assert graph_run.fleet_of(store, second) == "fleet-x"


def _fleet_of_two(store: Store) -> tuple[str, str]:
    """A fleet of two device kinds whose runs finished with different answers."""
    fleet = Fleet(fleet_id="fleet-y", kinds=["aaaa", "bbbb"])
    ids = []
    for kind, threads, tps in (("aaaa", 1, 10.5), ("bbbb", 2, 19.25)):
        cfg = RunConfig(cluster="auto", target=kind, fleet=fleet).model_dump(mode="json")
        run = store.create_run(model="zoo:tiny", brain="expert", config=cfg)
        result = graph_run.RunResult(
            run_id=run.run_id,
            goal="decode",
            found=True,
            config={"quant_type": "Q8_0", "n_threads": threads},
            decode_tps=tps,
            accuracy_validation=0.5,
        )
        store.finish_run(run.run_id, "finished", result=result.model_dump(mode="json"))
        ids.append(run.run_id)
    return ids[0], ids[1]


def test_the_report_haqa_runs_and_the_tui_show_one_answer_per_kind(
    store: Store,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from haqa.cli import main
    from haqa.report import write_fleet_report, write_report
    from haqa.tui.state import result_headline

    first, second = _fleet_of_two(store)
    member = write_report(store, second, tmp_path / "bbbb").read_text()
    fleet = write_fleet_report(store, "fleet-y", tmp_path).read_text()
    for text in (member, fleet):
        assert f"| aaaa | {first} | finished | Q8_0 n_threads=1 | 10.5 |" in text
        assert f"| bbbb | {second} | finished | Q8_0 n_threads=2 | 19.2 |" in text
    assert "[bbbb](bbbb/report.md)" in fleet and "[aaaa]" not in fleet  # only reports written
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["runs", "--db", str(store.path)]) == 0
    output = capsys.readouterr().out
    assert "fleet fleet-y: one answer per device kind" in output
    rows = [line for line in output.splitlines() if re.search(r"\b(aaaa|bbbb)\b", line)]
    assert len(rows) == 2 and "n_threads=1" in rows[0] and "n_threads=2" in rows[1]
    headlines = [result_headline(r) for r in store.fleet_runs("fleet-y")]
    assert headlines == ["aaaa: Q8_0 t1 10.5 tg/s", "bbbb: Q8_0 t2 19.2 tg/s"]
    plain = store.create_run(model="zoo:tiny", brain="expert", config={"model": "zoo:tiny"})
    assert result_headline(plain) == "-"  # a run outside a fleet reads as before
