"""`sibo demo`: the offline SIBO study — fine-tune, evaluate and analyze LoRA vs LoRA-SIBO.

sibo demo                                  # about 2 minutes on 2 idle CPU cores (the budget is 10)
sibo demo --quick --output_dir /tmp/demo   # the smaller setting the tests run
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from dataclasses import MISSING, fields
from pathlib import Path

from sibo.cli._flags import optional_bool_flag, parse_list
from sibo.study.demo import ADAPTER_ROWS_NOTE, DemoConfig, format_rows, next_steps, quick_config, run_demo


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sibo demo", description=__doc__.splitlines()[0].split(": ", 1)[1])
    optional_bool_flag(
        parser, "--quick", False, "the smaller setting the test suite runs (sizes below still override)"
    )
    for config_field in fields(DemoConfig):
        default = (
            config_field.default if config_field.default is not MISSING else config_field.default_factory()
        )
        shown = ",".join(default) if isinstance(default, tuple) else default
        help_text = config_field.metadata["help"] + ("" if default is None else f" (default: {shown})")
        kind = {"int": int, "float": float}.get(str(config_field.type), str)
        parser.add_argument(f"--{config_field.name}", type=kind, default=None, help=help_text)
    return parser


def parse_config(argv: list[str] | None) -> DemoConfig:
    values = vars(build_parser().parse_args(argv))
    quick = values.pop("quick")
    overrides = {name: value for name, value in values.items() if value is not None}
    if "methods" in overrides:
        overrides["methods"] = tuple(parse_list(overrides["methods"]))
    return quick_config(**overrides) if quick else DemoConfig(**overrides)


def main(argv: list[str] | None = None) -> int:
    config = parse_config(argv)
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
