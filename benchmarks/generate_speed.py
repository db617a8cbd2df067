"""Generation speed with the KV cache: LoRA-SIBO vs plain LoRA on the same random model (target ≥ 0.95×).

    python benchmarks/generate_speed.py [--layers 8 --hidden 512 --new_tokens 64 --batch 1 4 --repeats 7]
    python benchmarks/generate_speed.py --device cuda --shape 0.5b   # bf16, wall clock
    python benchmarks/generate_speed.py --merge   # both merged for inference, as sibo evaluate decodes
    python benchmarks/generate_speed.py --merge both --json out.json   # unmerged, then merged: one build

Both models hold identical weights (`--shape`: custom --layers × --hidden, or one of common.SHAPES);
runs alternate (plain, SIBO, plain, …) so machine load hits both alike, and the ratio compares
medians. On a shared machine, `--clock cpu` (the default) times the process's CPU seconds, which
other processes' load barely moves; `--clock wall` times elapsed seconds (always so on a GPU, where
the models run in bf16). SIBO's extra work per step is one block-0 pre-hook and one lerp per boosted
branch on the new position only, so the ratio should sit near 1.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from common import (
    SHAPES,
    ModelShape,
    add_device_flag,
    add_shape_flag,
    compute_dtype,
    describe_machine,
    synchronize,
)
from peft import LoraConfig, get_peft_model

from sibo import get_sibo_model
from sibo.cli._flags import str2bool
from sibo.core.merge import merge_for_inference
from sibo.prompts import build_prompt
from sibo.testing import build_tokenizer

MERGE_MODES = {False: ("unmerged",), True: ("merged",), "both": ("unmerged", "merged")}


def merge_mode(value: str) -> bool | str:
    """`--merge`, `--merge True/False` as sibo's boolean flags, or `--merge both`."""
    return "both" if value.strip().lower() == "both" else str2bool(value)


def setup() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_shape_flag(parser, "custom", "--layers × --hidden, hidden / 64 heads, FFN 2.75 × hidden")
    parser.add_argument("--layers", type=int, default=8, help="transformer blocks of the custom shape")
    parser.add_argument("--hidden", type=int, default=512, help="hidden size of the custom shape")
    parser.add_argument("--new_tokens", type=int, default=64, help="tokens generated per run (EOS disabled)")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4], help="batch sizes to time")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per model and batch size")
    parser.add_argument("--lam", type=float, default=0.1, help="SIBO's λ")
    parser.add_argument("--targets", default="ffn", help="SIBO targets: ffn, attn or all")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument(
        "--clock", choices=("cpu", "wall"), default="cpu", help="CPU seconds or elapsed seconds (cpu only)"
    )
    parser.add_argument(
        "--merge", type=merge_mode, nargs="?", const=True, default=False,
        help="both models merged for inference, as sibo evaluate decodes (SIBO keeps λ·ΔW·h0); `both`: "
        "time them unmerged, then merge and time them again (default: False)",
    )  # fmt: skip
    parser.add_argument("--json", type=Path, default=None, help="also write the ratios to this JSON file")
    add_device_flag(parser)
    return parser


def build_models(args: argparse.Namespace, vocab_size: int):
    """Plain LoRA and LoRA-SIBO on the same random base, unmerged, in the device's compute dtype."""
    heads = max(args.hidden // 64, 1)
    custom = ModelShape(args.layers, args.hidden, heads, heads, int(args.hidden * 2.75))
    shape = SHAPES.get(args.shape, custom)
    lora = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=False)
    plain = get_peft_model(shape.build(vocab_size, args.device), lora).eval()
    boosted = get_sibo_model(shape.build(vocab_size, args.device), lora, lam=args.lam, targets=args.targets)
    boosted.eval()
    boosted.load_state_dict(plain.state_dict())  # identical weights (a fixed λ is not a parameter)
    dtype = compute_dtype(args.device)
    return plain.to(args.device, dtype), boosted.to(args.device, dtype)


@torch.inference_mode()
def time_generate(
    model, inputs: dict, new_tokens: int, pad_token_id: int, clock=time.process_time, device: str = "cpu"
) -> float:
    synchronize(device)
    start = clock()
    output = model.generate(
        **inputs,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        use_cache=True,
        pad_token_id=pad_token_id,
    )
    synchronize(device)
    elapsed = clock() - start
    assert output.shape[1] == inputs["input_ids"].shape[1] + new_tokens
    return elapsed


def time_models(plain, boosted, tokenizer, prompts: list[str], args, clock) -> dict[int, dict[str, float]]:
    """Tokens/s of each model and their ratio, per batch size; prints a table row per batch size."""
    print(f"{'batch':>5} {'plain tok/s':>12} {'SIBO tok/s':>11} {'SIBO/plain':>10}")
    rates = {}
    for batch_size in args.batch:
        inputs = tokenizer(prompts[:batch_size], return_tensors="pt", padding=True).to(args.device)
        for model in (plain, boosted):  # warm-up
            time_generate(model, inputs, 4, tokenizer.pad_token_id, device=args.device)
        times: dict[str, list[float]] = {"plain": [], "sibo": []}
        for _ in range(args.repeats):
            for name, model in (("plain", plain), ("sibo", boosted)):
                times[name].append(
                    time_generate(model, inputs, args.new_tokens, tokenizer.pad_token_id, clock, args.device)
                )
        tokens = batch_size * args.new_tokens
        plain_rate = tokens / statistics.median(times["plain"])
        sibo_rate = tokens / statistics.median(times["sibo"])
        rates[batch_size] = {"plain": plain_rate, "sibo": sibo_rate, "ratio": sibo_rate / plain_rate}
        print(f"{batch_size:>5} {plain_rate:>12.1f} {sibo_rate:>11.1f} {sibo_rate / plain_rate:>9.3f}×")
    return rates


def main() -> None:
    args = setup().parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device != "cpu":
        args.clock = "wall"  # CPU seconds do not count a GPU's work
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    tokenizer = build_tokenizer()
    plain, boosted = build_models(args, len(tokenizer))
    config = plain.config
    prompts = [build_prompt(f"Add {i} and {i + 3}.") for i in range(max(args.batch))]
    print(
        f"# {describe_machine(args.device)}, {args.device}, {torch.get_num_threads()} threads; llama {args.shape} "
        f"{config.num_hidden_layers}×{config.hidden_size}, {config.num_attention_heads} heads, FFN "
        f"{config.intermediate_size}, LoRA r=8 all-linear, SIBO λ={args.lam} targets={args.targets}, "
        f"{args.new_tokens} new tokens, KV cache on, {args.clock} clock, median of {args.repeats}"
    )
    results = {}
    for mode in MERGE_MODES[args.merge]:
        if mode == "merged":  # plain LoRA folds away; SIBO keeps its λ·ΔW·h0 terms (sibo.core.merged_hooks)
            plain, boosted = merge_for_inference(plain), merge_for_inference(boosted)
        print(f"# {'merged for inference' if mode == 'merged' else 'unmerged'}")
        results[mode] = time_models(plain, boosted, tokenizer, prompts, args, clock)
        if args.json is not None:  # after each mode, so a run stopped in the second keeps the first
            args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
