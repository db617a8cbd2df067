"""`sibo generate`: answer one instruction on stdout as it is written, or serve a Gradio page.

sibo generate --base_model B [--weights_path W] --prompt "Add 2 and 3." [--input TEXT]
sibo generate --base_model B [--weights_path W] --ui [--host 127.0.0.1] [--port 7860] [--share]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sibo.checkpoint.export import merge_for_inference
from sibo.checkpoint.load import load_model
from sibo.cli._flags import (
    add_merge_flag,
    add_model_flags,
    model_loading_kwargs,
    optional_bool_flag,
    str2bool,
)
from sibo.decode.stream import DecodingSettings, stream_response
from sibo.errors import InputError


def setup() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sibo generate", description=__doc__.split("\n\n")[0])
    model = parser.add_argument_group("model")
    add_model_flags(model)
    add_merge_flag(model)

    prompt = parser.add_argument_group("one answer on stdout")
    prompt.add_argument("--prompt", "--instruction", dest="instruction", default=None, help="the instruction")
    prompt.add_argument("--input", default=None, help="optional input/context for the instruction")

    decoding = parser.add_argument_group("decoding")
    defaults = DecodingSettings()
    for name, kind in (("max_new_tokens", int), ("temperature", float), ("top_p", float), ("top_k", int)):
        help_text = DecodingSettings.__dataclass_fields__[name].metadata["help"]
        decoding.add_argument(f"--{name}", type=kind, default=getattr(defaults, name), help=help_text)
    decoding.add_argument(
        "--num_beams", "--beams", type=int, default=1, help="beam search width (> 1: no streaming)"
    )
    decoding.add_argument("--seed", type=int, default=None, help="seed for sampling")

    page = parser.add_argument_group("Gradio page")
    page.add_argument("--ui", action="store_true", help="serve a Gradio page instead of answering once")
    page.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    page.add_argument("--port", type=int, default=None, help="port (default: Gradio's, from 7860)")
    optional_bool_flag(page, "--share", False, "open a public gradio.live link")
    page.add_argument("--share_gradio", dest="share", type=str2bool, default=False, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = setup().parse_args(argv)
    if args.ui == (args.instruction is not None):
        raise InputError("give either --prompt TEXT (one answer on stdout) or --ui (a Gradio page)")
    if args.input is not None and args.instruction is None:
        raise InputError("--input goes with --prompt")
    if args.load_8bit and args.load_4bit:
        raise InputError("choose one of --load_8bit and --load_4bit")
    settings = DecodingSettings(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        num_beams=args.num_beams,
        seed=args.seed,
    )
    serve_config = None
    if args.ui:
        from sibo.decode.app import ServeConfig, _gradio

        serve_config = ServeConfig(host=args.host, port=args.port, share=args.share, title=_title(args))
        _gradio()  # a missing gradio should say so before the model loads
    model, tokenizer = load_model(args.base_model, args.weights_path, **model_loading_kwargs(args))
    if args.merge:
        model = merge_for_inference(model)
    if serve_config is not None:
        from sibo.decode.app import build_app, launch_app

        launch_app(build_app(model, tokenizer, serve_config, settings), serve_config)
        return 0
    for piece in stream_response(model, tokenizer, args.instruction, args.input, settings):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


def _title(args: argparse.Namespace) -> str:
    name = Path(args.weights_path or args.base_model).name or "model"
    return f"SIBO · {name}"
