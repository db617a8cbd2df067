"""TrainingArguments by their own names: generated from transformers, checked in one line, passed to the
Trainer, recorded for reruns; SIBO's learnable λ out of weight decay whatever the optimizer."""

from __future__ import annotations

import json
import math
from dataclasses import MISSING, fields

import pytest
import torch
from peft import LoraConfig
from transformers import TrainingArguments

import sibo
from sibo.cli import main as sibo_main
from sibo.cli.finetune import parse_config
from sibo.errors import InputError
from sibo.testing import build_tiny_model
from sibo.train.config import FinetuneConfig
from sibo.train.loraplus import LoraPlusTrainer
from sibo.train.trainer import SiboTrainer, is_lambda
from sibo.train.trainer_settings import NOT_FOR_FINETUNE, SIBO_OWNED, TrainerSettings, trainer_settings


def test_every_setting_not_owned_by_sibo_is_a_flag_with_transformers_default():
    upstream = {f.name: f for f in fields(TrainingArguments) if f.init}
    generated = {f.name: f for f in fields(TrainerSettings)}
    left_out = set(upstream) - set(generated) - SIBO_OWNED - NOT_FOR_FINETUNE
    assert left_out <= {"include_for_metrics"}  # a default_factory list: no setting a flag gives
    assert {"lr_scheduler_type", "weight_decay", "max_grad_norm", "optim", "adam_beta2", "neftune_noise_alpha",
            "torch_compile", "lr_scheduler_kwargs"} <= set(generated)  # fmt: skip
    for name, made in generated.items():
        if name not in ("optim", "metric_for_best_model"):  # sibo's defaults: per device, eval_loss
            assert made.default == upstream[name].default, name
    assert set(generated) & set(f.name for f in fields(FinetuneConfig)) == set(generated)


def test_flags_parse_and_reach_the_config():
    config = parse_config(["--base_model", "m", "--lr_scheduler_type", "cosine", "--weight_decay", "0.1",
                           "--max_grad_norm", "0.5", "--warmup_ratio", "0.1", "--optim", "adafactor",
                           "--adam_beta2", "0.95", "--neftune_noise_alpha", "5", "--torch_compile",
                           "--attn_implementation", "eager"])  # fmt: skip
    assert trainer_settings(config) | {} == {**trainer_settings(FinetuneConfig(base_model="m")),
        "lr_scheduler_type": "cosine", "weight_decay": 0.1, "max_grad_norm": 0.5, "optim": "adafactor",
        "adam_beta2": 0.95, "neftune_noise_alpha": 5.0, "torch_compile": True}  # fmt: skip
    assert (config.warmup_ratio, config.attn_implementation) == (0.1, "eager")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--lr_scheduler_type", "wiggly"], "argument --lr_scheduler_type: invalid choice: 'wiggly'"),
        (["--optim", "adamw_nonesuch"], "argument --optim: invalid choice: 'adamw_nonesuch'"),
        (["--weight_decay", "-0.1"], r"--weight_decay must be at least 0, got -0.1"),
        (["--adam_beta2", "1.5"], r"--adam_beta2 must be in \[0, 1\), got 1.5"),
        (["--max_grad_norm", "nan"], "--max_grad_norm must be a finite number, got nan"),
        (["--warmup_ratio", "1.5"], r"--warmup_ratio must be in \[0, 1\), got 1.5"),
        (["--neftune_noise_alpha", "0"], "--neftune_noise_alpha must be positive, got 0.0"),
        (["--lr_scheduler_kwargs", "{not json"],
         "^--lr_scheduler_kwargs is not valid JSON: Expecting property name enclosed in double quotes"),
        (["--early_stopping_patience", "2", "--val_set_size", "0"], "--early_stopping_patience needs a validation"),
        (["--early_stopping_patience", "0"], "--early_stopping_patience must be at least 1, got 0"),
    ],
)  # fmt: skip
def test_bad_values_are_one_line_naming_the_flag(argv, message, capsys):
    with pytest.raises(InputError, match=message) as raised:
        parse_config(["--base_model", "m", *argv])
    assert "\n" not in str(raised.value)
    assert sibo_main(["finetune", "--base_model", "m", *argv]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


MIN_LR = (
    """needs exactly one of min_lr or min_lr_rate in --lr_scheduler_kwargs, e.g. '{"min_lr_rate": 0.1}'"""
)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--lr_scheduler_type", "cosine_with_min_lr"], f"--lr_scheduler_type cosine_with_min_lr {MIN_LR}"),
        (["--lr_scheduler_type", "cosine_warmup_with_min_lr", "--lr_scheduler_kwargs", '{"num_cycles": 0.5}'],
         f"--lr_scheduler_type cosine_warmup_with_min_lr {MIN_LR}"),
        (["--lr_scheduler_type", "cosine_with_min_lr", "--lr_scheduler_kwargs", '{"min_lr": 1e-5, "min_lr_rate": 0.1}'],
         f"--lr_scheduler_type cosine_with_min_lr {MIN_LR}"),
    ],
)  # fmt: skip
def test_a_min_lr_schedule_without_its_floor_is_refused_before_training(argv, message, capsys):
    with pytest.raises(InputError) as raised:
        parse_config(["--base_model", "m", *argv])
    assert str(raised.value) == message
    assert sibo_main(["finetune", "--base_model", "m", *argv]) == 2
    assert capsys.readouterr().err.strip() == f"sibo finetune: error: {message}"
    floor = parse_config(["--base_model", "m", *argv[:2], "--lr_scheduler_kwargs", '{"min_lr_rate": 0.1}'])
    assert (floor.lr_scheduler_type, floor.lr_scheduler_kwargs) == (argv[1], '{"min_lr_rate": 0.1}')


