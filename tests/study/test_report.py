"""The study's report on hand-made run results: the protocol's arm order, and one seed shown as one seed."""

import pytest

from sibo.study.report import summarize, tables


def result(arm: str, seed: int, rationale: list[float]) -> dict:
    return {
        "code_version": "abc",
        "run": {"arm": arm, "seed": seed, "learning_rate": 3e-3, "tuning": False},
        "points": {
            "0": {"rationale": [1.0, 1.0], "answer": [0.5, 0.5]},
            "8": {"rationale": rationale, "answer": [0.2, 0.4]},
        },
        "accuracy": None,
        "train": {"train_loss": 0.9},
        "similarity": [0.3, 0.5],
        "data_order": f"order{seed}",
    }


def test_arms_follow_the_protocols_order_and_one_seed_has_no_spread():
    # read in the order the files sort in: the SIBO arm first
    summary = summarize({"a": result("lora-sibo0.2", 0, [0.4, 0.6]), "b": result("lora", 0, [0.5, 0.7])})
    assert list(summary["arms"]) == ["lora", "lora-sibo0.2"]
    (comparison,) = summary["comparisons"]
    assert comparison["loss"]["8"]["rationale"]["per_seed"] == [pytest.approx(-0.1)]
    assert comparison["verdict"] == "one seed: no verdict"
    text = tables(summary)
    assert "| lora | 0.003 | 1 | 1.0000 | 0.6000 | - |" in text
    assert "| lora-sibo0.2 | 0.003 | 1 | 1.0000 | 0.5000 | - |" in text


def test_several_seeds_show_mean_and_spread():
    runs = {f"{arm}{seed}": result(arm, seed, [value, value]) for arm in ("lora", "lora-sibo0.2")
            for seed, value in ((0, 0.4), (1, 0.6))}  # fmt: skip
    assert "| lora | 0.003 | 2 | 1.0000 ± 0.0000 | 0.5000 ± 0.1414 | - |" in tables(summarize(runs))
