"""`sibo demo`: the offline SIBO study — fine-tune, evaluate and analyze LoRA vs LoRA-SIBO.

sibo demo                                  # about 2 minutes on 2 idle CPU cores
sibo demo --quick --output_dir /tmp/demo   # the smaller setting the tests run
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from sibo.cli._flags import ArgumentParser, add_dataclass_flags, dataclass_values
from sibo.progress import announce
from sibo.study.demo import (
    DEMO_ANSWER_TOKENS,
    DEMO_FLAG_HELPS,
    DEMO_THREADS,
    DemoConfig,
    quick_config,
    shipped_base_model,
)


@dataclass
class DemoFlags:
    quick: bool = field(
        default=False,
        metadata={"help": "the smaller setting the test suite runs (sizes given still override)"},
    )


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="sibo demo", description=__doc__.splitlines()[0].split(": ", 1)[1])
    add_dataclass_flags(parser, DemoFlags)
    add_dataclass_flags(
        parser,
        DemoConfig,
        only_given=True,
        defaults={"max_new_tokens": DEMO_ANSWER_TOKENS, "threads": DEMO_THREADS},
        helps=DEMO_FLAG_HELPS,
    )
    return parser


def parse_config(argv: list[str] | None) -> DemoConfig:
    return _config(build_parser().parse_args(argv))


def _config(args: argparse.Namespace) -> DemoConfig:
    given = dataclass_values(args, DemoConfig)
    return quick_config(**given) if args.quick else DemoConfig(**given)


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    from sibo.study.demo import ADAPTER_ROWS_NOTE, format_rows, next_steps, run_demo

    config = _config(args)
    base_model = str(config.base_model or shipped_base_model())
    announce(f"for the demo study into {config.output_dir}", base=base_model)
    started = time.perf_counter()
    rows = run_demo(config)
    print(format_rows(rows))
    print(
        f"\n{len(rows) - 1} adapters in {time.perf_counter() - started:.0f} s; results in {config.output_dir}"
    )
    print(f"token similarity by depth: {config.output_dir / 'analyze' / 'analyze.png'}")
    if {"Adapter", "Adapter-SIBO"} <= {row.method for row in rows}:
        print(ADAPTER_ROWS_NOTE)
    print("\nnext, on what the demo made (answer a test problem, score it again, the Gradio page):")
    print("\n".join(f"  {line}" for line in next_steps(config, rows, sibo_command())))
    return 0


def sibo_command() -> str:
    """How this shell reaches sibo: `sibo` when it is this environment's script on PATH, else this
    Python with -m (`make demo` runs .venv/bin/python without activating the environment)."""
    script = Path(sys.executable).parent / "sibo"
    if shutil.which("sibo") == str(script):
        return "sibo"
    python = os.path.relpath(sys.executable)
    return f"{sys.executable if python.startswith('..') else python} -m sibo"
