"""benchmarks/smollm2_study.py at its quick size on a tiny LLaMA with constructed data: clean ids, tuning,
held-out loss at the evaluation points, paired results, resume, and the code-version refusal."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import sys
from pathlib import Path

import pytest

from sibo.errors import InputError
from sibo.eval.contamination import normalise, training_questions
from sibo.eval.tasks import load_examples, resolve_datasets
from sibo.study.synthetic import write_records

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SETS = ["AddSub", "MultiArith", "SingleEq", "gsm8k", "AQuA", "SVAMP", "mawps"]


@pytest.fixture(scope="module")
def study():
    """The script as a module (benchmarks/ is not a package: its `common` import needs the folder on sys.path)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(BENCHMARKS))
        spec = importlib.util.spec_from_file_location("smollm2_study", BENCHMARKS / "smollm2_study.py")
        module = importlib.util.module_from_spec(spec)
        patch.setitem(sys.modules, "smollm2_study", module)
        spec.loader.exec_module(module)
        yield module


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_training_run):
    """A tiny base; 3 questions per test set, the first of each also in the training file (so ids 1 and 2
    are clean); the training file's last records (the tuning slice) are ordinary training records."""
    root = tmp_path_factory.mktemp("study")
    test = tiny_training_run(root, 24, 21, seed=5)
    train = json.loads((root / "train.json").read_text())
    for number, name in enumerate(SETS):
        records = test[3 * number : 3 * number + 3]
        if name == "AQuA":
            records = [{**r, "answer": "A"} for r in records]
        if name == "mawps":  # as in LLM-Adapters' file: no reference output
            records = [{**r, "output": ""} for r in records]
        write_records(records, root / "data" / name / "test.json")
    seen = [test[3 * number] for number in range(len(SETS))]
    write_records(seen + train, root / "data" / "math_train_3k.json")
    return root


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_quick_study_tunes_scores_clean_questions_pairs_seeds_and_resumes(
    study, workspace, monkeypatch, caplog, capsys
):
    clean_file = workspace / "clean_ids.json"
    monkeypatch.setattr(study, "CLEAN_IDS", clean_file)
    study.main(["--write_clean_ids", "--data_dir", str(workspace / "data")])
    assert json.loads(clean_file.read_text()) == {
        "train_file": "math_train_3k.json",
        "sets": {name: [1, 2] for name in SETS},
    }
    out = workspace / "out"
    flags = ["--size", "quick", "--base_model", str(workspace / "base"), "--data_dir", str(workspace / "data"),
             "--out", str(out), "--arms", "lora,lora-sibo0.2", "--seeds", "0,1", "--device", "cpu"]  # fmt: skip
    study.main([*flags, "--stage", "all"])
    results = json.loads((out / "results.json").read_text())

    # tuning: both plain arms at the three rates on the tuning slice, the lowest loss chosen and used
    for arm in ("lora", "adapterh"):
        tuned = results["tuning"][arm]
        assert set(tuned["loss_by_lr"]) == {"0.0003", "0.001", "0.003"}
        assert tuned["chosen"] == min(tuned["loss_by_lr"], key=tuned["loss_by_lr"].get)
    tune_run = json.loads((out / "runs" / "tune-lora-lr0.001" / "result.json").read_text())
    assert tune_run["keys"] == [f"tune/{i}" for i in range(4)] and tune_run["accuracy"] is None
    assert results["arms"]["lora"]["learning_rate"] == float(results["tuning"]["lora"]["chosen"])

    # held-out loss: the clean questions with a reference (mawps has none), at every evaluation point
    run = json.loads((out / "runs" / "lora-sibo0.2_seed1" / "result.json").read_text())
    assert run["keys"] == [f"{name}/{i}" for name in SETS[:-1] for i in (1, 2)]
    assert sorted(run["points"], key=int) == ["0", "2", "4"]
    assert all(len(run["points"][p]["rationale"]) == 12 for p in run["points"])
    assert run["train"]["global_step"] == 4 and run["code_version"] == results["code_versions"][0]
    # accuracy: the first clean question of each set, decoded greedily
    assert {name: scores["ids"] for name, scores in run["accuracy"].items()} == {name: [1] for name in SETS}
    summary = json.loads((out / "runs" / "lora-sibo0.2_seed1" / "greedy" / "summary.json").read_text())
    assert summary["datasets"]["gsm8k"]["scored"] == "unseen only"

    (comparison,) = results["comparisons"]
    assert (comparison["sibo"], comparison["plain"], comparison["primary"]) == ("lora-sibo0.2", "lora", True)
    # before the first step LoRA's B is zero: SIBO changes nothing yet, on every question and seed
    assert comparison["loss"]["0"]["rationale"]["per_seed"] == [0.0, 0.0]
    later = comparison["loss"]["4"]["rationale"]
    assert later["seeds"]["resampled"] == "seeds (2, t-interval)"
    assert later["seeds"]["difference"] == pytest.approx(sum(later["per_seed"]) / 2)
    assert later["questions_only"]["resampled"] == "questions only"
    low, high = later["seeds"]["low"], later["seeds"]["high"]
    expected = "SIBO lowers" if high < 0 else "SIBO raises" if low > 0 else "no detectable effect"
    assert comparison["verdict"].startswith(expected)
    # the same batches in the same order for both arms of a seed; another seed, another order
    orders = {arm: results["arms"][arm]["data_order"] for arm in ("lora", "lora-sibo0.2")}
    assert orders["lora"] == orders["lora-sibo0.2"] and orders["lora"][0] != orders["lora"][1]
    accuracy = comparison["accuracy"]
    assert len(accuracy["gained"]) == 2 and len(accuracy["mcnemar_p_per_seed"]) == 2
    assert len(comparison["similarity"]["by_layer"]) == 3  # embeddings + 2 blocks
    assert (out / "loss_difference.png").read_bytes()[:4] == b"\x89PNG"
    assert f"lora-sibo0.2 − lora (primary), seeds [0, 1]: {comparison['verdict']}" in capsys.readouterr().out

    # the addendum's rescoring: every arm run's final adapter on every clean reference and the tuning slice,
    # equal to what the run measured at its last step; a rescored run is not scored again
    study.main([*flags, "--stage", "rescore"])
    rescored = {path.parent.name: json.loads(path.read_text()) for path in out.glob("runs/*/rescore.json")}
    assert sorted(rescored) == sorted(
        f"{arm}_seed{seed}" for arm in ("lora", "lora-sibo0.2") for seed in (0, 1)
    )
    again = rescored["lora-sibo0.2_seed1"]
    assert again["references"]["keys"] == run["keys"] and again["step"] == 4
    assert again["references"]["rationale"] == pytest.approx(run["points"]["4"]["rationale"], abs=1e-4)
    assert again["max_difference_from_run"] <= 1e-4
    assert again["tuning"]["keys"] == [f"tune/{i}" for i in range(4)] and len(again["tuning"]["answer"]) == 4
    stamps = {path: path.stat().st_mtime_ns for path in out.glob("runs/*/rescore.json")}
    study.main([*flags, "--stage", "rescore"])
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps

    # the addendum's report: the runs' folder read as addendum-lr0.003 and as the committed runs themselves
    root = workspace / "results"
    root.mkdir()
    (root / "addendum-lr3e-3").symlink_to(out)
    (root / "quick").symlink_to(out)
    study.main([*flags[:6], "--out", str(root), "--stage", "addendum"])
    addendum = json.loads((root / "addendum.json").read_text())
    rate = addendum["rates"]["3e-3"]
    assert rate["reproduced"] == {name: 0.0 for name in sorted(rescored)}
    assert rate["tuning_loss"] == pytest.approx(sum(rescored["lora_seed0"]["tuning"]["rationale"]) / 4)
    (primary,) = [c for c in rate["comparisons"] if c["references"] == "all" and c["measure"] == "rationale"]
    assert primary["primary"] and primary["seeds"] == [0, 1] and addendum["references"]["all"] == 12
    sibo, plain = (
        [rescored[f"{arm}_seed{seed}"]["references"]["rationale"] for seed in (0, 1)]
        for arm in ("lora-sibo0.2", "lora")
    )
    assert primary["interval"] == study.smollm2_addendum.two_level_bootstrap(sibo, plain).as_dict()
    assert primary["p_holm"] == primary["p"]  # the only comparison on all references
    assert primary["verdict"] == study.smollm2_addendum.verdict(
        study.smollm2_addendum.Interval(**primary["interval"]), primary["seeds_to_decide"]
    )

    # resumed: every run is skipped, nothing is rewritten
    stamps = {path: path.stat().st_mtime_ns for path in out.glob("runs/*/result.json")}
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="smollm2_protocol"):
        study.main([*flags, "--stage", "all"])
    skipped = [m for m in caplog.messages if m.startswith("skipping finished run")]
    assert len(skipped) == 10 and {p: p.stat().st_mtime_ns for p in stamps} == stamps

    # a run made by other code is refused unless asked for
    settings_file = out / "runs" / "lora_seed0" / "settings.json"
    settings = json.loads(settings_file.read_text())
    settings_file.write_text(json.dumps({**settings, "code_version": "0123abc"}))
    with pytest.raises(SystemExit, match="other settings \\(code_version; .*--allow_other_code"):
        study.main(flags)
    study.main([*flags, "--allow_other_code"])

    # a finetune flag added after a run was recorded, at its default, is the same run; another value is not
    settings = json.loads(settings_file.read_text())
    del settings["finetune"]["template"]
    settings_file.write_text(json.dumps(settings))
    study.main([*flags, "--allow_other_code"])
    settings["finetune"]["train_on_inputs"] = False
    settings_file.write_text(json.dumps(settings))
    with pytest.raises(SystemExit, match="other settings \\(finetune; "):
        study.main([*flags, "--allow_other_code"])


