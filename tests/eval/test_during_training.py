"""Accuracy during training: eval_<Name>_accuracy in the log history at every evaluation, equal to what
`sibo evaluate` gives that checkpoint on the same questions; the curve in train_metrics.json; the
contamination check counts the test questions the training data holds."""

from __future__ import annotations

import json

import pytest

from sibo.cli import main as sibo_main
from sibo.errors import InputError
from sibo.train.config import FinetuneConfig


def test_accuracy_in_the_log_history_equals_sibo_evaluate_on_the_checkpoint(
    tiny_training_run, tmp_path, capsys
):
    test = tiny_training_run(tmp_path, 24, 3, seed=5)
    train = json.loads((tmp_path / "train.json").read_text())
    questions = [*train[:2], *test]  # two seen in training, three not
    (tmp_path / "data" / "AddSub").mkdir(parents=True)
    (tmp_path / "data" / "AddSub" / "test.json").write_text(json.dumps(questions))
    output_dir = tmp_path / "run"
    argv = ["finetune", "--base_model", str(tmp_path / "base"), "--data_path", str(tmp_path / "train.json"),
            "--output_dir", str(output_dir), "--batch_size", "2", "--micro_batch_size", "2", "--max_steps", "4",
            "--warmup_steps", "0", "--learning_rate", "3e-2", "--val_set_size", "2", "--eval_step", "2",
            "--save_step", "2", "--lora_r", "4", "--target_modules", "q_proj,up_proj",
            "--eval_datasets", "AddSub", "--eval_data_dir", str(tmp_path / "data"), "--eval_num_beams", "1",
            "--metric_for_best_model", "eval_AddSub_accuracy"]  # fmt: skip
    assert sibo_main(argv) == 0
    metrics = json.loads((output_dir / "train_metrics.json").read_text())
    logged = {e["step"]: e for e in metrics["log_history"] if "eval_AddSub_accuracy" in e}
    assert sorted(logged) == [2, 4]
    assert metrics["accuracy"] == {
        "AddSub": [[step, logged[step]["eval_AddSub_accuracy"]] for step in (2, 4)]
    }
    assert metrics["metric_for_best_model"] == "eval_AddSub_accuracy"
    card = (output_dir / "README.md").read_text()
    assert "## Accuracy during training" in card and "| step | AddSub |" in card
    assert f"| 2 | {logged[2]['eval_AddSub_accuracy']:.4f} |" in card
    during = json.loads((output_dir / "accuracy" / "step-2" / "summary.json").read_text())
    assert (during["datasets"]["AddSub"]["n"], during["datasets"]["AddSub"]["seen_in_training"]) == (5, 2)

    capsys.readouterr()
    assert sibo_main(["evaluate", "--base_model", str(tmp_path / "base"), "--weights_path",
                      str(output_dir / "checkpoint-2"), "--dataset", "AddSub", "--data_dir", str(tmp_path / "data"),
                      "--output_dir", str(tmp_path / "scored"), "--num_beams", "1", "--batch_size", "2"]) == 0  # fmt: skip
    after = json.loads((tmp_path / "scored" / "summary.json").read_text())["datasets"]["AddSub"]
    assert after["accuracy"] == logged[2]["eval_AddSub_accuracy"]
    responses = [
        json.loads(line)["output"] for line in (output_dir / "accuracy" / "step-2" / "AddSub.jsonl").open()
    ]
    again = [json.loads(line)["output"] for line in (tmp_path / "scored" / "AddSub.jsonl").open()]
    assert responses == again


def test_accuracy_needs_validation_and_known_benchmarks():
    with pytest.raises(InputError, match="--eval_datasets scores at each evaluation: set --val_set_size"):
        FinetuneConfig(base_model="m", val_set_size=0, eval_datasets="AddSub")
    with pytest.raises(InputError, match="Nonesuch"):
        FinetuneConfig(base_model="m", eval_datasets="Nonesuch")
