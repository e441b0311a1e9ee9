"""`haqa export`, `haqa quantize`, `haqa bench`: one trial per row, bad input stores nothing."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from haqa.cli import main
from haqa.store import Store
from haqa.tools.export_gguf import Args, export_gguf


@pytest.fixture()
def tiny_f16(tiny_model: Path) -> Path:
    return export_gguf(Args(model=tiny_model)).gguf_path


@pytest.mark.slow
def test_bench_sweep_stores_one_trial_per_row(
    tiny_f16: Path, db_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["bench", "-m", str(tiny_f16), "--quant", "Q8_0,Q4_0", "-t", "1", "-b", "64,128"]
    argv += ["-ub", "64", "-p", "16", "-n", "4", "-r", "1", "-o", "json", "--db", str(db_path)]
    assert main(argv) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert [(r["quant"], r["n_batch"]) for r in rows] == [
        ("Q8_0", 64),
        ("Q8_0", 128),
        ("Q4_0", 64),
        ("Q4_0", 128),
    ]
    trials = Store(db_path).list_trials()
    assert len(trials) == 4
    for t in trials:
        assert (t.stage, t.tool, t.status) == ("deploy", "benchmark_llamacpp", "ok")
        assert t.metrics.decode_tps and t.metrics.decode_tps > 0
        assert t.metrics.prefill_tps and t.metrics.prefill_tps > 0
        assert t.metrics.peak_mem_bytes and t.metrics.artifact_bytes


@pytest.mark.slow
def test_export_and_quantize_store_one_trial_each(
    tiny_model: Path, tiny_f16: Path, db_path: Path, tmp_path: Path
) -> None:
    assert (
        main(["export", "--model", str(tiny_model), "--quant", "Q4_K_M", "--db", str(db_path)]) == 0
    )
    out = tmp_path / "q.gguf"
    argv = ["quantize", str(tiny_f16), "--quant", "iq4_nl", "-o", str(out), "--db", str(db_path)]
    assert main(argv) == 0
    assert out.read_bytes()[:4] == b"GGUF"
    trials = Store(db_path).list_trials()
    assert [t.tool for t in trials] == ["export_gguf", "quantize_gguf"]
    assert all(t.status == "ok" and t.metrics.artifact_bytes for t in trials)


@pytest.mark.parametrize(
    "extra",
    [
        ["-t", str((os.cpu_count() or 1) + 1)],
        ["--quant", "Q4_0,Q9_9"],
        ["-b", "256", "-ub", "512"],
        ["-fa", "2"],
        ["-ctk", "q3_k"],
        ["-o", "xml"],
        ["-fa", "0", "-ctv", "q8_0"],
    ],
)
def test_bad_bench_input_exits_2_and_stores_nothing(
    tiny_f16: Path, db_path: Path, extra: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["bench", "-m", str(tiny_f16), "--db", str(db_path), *extra])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert not db_path.exists() or not Store(db_path).list_runs()


def test_bench_on_a_truncated_gguf_exits_2(tiny_f16: Path, db_path: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny_f16.read_bytes()[:4000])
    assert main(["bench", "-m", str(cut), "--db", str(db_path)]) == 2
    assert main(["quantize", str(cut), "--quant", "Q4_0", "--db", str(db_path)]) == 2
    assert not db_path.exists() or not Store(db_path).list_runs()
