"""Export: every exact form reloads with the unmerged adapter's logits; --approximate measures its error."""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from peft import LoraConfig, get_peft_model
from peft.tuners.lora import LoraLayer
from peft.tuners.trainable_tokens import TrainableTokensLayer
from safetensors.torch import load_model as load_safetensors_into
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from sibo import get_sibo_model
from sibo.adapters.bottleneck import BottleneckConfig
from sibo.checkpoint.config import ModelConfig
from sibo.checkpoint.export import STATE_DICT_FILE, ExportConfig, export_adapter
from sibo.checkpoint.export_card import ExportFacts, export_card
from sibo.checkpoint.load import RESIDUAL_DIR, load_model
from sibo.checkpoint.portable import base_config
from sibo.cli import main as cli_main
from sibo.core.booster import find_boost
from sibo.core.merge import merge_for_inference
from sibo.core.merged_hooks import UP_BUFFER
from sibo.errors import InputError
from sibo.output_dir import RUN_MARKER
from sibo.prompts import TEMPLATE_FILE, PromptTemplate, write_template
from sibo.testing import add_chat_template, build_tiny_model, build_tokenizer, tiny_config

ATOL = 1e-5


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="module")
def batch(tokenizer):
    return tokenizer(["The sum of 2 and 3 is", "hi"], return_tensors="pt", padding=True)


def logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).logits


def lora(arch: str, **overrides) -> LoraConfig:
    settings = {"r": 4, "lora_alpha": 8, "target_modules": "all-linear", "init_lora_weights": False}
    return LoraConfig(fan_in_fan_out=arch == "gpt2", **{**settings, **overrides})


def boosted_model(
    tokenizer, arch: str = "llama", lam: float = 0.3, learnable: bool = False, **lora_overrides
):
    model = get_sibo_model(
        build_tiny_model(arch, len(tokenizer)),
        lora(arch, **lora_overrides),
        lam=lam,
        learnable_lambda=learnable,
    )
    return model.eval()


def boosted_names(model) -> list[str]:
    return sorted(layer.name.removeprefix("base_model.model.") for layer in find_boost(model).layers)


@pytest.mark.parametrize(
    ("arch", "learnable", "lora_overrides"),
    [
        ("llama", False, {"rank_pattern": {"gate_proj": 2}, "alpha_pattern": {"up_proj": 3}}),
        ("gpt2", True, {}),  # Conv1D (fan_in_fan_out) and one λ per block
        ("opt", False, {"lora_bias": True, "use_rslora": True}),
    ],
)
def test_exact_hf_export_reloads_with_the_unmerged_logits(
    tokenizer, batch, tmp_path, arch, learnable, lora_overrides
):
    model = boosted_model(tokenizer, arch, learnable=learnable, **lora_overrides)
    if learnable:  # make the blocks' λ differ, so a mixed-up block index would show
        with torch.no_grad():
            find_boost(model).lambdas.logits.copy_(torch.tensor([-2.0, 1.0]))
    expected, names = logits(model, batch), boosted_names(model)
    report = export_adapter(model, tokenizer, ExportConfig(tmp_path / "out"))

    assert report.exact and report.residual_modules == names
    residual_settings = json.loads((tmp_path / "out" / RESIDUAL_DIR / "sibo_config.json").read_text())
    assert (residual_settings["lam"], residual_settings["targets"]) == (1.0, "all")
    assert sorted(residual_settings["boosted_modules"]) == ["base_model.model." + name for name in names]
    reloaded = load_model(str(tmp_path / "out"))[0]
    torch.testing.assert_close(logits(reloaded, batch), expected, atol=ATOL, rtol=0)
    # The merged base alone is not the adapter, so transformers without trust_remote_code refuses the folder.
    with pytest.raises(ValueError, match="trust_remote_code"):
        AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "out", config=base_config(tmp_path / "out"))
    assert (logits(plain.eval(), batch) - expected).abs().max() > 1e-3


