"""Fine-tuning on chat records: the chat template renders them, the template is recorded beside the
adapter, and what cannot work is one line before anything is written."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from sibo.checkpoint.load import load_tokenizer
from sibo.cli import main as sibo_main
from sibo.prompts import TEMPLATE_FILE
from sibo.testing import add_chat_template, build_tiny_model, build_tokenizer, write_llama_gguf

CHATS = [
    {"messages": [{"role": "user", "content": f"Add {n} and 3."}, {"role": "assistant", "content": f"{n} + 3 = {n + 3}."}]}
    for n in range(8)
]  # fmt: skip
INSTRUCTIONS = [{"instruction": f"Add {n} and 3.", "output": f"{n} + 3 = {n + 3}."} for n in range(8)]


def write_data(directory: Path, records: list[dict]) -> Path:
    path = directory / "data.json"
    path.write_text(json.dumps(records))
    return path


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict[str, Path]:
    """A tiny llama with a ChatML tokenizer (as a folder and as a GGUF file), and one without a chat template."""
    root = tmp_path_factory.mktemp("bases")
    corpus = [turn["content"] for record in CHATS for turn in record["messages"]]
    plain = build_tokenizer(corpus, vocab_size=300)
    chat = add_chat_template(build_tokenizer(corpus, vocab_size=300))
    for name, tokenizer in (("chat", chat), ("plain", plain)):
        model = build_tiny_model("llama", len(tokenizer), num_layers=2, hidden_size=32, ffn_size=64)
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
        if name == "chat":
            write_llama_gguf(model, tokenizer, root / "chat.gguf")
    return {"chat": root / "chat", "plain": root / "plain", "gguf": root / "chat.gguf"}


def finetune(base: Path, data: Path, output_dir: Path, *flags: str) -> int:
    return sibo_main([
        "finetune", "--base_model", str(base), "--data_path", str(data), "--output_dir", str(output_dir),
        "--batch_size", "4", "--micro_batch_size", "4", "--max_steps", "2", "--warmup_steps", "0",
        "--val_set_size", "0", *flags,
    ])  # fmt: skip


@pytest.mark.parametrize("base", ["chat", "gguf"])
def test_chat_records_train_with_the_chat_template_and_record_it(bases, tmp_path, base):
    out = tmp_path / "out"
    assert finetune(bases[base], write_data(tmp_path, CHATS), out) == 0
    assert json.loads((out / TEMPLATE_FILE).read_text()) == {"template": "chat"}
    resolved = json.loads((out / "run_config.json").read_text())["resolved"]
    assert (resolved["template"], resolved["train_on_inputs"]) == ("chat", False)
    # the adapter ships the tokenizer, and so the template it was trained with (a GGUF base's too)
    template = load_tokenizer(str(bases[base])).chat_template
    shipped = json.loads((out / "tokenizer_config.json").read_text()).get("chat_template")
    shipped = shipped or (out / "chat_template.jinja").read_text()
    assert (
        template
        and shipped == template
        and load_tokenizer(str(bases[base]), str(out)).chat_template == template
    )


@pytest.mark.parametrize(
    ("template", "flags", "expected"),
    [("auto", [], ("alpaca", True)), ("chat", ["--train_on_inputs", "True"], ("chat", True)), ("chat", [], ("chat", False))],
)  # fmt: skip
def test_instruction_records_take_either_template(bases, tmp_path, template, flags, expected):
    out = tmp_path / "out"
    assert (
        finetune(bases["chat"], write_data(tmp_path, INSTRUCTIONS), out, "--template", template, *flags) == 0
    )
    resolved = json.loads((out / "run_config.json").read_text())["resolved"]
    assert (resolved["template"], resolved["train_on_inputs"]) == expected
    assert json.loads((out / TEMPLATE_FILE).read_text()) == {"template": expected[0]}


@pytest.mark.parametrize(
    ("base", "records", "flags", "message"),
    [
        ("plain", CHATS, [], r"plain has no chat template \(its tokenizer defines none\): use --template alpaca"),
        ("plain", INSTRUCTIONS, ["--template", "chat"], "plain has no chat template"),
        ("chat", CHATS, ["--template", "alpaca"],
         "data.json holds chat records, which Alpaca's template cannot render: use --template chat"),
        ("chat", [*CHATS, INSTRUCTIONS[0]], [],
         "data.json: record 8: an instruction record, but record 0 is a chat record: one data file holds one kind"),
        ("chat", CHATS, ["--template", "jinja"], r"argument --template: invalid choice: 'jinja' \(choose from 'alpaca', 'chat', 'auto'\)$"),
    ],
)  # fmt: skip
def test_what_cannot_work_is_one_line_exit_2_and_nothing_written(
    bases, tmp_path, capsys, base, records, flags, message
):
    out = tmp_path / "out"
    assert finetune(bases[base], write_data(tmp_path, records), out, *flags) == 2
    stderr = capsys.readouterr().err
    errors = [line for line in stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and re.search(message, errors[0]), stderr
    assert "Traceback" not in stderr and not out.exists()