def test_transformers_judges_the_settings_with_the_runs_own_validation():
    """check_trainer_accepts builds the evaluation settings the recipe builds: a plateau schedule, which steps on
    the validation loss, is accepted with --val_set_size (the default, 2000)."""
    config = parse_config(["--base_model", "m", "--lr_scheduler_type", "reduce_lr_on_plateau"])
    assert (config.lr_scheduler_type, config.val_set_size) == ("reduce_lr_on_plateau", 2000)


@pytest.mark.integration
def test_a_plateau_schedule_trains_on_the_validation_loss(tiny_training_run, tmp_path):
    tiny_training_run(tmp_path, 16, 1, seed=3)
    output_dir = tmp_path / "run"
    argv = ["finetune", "--base_model", str(tmp_path / "base"), "--data_path", str(tmp_path / "train.json"),
            "--output_dir", str(output_dir), "--batch_size", "2", "--micro_batch_size", "2", "--max_steps", "2",
            "--learning_rate", "1e-2", "--warmup_steps", "0", "--lr_scheduler_type", "reduce_lr_on_plateau",
            "--val_set_size", "4", "--eval_step", "1", "--save_step", "1", "--logging_steps", "1", "--lora_r", "4",
            "--target_modules", "q_proj,up_proj"]  # fmt: skip
    assert sibo_main(argv) == 0
    metrics = json.loads((output_dir / "train_metrics.json").read_text())
    # steps 1 and 2 during training, then the final evaluation of the best adapter
    assert [entry["step"] for entry in metrics["log_history"] if "eval_loss" in entry] == [1, 2, 2]
    assert metrics["metric_for_best_model"] == "eval_loss"
    assert [entry["learning_rate"] for entry in metrics["log_history"] if "learning_rate" in entry] == [
        1e-2,
        1e-2,
    ]


def cosine_with_warmup(step: int, warmup: int, total: int) -> float:
    """transformers' get_cosine_schedule_with_warmup multiplier, written from its formula."""
    if step < warmup:
        return step / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))


