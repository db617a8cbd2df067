"""`sibo analyze`: per-layer token similarity (over-smoothing) of a base model and its adapters.

sibo analyze [--base_model B] [--weights_path W1 W2 …] --data FILE [--n 64] [--output_dir O]
"""

from __future__ import annotations

import argparse

from sibo.cli._flags import ArgumentParser, add_dataclass_flags, dataclass_values
from sibo.progress import announce
from sibo.study.analyze import PLOT_FILE, RESULTS_FILE, AnalyzeConfig

SPELLINGS = {"weights_paths": ["--weights_path", "--lora_weights"]}


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="sibo analyze", description=__doc__.split("\n\n")[0])
    add_dataclass_flags(parser, AnalyzeConfig, rename=SPELLINGS)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    # before the config, whose check of the adapters' values imports torch
    announce("to measure token similarity by layer", base=args.base_model, adapters=args.weights_paths,
             data=str(args.data))  # fmt: skip
    from sibo.study.analyze import analyze, format_table

    config = AnalyzeConfig(**dataclass_values(args, AnalyzeConfig))
    results = analyze(config)
    print(f"mean pairwise token cosine similarity by layer (n={results['n']}, layer 0 = embeddings)")
    print(format_table(results))
    print(f"wrote {config.output_dir / RESULTS_FILE} and {config.output_dir / PLOT_FILE}")
    return 0