@pytest.mark.parametrize("lam", [None, 0.0])
def test_plain_lora_and_zero_lambda_merge_like_peft(tokenizer, batch, tmp_path, lam):
    base = build_tiny_model("llama", len(tokenizer))
    if lam is None:
        model = get_peft_model(base, lora("llama")).eval()
    else:
        model = get_sibo_model(base, lora("llama"), lam=lam).eval()
    expected = logits(model, batch)
    reference = get_peft_model(build_tiny_model("llama", len(tokenizer)), lora("llama")).merge_and_unload()
    report = export_adapter(model, tokenizer, ExportConfig(tmp_path / "out"))

    assert report.exact and report.residual_modules == [] and not (tmp_path / "out" / RESIDUAL_DIR).exists()
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    torch.testing.assert_close(logits(reloaded, batch), expected, atol=ATOL, rtol=0)
    for name, tensor in reference.state_dict().items():
        torch.testing.assert_close(reloaded.state_dict()[name], tensor, atol=0, rtol=0)


def embedding_adapter(tokenizer, batch, kind: str, arch: str = "llama", lam: float = 0.3):
    """A SIBO LoRA that also changes the embedding, which reads token ids, not h0: a LoRA on the embedding, or
    PEFT's trainable tokens on the batch's first ids, moved off their start as training would."""
    layers = ["wte", "c_attn", "c_fc"] if arch == "gpt2" else ["embed_tokens", "q_proj", "up_proj"]
    if kind == "lora":
        return boosted_model(tokenizer, arch, lam=lam, target_modules=layers)
    rows = sorted(set(batch["input_ids"][0].tolist()))[:3]
    model = boosted_model(tokenizer, arch, lam=lam, target_modules=layers[1:], trainable_token_indices=rows)
    layer = next(module for module in model.modules() if isinstance(module, TrainableTokensLayer))
    with torch.no_grad():
        layer.trainable_tokens_delta["default"].add_(0.5)
    return model


@pytest.mark.parametrize(("kind", "arch", "lam"), [
    ("lora", "llama", 0.3),
    ("trainable_tokens", "llama", 0.3),
    ("lora", "gpt2", 0.3),  # a tied base: the head keeps the embedding matrix it was tied to
    ("lora", "gpt2", 0.0),
])  # fmt: skip
def test_an_adapter_that_changes_the_embedding_merges_exactly(tokenizer, batch, tmp_path, kind, arch, lam):
    model = embedding_adapter(tokenizer, batch, kind, arch, lam)
    expected, names = logits(model, batch), boosted_names(model)
    report = export_adapter(model, tokenizer, ExportConfig(tmp_path / "out"))

    assert report.exact and report.residual_modules == ([] if lam == 0 else names)
    torch.testing.assert_close(
        logits(load_model(str(tmp_path / "out"))[0], batch), expected, atol=ATOL, rtol=0
    )
    merged = merge_for_inference(embedding_adapter(tokenizer, batch, kind, arch, lam))
    assert not any(isinstance(module, (LoraLayer, TrainableTokensLayer)) for module in merged.modules())
    torch.testing.assert_close(logits(merged, batch), expected, atol=ATOL, rtol=0)


def test_a_trained_head_of_a_tied_base_is_exported_untied(tokenizer, batch, tmp_path):
    model = boosted_model(tokenizer, "gpt2", modules_to_save=["lm_head"])
    assert model.base_model.model.config.tie_word_embeddings
    with torch.no_grad():  # the head trained away from the embedding it was tied to
        model.base_model.model.lm_head.modules_to_save["default"].weight.add_(0.5)
    expected = logits(model, batch)
    export_adapter(model, tokenizer, ExportConfig(tmp_path / "out"))

    assert base_config(tmp_path / "out").get_text_config().tie_word_embeddings is False
    torch.testing.assert_close(
        logits(load_model(str(tmp_path / "out"))[0], batch), expected, atol=ATOL, rtol=0
    )