def test_cosine_schedule_logs_transformers_formula_and_is_recorded_for_reruns(tiny_training_run, tmp_path):
    tiny_training_run(tmp_path, 16, 1, seed=3)
    output_dir = tmp_path / "run"
    argv = ["finetune", "--base_model", str(tmp_path / "base"), "--data_path", str(tmp_path / "train.json"),
            "--output_dir", str(output_dir), "--batch_size", "2", "--micro_batch_size", "2", "--max_steps", "8",
            "--learning_rate", "1e-2", "--lr_scheduler_type", "cosine", "--warmup_ratio", "0.25",
            "--weight_decay", "0.1", "--val_set_size", "0", "--logging_steps", "1", "--lora_r", "4",
            "--target_modules", "q_proj,up_proj"]  # fmt: skip
    assert sibo_main(argv) == 0
    history = json.loads((output_dir / "train_metrics.json").read_text())["log_history"]
    logged = {entry["step"]: entry["learning_rate"] for entry in history if "learning_rate" in entry}
    assert sorted(logged) == list(range(1, 9))
    for step, rate in logged.items():  # the rate step s trained with: the scheduler's value after s - 1 steps
        assert rate == pytest.approx(1e-2 * cosine_with_warmup(step - 1, 2, 8), abs=1e-9), step

    recorded = json.loads((output_dir / "run_config.json").read_text())["config"]
    assert (recorded["lr_scheduler_type"], recorded["warmup_ratio"], recorded["weight_decay"]) == (
        "cosine",
        0.25,
        0.1,
    )
    rerun = parse_config(
        ["--config", str(output_dir / "run_config.json"), "--output_dir", str(tmp_path / "again")]
    )
    assert trainer_settings(rerun) == {**trainer_settings(FinetuneConfig(base_model="m")),
                                       "lr_scheduler_type": "cosine", "weight_decay": 0.1}  # fmt: skip
    assert rerun.warmup_ratio == 0.25


@pytest.fixture
def boosted_learnable():
    model = build_tiny_model("llama", 64, num_layers=2, hidden_size=32, ffn_size=64)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "up_proj"], init_lora_weights=False)
    return sibo.get_sibo_model(model, config, lam=0.2, learnable_lambda=True)


@pytest.mark.parametrize("optim", ["adamw_torch", "adafactor", "sgd", "loraplus"])
def test_weight_decay_reaches_lora_weights_but_not_lambda(boosted_learnable, tmp_path, optim):
    """One step with zero gradients: only weight decay moves a weight. LoRA's shrink, λ's logits stay."""
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, learning_rate=0.5, weight_decay=0.1,
                             optim="adamw_torch" if optim == "loraplus" else optim, report_to="none")  # fmt: skip
    if optim == "loraplus":
        trainer = LoraPlusTrainer(model=boosted_learnable, args=args, loraplus_lr_ratio=4.0)
    else:
        trainer = SiboTrainer(model=boosted_learnable, args=args)
    optimizer = trainer.create_optimizer()
    trainable = {name: p for name, p in boosted_learnable.named_parameters() if p.requires_grad}
    assert any(is_lambda(name) for name in trainable)
    before = {name: p.detach().clone() for name, p in trainable.items()}
    for p in trainable.values():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    for name, p in trainable.items():
        if is_lambda(name):
            assert torch.equal(p, before[name]), f"{name} was decayed"
            (group,) = [g for g in optimizer.param_groups if any(q is p for q in g["params"])]
            assert group["lr"] == 0.5  # λ keeps the base rate (LoRA+ raises only B's)
        elif "lora_A" in name:
            assert torch.allclose(p, before[name] * (1 - 0.5 * 0.1)), f"{name} was not decayed"


def test_defaults_stay_the_papers_recipe():
    config = FinetuneConfig(base_model="m")
    settings = trainer_settings(config)
    assert (settings["lr_scheduler_type"], settings["weight_decay"], settings["max_grad_norm"]) == (
        "linear",
        0.0,
        1.0,
    )
    assert (settings["optim"], config.warmup_ratio, config.early_stopping_patience) == (None, None, None)
    assert all(f.default is not MISSING for f in fields(TrainerSettings))


