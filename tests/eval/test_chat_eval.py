"""`sibo evaluate` with an adapter trained on chat: the question is the user turn, run.json says chat."""

from __future__ import annotations

import json

import pytest
from peft import LoraConfig

import sibo.decode.batch as batch_module
from sibo import get_sibo_model
from sibo.cli import main as sibo_main
from sibo.eval.config import EvalConfig
from sibo.eval.runner import run_record
from sibo.eval.tasks import Example, resolve_datasets
from sibo.prompts import TEMPLATE_FILE, PromptTemplate, chat_messages, write_template
from sibo.testing import add_chat_template, build_tiny_model, build_tokenizer

ADDSUB = [
    {"instruction": f"Tom has {a} apples and buys {b} more. How many apples does Tom have?", "input": "",
     "output": "", "answer": str(a + b)}
    for a, b in [(1, 2), (3, 4), (10, 5)]
]  # fmt: skip


@pytest.fixture
def chat_adapter(tmp_path):
    """A saved tiny LLaMA with a ChatML tokenizer, a SIBO LoRA on it recorded as trained with chat, a benchmark."""
    tokenizer = add_chat_template(build_tokenizer())
    base = build_tiny_model("llama", len(tokenizer), num_layers=1, hidden_size=16)
    base.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    lora = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "up_proj"], init_lora_weights=False)
    get_sibo_model(base, lora, lam=0.2).save_pretrained(tmp_path / "adapter")
    write_template(tmp_path / "adapter", PromptTemplate("chat"))
    (tmp_path / "bench" / "AddSub").mkdir(parents=True)
    (tmp_path / "bench" / "AddSub" / "test.json").write_text(json.dumps(ADDSUB))
    return tmp_path, tokenizer


@pytest.fixture
def seen_prompts(monkeypatch):
    """The real generate_batch, watched: the token ids each prompt reached the model with, and the template."""
    seen = {"ids": [], "templates": []}
    real = batch_module.generate_batch

    def watched(model, tokenizer, prompts, *args, template=PromptTemplate(), **kwargs):
        def hook(module, args, kwargs):
            if not seen_now:
                seen_now.append(kwargs["input_ids"][0].tolist())  # the prefill: the prompt itself

        seen_now = []
        handle = model.register_forward_pre_hook(hook, with_kwargs=True)
        try:
            return real(model, tokenizer, prompts, *args, template=template, **kwargs)
        finally:
            handle.remove()
            seen["ids"] += seen_now
            seen["templates"].append(template)

    monkeypatch.setattr(batch_module, "generate_batch", watched)
    return seen


@pytest.mark.integration
def test_evaluate_prompts_a_chat_adapter_with_the_chat_template(chat_adapter, seen_prompts, capsys):
    root, tokenizer = chat_adapter
    out = root / "out"
    argv = ["evaluate", "--base_model", str(root / "base"), "--weights_path", str(root / "adapter"),
            "--dataset", "AddSub", "--data_dir", str(root / "bench"), "--output_dir", str(out),
            "--num_beams", "1", "--max_new_tokens", "2", "--batch_size", "1"]  # fmt: skip
    assert sibo_main(argv) == 0
    assert json.loads((out / "run.json").read_text())["template"] == "chat"
    assert json.loads((out / "summary.json").read_text())["run"]["template"] == "chat"
    assert seen_prompts["templates"] == [PromptTemplate("chat")] * 3
    expected = [
        tokenizer.apply_chat_template(chat_messages(r["instruction"]), add_generation_prompt=True)[
            "input_ids"
        ]
        for r in ADDSUB
    ]
    assert sorted(seen_prompts["ids"]) == sorted(expected)  # longest first: the order is the runner's

    # told Alpaca's instead, the same folder holds another run's results: refused before decoding
    capsys.readouterr()
    assert sibo_main([*argv, "--template", "alpaca"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"sibo evaluate: error: --output_dir {out} holds another evaluate run (template 'chat' there, None now): "
        "pass --overwrite to replace it, or choose another --output_dir"
    ]
    assert seen_prompts["templates"] == [PromptTemplate("chat")] * 3


def test_the_run_record_names_the_template_only_when_chat(tmp_path):
    """Results written before templates existed (Alpaca's) still resume: their run.json has no template."""
    alpaca = run_record(EvalConfig("AddSub", tmp_path, tmp_path / "out"), {"base_model": "b"})
    chat = run_record(EvalConfig("AddSub", tmp_path, tmp_path / "out", template="chat"), {"base_model": "b"})
    assert "template" not in alpaca and chat == {**alpaca, "template": "chat"}


def test_evaluate_on_a_base_without_a_chat_template_is_one_line_and_writes_nothing(chat_adapter, capsys):
    root, _ = chat_adapter
    plain = build_tokenizer()
    plain.save_pretrained(root / "adapter")  # the adapter's tokenizer wins over its base's
    argv = ["evaluate", "--base_model", str(root / "base"), "--weights_path", str(root / "adapter"),
            "--dataset", "AddSub", "--data_dir", str(root / "bench"), "--output_dir", str(root / "out")]  # fmt: skip
    assert sibo_main(argv) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"sibo evaluate: error: {root / 'base'} has no chat template (its tokenizer defines none): "
        "use --template alpaca"
    ]
    assert not (root / "out").exists()
    assert (root / "adapter" / TEMPLATE_FILE).exists()


@pytest.mark.parametrize("mode", ["careful", "legacy"])
@pytest.mark.parametrize(
    ("dataset", "response", "label", "prediction"),
    [
        ("AddSub", "Tom starts with 3 apples and buys 4 more.\n\nSo Tom has 3 + 4 = 7 apples.", "7", 7.0),
        ("AQuA", "The answer is C: 5 boxes of 12 hold 60.", "C", "C"),
        ("boolq", "Red is a color.\n\nthe correct answer is true", "true", "true"),
    ],
)
def test_a_chat_response_is_read_like_an_alpaca_one(dataset, response, label, prediction, mode):
    [task] = resolve_datasets(dataset)
    instruction = "Which? Answer Choices: (A) 12 (B) 5 (C) 60 (D) 17 (E) 7" if dataset == "AQuA" else "Which?"
    example = Example(0, instruction, "", label)
    assert task.extract(response, example, mode) == prediction


@pytest.mark.parametrize(
    ("dataset", "response", "alpaca", "chat"),
    [
        ("AddSub", "Let me work it out.\n### Answer\nThe answer is 9.", None, 9.0),
        ("boolq", "Some thoughts.\n\n### Verdict\nthe correct answer is false", "", "false"),
    ],
)  # fmt: skip
def test_a_chat_answer_is_not_cut_at_a_markdown_heading(dataset, response, alpaca, chat):
    """An Alpaca response runs on into a new "###" prompt and is cut there; a chat answer ends at its EOS,
    and an instruct model writes "###" headings in it."""
    [task] = resolve_datasets(dataset)
    example = Example(0, "Which?", "", "9")
    assert task.extract(response, example, "careful") == alpaca
    assert task.extract(response, example, "careful", chat=True) == chat
