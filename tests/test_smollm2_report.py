"""The study's report on hand-made run results: the protocol's arm order, one seed shown as one seed, one
plot panel per comparison."""

import importlib
import json
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


def fake_run(folder: Path, arm: str, seed: int, keys: list[str], shift: float, order: str = "") -> None:
    """One finished, rescored run of the addendum: its 120-reference curve (here `keys`) and its rescoring."""
    losses = [0.4 + shift + 0.01 * ((seed * 7 + k * 3) % 5) for k in range(len(keys))]
    answers = [float("nan")] + losses[1:]  # the first reference has no answer phrase
    run = folder / "runs" / f"{arm}_seed{seed}"
    run.mkdir(parents=True)
    result = {
        "code_version": "252c4f3", "data_order": order or f"order{seed}", "keys": keys,
        "run": {"arm": arm, "seed": seed, "learning_rate": 3e-3, "tuning": False},
        "points": {"0": {"rationale": [1.0] * len(keys), "answer": [1.0] * len(keys)},
                   "160": {"rationale": losses, "answer": answers}},
        "accuracy": None, "train": {"train_loss": 0.9}, "similarity": [0.3, 0.5],
    }  # fmt: skip
    (run / "result.json").write_text(json.dumps(result))
    if arm.startswith("lora"):
        tuning = [0.40111 if folder.name.endswith("3e-3") else 0.5] * 2
        rescore = {
            "code_version": "abc", "step": 160, "max_difference_from_run": 3e-6,
            "references": {"keys": keys, "rationale": losses, "answer": answers},
            "tuning": {"keys": ["t0", "t1"], "rationale": tuning, "answer": tuning},
        }  # fmt: skip
        (run / "rescore.json").write_text(json.dumps(rescore))


def test_the_addendums_report_holm_family_tuning_checks_and_secondary_measures(addendum, tmp_path):
    keys = [f"AddSub/{k}" for k in range(6)]
    folders = {rate: tmp_path / f"addendum-lr{rate}" for rate in ("3e-3", "6e-3")}
    arms = {"3e-3": {"lora": 0.0, "lora-sibo0.2": -0.001, "lora-sibo0.5": 0.002, "adapterh": 0.0,
                     "adapterh-sibo0.2": 0.003},
            "6e-3": {"lora": 0.0, "lora-sibo0.2": 0.001}}  # fmt: skip
    for rate, shifts in arms.items():
        for arm, shift in shifts.items():
            for seed in (0, 1):
                fake_run(folders[rate], arm, seed, keys, shift)
    committed = tmp_path / "cpu"
    (committed / "runs" / "lora_seed0").mkdir(parents=True)
    (committed / "runs" / "lora_seed0" / "result.json").write_bytes(
        (folders["3e-3"] / "runs" / "lora_seed0" / "result.json").read_bytes()
    )
    sets = {"all": keys[:4], "right answer": keys[:2], "first 120": keys}
    summary = addendum.summarize(folders, sets, committed)

    family = [
        (rate, c["sibo"], c["measure"], c["p"], c["p_holm"])
        for rate, row in summary["rates"].items()
        for c in row["comparisons"]
        if "p_holm" in c
    ]
    assert [entry[:3] for entry in family] == [
        ("3e-3", "lora-sibo0.2", "rationale"),
        ("3e-3", "lora-sibo0.5", "rationale"),
        ("3e-3", "adapterh-sibo0.2", "change from step 0"),
        ("6e-3", "lora-sibo0.2", "rationale"),
    ]  # on all references, AdapterH's change included; no other set or measure
    ordered = sorted(p for *_, p, _ in family)
    assert min(entry[4] for entry in family) == pytest.approx(min(1.0, 4 * ordered[0]))
    comparisons = summary["rates"]["3e-3"]["comparisons"]
    (answer,) = [c for c in comparisons if c["sibo"] == "lora-sibo0.2" and c["measure"] == "answer phrase"]
    assert answer["references_scored"] == 3  # of 4: the one without an answer phrase left out of every run
    assert answer["interval"]["difference"] == pytest.approx(-0.001)
    (primary,) = [c for c in comparisons if c.get("primary")]
    assert primary["references"] == "all" and primary["interval"]["difference"] == pytest.approx(-0.001)
    assert all(not c.get("primary") for c in summary["rates"]["6e-3"]["comparisons"])
    (adapterh,) = [c for c in comparisons if c["sibo"] == "adapterh-sibo0.2"]
    assert adapterh["interval"]["difference"] == pytest.approx(0.003) and adapterh["exploratory"]
    assert adapterh["verdict"] == "SIBO raises held-out loss"
    assert summary["rates"]["3e-3"]["reproduced"] == {"lora_seed0": 0.0}
    assert summary["rates"]["6e-3"]["reproduced"] == {}  # the committed runs are 3e-3's
    assert summary["tuning"] == {"loss_by_lr": {"3e-3": pytest.approx(0.40111), "6e-3": pytest.approx(0.5)},
                                 "prefers": "3e-3", "committed_at_3e-3": 0.4011, "agrees_with_committed": True}  # fmt: skip
    before = summary["rates"]["3e-3"]["as_before"]
    assert [(b["sibo"], b["seeds"]) for b in before] == [
        ("lora-sibo0.2", [0, 1]), ("lora-sibo0.5", [0, 1]), ("adapterh-sibo0.2", [0, 1])
    ]  # fmt: skip
    assert "verdict" not in before[0] and before[0]["loss"]["160"]["rationale"]["per_seed"] == pytest.approx(
        [-0.001, -0.001]
    )
    assert summary["rates"]["3e-3"]["trained_by"] == ["252c4f3"]
    assert "the tuning criterion prefers lr 3e-3" in addendum.tables(summary)


def test_the_addendum_refuses_a_pair_that_saw_different_batches(addendum, tmp_path):
    keys = ["AddSub/0", "AddSub/1"]
    folder = tmp_path / "addendum-lr3e-3"
    fake_run(folder, "lora", 0, keys, 0.0)
    fake_run(folder, "lora-sibo0.2", 0, keys, 0.0, order="another order")
    sets = {"all": keys, "right answer": keys, "first 120": keys}
    with pytest.raises(
        SystemExit, match=r"lora-sibo0.2 and lora saw different training batches for seeds \[0\]"
    ):
        addendum.summarize({"3e-3": folder}, sets, tmp_path / "cpu")