@pytest.mark.parametrize("optim", ["adamw_torch", "loraplus"])
def test_lambda_lr_steps_lambda_at_its_own_rate(boosted_learnable, tmp_path, optim):
    """Adam's first step moves each weight by lr·g/(|g| + eps): λ's logits by --lambda_lr, LoRA's by --learning_rate."""
    lr, lambda_lr, eps = 1e-3, 0.05, 1e-8
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, learning_rate=lr, adam_epsilon=eps,
                             optim="adamw_torch", report_to="none")  # fmt: skip
    if optim == "loraplus":
        trainer = LoraPlusTrainer(model=boosted_learnable, args=args, loraplus_lr_ratio=1.0)
    else:
        trainer = SiboTrainer(model=boosted_learnable, args=args)
    trainer.lambda_lr = lambda_lr
    optimizer = trainer.create_optimizer()
    trainable = {name: p for name, p in boosted_learnable.named_parameters() if p.requires_grad}
    held = [id(p) for group in optimizer.param_groups for p in group["params"]]
    assert sorted(held) == sorted(id(p) for p in trainable.values())  # each weight in one group
    before = {name: p.detach().clone() for name, p in trainable.items()}
    input_ids = torch.arange(1, 9).reshape(1, 8)
    boosted_learnable(input_ids=input_ids, labels=input_ids).loss.backward()
    optimizer.step()
    for name, p in trainable.items():
        rate = lambda_lr if is_lambda(name) else lr
        step = -rate * p.grad / (p.grad.abs() + eps)
        torch.testing.assert_close(p.detach() - before[name], step, atol=1e-9, rtol=1e-4, msg=name)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--lambda_lr", "1e-2"], "--lambda_lr is the learnt λ's learning rate: it needs --learnable_lambda"),
        (["--learnable_lambda", "--lambda_lr", "0"], "--lambda_lr must be a positive finite number, got 0.0"),
        (["--learnable_lambda", "--lambda_lr", "inf"], "--lambda_lr must be a positive finite number, got inf"),
    ],
)  # fmt: skip
def test_lambda_lr_refusals(flags, message, capsys):
    assert sibo_main(["finetune", "--base_model", "m", *flags]) == 2
    assert capsys.readouterr().err.strip() == f"sibo finetune: error: {message}"


def test_padded_batch_orders_differ_across_seeds_and_epochs():
    """Each (seed, epoch) draws its own length-grouped order: with seed + epoch, seed 1's second epoch was seed 2's
    first, so neighbouring seeds shared their data orders and a sweep's seed variance shrank."""
    from sibo.train.trainer import EpochSeededLengthGroupedSampler

    lengths = list(range(1, 65))

    def order(seed: int, epoch: int) -> list[int]:
        return list(EpochSeededLengthGroupedSampler(4, lengths, seed, lambda: epoch))

    assert order(1, 1) == order(1, 1) and sorted(order(1, 1)) == list(range(64))
    assert len({tuple(order(seed, epoch)) for seed in (1, 2, 3) for epoch in (0, 1, 2)}) == 9


def test_a_checkpoint_folder_not_made_yet_gets_its_batch_order_marker(tmp_path, monkeypatch):
    """FSDP with sharded state dicts saves no weights in save_model: the checkpoint folder does not exist yet."""
    from transformers import Trainer

    from sibo.train.trainer import BATCH_ORDER_FILE

    monkeypatch.setattr(Trainer, "save_model", lambda self, output_dir=None, _internal_call=False: None)
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    trainer = SiboTrainer(
        model=build_tiny_model("llama", 64, num_layers=1, hidden_size=32, ffn_size=64), args=args
    )
    trainer.save_model(str(tmp_path / "checkpoint-2"), _internal_call=True)
    assert (tmp_path / "checkpoint-2" / BATCH_ORDER_FILE).read_text() == "seed, epoch\n"
    trainer.save_model(str(tmp_path / "final"), _internal_call=True)
    assert not (tmp_path / "final").exists()  # only checkpoints are marked
