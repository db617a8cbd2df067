"""LoRA+ (Hayou, Ghosh, Yu 2024): B learns `loraplus_lr_ratio` times faster than A.

The optimizer is PEFT's `create_loraplus_optimizer` (AdamW, the Trainer's settings: FinetuneConfig refuses
any other --optim, and --optim_args, with --loraplus_lr_ratio). PEFT gives the
raised rate to B and to every 1-D parameter (biases, DoRA's magnitudes); SIBO's learnable λ logits
are not LoRA weights: they keep the base rate (or --lambda_lr), in a group of their own without weight decay. The
Trainer builds the optimizer after it has placed (and, under FSDP, wrapped) the model, so the
optimizer is made there, in `create_optimizer`.
"""

from __future__ import annotations

import torch

from sibo.train.trainer import SiboTrainer, with_lambda_rate


def loraplus_optimizer(
    model: torch.nn.Module,
    learning_rate: float,
    loraplus_lr_ratio: float,
    weight_decay: float = 0.0,
    lambda_lr: float | None = None,
    **adamw,
) -> torch.optim.Optimizer:
    """AdamW with B's learning rate `loraplus_lr_ratio` × learning_rate, A's learning_rate, λ's (without decay)
    `lambda_lr` or learning_rate."""
    from peft.optimizers import create_loraplus_optimizer

    optimizer = create_loraplus_optimizer(
        model,
        torch.optim.AdamW,
        lr=learning_rate,
        loraplus_lr_ratio=loraplus_lr_ratio,
        loraplus_weight_decay=weight_decay,
        **adamw,
    )
    return with_lambda_rate(optimizer, model, lambda_lr or learning_rate)


class LoraPlusTrainer(SiboTrainer):
    """transformers' Trainer whose optimizer is LoRA+'s; everything else (schedule, DDP, FSDP) is the Trainer's."""

    def __init__(self, *args, loraplus_lr_ratio: float, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.loraplus_lr_ratio = loraplus_lr_ratio

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            args = self.args
            self.optimizer = loraplus_optimizer(
                self.model if model is None else model,
                args.learning_rate,
                self.loraplus_lr_ratio,
                weight_decay=args.weight_decay,
                lambda_lr=self.lambda_lr,
                betas=(args.adam_beta1, args.adam_beta2),
                eps=args.adam_epsilon,
                fused=args.optim == "adamw_torch_fused",
            )
        return self.optimizer
