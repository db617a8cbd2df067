"""SIBO inside TRL's DPOTrainer: preference pairs train a SIBO LoRA against its own starting point.

    pip install 'sibo[trl]'
    python examples/trl_dpo.py --base_model HuggingFaceTB/SmolLM2-135M --data_path pairs.jsonl \
        --output_dir out --embedding_lambda 0.1

Each record is {"prompt": …, "chosen": …, "rejected": …}. Given a PeftModel and no reference model,
TRL computes the reference log-probabilities with a copy of the adapter it adds as "ref" (or, with no
such copy, with the adapter disabled). TRL adds that copy as plain LoRA, so it is boosted here with the
adapter's own SIBO settings: the reference is the SIBO model the run started from, exactly. Disabling the
adapter disables SIBO too (the base model, bit for bit). tests/train/test_trl.py checks both.
"""

from __future__ import annotations

import argparse

import torch
from datasets import load_dataset
from peft import LoraConfig
from trl import DPOConfig, DPOTrainer

import sibo
from sibo.checkpoint.load import load_model


def boost_reference(model, reference: str = "ref") -> None:
    """Boost TRL's reference copy of the adapter as the adapter is boosted, its λ (learnt ones too) copied."""
    if reference not in model.peft_config:
        return  # TRL disables the adapter instead, and that is the base model
    sibo.boost_adapter(model, sibo.sibo_settings(model), reference)
    if reference in model.sibo_lambdas:
        with torch.no_grad():
            model.sibo_lambdas[reference].logits.copy_(model.sibo_lambdas["default"].logits)
        model.sibo_lambdas[reference].requires_grad_(False)


def dpo_trainer(model, tokenizer, pairs, args: DPOConfig) -> DPOTrainer:
    trainer = DPOTrainer(model=model, args=args, train_dataset=pairs, processing_class=tokenizer)
    boost_reference(trainer.model)
    return trainer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base_model", required=True)
    parser.add_argument("--data_path", required=True, help="records with prompt, chosen, rejected")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--embedding_lambda", type=float, default=0.1, help="SIBO's λ")
    parser.add_argument("--lora_r", type=int, default=16)
    parser.add_argument("--learning_rate", type=float, default=5e-6)
    parser.add_argument("--beta", type=float, default=0.1, help="DPO's β")
    parser.add_argument("--micro_batch_size", type=int, default=4)
    parser.add_argument("--num_epochs", type=float, default=1)
    parser.add_argument("--max_steps", type=int, default=-1)
    args = parser.parse_args(argv)

    pairs = load_dataset("json", data_files=args.data_path, split="train")
    model, tokenizer = load_model(args.base_model)
    lora = LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r, task_type="CAUSAL_LM",
                      target_modules=["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"])  # fmt: skip
    model = sibo.get_sibo_model(model, lora, lam=args.embedding_lambda)
    config = DPOConfig(
        output_dir=args.output_dir,
        beta=args.beta,
        per_device_train_batch_size=args.micro_batch_size,
        learning_rate=args.learning_rate,
        num_train_epochs=args.num_epochs,
        max_steps=args.max_steps,
        bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
        report_to="none",
    )
    trainer = dpo_trainer(model, tokenizer, pairs, config)
    trainer.train()
    # a SIBO_LORA adapter (λ > 0): sibo.load_sibo_model, or PEFT's loaders with sibo imported
    trainer.save_model(args.output_dir)


if __name__ == "__main__":
    main()
