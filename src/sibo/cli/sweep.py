"""`sibo sweep`: `sibo finetune`'s flags, plus the grid and the benchmarks to score each run on.

    sibo sweep --base_model B --data_path math_10k.json --output_dir sweep \
        --lambdas 0,0.1,0.2,0.3 --seeds 1,2,3 --datasets AddSub,SVAMP --eval_limit 200

--lambdas and --seeds replace --embedding_lambda and --seed (which are their defaults).

    sibo sweep --base_model B --data_path mine.json --output_dir sweep --lambdas 0,0.2 --seeds 1,2,3 \
        --heldout 200                        # does SIBO help on my data? report.md answers

--heldout N keeps N records (and their exact and near copies) out of training and scores every run's
held-out loss; with it, benchmarks are scored only when --datasets names them.
"""

from __future__ import annotations

import argparse
from dataclasses import fields

from sibo.cli._flags import ArgumentParser, add_dataclass_flags, dataclass_values
from sibo.cli.finetune import FINETUNE_FLAGS
from sibo.decode.settings import BENCHMARK_DECODING_FLAGS, DecodingSettings
from sibo.eval.config import EvalConfig
from sibo.progress import announced_before
from sibo.study.sweep_config import SweepConfig
from sibo.train.config import FinetuneConfig

# Sampling and compiled caches are not part of the scoring a sweep compares.
SKIPPED_DECODING = ("temperature", "top_p", "top_k", "seed", "static_cache")
DECODING = "decoding."
# EvalConfig's flags a sweep takes: which benchmarks score each run, and how answers are read
BENCHMARK_FLAGS = ("datasets", "data_dir", "limit", "extraction")
BENCHMARKS = "benchmarks."
# SweepConfig's fields that are no flags: finetune's flags give them
NOT_FLAGS = ("finetune", "output_dir", "evaluation")
# finetune's accuracy during training: a sweep scores each adapter once, at the end (its own --eval_limit)
DURING_TRAINING = ("eval_datasets", "eval_data_dir", "eval_limit", "eval_num_beams", "eval_exclude_seen")
# finetune's flags with the sweep's folder: the root of every run and of the sweep's own files
SWEEP_FLAGS = {
    **FINETUNE_FLAGS,
    "defaults": {**FINETUNE_FLAGS["defaults"], "output_dir": "./sweep"},
    "helps": {
        **FINETUNE_FLAGS["helps"],
        "output_dir": "where every run (lam<λ>_seed<s>/), sweep.csv, its plots and report.md go",
    },
}


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="sibo sweep",
        description="Fine-tune and score one adapter per (λ, seed); write sweep.csv, with sweep.png "
        "(--datasets) and report.md (--heldout).",
    )
    add_dataclass_flags(parser, FinetuneConfig, **SWEEP_FLAGS, skip=DURING_TRAINING)
    add_dataclass_flags(parser, SweepConfig, skip=NOT_FLAGS, group="sweep")
    add_dataclass_flags(
        parser,
        EvalConfig,
        rename={"limit": ["--eval_limit"]},
        skip=_not_benchmark_flags(),
        defaults={"datasets": None},
        helps={"datasets": "benchmarks to score each run on (default: math; none with --heldout)"},
        group="sweep",
        dest_prefix=BENCHMARKS,
    )
    add_dataclass_flags(
        parser,
        DecodingSettings,
        skip=SKIPPED_DECODING,
        rename={"batch_size": ["--eval_batch_size"]},
        **BENCHMARK_DECODING_FLAGS,
        group="sweep",
        dest_prefix=DECODING,
    )
    return parser


def _not_benchmark_flags() -> tuple[str, ...]:
    return tuple(f.name for f in fields(EvalConfig) if f.name not in BENCHMARK_FLAGS)


def parse_config(argv: list[str] | None) -> SweepConfig:
    return _config(build_parser().parse_args(argv))


def _config(args: argparse.Namespace) -> SweepConfig:
    finetune = FinetuneConfig(**dataclass_values(args, FinetuneConfig, skip=DURING_TRAINING))
    grid = dataclass_values(args, SweepConfig, skip=NOT_FLAGS)
    decoding = DecodingSettings(**dataclass_values(args, DecodingSettings, SKIPPED_DECODING, DECODING))
    benchmarks = dataclass_values(args, EvalConfig, _not_benchmark_flags(), BENCHMARKS)
    datasets = benchmarks.pop("datasets")
    datasets = ("" if grid["heldout"] else "math") if datasets is None else datasets
    # each run's folder replaces output_dir (SweepConfig.eval_config)
    evaluation = (
        EvalConfig(datasets, **benchmarks, output_dir=finetune.output_dir, decoding=decoding)
        if datasets
        else None
    )
    return SweepConfig(finetune, finetune.output_dir, evaluation, **grid)


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    with announced_before(
        "torch", f"to sweep into {args.output_dir}", base=args.base_model, data=args.data_path
    ):
        config = _config(args)  # as finetune: a bad value its plain checks catch is the only line
    from sibo.study.sweep import CSV_FILE, PLOT_FILE, REPORT_FILE, REPORT_JSON, summarize, sweep

    rows = sweep(config)
    written = [config.output_dir / CSV_FILE]
    if config.evaluation:
        print(f"{'λ':>6} {'seeds':>5} {'accuracy':>9} {'std':>7}")
        for lam, mean, std, count in summarize(rows):
            print(f"{lam:>6g} {count:>5} {mean:>9.4f} {std:>7.4f}")
        written.append(config.output_dir / PLOT_FILE)
    if config.heldout:
        _print_verdicts(config.output_dir / REPORT_JSON)
        written.append(config.output_dir / REPORT_FILE)
    print(f"\n{len(rows)} runs: {', '.join(map(str, written))}")
    return 0


def _print_verdicts(report_file) -> None:
    """Each λ's held-out loss difference to λ 0, its interval and verdict, as report.md's table says."""
    import json

    report = json.loads(report_file.read_text())["heldout_loss"]
    print(f"held-out loss per response token of the saved adapters: λ 0 {report['baseline_loss']:.4f}")
    for row in report["lambdas"]:
        print(
            f"λ {row['lambda']:g} − λ 0: {row['difference']:+.5f} [{row['low']:+.5f}, {row['high']:+.5f}], "
            f"p (Holm) {row['p_holm']:.3g}: {row['verdict']}"
        )
