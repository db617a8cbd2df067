"""Is a difference real? Paired intervals for two methods scored on the same questions with the same seeds.

    interval = seed_t_interval(sibo_scores, lora_scores)       # (seeds, questions): seeds included
    interval = paired_bootstrap(sibo_correct, lora_correct, groups=dataset_of_each_question)
    p = exact_mcnemar(gained, lost)                               # paired 0/1 answers
    verdict(interval)  # "helps", "hurts" or "within noise"

    interval = two_level_bootstrap(sibo_losses, plain_losses)   # (seeds, records): both resampled
    adjusted = holm([p_lam1, p_lam2, p_lam3])                   # over the comparisons made
    equivalence_verdict(interval, adjusted[0], margin=0.002, seeds_to_decide=k)

Training noise (another seed: another initialisation and data order) often moves a difference
more than another draw of questions does, so the study's primary interval is `seed_t_interval`:
a t-interval over the per-seed mean differences. `paired_bootstrap` resamples questions only and
says so in its `resampled` field; `exact_mcnemar` tests paired right/wrong answers exactly
(a bootstrap over a handful of discordant questions is far too sure of itself).

Both methods answer the same questions, so the question-to-question spread (some are easy for
every model) cancels in the per-question difference; resampling questions with replacement then
asks how much the mean difference would move on another draw of questions from the same sets.
Several seeds per method are averaged per question first (the rows of a (seeds, questions)
array), so the interval is for the seed-averaged difference. With `groups`, questions are
resampled within each group and the statistic is the mean over groups of each group's mean,
the "average over benchmarks" that the tables report, not a mean that favours the largest set.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from statistics import NormalDist

import numpy as np

from sibo.errors import InputError


@dataclass(frozen=True)
class Interval:
    """A mean difference (a − b), its interval, and what the interval resampled (its noise sources)."""

    difference: float
    low: float
    high: float
    confidence: float
    questions: int
    resampled: str = "questions only"

    def as_dict(self) -> dict:
        return asdict(self)


def paired_bootstrap(
    a,
    b,
    groups=None,
    resamples: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Mean of a − b over questions (per group, then over groups) with a percentile bootstrap interval.

    a, b: per-question scores, shape (Q,) or (seeds, Q) with the same questions in the same order;
    groups: a label per question (Q,), e.g. its benchmark. Deterministic for a given seed.
    """
    a, b = np.atleast_2d(np.asarray(a, dtype=np.float64)), np.atleast_2d(np.asarray(b, dtype=np.float64))
    if a.shape != b.shape or a.ndim != 2 or a.shape[1] == 0:
        raise InputError(f"paired scores need the same non-empty shape, got {a.shape} and {b.shape}")
    if not 0.0 < confidence < 1.0 or resamples < 1:
        raise InputError(
            f"confidence must be in (0, 1) and resamples at least 1, got {confidence}, {resamples}"
        )
    per_question = (a - b).mean(axis=0)  # (Q,) the seed-averaged difference on each question
    labels = np.zeros(per_question.shape[0], dtype=int) if groups is None else np.asarray(groups)
    if labels.shape != per_question.shape:
        raise InputError(f"groups needs one label per question: {labels.shape} vs {per_question.shape}")
    rng = np.random.default_rng(seed)
    members = [per_question[labels == label] for label in dict.fromkeys(labels.tolist())]
    observed = float(np.mean([values.mean() for values in members]))
    draws = np.zeros(resamples)
    for values in members:  # each group resampled on its own, then the group means averaged
        picks = rng.integers(0, len(values), size=(resamples, len(values)), dtype=np.int32)  # (R, Q_group)
        draws += values[picks].mean(axis=1) / len(members)
    tail = (1.0 - confidence) / 2
    low, high = np.quantile(draws, [tail, 1.0 - tail])
    return Interval(observed, float(low), float(high), confidence, int(per_question.shape[0]))


