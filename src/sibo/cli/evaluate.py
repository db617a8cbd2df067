"""`sibo evaluate`: accuracy of a base model or adapter on the paper's math and commonsense benchmarks.

    sibo evaluate --weights_path W --dataset math --output_dir O        # the base the adapter records
    sibo evaluate --base_model B --lora_weights W --dataset gsm8k --embedding_lambda 0.2 --batch_size 16
    torchrun --nproc_per_node 4 -m sibo evaluate --base_model B --weights_path W --dataset commonsense

Upstream's flags work as they are: --lora_weights, --embedding_lambda, --load_8bit, --batch_size,
and --model / --adapter (recorded in run.json, they choose nothing). Results: O/<dataset>.jsonl
(one line per example, resumable), O/summary.json, and a table on stdout. Test questions that
the adapter's training data holds (--train_data, or the file its run_config.json names) are
counted per set; --exclude_seen scores only the others. The questions are prompted with the
template the adapter was trained with (--template auto: its prompt_template.json, else Alpaca's).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from sibo.checkpoint.config import MODEL_FLAG_SPELLINGS, ModelConfig
from sibo.cli._flags import ArgumentParser, add_dataclass_flags, dataclass_values
from sibo.decode.settings import BENCHMARK_DECODING_FLAGS, DecodingSettings
from sibo.eval.tasks import DATA_DIR_HELP, EXTRACTION_MODES, default_data_dir

# Sampling settings are generate's: the benchmarks are scored with upstream's deterministic decoding.
SAMPLING_FIELDS = ("temperature", "top_p", "top_k", "seed")


@dataclass
class EvaluateFlags:
    """What `sibo evaluate` adds to the model and decoding flags."""

    dataset: str = field(
        metadata={
            "help": "comma-separated names (AddSub, MultiArith, SingleEq, gsm8k, AQuA, SVAMP, mawps, boolq, piqa, "
            "social_i_qa, hellaswag, winogrande, ARC-Easy, ARC-Challenge, openbookqa), or math / commonsense"
        }
    )
    data_dir: str | None = field(default=None, metadata={"help": DATA_DIR_HELP})
    output_dir: str = field(default="outputs/evaluate", metadata={"help": "where results go"})
    merge: bool = field(
        default=True,
        metadata={
            "help": "fold the adapter into the base weights for decoding: same outputs, fewer kernels "
            "(bottleneck, DoRA with λ > 0 and quantized bases stay unmerged)"
        },
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
    model: str | None = field(
        default=None, metadata={"help": "upstream's model name (LLaMA-7B, …): recorded only"}
    )
    adapter: str | None = field(
        default=None, metadata={"help": "upstream's adapter name (LoRA, …): recorded only"}
    )
    overwrite: bool = field(
        default=False,
        metadata={"help": "hand output_dir over to this run: another run's results there are deleted first"},
    )
    train_data: str | None = field(
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


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="sibo evaluate", description=__doc__.split("\n\n")[0])
    add_dataclass_flags(parser, ModelConfig, rename=MODEL_FLAG_SPELLINGS, skip=("task",), group="model")
    add_dataclass_flags(parser, EvaluateFlags, group="benchmarks")
    add_dataclass_flags(
        parser,
        DecodingSettings,
        skip=SAMPLING_FIELDS,
        **BENCHMARK_DECODING_FLAGS,
        group="decoding",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    from sibo.eval.contamination import recorded_data_columns, recorded_training_data
    from sibo.eval.runner import EvalConfig, describe_settings, evaluate_model

    # a bad model flag, or a missing or malformed data file, stops us before any model loads
    source = ModelConfig(**dataclass_values(args, ModelConfig, skip=("task",)))
    flags = EvaluateFlags(**dataclass_values(args, EvaluateFlags))
    config = EvalConfig(
        datasets=flags.dataset,
        data_dir=flags.data_dir or default_data_dir(),
        output_dir=flags.output_dir,
        extraction=flags.extraction,
        limit=flags.limit,
        decoding=DecodingSettings(**dataclass_values(args, DecodingSettings, skip=SAMPLING_FIELDS)),
        overwrite=flags.overwrite,
        train_data=flags.train_data or recorded_training_data(source.weights_path),
        exclude_seen=flags.exclude_seen,
        train_data_columns=flags.train_data_columns
        or ("" if flags.train_data else recorded_data_columns(source.weights_path)),
        template=source.template_name,
    )
    results, is_main = evaluate_model(
        source, config, {"model": flags.model, "adapter": flags.adapter}, flags.merge
    )
    if is_main:
        print(format_table(results))
        print(f"results in {config.output_dir}")
        if source.weights_path is not None:
            from sibo.train.card import add_evaluation

            scores = {name: (result.correct, result.n) for name, result in results.items()}
            card = add_evaluation(source.weights_path, scores, describe_settings(config, source.lam))
            if card is not None:
                print(f"added to the adapter's model card: {card}")
    return 0


def format_table(results) -> str:
    rows = [f"{'dataset':<14} {'n':>6} {'correct':>8} {'accuracy':>9}"]
    rows += [f"{name:<14} {r.n:>6} {r.correct:>8} {r.accuracy:>9.4f}" for name, r in results.items()]
    if len(results) > 1:
        mean = sum(r.accuracy for r in results.values()) / len(results)
        rows.append(f"{'average':<14} {'':>6} {'':>8} {mean:>9.4f}")
    return "\n".join(rows)
