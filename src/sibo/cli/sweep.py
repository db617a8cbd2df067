"""`sibo sweep`: `sibo finetune`'s flags, plus the grid and the benchmarks to score each run on.

    sibo sweep --base_model B --data_path math_10k.json --output_dir sweep \
        --lambdas 0,0.1,0.2,0.3 --seeds 1,2,3 --datasets AddSub,SVAMP --eval_limit 200

--lambdas and --seeds replace --embedding_lambda and --seed (which are their defaults).
"""

from __future__ import annotations

import argparse

from sibo.cli._flags import parse_list
from sibo.cli.finetune import build_parser as build_finetune_parser
from sibo.decode.settings import DecodingSettings
from sibo.errors import InputError
from sibo.eval.tasks import EXTRACTION_MODES, default_data_dir
from sibo.study.sweep import CSV_FILE, PLOT_FILE, SweepConfig, summarize, sweep
from sibo.train.config import FinetuneConfig

_SWEEP_FLAGS = ("lambdas", "seeds", "datasets", "data_dir", "eval_limit", "extraction", "eval_batch_size",
                "num_beams", "max_new_tokens")  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = build_finetune_parser()
    parser.prog = "sibo sweep"
    parser.description = "Fine-tune and evaluate one adapter per (λ, seed); write sweep.csv and sweep.png."
    group = parser.add_argument_group("sweep")
    group.add_argument(
        "--lambdas", default=None, help="λ values: 0,0.1,0.2 or [0,0.1,0.2] (default: --embedding_lambda)"
    )
    group.add_argument("--seeds", default=None, help="seeds: 1,2,3 (default: --seed)")
    group.add_argument("--datasets", default="math", help="benchmarks to score each run on (default: math)")
    group.add_argument(
        "--data_dir", default=None, help="folder holding <Name>/test.json (default: as `sibo evaluate`)"
    )
    group.add_argument("--eval_limit", type=int, default=None, help="score only the first N examples of each")
    group.add_argument(
        "--extraction", default="careful", choices=EXTRACTION_MODES, help="how answers are read"
    )
    group.add_argument(
        "--eval_batch_size", type=int, default=8, help="questions per generate call (default: 8)"
    )
    group.add_argument("--num_beams", type=int, default=4, help="beam width; 1 is greedy (default: 4)")
    group.add_argument(
        "--max_new_tokens", type=int, default=None, help="new tokens per answer (default: the seed's)"
    )
    return parser


def _numbers(text: str, kind: type, flag: str) -> list:
    try:
        return [kind(item) for item in parse_list(text)]
    except ValueError:
        raise InputError(f"--{flag} must be a list of {kind.__name__} values, got {text!r}") from None


def parse_config(argv: list[str] | None) -> SweepConfig:
    values = vars(build_parser().parse_args(argv))
    grid = {name: values.pop(name) for name in _SWEEP_FLAGS}
    if values["target_modules"] is not None:
        values["target_modules"] = parse_list(values["target_modules"])
    finetune = FinetuneConfig(**values)
    lambdas = _numbers(grid["lambdas"], float, "lambdas") if grid["lambdas"] else [finetune.embedding_lambda]
    seeds = _numbers(grid["seeds"], int, "seeds") if grid["seeds"] else [finetune.seed]
    return SweepConfig(
        finetune=finetune,
        lambdas=lambdas,
        seeds=seeds,
        datasets=grid["datasets"],
        data_dir=grid["data_dir"] or default_data_dir(),
        output_dir=finetune.output_dir,
        limit=grid["eval_limit"],
        extraction=grid["extraction"],
        decoding=DecodingSettings(
            batch_size=grid["eval_batch_size"],
            num_beams=grid["num_beams"],
            max_new_tokens=grid["max_new_tokens"],
        ),
    )


def main(argv: list[str] | None = None) -> int:
    config = parse_config(argv)
    rows = sweep(config)
    print(f"{'λ':>6} {'seeds':>5} {'accuracy':>9} {'std':>7}")
    for lam, mean, std, count in summarize(rows):
        print(f"{lam:>6g} {count:>5} {mean:>9.4f} {std:>7.4f}")
    print(f"\n{len(rows)} runs: {config.output_dir / CSV_FILE}, {config.output_dir / PLOT_FILE}")
    return 0
