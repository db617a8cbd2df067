"""What `sibo finetune` can be asked to do: one dataclass, every field documented and checked.

The field names, defaults and meanings are upstream's (LLM-Adapters' finetune.py, plus the SIBO
paper's --embedding_lambda and --ffn); the rest are ours. `sibo.cli.finetune` builds its flags
from these fields, so --help and the checks below never drift apart.
"""

from __future__ import annotations

import importlib.util
import logging
import math
from dataclasses import dataclass, field

from sibo.checkpoint.config import BaseModelSource, ModelLoading
from sibo.core.config import TARGET_POLICIES, SiboConfig
from sibo.errors import InputError
from sibo.eval.config import accuracy_key, benchmark_setting
from sibo.eval.tasks import default_data_dir, resolve_datasets
from sibo.prompts import TEMPLATES, TemplateChoice
from sibo.train.trainer_settings import (
    ON_VALIDATION,
    TrainerSettings,
    check_trainer_accepts,
    check_trainer_settings,
)

logger = logging.getLogger(__name__)

ADAPTERS = ("lora", "dora", "bottleneck")
# peft's init_lora_weights whose adapters reload exactly: A and B are saved, and the base weights that PiSSA
# (an SVD) and OLoRA (a QR) move, PEFT moves again, identically, when it loads the adapter. pissa_niter_N
# (a randomised SVD) cannot be repeated on reload; eva, corda, loftq and lora_ga need data or more settings.
LORA_INITS = ("true", "false", "gaussian", "orthogonal", "pissa", "olora")
ACCURACY = "accuracy during training"
# The optimizers LoRA+ builds: its own AdamW (sibo.train.loraplus), fused or not.
LORAPLUS_OPTIMS = ("adamw_torch", "adamw_torch_fused")


def _field(default, help: str, group: str, **metadata):
    return field(default=default, metadata={"help": help, "group": group, **metadata})


