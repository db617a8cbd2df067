"""analyze: the over-smoothing measure on hand-made vectors, on a tiny model, and end to end."""

from __future__ import annotations

import json
import math

import pytest
import torch
from fault_checks import refused, run
from peft import LoraConfig

from sibo import get_sibo_model
from sibo.cli import main as cli_main
from sibo.study.analyze import PLOT_FILE, RESULTS_FILE, layer_similarity, mean_pairwise_cosine, model_labels
from sibo.testing import build_tiny_model, build_tokenizer

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_identical_tokens_have_similarity_one():
    hidden = torch.tensor([3.0, -1.0, 2.0]).repeat(1, 5, 1)  # (1, 5, 3): one token, five times
    assert mean_pairwise_cosine(hidden, torch.ones(1, 5)).tolist() == pytest.approx([1.0], abs=1e-12)


def test_orthogonal_tokens_have_similarity_zero():
    hidden = torch.eye(4).unsqueeze(0) * 7.0  # (1, 4, 4): four orthogonal tokens
    assert mean_pairwise_cosine(hidden, torch.ones(1, 4)).tolist() == [0.0]


def test_pairs_exclude_self_and_padding():
    e1, e2, pad = [1.0, 0.0], [0.0, 1.0], [-5.0, 3.0]
    hidden = torch.tensor([[e1, e1, e2], [pad, e1, e1], [pad, pad, e2]])  # (3, 3, 2), left padded
    mask = torch.tensor([[1, 1, 1], [0, 1, 1], [0, 0, 1]])
    similarity = mean_pairwise_cosine(hidden, mask)
    # e1,e1,e2: ordered pairs i≠j are 2 × cos(e1,e1)=1 and 4 × 0 → 1/3; a single token has no pair.
    assert similarity[:2].tolist() == pytest.approx([1 / 3, 1.0], abs=1e-12)
    assert math.isnan(similarity[2].item())


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


def test_layer_similarity_matches_a_direct_computation(tokenizer):
    """Embeddings, then each block's output: the last one before the final norm, whose (here random)
    per-channel gain would change the cosines."""
    model = build_tiny_model("llama", len(tokenizer), num_layers=3)
    with torch.no_grad():
        model.model.norm.weight.uniform_(0.1, 3.0)
    texts = ["a short one", "a somewhat longer sentence that pads the other"]
    measured = layer_similarity(model, tokenizer, texts, batch_size=2)

    model.model.norm = torch.nn.Identity()  # transformers' last hidden state is then block 3's output
    expected = torch.zeros(4)
    for text in texts:  # one text at a time: no padding at all
        with torch.no_grad():
            states = model(**tokenizer(text, return_tensors="pt"), output_hidden_states=True).hidden_states
        for layer, h in enumerate(states):
            unit = torch.nn.functional.normalize(h[0].double(), dim=-1)  # (T, D)
            cosines = unit @ unit.T
            count = cosines.shape[0]
            expected[layer] += ((cosines.sum() - cosines.diagonal().sum()) / (count * (count - 1))).item() / 2
    assert measured == pytest.approx(expected.tolist(), abs=1e-5)


def test_labels_are_directory_names_unless_they_repeat():
    assert model_labels(["runs/lora", "runs/sibo"]) == ["base", "lora", "sibo"]
    assert model_labels(["a/out", "b/out"]) == ["base", "a/out", "b/out"]


