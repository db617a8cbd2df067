"""PEFT's LoRA options from `sibo finetune` (rsLoRA, init_lora_weights, all-linear, modules_to_save, LoRA+):
SIBO stays exact against the hand-written formula, adapters reload exactly, and `sibo export` stays exact.

The formula, per adapted linear module of a block, with W0 the base weight the module holds:

    y = W0·x + s·B·A·((1-λ)·x + λ·h0)     (the module boosted: it reads the block's hidden state)
    y = W0·x + s·B·A·x                     (otherwise: o_proj, down_proj)

s = α/r, or α/√r with rsLoRA. PiSSA and OLoRA move the base weight to W0 - s·B0·A0 (B0, A0: the
initial adapter: W0's top-r SVD part over s, or its first r QR columns and rows): the base still reads x, the branch reads the mix. So with λ > 0 they no longer
start as the base model: y0 = W0·x + λ·s·B0·A0·(h0 - x).
"""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from sibo import get_sibo_model, load_sibo_model
from sibo.checkpoint.export import ExportConfig, export_adapter
from sibo.checkpoint.load import load_model
from sibo.cli import main as sibo_main
from sibo.cli.finetune import parse_config
from sibo.core.booster import find_boost
from sibo.errors import InputError
from sibo.testing import build_tiny_model, build_tokenizer
from sibo.train.adapter import build_peft_config
from sibo.train.config import FinetuneConfig
from sibo.train.loraplus import loraplus_optimizer

LAM, R, ALPHA = 0.3, 4, 8
LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# boosted under targets="all": the attention projections and the FFN's input projections, not down_proj
BOOSTED = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj"}
OPTIONS = {
    "rslora": {"use_rslora": True},
    "init-false": {"init_lora_weights": "false"},
    "gaussian": {"init_lora_weights": "gaussian"},
    "orthogonal": {"init_lora_weights": "orthogonal"},
    "pissa": {"init_lora_weights": "pissa"},
    "olora": {"init_lora_weights": "olora"},
    "all-linear": {"target_modules": ["all-linear"]},
    "modules-to-save": {"modules_to_save": ["lm_head"]},
}


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="module")
def inputs(tokenizer):
    return tokenizer(["The sum of 2 and 3 is", "hi"], return_tensors="pt", padding=True)


def finetune_config(**options) -> FinetuneConfig:
    settings = {"base_model": "m", "lora_r": R, "lora_alpha": ALPHA, "lora_dropout": 0.0,
                "target_modules": ["q_proj", "v_proj", "o_proj", "up_proj", "down_proj"], "sibo_targets": "all"}  # fmt: skip
    return FinetuneConfig(**{**settings, **options})


def lora_modules(model) -> dict[str, torch.nn.Module]:
    """Adapted linear modules, by their name in the base model."""
    return {name.removeprefix("base_model.model."): module for name, module in model.named_modules()
            if hasattr(module, "lora_A") and "default" in module.lora_A}  # fmt: skip


def train_a_little(model) -> None:
    """Move B (zero after most inits) and the saved lm_head copy, as training would."""
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.requires_grad and "sibo_lambdas" not in name:
                parameter.add_(0.2 * torch.randn(parameter.shape, generator=generator))


def reference_logits(base, model, inputs, scaling: float, initial: dict) -> torch.Tensor:
    """The formula by hand on a copy of the base: each adapted module gets W0 (moved by PiSSA/OLoRA) and a hook."""
    reference = copy.deepcopy(base).eval()
    with torch.no_grad():
        h0 = base(**inputs, output_hidden_states=True).hidden_states[0]  # (B, T, hidden)
    modules = dict(reference.named_modules())
    for name, layer in lora_modules(model).items():
        A, B = layer.lora_A["default"].weight.detach(), layer.lora_B["default"].weight.detach()
        A0, B0, moves_base = initial[name]
        module = modules[name]
        if moves_base:
            module.weight.data -= scaling * B0 @ A0  # (out, in)
        boosted = name.rsplit(".", 1)[-1] in BOOSTED

        def hook(_, args, out, A=A, B=B, boosted=boosted):
            x = args[0]
            mixed = (1 - LAM) * x + LAM * h0 if boosted else x
            return out + scaling * (mixed @ A.T) @ B.T

        module.register_forward_hook(hook)
    trained_head = dict(model.named_parameters()).get(
        "base_model.model.lm_head.modules_to_save.default.weight"
    )
    if trained_head is not None:
        reference.lm_head.weight.data = trained_head.detach().clone()
    with torch.no_grad():
        return reference(**inputs).logits


