"""Which model a verb loads: the shared model flags in small groups, checked before anything loads.

`sibo generate`, `evaluate`, `export` and `serve` build their model flags from `ModelConfig`; `finetune`
and `sweep` inherit the same groups (`BaseModelSource`, `ModelLoading`) through `FinetuneConfig`, `analyze`
`BaseModelSource`, `ModelDtype` and `CpuThreads`; `demo` uses the same rules (`quantization_of`,
`resolve_base_model`, `default_threads`). Nothing here imports torch.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from sibo import prompts
from sibo.core.config import check_lambda
from sibo.errors import InputError
from sibo.prompts import AUTO, CHAT, PromptTemplate, TemplateChoice

logger = logging.getLogger(__name__)

EXPORT_VERB = "export"
FORMATS = ("hf", "state_dict")
# What ModelConfig passes on to load_model, by the same names.
_LOAD_SETTINGS = ("lam", "quantization", "dtype", "trust_remote_code", "task", "threads")
# Config fields that name a model's context length, in the order architectures use them.
_CONTEXT_LENGTH_FIELDS = ("max_position_embeddings", "n_positions", "seq_length", "max_sequence_length")


def quantization_of(load_8bit: bool, load_4bit: bool) -> str | None:
    """'8bit', '4bit' or None: the one rule for --load_8bit and --load_4bit."""
    if load_8bit and load_4bit:
        raise InputError("choose one of --load_8bit and --load_4bit")
    return "8bit" if load_8bit else "4bit" if load_4bit else None


def resolve_base_model(base_model: str | None, weights_path: str | os.PathLike | None) -> str:
    """`base_model`, or when none is given the base recorded in the adapter (adapter_config.json's
    base_model_name_or_path); InputError when there is neither, or the recorded folder is gone."""
    if base_model:
        return str(base_model)
    if weights_path is None:
        raise InputError("--base_model is required without --weights_path")
    config_file = Path(weights_path) / "adapter_config.json"
    recorded = read_adapter_config(weights_path).get("base_model_name_or_path")
    if not recorded or not isinstance(recorded, str):
        from sibo.checkpoint.weights import check_adapter_config

        check_adapter_config(weights_path)  # damage is named first: a record without a base may be damaged
        raise InputError(f"{config_file} records no base model: pass --base_model")
    looks_local = Path(recorded).is_absolute() or recorded.startswith((".", "~"))
    if looks_local and not Path(recorded).expanduser().exists():
        raise InputError(
            f"the base model recorded in {config_file}, {recorded}, does not exist: pass --base_model"
        )
    return recorded


def read_adapter_config(directory: str | os.PathLike) -> dict:
    """adapter_config.json as a JSON object, or InputError naming it: no torch, so a verb can say what it
    loads first (sibo.checkpoint.weights.check_adapter_config checks its values against the PEFT method)."""
    from sibo.files import read_json

    file = Path(directory) / "adapter_config.json"
    if not file.is_file():
        raise InputError(f"no adapter at {directory}: adapter_config.json is missing")
    config = read_json(file)  # empty, truncated, not UTF-8: one line naming the file
    if not isinstance(config, dict):
        raise InputError(f"{file}: damaged: a JSON object is expected, not a {type(config).__name__}")
    return config


def context_length(model) -> int | None:
    """The longest sequence the model's config allows, or None when the config names no limit."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    for name in _CONTEXT_LENGTH_FIELDS:
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def default_threads() -> int:
    """$OMP_NUM_THREADS when set, else the physical cores this process may use divided by the processes
    torchrun/accelerate started on this machine: never more threads than cores."""
    if os.environ.get("OMP_NUM_THREADS", "").isdigit() and int(os.environ["OMP_NUM_THREADS"]) > 0:
        return int(os.environ["OMP_NUM_THREADS"])
    logical = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        import psutil

        physical = psutil.cpu_count(logical=False) or logical
    except ImportError:
        physical = logical
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE") or 1)
    return max(1, min(physical, logical) // max(1, local_processes))


def check_threads(threads: int | None) -> int:
    """`threads`, or default_threads() when None; at least 1."""
    if threads is None:
        return default_threads()
    if isinstance(threads, bool) or threads < 1:
        raise InputError(f"--threads must be at least 1, got {threads}")
    return threads


@dataclass
class BaseModelSource:
    """The base model a verb loads, declared once: ModelConfig and AnalyzeConfig inherit it (a dataclass
    puts inherited fields first, so every config keeps its field order and its stored settings)."""

    base_model: str = field(
        default="",
        metadata={
            "help": "base model: a folder, a .gguf file, or a hub name when online (default: the base "
            "recorded in the adapter's adapter_config.json)"
        },
    )


@dataclass
class CpuThreads:
    """How many CPU threads torch uses, declared once: ModelLoading and AnalyzeConfig inherit it."""

    threads: int | None = field(
        default=None,
        metadata={
            "help": "torch CPU threads (default: $OMP_NUM_THREADS when set, else the physical cores divided "
            "by the processes torchrun or accelerate started on this machine)"
        },
    )


@dataclass
class ModelLoading(CpuThreads):
    """How a base model is loaded, declared once: ModelConfig and FinetuneConfig inherit it."""

    trust_remote_code: bool = field(
        default=False, metadata={"help": "run the modelling code shipped with the base model"}
    )
    load_8bit: bool = field(
        default=False, metadata={"help": "load the base model in 8 bits (CUDA, bitsandbytes)"}
    )
    load_4bit: bool = field(
        default=False,
        metadata={"help": "load the base model in 4 bits, NF4: the QLoRA recipe (CUDA, bitsandbytes)"},
    )

    def check_loading(self) -> None:
        """The loading rules, once: at most one quantization (`self.quantization`), threads resolved."""
        self.quantization = quantization_of(self.load_8bit, self.load_4bit)
        self.threads = check_threads(self.threads)


@dataclass
class ModelDtype:
    """The dtype a model is loaded in, declared once: ModelConfig and AnalyzeConfig inherit it."""

    dtype: str = field(
        default="auto", metadata={"help": "auto (bf16/fp16 on GPU, fp32 on CPU), bf16, fp16 or fp32"}
    )


@dataclass
class ModelConfig(ModelDtype, TemplateChoice, ModelLoading, BaseModelSource):
    """A base model, an optional adapter on it, and how to load them (the groups' fields come first)."""

    weights_path: str | None = field(
        default=None,
        metadata={"help": "adapter folder (SIBO or plain PEFT); without it the base model alone"},
    )
    lam: float | None = field(
        default=None,
        metadata={"help": "SIBO's λ, overriding the adapter's stored one (boosts a plain PEFT adapter too)"},
    )
    task: str = field(
        default="causal-lm",
        metadata={"help": "the model's head", "choices": ("causal-lm", "sequence-classification")},
    )

    def __post_init__(self) -> None:
        self.lam = None if self.lam is None else check_lambda(self.lam)
        self.check_loading()
        if self.weights_path is not None and not Path(self.weights_path).is_dir():
            raise InputError(f"adapter directory {self.weights_path} does not exist")
        self.base_model = resolve_base_model(self.base_model, self.weights_path)
        # alpaca or chat: --template, or for auto the one recorded beside the adapter (else its base: an
        # export records it too), else Alpaca's. Read here, so a bad or damaged one fails before anything loads.
        self.template_name = prompts.template_name(self.template, self.weights_path, self.base_model)
        # where auto found it (None: --template given, or nothing recorded and so Alpaca's)
        self.template_file = (
            prompts.template_file(self.weights_path, self.base_model) if self.template == AUTO else None
        )

    def load(self, **options):
        """(model, tokenizer) through `sibo.checkpoint.load.load_model`; `options`: its other keywords."""
        from sibo.checkpoint.load import load_model

        settings = {name: getattr(self, name) for name in _LOAD_SETTINGS}
        return load_model(self.base_model, self.weights_path, **settings, **options)

    def prompt_template(self, tokenizer) -> PromptTemplate:
        """The template to prompt with; chat asked of a tokenizer without a chat template is an InputError."""
        template = prompts.checked_template(self.template_name, tokenizer, self.base_model)
        if template.name == CHAT:
            logger.info(
                "prompting with the chat template%s",
                f" recorded in {self.template_file}" if self.template_file else " (--template chat)",
            )
        return template


@dataclass
class DecodingMerge:
    """Whether a verb that decodes merges the adapter in memory (load_for_decoding's `merge`), declared once:
    generate's, evaluate's and serve's flags inherit it."""

    merge: bool = field(
        default=True,
        metadata={
            "help": "fold the adapter into the base weights for decoding: same outputs, fewer kernels "
            "(bottleneck, DoRA with λ > 0 and quantized bases stay unmerged)"
        },
    )


# The spellings of ModelConfig's flags, upstream's included.
MODEL_FLAG_SPELLINGS = {
    "weights_path": ["--weights_path", "--lora_weights"],
    "lam": ["--embedding_lambda", "--lam"],
}


@dataclass
class ExportConfig:
    """Where and in which form to write the merged model."""

    output_dir: Path = field(
        metadata={
            "help": "directory to create; must be absent or empty, or an earlier export with --overwrite"
        }
    )
    format: str = field(
        default="hf",
        metadata={
            "help": "hf: save_pretrained checkpoint + tokenizer; state_dict: the merged weights as one "
            "safetensors file",
            "choices": FORMATS,
        },
    )
    approximate: bool = field(
        default=False,
        metadata={
            "help": "for λ > 0: write a plain merged checkpoint that drops the λ·ΔW·h0 term, and report "
            "the largest |Δlogit| on probe prompts"
        },
    )
    adapter_name: str = field(default="default", metadata={"help": "which adapter of the PeftModel to merge"})
    overwrite: bool = field(
        default=False, metadata={"help": "replace an earlier `sibo export` in output_dir (nothing else)"}
    )

    def __post_init__(self) -> None:
        self.output_dir = Path(self.output_dir)
        if self.output_dir.is_symlink() and self.output_dir.is_dir():
            # the export is staged beside its folder and renamed into place: beside the link's target, not the link
            self.output_dir = self.output_dir.resolve()
        if self.format not in FORMATS:
            raise InputError(f"unknown export format {self.format!r}: use one of {FORMATS}")
        self.check_output_dir()

    def check_output_dir(self) -> None:
        """output_dir must be absent, empty, or an earlier export (with --overwrite): checked before the slow
        part, and again just before the finished export takes its place (another run may have come)."""
        from sibo.output_dir import claim_output_dir, refuse_replacing

        # A file, a model, a dataset, another verb's output or a folder in use is refused whatever --overwrite says.
        claim_output_dir(self.output_dir, EXPORT_VERB, {}, self.overwrite, may_differ=None, dry_run=True)
        refuse_replacing(self.output_dir, EXPORT_VERB)
        if self.output_dir.is_dir() and any(self.output_dir.iterdir()) and not self.overwrite:
            raise InputError(
                f"output directory {self.output_dir} already exists and is not empty (an earlier export): "
                "pass --overwrite to replace it, or choose another --output_dir"
            )
