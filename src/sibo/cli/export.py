"""`sibo export`: merge an adapter into a standalone checkpoint (exact, or --approximate for λ > 0).

sibo export [--base_model B] --weights_path W --output_dir O [--format hf|state_dict] [--approximate]
"""

from __future__ import annotations

import argparse
from dataclasses import MISSING

from sibo.checkpoint.config import MODEL_FLAG_SPELLINGS, ExportConfig, ModelConfig
from sibo.cli._flags import ArgumentParser, add_dataclass_flags, dataclass_values
from sibo.progress import announce

# A quantized base has no merged form: export loads the base in full precision. It prompts nothing: the
# template the adapter records is copied beside the export.
SKIPPED_MODEL_FLAGS = ("load_8bit", "load_4bit", "template")


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="sibo export", description=__doc__.split("\n\n")[0])
    add_dataclass_flags(
        parser,
        ModelConfig,
        rename=MODEL_FLAG_SPELLINGS,
        skip=SKIPPED_MODEL_FLAGS,
        defaults={"weights_path": MISSING},
        helps={
            "weights_path": "adapter folder to merge",
            "dtype": "dtype to load and save in: bf16, fp16, fp32, or auto: merge in fp32 on CPU (bf16/fp16 on "
            "GPU) and save in the base's dtype (a GGUF base's: bf16)",
        },
        group="model",
    )
    add_dataclass_flags(parser, ExportConfig, skip=("adapter_name",), group="export")
    return parser


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    from sibo.checkpoint.config import EXPORT_VERB
    from sibo.output_dir import refuse_replacing

    config = ExportConfig(**dataclass_values(args, ExportConfig, skip=("adapter_name",)))
    source = ModelConfig(**dataclass_values(args, ModelConfig, skip=SKIPPED_MODEL_FLAGS))
    reads = [("--weights_path", source.weights_path), ("--base_model", source.base_model)]
    refuse_replacing(config.output_dir, EXPORT_VERB, [(flag, path) for flag, path in reads if path])
    announce(f"to merge into {config.output_dir}", base=source.base_model, adapter=source.weights_path)
    from sibo.checkpoint.export import export_adapter
    from sibo.checkpoint.load import RESIDUAL_DIR, load_for_decoding
    from sibo.checkpoint.portable import saved_dtype

    model, tokenizer, template = load_for_decoding(source, merge=False)
    # the export carries the adapter's record of its template; an adapter without one gets none
    dtype = saved_dtype(source.base_model, source.dtype)
    report = export_adapter(
        model, tokenizer, config, template if source.template_file else None, dtype, source.weights_path
    )
    if report.residual_modules:
        print(
            f"exact export: merged base + SIBO residual adapter on {len(report.residual_modules)} modules "
            f"in {report.output_dir / RESIDUAL_DIR} (sibo loads the directory as a base model: --base_model DIR; "
            "transformers alone: from_pretrained(DIR, trust_remote_code=True))"
        )
    elif report.exact:
        print(f"exact export: standalone merged checkpoint ({config.format})")
    else:
        print(
            "approximate export: the λ·ΔW·h0 term is dropped; "
            f"largest |Δlogit| on probe prompts = {report.max_logit_deviation:.6g}"
        )
    for file in report.files:
        print(f"wrote {file}")
    saved_in = str(dtype or next(model.parameters()).dtype).removeprefix("torch.")
    print(f"export size: {report.size_bytes / 1e6:.1f} MB ({saved_in})")
    return 0
