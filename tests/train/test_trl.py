"""`sibo.get_sibo_model` inside TRL's SFTTrainer: its prompt-completion tokenization, completion-only loss and
packing give the examples and the loss of sibo's own recipe, and it trains and saves a SIBO adapter."""

from __future__ import annotations

import copy
import json
import runpy
from pathlib import Path

import pytest
import torch

trl = pytest.importorskip("trl")

from datasets import Dataset  # noqa: E402
from peft import LoraConfig  # noqa: E402

from sibo import get_sibo_model, load_sibo_model, sibo_settings  # noqa: E402
from sibo.data import PaddedCollator, Record, tokenize_records  # noqa: E402
from sibo.prompts import build_prompt  # noqa: E402
from sibo.study.synthetic import generate_problems  # noqa: E402
from sibo.testing import build_tiny_model, build_tokenizer  # noqa: E402
from sibo.train.packing import PackingCollator, enable_packing  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "trl_sft.py"
RECORDS = [Record(r["instruction"], "", r["output"]) for r in generate_problems(6, seed=4)]


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer([build_prompt(r.instruction) + r.output for r in RECORDS], vocab_size=400)


def base_model(tokenizer):
    torch.manual_seed(0)
    return build_tiny_model("llama", len(tokenizer), initializer_range=0.2)


def boosted(tokenizer):
    base = base_model(tokenizer)
    lora = LoraConfig(
        r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0, init_lora_weights=False
    )
    return get_sibo_model(base, lora, lam=0.3, targets="all")


def sft_trainer(model, tokenizer, output_dir, **overrides):
    """SFTTrainer on prompt-completion text: it tokenizes, masks the prompt (completion_only_loss) and packs.
    fp32 (TRL defaults to bf16 autocast, on CPU too), so that the reloaded adapter can be compared exactly."""
    data = Dataset.from_list(
        [{"prompt": build_prompt(r.instruction, r.input), "completion": r.output} for r in RECORDS]
    )
    settings = dict(output_dir=str(output_dir), packing=True, completion_only_loss=True, max_length=2048,
                    per_device_train_batch_size=1, max_steps=1, learning_rate=1e-3, report_to="none", use_cpu=True,
                    logging_steps=1, save_strategy="no", bf16=False)  # fmt: skip
    args = trl.SFTConfig(**{**settings, **overrides})
    return trl.SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer)


def test_trl_tokenizes_masks_and_packs_as_sibo_does(tokenizer, tmp_path):
    trainer = sft_trainer(boosted(tokenizer), tokenizer, tmp_path)
    ours = tokenize_records(RECORDS, tokenizer, cutoff_len=2048, train_on_inputs=False).examples
    # TRL packed all six examples into one row; its sequence lengths say where each begins
    (row,) = trainer.train_dataset
    lengths = row["seq_lengths"]
    assert sorted(lengths) == sorted(len(e["input_ids"]) for e in ours)
    starts = [sum(lengths[:i]) for i in range(len(lengths))]
    theirs = [{"input_ids": row["input_ids"][s : s + n], "labels": row["labels"][s : s + n]}
              for s, n in zip(starts, lengths, strict=True)]  # fmt: skip
    key = lambda example: example["input_ids"]  # noqa: E731
    assert sorted(theirs, key=key) == sorted(ours, key=key)


