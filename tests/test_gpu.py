"""CUDA-only checks (benchmarks/gpu_check.sh runs them): bf16 fine-tuning and 4-bit QLoRA with SIBO.

Deselected by default (`-m 'not gpu'` in pyproject); they skip themselves without a GPU, and the
QLoRA one without bitsandbytes.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from sibo.finetune import FinetuneConfig, finetune
from sibo.loading import load_model, resolve_dtype
from sibo.prompts import build_prompt
from sibo.synthetic import generate_problems, write_records
from sibo.tiny import build_tiny_model, build_tokenizer

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A small LLaMA (widths bitsandbytes' 4-bit blocks divide) with its tokenizer, and training data."""
    root = tmp_path_factory.mktemp("gpu")
    records = generate_problems(64, seed=0)
    tokenizer = build_tokenizer(
        [build_prompt(r["instruction"]) + r["output"] for r in records], vocab_size=512
    )
    model = build_tiny_model(
        "llama", len(tokenizer), num_layers=4, hidden_size=128, num_heads=4, ffn_size=256
    )
    model.save_pretrained(root / "base")
    tokenizer.save_pretrained(root / "base")
    write_records(records, root / "train.json")
    return root


def _config(root, output_dir, **overrides) -> FinetuneConfig:
    settings = dict(
        base_model=str(root / "base"), data_path=str(root / "train.json"), output_dir=str(output_dir),
        batch_size=8, micro_batch_size=8, max_steps=8, learning_rate=5e-3, warmup_steps=0, cutoff_len=128,
        val_set_size=0, save_step=100, eval_step=100, logging_steps=1,
        target_modules=["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"], embedding_lambda=0.1,
    )  # fmt: skip
    return FinetuneConfig(**{**settings, **overrides})


def _losses(metrics: dict) -> list[float]:
    return [float(entry["loss"]) for entry in metrics["train"]["log_history"] if "loss" in entry]


def test_auto_dtype_is_bf16_on_a_gpu_that_supports_it():
    expected = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    assert resolve_dtype("auto") == expected


@pytest.mark.skipif(not torch.cuda.is_available() or not torch.cuda.is_bf16_supported(), reason="needs bf16")
def test_bf16_training_runs_in_bf16_and_learns(workspace):
    output_dir = workspace / "bf16"
    metrics = finetune(_config(workspace, output_dir))
    resolved = json.loads((output_dir / "run_config.json").read_text())["resolved"]
    assert (resolved["dtype"], resolved["bf16"], resolved["fp16"]) == ("bfloat16", True, False)
    losses = _losses(metrics)
    assert len(losses) == 8 and all(math.isfinite(loss) for loss in losses)
    assert losses[-1] < losses[0]
    settings = json.loads((output_dir / "sibo_config.json").read_text())
    assert settings["lam"] == 0.1 and settings["boosted_modules"]

    model, tokenizer = load_model(str(workspace / "base"), output_dir)
    model.to("cuda")
    inputs = tokenizer([build_prompt("Tom has 3 apples.")], return_tensors="pt").to("cuda")
    with torch.inference_mode():
        generated = model.generate(**inputs, max_new_tokens=8, min_new_tokens=8, do_sample=False)
    assert generated.shape == (1, inputs["input_ids"].shape[1] + 8)
    assert next(model.parameters()).dtype == torch.bfloat16


def test_qlora_4bit_trains_saves_and_reloads(workspace):
    bitsandbytes = pytest.importorskip("bitsandbytes")
    output_dir = workspace / "qlora"
    metrics = finetune(_config(workspace, output_dir, load_4bit=True, use_gradient_checkpointing=True))
    losses = _losses(metrics)
    assert all(math.isfinite(loss) for loss in losses) and losses[-1] < losses[0]
    assert (output_dir / "adapter_model.safetensors").is_file()
    assert json.loads((output_dir / "sibo_config.json").read_text())["lam"] == 0.1

    model, tokenizer = load_model(
        str(workspace / "base"), output_dir, quantization="4bit", device_map={"": 0}
    )
    four_bit = [module for module in model.modules() if isinstance(module, bitsandbytes.nn.Linear4bit)]
    assert four_bit, "the base's linear layers should be 4-bit"
    inputs = tokenizer([build_prompt("Tom has 3 apples.")], return_tensors="pt").to("cuda")
    with torch.inference_mode():
        logits = model(**inputs).logits
    assert torch.isfinite(logits).all()
