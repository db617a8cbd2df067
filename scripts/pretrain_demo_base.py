"""Pretrain the demo's base model: a deep, narrow LLaMA that has learnt arithmetic word problems.

    python scripts/pretrain_demo_base.py --out src/sibo/assets/demo_base --steps 1500

`sibo demo` fine-tunes adapters on top of this model, offline and on 2 CPU cores. A random
model would learn nothing measurable in that time, so this script teaches a 12-layer model the
project's synthetic problems first, written as plain "Q: … \\nA: …" text (not the prompt template:
mapping the template onto the skill is what the adapters learn). It writes the weights with a
byte-level BPE tokenizer trained on the same text (plus the prompt template, so its words are
single tokens) and prints greedy-decoding accuracy on held-out problems. The result ships in
the package (a few MB), so nobody has to run this to use the demo.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import time
from pathlib import Path

import torch

from sibo.prompts import build_prompt
from sibo.study.synthetic import generate_problems
from sibo.testing import build_tiny_model, build_tokenizer

# The demo base: deep (over-smoothing needs depth) and narrow (2 CPU cores).
ARCHITECTURE = dict(num_layers=12, hidden_size=64, num_heads=4, ffn_size=192, max_positions=256)
PRETRAIN_SEED = 10_000  # the demo draws its fine-tune/test data from small seeds: no shared stream


def pretraining_text(record: dict[str, str]) -> str:
    return f"Q: {record['instruction']}{record['output']}"


def pack(token_lists: list[list[int]], eos_id: int, length: int) -> torch.Tensor:
    """Documents joined by EOS and cut into rows of `length` tokens: (N, length)."""
    stream = [token for tokens in token_lists for token in [*tokens, eos_id]]
    rows = len(stream) // length
    return torch.tensor(stream[: rows * length]).view(rows, length)


@torch.no_grad()
def greedy_accuracy(model, tokenizer, records: list[dict[str, str]], batch_size: int = 32) -> float:
    """Share of held-out problems whose greedy 'The answer is N' matches."""
    model.eval()
    correct = 0
    for start in range(0, len(records), batch_size):
        batch = records[start : start + batch_size]
        prompts = [f"Q: {record['instruction']}\nA:" for record in batch]
        encoded = tokenizer(prompts, return_tensors="pt", padding=True)
        generated = model.generate(
            **encoded, max_new_tokens=64, do_sample=False, pad_token_id=tokenizer.pad_token_id
        )
        texts = tokenizer.batch_decode(
            generated[:, encoded["input_ids"].shape[1] :], skip_special_tokens=True
        )
        for text, record in zip(texts, batch, strict=True):
            found = re.search(r"The answer is (\d+)", text)
            correct += bool(found) and found.group(1) == record["answer"]
    model.train()
    return correct / len(records)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="src/sibo/assets/demo_base", help="where the model and tokenizer go")
    parser.add_argument("--steps", type=int, default=1500, help="optimizer steps")
    parser.add_argument("--batch_size", type=int, default=32, help="rows of --seq_len tokens per step")
    parser.add_argument("--seq_len", type=int, default=128, help="packed row length")
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (cosine to 10%%)")
    parser.add_argument("--num_problems", type=int, default=60_000, help="synthetic problems to draw")
    parser.add_argument("--vocab_size", type=int, default=1024, help="BPE vocabulary size")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--eval_every", type=int, default=250, help="steps between held-out accuracy checks")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    records = generate_problems(args.num_problems, seed=PRETRAIN_SEED)
    held_out = generate_problems(128, seed=PRETRAIN_SEED + 1)
    texts = [pretraining_text(record) for record in records]
    template_texts = [build_prompt(record["instruction"]) + record["output"] for record in records[:2000]]
    tokenizer = build_tokenizer(texts[:20_000] + template_texts, vocab_size=args.vocab_size)
    token_lists = tokenizer(texts, add_special_tokens=False)["input_ids"]
    rows = pack(token_lists, tokenizer.eos_token_id, args.seq_len)
    print(f"{len(records)} problems -> {rows.shape[0]} rows of {args.seq_len} tokens", flush=True)

    model = build_tiny_model("llama", len(tokenizer), seed=0, **ARCHITECTURE).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01, betas=(0.9, 0.98))
    warmup = max(1, args.steps // 20)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, args.steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    generator = torch.Generator().manual_seed(0)
    started, history = time.time(), []
    for step in range(args.steps):
        batch = rows[torch.randint(0, rows.shape[0], (args.batch_size,), generator=generator)]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if (step + 1) % 25 == 0:
            print(f"step {step + 1} loss {loss.item():.4f} {time.time() - started:.0f}s", flush=True)
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
            accuracy = greedy_accuracy(model, tokenizer, held_out)
            history.append({"step": step + 1, "loss": round(loss.item(), 4), "held_out_accuracy": accuracy})
            print(f"step {step + 1} held-out greedy accuracy {accuracy:.3f}", flush=True)
            save(model, tokenizer, Path(args.out), args, history, time.time() - started)


def save(model, tokenizer, out: Path, args: argparse.Namespace, history: list[dict], seconds: float) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    card = {"script": "scripts/pretrain_demo_base.py", "args": vars(args), "architecture": ARCHITECTURE}
    card |= {"train_seconds": round(seconds), "history": history}
    (out / "pretraining.json").write_text(json.dumps(card, indent=1))


if __name__ == "__main__":
    main()
