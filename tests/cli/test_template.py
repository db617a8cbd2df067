"""--template: auto reads the template recorded beside the adapter (or its base), and `sibo generate` prompts with it."""

from __future__ import annotations

import json
import logging

import pytest

import sibo.decode.stream as stream_module
from sibo.checkpoint.config import ModelConfig
from sibo.cli import main as sibo_main
from sibo.errors import InputError
from sibo.prompts import TEMPLATE_FILE, PromptTemplate, write_template
from sibo.testing import add_chat_template, build_tiny_model, build_tokenizer


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    """Two saved tiny LLaMAs: `plain` (a tokenizer without a chat template) and `chat` (ChatML)."""
    root = tmp_path_factory.mktemp("bases")
    for name, tokenizer in [("plain", build_tokenizer()), ("chat", add_chat_template(build_tokenizer()))]:
        build_tiny_model("llama", len(tokenizer), num_layers=1, hidden_size=16).save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    return root


def folders(tmp_path, adapter: str | None, base: str | None):
    """An adapter folder and a base folder (an export, say), each recording `adapter` / `base` if given."""
    for folder, name in [(tmp_path / "adapter", adapter), (tmp_path / "base", base)]:
        folder.mkdir()
        if name is not None:
            write_template(folder, PromptTemplate(name))
    return tmp_path / "adapter", tmp_path / "base"


@pytest.mark.parametrize(
    ("requested", "adapter", "base", "expected"),
    [
        ("auto", "chat", None, "chat"),  # trained with chat
        ("auto", None, None, "alpaca"),  # nothing recorded: Alpaca's, as before templates existed
        ("alpaca", "chat", None, "alpaca"),  # asked for explicitly, over the recorded one
        ("auto", None, "chat", "chat"),  # --base_model <an export of a chat adapter>
        ("auto", "alpaca", "chat", "alpaca"),  # the adapter's record before its base's
        ("chat", None, None, "chat"),
    ],
)
def test_the_template_is_the_recorded_one_unless_asked(tmp_path, requested, adapter, base, expected):
    adapter_dir, base_dir = folders(tmp_path, adapter, base)
    source = ModelConfig(base_model=str(base_dir), weights_path=str(adapter_dir), template=requested)
    assert source.template_name == expected
    assert source.prompt_template(add_chat_template(build_tokenizer())) == PromptTemplate(expected)


def test_chat_is_logged_naming_where_it_was_recorded(tmp_path, caplog):
    adapter_dir, base_dir = folders(tmp_path, "chat", None)
    tokenizer = add_chat_template(build_tokenizer())
    with caplog.at_level(logging.INFO, logger="sibo.checkpoint.config"):
        ModelConfig(base_model=str(base_dir), weights_path=str(adapter_dir)).prompt_template(tokenizer)
        ModelConfig(base_model=str(base_dir), template="chat").prompt_template(tokenizer)
        ModelConfig(base_model=str(base_dir)).prompt_template(tokenizer)  # Alpaca's: nothing to say
    assert caplog.messages == [
        f"prompting with the chat template recorded in {adapter_dir / TEMPLATE_FILE}",
        "prompting with the chat template (--template chat)",
    ]


@pytest.mark.parametrize("requested", ["chat", "auto"])
def test_chat_on_a_tokenizer_without_a_chat_template_is_one_line(tmp_path, requested):
    adapter_dir, base_dir = folders(tmp_path, "chat", None)
    source = ModelConfig(base_model=str(base_dir), weights_path=str(adapter_dir), template=requested)
    message = f"{base_dir} has no chat template (its tokenizer defines none): use --template alpaca"
    with pytest.raises(InputError) as error:
        source.prompt_template(build_tokenizer())
    assert str(error.value) == message


@pytest.mark.parametrize("content", ["{not json", '{"template": "vicuna"}', '["chat"]', "\xff"])
def test_a_damaged_record_is_one_line_before_anything_loads(tmp_path, content):
    adapter_dir, base_dir = folders(tmp_path, None, None)
    (adapter_dir / TEMPLATE_FILE).write_bytes(content.encode("latin-1"))
    with pytest.raises(InputError) as error:
        ModelConfig(base_model=str(base_dir), weights_path=str(adapter_dir))
    assert str(error.value) == f'{adapter_dir / TEMPLATE_FILE}: expected {{"template": "alpaca" or "chat"}}'
    # asked for explicitly, the record is not read
    assert (
        ModelConfig(base_model=str(base_dir), weights_path=str(adapter_dir), template="alpaca").template_name
        == "alpaca"
    )


def test_a_bad_template_name_is_refused():
    with pytest.raises(InputError) as error:
        ModelConfig(base_model="tiny", template="vicuna")
    assert str(error.value) == "--template must be one of alpaca, chat, auto, got 'vicuna'"


# -- sibo generate --------------------------------------------------------------------------------


def test_generate_chat_on_a_base_without_a_chat_template_is_exit_2_one_line(bases, capsys):
    base = bases / "plain"
    code = sibo_main(["generate", "--base_model", str(base), "--prompt", "hi", "--template", "chat"])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert captured.err.splitlines() == [
        f"sibo generate: error: {base} has no chat template (its tokenizer defines none): use --template alpaca"
    ]


@pytest.fixture
def spy_stream(monkeypatch):
    """stream_response records the template it was given, and answers 'ok'."""
    templates = []

    def spy(model, tokenizer, instruction, input=None, settings=None, template=PromptTemplate()):
        templates.append(template)
        yield "ok"

    monkeypatch.setattr(stream_module, "stream_response", spy)
    return templates


def test_generate_prompts_with_the_template_recorded_beside_the_base(
    bases, tmp_path, capsys, caplog, spy_stream
):
    export = tmp_path / "export"  # what `sibo export` of a chat adapter leaves: the model and its record
    export.mkdir()
    for file in (bases / "chat").iterdir():
        (export / file.name).write_bytes(file.read_bytes())
    (export / TEMPLATE_FILE).write_text(json.dumps({"template": "chat"}))
    assert (
        sibo_main(["generate", "--base_model", str(export), "--prompt", "hi", "--max_new_tokens", "2"]) == 0
    )
    assert capsys.readouterr().out == "ok\n"
    assert f"prompting with the chat template recorded in {export / TEMPLATE_FILE}" in caplog.messages
    argv = ["generate", "--base_model", str(export), "--prompt", "hi", "--template", "alpaca"]
    assert sibo_main(argv) == 0
    assert spy_stream == [PromptTemplate("chat"), PromptTemplate("alpaca")]
