"""Adapters written by sibo before issue 31 (tests/core/data/pre31, made by write_pre31_adapters.py with
that code) load exactly as that code ran them."""

from pathlib import Path

import pytest
import torch
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
