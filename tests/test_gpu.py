"""CUDA-only checks (benchmarks/gpu_check.sh runs them): bf16 fine-tuning, 8-bit and 4-bit (QLoRA)
bases, and the FSDP / DeepSpeed ZeRO accelerate configs of examples/ launched on one GPU.

Deselected by default (`-m 'not gpu'` in pyproject); they skip themselves without a GPU, the
quantized ones without bitsandbytes and the ZeRO ones without deepspeed.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from peft import LoraConfig

import sibo
from sibo import sibo_settings
from sibo.checkpoint.load import load_model, resolve_dtype
from sibo.data import PaddedCollator, Record, tokenize_records
from sibo.prompts import build_prompt
from sibo.study.synthetic import generate_problems, write_records
from sibo.testing import build_tiny_model, build_tokenizer
from sibo.train.packing import PackingCollator, enable_packing, packed_attention_kernel
from sibo.train.recipe import FinetuneConfig, finetune

REPO = Path(__file__).resolve().parents[1]
TARGETS = ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]

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


def _settings(root, output_dir) -> dict:
    return dict(
        base_model=str(root / "base"), data_path=str(root / "train.json"), output_dir=str(output_dir),
        batch_size=8, micro_batch_size=8, max_steps=8, learning_rate=5e-3, warmup_steps=0, cutoff_len=128,
        val_set_size=0, save_step=100, eval_step=100, logging_steps=1,
        target_modules=TARGETS, embedding_lambda=0.1,
    )  # fmt: skip


def _config(root, output_dir, **overrides) -> FinetuneConfig:
    return FinetuneConfig(**{**_settings(root, output_dir), **overrides})


def _flags(settings: dict) -> list[str]:
    """The same settings as `sibo finetune` flags (each field's flag is its name)."""
    return [
        item
        for name, value in settings.items()
        for item in (f"--{name}", ",".join(value) if isinstance(value, list) else str(value))
    ]


def _losses(train_metrics: dict) -> list[float]:
    return [float(entry["loss"]) for entry in train_metrics["log_history"] if "loss" in entry]


def test_auto_dtype_is_bf16_on_a_gpu_that_supports_it():
    expected = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    assert resolve_dtype("auto") == expected


@pytest.mark.skipif(not torch.cuda.is_available() or not torch.cuda.is_bf16_supported(), reason="needs bf16")
def test_bf16_training_runs_in_bf16_and_learns(workspace):
    output_dir = workspace / "bf16"
    metrics = finetune(_config(workspace, output_dir))
    resolved = json.loads((output_dir / "run_config.json").read_text())["resolved"]
    assert (resolved["dtype"], resolved["bf16"], resolved["fp16"]) == ("bfloat16", True, False)
    assert resolved["optim"] == "adamw_torch_fused"
    assert resolved["packed_attention"] == (
        "sibo_packed_sdpa attention, varlen flash (torch.nn.attention.varlen, one call per layer)"
    )
    losses = _losses(metrics["train"])
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


@pytest.mark.parametrize("bits", [4, 8])
def test_quantized_base_trains_saves_and_reloads(workspace, bits):
    bitsandbytes = pytest.importorskip("bitsandbytes")
    output_dir = workspace / f"{bits}bit"
    flag = {f"load_{bits}bit": True}  # 4-bit with checkpointing: the QLoRA recipe
    metrics = finetune(_config(workspace, output_dir, use_gradient_checkpointing=bits == 4, **flag))
    losses = _losses(metrics["train"])
    assert all(math.isfinite(loss) for loss in losses) and losses[-1] < losses[0]
    assert (output_dir / "adapter_model.safetensors").is_file()
    assert json.loads((output_dir / "sibo_config.json").read_text())["lam"] == 0.1

    model, tokenizer = load_model(
        str(workspace / "base"), output_dir, quantization=f"{bits}bit", device_map={"": 0}
    )
    layer = bitsandbytes.nn.Linear4bit if bits == 4 else bitsandbytes.nn.Linear8bitLt
    assert any(isinstance(module, layer) for module in model.modules()), f"the base should be {bits}-bit"
    inputs = tokenizer([build_prompt("Tom has 3 apples.")], return_tensors="pt").to("cuda")
    with torch.inference_mode():
        logits = model(**inputs).logits
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("launch_config", ["fsdp", "deepspeed_zero2", "deepspeed_zero3"])
def test_accelerate_config_of_examples_trains_like_one_process(workspace, launch_config):
    """`accelerate launch --config_file examples/accelerate/X.yaml -m sibo finetune`, on one GPU.

    Sharding over one process changes no arithmetic that matters: the losses follow the plain bf16
    run of the same data and seed, and the adapter it saves loads without FSDP / DeepSpeed.
    """
    if launch_config.startswith("deepspeed"):
        pytest.importorskip("deepspeed")
    reference_dir, output_dir = workspace / "plain-reference", workspace / launch_config
    if not (reference_dir / "train_metrics.json").is_file():
        finetune(_config(workspace, reference_dir))
    reference = _losses(json.loads((reference_dir / "train_metrics.json").read_text()))
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1",
        "--config_file", str(REPO / "examples" / "accelerate" / f"{launch_config}.yaml"),
        "-m", "sibo", "finetune", *_flags(_settings(workspace, output_dir)),
    ]  # fmt: skip
    finished = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-4000:]
    losses = _losses(json.loads((output_dir / "train_metrics.json").read_text()))
    print(f"{launch_config}: losses {losses}; one process: {reference}")  # for the benchmark page
    assert losses == pytest.approx(reference, rel=0.01), (losses, reference)  # H200: at most 0.52 %
    assert losses[-1] < losses[0]

    model, tokenizer = load_model(str(workspace / "base"), output_dir)
    assert sibo_settings(model).lam == 0.1
    inputs = tokenizer([build_prompt("Tom has 3 apples.")], return_tensors="pt")
    with torch.inference_mode():
        assert torch.isfinite(model(**inputs).logits).all()


