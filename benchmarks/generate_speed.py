"""Generation speed with the KV cache: LoRA-SIBO vs plain LoRA on the same random model (target ≥ 0.95×).

    python benchmarks/generate_speed.py [--layers 8 --hidden 512 --new_tokens 64 --batch 1 4 --repeats 7]
    python benchmarks/generate_speed.py --device cuda --layers 24 --hidden 1280   # bf16, wall clock
    python benchmarks/generate_speed.py --merge   # both merged for inference, as sibo evaluate decodes

Both models hold identical weights; runs alternate (plain, SIBO, plain, …) so machine load hits both
alike, and the ratio compares medians. On a shared machine, `--clock cpu` (the default) times the
process's CPU seconds, which other processes' load barely moves; `--clock wall` times elapsed seconds
(always so on a GPU, where the models run in bf16). SIBO's extra work per step is one block-0 pre-hook and one
lerp per boosted branch on the new position only, so the ratio should sit near 1.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from common import add_device_flag, compute_dtype, describe_machine, synchronize
from peft import LoraConfig, get_peft_model

from sibo import get_sibo_model
from sibo.cli._flags import optional_bool_flag
from sibo.export import merge_for_inference
from sibo.prompts import build_prompt
from sibo.tiny import build_tiny_model, build_tokenizer


def setup() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=8, help="transformer blocks")
    parser.add_argument("--hidden", type=int, default=512, help="hidden size (FFN width is 2.75×)")
    parser.add_argument("--new_tokens", type=int, default=64, help="tokens generated per run (EOS disabled)")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4], help="batch sizes to time")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per model and batch size")
    parser.add_argument("--lam", type=float, default=0.1, help="SIBO's λ")
    parser.add_argument("--targets", default="ffn", help="SIBO targets: ffn, attn or all")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument(
        "--clock", choices=("cpu", "wall"), default="cpu", help="CPU seconds or elapsed seconds (cpu only)"
    )
    optional_bool_flag(
        parser, "--merge", False, "both merged for inference, as sibo evaluate decodes (SIBO keeps λ·ΔW·h0)"
    )
    add_device_flag(parser)
    return parser


def build_models(args: argparse.Namespace, vocab_size: int):
    def base():
        return build_tiny_model(
            "llama",
            vocab_size,
            num_layers=args.layers,
            hidden_size=args.hidden,
            num_heads=max(args.hidden // 64, 1),
            ffn_size=int(args.hidden * 2.75),
            max_positions=2048,
        )

    lora = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=False)
    torch.manual_seed(0)
    plain = get_peft_model(base(), lora).eval()
    torch.manual_seed(0)
    boosted = get_sibo_model(base(), lora, lam=args.lam, targets=args.targets).eval()
    boosted.load_state_dict(plain.state_dict())  # identical weights (a fixed λ is not a parameter)
    dtype = compute_dtype(args.device)
    plain, boosted = plain.to(args.device, dtype), boosted.to(args.device, dtype)
    if args.merge:  # plain LoRA folds away entirely; SIBO keeps a rank-r residual on its boosted modules
        plain, boosted = merge_for_inference(plain), merge_for_inference(boosted)
    return plain, boosted


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


def main() -> None:
    args = setup().parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device != "cpu":
        args.clock = "wall"  # CPU seconds do not count a GPU's work
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    tokenizer = build_tokenizer()
    plain, boosted = build_models(args, len(tokenizer))
    prompts = [build_prompt(f"Add {i} and {i + 3}.") for i in range(max(args.batch))]
    print(
        f"# {describe_machine(args.device)}, {args.device}, {torch.get_num_threads()} threads; llama {args.layers}×{args.hidden}, LoRA r=8 all-linear, "
        f"SIBO λ={args.lam} targets={args.targets}{', merged for inference' if args.merge else ''}, {args.new_tokens} new tokens, KV cache on, "
        f"{args.clock} clock, median of {args.repeats}"
    )
    print(f"{'batch':>5} {'plain tok/s':>12} {'SIBO tok/s':>11} {'SIBO/plain':>10}")
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
        print(f"{batch_size:>5} {plain_rate:>12.1f} {sibo_rate:>11.1f} {sibo_rate / plain_rate:>9.3f}×")


if __name__ == "__main__":
    main()
