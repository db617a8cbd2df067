"""`sibo evaluate`: accuracy of a base model or adapter on the paper's math and commonsense benchmarks.

    sibo evaluate --base_model B --weights_path W --dataset math --output_dir O
    sibo evaluate --base_model B --lora_weights W --dataset gsm8k --embedding_lambda 0.2 --batch_size 16
    torchrun --nproc_per_node 4 -m sibo evaluate --base_model B --weights_path W --dataset commonsense

The seed's flags work as they are: --lora_weights, --embedding_lambda, --load_8bit, --batch_size,
and --model / --adapter (recorded in run.json, they choose nothing). Results: O/<dataset>.jsonl
(one line per example, resumable), O/summary.json, and a table on stdout.
"""

from __future__ import annotations

import argparse

from sibo.cli._flags import add_merge_flag, add_model_flags, model_loading_kwargs, optional_bool_flag
from sibo.decode.settings import CPU_BATCH_SIZE, DecodingSettings
from sibo.eval.runner import EvalConfig, accelerate_shard, evaluate, load_benchmarks
from sibo.eval.tasks import EXTRACTION_MODES, default_data_dir


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sibo evaluate", description=__doc__.split("\n\n")[0])
    add_model_flags(parser)
    parser.add_argument(
        "--dataset", required=True,
        help="comma-separated names (AddSub, MultiArith, SingleEq, gsm8k, AQuA, SVAMP, mawps, boolq, piqa, "
        "social_i_qa, hellaswag, winogrande, ARC-Easy, ARC-Challenge, openbookqa), or math / commonsense",
    )  # fmt: skip
    parser.add_argument(
        "--data_dir", default=None,
        help="folder holding <Name>/test.json (default: $SIBO_DATA_DIR, else ../shared/data/llm-adapters "
        "beside the checkout, else ./dataset as in the seed)",
    )  # fmt: skip
    parser.add_argument(
        "--output_dir", default="outputs/evaluate", help="where results go (default: %(default)s)"
    )
    parser.add_argument(
        "--batch_size", type=batch_size, default="auto",
        help="questions per generate call, or auto: as many as the GPU's free memory holds, halved on "
        f"out-of-memory; {CPU_BATCH_SIZE} on CPU (default: %(default)s)",
    )  # fmt: skip
    add_merge_flag(parser)
    optional_bool_flag(
        parser, "--static_cache", False,
        "a static KV cache; on a GPU transformers then compiles each decoding step (CUDA graphs)",
    )  # fmt: skip
    parser.add_argument(
        "--num_beams", type=int, default=4, help="beam width; 1 is greedy (default: %(default)s, the seed's)"
    )
    parser.add_argument(
        "--max_new_tokens", type=int, default=None,
        help="new tokens per response (default: the seed's, 256 for math and 32 for commonsense)",
    )  # fmt: skip
    parser.add_argument(
        "--extraction", choices=EXTRACTION_MODES, default="careful",
        help="careful (default) or legacy: the seed's answer-reading rules, for comparable numbers",
    )  # fmt: skip
    parser.add_argument(
        "--limit", type=int, default=None, help="score only the first N examples of each dataset"
    )
    parser.add_argument("--model", default=None, help="the seed's model name (LLaMA-7B, …): recorded only")
    parser.add_argument("--adapter", default=None, help="the seed's adapter name (LoRA, …): recorded only")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = EvalConfig(
        datasets=args.dataset,
        data_dir=args.data_dir or default_data_dir(),
        output_dir=args.output_dir,
        extraction=args.extraction,
        limit=args.limit,
        decoding=DecodingSettings(
            batch_size=args.batch_size,
            num_beams=args.num_beams,
            max_new_tokens=args.max_new_tokens,
            static_cache=args.static_cache,
        ),
    )
    benchmarks = load_benchmarks(config)  # a missing or malformed file stops us before any model loads

    from sibo.checkpoint.load import load_model

    shard, device = accelerate_shard()
    loading = model_loading_kwargs(args)
    device_map = {"": str(device)} if device.type != "cpu" else None
    model, tokenizer = load_model(args.base_model, args.weights_path, device_map=device_map, **loading)
    if args.merge:
        from sibo.checkpoint.export import merge_for_inference

        model = merge_for_inference(model)
    run_info = {
        "base_model": args.base_model,
        "weights_path": args.weights_path,
        "embedding_lambda": args.lam,
        "quantization": loading["quantization"],
        "dtype": args.dtype,
        "model": args.model,
        "adapter": args.adapter,
    }
    results = evaluate(model, tokenizer, config, benchmarks, run_info, shard)
    if shard.is_main:
        print(format_table(results))
        print(f"results in {config.output_dir}")
    return 0


def batch_size(value: str) -> int | str:
    """`--batch_size 16` or `--batch_size auto`."""
    if value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or auto, got {value!r}") from None


def format_table(results) -> str:
    rows = [f"{'dataset':<14} {'n':>6} {'correct':>8} {'accuracy':>9}"]
    rows += [f"{name:<14} {r.n:>6} {r.correct:>8} {r.accuracy:>9.4f}" for name, r in results.items()]
    if len(results) > 1:
        mean = sum(r.accuracy for r in results.values()) / len(results)
        rows.append(f"{'average':<14} {'':>6} {'':>8} {mean:>9.4f}")
    return "\n".join(rows)