def test_trl_batch_loss_equals_sibos_packed_and_padded_loss(tokenizer, tmp_path):
    """The same examples, three ways: TRL's packed row (stock SDPA, block-diagonal mask from position ids), sibo's
    PackingCollator on its packed attention, sibo's padded batch. The losses agree to float32 rounding (1e-5)."""
    model = boosted(tokenizer).eval()
    trainer = sft_trainer(model, tokenizer, tmp_path)
    batch = next(iter(trainer.get_train_dataloader()))
    with torch.no_grad():
        trl_loss = trainer.compute_loss(model, batch)
    examples = tokenize_records(RECORDS, tokenizer, cutoff_len=2048, train_on_inputs=False).examples
    with torch.no_grad():
        padded = model(**PaddedCollator(tokenizer.pad_token_id)(examples)).loss
        packed_model = copy.deepcopy(model)
        assert enable_packing(packed_model)
        packed = packed_model(**PackingCollator()(examples), use_cache=False).loss
    torch.testing.assert_close(trl_loss, packed, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(trl_loss, padded, atol=1e-5, rtol=1e-5)


def test_sft_trainer_trains_and_saves_a_sibo_adapter(tokenizer, tmp_path):
    model = boosted(tokenizer)
    trainer = sft_trainer(model, tokenizer, tmp_path, max_steps=2)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    trainer.train()
    assert all(not torch.equal(p, before[n]) for n, p in model.named_parameters() if p.requires_grad)
    trainer.save_model(str(tmp_path / "adapter"))
    assert json.loads((tmp_path / "adapter" / "sibo_config.json").read_text())["lam"] == 0.3
    reloaded = load_sibo_model(base_model(tokenizer), tmp_path / "adapter").eval()
    assert sibo_settings(reloaded).lam == 0.3
    inputs = tokenizer([build_prompt(RECORDS[0].instruction)], return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(reloaded(**inputs).logits, model.eval()(**inputs).logits)


def test_the_example_script_trains_an_adapter_sibo_loads(tokenizer, tmp_path):
    base_model(tokenizer).save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    rows = [{"question": r.instruction, "answer": r.output} for r in RECORDS]
    Dataset.from_list(rows).to_parquet(str(tmp_path / "d.parquet"))
    example = runpy.run_path(str(EXAMPLE))
    example["main"](["--base_model", str(tmp_path / "base"), "--data_path", str(tmp_path / "d.parquet"),
                     "--data_columns", "instruction=question,output=answer", "--output_dir", str(tmp_path / "out"),
                     "--lora_r", "4", "--max_steps", "2", "--max_length", "256"])  # fmt: skip
    reloaded = load_sibo_model(base_model(tokenizer), tmp_path / "out")
    assert (sibo_settings(reloaded).lam, sibo_settings(reloaded).targets) == (0.1, "ffn")


DPO_EXAMPLE = EXAMPLE.with_name("trl_dpo.py")


def test_the_sft_example_refuses_chat_records_in_one_line(tmp_path, capsys):
    chats = [
        {"messages": [{"role": "user", "content": "Add 2 and 3."}, {"role": "assistant", "content": "5"}]}
    ]
    (tmp_path / "chats.json").write_text(json.dumps(chats))
    example = runpy.run_path(str(EXAMPLE))
    with pytest.raises(SystemExit) as exit_:
        example["main"](
            ["--base_model", "b", "--data_path", str(tmp_path / "chats.json"), "--output_dir", "o"]
        )
    assert exit_.value.code == 2
    assert capsys.readouterr().err == (
        f"{tmp_path / 'chats.json'}: chat records; this example trains instruction records: train chat records with "
        f"`sibo finetune --data_path {tmp_path / 'chats.json'}` (the loss on the assistant turns)\n"
    )


def test_dpo_reference_is_the_sibo_start_and_disabling_the_adapter_is_the_base(tokenizer, tmp_path):
    example = runpy.run_path(str(DPO_EXAMPLE))
    model = boosted(tokenizer)  # B random: the adapter changes the logits from the start
    pairs = Dataset.from_list([{"prompt": build_prompt(r.instruction), "chosen": r.output, "rejected": r.output[::-1]}
                               for r in RECORDS])  # fmt: skip
    args = trl.DPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=2, max_steps=1, learning_rate=1e-3,
                         report_to="none", use_cpu=True, save_strategy="no", bf16=False)  # fmt: skip
    trainer = example["dpo_trainer"](model, tokenizer, pairs, args)
    inputs = tokenizer([build_prompt(RECORDS[0].instruction)], return_tensors="pt")
    model.eval()
    with torch.no_grad():
        start = model(**inputs).logits
        with trl.trainer.utils.use_adapter(model, "ref"):  # what DPOTrainer computes the reference with
            assert torch.equal(model(**inputs).logits, start)
        with model.disable_adapter():
            assert torch.equal(model(**inputs).logits, base_model(tokenizer).eval()(**inputs).logits)
    trainer.train()
    trainer.save_model(str(tmp_path / "adapter"))
    reloaded = load_sibo_model(base_model(tokenizer), tmp_path / "adapter").eval()
    with torch.no_grad():
        trained = model.eval()(**inputs).logits
        assert torch.equal(reloaded(**inputs).logits, trained) and not torch.equal(trained, start)
