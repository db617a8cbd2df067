"""Adapters written by sibo before issue 31 (tests/checkpoint/data/pre31, made by write_pre31_adapters.py with
that code) load exactly as that code ran them, in sibo's loaders and, with sibo imported, in PEFT's."""

import json
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

import sibo

PRE31 = Path(__file__).parent / "data" / "pre31"
INPUT_IDS = torch.tensor([[1, 5, 9, 14, 3, 27, 8]])


@pytest.mark.parametrize("name", ["fixed", "learnt"])
def test_pre31_adapter_loads_exactly(name):
    base = AutoModelForCausalLM.from_pretrained(PRE31 / "base", dtype=torch.float32)
    model = sibo.load_sibo_model(base, PRE31 / name)
    with torch.no_grad():
        logits = model(input_ids=INPUT_IDS).logits[0]
    torch.testing.assert_close(
        logits, load_file(PRE31 / "expected_logits.safetensors")[name], rtol=0, atol=1e-6
    )
    assert sibo.sibo_settings(model).lam == 0.3


@pytest.mark.parametrize("name", ["fixed", "learnt"])
@pytest.mark.parametrize(
    "loader", ["PeftModel.from_pretrained", "PeftModel.load_adapter", "transformers.load_adapter"]
)
def test_pre31_adapter_runs_exactly_in_peft_loaders_with_sibo_imported(name, loader):
    """PEFT reads the LORA type; sibo, imported, finds sibo_config.json beside it and boosts it as saved."""
    expected = load_file(PRE31 / "expected_logits.safetensors")[name]
    base = AutoModelForCausalLM.from_pretrained(PRE31 / "base", dtype=torch.float32)
    if loader == "PeftModel.from_pretrained":
        model = PeftModel.from_pretrained(base, str(PRE31 / name))
    elif loader == "PeftModel.load_adapter":  # beside the other one, then made active
        model = PeftModel.from_pretrained(base, str(PRE31 / ("learnt" if name == "fixed" else "fixed")))
        model.load_adapter(str(PRE31 / name), "other")
        model.set_adapter("other")
    else:
        model = base
        model.load_adapter(str(PRE31 / name))
    with torch.no_grad():
        logits = model(input_ids=INPUT_IDS).logits[0]
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-6)
    plain = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(PRE31 / "base", dtype=torch.float32),
        str(PRE31 / name),
        config=LoraConfig.from_peft_type(**json.loads((PRE31 / name / "adapter_config.json").read_text())),
    )
    with torch.no_grad():
        assert (plain(input_ids=INPUT_IDS).logits[0] - expected).abs().max() > 1e-4  # what PEFT ran before


def test_sibo_loader_keeps_a_pre31_adapter_plain_in_peft_and_boosts_it_once():
    model = sibo.load_sibo_model(
        AutoModelForCausalLM.from_pretrained(PRE31 / "base", dtype=torch.float32), PRE31 / "learnt"
    )
    assert type(model.peft_config["default"]) is LoraConfig  # saved again, it writes its own settings
