"""The paired bootstrap on constructed cases whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from sibo.errors import InputError
from sibo.study.stats import paired_bootstrap, verdict


def _pair(questions: int, gained: int, lost: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """b: random 0/1 scores; a: b with `gained` wrong answers made right and `lost` right ones made wrong."""
    rng = np.random.default_rng(seed)
    b = rng.integers(0, 2, questions)
    a = b.copy()
    wrong, right = np.flatnonzero(b == 0), np.flatnonzero(b == 1)
    a[rng.choice(wrong, gained, replace=False)] = 1
    a[rng.choice(right, lost, replace=False)] = 0
    return a, b


def test_a_clear_gain_is_inside_the_interval_and_zero_is_not():
    a, b = _pair(500, gained=60, lost=10)  # +50 of 500 = +0.1
    interval = paired_bootstrap(a, b)
    assert interval.difference == pytest.approx(0.1)
    assert 0 < interval.low < 0.1 < interval.high < 0.2
    assert interval.questions == 500 and verdict(interval) == "helps"
    assert verdict(paired_bootstrap(b, a)) == "hurts"


def test_a_difference_of_a_few_questions_is_within_noise():
    a, b = _pair(500, gained=6, lost=4)  # +2 of 500
    interval = paired_bootstrap(a, b)
    assert interval.difference == pytest.approx(0.004)
    assert interval.low < 0 < interval.high and verdict(interval) == "within noise"


def test_identical_scores_give_a_zero_width_interval_and_a_seed_gives_one_interval():
    a, b = _pair(200, gained=20, lost=5)
    assert paired_bootstrap(b, b).as_dict() == {
        "difference": 0.0, "low": 0.0, "high": 0.0, "confidence": 0.95, "questions": 200,
    }  # fmt: skip
    assert paired_bootstrap(a, b, seed=3) == paired_bootstrap(a, b, seed=3)
    other = paired_bootstrap(a, b, seed=4)  # another draw of resamples: the interval barely moves
    assert abs(other.low - 0.03) <= 0.01 and abs(other.high - 0.125) <= 0.01


def test_groups_weigh_sets_equally_and_seeds_are_averaged_per_question():
    # set X (10 questions): a always right, b always wrong; set Y (90): both alike.
    a = np.array([1] * 10 + [1, 0] * 45)
    b = np.array([0] * 10 + [1, 0] * 45)
    groups = ["X"] * 10 + ["Y"] * 90
    assert paired_bootstrap(a, b).difference == pytest.approx(0.1)  # pooled: 10 of 100 questions
    grouped = paired_bootstrap(a, b, groups=groups)
    assert grouped.difference == pytest.approx(0.5)  # mean of the set means, 1.0 and 0.0
    assert grouped.low == grouped.high == pytest.approx(0.5)  # no spread within either set
    # Two seeds: the interval is for the seed-averaged difference.
    two_seeds = paired_bootstrap(np.stack([a, b]), np.stack([b, b]), groups=groups)
    assert two_seeds.difference == pytest.approx(0.25)


def test_mismatched_scores_are_refused():
    with pytest.raises(InputError, match="same non-empty shape"):
        paired_bootstrap([1, 0, 1], [1, 0])
    with pytest.raises(InputError, match="one label per question"):
        paired_bootstrap([1, 0], [1, 1], groups=["X"])
