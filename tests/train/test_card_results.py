"""`sibo evaluate` adds its scores to the card of the adapter it scored (Hub model-index and a table), which
still belongs to the finetune run that wrote it: `finetune --overwrite` replaces it and keeps the user's files."""

from __future__ import annotations

import json

import pytest
from fault_checks import evaluate_args, finetune_args, run
from huggingface_hub import ModelCard


def rows(card):
    return [
        (r.dataset_name, r.metric_value, r.metric_name, r.metric_config) for r in card.data.eval_results or ()
    ]


@pytest.mark.integration
def test_evaluate_adds_its_scores_to_the_adapters_card_and_finetune_overwrite_replaces_it(
    root, tmp_path, capsys
):
    adapter = tmp_path / "adapter"
    assert run(capsys, finetune_args(root, adapter, "--max_steps", "1"))[0] == 0
    trained = ModelCard.load(adapter / "README.md")
    for beams in ("1", "1", "2"):  # the same settings again replace their row
        code, out, err = run(
            capsys, evaluate_args(root, tmp_path / f"eval{beams}", adapter, "--num_beams", beams)
        )
        assert code == 0, err
        assert f"added to the adapter's model card: {adapter / 'README.md'}" in out.splitlines()
    summary = json.loads((tmp_path / "eval1" / "summary.json").read_text())["datasets"]["AddSub"]
    card = ModelCard.load(adapter / "README.md")
    assert str(card) == (adapter / "README.md").read_text()  # what was written is what loads
    settings = "careful extraction, {} beams, alpaca template"
    accuracy, scored = summary["accuracy"], f"accuracy ({summary['correct']}/{summary['n']})"
    assert rows(card) == [("AddSub", accuracy, scored, settings.format(b)) for b in (1, 2)]
    assert card.data.model_name == "adapter" and card.data.tags == trained.data.tags
    assert f"| AddSub | {accuracy:.4f} | {scored} | {settings.format(2)} |" in card.text.splitlines()
    assert card.text.startswith(trained.text.rstrip("\n"))  # the finetune card stays as it was

    (adapter / "NOTES.txt").write_text("mine")
    argv = finetune_args(root, adapter, "--max_steps", "1", "--learning_rate", "1e-3", "--overwrite")
    assert run(capsys, argv)[0] == 0
    assert rows(ModelCard.load(adapter / "README.md")) == []  # the new adapter's card: not the old scores
    assert (adapter / "NOTES.txt").read_text() == "mine"


@pytest.mark.integration
def test_a_card_no_sibo_run_wrote_is_left_alone(root, tmp_path, capsys):
    before = (root / "adapter4" / "README.md").read_bytes()  # PEFT's card, from save_pretrained
    code, out, err = run(capsys, evaluate_args(root, tmp_path / "eval", root / "adapter4"))
    assert code == 0, err
    assert "model card" not in out
    assert (root / "adapter4" / "README.md").read_bytes() == before
