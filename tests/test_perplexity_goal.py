"""A goal with a perplexity floor (`--max-perplexity-increase`): each deployment is judged by its
perplexity beside the reference's over the same validation prose, and the brains see the ratio."""

from __future__ import annotations

from pathlib import Path

import pytest

from haqa.agents.brains.base import TrialView
from haqa.agents.search_step import history_table
from haqa.cli import main
from haqa.errors import HaqaError
from haqa.goal import Goal
from haqa.schemas import TrialMetrics
from haqa.store import Store
from haqa.zoo.smollm2 import Files


def _measured(perplexity: float | None, accuracy: float = 0.60) -> TrialMetrics:
    return TrialMetrics(
        decode_tps=100.0,
        accuracy=accuracy,
        perplexity=perplexity,
        reference_perplexity=None if perplexity is None else 15.6,
        peak_mem_bytes=200 << 20,
    )


def test_a_perplexity_floor_judges_a_deployment_by_its_ratio_to_the_reference() -> None:
    goal = Goal.parse("decode", max_accuracy_drop_points=5, max_perplexity_increase_pct=3)
    assert goal.max_perplexity_increase == pytest.approx(0.03)
    assert "perplexity <= reference x 1.03" in goal.describe()
    assert goal.feasible(_measured(15.6 * 1.029), reference=0.62)
    assert not goal.feasible(_measured(15.6 * 1.031), reference=0.62)
    # Both floors hold: a perplexity inside the floor does not excuse an accuracy miss.
    assert not goal.feasible(_measured(15.6, accuracy=0.50), reference=0.62)
    # Nothing measured, nothing to judge (a speed-only baseline), as with accuracy.
    assert goal.feasible(_measured(None), reference=0.62)
    # Without the floor, perplexity does not decide.
    plain = Goal.parse("decode", max_accuracy_drop_points=5)
    assert plain.feasible(_measured(15.6 * 2), reference=0.62)
    assert "perplexity" not in plain.describe()
    with pytest.raises(HaqaError, match="--max-perplexity-increase -1"):
        Goal.parse("decode", max_perplexity_increase_pct=-1)


def test_the_history_shows_the_perplexity_ratio_only_where_it_was_measured() -> None:
    def view(trial_id: int, ratio: float | None) -> TrialView:
        return TrialView(
            trial_id=trial_id,
            stage="deploy",
            config={"quant_type": "Q4_0"},
            status="ok",
            accuracy=0.6,
            decode_tps=50.0,
            perplexity_ratio=ratio,
        )

    with_ratio = history_table([view(1, 1.0412), view(2, None)], ["quant_type"])
    head, first, second = with_ratio.splitlines()
    assert "ppl/ref" in head.split(" | ")
    assert " | 1.041 | " in first and " | - | " in second
    assert "ppl/ref" not in history_table([view(1, None)], ["quant_type"])


@pytest.mark.parametrize(
    ("extra", "why"),
    [
        (["--model", "zoo:tiny"], "zoo:tiny is trained on a toy language"),
        (["--model", "zoo:smollm2-135m", "--perplexity-windows", "0"], "--perplexity-windows is 0"),
        (["--tabular", "grid-0", "--finetune-trials", "0"], "a recorded grid holds no perplexity"),
    ],
)
def test_a_perplexity_floor_with_no_prose_to_score_is_a_one_line_error(
    extra: list[str], why: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "h.duckdb"
    args = ["run", *extra, "--max-perplexity-increase", "3", "--db", str(db)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and why in err, err
    assert not db.exists()  # refused before anything was stored


def test_a_perplexity_floor_on_too_short_a_text_is_a_one_line_error(
    smol: Files, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    short = tmp_path / "short.txt"
    short.write_text("A few words of prose. " * 40)
    db = tmp_path / "h.duckdb"
    args = ["run", "--model", str(smol.shipped_gguf), "--eval-text", str(short)]
    args += ["--max-perplexity-increase", "3", "--db", str(db)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "short.txt" in err and "windows" in err, err
    assert not db.exists() or not Store(str(db)).list_runs()  # refused before a run was stored
