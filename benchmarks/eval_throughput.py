"""Questions/s of `sibo evaluate`'s decoding vs the seed's recipe, side by side in one run.

    python benchmarks/eval_throughput.py --num_examples 16 --max_new_tokens 256
    python benchmarks/eval_throughput.py --device cuda --shape 0.5b --num_examples 64 --seed_examples 4
    python benchmarks/eval_throughput.py --device cuda --shape smollm2-135m --gsm8k_full

Both decode the same prompts (the first N gsm8k questions, LLM-Adapters' test.json) with a random
LLaMA built from a config carrying a SIBO LoRA (λ = 0.1, random B) on q, v, gate and up, and the
same beam search (4 beams, no sampling). `--shape` picks the config: `custom` (--layers × --hidden,
8 × 256 by default) or one of common.SHAPES: `smollm2-135m` (30 × 576, 9 heads / 3 KV heads, FFN
1536, vocab 49,152, tied embeddings) or `0.5b` (24 × 1280, 10 heads, FFN 3440, untied; as
benchmarks/gpu_check.sh runs it). The tokenizer is trained on the questions (realistic prompt
lengths); ids past its vocabulary decode to nothing.

- sibo evaluate: the adapter merged for inference (`sibo.core.merge.merge_for_inference`, exact; off
  with --merge False), prompts sorted by length, batches of --batch_size (auto: as the runner
  sizes them from free GPU memory; 8 on CPU), left padding, KV cache on
  (`sibo.decode.batch.generate_batch`, the function the runner calls).
- the seed (LLM-Adapters evaluate.py as the SIBO authors ran it): the unmerged adapter, one
  question per generate call, use_cache=False, so every new token recomputes the whole prefix for
  every beam. It runs on --seed_examples questions (default: all; 0: none) spread evenly over the
  prompt lengths; its time per question is what the ratio compares.

Every response gets exactly --max_new_tokens new tokens on both sides (min_new_tokens =
max_new_tokens, so EOS cannot end one early; the script checks it): the worst case. A sibo batch
holding seed questions is timed twice (before and after them), so load from other processes on
the machine falls on both alike. Prints questions/s, the ratio, how many of the seed's responses
sibo reproduces, and the time 1,319 gsm8k questions take (measured when all ran, else projected).
`--gsm8k_full`: every gsm8k question, greedy, 256 tokens, the seed on 2 of them. Time is given
twice: wall clock, and this process's CPU seconds (steadier when other jobs share the machine;
on a GPU only the wall clock counts).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import sys
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
    llm_adapters_dir,
    synchronize,
)
from peft import LoraConfig

from sibo import get_sibo_model
from sibo.cli._flags import str2bool
from sibo.core.merge import merge_for_inference
from sibo.decode.batch import auto_batch_size, generate_batch
from sibo.decode.settings import DecodingSettings
from sibo.prompts import RESPONSE_MARKER, build_prompt, cut_at_next_section
from sibo.testing import build_tokenizer

GSM8K_QUESTIONS = 1319


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num_examples", type=int, default=8, help="first N gsm8k questions")
    parser.add_argument(
        "--max_new_tokens",
        type=int,
        default=256,
        help="new tokens per response, forced (the seed's math budget)",
    )
    parser.add_argument(
        "--batch_size", default="auto", help="sibo evaluate's batch size, or auto (its default; 8 on CPU)"
    )
    parser.add_argument("--num_beams", type=int, default=4)
    add_shape_flag(parser, "custom", "--layers × --hidden, hidden / 32 heads, FFN 8/3 × hidden")
    parser.add_argument("--layers", type=int, default=8, help="blocks of the custom shape")
    parser.add_argument("--hidden", type=int, default=256, help="hidden size of the custom shape")
    parser.add_argument(
        "--seed_examples", type=int, default=None, help="questions the seed runs (default: all)"
    )
    for flag, default, help_text in (
        ("--merge", True, "sibo decodes with the adapter merged for inference"),
        ("--static_cache", False, "sibo decodes with a static KV cache (compiled steps on a GPU)"),
    ):
        parser.add_argument(
            flag, type=str2bool, nargs="?", const=True, default=default, metavar="BOOL", help=help_text
        )
    parser.add_argument(
        "--gsm8k_full", action="store_true", help="all of gsm8k, greedy, 256 tokens; the seed on 2 questions"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (more than the free cores slows every step)"
    )
    parser.add_argument(
        "--data_dir",
        default=None,
        help="LLM-Adapters data (default: $SIBO_DATA_DIR, else ../shared/data/llm-adapters)",
    )
    parser.add_argument("--json", default=None, help="also write the headline figures to this JSON file")
    add_device_flag(parser)
    args = parser.parse_args()
    if args.gsm8k_full:
        args.num_examples, args.num_beams, args.max_new_tokens = GSM8K_QUESTIONS, 1, 256
        args.seed_examples = 2 if args.seed_examples is None else args.seed_examples
    if args.batch_size != "auto":
        args.batch_size = int(args.batch_size)
    return args


def build_model(questions: list[str], args: argparse.Namespace):
    """A tokenizer trained on the questions (realistic prompt lengths) and a SIBO-boosted random LLaMA."""
    tokenizer = build_tokenizer([build_prompt(q) + " The answer is 42." for q in questions], vocab_size=2000)
    heads = args.hidden // 32
    custom = ModelShape(args.layers, args.hidden, heads, heads, args.hidden * 8 // 3)
    shape = SHAPES.get(args.shape, custom)
    lora = LoraConfig(
        r=8,
        lora_alpha=16,
        target_modules=["q_proj", "v_proj", "gate_proj", "up_proj"],
        init_lora_weights=False,
    )
    base = shape.build(len(tokenizer), args.device)
    return get_sibo_model(base, lora, lam=0.1).to(args.device).eval(), tokenizer


def seed_recipe(model, tokenizer, prompt: str, num_beams: int, max_new_tokens: int) -> str:
    """The seed's evaluate(): one prompt, no padding, no KV cache; the response after the marker."""
    input_ids = tokenizer(prompt, return_tensors="pt")["input_ids"].to(model.device)
    with torch.inference_mode():
        sequences = model.generate(
            input_ids=input_ids, num_beams=num_beams, do_sample=False, use_cache=False,
            max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
        )  # fmt: skip
    decoded = tokenizer.decode(sequences[0], skip_special_tokens=True)
    return cut_at_next_section(decoded.split(RESPONSE_MARKER, 1)[-1]).strip()


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
    data_file = Path(args.data_dir or llm_adapters_dir()) / "gsm8k" / "test.json"
    if not data_file.is_file():
        sys.exit(f"gsm8k not found at {data_file}: pass --data_dir or set SIBO_DATA_DIR")
    records = json.loads(data_file.read_text())
    questions = [record["instruction"] for record in records]
    seed_model, tokenizer = build_model(questions, args)
    seed_model.to(args.device, compute_dtype(args.device))
    model = merge_for_inference(copy.deepcopy(seed_model)) if args.merge else seed_model
    prompts = [build_prompt(q) for q in questions[: args.num_examples]]
    n = len(prompts)
    lengths = [len(tokenizer(p)["input_ids"]) for p in prompts]
    order = sorted(range(n), key=lambda i: -lengths[i])  # as the runner sorts them
    size = args.batch_size
    if size == "auto":
        size = auto_batch_size(model, max(lengths), args.max_new_tokens, args.num_beams)
    batches = [order[i : i + size] for i in range(0, n, size)]
    # the seed's questions spread evenly over the prompt lengths, since its cost per question grows with them
    k = n if args.seed_examples is None else min(args.seed_examples, n)
    seed_set = {order[(j * n) // k] for j in range(k)}

    for warm in (model, seed_model):  # CUDA context, kernels and allocator: not part of either side's time
        generate_batch(
            warm, tokenizer, prompts[:1], DecodingSettings(num_beams=args.num_beams, max_new_tokens=2)
        )
    counters = [count_new_tokens(each) for each in dict.fromkeys((model, seed_model))]
    sibo_seconds = seed_seconds = sibo_cpu = seed_cpu = 0.0
    sibo_out, seed_out = {}, {}

    def timed(function, *call_args, **kwargs):
        synchronize(args.device)
        start, start_cpu = time.perf_counter(), time.process_time()
        result = function(*call_args, **kwargs)
        synchronize(args.device)
        return result, time.perf_counter() - start, time.process_time() - start_cpu

    decoding = DecodingSettings(
        num_beams=args.num_beams, max_new_tokens=args.max_new_tokens, static_cache=args.static_cache
    )

    def sibo_batch(batch: list[int]) -> tuple[list[str], float, float]:
        return timed(
            generate_batch, model, tokenizer, [prompts[i] for i in batch], decoding,
            min_new_tokens=args.max_new_tokens,
        )  # fmt: skip

    for batch in batches:
        # a batch with seed questions runs before and after them (mean of the two), so a burst of load
        # from other jobs during its few seconds weighs no more than during the seed's minutes
        responses, wall, cpu = sibo_batch(batch)
        mine = [i for i in batch if i in seed_set]
        for i in mine:
            seed_out[i], wall_seed, cpu_seed = timed(
                seed_recipe, seed_model, tokenizer, prompts[i], args.num_beams, args.max_new_tokens
            )
            seed_seconds += wall_seed
            seed_cpu += cpu_seed
        if mine:
            again, wall_after, cpu_after = sibo_batch(batch)
            assert again == responses
            wall, cpu = (wall + wall_after) / 2, (cpu + cpu_after) / 2
        sibo_seconds += wall
        sibo_cpu += cpu
        sibo_out.update(zip(batch, responses, strict=True))
        print(f"  {len(sibo_out)}/{n}: sibo {sibo_seconds:.1f}s, seed {seed_seconds:.1f}s", flush=True)
    # the same work per example on both sides
    new_token_counts = {count for counts in counters for count in counts}
    assert new_token_counts == {args.max_new_tokens}, new_token_counts

    seeds = len(seed_set)
    config = seed_model.config
    print(f"command: python {' '.join(sys.argv)}")
    print(f"machine: {describe_machine(args.device)}, {torch.get_num_threads()} threads; on {args.device}, "
          f"{compute_dtype(args.device)}")  # fmt: skip
    print(f"date: {datetime.date.today()}")
    print(f"model: llama {args.shape} {config.num_hidden_layers} layers, hidden {config.hidden_size}, "
          f"{config.num_attention_heads}/{config.num_key_value_heads} heads, FFN {config.intermediate_size}, "
          f"vocab {config.vocab_size}; SIBO LoRA λ=0.1, {'merged for inference' if args.merge else 'unmerged'}{', static cache' if args.static_cache else ''}")  # fmt: skip
    print(f"prompts: {n} gsm8k questions, {min(lengths)}-{max(lengths)} tokens; {args.max_new_tokens} new tokens each, "
          f"{args.num_beams} beams; sibo batch {size}; the seed on {seeds}")  # fmt: skip
    for clock, sibo_time, seed_time in (("wall", sibo_seconds, seed_seconds), ("cpu", sibo_cpu, seed_cpu)):
        seed = (
            f"; seed (batch 1, use_cache=False) {seeds / seed_time:.4f} questions/s ({seed_time:.1f}s for {seeds}); "
            f"speed-up {(seed_time / seeds) / (sibo_time / n):.1f}x"
            if seeds
            else ""
        )
        print(
            f"{clock:>4} clock: sibo evaluate {n / sibo_time:.4f} questions/s ({sibo_time:.1f}s for {n}){seed}"
        )
    verb = "measured" if n == GSM8K_QUESTIONS else "projected"
    print(f"gsm8k, {GSM8K_QUESTIONS} questions at these settings: {verb} {GSM8K_QUESTIONS * sibo_seconds / n:.1f}s "
          f"(sibo evaluate, wall clock)")  # fmt: skip
    print(f"identical responses: {sum(sibo_out[i] == seed_out[i] for i in seed_out)}/{seeds}")
    if args.json:
        figures = {
            "shape": args.shape,
            "questions": n,
            "questions_per_s": n / sibo_seconds,
            "speedup": (seed_seconds / seeds) / (sibo_seconds / n) if seeds else None,  # wall clock
            "seconds": GSM8K_QUESTIONS * sibo_seconds / n,  # all of gsm8k at these settings
            "measured": n == GSM8K_QUESTIONS,
        }
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