def head_adapter(tokenizer, arch: str, lam: float):
    """A SIBO LoRA on a tied base's head (and on layers SIBO boosts): the head's ΔW must not reach the embedding."""
    layers = ["c_attn", "c_fc", "lm_head"] if arch == "gpt2" else ["q_proj", "up_proj", "lm_head"]
    base = build_tiny_model(arch, len(tokenizer), tie_word_embeddings=True)
    return get_sibo_model(base, lora(arch, target_modules=layers), lam=lam).eval()


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("lam", [0.0, 0.3])
def test_a_lora_on_a_tied_head_leaves_the_embedding_alone(tokenizer, batch, tmp_path, arch, lam):
    model = head_adapter(tokenizer, arch, lam)
    expected = logits(model, batch)
    export_adapter(model, tokenizer, ExportConfig(tmp_path / "out"))

    saved = base_config(tmp_path / "out") if lam else AutoConfig.from_pretrained(tmp_path / "out")
    assert saved.get_text_config().tie_word_embeddings is False
    reloaded = load_model(str(tmp_path / "out"))[0]
    torch.testing.assert_close(logits(reloaded, batch), expected, atol=ATOL, rtol=0)
    merged = merge_for_inference(head_adapter(tokenizer, arch, lam))
    assert merged.get_output_embeddings().weight is not merged.get_input_embeddings().weight
    torch.testing.assert_close(logits(merged, batch), expected, atol=ATOL, rtol=0)


def test_a_model_holding_other_adapters_is_refused(tokenizer, tmp_path):
    model = get_peft_model(build_tiny_model("llama", len(tokenizer)), lora("llama"))
    model.add_adapter("other", lora("llama", r=2))
    with pytest.raises(InputError) as refused:
        export_adapter(model, tokenizer, ExportConfig(tmp_path / "out", adapter_name="other"))
    assert str(refused.value) == (
        "the model holds 2 adapters (default, other): export from a model that holds only 'other'"
    )
    assert list(tmp_path.iterdir()) == []


class RemoteCodeConfig(LlamaConfig):
    """A base whose architecture transformers does not know: its code would come with trust_remote_code."""

    model_type = "remote_llama"


def test_an_exact_export_of_a_remote_code_base_is_refused_before_writing(tokenizer, tmp_path):
    settings = {k: v for k, v in tiny_config("llama", len(tokenizer)).to_dict().items() if k != "model_type"}
    base = LlamaForCausalLM(RemoteCodeConfig(**settings)).eval()
    assert base.config.model_type == "remote_llama"
    model = get_sibo_model(base, lora("llama"), lam=0.3)
    with pytest.raises(InputError) as refused:
        export_adapter(model, tokenizer, ExportConfig(tmp_path / "out"))
    refusal = (
        "the base's architecture ('{}') is not transformers' own (its code comes with trust_remote_code), so an "
        "exact export would not load: add --approximate to drop the λ·ΔW·h0 term, or keep the adapter and load it "
        "with sibo"
    )
    assert str(refused.value) == refusal.format("remote_llama")
    assert list(tmp_path.iterdir()) == []
    assert not export_adapter(model, tokenizer, ExportConfig(tmp_path / "out", approximate=True)).exact
    # a shipped model_type whose auto_map names code of its own: transformers' class would not be it either
    base = build_tiny_model("llama", len(tokenizer))
    base.config.auto_map = {"AutoModelForCausalLM": "modeling_mine.MyLlama"}
    with pytest.raises(InputError) as refused:
        export_adapter(
            get_sibo_model(base, lora("llama"), lam=0.3), tokenizer, ExportConfig(tmp_path / "mine")
        )
    assert str(refused.value) == refusal.format("llama") and not (tmp_path / "mine").exists()


def test_an_export_removes_what_a_killed_export_to_its_folder_left(tokenizer, tmp_path):
    stale, neighbours = tmp_path / ".export-out-0123abcd", tmp_path / ".export-out-2-0123abcd"
    for folder in (stale, neighbours):  # another folder's staging: maybe an export running now
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"half a model")
    export_adapter(boosted_model(tokenizer), tokenizer, ExportConfig(tmp_path / "out"))

    assert sorted(path.name for path in tmp_path.iterdir()) == [".export-out-2-0123abcd", "out"]


