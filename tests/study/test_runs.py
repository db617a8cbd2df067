"""One study run (`sibo.study.runs`, through `sibo sweep`): a reused adapter is the same run, and it is scored
with the template it was trained with."""

from __future__ import annotations

import json

import pytest

from sibo.cli import main
from sibo.prompts import build_prompt
from sibo.study.synthetic import generate_splits, write_records
from sibo.testing import add_chat_template, build_tiny_model, build_tokenizer


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A tiny base whose tokenizer has a chat template, instruction records, an AddSub-shaped test file."""
    root = tmp_path_factory.mktemp("runs")
    train, test = generate_splits(24, 3, seed=5)
    texts = [build_prompt(r["instruction"]) + r["output"] for r in train]
    tokenizer = add_chat_template(build_tokenizer(texts, vocab_size=400))
    model = build_tiny_model("llama", len(tokenizer), num_layers=2, hidden_size=32, ffn_size=64)
    model.save_pretrained(root / "base")
    tokenizer.save_pretrained(root / "base")
    write_records(train, root / "train.json")
    write_records(test, root / "data" / "AddSub" / "test.json")
    return root


def _sweep(root, output_dir, *extra):
    return main([
        "sweep", "--base_model", str(root / "base"), "--data_path", str(root / "train.json"),
        "--output_dir", str(output_dir), "--datasets", "AddSub", "--data_dir", str(root / "data"),
        "--max_steps", "1", "--batch_size", "4", "--micro_batch_size", "4", "--val_set_size", "0",
        "--warmup_steps", "0", "--target_modules", "up_proj,down_proj", "--num_beams", "1",
        "--max_new_tokens", "4", "--lambdas", "0.2", "--seeds", "1", *extra,
    ])  # fmt: skip


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_a_chat_trained_sweep_is_scored_with_the_chat_template(workspace):
    output_dir = workspace / "chat"
    assert _sweep(workspace, output_dir, "--template", "chat") == 0
    run_dir = output_dir / "lam0.2_seed1"
    assert json.loads((run_dir / "adapter" / "prompt_template.json").read_text()) == {"template": "chat"}
    assert json.loads((run_dir / "eval" / "run.json").read_text())["template"] == "chat"
    response = json.loads((run_dir / "eval" / "AddSub.jsonl").read_text().splitlines()[0])
    assert "### Instruction" not in json.dumps(response)


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_a_rerun_with_other_settings_never_reuses_the_old_adapter(workspace, capsys):
    output_dir = workspace / "rerun"
    assert _sweep(workspace, output_dir) == 0
    weights = output_dir / "lam0.2_seed1" / "adapter" / "adapter_model.safetensors"
    written = weights.read_bytes()
    capsys.readouterr()
    assert _sweep(workspace, output_dir, "--learning_rate", "1e-3") == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error == (
        f"sibo sweep: error: --output_dir {output_dir / 'lam0.2_seed1' / 'adapter'} holds another finetune run "
        "(learning_rate 0.0003 there, 0.001 now): pass --overwrite to replace it, or choose another --output_dir"
    )
    assert weights.read_bytes() == written


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_a_rerun_scores_again_unless_the_summary_is_this_very_scoring(workspace, capsys):
    output_dir = workspace / "rescore"
    summary = output_dir / "lam0.2_seed1" / "eval" / "summary.json"
    assert _sweep(workspace, output_dir, "--eval_limit", "2") == 0
    assert json.loads(summary.read_text())["datasets"]["AddSub"]["n"] == 2
    stamp = summary.stat().st_mtime_ns
    assert _sweep(workspace, output_dir, "--eval_limit", "2") == 0  # the same scoring: read, not redone
    assert summary.stat().st_mtime_ns == stamp
    answers = summary.parent / "AddSub.jsonl"
    answers.write_text(answers.read_text().replace('"output": "', '"output": "STALE'))
    assert _sweep(workspace, output_dir) == 0  # every question now: the two scored resume, the third is new
    assert json.loads(summary.read_text())["datasets"]["AddSub"]["n"] == 3
    assert answers.read_text().count('"output": "STALE') == 2  # resumed, not decoded again
    assert _sweep(workspace, output_dir, "--max_new_tokens", "5") == 0  # other decoding: scored again
    assert json.loads(summary.read_text())["run"]["max_new_tokens"] == 5
    assert "STALE" not in answers.read_text()
    answers.write_text(answers.read_text().replace('"output": "', '"output": "STALE'))
    assert _sweep(workspace, output_dir, "--max_new_tokens", "5", "--overwrite") == 0  # a new adapter
    assert "STALE" not in answers.read_text()  # its answers, none of the earlier adapter's resumed
