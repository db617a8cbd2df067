"""`sibo evaluate`: accuracy of a base model or adapter on the paper's math and commonsense benchmarks.

    sibo evaluate --weights_path W --dataset math --output_dir O        # the base the adapter records
    sibo evaluate --base_model B --lora_weights W --dataset gsm8k --embedding_lambda 0.2 --batch_size 16
    torchrun --nproc_per_node 4 -m sibo evaluate --base_model B --weights_path W --dataset commonsense

Upstream's flags work as they are: --lora_weights, --embedding_lambda, --load_8bit, --batch_size,
and --model / --adapter (labels recorded in run.json: they choose nothing, but O scored under other
labels is another run). Results: O/<dataset>.jsonl
(one line per example, resumable), O/summary.json, and a table on stdout. Test questions that
the adapter's training data holds (--train_data, or the file its run_config.json names) are
counted per set; --exclude_seen scores only the others. The questions are prompted with the
template the adapter was trained with (--template auto: its prompt_template.json, else Alpaca's).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from sibo.checkpoint.config import MODEL_FLAG_SPELLINGS, DecodingMerge, ModelConfig
from sibo.cli._flags import ArgumentParser, add_dataclass_flags, dataclass_values
from sibo.decode.settings import BENCHMARK_DECODING_FLAGS, DecodingSettings
from sibo.eval.config import EvalConfig
from sibo.progress import announce

# Sampling settings are generate's: the benchmarks are scored with upstream's deterministic decoding.
SAMPLING_FIELDS = ("temperature", "top_p", "top_k", "seed")
# EvalConfig's fields that are no flags: decoding has its own, the template is the model's (--template).
NOT_FLAGS = ("decoding", "template")


@dataclass
class EvaluateFlags(DecodingMerge):
    """What `sibo evaluate` adds to the model, benchmark (EvalConfig) and decoding flags."""

    model: str | None = field(
        default=None, metadata={"help": "upstream's model name (LLaMA-7B, …): recorded only"}
    )
    adapter: str | None = field(
        default=None, metadata={"help": "upstream's adapter name (LoRA, …): recorded only"}
    )


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="sibo evaluate", description=__doc__.split("\n\n")[0])
    add_dataclass_flags(parser, ModelConfig, rename=MODEL_FLAG_SPELLINGS, skip=("task",), group="model")
    add_dataclass_flags(
        parser, EvalConfig, rename={"datasets": ["--dataset"]}, skip=NOT_FLAGS, group="benchmarks"
    )
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
    from sibo.eval.runner import describe_settings, evaluate_model

    # a bad model flag, or a missing or malformed data file, stops us before any model loads
    source = ModelConfig(**dataclass_values(args, ModelConfig, skip=("task",)))
    flags = EvaluateFlags(**dataclass_values(args, EvaluateFlags))
    given = dataclass_values(args, EvalConfig, skip=NOT_FLAGS)
    train_data, columns = given.pop("train_data"), given.pop("train_data_columns")
    config = EvalConfig(
        **given,
        decoding=DecodingSettings(**dataclass_values(args, DecodingSettings, skip=SAMPLING_FIELDS)),
        # without --train_data, the adapter's own (its run_config.json), when that file is here
        train_data=train_data or recorded_training_data(source.weights_path),
        train_data_columns=columns or ("" if train_data else recorded_data_columns(source.weights_path)),
        template=source.template_name,
    )
    announce(f"to score on {config.datasets} into {config.output_dir}", base=source.base_model,
             adapter=source.weights_path)  # fmt: skip
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
        rows.append(
            f"{'mean':<14} {'':>6} {'':>8} {mean:>9.4f}   (of the {len(results)} datasets' accuracies)"
        )
    return "\n".join(rows)
