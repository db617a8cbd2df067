"""SIBO inside TRL's SFTTrainer: `sibo.get_sibo_model` returns a PeftModel, and TRL takes it as it is.

    pip install 'sibo[trl]'
    python examples/trl_sft.py --base_model HuggingFaceTB/SmolLM2-135M --data_path math_10k.json \
        --output_dir out --embedding_lambda 0.1

The instruction records (any data `sibo finetune` reads: JSON, JSONL, CSV, Parquet, a save_to_disk
folder or a hub name, with --data_columns) become TRL prompt-completion pairs in Alpaca's template.
Chat records are refused in one line: they train with `sibo finetune` (the loss on the assistant turns of any chat template; TRL's
assistant-only loss needs a template with {% generation %} markers).
TRL then tokenizes them, trains on the completion only (`completion_only_loss`) in packed rows
(`packing`), and saves an adapter that `sibo.load_sibo_model`, `sibo evaluate` and `sibo export`
read like one from `sibo finetune`. tests/train/test_trl.py checks that TRL's loss on a batch is
the loss sibo's own recipe computes on the same records.
"""

from __future__ import annotations

import argparse

import torch
from peft import LoraConfig
from trl import SFTConfig, SFTTrainer

import sibo
from sibo.checkpoint.load import load_model
from sibo.data_sources import load_record_dataset, parse_columns
from sibo.prompts import build_prompt


def prompt_completion(record: dict) -> dict:
    """TRL's prompt-completion shape: the loss covers the completion only."""
    return {"prompt": build_prompt(record["instruction"], record["input"]), "completion": record["output"]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base_model", required=True)
    parser.add_argument("--data_path", required=True)
    parser.add_argument("--data_columns", default="", help="e.g. instruction=question,output=answer")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--embedding_lambda", type=float, default=0.1, help="SIBO's λ")
    parser.add_argument("--lora_r", type=int, default=32)
    parser.add_argument("--learning_rate", type=float, default=3e-4)
    parser.add_argument("--micro_batch_size", type=int, default=4, help="packed rows per step")
    parser.add_argument("--max_length", type=int, default=1024, help="tokens per packed row")
    parser.add_argument("--num_epochs", type=float, default=3)
    parser.add_argument("--max_steps", type=int, default=-1)
    args = parser.parse_args(argv)

    records = load_record_dataset(args.data_path, parse_columns(args.data_columns))
    if "messages" in records.column_names:
        parser.exit(2, f"{args.data_path}: chat records; this example trains instruction records: train chat records "
                       f"with `sibo finetune --data_path {args.data_path}` (the loss on the assistant turns)\n")  # fmt: skip
    pairs = records.map(prompt_completion, remove_columns=records.column_names)
    model, tokenizer = load_model(args.base_model)
    lora = LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r, lora_dropout=0.05,
                      target_modules="all-linear", task_type="CAUSAL_LM")  # fmt: skip
    model = sibo.get_sibo_model(model, lora, lam=args.embedding_lambda, targets="ffn")
    config = SFTConfig(
        output_dir=args.output_dir,
        packing=True,
        completion_only_loss=True,
        max_length=args.max_length,
        per_device_train_batch_size=args.micro_batch_size,
        learning_rate=args.learning_rate,
        num_train_epochs=args.num_epochs,
        max_steps=args.max_steps,
        # TRL's default is bf16 autocast, on CPU too; keep it where a GPU has bf16
        bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
        report_to="none",
    )
    trainer = SFTTrainer(model=model, args=config, train_dataset=pairs, processing_class=tokenizer)
    trainer.train()
    trainer.save_model(args.output_dir)  # λ > 0: a SIBO_LORA adapter (λ, targets in adapter_config.json)


if __name__ == "__main__":
    main()
