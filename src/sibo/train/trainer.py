"""transformers' Trainer, with SIBO's learnable λ kept out of weight decay whatever `--optim` builds, the
best checkpoint judged among saved steps only, and length-grouped batches that a resumed run replays exactly.

The Trainer puts every parameter whose name is not a bias or a norm into its weight-decay group. SIBO's
λ logits (θ in λ = sigmoid(θ), one per block) are neither LoRA weights nor a quantity weight decay should
pull towards 0 (that is λ = 0.5, an arbitrary point): they go with the no-decay group, at --learning_rate,
or in a group of their own at --lambda_lr (Adam moves a logit by about its learning rate per step, so at a
LoRA rate λ barely moves).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from transformers import Trainer
from transformers.trainer_pt_utils import LengthGroupedSampler
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

logger = logging.getLogger(__name__)

BATCH_ORDER_FILE = "sibo_batch_order"  # in each checkpoint: its padded batches were drawn by (seed, epoch)
LAMBDA_PARAMETERS = "sibo_lambdas"  # where sibo.core.peft_model keeps the learnable λ logits


def is_lambda(name: str) -> bool:
    """Whether the parameter `name` is one of SIBO's learnable λ logits."""
    return LAMBDA_PARAMETERS in name.split(".")


def with_lambda_rate(
    optimizer: torch.optim.Optimizer, model: torch.nn.Module, lr: float
) -> torch.optim.Optimizer:
    """`optimizer` with SIBO's λ logits moved into a parameter group of their own, at `lr`, without weight decay."""
    lambdas = [p for name, p in model.named_parameters() if p.requires_grad and is_lambda(name)]
    for group in optimizer.param_groups:
        group["params"] = [p for p in group["params"] if all(p is not lam for lam in lambdas)]
    if lambdas:
        optimizer.add_param_group({"params": lambdas, "lr": lr, "weight_decay": 0.0})
    return optimizer


class SiboTrainer(Trainer):
    """The Trainer, with λ's logits in the no-decay group of whichever optimizer it builds, and with the
    benchmarks' accuracies (`accuracy`: sibo.eval.during_training) among the evaluation metrics."""

    accuracy = None  # an AccuracyDuringTraining, set by the recipe when --eval_datasets asks for one
    lambda_lr: float | None = None  # --lambda_lr, set by the recipe (None: λ trains at --learning_rate)
    resuming_from: str | bool | None = None  # train's resume_from_checkpoint, read by _get_train_sampler

    def get_decay_parameter_names(self, model) -> list[str]:
        return [name for name in super().get_decay_parameter_names(model) if not is_lambda(name)]

    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        if self.optimizer is not None or self.lambda_lr is None:
            return super().create_optimizer(model)
        return with_lambda_rate(
            super().create_optimizer(model), self.model if model is None else model, self.lambda_lr
        )

    def train(self, resume_from_checkpoint: str | bool | None = None, *args, **kwargs):
        self.resuming_from = resume_from_checkpoint
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        super().save_model(output_dir, _internal_call)
        if (
            output_dir
            and Path(output_dir).name.startswith(f"{PREFIX_CHECKPOINT_DIR}-")
            and self.args.should_save
        ):
            # before trainer_state.json; the folder may not exist yet (FSDP saves sharded weights later)
            Path(output_dir).mkdir(parents=True, exist_ok=True)
            (Path(output_dir) / BATCH_ORDER_FILE).write_text("seed, epoch\n")

    def _get_train_sampler(self, train_dataset=None):
        sampler = super()._get_train_sampler(train_dataset)
        if not isinstance(sampler, LengthGroupedSampler):
            return sampler  # packed runs: accelerate's SeedableRandomSampler already draws from (data_seed + epoch)
        resuming = self.resuming_from
        if isinstance(resuming, str) and not (Path(resuming) / BATCH_ORDER_FILE).is_file():
            logger.info(
                "%s was written before batch orders drawn by (seed, epoch): its run keeps its own", resuming
            )
            return sampler
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        return EpochSeededLengthGroupedSampler(
            sampler.batch_size, sampler.lengths, seed, lambda: int(self.state.epoch)
        )

    def _determine_best_metric(self, metrics: dict[str, float], trial) -> bool:
        # transformers records the best metric at every evaluation but keeps a best checkpoint only where one is
        # saved: with --save_step a multiple of --eval_step, a best unsaved step would leave an older adapter as
        # "the best", beside another step's metric. Only saved steps compete, as before transformers 5.
        if self.state.global_step % self.args.save_steps:
            return False
        return super()._determine_best_metric(metrics, trial)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # evaluate() logs its metrics dict before returning it: adding to it here puts the accuracies in the
        # log history and integrations, and in the metrics that pick the best checkpoint and stop early
        if self.accuracy is not None and "eval_loss" in logs:
            logs.update(self.accuracy.scores(self.model, self.state.global_step))
        super().log(logs, start_time)


class EpochSeededLengthGroupedSampler(LengthGroupedSampler):
    """transformers' length-grouped order, drawn from (seed, the Trainer's epoch) instead of the global RNG.

    Resumed mid-epoch, the Trainer draws the epoch's order before it restores the checkpoint's RNG (trainer.py
    `_run_epoch`), so from the second epoch on a resumed run trained on other batches than an unbroken one. The epoch
    is read from the Trainer's state (`epoch()`, e.g. 1 at 1.5) when the order is drawn, not taken from `set_epoch`,
    which accelerate does not pass through a resumed DDP loader's SkipBatchSampler(BatchSamplerShard(…)).
    """

    def __init__(self, batch_size: int, lengths: list[int], seed: int, epoch: Callable[[], int]) -> None:
        super().__init__(batch_size, lengths=lengths, generator=torch.Generator())
        self.seed = seed
        self.trainer_epoch = epoch

    def __iter__(self):
        # from (seed, epoch) together: seed + epoch would give seed s in epoch 1 seed s + 1's first order
        self.generator.manual_seed(
            int(np.random.SeedSequence([self.seed, self.trainer_epoch()]).generate_state(1)[0])
        )
        return super().__iter__()