def _packed_and_padded_steps(model, examples, pad_token_id) -> dict:
    """Per batch layout: loss, adapter gradients, and the host syncs of one bf16 forward/backward."""
    results = {}
    for name, collator in (("padded", PaddedCollator(pad_token_id)), ("packed", PackingCollator())):
        batch = {k: v.to("cuda") if isinstance(v, torch.Tensor) else v for k, v in collator(examples).items()}
        model.zero_grad()
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    loss = model(**batch, use_cache=False).loss
                loss.backward()
        finally:
            torch.cuda.set_sync_debug_mode("default")
        syncs = [str(w.message)[:160] for w in caught if "synchroniz" in str(w.message)]
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad])
        results[name] = (loss.item(), grads, syncs)
    return results


@pytest.mark.skipif(not torch.cuda.is_available() or not torch.cuda.is_bf16_supported(), reason="needs bf16")
def test_packed_rows_take_one_varlen_call_per_layer_with_no_read_back_and_match_padded(monkeypatch):
    """The CUDA packed path: torch's flash varlen kernel, once per layer, on the collator's bounds."""
    varlen = pytest.importorskip("torch.nn.attention.varlen")
    records = generate_problems(12, seed=1)
    tokenizer = build_tokenizer([build_prompt(r["instruction"]) + r["output"] for r in records], 512)
    examples = tokenize_records(
        [Record(r["instruction"], "", r["output"]) for r in records], tokenizer, 256, True
    ).examples
    # SmolLM2's grouping: 3 query heads per key/value head; head width 64
    base = build_tiny_model("llama", len(tokenizer), seed=1, num_layers=3, hidden_size=384, num_heads=6,
                            ffn_size=512, num_key_value_heads=2)  # fmt: skip
    assert enable_packing(base)
    assert packed_attention_kernel("cuda", torch.bfloat16, 64).startswith("varlen flash")
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS, init_lora_weights=False)
    model = sibo.get_sibo_model(base, lora, lam=0.3, targets="all").to("cuda").eval()

    calls = []
    real_varlen = varlen.varlen_attn
    monkeypatch.setattr(varlen, "varlen_attn", lambda *a, **k: calls.append(1) or real_varlen(*a, **k))
    results = _packed_and_padded_steps(model, examples, tokenizer.pad_token_id)
    assert len(calls) == 3  # one per layer, for the packed batch only (the padded one has a mask)
    (padded_loss, padded_grads, _), (packed_loss, packed_grads, syncs) = results["padded"], results["packed"]
    print(f"packed forward/backward syncs: {syncs}")
    # None: not even transformers' scan of the position ids for packed sequences (packing._pass_no_padding).
    assert syncs == [], syncs

    assert packed_loss == pytest.approx(padded_loss, rel=1e-2)
    relative = ((packed_grads - padded_grads).norm() / padded_grads.norm()).item()
    print(
        f"varlen vs padded: loss {packed_loss} vs {padded_loss}; gradient relative difference {relative:.2e}"
    )
    assert relative < 3e-2  # bf16 rounding; a leak between sequences moves them by far more


@pytest.mark.skipif(not torch.cuda.is_available() or not torch.cuda.is_bf16_supported(), reason="needs bf16")
def test_liger_kernels_train_like_plain_kernels(workspace):
    """--use_liger_kernel (an optional extra): same losses within bf16 noise, SIBO still boosting."""
    pytest.importorskip("liger_kernel")
    reference_dir = workspace / "plain-reference"  # shared with the accelerate tests
    if not (reference_dir / "train_metrics.json").is_file():
        finetune(_config(workspace, reference_dir))
    reference = _losses(json.loads((reference_dir / "train_metrics.json").read_text()))
    output_dir = workspace / "liger"
    losses = _losses(finetune(_config(workspace, output_dir, use_liger_kernel=True))["train"])
    print(f"liger: losses {losses}; plain: {reference}")
    assert losses == pytest.approx(reference, rel=0.02)
    resolved = json.loads((output_dir / "run_config.json").read_text())["resolved"]
    assert resolved["use_liger_kernel"] is True
