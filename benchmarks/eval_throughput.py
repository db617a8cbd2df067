"""Examples/s of `sibo evaluate`'s decoding vs the seed's recipe, side by side in one run.

    python benchmarks/eval_throughput.py --num_examples 16 --max_new_tokens 256
    python benchmarks/eval_throughput.py --device cuda --layers 24 --hidden 1280   # bf16 on a GPU

Both decode the same prompts (the first N gsm8k questions, LLM-Adapters' test.json) with the same
model: a random LLaMA built from a config (8 layers, hidden 256 by default) carrying a SIBO LoRA
(λ = 0.1, random B), and the same beam search (4 beams, no sampling).

- sibo evaluate: prompts sorted by length, batches of --batch_size, left padding, KV cache on
  (`sibo.evaluate.generate_responses`, the function the runner calls).
- the seed (LLM-Adapters evaluate.py as the SIBO authors ran it): one question per generate call,
  use_cache=False, so every new token recomputes the whole prefix for every beam.

Every response gets exactly --max_new_tokens new tokens in both (min_new_tokens = max_new_tokens,
so EOS cannot end one early; the script checks it). The two alternate batch by batch, and each
sibo batch is timed twice (before and after the seed's questions), so load from other processes
on the machine falls on both alike. Prints examples/s, the ratio, and how many responses are
identical. Time is given twice: wall clock, and this process's CPU seconds (steadier when other
jobs share the machine; on a GPU only the wall clock counts).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

import torch
from common import add_device_flag, compute_dtype, describe_machine
from peft import LoraConfig

from sibo import get_sibo_model
from sibo.evaluate import generate_responses
from sibo.prompts import build_prompt, extract_response
from sibo.tasks import default_data_dir
from sibo.tiny import build_tiny_model, build_tokenizer


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num_examples", type=int, default=8, help="first N gsm8k questions")
    parser.add_argument(
        "--max_new_tokens",
        type=int,
        default=256,
        help="new tokens per response, forced (the seed's math budget)",
    )
    parser.add_argument("--batch_size", type=int, default=8, help="sibo evaluate's batch size (its default)")
    parser.add_argument("--num_beams", type=int, default=4)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (more than the free cores slows every step)"
    )
    parser.add_argument(
        "--data_dir", default=None, help="LLM-Adapters data (default: as sibo evaluate finds it)"
    )
    add_device_flag(parser)
    return parser.parse_args()


def build_model(questions: list[str], layers: int, hidden: int):
    """A tokenizer trained on the questions (realistic prompt lengths) and a SIBO-boosted random LLaMA."""
    tokenizer = build_tokenizer([build_prompt(q) + " The answer is 42." for q in questions], vocab_size=2000)
    base = build_tiny_model(
        "llama", len(tokenizer), num_layers=layers, hidden_size=hidden, num_heads=hidden // 32,
        ffn_size=hidden * 8 // 3, max_positions=2048,
    )  # fmt: skip
    lora = LoraConfig(
        r=8,
        lora_alpha=16,
        target_modules=["q_proj", "v_proj", "gate_proj", "up_proj"],
        init_lora_weights=False,
    )
    return get_sibo_model(base, lora, lam=0.1).eval(), tokenizer


def seed_recipe(model, tokenizer, prompt: str, num_beams: int, max_new_tokens: int) -> str:
    """The seed's evaluate(): one prompt, no padding, no KV cache; the response after the marker."""
    input_ids = tokenizer(prompt, return_tensors="pt")["input_ids"].to(model.device)
    with torch.inference_mode():
        sequences = model.generate(
            input_ids=input_ids, num_beams=num_beams, do_sample=False, use_cache=False,
            max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
        )  # fmt: skip
    return extract_response(tokenizer.decode(sequences[0], skip_special_tokens=True))


