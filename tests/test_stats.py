"""Accuracy with its uncertainty: the intervals and the paired test the goal is judged with."""

from __future__ import annotations

import pytest

from haqa.stats import (
    compare_paired,
    paired_resolution,
    questions_to_resolve,
    resolution_statement,
    wilson_interval,
)


def test_wilson_interval_matches_the_textbook_values() -> None:
    low, high = wilson_interval(55, 100)
    assert low == pytest.approx(0.4524, abs=1e-4) and high == pytest.approx(0.6439, abs=1e-4)
    assert wilson_interval(0, 20)[0] == 0.0 and wilson_interval(20, 20)[1] == 1.0


def test_paired_comparison_counts_only_the_questions_the_models_disagree_on() -> None:
    reference = "1" * 50 + "0" * 50
    candidate = "1" * 45 + "0" * 5 + "0" * 48 + "1" * 2
    cmp = compare_paired(reference, candidate)
    assert (cmp.lost, cmp.gained, cmp.n) == (5, 2, 100)
    assert cmp.difference == pytest.approx(-0.03)
    # Exact McNemar: 2 x P(X <= 2 | n = 7, p = 1/2) = 2 x 29/128.
    assert cmp.p_value == pytest.approx(58 / 128)
    assert cmp.ci_low < cmp.difference < cmp.ci_high
    # 100 questions cannot resolve a 1-point tolerance; the same disagreement on 5000 can.
    assert not cmp.resolves(0.01)
    big = compare_paired(reference * 50, candidate * 50)
    assert big.resolves(0.03) and big.difference == pytest.approx(cmp.difference)


def test_identical_answers_differ_by_nothing_but_still_have_a_resolution() -> None:
    cmp = compare_paired("1101" * 25, "1101" * 25)
    assert cmp.difference == 0.0 and cmp.p_value == 1.0
    assert cmp.resolution == pytest.approx(0.01)  # one question of a hundred


def test_answers_of_different_question_sets_are_refused() -> None:
    with pytest.raises(ValueError, match="different question sets"):
        compare_paired("101", "10")


def test_questions_needed_grow_as_the_tolerance_shrinks() -> None:
    n1, n2, n5 = (questions_to_resolve(t) for t in (0.01, 0.02, 0.05))
    assert n1 > n2 > n5 > 0
    cmp = compare_paired("1" * n2, "1" * (n2 - n2 // 10) + "0" * (n2 // 10))
    assert cmp.resolution <= 0.02 + 1e-9


def test_a_goal_finer_than_the_questions_resolve_is_said_plainly() -> None:
    """A 1-point goal on 261 paired questions is below their ±4 points of noise: the statement
    names both figures and how many questions would resolve it; a 5-point goal is resolved."""
    note = resolution_statement(261, 0.01)
    assert note is not None
    assert "1 points" in note and "261 paired questions" in note
    assert f"±{paired_resolution(261) * 100:.1f}" in note
    assert str(questions_to_resolve(0.01)) in note
    assert resolution_statement(261, 0.05) is None
    # The statement's width is compare_paired's at the same share of disagreeing answers.
    ref, cand = "1" * 13 + "0" * 13 + "1" * 235, "0" * 13 + "1" * 13 + "1" * 235
    assert abs(compare_paired(ref, cand).resolution - paired_resolution(261, 26 / 261)) < 1e-9
