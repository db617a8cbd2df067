"""Is a difference real? Paired intervals for two methods scored on the same questions with the same seeds.

    interval = seed_t_interval(sibo_scores, lora_scores)       # (seeds, questions): seeds included
    interval = paired_bootstrap(sibo_correct, lora_correct, groups=dataset_of_each_question)
    p = exact_mcnemar(gained, lost)                               # paired 0/1 answers
    verdict(interval)  # "helps", "hurts" or "within noise"

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
