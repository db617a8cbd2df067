"""The study's report on hand-made run results: the protocol's arm order, one seed shown as one seed, one
plot panel per comparison."""

import importlib
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def report():
    """benchmarks/smollm2_report.py (benchmarks/ is not a package: it imports its protocol by name)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(BENCHMARKS))
        yield importlib.import_module("smollm2_report")


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


def test_arms_follow_the_protocols_order_and_one_seed_has_no_spread(report):
    # read in the order the files sort in: the SIBO arm first
    summary = report.summarize(
        {"a": result("lora-sibo0.2", 0, [0.4, 0.6]), "b": result("lora", 0, [0.5, 0.7])}
    )
    assert list(summary["arms"]) == ["lora", "lora-sibo0.2"]
    (comparison,) = summary["comparisons"]
    assert comparison["loss"]["8"]["rationale"]["per_seed"] == [pytest.approx(-0.1)]
    assert comparison["verdict"] == "one seed: no verdict"
    text = report.tables(summary)
    assert "| lora | 0.003 | 1 | 1.0000 | 0.6000 | - |" in text
    assert "| lora-sibo0.2 | 0.003 | 1 | 1.0000 | 0.5000 | - |" in text


def test_several_seeds_show_mean_and_spread(report):
    runs = {f"{arm}{seed}": result(arm, seed, [value, value]) for arm in ("lora", "lora-sibo0.2")
            for seed, value in ((0, 0.4), (1, 0.6))}  # fmt: skip
    assert "| lora | 0.003 | 2 | 1.0000 ± 0.0000 | 0.5000 ± 0.1414 | - |" in report.tables(
        report.summarize(runs)
    )


def test_the_plot_gives_each_comparison_its_own_panel(report, monkeypatch, tmp_path):
    pytest.importorskip("matplotlib")
    runs = {f"{arm}{seed}": result(arm, seed, [0.5, 0.5]) for seed in (0, 1)
            for arm in ("lora", "lora-sibo0.2", "lora-sibo0.5", "adapterh", "adapterh-sibo0.2")}  # fmt: skip
    saved = []
    monkeypatch.setattr(report, "save_figure", lambda figure, file: saved.append(figure))
    report.plot_loss_difference(report.summarize(runs), tmp_path / "plot.png")
    (figure,) = saved
    shown = [axes for axes in figure.axes if axes.get_visible()]
    assert [axes.get_title() for axes in shown] == [
        "lora-sibo0.2 − lora", "lora-sibo0.5 − lora", "adapterh-sibo0.2 − adapterh",
    ]  # fmt: skip
    assert len(figure.axes) == 4  # two columns: the fourth panel is left empty, and hidden


@pytest.fixture(scope="module")
def addendum():
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(BENCHMARKS))
        yield importlib.import_module("smollm2_addendum")


@pytest.mark.parametrize(
    ("low", "high", "seeds", "expected"),
    [
        (-0.0030, -0.0005, 8.0, "SIBO lowers held-out loss"),
        (-0.0015, -0.0005, 8.0, "SIBO lowers held-out loss; equivalent within ±0.002"),
        (0.0004, 0.0031, 8.0, "SIBO raises held-out loss"),
        (-0.0016, 0.0019, 8.0, "equivalent within ±0.002"),
        (-0.0016, 0.0021, 12.0, "undecided; about 12 seeds would decide it"),
        (-0.0016, 0.0021, float("inf"), "undecided; more seeds would not decide it, more references would"),
        (-0.0016, 0.0021, float("nan"), "undecided (one seed: how many would decide it is unknown)"),
    ],
)
def test_the_addendums_decision_rule(addendum, low, high, seeds, expected):
    interval = addendum.Interval((low + high) / 2, low, high, 0.95, 700, "seeds (8) and records (700)")
    assert addendum.verdict(interval, seeds) == expected
