"""Every transformers `TrainingArguments` setting a fine-tune can use, as `sibo finetune` flags of the same
name, generated from transformers' own dataclass: `--lr_scheduler_type cosine --weight_decay 0.1 --optim
adafactor --neftune_noise_alpha 5 …`. A new transformers release brings its new settings with it.

The fields are read from transformers' source (its `TrainingArguments` dataclass: names, types, defaults,
help) rather than imported: importing it imports torch, and `sibo finetune --help` must stay fast. The
values are checked against the real dataclass when a run is configured (`check_trainer_accepts`).
Settings sibo decides itself — batch sizes, steps, seeds, evaluation and save cadence, precision,
logging integrations — keep their upstream flags (`FinetuneConfig`) and are left out here (`SIBO_OWNED`).
"""

from __future__ import annotations

import ast
import importlib.util
import json
import math
from dataclasses import field, fields, make_dataclass
from functools import cache
from pathlib import Path

from sibo.errors import InputError

GROUP = "trainer (transformers' TrainingArguments, by their own names)"

# Set by sibo from its own flags (upstream's names) or decided by the recipe; see training_arguments().
SIBO_OWNED = frozenset({
    "output_dir", "per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
    "num_train_epochs", "max_steps", "learning_rate", "warmup_steps", "bf16", "fp16", "use_cpu",
    "accelerator_config", "logging_strategy", "logging_steps", "logging_nan_inf_filter", "use_liger_kernel",
    "eval_strategy", "eval_steps", "save_strategy", "save_steps", "save_total_limit", "load_best_model_at_end",
    "train_sampling_strategy", "activation_checkpointing", "activation_checkpointing_kwargs",
    "gradient_checkpointing", "gradient_checkpointing_kwargs", "ddp_find_unused_parameters",
    "remove_unused_columns", "report_to", "run_name", "seed", "data_seed", "resume_from_checkpoint",
    "use_cache", "disable_tqdm", "log_level", "log_level_replica", "auto_find_batch_size",
})  # fmt: skip
# Not for a sibo fine-tune: Hub pushing (sibo writes folders), predictions and custom metrics (the Trainer
# here computes the loss only), script switches, checkpoints that could not resume, objects no flag can hold.
NOT_FOR_FINETUNE = frozenset({
    "do_train", "do_eval", "do_predict", "local_rank", "push_to_hub", "hub_token", "hub_private_repo",
    "hub_model_id", "hub_strategy", "hub_always_push", "hub_revision", "project", "trackio_space_id",
    "trackio_bucket_id", "trackio_static_space_id", "prediction_loss_only", "include_for_metrics",
    "batch_eval_metrics", "eval_do_concat_batches", "eval_use_gather_object", "eval_accumulation_steps",
    "label_names", "length_column_name", "parallelism_config", "save_only_model", "enable_jit_checkpoint",
    "restore_callback_states_from_checkpoint", "debug",
})  # fmt: skip
# Where sibo's default differs from transformers': the optimizer is chosen per device (see training_arguments).
DEFAULTS = {"optim": None, "metric_for_best_model": None}
# Given by flag but decided with sibo's own settings: the optimizer's device default, the metric's validation.
DECIDED_BY_SIBO = ("optim", "metric_for_best_model")
# Schedulers that step on the validation metric, and those that need a floor in --lr_scheduler_kwargs.
ON_VALIDATION = ("reduce_lr_on_plateau", "greedy")
WITH_MIN_LR = ("cosine_with_min_lr", "cosine_warmup_with_min_lr")
HELPS = {
    "optim": "the optimizer (default: adamw_torch_fused on a GPU, adamw_torch on CPU, as the paper's AdamW)",
    "metric_for_best_model": "the validation metric that picks the best checkpoint, e.g. "
    "eval_AddSub_accuracy with --eval_datasets (default: eval_loss)",
}


@cache
def _source(module: str) -> ast.Module:
    spec = importlib.util.find_spec("transformers")
    path = Path(spec.submodule_search_locations[0]) / f"{module}.py"
    return ast.parse(path.read_text(encoding="utf-8"))


def _enum_values(name: str) -> tuple[str, ...] | None:
    """The string values of one of transformers' ExplicitEnum classes (SchedulerType, OptimizerNames, …)."""
    for module in ("training_args", "trainer_utils"):
        for node in _source(module).body:
            if isinstance(node, ast.ClassDef) and node.name == name:
                return tuple(
                    item.value.value
                    for item in node.body
                    if isinstance(item, ast.Assign) and isinstance(item.value, ast.Constant)
                )
    return None


def _kind(annotation: str, default: object) -> tuple[str, tuple[str, ...] | None]:
    """The annotation as the flag generator's type (sibo.cli._flags), and the choices of an enum-typed field."""
    parts = {part.strip() for part in annotation.replace("Optional[", "").rstrip("]").split("|")}
    optional = " | None" if default is None or "None" in parts else ""
    enums = [values for part in parts if (values := _enum_values(part))]
    if enums:
        return "str" + optional, enums[0]
    if any(part.startswith("list") for part in parts):
        return "list[str] | None", None
    for simple in ("bool", "int", "float"):
        if parts - {"None"} == {simple}:
            return simple + optional, None
    return "str" + optional, None  # str, dicts (as JSON text) and unions of them


