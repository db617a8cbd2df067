"""sweep --heldout's report from fixed losses: each λ paired with λ 0, Holm over the λs, verdicts, McNemar."""

from __future__ import annotations

import json
import math

import pytest

from sibo.errors import InputError
from sibo.study.stats import holm, seeds_needed
from sibo.study.sweep import report_json
from sibo.study.sweep_report import ONE_SEED, compare_accuracy, compare_heldout, render_report

SEEDS = [1, 2, 3]


def _losses() -> dict:
    """λ 0: 1.0 on every record; λ 0.1: 0.1 lower everywhere (a clear gain); λ 0.2: ±0.0005 by seed and
    record, mean 0 (equivalent within 0.002). Step 0: all alike."""
    losses = {}
    for seed in SEEDS:
        wobble = [0.0005 * (-1) ** (seed + q) for q in range(4)]
        losses[(0.0, seed)] = {0: [1.0] * 4, 10: [1.0] * 4}
        losses[(0.1, seed)] = {0: [1.0] * 4, 10: [0.9] * 4}
        losses[(0.2, seed)] = {0: [1.0] * 4, 10: [1.0 + w for w in wobble]}
    return losses


def test_each_lambda_against_zero_with_holm_and_verdicts():
    report = compare_heldout(_losses(), SEEDS, margin=0.002)
    assert (report["steps"], report["baseline_loss"], report["records"]) == ([0, 10], 1.0, 4)
    assert report["adapter_steps"] == {"0": [10, 10, 10], "0.1": [10, 10, 10], "0.2": [10, 10, 10]}
    gain, flat = report["lambdas"]
    assert gain["lambda"] == 0.1 and gain["difference"] == pytest.approx(-0.1)
    assert gain["low"] == gain["high"] == pytest.approx(-0.1)  # no spread: every resample is −0.1
    assert gain["verdict"] == "better"
    assert (
        flat["difference"] == pytest.approx(0.0, abs=1e-12) and -0.002 < flat["low"] <= flat["high"] < 0.002
    )
    assert flat["verdict"] == "equivalent within ±0.002"
    assert [gain["p_holm"], flat["p_holm"]] == holm([gain["p"], flat["p"]])
    assert gain["by_step"][0]["difference"] == 0.0
    text = render_report(report, [], ABOUT)
    assert "| 0.1 | 0.9000 | -0.10000 | [-0.10000, -0.10000] |" in text and "| better |" in text
    assert "equivalent within ±0.002" in text and "## Accuracy" not in text
    assert "Scored: 4 of the 4 held-out records" in text and "resamples seeds and records together" in text
    assert "would decide it with 80 % power, at the Holm-adjusted threshold" in text


def test_seeds_needed_aim_at_the_holm_threshold_among_the_lambdas():
    """Two λs: "better" needs a Holm-adjusted p under 0.05, at worst 0.05 / 2 each, so more seeds than for one."""
    losses = _losses()
    # λ 0.2 higher by 0.0015, ± seed noise
    for seed, shift in zip(SEEDS, (0.0003, 0.0027, 0.0015), strict=True):
        losses[(0.2, seed)][10] = [1.0 + shift] * 4
    flat = compare_heldout(losses, SEEDS, margin=0.002)["lambdas"][1]
    by_hand = {
        m: seeds_needed(flat["difference"], flat["seed_variance"], 0.0, 0.002, 0.95, m) for m in (1, 2)
    }
    assert flat["record_variance"] == 0.0 and by_hand[2] > by_hand[1] > 4
    assert flat["seeds_needed"] == by_hand[2]


ABOUT = {"data_path": "d.json", "heldout": 4, "heldout_seed": 0, "dropped": 1, "trained": 9}


def test_one_seed_gives_no_verdict_and_says_its_interval_covers_records_only():
    """Every resample draws the one seed: the interval is record noise alone, however clear it looks."""
    losses = {run: points for run, points in _losses().items() if run[1] == 1}
    report = compare_heldout(losses, [1], margin=0.002)
    gain, flat = report["lambdas"]
    assert gain["difference"] == pytest.approx(-0.1) and gain["p_holm"] < 0.05
    assert gain["verdict"] == flat["verdict"] == ONE_SEED
    text = render_report(report, [], ABOUT)
    assert "resamples records only (1 seed: training noise unmeasured)" in text
    assert "seeds and records together" not in text


def test_the_baseline_and_each_loss_are_over_the_records_every_run_scored():
    """A record one run could not score leaves the baseline too: λ's loss − λ 0's is the difference shown."""
    losses = _losses()
    losses[(0.1, 2)][10][3] = math.nan
    losses[(0.0, 1)][10][0] = 4.0  # λ 0 worse on record 0, which every run scored
    report = compare_heldout(losses, SEEDS, margin=0.002)
    gain, flat = report["lambdas"]
    for row in (gain, flat):
        assert row["loss"] - report["baseline_loss"] == pytest.approx(row["difference"], abs=1e-12)
    assert report["records"] == gain["records"] == flat["records"] == 3


def test_the_headline_compares_the_saved_adapters():
    """Runs whose saved adapter is another step than the last (the best checkpoint) are compared there."""
    losses = _losses()
    for seed in SEEDS:
        losses[(0.1, seed)][5] = [0.95] * 4
        losses[(0.0, seed)][5] = [1.0] * 4
    steps = {run: 10 for run in losses} | {(0.1, seed): 5 for seed in SEEDS}
    gain, _ = compare_heldout(losses, SEEDS, 0.002, steps)["lambdas"]
    assert gain["difference"] == pytest.approx(-0.05) and gain["by_step"][-1]["difference"] == pytest.approx(
        -0.1
    )


def test_report_json_is_strict_json_with_null_for_numbers_that_are_not_finite():
    report = compare_heldout(_losses(), SEEDS, margin=0.002)
    report["lambdas"][0]["seeds_needed"] = math.inf

    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    loaded = json.loads(report_json({"heldout_loss": report}), parse_constant=refuse)["heldout_loss"]
    assert loaded["lambdas"][0]["seeds_needed"] is None
    assert loaded["lambdas"][1]["difference"] == report["lambdas"][1]["difference"]


def test_accuracy_pools_every_seed_and_question_pair():
    answers = {
        (0.0, 1): {"AddSub": {"ids": [0, 1, 2], "correct": [0, 1, 1]}},
        (0.0, 2): {"AddSub": {"ids": [0, 1, 2], "correct": [0, 0, 1]}},
        (0.2, 1): {"AddSub": {"ids": [0, 1, 2], "correct": [1, 1, 1]}},  # gains question 0
        (0.2, 2): {"AddSub": {"ids": [0, 1, 2], "correct": [1, 1, 0]}},  # gains 0 and 1, loses 2
    }
    (row,) = compare_accuracy(answers, [1, 2])
    assert (row["gained"], row["lost"], row["questions"]) == (3, 1, 3)
    assert row["accuracy"] == pytest.approx(5 / 6) and row["baseline_accuracy"] == pytest.approx(0.5)
    assert row["mcnemar_p"] == pytest.approx(2 * (1 + 4) / 16)
    answers[(0.2, 2)]["AddSub"]["ids"] = [0, 1, 3]  # another question, same count
    with pytest.raises(
        InputError, match=r"run lam0.2_seed2 answered other AddSub questions than run lam0_seed1"
    ):
        compare_accuracy(answers, [1, 2])
