"""The README.md `sibo finetune` writes: a Hub model card that says SIBO, how the adapter was made, and how
it loads; it round-trips through huggingface_hub's ModelCard.load."""

import json

from huggingface_hub import ModelCard

from sibo.cli.finetune import parse_config
from sibo.testing import build_tiny_model, build_tokenizer
from sibo.train.recipe import finetune


def test_a_default_finetune_run_is_sibo_and_its_card_says_so(tmp_path):
    records = [{"instruction": f"Add {i} and 2.", "input": "", "output": str(i + 2)} for i in range(6)]
    (tmp_path / "d.json").write_text(json.dumps(records))
    tokenizer = build_tokenizer([r["instruction"] + r["output"] for r in records], vocab_size=300)
    build_tiny_model("llama", len(tokenizer)).save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    out = tmp_path / "out"
    flags = [
        "--base_model",
        str(tmp_path / "base"),
        "--data_path",
        str(tmp_path / "d.json"),
        "--output_dir",
        str(out),
        "--batch_size",
        "2",
        "--micro_batch_size",
        "2",
        "--max_steps",
        "2",
        "--val_set_size",
        "2",
        "--warmup_steps",
        "0",
        "--lora_r",
        "4",
    ]  # fmt: skip  (no --target_modules: the paper's)
    metrics = finetune(parse_config(flags))
    stored = json.loads((out / "adapter_config.json").read_text())
    assert stored["peft_type"] == "SIBO_LORA" and stored["sibo"]["lam"] == 0.1
    assert sorted(stored["target_modules"]) == ["down_proj", "k_proj", "q_proj", "up_proj", "v_proj"]
    boosted = json.loads((out / "sibo_config.json").read_text())["boosted_modules"]
    assert [name.split("layers.")[1] for name in boosted] == ["0.mlp.up_proj", "1.mlp.up_proj"]

    card = ModelCard.load(out / "README.md")
    assert card.data.to_dict() == {
        "library_name": "peft",
        "tags": ["sibo", "peft", "lora"],
        "base_model": str(tmp_path / "base"),
        "pipeline_tag": "text-generation",
    }
    assert str(card) == (out / "README.md").read_text()  # what was written is what loads
    for line in [
        "- λ: 0.1",
        "- SIBO targets: ffn; boosted modules: 2",
        "- method: lora, rank 4; adapted modules: down_proj,k_proj,q_proj,up_proj,v_proj",
        f"- data: {tmp_path / 'd.json'}, 4 training records; template: alpaca",
        f"- steps: 2; final training loss: {metrics['train']['train_loss']}; "
        f"validation loss: {metrics['eval']['eval_loss']}",
        "PEFT without sibo refuses this folder (its adapter_config.json says `SIBO_LORA`): run as plain LoRA it",
    ]:
        assert line in card.text.splitlines()
