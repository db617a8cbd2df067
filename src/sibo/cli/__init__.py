"""`sibo <verb> …`: one map from subcommand to the CLI module that runs it.

Each CLI module parses its flags into configs and calls library functions; it alone prints to
stdout. Bad input raised as `sibo.errors.InputError` becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import importlib
import logging
import sys

from sibo.errors import InputError

VERBS = {
    "demo": ("sibo.cli.demo", "offline end-to-end study: fine-tune, evaluate and analyze LoRA vs LoRA-SIBO"),
    "finetune": (
        "sibo.cli.finetune",
        "fine-tune a causal LM with LoRA / DoRA / bottleneck adapters boosted by SIBO",
    ),
    "evaluate": (
        "sibo.cli.evaluate",
        "score a base model or adapter on the paper's math and commonsense benchmarks",
    ),
    "generate": ("sibo.cli.generate", "answer one instruction, or serve a Gradio page (--ui)"),
    "export": ("sibo.cli.export", "merge an adapter into a standalone checkpoint"),
    "analyze": (
        "sibo.cli.analyze",
        "per-layer token similarity (over-smoothing) of a base model and adapters",
    ),
    "sweep": ("sibo.cli.sweep", "finetune + evaluate over a list of λ values and seeds"),
    "lm-eval": ("sibo.cli.lm_eval", "run lm-evaluation-harness with the SIBO model class registered"),
}


def _usage() -> str:
    lines = ["usage: sibo <verb> [flags]   (sibo <verb> --help for its flags)", "", "verbs:"]
    lines += [f"  {verb:<10} {summary}" for verb, (_, summary) in VERBS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    verb, rest = argv[0], argv[1:]
    if verb not in VERBS:
        print(f"sibo: unknown verb {verb!r}\n{_usage()}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    module = importlib.import_module(VERBS[verb][0])
    try:
        return module.main(rest) or 0
    except InputError as error:
        print(f"sibo {verb}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