@pytest.mark.integration
def test_cli_writes_json_png_and_table(tokenizer, tmp_path, capsys):
    base = build_tiny_model("llama", len(tokenizer), num_layers=2)
    base.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    get_sibo_model(base, lora, lam=0.5).save_pretrained(tmp_path / "sibo")
    records = [
        {"instruction": f"Add {i} and {i + 1}.", "input": "", "output": f"{2 * i + 1}"} for i in range(5)
    ]
    (tmp_path / "data.json").write_text(json.dumps(records))

    argv = ["analyze", "--base_model", str(tmp_path / "base"), "--weights_path", str(tmp_path / "sibo")]
    argv += ["--data", str(tmp_path / "data.json"), "--n", "3", "--output_dir", str(tmp_path / "out")]
    assert cli_main(argv) == 0

    results = json.loads((tmp_path / "out" / RESULTS_FILE).read_text())
    assert results["n"] == 3 and results["layers"] == [0, 1, 2]
    assert list(results["similarity"]) == ["base", "sibo"]
    base_values, sibo_values = results["similarity"]["base"], results["similarity"]["sibo"]
    assert base_values[0] == pytest.approx(sibo_values[0], abs=1e-6)  # same embeddings: h0 is shared
    assert base_values[2] != pytest.approx(sibo_values[2], abs=1e-6)
    assert all(-1.0 <= value <= 1.0 for value in base_values + sibo_values)
    assert (tmp_path / "out" / PLOT_FILE).read_bytes().startswith(PNG_MAGIC)
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split() == ["layer", "base", "sibo"]
    assert lines[2].split() == ["0", f"{base_values[0]:.4f}", f"{sibo_values[0]:.4f}"]
    assert lines[-1] == f"wrote {tmp_path / 'out' / RESULTS_FILE} and {tmp_path / 'out' / PLOT_FILE}"


@pytest.mark.integration
def test_cli_reports_a_missing_data_file(tmp_path, capsys):
    argv = ["analyze", "--base_model", str(tmp_path), "--data", str(tmp_path / "nope.json")]
    assert cli_main(argv) == 2
    assert (
        capsys.readouterr().err == f"sibo analyze: error: data file {tmp_path / 'nope.json'} does not exist\n"
    )


@pytest.mark.integration
def test_cli_writes_beside_the_first_adapter_unless_told_where(tokenizer, tmp_path, capsys, monkeypatch):
    base = build_tiny_model("llama", len(tokenizer), num_layers=2)
    base.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    lora = LoraConfig(r=2, lora_alpha=4, target_modules=["up_proj"], init_lora_weights=False)
    get_sibo_model(base, lora, lam=0.5).save_pretrained(tmp_path / "sibo")
    (tmp_path / "data.json").write_text(json.dumps([{"instruction": "Add 1 and 2.", "output": "3"}] * 2))
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    argv = ["analyze", "--base_model", str(tmp_path / "base"), "--data", str(tmp_path / "data.json")]

    assert cli_main([*argv, "--weights_path", str(tmp_path / "sibo")]) == 0
    out = tmp_path / "sibo" / "analyze"
    assert capsys.readouterr().out.splitlines()[-1] == f"wrote {out / RESULTS_FILE} and {out / PLOT_FILE}"
    assert list((tmp_path / "cwd").iterdir()) == []
    assert cli_main(argv) == 2
    assert capsys.readouterr().err == (
        "sibo analyze: error: --output_dir is needed for the base model alone (with adapters: the first's/analyze)\n"
    )


@pytest.mark.integration
def test_analyze_refuses_an_output_dir_that_is_a_file_before_measuring(root, tmp_path, capsys, monkeypatch):
    (tmp_path / "out").write_text("mine")
    monkeypatch.setattr("sibo.checkpoint.load.load_model", lambda *a, **k: pytest.fail("measured first"))
    line = refused(capsys, ["analyze", "--base_model", root / "base4", "--data", root / "records.json",
                            "--n", "2", "--output_dir", tmp_path / "out"], tmp_path)  # fmt: skip
    assert line == f"sibo analyze: error: --output_dir {tmp_path / 'out'} is a file, not a folder"


@pytest.mark.integration
def test_a_folder_holding_only_git_is_no_analysis_and_overwrite_keeps_its_git(root, tmp_path, capsys):
    out = tmp_path / "out"
    (out / ".git").mkdir(parents=True)
    (out / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    argv = ["analyze", "--base_model", root / "base4", "--data", root / "records.json", "--output_dir", out]
    line = refused(capsys, [*argv, "--n", "2"], out)
    assert line == (
        f"sibo analyze: error: --output_dir {out} already holds files (.git), not written by a sibo run: "
        "choose an empty or new --output_dir"
    )
    (out / RESULTS_FILE).write_text("{}")  # an analysis written there before sibo_run.json: its only file
    assert run(capsys, [*argv, "--n", "2"])[0] == 0
    assert run(capsys, [*argv, "--n", "3", "--overwrite"])[0] == 0
    assert (out / ".git" / "HEAD").read_text() == "ref: refs/heads/main\n"
    assert json.loads((out / RESULTS_FILE).read_text())["n"] == 3
