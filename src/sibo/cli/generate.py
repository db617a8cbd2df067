"""`sibo generate`: answer one instruction on stdout as it is written, or serve a Gradio page.

sibo generate [--base_model B] --weights_path W --prompt "Add 2 and 3." [--input TEXT]
sibo generate --base_model B [--weights_path W] --ui [--host 127.0.0.1] [--port 7860] [--share]

The prompt template is the one the adapter was trained with (--template auto), or --template alpaca|chat.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

from sibo.checkpoint.config import MODEL_FLAG_SPELLINGS, DecodingMerge, ModelConfig
from sibo.cli._flags import BOOL_METAVAR, ArgumentParser, add_dataclass_flags, dataclass_values, str2bool
from sibo.decode.listen import ServeConfig
from sibo.decode.settings import ONE_ANSWER_TOKENS, DecodingSettings
from sibo.errors import InputError
from sibo.progress import announce

# Batches are evaluate's: one answer streams.
BATCH_FIELDS = ("batch_size", "static_cache")
# The page's settings that are no flags: its queue keeps its default, its title is the model's name.
PAGE_ONLY = ("queue_size", "title")


@dataclass
class GenerateFlags(DecodingMerge):
    """What to answer, or where to serve the page."""

    instruction: str | None = field(
        default=None, metadata={"help": "the instruction", "group": "one answer on stdout"}
    )
    input: str | None = field(
        default=None,
        metadata={"help": "optional input/context for the instruction", "group": "one answer on stdout"},
    )
    ui: bool = field(
        default=False,
        metadata={"help": "serve a Gradio page instead of answering once", "group": "Gradio page"},
    )


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="sibo generate", description=__doc__.split("\n\n")[0])
    add_dataclass_flags(parser, ModelConfig, rename=MODEL_FLAG_SPELLINGS, skip=("task",), group="model")
    add_dataclass_flags(
        parser,
        GenerateFlags,
        rename={"instruction": ["--prompt", "--instruction"]},
        group="model",  # --merge; the other flags name their sections
    )
    add_dataclass_flags(
        parser,
        ServeConfig,
        skip=PAGE_ONLY,
        helps={"port": "port (default: Gradio's, from 7860 up)"},
        group="Gradio page",
    )
    add_dataclass_flags(
        parser,
        DecodingSettings,
        skip=BATCH_FIELDS,
        rename={"num_beams": ["--num_beams", "--beams"]},
        defaults={"max_new_tokens": ONE_ANSWER_TOKENS},
        helps={"max_new_tokens": "new tokens of the answer", "num_beams": "beam width; > 1 cannot stream"},
        group="decoding",
    )
    # upstream's spelling of --share
    parser.add_argument("--share_gradio", dest="share", type=str2bool, nargs="?", const=True, default=False,
                        metavar=BOOL_METAVAR, help=argparse.SUPPRESS)  # fmt: skip
    return parser


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    flags = GenerateFlags(**dataclass_values(args, GenerateFlags))
    if flags.ui == (flags.instruction is not None):
        raise InputError("give either --prompt TEXT (one answer on stdout) or --ui (a Gradio page)")
    if flags.input is not None and flags.instruction is None:
        raise InputError("--input goes with --prompt")
    settings = DecodingSettings(**dataclass_values(args, DecodingSettings, skip=BATCH_FIELDS))
    source = ModelConfig(**dataclass_values(args, ModelConfig, skip=("task",)))
    serve_config = None
    if flags.ui:
        from sibo.decode.app import require_gradio

        title = f"SIBO · {Path(source.weights_path or source.base_model).name or 'model'}"
        serve_config = ServeConfig(**dataclass_values(args, ServeConfig, skip=PAGE_ONLY), title=title)
        require_gradio()  # a missing gradio should say so before the model loads
    purpose = "for a Gradio page" if flags.ui else "to answer one instruction"
    announce(purpose, base=source.base_model, adapter=source.weights_path)
    from sibo.checkpoint.load import load_for_decoding

    model, tokenizer, template = load_for_decoding(source, merge=flags.merge)
    if serve_config is not None:
        from sibo.decode.app import build_app, launch_app

        launch_app(build_app(model, tokenizer, serve_config, settings, template), serve_config)
        return 0
    from sibo.decode.stream import stream_response

    for piece in stream_response(model, tokenizer, flags.instruction, flags.input, settings, template):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    sys.stdout.flush()  # here, not at exit: a reader that left is main's BrokenPipeError, not a late warning
    return 0