def _transformers_fields() -> list[tuple[str, str, object, str]]:
    """(name, annotation, default, help) of each field of transformers' TrainingArguments, in its order."""
    cls = next(
        node
        for node in _source("training_args").body
        if isinstance(node, ast.ClassDef) and node.name == "TrainingArguments"
    )
    found = []
    for item in cls.body:
        if not (isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)):
            continue
        if not (isinstance(item.value, ast.Call) and getattr(item.value.func, "id", "") == "field"):
            continue
        keywords = {keyword.arg: keyword.value for keyword in item.value.keywords}
        if "default" not in keywords:
            continue  # a default_factory field: none is a setting a flag could give
        help_text = _help_of(keywords.get("metadata"))
        try:
            default = ast.literal_eval(keywords["default"])
        except ValueError:  # computed (optim's depends on the torch version): sibo's default, else no flag
            if item.target.id not in DEFAULTS:
                continue
            default = DEFAULTS[item.target.id]
        found.append((item.target.id, ast.unparse(item.annotation), default, help_text))
    return found


def _help_of(metadata: ast.expr | None) -> str:
    """metadata={"help": "…", …}'s help text (other keys may hold calls, which are not read)."""
    if isinstance(metadata, ast.Dict):
        for key, value in zip(metadata.keys, metadata.values, strict=True):
            if isinstance(key, ast.Constant) and key.value == "help":
                try:
                    return ast.literal_eval(value)
                except ValueError:
                    return ""
    return ""


def _settings_fields() -> list[tuple]:
    made = []
    for name, annotation, default, help_text in _transformers_fields():
        if name in SIBO_OWNED or name in NOT_FOR_FINETUNE:
            continue
        default = DEFAULTS.get(name, default)
        kind, choices = _kind(annotation, default)
        metadata = {"help": HELPS.get(name, help_text.split(". ")[0].rstrip(".")), "group": GROUP}
        if choices:
            metadata["choices"] = choices
        made.append((name, kind, field(default=default, metadata=metadata)))
    return made


TrainerSettings = make_dataclass("TrainerSettings", _settings_fields())
TrainerSettings.__doc__ = (
    "transformers' TrainingArguments settings that a sibo fine-tune passes through as given."
)


def trainer_settings(config) -> dict:
    """The TrainingArguments keywords `config` (a TrainerSettings, or a config that inherits one) holds."""
    return {f.name: getattr(config, f.name) for f in fields(TrainerSettings)}


def passed_through(config) -> dict:
    """The settings given (not None) that go to TrainingArguments as they are."""
    return {k: v for k, v in trainer_settings(config).items() if v is not None and k not in DECIDED_BY_SIBO}


def evaluation_settings(config, validating: bool) -> dict:
    """How a run validates and checkpoints (`config`: a FinetuneConfig): validation every --eval_step, a
    checkpoint every --save_step, the best by --metric_for_best_model loaded at the end. One place, so that
    check_trainer_accepts asks transformers about the arguments the recipe will build."""
    return {
        "eval_strategy": "steps" if validating else "no",
        "eval_steps": config.eval_step if validating else None,
        "save_strategy": "steps",
        "save_steps": config.save_step,
        "save_total_limit": config.save_total_limit,
        "load_best_model_at_end": validating,
        "metric_for_best_model": (config.metric_for_best_model or "eval_loss") if validating else None,
    }


def check_trainer_settings(config) -> None:
    """Bad values as one line naming the flag: numbers in range and JSON settings that parse (no import);
    `check_trainer_accepts` asks transformers itself."""
    settings = trainer_settings(config)
    for name, value in settings.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise InputError(f"--{name} must be a finite number, got {value}")
        if isinstance(value, str) and value.lstrip().startswith("{"):  # a dict setting, as JSON
            try:
                json.loads(value)
            except json.JSONDecodeError as error:
                raise InputError(f"--{name} is not valid JSON: {error}") from None
    for name in ("weight_decay", "max_grad_norm", "label_smoothing_factor", "adam_epsilon"):
        if settings[name] < 0:
            raise InputError(f"--{name} must be at least 0, got {settings[name]}")
    for name in ("adam_beta1", "adam_beta2"):
        if not 0 <= settings[name] < 1:
            raise InputError(f"--{name} must be in [0, 1), got {settings[name]}")
    if settings["neftune_noise_alpha"] is not None and settings["neftune_noise_alpha"] <= 0:
        raise InputError(f"--neftune_noise_alpha must be positive, got {settings['neftune_noise_alpha']}")
    _check_min_lr(settings["lr_scheduler_type"], settings["lr_scheduler_kwargs"])


def _check_min_lr(scheduler: str, kwargs: str | dict | None) -> None:
    """The min-lr cosines need one floor, or get_scheduler raises at the first training step."""
    if scheduler not in WITH_MIN_LR:
        return
    if isinstance(kwargs, str):
        kwargs = json.loads(kwargs) if kwargs.lstrip().startswith("{") else {}  # checked as JSON above
    if len({"min_lr", "min_lr_rate"} & set(kwargs or {})) != 1:
        raise InputError(
            f"--lr_scheduler_type {scheduler} needs exactly one of min_lr or min_lr_rate in "
            """--lr_scheduler_kwargs, e.g. '{"min_lr_rate": 0.1}'"""
        )


def check_trainer_accepts(config) -> None:
    """transformers' own checks of the settings beside the run's own evaluation settings (a plateau schedule
    needs validation), then whether the optimizer can be built here (paged_adamw_8bit needs bitsandbytes, …);
    imports torch."""
    from transformers import Trainer, TrainingArguments

    given = passed_through(config) | ({"optim": config.optim} if config.optim else {})
    validating = config.val_set_size > 0
    try:
        args = TrainingArguments(
            output_dir=None,
            use_cpu=True,
            report_to="none",
            **given,
            **evaluation_settings(config, validating),
        )
        Trainer.get_optimizer_cls_and_kwargs(args)
    except (ValueError, TypeError, ImportError, KeyError) as error:
        reason = " ".join(str(error).split())
        named = next((f"--{name}" for name in given if name in reason), "a trainer setting")
        raise InputError(f"{named}: {reason}") from None
