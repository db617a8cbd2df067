"""`sibo export`: merge an adapter into a standalone checkpoint (exact, or --approximate for λ > 0).

sibo export --base_model B --weights_path W --output_dir O [--format hf|state_dict] [--approximate]
"""

from __future__ import annotations

import argparse

from sibo.checkpoint.export import FORMATS, ExportConfig, export_adapter
from sibo.checkpoint.load import RESIDUAL_DIR, load_model
from sibo.cli._flags import optional_bool_flag


def setup() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sibo export", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--base_model", required=True, help="base model: a folder, a .gguf file, or a hub name when online"
    )
    parser.add_argument("--weights_path", "--lora_weights", required=True, help="adapter directory to merge")
    parser.add_argument("--output_dir", required=True, help="directory to create (absent or empty)")
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="hf",
        help="hf: save_pretrained checkpoint + tokenizer; state_dict: the merged weights as one safetensors file",
    )
    optional_bool_flag(
        parser,
        "--approximate",
        False,
        "for λ > 0: write a plain merged checkpoint that drops the λ·ΔW·h0 term, and report the largest |Δlogit|",
    )
    optional_bool_flag(
        parser, "--overwrite", False, ExportConfig.__dataclass_fields__["overwrite"].metadata["help"]
    )
    parser.add_argument(
        "--embedding_lambda",
        "--lam",
        dest="lam",
        type=float,
        default=None,
        help="override the adapter's stored λ",
    )
    parser.add_argument(
        "--task", choices=("causal-lm", "sequence-classification"), default="causal-lm", help="model head"
    )
    parser.add_argument("--dtype", default="auto", help="dtype to load and save in: auto, bf16, fp16, fp32")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = setup().parse_args(argv)
    config = ExportConfig(
        output_dir=args.output_dir, format=args.format, approximate=args.approximate, overwrite=args.overwrite
    )
    model, tokenizer = load_model(
        args.base_model, args.weights_path, lam=args.lam, dtype=args.dtype, task=args.task
    )
    report = export_adapter(model, tokenizer, config)
    if report.residual_modules:
        print(
            f"exact export: merged base + SIBO residual adapter on {len(report.residual_modules)} modules "
            f"in {report.output_dir / RESIDUAL_DIR} (sibo loads the directory as a base model: --base_model DIR)"
        )
    elif report.exact:
        print(f"exact export: standalone merged checkpoint ({args.format})")
    else:
        print(
            "approximate export: the λ·ΔW·h0 term is dropped; "
            f"largest |Δlogit| on probe prompts = {report.max_logit_deviation:.6g}"
        )
    for file in report.files:
        print(f"wrote {file}")
    return 0
