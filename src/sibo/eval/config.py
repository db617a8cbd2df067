"""What `sibo evaluate` scores and how: the benchmark settings, declared once.

`sibo evaluate` and `sibo sweep` build their benchmark flags from `EvalConfig`'s fields; finetune's accuracy
during training stores some of them under its own names through `benchmark_setting`. Nothing here imports
torch: `sibo finetune --help` reads it.
"""

from __future__ import annotations

from dataclasses import MISSING, Field, dataclass, field
from pathlib import Path

from sibo.decode.settings import DecodingSettings, benchmark_decoding
from sibo.errors import InputError
from sibo.eval.tasks import DATA_DIR_HELP, EXTRACTION_MODES, default_data_dir, resolve_datasets
from sibo.prompts import ALPACA, PromptTemplate


@dataclass
class EvalConfig:
    """Which benchmarks, where their files are, where results go, how answers are read: the benchmark
    settings, declared here once; `sibo evaluate` and `sibo sweep` build their flags from these fields."""

    datasets: str | list[str] = field(
        metadata={
            "help": "comma-separated names (AddSub, MultiArith, SingleEq, gsm8k, AQuA, SVAMP, mawps, boolq, piqa, "
            "social_i_qa, hellaswag, winogrande, ARC-Easy, ARC-Challenge, openbookqa), or math / commonsense"
        }
    )
    data_dir: str | Path | None = field(default=None, metadata={"help": DATA_DIR_HELP})
    output_dir: str | Path = field(
        default="outputs/evaluate", metadata={"help": "where <dataset>.jsonl and summary.json go"}
    )
    extraction: str = field(
        default="careful",
        metadata={
            "help": "careful, or legacy: upstream's answer-reading rules, for comparable numbers",
            "choices": EXTRACTION_MODES,
        },
    )
    limit: int | None = field(
        default=None, metadata={"help": "score only the first N examples of each dataset"}
    )
    decoding: DecodingSettings = field(default_factory=benchmark_decoding)
    overwrite: bool = field(
        default=False,
        metadata={"help": "hand output_dir over to this run: another run's results there are deleted first"},
    )
    train_data: str | Path | None = field(
        default=None,
        metadata={
            "help": "the adapter's training file: report how many test questions it holds (default: the "
            "data_path in the adapter's run_config.json, when that file is here)"
        },
    )
    exclude_seen: bool = field(
        default=False, metadata={"help": "score only the test questions that are not in the training data"}
    )
    train_data_columns: str = field(
        default="",
        metadata={
            "help": "the training data's column names, as finetune's --data_columns (default: what the "
            "adapter's run_config.json records)"
        },
    )
    # the prompt template resolved, alpaca or chat: no flag of its own (TemplateChoice's --template chooses it)
    template: str = ALPACA

    def __post_init__(self) -> None:
        self.prompt_template = PromptTemplate(self.template)
        self.data_dir = Path(self.data_dir if self.data_dir is not None else default_data_dir())
        self.output_dir = Path(self.output_dir)
        self.train_data = Path(self.train_data) if self.train_data is not None else None
        if self.exclude_seen and self.train_data is None:
            raise InputError(
                "exclude_seen needs the training data: pass --train_data FILE (or an adapter whose "
                "run_config.json names a file that is here)"
            )
        if self.extraction not in EXTRACTION_MODES:
            raise InputError(
                f"unknown extraction {self.extraction!r}: use one of {', '.join(EXTRACTION_MODES)}"
            )
        if self.limit is not None and self.limit < 1:
            raise InputError(f"limit must be at least 1, got {self.limit}")
        self.tasks = resolve_datasets(self.datasets)


def benchmark_setting(name: str, default=MISSING, **metadata) -> Field:
    """EvalConfig's setting `name`, or its decoding's (num_beams), for a config that stores it under another
    name (finetune's eval_<name>): the help and choices declared here, the benchmark's default unless given."""
    owner = EvalConfig if name in EvalConfig.__dataclass_fields__ else DecodingSettings
    declared = owner.__dataclass_fields__[name]
    if default is MISSING:
        default = getattr(benchmark_decoding(), name) if owner is DecodingSettings else declared.default
    return field(default=default, metadata={**declared.metadata, **metadata})


def accuracy_key(name: str) -> str:
    """The metric a benchmark's accuracy is logged under in training (--metric_for_best_model takes it)."""
    return f"eval_{name}_accuracy"