def count_new_tokens(model) -> list[int]:
    """Record how many tokens each generate call added (both sides call model.generate)."""
    counts: list[int] = []
    generate = model.generate

    def counted(*args, **kwargs):
        sequences = generate(*args, **kwargs)
        counts.append(sequences.shape[1] - kwargs["input_ids"].shape[1])
        return sequences

    model.generate = counted
    return counts


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    data_file = Path(args.data_dir or default_data_dir()) / "gsm8k" / "test.json"
    if not data_file.is_file():
        sys.exit(f"gsm8k not found at {data_file}: pass --data_dir or set SIBO_DATA_DIR")
    records = json.loads(data_file.read_text())
    questions = [record["instruction"] for record in records]
    model, tokenizer = build_model(questions, args.layers, args.hidden)
    model.to(args.device, compute_dtype(args.device))
    prompts = [build_prompt(q) for q in questions[: args.num_examples]]
    lengths = [len(tokenizer(p)["input_ids"]) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: -lengths[i])  # as the runner sorts them
    batches = [order[i : i + args.batch_size] for i in range(0, len(order), args.batch_size)]

    new_token_counts = count_new_tokens(model)
    sibo_seconds = seed_seconds = sibo_cpu = seed_cpu = 0.0
    sibo_out, seed_out = {}, {}

    def sibo_batch(batch: list[int]) -> tuple[list[str], float, float]:
        start, start_cpu = time.perf_counter(), time.process_time()
        responses = generate_responses(
            model, tokenizer, [prompts[i] for i in batch], num_beams=args.num_beams,
            max_new_tokens=args.max_new_tokens, min_new_tokens=args.max_new_tokens,
        )  # fmt: skip
        return responses, time.perf_counter() - start, time.process_time() - start_cpu

    for batch in batches:
        # sibo's batch runs before and after the seed's questions (mean of the two), so a burst of
        # load from other jobs during its few seconds weighs no more than during the seed's minutes
        responses, wall_before, cpu_before = sibo_batch(batch)
        for i in batch:
            start, start_cpu = time.perf_counter(), time.process_time()
            seed_out[i] = seed_recipe(model, tokenizer, prompts[i], args.num_beams, args.max_new_tokens)
            seed_seconds += time.perf_counter() - start
            seed_cpu += time.process_time() - start_cpu
        again, wall_after, cpu_after = sibo_batch(batch)
        assert again == responses
        sibo_seconds += (wall_before + wall_after) / 2
        sibo_cpu += (cpu_before + cpu_after) / 2
        sibo_out.update(zip(batch, responses, strict=True))
        print(
            f"  {len(sibo_out)}/{len(prompts)}: sibo {sibo_seconds:.1f}s, seed {seed_seconds:.1f}s",
            flush=True,
        )
    # the same work per example on both sides
    assert set(new_token_counts) == {args.max_new_tokens}, new_token_counts

    n = len(prompts)
    print(f"command: python {' '.join(sys.argv)}")
    print(f"machine: {describe_machine(args.device)}, {torch.get_num_threads()} threads; on {args.device}")
    print(f"date: {datetime.date.today()}")
    print(f"model: llama {args.layers} layers, hidden {args.hidden}, vocab {len(tokenizer)}, SIBO LoRA λ=0.1")
    print(f"prompts: {n} gsm8k questions, {min(lengths)}-{max(lengths)} tokens; {args.max_new_tokens} new tokens each, "
          f"{args.num_beams} beams")  # fmt: skip
    for clock, sibo_time, seed_time in (("wall", sibo_seconds, seed_seconds), ("cpu", sibo_cpu, seed_cpu)):
        print(
            f"{clock:>4} clock: sibo evaluate (batch {args.batch_size}, KV cache) {n / sibo_time:.4f} examples/s "
            f"({sibo_time:.1f}s); seed (batch 1, use_cache=False) {n / seed_time:.4f} examples/s "
            f"({seed_time:.1f}s); speed-up {seed_time / sibo_time:.1f}x"
        )
    print(f"identical responses: {sum(sibo_out[i] == seed_out[i] for i in order)}/{n}")


if __name__ == "__main__":
    main()
