"""`sibo sweep --heldout`'s answer to "does SIBO help on my data": report.md (and report.json).

    rows = compare_heldout(losses, seeds, 0.002, adapter_steps)  # losses: {(λ, seed): {step: per-record losses}}
    accuracy = compare_accuracy(answers, seeds)            # answers: {(λ, seed): {set: {ids, correct}}}
    text = render_report(rows, accuracy, about)

Every λ's saved adapters are paired with λ 0's seed by seed (the same seed: the same data order and
initialisation) and record by record. The held-out loss is the mean negative log-likelihood per response
token (the reference output and its EOS, given the prompt), lower is better; its interval resamples seeds
and records together (`stats.two_level_bootstrap`; with one seed, records only, and the verdict is
undecided), its p-value comes from the same draws and is Holm-adjusted over the λs, and the verdict
weighs both against the equivalence margin (`stats.equivalence_verdict`). Accuracy per benchmark gets an
exact McNemar test, paired by question, pooled over seeds.
"""

from __future__ import annotations

import math
import statistics

import numpy as np

from sibo.errors import InputError
from sibo.study.stats import (
    Interval,
    bootstrap_p_value,
    discordant_pairs,
    equivalence_verdict,
    exact_mcnemar,
    holm,
    seeds_needed,
    two_level_draws,
    variance_components,
)

RESAMPLES, CONFIDENCE, BOOTSTRAP_SEED = 10_000, 0.95, 0


ONE_SEED = "undecided — 1 seed: training noise unmeasured (run 2 or more)"


def _table(scores: dict, lam: float, seeds: list[int]) -> np.ndarray:
    return np.asarray([scores[(lam, seed)] for seed in seeds], dtype=np.float64)  # (S, Q)


def scored_records(scores: dict[tuple[float, int], list[float]]) -> np.ndarray:
    """(Q,) True for the records every run scored: one cut before its response (NaN) is left out of the
    baseline and of every difference alike, so that λ's loss − λ 0's is the difference reported."""
    return np.all([np.isfinite(values) for values in scores.values()], axis=0)


def difference(scores: dict, lam: float, seeds: list[int], kept: np.ndarray) -> dict:
    """λ − λ 0 over the kept records (`scores`: {(λ, seed): per-record losses}): the mean, the two-level
    interval and p-value, the variance components."""
    a, b = _table(scores, lam, seeds)[:, kept], _table(scores, 0.0, seeds)[:, kept]
    draws = two_level_draws(a, b, RESAMPLES, BOOTSTRAP_SEED)
    tail = (1 - CONFIDENCE) / 2
    low, high = np.quantile(draws, [tail, 1 - tail])
    seed_variance, record_variance = variance_components(a, b)
    return {
        "loss": float(a.mean()),
        "difference": float((a - b).mean()),
        "low": float(low),
        "high": float(high),
        "p": bootstrap_p_value(draws),
        "records": int(kept.sum()),
        "seed_variance": seed_variance,
        "record_variance": record_variance,
    }


def compare_heldout(
    losses: dict[tuple[float, int], dict[int, list[float]]],
    seeds: list[int],
    margin: float,
    adapter_steps: dict[tuple[float, int], int] | None = None,
) -> dict:
    """Per λ ≠ 0: its saved adapters against λ 0's (the step each run saved, `adapter_steps`; default: each
    run's last step scored), with the Holm-adjusted p-value, the seeds that would decide it and the verdict;
    and its difference at every step all runs scored. One seed measures no training noise: no verdict."""
    if adapter_steps is None:
        adapter_steps = {run: max(points) for run, points in losses.items()}
    final = {run: points[adapter_steps[run]] for run, points in losses.items()}
    kept = scored_records(final)
    steps = sorted(set.intersection(*(set(points) for points in losses.values())))
    lambdas, rows = sorted({lam for lam, _ in losses}), []
    for lam in (lam for lam in lambdas if lam != 0.0):
        by_step = []
        for step in steps:
            scores = {run: points[step] for run, points in losses.items()}
            by_step.append({"step": step, **difference(scores, lam, seeds, scored_records(scores))})
        rows.append({"lambda": lam, **difference(final, lam, seeds, kept), "by_step": by_step})
    for row, adjusted in zip(rows, holm([row["p"] for row in rows]), strict=True):
        needed = seeds_needed(
            row["difference"], row["seed_variance"], row["record_variance"], margin, CONFIDENCE, len(rows)
        )  # p is Holm-adjusted over the λs: at worst Bonferroni's threshold
        # more than the seeds already run: the estimate is rough, and these were not enough
        row["seeds_needed"] = needed if math.isnan(needed) else max(needed, len(seeds) + 1)
        row["p_holm"] = adjusted
        interval = Interval(row["difference"], row["low"], row["high"], CONFIDENCE, row["records"])
        row["verdict"] = (
            ONE_SEED
            if len(seeds) == 1
            else equivalence_verdict(interval, adjusted, margin, row["seeds_needed"])
        )
    return {
        "steps": steps,
        "adapter_steps": {f"{lam:g}": [adapter_steps[(lam, seed)] for seed in seeds] for lam in lambdas},
        "baseline_loss": float(_table(final, 0.0, seeds)[:, kept].mean()),
        "records": int(kept.sum()),
        "margin": margin,
        "seeds": seeds,
        "lambdas": rows,
    }


