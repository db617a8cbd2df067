"""checkpoint/config.py: the model flags are checked when ModelConfig is built, before any model loads."""

from __future__ import annotations

import pytest
from peft import LoraConfig

from sibo.checkpoint.config import ModelConfig
from sibo.checkpoint.peft_model import get_sibo_model
from sibo.cli import main as sibo_main
from sibo.errors import InputError
from sibo.testing import build_tiny_model


@pytest.fixture
def adapter(tmp_path):
    model = build_tiny_model("llama", 64)
    lora = LoraConfig(r=2, target_modules=["q_proj", "up_proj"])
    get_sibo_model(model, lora, lam=0.2).save_pretrained(tmp_path / "adapter")
    return tmp_path / "adapter"


@pytest.mark.parametrize("lam", [1.5, -0.1, True, "0.2"])
def test_a_lambda_out_of_range_is_refused_at_construction(adapter, lam):
    with pytest.raises(InputError, match=rf"SIBO's λ must be a number in \[0, 1\], got {lam!r}"):
        ModelConfig(base_model="unused", weights_path=str(adapter), lam=lam)


def test_generate_refuses_a_lambda_out_of_range_before_loading(adapter, monkeypatch, capsys):
    def no_load(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr("sibo.checkpoint.load.load_model", no_load)
    argv = [
        "generate",
        "--base_model",
        "unused",
        "--weights_path",
        str(adapter),
        "--lam",
        "1.5",
        "--prompt",
        "Hi",
    ]
    assert sibo_main(argv) == 2
    assert (
        capsys.readouterr().err.strip()
        == "sibo generate: error: SIBO's λ must be a number in [0, 1], got 1.5"
    )


def test_a_lambda_in_range_is_kept_as_a_float(adapter):
    assert ModelConfig(base_model="unused", weights_path=str(adapter), lam=1).lam == 1.0
    assert ModelConfig(base_model="unused", weights_path=str(adapter)).lam is None