@pytest.mark.parametrize("option", list(OPTIONS))
def test_boosted_option_equals_the_formula_reloads_and_exports_exactly(tokenizer, inputs, tmp_path, option):
    config = finetune_config(**OPTIONS[option])
    peft_config = build_peft_config(config)
    base = build_tiny_model("llama", len(tokenizer), initializer_range=0.2)
    torch.manual_seed(0)
    model = get_sibo_model(copy.deepcopy(base), peft_config, lam=LAM, targets="all").eval()
    scaling = ALPHA / math.sqrt(R) if config.use_rslora else ALPHA / R
    moves_base = config.init_lora_weights in ("pissa", "olora")
    original = dict(base.named_modules())
    initial = {}
    for name, layer in lora_modules(model).items():
        assert layer.scaling["default"] == scaling
        A0, B0 = (
            layer.lora_A["default"].weight.detach().clone(),
            layer.lora_B["default"].weight.detach().clone(),
        )
        initial[name] = (A0, B0, moves_base)
        W0, held = original[name].weight, layer.base_layer.weight
        if moves_base:  # the base holds W0 - s·B0·A0
            torch.testing.assert_close(held, W0 - scaling * B0 @ A0, atol=1e-6, rtol=0)
            if option == "pissa":  # s·B0·A0 is W0's top-r SVD part
                U, S, Vh = torch.linalg.svd(W0)
                torch.testing.assert_close(
                    scaling * B0 @ A0, U[:, :R] @ torch.diag(S[:R]) @ Vh[:R], atol=1e-5, rtol=0
                )
            else:  # OLoRA: B0·A0 is W0's first r columns of Q times first r rows of R (W0 = QR)
                Q, Rq = torch.linalg.qr(W0)
                torch.testing.assert_close(B0 @ A0, Q[:, :R] @ Rq[:R], atol=1e-5, rtol=0)
        else:
            assert torch.equal(held, W0)
    adapted = {name.rsplit(".", 1)[-1] for name in initial}
    assert adapted == (set(LINEAR) if option == "all-linear" else set(config.target_modules))
    boosted = {layer.name.rsplit(".", 1)[-1] for layer in find_boost(model).layers}
    assert boosted == adapted & BOOSTED

    train_a_little(model)
    with torch.no_grad():
        got = model(**inputs).logits
    torch.testing.assert_close(
        got, reference_logits(base, model, inputs, scaling, initial), atol=1e-5, rtol=0
    )

    # save/load onto the untouched base: PiSSA/OLoRA move it again on load, identically
    model.save_pretrained(tmp_path / "adapter")
    reloaded = load_sibo_model(copy.deepcopy(base), tmp_path / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).logits, got, atol=1e-6, rtol=0)

    # sibo export: the merged base + the λ·ΔW·h0 residual reproduce the logits
    report = export_adapter(reloaded, tokenizer, ExportConfig(tmp_path / "export"))
    assert report.exact
    exported = load_model(str(tmp_path / "export"))[0].eval()
    with torch.no_grad():
        # float32 merging: W0 - s·B0·A0 + s·B·A rounds like W0 (OLoRA's B0·A0 is as large as W0)
        torch.testing.assert_close(exported(**inputs).logits, got, atol=1e-5, rtol=1e-4)


