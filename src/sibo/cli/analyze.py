"""`sibo analyze`: per-layer token similarity (over-smoothing) of a base model and its adapters.

sibo analyze --base_model B [--weights_path W1 W2 …] --data FILE [--n 64] [--output_dir O]
"""

from __future__ import annotations

import argparse

from sibo.cli._flags import optional_bool_flag
from sibo.study.analyze import PLOT_FILE, RESULTS_FILE, AnalyzeConfig, analyze, format_table


def setup() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sibo analyze", description=__doc__.split("\n\n")[0])
    help_of = AnalyzeConfig.__dataclass_fields__
    parser.add_argument("--base_model", required=True, help=help_of["base_model"].metadata["help"])
    parser.add_argument(
        "--weights_path",
        "--lora_weights",
        nargs="*",
        default=[],
        help=help_of["weights_paths"].metadata["help"],
    )
    parser.add_argument("--data", required=True, help=help_of["data"].metadata["help"])
    parser.add_argument("--n", type=int, default=64, help=help_of["n"].metadata["help"])
    parser.add_argument("--output_dir", default=None, help=help_of["output_dir"].metadata["help"])
    parser.add_argument("--batch_size", type=int, default=8, help=help_of["batch_size"].metadata["help"])
    parser.add_argument("--max_length", type=int, default=512, help=help_of["max_length"].metadata["help"])
    parser.add_argument("--dtype", default="auto", help=help_of["dtype"].metadata["help"])
    optional_bool_flag(parser, "--overwrite", False, help_of["overwrite"].metadata["help"])
    return parser


def main(argv: list[str] | None = None) -> int:
    args = setup().parse_args(argv)
    config = AnalyzeConfig(
        base_model=args.base_model,
        data=args.data,
        weights_paths=args.weights_path,
        output_dir=args.output_dir,
        n=args.n,
        batch_size=args.batch_size,
        max_length=args.max_length,
        dtype=args.dtype,
        overwrite=args.overwrite,
    )
    results = analyze(config)
    print(f"mean pairwise token cosine similarity by layer (n={results['n']}, layer 0 = embeddings)")
    print(format_table(results))
    print(f"wrote {config.output_dir / RESULTS_FILE} and {config.output_dir / PLOT_FILE}")
    return 0
