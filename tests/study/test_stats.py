"""The paired intervals and tests on constructed cases whose answer is known by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sibo.errors import InputError
from sibo.study.stats import (
    Interval,
    bootstrap_p_value,
    discordant_pairs,
    equivalence_verdict,
    exact_mcnemar,
    holm,
    paired_bootstrap,
    seed_t_interval,
    seeds_needed,
    t_quantile,
    two_level_bootstrap,
    two_level_draws,
    variance_components,
    verdict,
)


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


# ------------------------------------------------------------ seeds and records together


def test_the_two_level_bootstrap_matches_its_distribution_enumerated_by_hand():
    """2 seeds × 2 records, one cell 4, the rest 0. A resample's mean is n_s · n_q (n_s: times seed 1 is
    drawn, n_q: times record 1 is, each Binomial(2, ½)): 0 with chance 7/16, 1: 4/16, 2: 4/16, 4: 1/16.
    So the 95 % interval is [0, 4] and the 80 % one [0, 2]; the mean of the table is 1."""
    a = np.array([[0.0, 0.0], [0.0, 4.0]])
    b = np.zeros((2, 2))
    draws = two_level_draws(a, b, resamples=40_000, seed=1)
    shares = {value: float(np.mean(draws == value)) for value in (0.0, 1.0, 2.0, 4.0)}
    assert shares == pytest.approx({0.0: 7 / 16, 1.0: 4 / 16, 2.0: 4 / 16, 4.0: 1 / 16}, abs=0.01)
    assert sum(shares.values()) == 1.0
    interval = two_level_bootstrap(a, b, seed=1)
    assert (interval.difference, interval.low, interval.high) == (1.0, 0.0, 4.0)
    assert (interval.questions, interval.resampled) == (2, "seeds (2) and records (2)")
    assert two_level_bootstrap(a, b, confidence=0.8, seed=1).high == 2.0
    assert two_level_bootstrap(a, b, seed=5) == two_level_bootstrap(a, b, seed=5)  # deterministic


def test_seed_noise_widens_the_interval_that_a_records_only_bootstrap_leaves_at_zero():
    # seed 1 lowers every record by 1, seed 2 raises it by 1: averaged per record, nothing varies
    a = np.array([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])
    b = np.zeros((2, 3))
    assert paired_bootstrap(a, b).low == paired_bootstrap(a, b).high == 0.0
    interval = two_level_bootstrap(a, b)
    assert (interval.low, interval.high) == (-1.0, 1.0)  # both seeds drawn as one: ±1, chance ¼ each


def test_one_seed_resamples_records_only_and_a_constant_difference_has_no_width():
    # 1 seed, records 0 and 1: a resample's mean is 0, ½ or 1 with chance ¼, ½, ¼
    draws = two_level_draws([[0.0, 1.0]], [[0.0, 0.0]], resamples=20_000)
    assert float(np.mean(draws == 0.5)) == pytest.approx(0.5, abs=0.015)
    assert (
        two_level_bootstrap([[0.0, 1.0]], [[0.0, 0.0]]).low,
        two_level_bootstrap([[0.0, 1.0]], [[0.0, 0.0]]).high,
    ) == (0.0, 1.0)
    flat = two_level_bootstrap(np.full((3, 4), 0.5), np.zeros((3, 4)))
    assert (flat.difference, flat.low, flat.high) == (0.5, 0.5, 0.5)
    with pytest.raises(InputError, match="same non-empty"):
        two_level_bootstrap([[1.0, 2.0]], [[1.0]])


def test_bootstrap_p_value_counts_draws_on_the_far_side_of_zero():
    assert bootstrap_p_value([1.0] * 99) == pytest.approx(2 * 1 / 100)  # none at or below 0
    assert bootstrap_p_value([-1.0] * 9 + [1.0] * 90) == pytest.approx(2 * 10 / 100)
    assert bootstrap_p_value([0.0] * 9) == 1.0


def test_holm_by_hand():
    # sorted 0.01, 0.03, 0.04 times 3, 2, 1 = 0.03, 0.06, 0.04 → kept increasing: 0.03, 0.06, 0.06
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    # the study's AdapterH p = 0.042, the smallest of five comparisons: 0.21 after Holm
    assert holm([0.042, 0.5, 0.3, 0.9, 0.7])[0] == pytest.approx(0.21)
    assert holm([0.6, 0.5]) == [1.0, 1.0] and holm([]) == [] and holm([0.02]) == [0.02]


def test_variance_components_and_seeds_needed_by_hand():
    # seeds × records: per-seed means 0.001, 0.003 (variance 2e-6); per-record means 0.001, 0.003, whose
    # variance 2e-6 over 2 records is 1e-6 for their mean; the table is additive (no cell noise to remove)
    a = np.array([[0.0, 0.002], [0.002, 0.004]])
    seed_variance, record_variance = variance_components(a, np.zeros((2, 2)))
    assert seed_variance == pytest.approx(2e-6) and record_variance == pytest.approx(1e-6)
    z, z_power = 1.959963984540054, 0.8416212335729143  # 97.5 % and 80 % normal quantiles
    # d = 0.002, margin 0.002: "better" needs se ≤ 0.002 / (z + z_power), "equivalent" se ≤ 0 / …: so
    # (0.002 / 2.8016)² − 1e-7 = 4.0963e-7 of room, K = ⌈2e-6 / 4.0963e-7⌉ = 5
    assert (
        seeds_needed(0.002, 2e-6, 1e-7, 0.002) == math.ceil(2e-6 / ((0.002 / (z + z_power)) ** 2 - 1e-7)) == 5
    )
    # at 50 % power: (0.002 / 1.96)² − 1e-6 = 4.1226e-8, K = ⌈2e-6 / 4.1226e-8⌉ = 49
    assert (
        seeds_needed(0.002, 2e-6, 1e-6, 0.002, power=0.5) == math.ceil(2e-6 / ((0.002 / z) ** 2 - 1e-6)) == 49
    )
    # among 3 comparisons (Holm, at worst Bonferroni): z for 0.05 / 6 one-sided is 2.3940
    z_three = 2.3939797998185104
    assert seeds_needed(0.002, 2e-6, 1e-7, 0.002, comparisons=3) == math.ceil(
        2e-6 / ((0.002 / (z_three + z_power)) ** 2 - 1e-7)
    ) == 8  # fmt: skip
    # d = 0.0005, margin 0.002: equivalence allows the larger se, 0.0015 / (z + z_power)
    assert seeds_needed(0.0005, 2e-6, 1e-7, 0.002) == math.ceil(2e-6 / ((0.0015 / (z + z_power)) ** 2 - 1e-7))
    assert seeds_needed(0.0005, 2e-6, 4e-7, 0.002) == math.inf  # record noise alone is wider than se*
    assert math.isnan(seeds_needed(0.001, math.nan, 1e-7, 0.002))  # one seed: no seed variance
    assert math.isnan(variance_components([[0.1, 0.2]], [[0.0, 0.0]])[0])


def test_cell_noise_is_not_counted_as_record_noise_that_seeds_cannot_shrink():
    """Pure cell noise (each seed × record its own draw): more seeds average it away, so the record part is ~0
    and K is finite; counting it as fixed record noise said "more seeds would not decide it"."""
    noise = np.random.default_rng(0).normal(0.0, 0.02, size=(3, 200))
    per_seed, per_record = noise.mean(axis=1), noise.mean(axis=0)
    cells = ((noise - per_seed[:, None] - per_record[None, :] + noise.mean()) ** 2).sum() / (2 * 199)
    by_hand = max(0.0, per_record.var(ddof=1) / 200 - cells / 600)
    seed_variance, record_variance = variance_components(noise + 0.0005, np.zeros((3, 200)))
    assert (
        record_variance == pytest.approx(by_hand, abs=1e-15)
        and record_variance < 0.2 * per_record.var(ddof=1) / 200
    )
    assert seed_variance == pytest.approx(per_seed.var(ddof=1))
    assert math.isfinite(seeds_needed(0.0005, seed_variance, record_variance, 0.002))
    assert (
        seeds_needed(0.0005, seed_variance, per_record.var(ddof=1) / 200, 0.002) == math.inf
    )  # the old count


def test_two_level_draws_in_blocks_are_the_same_draws(monkeypatch):
    import sibo.study.stats as stats

    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(3, 50)), rng.normal(size=(3, 50))
    whole = two_level_draws(a, b, 100, seed=0)
    monkeypatch.setattr(stats, "_BLOCK_CELLS", 50 * 7)  # blocks of 7 resamples, the last one shorter
    assert np.array_equal(two_level_draws(a, b, 100, seed=0), whole)


def _interval(difference: float, low: float, high: float) -> Interval:
    return Interval(difference, low, high, 0.95, 100, "seeds (3) and records (100)")


@pytest.mark.parametrize(
    ("interval", "adjusted_p", "seeds", "expected"),
    [
        (_interval(-0.004, -0.006, -0.002), 0.01, 9.0, "better"),  # loss: lower is better
        (_interval(0.004, 0.002, 0.006), 0.01, 9.0, "worse"),
        (_interval(0.003, 0.001, 0.005), 0.08, 9.0, "undecided — run more seeds (about 9 would decide it)"),
        (_interval(0.0002, -0.0010, 0.0015), 0.7, 9.0, "equivalent within ±0.002"),
        (_interval(0.0012, 0.0005, 0.0019), 0.001, 9.0, "equivalent within ±0.002"),  # real, but too small to matter
        (_interval(0.0012, 0.0005, 0.0021), 0.001, 9.0, "worse"),
        (_interval(0.0002, -0.0010, 0.0025), 0.7, 12.0, "undecided — run more seeds (about 12 would decide it)"),
        (_interval(0.0002, -0.003, 0.003), 0.9, math.inf, "undecided — more seeds would not decide it: score more records"),
        (_interval(0.0002, -0.003, 0.003), 0.9, math.nan, "undecided — run more seeds (2 or more are needed to estimate how many)"),
    ],
)  # fmt: skip
def test_each_verdict(interval, adjusted_p, seeds, expected):
    assert equivalence_verdict(interval, adjusted_p, 0.002, seeds) == expected


def test_verdict_direction_margin_check_and_discordant_pairs():
    gain = _interval(0.05, 0.02, 0.08)
    assert (
        equivalence_verdict(gain, 0.001, 0.01, lower_is_better=False) == "better"
    )  # accuracy: higher is better
    with pytest.raises(InputError, match="margin must be positive"):
        equivalence_verdict(gain, 0.001, 0.0)
    # two seeds of 3 questions: seed 1 gains q0, loses q2; seed 2 gains q1
    a = [[1, 1, 0], [1, 1, 1]]
    b = [[0, 1, 1], [1, 0, 1]]
    assert discordant_pairs(a, b) == (2, 1)
    assert exact_mcnemar(*discordant_pairs(a, b)) == pytest.approx(1.0)