def compare_accuracy(answers: dict[tuple[float, int], dict[str, dict]], seeds: list[int]) -> list[dict]:
    """Per λ ≠ 0 and benchmark: mean accuracy over seeds (λ and λ 0) and the exact McNemar test over every
    (seed, question) pair, gained = right at λ and wrong at λ 0. Every run must have answered the same
    questions (by id), or the pairs would be of different questions."""
    reference = answers[(0.0, seeds[0])]
    for (lam, seed), sets in answers.items():
        for name, found in reference.items():
            if sets.get(name, {}).get("ids") != found["ids"]:
                raise InputError(
                    f"run lam{lam:g}_seed{seed} answered other {name} questions than run lam0_seed{seeds[0]}: "
                    "delete that run's eval folder and run the sweep again"
                )
    rows = []
    for lam in sorted({lam for lam, _ in answers} - {0.0}):
        for name in answers[(0.0, seeds[0])]:
            a = [answers[(lam, seed)][name]["correct"] for seed in seeds]
            b = [answers[(0.0, seed)][name]["correct"] for seed in seeds]
            gained, lost = discordant_pairs(a, b)
            rows.append({
                "lambda": lam, "dataset": name, "questions": len(a[0]),
                "accuracy": statistics.fmean(map(statistics.fmean, a)),
                "baseline_accuracy": statistics.fmean(map(statistics.fmean, b)),
                "gained": gained, "lost": lost, "mcnemar_p": exact_mcnemar(gained, lost),
            })  # fmt: skip
    return rows


def resampled(seeds: list[int]) -> str:
    """What the interval's resamples draw: with one seed, records only (training noise is not in it)."""
    return (
        "seeds and records together" if len(seeds) > 1 else "records only (1 seed: training noise unmeasured)"
    )


def render_report(heldout: dict, accuracy: list[dict], about: dict) -> str:
    """report.md: the verdict table first, how it was computed under it, then loss by step and accuracy."""
    seeds = ", ".join(map(str, heldout["seeds"]))
    steps = "; ".join(
        f"λ {lam}: {', '.join(map(str, found))}" for lam, found in heldout["adapter_steps"].items()
    )
    lines = [
        f"# Does SIBO help here? {about['data_path']}, λ against λ 0",
        "",
        f"Held out: {about['heldout']} records of {about['data_path']} (split seed {about['heldout_seed']}), never "
        f"trained on; {about['dropped']} more records, exact or near copies of them, were taken out of training "
        f"too; {about['trained']} records train. Seeds: {seeds}. Scored: {heldout['records']} of the "
        f"{about['heldout']} held-out records (a record whose prompt fills --cutoff_len has no response token).",
        "",
        "Held-out loss: mean negative log-likelihood per **response token** (the reference output and its EOS, "
        "given the prompt), per record, averaged over records and seeds; lower is better. Each run is scored as "
        "the adapter it saved (the one its accuracy is of): the last step, or with validation the best "
        f"checkpoint. Their steps, by seed: {steps}.",
        "",
        "| λ | held-out loss (saved adapters) | − λ 0 | 95 % interval | p (Holm) | verdict |",
        "|---|---|---|---|---|---|",
        f"| 0 | {heldout['baseline_loss']:.4f} | | | | reference |",
    ]
    for row in heldout["lambdas"]:
        lines.append(
            f"| {row['lambda']:g} | {row['loss']:.4f} | {row['difference']:+.5f} | [{row['low']:+.5f}, {row['high']:+.5f}] "
            f"| {row['p_holm']:.3g} | {row['verdict']} |"
        )
    lines += [
        "",
        f"Interval: 95 % percentile bootstrap that resamples {resampled(heldout['seeds'])}, paired ({RESAMPLES:,} "
        f"resamples, seed {BOOTSTRAP_SEED}). p: two-sided, from the same draws, Holm-adjusted over the "
        f"{len(heldout['lambdas'])} λ compared with λ 0. Verdict: with one seed, undecided; else equivalent when "
        f"the interval lies within ±{heldout['margin']:g} nats; else better/worse when the adjusted p < 0.05; else "
        "undecided, with about how many seeds would decide it with 80 % power, at the Holm-adjusted threshold "
        "(standard error √(seed variance / K + record variance), the seed × record noise counted as what more "
        "seeds shrink; docs/sweep.md).",
        "",
        "## By step",
        "",
        "| step | " + " | ".join(f"λ {row['lambda']:g} − λ 0 [95 %]" for row in heldout["lambdas"]) + " |",
        "|---|" + "---|" * len(heldout["lambdas"]),
    ]
    for k, step in enumerate(heldout["steps"]):
        cells = [f"{r['by_step'][k]['difference']:+.5f} [{r['by_step'][k]['low']:+.5f}, {r['by_step'][k]['high']:+.5f}]"
                 for r in heldout["lambdas"]]  # fmt: skip
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    if accuracy:
        lines += [
            "",
            "## Accuracy",
            "",
            "| benchmark | λ | accuracy | λ 0 | gained | lost | McNemar p |",
            "|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['dataset']} | {r['lambda']:g} | {r['accuracy']:.3f} | {r['baseline_accuracy']:.3f} | {r['gained']} "
            f"| {r['lost']} | {r['mcnemar_p']:.3g} |"
            for r in accuracy
        ]
        lines += ["", "Accuracy: mean over seeds. McNemar: exact, two-sided, over every (seed, question) pair of λ and "
                  "λ 0 (pooled over seeds, so it counts a question once per seed), not adjusted for multiple tests."]  # fmt: skip
    return "\n".join(lines) + "\n"