def test_flags_reach_peft(tmp_path):
    config = parse_config(["--base_model", "m", "--use_rslora", "--init_lora_weights", "PiSSA",
                           "--loraplus_lr_ratio", "16", "--target_modules", "all-linear",
                           "--modules_to_save", '["lm_head","embed_tokens"]'])  # fmt: skip
    assert (config.use_rslora, config.init_lora_weights, config.loraplus_lr_ratio) == (True, "pissa", 16.0)
    peft_config = build_peft_config(config)
    assert (peft_config.use_rslora, peft_config.init_lora_weights) == (True, "pissa")
    assert peft_config.target_modules == "all-linear"
    assert peft_config.modules_to_save == ["lm_head", "embed_tokens"]
    default = build_peft_config(parse_config(["--base_model", "m"]))
    assert (default.use_rslora, default.init_lora_weights, default.modules_to_save) == (False, True, None)
    assert (
        build_peft_config(
            parse_config(["--base_model", "m", "--init_lora_weights", "False"])
        ).init_lora_weights
        is False
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"init_lora_weights": "pissa_niter_4"},
         r"--init_lora_weights must be one of true, false, gaussian, orthogonal, pissa, olora, got 'pissa_niter_4'"),
        ({"loraplus_lr_ratio": -1.0}, r"--loraplus_lr_ratio must be 0 \(off\) or a positive finite number, got -1.0"),
        ({"adapter_name": "bottleneck", "use_rslora": True},
         "--use_rslora is a LoRA option; --adapter_name bottleneck does not take it"),
        ({"adapter_name": "bottleneck", "loraplus_lr_ratio": 16.0},
         "--loraplus_lr_ratio is a LoRA option; --adapter_name bottleneck does not take it"),
        ({"modules_to_save": []}, "--modules_to_save is empty"),
    ],
)  # fmt: skip
def test_bad_lora_options_name_the_flag(options, message):
    with pytest.raises(InputError, match=message):
        FinetuneConfig(base_model="m", **options)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--optim", "adafactor"], "--optim adafactor cannot go with --loraplus_lr_ratio: LoRA+ trains with its own "
         "AdamW (adamw_torch or adamw_torch_fused)"),
        (["--optim", "sgd"], "--optim sgd cannot go with --loraplus_lr_ratio: LoRA+ trains with its own AdamW "
         "(adamw_torch or adamw_torch_fused)"),
        (["--optim_args", "amsgrad=True"], "--optim_args cannot go with --loraplus_lr_ratio: LoRA+'s AdamW takes "
         "--adam_beta1, --adam_beta2, --adam_epsilon and --weight_decay"),
    ],
)  # fmt: skip
def test_loraplus_refuses_optimizer_settings_it_would_ignore(flags, message, capsys):
    """LoRA+ builds its own AdamW: another --optim, or --optim_args, would silently not be the optimizer."""
    argv = ["finetune", "--base_model", "m", "--loraplus_lr_ratio", "16", *flags]
    assert sibo_main(argv) == 2
    assert capsys.readouterr().err.strip() == f"sibo finetune: error: {message}"
    assert parse_config(argv[1:3] + flags).loraplus_lr_ratio == 0.0  # without LoRA+, the Trainer builds it
    for optim in ("adamw_torch", "adamw_torch_fused"):
        assert parse_config([*argv[1:5], "--optim", optim]).optim == optim


def test_loraplus_steps_b_ratio_times_faster_than_a_and_lambda(tokenizer, inputs):
    """One AdamW step from zero state moves each weight by lr·g/(|g| + eps): B by ratio × lr, A and λ by lr."""
    lr, ratio, eps = 1e-3, 16.0, 1e-8
    model = get_sibo_model(build_tiny_model("llama", len(tokenizer)), build_peft_config(finetune_config()),
                           lam=LAM, targets="all", learnable_lambda=True)  # fmt: skip
    train_a_little(model)  # B ≠ 0, so that A has a gradient too
    optimizer = loraplus_optimizer(model, lr, ratio, eps=eps)
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    before = {name: p.detach().clone() for name, p in trainable.items()}
    model(**inputs, labels=inputs["input_ids"]).loss.backward()
    optimizer.step()
    kinds = {"lora_A": lr, "lora_B": ratio * lr, "sibo_lambdas": lr}
    assert {next(k for k in kinds if k in name) for name in trainable} == set(kinds)
    for name, p in trainable.items():
        rate = next(rate for kind, rate in kinds.items() if kind in name)
        step = -rate * p.grad / (p.grad.abs() + eps)
        torch.testing.assert_close(p.detach() - before[name], step, atol=1e-9, rtol=1e-4, msg=name)


@pytest.mark.integration
def test_finetune_with_loraplus_steps_b_at_ratio_times_the_rate(tmp_path, tokenizer):
    """Through `sibo finetune`: B starts at 0, so after one step every entry of B is ±ratio·lr (Adam's first step)."""
    from safetensors.torch import load_file

    from sibo.cli import main as sibo_main

    build_tiny_model("llama", len(tokenizer)).save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    records = [{"instruction": f"Add {i} and {i}.", "output": f"{2 * i}"} for i in range(4)]
    (tmp_path / "d.json").write_text(json.dumps(records))
    steps = {}
    for name, ratio in (("plain", "0"), ("loraplus", "4")):
        argv = ["finetune", "--base_model", str(tmp_path / "base"), "--data_path", str(tmp_path / "d.json"),
                "--output_dir", str(tmp_path / name), "--val_set_size", "0", "--batch_size", "4",
                "--micro_batch_size", "4", "--max_steps", "1", "--warmup_steps", "0", "--learning_rate", "1e-3",
                "--lora_dropout", "0", "--target_modules", "q_proj,v_proj", "--sibo_targets", "attn",
                "--loraplus_lr_ratio", ratio]  # fmt: skip
        assert sibo_main(argv) == 0
        weights = load_file(tmp_path / name / "adapter_model.safetensors")
        steps[name] = max(w.abs().max().item() for key, w in weights.items() if "lora_B" in key)
    assert steps["plain"] == pytest.approx(1e-3, rel=1e-3)
    assert steps["loraplus"] == pytest.approx(4e-3, rel=1e-3)
