"""The paired intervals and tests on constructed cases whose answer is known by hand."""

from __future__ import annotations

import numpy as np
import pytest

from sibo.errors import InputError
from sibo.study.stats import exact_mcnemar, paired_bootstrap, seed_t_interval, t_quantile, verdict


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
        "resampled": "questions only",
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


def test_t_quantiles_match_the_printed_table():
    # two-sided 95 % (0.975) for 1, 2, 10 degrees of freedom; one-sided 95 % for 4
    found = [t_quantile(0.975, 1), t_quantile(0.975, 2), t_quantile(0.975, 10), t_quantile(0.95, 4)]
    assert found == pytest.approx([12.7062, 4.3027, 2.2281, 2.1318], abs=1e-4)


def test_the_seed_interval_is_a_t_interval_over_per_seed_mean_differences():
    # per-seed differences 0.1, 0.2, 0.3 (each the mean over 2 questions): mean 0.2, sd 0.1
    a = np.array([[0.3, 0.1], [0.5, 0.1], [0.4, 0.4]])
    b = np.array([[0.1, 0.1], [0.2, 0.0], [0.1, 0.1]])
    interval = seed_t_interval(a, b)
    half = 4.302653 * 0.1 / 3**0.5  # t(0.975, df 2) · sd / √seeds
    assert (interval.difference, interval.low, interval.high) == pytest.approx((0.2, 0.2 - half, 0.2 + half))
    assert (interval.questions, interval.resampled) == (2, "seeds (3, t-interval)")
    assert verdict(interval) == "within noise"  # 0.2 - 0.248 < 0
    with pytest.raises(InputError, match="seeds ≥ 2"):
        seed_t_interval(a[:1], b[:1])


def test_exact_mcnemar_by_hand():
    assert exact_mcnemar(5, 0) == pytest.approx(2 / 32)  # 5 of 5 discordant one way: p = 0.0625, not "helps"
    assert exact_mcnemar(0, 5) == exact_mcnemar(5, 0)
    assert exact_mcnemar(3, 1) == pytest.approx(2 * (1 + 4) / 16)
    assert exact_mcnemar(10, 10) == 1.0 and exact_mcnemar(0, 0) == 1.0
    assert exact_mcnemar(12, 2) == pytest.approx(2 * (1 + 14 + 91) / 2**14)