def test_state_dict_export_is_one_safetensors_file(tokenizer, batch, tmp_path):
    model = get_peft_model(build_tiny_model("gpt2", len(tokenizer)), lora("gpt2")).eval()
    expected = logits(model, batch)
    report = export_adapter(model, tokenizer, ExportConfig(tmp_path / "out", format="state_dict"))

    assert report.files == [tmp_path / "out" / STATE_DICT_FILE]
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == [STATE_DICT_FILE, RUN_MARKER]
    fresh = build_tiny_model("gpt2", len(tokenizer), seed=1)
    load_safetensors_into(fresh, report.files[0])
    torch.testing.assert_close(logits(fresh, batch), expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("format", ["hf", "state_dict"])
def test_approximate_export_reports_the_dropped_term(tokenizer, batch, tmp_path, format):
    model = boosted_model(tokenizer, lam=0.5)
    expected = logits(model, batch)
    report = export_adapter(model, tokenizer, ExportConfig(tmp_path / "out", format=format, approximate=True))

    assert not report.exact and report.residual_modules == []
    assert report.max_logit_deviation > 1e-3
    assert not (tmp_path / "out" / RESIDUAL_DIR).exists()
    if format == "hf":
        plain = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    else:
        plain = build_tiny_model("llama", len(tokenizer), seed=1)
        load_safetensors_into(plain, tmp_path / "out" / STATE_DICT_FILE)
    assert (logits(plain, batch) - expected).abs().max() > 1e-3


def test_sequence_classifier_exports_with_its_trained_head(tokenizer, batch, tmp_path):
    def classifier():
        base = build_tiny_model("llama", len(tokenizer), num_labels=3)
        return get_sibo_model(base, lora("llama", task_type="SEQ_CLS"), lam=0.3).eval()

    model = classifier()
    expected = logits(model, batch)  # (2, 3)
    export_adapter(model, tokenizer, ExportConfig(tmp_path / "exact"))
    reloaded = load_model(str(tmp_path / "exact"), task="sequence-classification")[0]
    torch.testing.assert_close(logits(reloaded, batch), expected, atol=ATOL, rtol=0)
    card = ModelCard.load(tmp_path / "exact" / "README.md")  # says how a classifier loads
    assert card.data.pipeline_tag == "text-classification" and "sibo generate" not in card.text
    loading = (
        "model = AutoModelForSequenceClassification.from_pretrained('<this folder>', trust_remote_code=True)"
    )
    assert loading in card.text.splitlines()

    report = export_adapter(classifier(), tokenizer, ExportConfig(tmp_path / "approx", approximate=True))
    assert report.max_logit_deviation > 1e-4


def _dora(tokenizer):
    return boosted_model(tokenizer, use_dora=True)


def _bottleneck(tokenizer):
    return get_sibo_model(
        build_tiny_model("llama", len(tokenizer)), BottleneckConfig(bottleneck_size=4), lam=0.2
    )


def _plain_bottleneck(tokenizer):
    return get_peft_model(build_tiny_model("llama", len(tokenizer)), BottleneckConfig(bottleneck_size=4))


@pytest.mark.parametrize(
    ("build", "format", "message"),
    [
        (_dora, "hf", "a DoRA adapter boosted with λ > 0 has no merged form"),
        (_bottleneck, "hf", "a bottleneck adapter cannot be merged"),
        (_plain_bottleneck, "state_dict", "a bottleneck adapter cannot be merged"),
        (boosted_model, "state_dict", "has no exact single-file form"),
    ],
)
def test_unmergeable_forms_are_refused_before_writing(tokenizer, tmp_path, build, format, message):
    with pytest.raises(InputError, match=message):
        export_adapter(build(tokenizer), tokenizer, ExportConfig(tmp_path / "out", format=format))
    assert list(tmp_path.iterdir()) == []


def test_a_non_empty_output_dir_is_refused_and_only_an_earlier_export_is_replaced(tokenizer, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    for overwrite in (False, True):
        with pytest.raises(InputError) as refused:
            ExportConfig(tmp_path / "out", overwrite=overwrite)
        assert str(refused.value) == (
            f"--output_dir {tmp_path / 'out'} already holds files (keep.txt), not written by a sibo run: "
            "choose an empty or new --output_dir"
        )
    model = get_peft_model(build_tiny_model("gpt2", len(tokenizer)), lora("gpt2")).eval()
    export_adapter(model, tokenizer, ExportConfig(tmp_path / "again", format="state_dict"))
    with pytest.raises(
        InputError, match=r"already exists and is not empty \(an earlier export\): pass --overwrite"
    ):
        ExportConfig(tmp_path / "again")
    first = (tmp_path / "again" / STATE_DICT_FILE).read_bytes()
    model = get_peft_model(build_tiny_model("gpt2", len(tokenizer), seed=3), lora("gpt2")).eval()
    export_adapter(model, tokenizer, ExportConfig(tmp_path / "again", format="state_dict", overwrite=True))
    assert (tmp_path / "again" / STATE_DICT_FILE).read_bytes() != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again", "out"]  # no lock, no staging left


def test_an_output_dir_linking_to_an_empty_folder_gets_the_export_in_that_folder(tokenizer, tmp_path):
    (tmp_path / "target").mkdir()
    (tmp_path / "out").symlink_to(tmp_path / "target")
    model = get_peft_model(build_tiny_model("gpt2", len(tokenizer)), lora("gpt2")).eval()
    report = export_adapter(model, tokenizer, ExportConfig(tmp_path / "out", format="state_dict"))
    assert report.output_dir == tmp_path / "target"
    assert (tmp_path / "out").is_symlink() and (tmp_path / "out").resolve() == tmp_path / "target"
    assert sorted(p.name for p in (tmp_path / "target").iterdir()) == sorted([RUN_MARKER, STATE_DICT_FILE])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "target"]  # no lock, no staging left


def test_an_output_dir_that_cannot_move_is_refused_in_one_line_and_left_as_it_was(
    tokenizer, tmp_path, monkeypatch
):
    """An empty mount point cannot be renamed (EBUSY): the export says so, leaves it and nothing beside it."""
    (tmp_path / "out").mkdir()
    rename = Path.rename

    def busy(self, target):
        if self == tmp_path / "out":
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY), str(self))
        return rename(self, target)

    monkeypatch.setattr(Path, "rename", busy)
    model = get_peft_model(build_tiny_model("gpt2", len(tokenizer)), lora("gpt2")).eval()
    with pytest.raises(InputError) as refused:
        export_adapter(model, tokenizer, ExportConfig(tmp_path / "out", format="state_dict"))
    assert str(refused.value) == (
        f"cannot replace {tmp_path / 'out'} (Device or resource busy): the export replaces its folder whole, so "
        "a mount point cannot be it; export into a new folder inside it"
    )
    assert list((tmp_path / "out").iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging, no lock left


def test_a_run_that_claims_the_folder_during_the_export_keeps_it(tokenizer, tmp_path):
    config = ExportConfig(tmp_path / "out")  # checked: absent
    claim = f"from sibo.output_dir import claim_output_dir; claim_output_dir({str(tmp_path / 'out')!r}, 'finetune', {{}})"
    subprocess.run([sys.executable, "-c", claim], check=True)  # another run takes it while the model merges
    (tmp_path / "out" / "checkpoint-1").mkdir()
    model = get_peft_model(build_tiny_model("gpt2", len(tokenizer)), lora("gpt2")).eval()
    with pytest.raises(InputError, match=r"holds another finetune run|holds a sibo finetune run"):
        export_adapter(model, tokenizer, config)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["checkpoint-1", RUN_MARKER]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging left


def test_user_files_kept_aside_by_two_exports_are_both_kept(tokenizer, tmp_path, caplog):
    model = get_peft_model(build_tiny_model("gpt2", len(tokenizer)), lora("gpt2")).eval()
    export_adapter(model, tokenizer, ExportConfig(tmp_path / "out", format="state_dict"))
    for text in ("first", "second"):  # a README.md of the user's, where an hf export writes its card
        (tmp_path / "out" / "README.md").write_text(text)
        export_adapter(model, tokenizer, ExportConfig(tmp_path / "out", overwrite=True))
        export_adapter(model, tokenizer, ExportConfig(tmp_path / "out", format="state_dict", overwrite=True))
    aside = sorted(tmp_path.glob(".out.replaced-*"))
    assert sorted((folder / "README.md").read_text() for folder in aside) == ["first", "second"]


@pytest.mark.integration
def test_cli_export_of_a_saved_sibo_adapter(tokenizer, batch, tmp_path, capsys, caplog):
    base = build_tiny_model("llama", len(tokenizer))
    base.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    model = get_sibo_model(base, lora("llama"), lam=0.25).eval()
    model.save_pretrained(tmp_path / "adapter")
    expected = logits(model, batch)
    argv = ["export", "--base_model", str(tmp_path / "base"), "--weights_path", str(tmp_path / "adapter")]

    assert cli_main([*argv, "--output_dir", str(tmp_path / "exact")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("exact export: merged base + SIBO residual adapter on 4 modules")  # gate, up × 2
    assert f"wrote {tmp_path / 'exact' / RESIDUAL_DIR / 'adapter_model.safetensors'}" in out
    caplog.clear()
    with caplog.at_level("INFO", logger="sibo"):
        torch.testing.assert_close(
            logits(load_model(str(tmp_path / "exact"))[0], batch), expected, atol=ATOL, rtol=0
        )
    assert caplog.messages == [  # what was loaded, not the residual's inner λ = 1 on "all"
        f"exact export {tmp_path / 'exact'}: the merged base and its SIBO residual adapter (λ·ΔW·h0 on 4 modules)"
    ]
    # the residual is part of the export: a second adapter on it, or a new one trained on it, would drop it
    with pytest.raises(InputError, match=r"^.*/exact is an exact sibo export: its SIBO residual adapter .*/sibo_resi"
                       r"dual\) is part of it, and a second adapter \(.*/adapter\) cannot load beside it"):  # fmt: skip
        load_model(str(tmp_path / "exact"), tmp_path / "adapter")
    data = tmp_path / "data.json"
    data.write_text(json.dumps([{"instruction": "Add 2 and 3.", "input": "", "output": "5"}] * 4))
    train = [
        "finetune",
        "--base_model",
        str(tmp_path / "exact"),
        "--data_path",
        str(data),
        "--val_set_size",
        "0",
    ]
    assert cli_main([*train, "--output_dir", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"sibo finetune: error: --base_model {tmp_path / 'exact'} is an exact sibo export, whose SIBO residual "
        "adapter is part of the model: a new adapter cannot train on it; train on the base it was exported from"
    )
    assert not (tmp_path / "run").exists()

    assert cli_main([*argv, "--output_dir", str(tmp_path / "approx"), "--approximate"]) == 0
    first_line = capsys.readouterr().out.splitlines()[0]
    deviation = float(first_line.rsplit("= ", 1)[1])
    assert first_line.startswith("approximate export: the λ·ΔW·h0 term is dropped") and deviation > 1e-3

    assert cli_main([*argv, "--output_dir", str(tmp_path / "sd"), "--format", "state_dict"]) == 2
    assert "has no exact single-file form" in capsys.readouterr().err
    assert not (tmp_path / "sd").exists()


@pytest.mark.integration
def test_cli_export_records_the_template_the_adapter_was_trained_with(tmp_path, capsys):
    tokenizer = add_chat_template(build_tokenizer())
    base = build_tiny_model("llama", len(tokenizer), num_layers=1, hidden_size=16)
    base.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    get_peft_model(base, lora("llama")).save_pretrained(tmp_path / "adapter")
    argv = ["export", "--base_model", str(tmp_path / "base"), "--weights_path", str(tmp_path / "adapter")]
    assert cli_main([*argv, "--output_dir", str(tmp_path / "untold")]) == 0
    assert not (tmp_path / "untold" / TEMPLATE_FILE).exists()  # nothing recorded: Alpaca's, as before

    write_template(tmp_path / "adapter", PromptTemplate("chat"))
    capsys.readouterr()
    for format in ("hf", "state_dict"):
        out = tmp_path / format
        assert cli_main([*argv, "--output_dir", str(out), "--format", format]) == 0
        assert f"wrote {out / TEMPLATE_FILE}" in capsys.readouterr().out.splitlines()
        assert json.loads((out / TEMPLATE_FILE).read_text()) == {"template": "chat"}
    assert (
        ModelConfig(base_model=str(tmp_path / "hf")).template_name == "chat"
    )  # the export prompts as trained


@pytest.mark.parametrize("marker", [True, False])  # without its run marker, config.json says it is an export
def test_an_exports_residual_adapter_does_not_load_as_an_adapter_of_another_base(
    tokenizer, tmp_path, capsys, marker
):
    base = build_tiny_model("llama", len(tokenizer))
    base.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    model = get_sibo_model(load_model(str(tmp_path / "base"))[0], lora("llama"), lam=0.3).eval()
    export_adapter(model, tokenizer, ExportConfig(tmp_path / "out"))
    if not marker:
        (tmp_path / "out" / RUN_MARKER).unlink()
    residual = tmp_path / "out" / RESIDUAL_DIR
    line = (
        f"{residual} is the SIBO residual adapter of the exact export {tmp_path / 'out'}, part of that model, not "
        f"an adapter of {tmp_path / 'base'}: load the export itself (--base_model {tmp_path / 'out'}, no --weights_path)"
    )
    with pytest.raises(InputError) as refused:
        load_model(str(tmp_path / "base"), residual)
    assert str(refused.value) == line
    capsys.readouterr()  # the export's progress bars
    # without --base_model, the base recorded in the residual's adapter_config.json: the unmerged one
    assert cli_main(["generate", "--weights_path", str(residual), "--prompt", "hi"]) == 2
    assert capsys.readouterr().err.splitlines() == [f"sibo generate: error: {line}"]


def test_a_portable_export_without_its_residual_adapter_is_refused(tokenizer, tmp_path):
    export_adapter(boosted_model(tokenizer), tokenizer, ExportConfig(tmp_path / "exact"))
    shutil.rmtree(tmp_path / "exact" / RESIDUAL_DIR)
    (tmp_path / "exact" / RUN_MARKER).unlink()  # copied without either: config.json still says sibo_export
    with pytest.raises(InputError) as refused:
        load_model(str(tmp_path / "exact"))
    assert str(refused.value) == (
        f"the export at {tmp_path / 'exact'} is missing its SIBO residual adapter "
        f"({tmp_path / 'exact' / RESIDUAL_DIR}): export the adapter again"
    )
    # exports that need no residual adapter (λ 0, --approximate) load without their marker too
    for name, lam, approximate in (("zero", 0.0, False), ("approx", 0.3, True)):
        model = boosted_model(tokenizer, lam=lam)
        export_adapter(model, tokenizer, ExportConfig(tmp_path / name, approximate=approximate))
        (tmp_path / name / RUN_MARKER).unlink()
        assert load_model(str(tmp_path / name))[0].training is False


def test_export_is_as_readable_as_the_umask_allows(tokenizer, tmp_path):
    base = build_tiny_model("llama", len(tokenizer))
    base.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    get_sibo_model(base, lora("llama"), lam=0.25).save_pretrained(tmp_path / "adapter")
    argv = ["export", "--base_model", str(tmp_path / "base"), "--weights_path", str(tmp_path / "adapter")]
    previous = os.umask(0o022)
    try:
        assert cli_main([*argv, "--output_dir", str(tmp_path / "exact")]) == 0
    finally:
        os.umask(previous)
    modes = {
        str(path.relative_to(tmp_path)): stat.S_IMODE(path.stat().st_mode)
        for path in [tmp_path / "exact", *(tmp_path / "exact").rglob("*")]
    }
    assert modes["exact"] == modes[f"exact/{RESIDUAL_DIR}"] == 0o755  # not mkdtemp's 0700
    assert {mode for name, mode in modes.items() if (tmp_path / name).is_file()} == {0o644}


# -- the same merge in memory, for decoding ------------------------------------------------------


def greedy(model, tokenizer, batch, num_beams: int = 1) -> torch.Tensor:
    with torch.no_grad():
        return model.generate(
            **batch,
            max_new_tokens=8,
            num_beams=num_beams,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )


@pytest.mark.parametrize("arch", ["llama", "gpt2", "opt"])
@pytest.mark.parametrize(("lam", "learnable"), [(0.0, False), (0.2, False), (0.2, True)])
def test_merged_for_inference_decodes_like_the_unmerged_model(tokenizer, batch, arch, lam, learnable):
    model = boosted_model(tokenizer, arch, lam=lam, learnable=learnable, lora_bias=arch == "opt")
    if learnable:
        with torch.no_grad():
            find_boost(model).lambdas.logits.copy_(torch.tensor([-2.0, 1.0]))
    expected_logits, expected_tokens = logits(model, batch), greedy(model, tokenizer, batch)
    names = boosted_names(model)
    merged = merge_for_inference(model)

    torch.testing.assert_close(logits(merged, batch), expected_logits, atol=ATOL, rtol=0)
    assert torch.equal(greedy(merged, tokenizer, batch), expected_tokens)
    # what is left of the adapter: nothing at λ = 0, else an h0 term on exactly the boosted modules
    assert not any(isinstance(module, LoraLayer) for module in merged.modules())
    left = [name for name, module in merged.named_modules() if hasattr(module, UP_BUFFER)]
    assert left == ([] if lam == 0 else names)


def test_merged_for_inference_keeps_beam_search_outputs(tokenizer, batch):
    model = boosted_model(tokenizer, "llama", lam=0.2)
    expected = greedy(model, tokenizer, batch, num_beams=3)
    assert torch.equal(greedy(merge_for_inference(model), tokenizer, batch, num_beams=3), expected)


def test_plain_dora_merges_exactly_and_boosted_dora_stays_unmerged(tokenizer, batch, caplog):
    plain = boosted_model(tokenizer, lam=0.0, use_dora=True)
    expected = logits(plain, batch)
    torch.testing.assert_close(logits(merge_for_inference(plain), batch), expected, atol=ATOL, rtol=0)

    boosted = boosted_model(tokenizer, lam=0.2, use_dora=True)
    expected = logits(boosted, batch)
    with caplog.at_level("INFO", logger="sibo.core.merge"):
        assert merge_for_inference(boosted) is boosted
    assert "unmerged: a DoRA adapter boosted with λ > 0 has no merged form" in caplog.text
    assert torch.equal(logits(boosted, batch), expected)


@pytest.mark.parametrize("build", [_bottleneck, _plain_bottleneck])
def test_bottleneck_adapters_stay_unmerged(tokenizer, batch, build, caplog):
    model = build(tokenizer).eval()
    expected = logits(model, batch)
    with caplog.at_level("INFO", logger="sibo.core.merge"):
        assert merge_for_inference(model) is model
    assert "unmerged: a bottleneck adapter cannot be merged into the base weights" in caplog.text
    assert torch.equal(logits(model, batch), expected)


def test_a_base_model_alone_is_returned_as_it_is(tokenizer):
    base = build_tiny_model("llama", len(tokenizer))
    assert merge_for_inference(base) is base


def card_size(directory) -> int:
    """The export's files as the card counts them: all but the card and the run marker written after it."""
    return sum(
        f.stat().st_size
        for f in directory.rglob("*")
        if f.is_file() and f.name not in ("README.md", RUN_MARKER)
    )


@pytest.mark.parametrize("approximate", [False, True])
def test_an_export_has_a_card_that_says_what_it_is_and_how_it_loads(tokenizer, tmp_path, approximate):
    model = boosted_model(tokenizer, lam=0.3)
    report = export_adapter(
        model, tokenizer, ExportConfig(tmp_path / "out", approximate=approximate), adapter_path="ad"
    )
    out = tmp_path / "out"
    card = ModelCard.load(out / "README.md")
    assert str(card) == (out / "README.md").read_text() and out / "README.md" in report.files
    tags = ["sibo", "merged"] + ([] if approximate else ["custom_code"])
    assert card.data.to_dict() == {
        "library_name": "transformers",
        "tags": tags,
        "pipeline_tag": "text-generation",
    }
    lines = card.text.splitlines()
    what = next(line for line in lines if line.startswith("This folder holds "))
    if approximate:
        assert f"(largest |Δlogit| on probe prompts: {report.max_logit_deviation:.6g})." in what
        assert "- λ: 0 in this checkpoint (the adapter's λ was dropped)" in lines
    else:
        assert (
            what.startswith("This folder holds an exact merged SIBO model")
            and f"the {len(report.residual_modules)} boosted" in what
        )
        assert "- λ: 0.3" in lines
        assert (
            "model = AutoModelForCausalLM.from_pretrained('<this folder>', trust_remote_code=True)" in lines
        )
    assert f"- needs trust_remote_code: {'no' if approximate else 'yes'}" in lines
    assert "- base model: None; adapter: ad" in lines
    facts = ExportFacts(
        str(tmp_path), None, {}, False, 0, None, "float32", 1
    )  # a local base: named in the text
    assert export_card(facts).data.base_model is None and f"- base model: {tmp_path}; adapter: None" in str(
        export_card(facts)
    )
    assert (
        export_card(replace(facts, base_model="org/name")).data.base_model == "org/name"
    )  # a Hub id: in the data
    for local in ("~/models/x", "./x", "/gone/x", "x.gguf/"):  # paths, here or not: out of the metadata
        assert export_card(replace(facts, base_model=local)).data.base_model is None, local
    assert (
        f"- format: a transformers checkpoint; dtype: float32; size: {card_size(out) / 1e6:.1f} MB" in lines
    )