def seed_t_interval(a, b, confidence: float = 0.95) -> Interval:
    """Mean of a − b with a t-interval over the per-seed mean differences (each seed: its mean over questions).

    a, b: (seeds, Q), the same questions in the same order, seed k of a paired with seed k of b.
    Seeds carry training noise and question noise both; at least 2 seeds are needed.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2 or a.shape[0] < 2 or a.shape[1] == 0:
        raise InputError(
            f"a seed interval needs (seeds ≥ 2, questions ≥ 1) paired scores, got {a.shape} and {b.shape}"
        )
    per_seed = (a - b).mean(axis=1)  # (S,)
    mean = float(per_seed.mean())
    half = (
        t_quantile(0.5 + confidence / 2, len(per_seed) - 1)
        * float(per_seed.std(ddof=1))
        / math.sqrt(len(per_seed))
    )
    return Interval(
        mean, mean - half, mean + half, confidence, a.shape[1], f"seeds ({len(per_seed)}, t-interval)"
    )


def t_quantile(probability: float, df: int) -> float:
    """Student's t quantile (scipy's; imported here so that `import sibo` stays light)."""
    try:
        from scipy.stats import t
    except ImportError:
        raise InputError("the seed t-interval needs scipy: pip install 'sibo[eval]' (or scipy)") from None
    return float(t.ppf(probability, df))


def exact_mcnemar(gained: int, lost: int) -> float:
    """Two-sided exact McNemar p-value: among the gained + lost discordant pairs, how unlikely so uneven
    a split is when either way is a fair coin (binomial, p = 1/2). 1.0 when nothing changed."""
    discordant = gained + lost
    if discordant == 0:
        return 1.0
    tail = sum(math.comb(discordant, k) for k in range(min(gained, lost) + 1)) / 2**discordant
    return min(1.0, 2 * tail)


def verdict(interval: Interval) -> str:
    """'helps' / 'hurts' when the interval excludes 0 on that side, else 'within noise'."""
    if interval.low > 0:
        return "helps"
    if interval.high < 0:
        return "hurts"
    return "within noise"


# ------------------------------------------------------------ seeds and records together
#
# A sweep's runs differ by seed (training noise) and are all scored on the same held-out records
# (record noise): two crossed sources. A t-interval over seeds sees the first only; a bootstrap over
# records the second only. `two_level_bootstrap` resamples both, paired: each resample draws S seeds
# and Q records with replacement and takes the mean of a − b over that (seeds × records) table.


def two_level_draws(a, b, resamples: int = 10_000, seed: int = 0) -> np.ndarray:
    """(resamples,) bootstrap means of a − b, each over S seeds and Q records drawn with replacement.

    a, b: (seeds S, records Q), paired: seed k of a with seed k of b, record j with record j.
    Deterministic for a given seed. One seed: seeds cannot vary, only records are resampled.
    """
    a, b = np.atleast_2d(np.asarray(a, dtype=np.float64)), np.atleast_2d(np.asarray(b, dtype=np.float64))
    if a.shape != b.shape or a.ndim != 2 or 0 in a.shape:
        raise InputError(
            f"paired scores need the same non-empty (seeds, records) shape, got {a.shape} and {b.shape}"
        )
    if resamples < 1:
        raise InputError(f"resamples must be at least 1, got {resamples}")
    difference = a - b  # (S, Q)
    seeds, records = difference.shape
    rng = np.random.default_rng(seed)
    # how often each seed and each record is drawn: (R, S) and (R, Q); the mean over the drawn table is
    # Σ_s Σ_q n_s · n_q · d[s, q] / (S · Q). The (R, Q) arrays are made a block of resamples at a time (the
    # same draws), so that 10,000 resamples of 20,000 records do not hold gigabytes at once.
    seed_counts = rng.multinomial(seeds, np.full(seeds, 1 / seeds), size=resamples)
    sums = np.empty(resamples)
    block = max(1, _BLOCK_CELLS // records)
    for start in range(0, resamples, block):
        rows = slice(start, min(resamples, start + block))
        record_counts = rng.multinomial(records, np.full(records, 1 / records), size=rows.stop - start)
        sums[rows] = ((seed_counts[rows] @ difference) * record_counts).sum(axis=1)
    return sums / (seeds * records)


_BLOCK_CELLS = 1 << 24  # resamples × records per block of `two_level_draws`: 128 MiB per float64 array


def two_level_bootstrap(a, b, resamples: int = 10_000, confidence: float = 0.95, seed: int = 0) -> Interval:
    """Mean of a − b over (seeds, records) with a percentile interval that resamples seeds and records."""
    if not 0.0 < confidence < 1.0:
        raise InputError(f"confidence must be in (0, 1), got {confidence}")
    draws = two_level_draws(a, b, resamples, seed)
    difference = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    difference = np.atleast_2d(difference)
    tail = (1.0 - confidence) / 2
    low, high = np.quantile(draws, [tail, 1.0 - tail])
    seeds, records = difference.shape
    return Interval(
        float(difference.mean()), float(low), float(high), confidence, records,
        f"seeds ({seeds}) and records ({records})",
    )  # fmt: skip


def bootstrap_p_value(draws) -> float:
    """Two-sided p-value for "the mean difference is 0" from bootstrap draws: twice the smaller share of
    draws on either side of 0 (each share counted as (k + 1) / (R + 1), so never 0), at most 1."""
    draws = np.asarray(draws, dtype=np.float64)
    below, above = int((draws <= 0).sum()), int((draws >= 0).sum())
    return min(1.0, 2 * (min(below, above) + 1) / (len(draws) + 1))


def holm(p_values) -> list[float]:
    """Holm's step-down adjusted p-values, in the order given: the k-th smallest of m is multiplied by
    m − k + 1, kept at least the one before it, capped at 1. Rejecting where adjusted p < α keeps the
    chance of any false "better"/"worse" among the m comparisons at most α."""
    values = [float(p) for p in p_values]
    order = sorted(range(len(values)), key=values.__getitem__)
    adjusted, running = [0.0] * len(values), 0.0
    for rank, k in enumerate(order):
        running = max(running, min(1.0, (len(values) - rank) * values[k]))
        adjusted[k] = running
    return adjusted


def variance_components(a, b) -> tuple[float, float]:
    """(seed variance, record variance of the mean) of a − b, (seeds, records) paired.

    Read the difference d[s, q] as a seed part, a record part and their interaction (cell noise). seed
    variance: the variance over seeds of each seed's mean difference (NaN for one seed): seed part plus cell
    noise over Q, both of which shrink as seeds are added. record variance: what the fixed set of records adds
    however many seeds, σ²_record / Q: the variance over records of each record's seed-averaged difference,
    divided by Q, less the cell noise in it (mean square of the interaction / (S·Q)), which more seeds average
    away; with one seed the two cannot be told apart and it is all counted.
    """
    difference = np.atleast_2d(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))
    seeds, records = difference.shape
    per_seed = difference.mean(axis=1)  # (S,)
    per_record = difference.mean(axis=0)  # (Q,)
    seed_variance = float(per_seed.var(ddof=1)) if seeds > 1 else math.nan
    if records < 2:
        return seed_variance, 0.0
    record_variance = float(per_record.var(ddof=1)) / records
    if seeds > 1:
        interaction = difference - per_seed[:, None] - per_record[None, :] + difference.mean()
        cell_noise = float((interaction**2).sum()) / ((seeds - 1) * (records - 1))
        record_variance = max(0.0, record_variance - cell_noise / (seeds * records))
    return seed_variance, record_variance


def seeds_needed(
    difference: float,
    seed_variance: float,
    record_variance: float,
    margin: float,
    confidence: float = 0.95,
    comparisons: int = 1,
    power: float = 0.8,
) -> float:
    """About how many seeds would decide the comparison with probability `power`, if the difference and the
    variances stayed as observed; math.inf when more seeds cannot (record noise alone is too wide), NaN when
    unknown (1 seed).

    With K seeds the difference's standard error is about se(K) = √(seed_variance / K + record_variance)
    (`variance_components`). "better"/"worse" needs |d| ≥ (z_a + z_power)·se, z_a for a Holm-adjusted p
    under 1 − confidence among `comparisons` (at worst Bonferroni's); "equivalent" needs the interval inside
    ±margin, margin − |d| ≥ (z + z_power)·se. K is the fewest seeds for either:
    K = ⌈seed_variance / (se*² − record_variance)⌉, se* the larger standard error the two allow.
    """
    if math.isnan(seed_variance):
        return math.nan
    normal, alpha = NormalDist(), 1 - confidence
    z_power = normal.inv_cdf(power)
    excludes_zero = abs(difference) / (normal.inv_cdf(1 - alpha / (2 * comparisons)) + z_power)
    inside_margin = (margin - abs(difference)) / (normal.inv_cdf(1 - alpha / 2) + z_power)
    room = max(excludes_zero, inside_margin) ** 2 - record_variance
    if room <= 0:
        return math.inf
    return float(max(2, math.ceil(seed_variance / room)))


def equivalence_verdict(
    interval: Interval,
    adjusted_p: float,
    margin: float,
    seeds_to_decide: float = math.nan,
    alpha: float = 0.05,
    lower_is_better: bool = True,
) -> str:
    """What the comparison shows: "equivalent within ±margin" when the interval lies inside (−margin,
    margin), even if it excludes 0 (a difference too small to matter); else "better" / "worse" when the
    (Holm-adjusted) p is under alpha; else "undecided", with the seeds that would decide it."""
    if margin <= 0 or not 0 < alpha < 1:
        raise InputError(f"the margin must be positive and alpha in (0, 1), got {margin}, {alpha}")
    if -margin < interval.low and interval.high < margin:
        return f"equivalent within ±{margin:g}"
    if adjusted_p < alpha and interval.difference != 0:
        return "better" if (interval.difference < 0) == lower_is_better else "worse"
    if math.isinf(seeds_to_decide):
        return "undecided — more seeds would not decide it: score more records"
    if math.isnan(seeds_to_decide):
        return "undecided — run more seeds (2 or more are needed to estimate how many)"
    return f"undecided — run more seeds (about {int(seeds_to_decide)} would decide it)"


def discordant_pairs(a, b) -> tuple[int, int]:
    """(gained, lost): paired 0/1 answers that a gets right and b wrong, and the reverse; a, b of any
    equal shape, e.g. (seeds, questions) to pool over seeds for `exact_mcnemar`."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise InputError(f"paired answers need the same shape, got {a.shape} and {b.shape}")
    return int((a & ~b).sum()), int((~a & b).sum())