def test_results_of_different_code_versions_are_not_combined(study):
    def result(version):
        return {
            "code_version": version,
            "run": {"tuning": True, "arm": "lora", "learning_rate": 1e-3},
            "points": {"0": {"rationale": [1.0]}},
        }

    with pytest.raises(InputError, match="different code \\(a, b\\)"):
        study.summarize({"x": result("a"), "y": result("b")})
    assert study.summarize({"x": result("a"), "y": result("b")}, allow_other_code=True)["code_versions"] == [
        "a",
        "b",
    ]


# the team's copy beside the checkout, or $SIBO_DATA_DIR
DATA = Path(
    os.environ.get("SIBO_DATA_DIR") or Path(__file__).resolve().parents[2] / "shared/data/llm-adapters"
)


@pytest.mark.skipif(not (DATA / "math_train_3k.json").is_file(), reason="needs ../shared/data/llm-adapters")
def test_the_committed_clean_ids_are_exactly_the_test_questions_math_train_3k_does_not_hold():
    committed = json.loads((BENCHMARKS / "results" / "smollm2_clean_ids.json").read_text())["sets"]
    questions = training_questions(DATA / "math_train_3k.json")
    for name in SETS:
        examples = load_examples(resolve_datasets(name)[0], DATA)
        clean = [e.index for e in examples if normalise(e.instruction, e.input) not in questions]
        assert committed[name] == clean  # zero overlap, and every other question is in the training file
    assert {name: len(ids) for name, ids in committed.items()} == {
        "AddSub": 61, "MultiArith": 109, "SingleEq": 80, "gsm8k": 264, "AQuA": 51, "SVAMP": 200, "mawps": 104,
    }  # fmt: skip
