"""The adapter `sibo finetune` adds: without --target_modules it is the paper's, so the default run is SIBO."""

import logging

import pytest

from sibo.cli.finetune import parse_config
from sibo.core.booster import find_boost
from sibo.errors import InputError
from sibo.testing import build_tiny_model
from sibo.train.adapter import add_trainable_adapter, build_peft_config


def adapter_for(arch: str, *flags: str):
    config = parse_config(["--base_model", "m", "--data_path", "d.json", *flags])
    return add_trainable_adapter(build_tiny_model(arch, 64), build_peft_config(config), config)


@pytest.mark.parametrize(
    ("arch", "adapted", "boosted"),
    [
        ("llama", {"q_proj", "k_proj", "v_proj", "up_proj", "down_proj"}, {"mlp.up_proj"}),
        ("opt", {"q_proj", "k_proj", "v_proj", "fc1", "fc2"}, {"fc1"}),
        ("gpt2", {"attn.c_attn", "mlp.c_fc", "mlp.c_proj"}, {"mlp.c_fc"}),
    ],
)
def test_default_targets_are_the_papers_and_boost_the_ffn_input(arch, adapted, boosted, caplog):
    with caplog.at_level(logging.INFO, logger="sibo"):
        model = adapter_for(arch)
    names = {name for name, _ in model.named_modules() if name.endswith(".lora_A")}
    assert {".".join(n.split(".")[-3:-1]) if arch == "gpt2" else n.split(".")[-2] for n in names} == adapted
    layers = find_boost(model).layers
    assert {layer.name.split(f".{layer.block}.", 1)[1] for layer in layers} == boosted
    assert sorted(layer.block for layer in layers) == [0, 1]


def test_named_targets_keep_their_meaning_and_nothing_boosted_is_refused():
    with pytest.raises(InputError) as error:
        adapter_for("llama", "--target_modules", "q_proj,v_proj", "--embedding_lambda", "0.1")
    assert str(error.value).startswith("SIBO λ 0.1 boosts nothing: targets q_proj,v_proj have no FFN input; ")
    model = adapter_for("llama", "--target_modules", "q_proj,v_proj", "--embedding_lambda", "0")
    assert {n.split(".")[-2] for n, _ in model.named_modules() if n.endswith(".lora_A")} == {
        "q_proj",
        "v_proj",
    }
