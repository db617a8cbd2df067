"""Numbers that blow up: generate, evaluate, export and analyze never print an empty answer or a score
because the logits went non-finite; they stop with one line naming the adapter tensor, the base tensor
or λ, exit 2, nothing written."""

from __future__ import annotations

import shutil

import pytest
import torch
from fault_checks import evaluate_args, refused
from safetensors.torch import load_file, save_file

from sibo.checkpoint.weights import check_finite

UP_B = "base_model.model.model.layers.0.mlp.up_proj.lora_B.weight"
Q_B = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"


def with_value(source, target, file: str, name: str, value: float, everywhere: bool = False):
    """A copy of the model or adapter folder `source` whose tensor `name` holds `value` (at [0, 0], or
    everywhere)."""
    shutil.copytree(source, target)
    tensors = load_file(target / file)
    if everywhere:
        tensors[name].fill_(value)
    else:
        tensors[name][0, 0] = value
    save_file(tensors, target / file, metadata={"format": "pt"})
    return target


def verb_args(verb: str, root, base, adapter, out) -> list:
    return {
        "generate": ["generate", "--base_model", base, "--weights_path", adapter, "--prompt", "Add 1 and 2."],
        "evaluate": [*evaluate_args(root, out, adapter), "--base_model", base],
        "export": ["export", "--base_model", base, "--weights_path", adapter, "--output_dir", out],
        "analyze": ["analyze", "--base_model", base, "--weights_path", adapter, "--data", root / "records.json",
                    "--n", "2", "--output_dir", out],
    }[verb]  # fmt: skip


VERBS = ["generate", "evaluate", "export", "analyze"]


@pytest.mark.parametrize("verb", VERBS)
def test_a_finite_but_huge_adapter_weight_is_refused_naming_the_tensor(root, tmp_path, capsys, verb):
    adapter = with_value(root / "adapter4", tmp_path / "huge", "adapter_model.safetensors", UP_B, 1e38)
    line = refused(capsys, verb_args(verb, root, root / "base4", adapter, tmp_path / "out"), tmp_path)
    assert line == (
        f"sibo {verb}: error: {adapter / 'adapter_model.safetensors'}: tensor {UP_B} holds 1 value(s) too "
        "large to compute with (1e+38; beyond ±1.8e+19 its square overflows float32): damaged, or written by "
        "a run that diverged"
    )
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("verb", VERBS)
def test_a_base_with_one_nan_weight_is_refused_naming_the_tensor(root, tmp_path, capsys, verb):
    name = "model.layers.1.mlp.down_proj.weight"
    base = with_value(root / "base4", tmp_path / "nan_base", "model.safetensors", name, float("nan"))
    line = refused(capsys, verb_args(verb, root, base, root / "adapter4", tmp_path / "out"), tmp_path)
    assert line == (
        f"sibo {verb}: error: base model {base}: tensor {name} holds 1 non-finite value(s) (nan): damaged, "
        "or written by a run that diverged"
    )
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("verb", ["generate", "evaluate", "analyze"])
def test_logits_that_overflow_the_dtype_stop_decoding_with_one_line(root, tmp_path, capsys, verb):
    # every weight finite and small enough for float32, but q·k overflows float16: NaN logits, token 0, ""
    adapter = with_value(root / "adapter4", tmp_path / "big", "adapter_model.safetensors", Q_B, 3e4, True)
    argv = [*verb_args(verb, root, root / "base4", adapter, tmp_path / "out"), "--dtype", "fp16"]
    line = refused(capsys, argv, root, adapter)  # evaluate has claimed its folder by then: no answer in it
    assert line.startswith(
        f"sibo {verb}: error: the logits went non-finite (NaN): every weight is finite, but an activation "
        "overflowed float16 (the largest weight: "
    ), line
    assert line.endswith("decode in float32 (--dtype fp32), or check the adapter"), line
    assert (
        not (tmp_path / "out" / "AddSub.jsonl").exists()
        or not (tmp_path / "out" / "AddSub.jsonl").read_text()
    )
    assert not (tmp_path / "out" / "analyze.json").exists()


def test_a_non_finite_learnable_lambda_is_named_as_lambda():
    tensors = {"sibo_lambdas.default.logits": torch.tensor([0.1, float("inf")])}
    with pytest.raises(
        ValueError, match=r"^adapter: tensor sibo_lambdas.default.logits \(the learnable λ\) holds 1 "
    ):
        check_finite(tensors, "adapter")