@dataclass
class FinetuneConfig(TemplateChoice, ModelLoading, BaseModelSource, TrainerSettings):
    """A fine-tuning run, as upstream's flags describe it, plus transformers' TrainingArguments by name.

    The shared groups' fields come first (base_model, the loading settings, template); run_config.json
    stores every field by name."""

    # model and data
    data_path: str = _field(
        "yahma/alpaca-cleaned",
        "instruction records {instruction, input, output} or chat records {messages} / {conversations}: "
        "a JSON list, .jsonl, .csv or .parquet file, a datasets.save_to_disk folder, or a datasets hub name; "
        "several, comma-separated, are concatenated (or mixed by --data_ratios)",
        "model and data",
    )
    data_columns: str = _field(
        "",
        "the data's names for our fields, e.g. instruction=question,output=answer (unset: the same names); "
        "with several sources, one mapping for all or one per source separated by ';'",
        "model and data",
    )
    data_ratios: str = _field(
        "",
        "with several --data_path sources (a.json,b.jsonl,hub/name): the share of each, e.g. 0.7,0.2,0.1, "
        "interleaved with --seed until the first source runs out (unset: the sources concatenated)",
        "model and data",
    )
    output_dir: str = _field("./lora-alpaca", "where checkpoints and the final adapter go", "model and data")
    overwrite: bool = _field(
        False,
        "hand output_dir over to this run: what another run wrote there (adapter, checkpoints, metrics) is "
        "deleted first",
        "model and data",
    )
    adapter_name: str = _field("lora", "adapter type", "model and data", choices=ADAPTERS)
    attn_implementation: str | None = _field(
        None,
        "the model's attention: eager, sdpa, flash_attention_2, … (default: the model's own)",
        "model and data",
    )
    # training
    batch_size: int = _field(
        128, "global batch size: micro_batch_size × accumulation × processes", "training"
    )
    micro_batch_size: int = _field(4, "examples per forward pass on each process", "training")
    num_epochs: int = _field(3, "passes over the training data", "training")
    max_steps: int = _field(-1, "stop after this many optimizer steps (-1: num_epochs decides)", "training")
    learning_rate: float = _field(3e-4, "peak learning rate (linear warm-up and decay)", "training")
    warmup_steps: int = _field(100, "linear warm-up steps", "training")
    warmup_ratio: float | None = _field(
        None, "warm up over this share of the steps instead of --warmup_steps, in [0, 1)", "training"
    )
    cutoff_len: int = _field(256, "tokens per example; longer records are truncated and counted", "training")
    val_set_size: int = _field(2000, "records held out for validation loss (0: none)", "training")
    eval_step: int = _field(200, "validation loss every this many steps", "training")
    save_step: int = _field(200, "checkpoint every this many steps (a multiple of eval_step)", "training")
    save_total_limit: int = _field(3, "checkpoints kept (the best one is always kept)", "training")
    logging_steps: int = _field(10, "log the training loss every this many steps", "training")
    use_gradient_checkpointing: bool = _field(
        False, "recompute activations in backward to save memory (also --gradient_checkpointing)", "training"
    )
    train_on_inputs: bool | None = _field(
        None,
        "train on the prompt tokens too; False masks them out of the loss (default: True with the alpaca "
        "template, as upstream; False with chat, whose loss covers the assistant turns)",
        "training",
    )
    early_stopping_patience: int | None = _field(
        None,
        "stop when the validation metric (--metric_for_best_model) has not improved for this many evaluations; "
        "the best checkpoint becomes the final adapter (transformers' EarlyStoppingCallback; needs --val_set_size)",
        "training",
    )
    early_stopping_threshold: float = _field(
        0.0, "the least change of the validation metric that counts as an improvement", "training"
    )
    group_by_length: bool = _field(
        False, "batch records of similar length (always on when packing is unavailable)", "training"
    )
    packing: bool | None = _field(
        None,
        "padding-free packed batches when the model keeps packed sequences apart (default: on, but off with "
        "--neftune_noise_alpha, whose noise reads the row length)",
        "training",
    )
    use_liger_kernel: bool = _field(
        False,
        "Liger's fused Triton kernels (RMSNorm, RoPE, SwiGLU, linear + cross-entropy; CUDA, pip install "
        "liger-kernel); off unless measured faster for your model",
        "training",
    )
    seed: int = _field(42, "random seed (sampling order, dropout, adapter initialisation)", "training")
    resume_from_checkpoint: str | None = _field(
        None,
        "a checkpoint directory, 'latest' (the newest complete one in output_dir: half-written or damaged "
        "ones are skipped with a warning naming each), or a final adapter",
        "training",
    )
    # LoRA / DoRA
    lora_r: int = _field(8, "LoRA rank", "LoRA / DoRA")
    lora_alpha: int = _field(16, "LoRA alpha; the branch is scaled by alpha / r", "LoRA / DoRA")
    lora_dropout: float = _field(0.05, "dropout on the LoRA branch input", "LoRA / DoRA")
    target_modules: list[str] | None = _field(
        None,
        'modules to adapt: ["q_proj","k_proj"], [q_proj,k_proj] or q_proj,k_proj (also --lora_target_modules); '
        "unset: the paper's (LoRA: q,k,v,up,down for LLaMA-like models, the equivalents elsewhere; "
        "bottleneck: the FFN)",
        "LoRA / DoRA",
    )
    use_rslora: bool = _field(
        False, "rank-stabilised LoRA: scale the branch by alpha / sqrt(r)", "LoRA / DoRA"
    )
    init_lora_weights: str = _field(
        "true",
        "LoRA initialisation (peft's init_lora_weights): true (B = 0), false (random, for tests), gaussian, "
        "orthogonal, pissa or olora (these two move the base weights: the base reads x, SIBO's branch the mix)",
        "LoRA / DoRA",
    )
    loraplus_lr_ratio: float = _field(
        0.0,
        "LoRA+: B's learning rate is this many times A's (peft's create_loraplus_optimizer; 0: off)",
        "LoRA / DoRA",
    )
    modules_to_save: list[str] | None = _field(
        None,
        "modules trained in full and saved with the adapter, e.g. lm_head (same spellings as --target_modules)",
        "LoRA / DoRA",
    )
    # bottleneck adapters (AdapterH, AdapterP, parallel)
    bottleneck_size: int = _field(256, "bottleneck width", "bottleneck adapter")
    non_linearity: str = _field(
        "tanh", "bottleneck activation (a transformers ACT2FN name)", "bottleneck adapter"
    )
    adapter_dropout: float = _field(0.0, "dropout on the bottleneck adapter input", "bottleneck adapter")
    scaling: float | str = _field(
        1.0, "scale of the adapter output (a number, or 'learned')", "bottleneck adapter"
    )
    use_parallel_adapter: bool = _field(
        False, "parallel adapter instead of sequential (AdapterH)", "bottleneck adapter"
    )
    use_adapterp: bool = _field(
        False, "AdapterP: one adapter after the feed-forward block only", "bottleneck adapter"
    )
    # SIBO
    embedding_lambda: float = _field(0.1, "λ: the share of h0 each boosted branch reads, in [0, 1]", "SIBO")
    ffn: bool | None = _field(
        None,
        "the paper's switch: True boosts the feed-forward branches, False the attention branches (upstream's "
        "code boosts nothing with False; plain PEFT here is --embedding_lambda 0)",
        "SIBO",
    )
    sibo_targets: str | None = _field(
        None,
        "which branches SIBO boosts (default ffn); must agree with --ffn when both are given",
        "SIBO",
        choices=TARGET_POLICIES,
    )
    learnable_lambda: bool = _field(False, "learn one λ per block, starting at --embedding_lambda", "SIBO")
    lambda_lr: float | None = _field(
        None,
        "learning rate of the learnt λ's logits (default: --learning_rate, where Adam moves each logit by about "
        "that much per step: 1000 steps at 3e-4 take λ 0.1 at most to 0.13); same schedule as --learning_rate",
        "SIBO",
    )
    # accuracy during training (sibo.eval.during_training): `sibo evaluate`'s benchmark settings, stored as eval_*
    eval_datasets: str = benchmark_setting("datasets", "", group=ACCURACY)
    eval_data_dir: str = benchmark_setting("data_dir", "", group=ACCURACY)
    eval_limit: int | None = benchmark_setting("limit", group=ACCURACY)
    eval_num_beams: int = benchmark_setting("num_beams", group=ACCURACY)
    eval_exclude_seen: bool = benchmark_setting("exclude_seen", group=ACCURACY)
    # experiment tracking
    report_to: str | None = _field(None, "integration to log to: none, wandb, tensorboard, … (default: wandb when "
                                   "--wandb_project is set, else none)", "tracking")  # fmt: skip
    wandb_project: str = _field("", "W&B project (turns on W&B logging)", "tracking")
    wandb_run_name: str = _field("", "W&B run name", "tracking")
    wandb_watch: str = _field("", "W&B watch: false | gradients | all", "tracking")
    wandb_log_model: str = _field("", "W&B log model: false | true", "tracking")

    def __post_init__(self) -> None:
        if not self.base_model:
            raise InputError("--base_model is required (a local model directory or a hub name)")
        if not self.data_path:
            raise InputError("--data_path is required")
        _choose("adapter_name", self.adapter_name, ADAPTERS)
        _choose("template", self.template, TEMPLATES)
        self._check_schedule()
        self._check_early_stopping()
        self._check_accuracy()
        check_trainer_settings(self)
        self._check_validation()
        self._check_packing()
        self.check_loading()
        self._check_adapter()
        self._check_sibo()
        if self.use_liger_kernel and importlib.util.find_spec("liger_kernel") is None:
            raise InputError("--use_liger_kernel needs the liger-kernel package: pip install liger-kernel")
        if self.overwrite and self.resume_from_checkpoint is not None:
            raise InputError(
                "--overwrite starts output_dir afresh: it cannot go with --resume_from_checkpoint"
            )
        self._check_against_libraries()  # last: it imports torch (seconds), so a plain bad value is told first

    def _check_against_libraries(self) -> None:
        """What only transformers can judge (the trainer settings, the activation, the integrations) and the
        data sources' columns (imported here, not at the top: these modules import torch, and --help must not)."""
        from transformers.activations import ACT2FN

        from sibo.data_sources import split_sources

        check_trainer_accepts(self)
        if self.non_linearity not in ACT2FN:
            raise InputError(
                f"--non_linearity {self.non_linearity!r} is not a transformers activation (tanh, relu, gelu, …)"
            )
        self._check_tracking()
        split_sources(self.data_path, self.data_columns, self.data_ratios)

    def _check_schedule(self) -> None:
        """Sizes, steps, the learning rate and the seed in range; a batch is whole micro-batches, and the
        best adapter is picked among validated checkpoints."""
        counts = ("batch_size", "micro_batch_size", "num_epochs", "cutoff_len", "eval_step", "save_step",
                  "save_total_limit", "logging_steps")  # fmt: skip
        for name in counts:
            _at_least(name, getattr(self, name), 1)
        _at_least("val_set_size", self.val_set_size, 0)
        _at_least("warmup_steps", self.warmup_steps, 0)
        if self.warmup_ratio is not None and not 0 <= self.warmup_ratio < 1:
            raise InputError(f"--warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.max_steps == 0 or self.max_steps < -1:
            raise InputError(f"--max_steps must be -1 or at least 1, got {self.max_steps}")
        if not 0 < self.learning_rate < math.inf:
            raise InputError(f"--learning_rate must be a positive finite number, got {self.learning_rate}")
        if isinstance(self.seed, bool) or not 0 <= self.seed < 2**32:
            raise InputError(f"--seed must be in 0…{2**32 - 1}, got {self.seed}")
        if self.batch_size % self.micro_batch_size:
            raise InputError(
                f"--batch_size {self.batch_size} is not a multiple of --micro_batch_size {self.micro_batch_size}"
            )
        if self.val_set_size > 0 and self.save_step % self.eval_step:
            raise InputError(
                f"--save_step {self.save_step} must be a multiple of --eval_step {self.eval_step}: "
                "the best adapter is picked among validated checkpoints"
            )

    def _check_adapter(self) -> None:
        """The adapter's shape and regularisation: sizes, dropouts, scaling, target modules."""
        for name in ("lora_r", "lora_alpha", "bottleneck_size"):
            _at_least(name, getattr(self, name), 1)
        for name in ("lora_dropout", "adapter_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise InputError(f"--{name} must be in [0, 1), got {getattr(self, name)}")
        if isinstance(self.scaling, str) and self.scaling != "learned":
            raise InputError(f"--scaling must be a number or 'learned', got {self.scaling!r}")
        if not isinstance(self.scaling, str) and not math.isfinite(self.scaling):
            raise InputError(f"--scaling must be a finite number or 'learned', got {self.scaling}")
        if self.target_modules is not None and not self.target_modules:
            raise InputError("--target_modules is empty")
        self._check_lora_options()

    def _check_sibo(self) -> None:
        """The SIBO flags as one SiboConfig (which holds the λ rules): `self.sibo`, what the recipe boosts with."""
        implied = None if self.ffn is None else ("ffn" if self.ffn else "attn")
        if self.sibo_targets is not None:
            _choose("sibo_targets", self.sibo_targets, TARGET_POLICIES)
            if implied is not None and implied != self.sibo_targets:
                raise InputError(f"--ffn {self.ffn} means --sibo_targets {implied}, not {self.sibo_targets}")
        self.sibo_targets = self.sibo_targets or implied or "ffn"
        # not a field: run_config.json's "config" keeps the flags as given; "resolved" records the SiboConfig
        self.sibo = SiboConfig(
            lam=self.embedding_lambda, targets=self.sibo_targets, learnable_lambda=self.learnable_lambda
        )
        if self.lambda_lr is not None:
            if not self.learnable_lambda:
                raise InputError("--lambda_lr is the learnt λ's learning rate: it needs --learnable_lambda")
            if isinstance(self.lambda_lr, bool) or not 0 < self.lambda_lr < math.inf:
                raise InputError(f"--lambda_lr must be a positive finite number, got {self.lambda_lr}")

    def _check_early_stopping(self) -> None:
        if self.early_stopping_patience is None:
            return
        _at_least("early_stopping_patience", self.early_stopping_patience, 1)
        if not 0 <= self.early_stopping_threshold < math.inf:
            raise InputError(
                f"--early_stopping_threshold must be at least 0, got {self.early_stopping_threshold}"
            )

    def _check_accuracy(self) -> None:
        if not self.eval_datasets:
            return
        if self.val_set_size == 0:
            raise InputError(
                "--eval_datasets scores at each evaluation: set --val_set_size (and --eval_step)"
            )
        if self.eval_limit is not None:
            _at_least("eval_limit", self.eval_limit, 1)
        _at_least("eval_num_beams", self.eval_num_beams, 1)
        resolve_datasets(self.eval_datasets)
        if not self.eval_data_dir:
            self.eval_data_dir = str(default_data_dir())

    def _check_validation(self) -> None:
        """What reads the validation set needs one (else it fails at the first evaluation, or does nothing),
        and the best checkpoint is picked by a metric the evaluations log."""
        needing = {
            "--early_stopping_patience": self.early_stopping_patience is not None,
            "--metric_for_best_model": self.metric_for_best_model is not None,
            "--eval_on_start": self.eval_on_start,
            f"--lr_scheduler_type {self.lr_scheduler_type}": self.lr_scheduler_type in ON_VALIDATION,
        }
        for flag, given in needing.items():
            if given and self.val_set_size == 0:
                raise InputError(f"{flag} needs a validation set: set --val_set_size")
        if self.metric_for_best_model is not None:
            _check_logged_metric(self.metric_for_best_model, self.eval_datasets)

    def _check_packing(self) -> None:
        """Packing unless --neftune_noise_alpha: transformers' NEFTune scales its noise by 1/sqrt(length of a
        row), and a packed row is the whole micro-batch, so the noise would be sqrt(micro-batch) too weak."""
        if self.neftune_noise_alpha is None:
            self.packing = True if self.packing is None else self.packing
        elif self.packing:
            raise InputError(
                "--packing cannot go with --neftune_noise_alpha: NEFTune scales its noise by "
                "1/sqrt(row length), and a packed row holds the whole micro-batch; set --packing False "
                "(or leave it unset)"
            )
        elif self.packing is None:
            logger.info(
                "--neftune_noise_alpha: padded batches, not packed ones, as NEFTune's noise reads the row "
                "length"
            )
            self.packing = False

    def _check_lora_options(self) -> None:
        self.init_lora_weights = str(self.init_lora_weights).lower()
        _choose("init_lora_weights", self.init_lora_weights, LORA_INITS)
        if isinstance(self.loraplus_lr_ratio, bool) or not 0 <= self.loraplus_lr_ratio < float("inf"):
            raise InputError(
                f"--loraplus_lr_ratio must be 0 (off) or a positive finite number, got {self.loraplus_lr_ratio}"
            )
        if self.loraplus_lr_ratio:
            self._check_loraplus_optimizer()
        if self.adapter_name == "bottleneck":
            lora_only = {"use_rslora": self.use_rslora, "init_lora_weights": self.init_lora_weights != "true",
                         "loraplus_lr_ratio": self.loraplus_lr_ratio, "modules_to_save": self.modules_to_save}  # fmt: skip
            for name, given in lora_only.items():
                if given:
                    raise InputError(f"--{name} is a LoRA option; --adapter_name bottleneck does not take it")
        if self.modules_to_save is not None and not self.modules_to_save:
            raise InputError("--modules_to_save is empty")

    def _check_loraplus_optimizer(self) -> None:
        """LoRA+ builds its own AdamW: any other --optim, or --optim_args, would be ignored."""
        if self.optim is not None and self.optim not in LORAPLUS_OPTIMS:
            raise InputError(
                f"--optim {self.optim} cannot go with --loraplus_lr_ratio: LoRA+ trains with its own AdamW "
                f"({' or '.join(LORAPLUS_OPTIMS)})"
            )
        if self.optim_args:
            raise InputError(
                "--optim_args cannot go with --loraplus_lr_ratio: LoRA+'s AdamW takes --adam_beta1, "
                "--adam_beta2, --adam_epsilon and --weight_decay"
            )

    def integrations(self) -> list[str]:
        """--report_to as transformers takes it: a list of names (wandb with --wandb_project, else none)."""
        wanted = self.report_to or ("wandb" if self.wandb_project else "none")
        return [integration.strip() for integration in wanted.split(",")]

    def _check_tracking(self) -> None:
        from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

        for integration in self.integrations():
            if integration not in (*INTEGRATION_TO_CALLBACK, "none", "all"):
                raise InputError(
                    f"--report_to {integration!r} is not an integration transformers knows: use none, "
                    f"all or {', '.join(INTEGRATION_TO_CALLBACK)}"
                )
            module = {"wandb": "wandb", "tensorboard": "tensorboard", "mlflow": "mlflow"}.get(integration)
            if module and importlib.util.find_spec(module) is None:
                raise InputError(
                    f"reporting to {integration} needs the {module} package: pip install {module}"
                )


def _check_logged_metric(metric: str, eval_datasets: str) -> None:
    """--metric_for_best_model must be in every evaluation's metrics, read as transformers reads it (eval_ put
    before a name without it): the validation loss, and each --eval_datasets benchmark's accuracy."""
    tasks = resolve_datasets(eval_datasets) if eval_datasets else []
    logged = ["eval_loss", *(accuracy_key(task.name) for task in tasks)]
    if (metric if metric.startswith("eval_") else f"eval_{metric}") not in logged:
        hint = "" if tasks else " (or eval_<Name>_accuracy for a benchmark of --eval_datasets)"
        raise InputError(
            f"--metric_for_best_model {metric} is not among the metrics each evaluation logs: use "
            f"{', '.join(logged)}{hint}"
        )


def _choose(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise InputError(f"--{name} must be one of {', '.join(allowed)}, got {value!r}")


def _at_least(name: str, value: int, low: int) -> None:
    if isinstance(value, bool) or value < low:
        raise InputError(f"--{name} must be at least {low}, got {value}")
