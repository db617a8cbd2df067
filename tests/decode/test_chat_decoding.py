"""Decoding with the chat template: the prompt is apply_chat_template's tokens exactly, the response ends at EOS."""

from __future__ import annotations

import asyncio

import pytest
import torch
from tokenizers import processors

from sibo.decode.batch import generate_batch
from sibo.decode.settings import DecodingSettings, stopping_settings
from sibo.decode.stream import generate_response, stream_response
from sibo.prompts import STOP_STRINGS, PromptTemplate, chat_messages
from sibo.testing import CHAT_TEMPLATE, add_chat_template, build_tiny_model, build_tokenizer

CHAT = PromptTemplate("chat")
QUESTIONS = [("Add 2 and 3.", None), ("Tom has 3 apples and buys 4 more. How many?", "Count them.")]
# Alpaca's section header inside a chat answer is text like any other: only <|im_end|> ends it
ANSWER = "5 apples ### Instruction: no"


@pytest.fixture
def tokenizer():
    """A fresh ChatML tokenizer that, like Llama's, adds BOS itself and whose chat template writes it too:
    a chat prompt tokenized with special tokens would begin with two."""
    tokenizer = add_chat_template(build_tokenizer())
    tokenizer.chat_template = "{{ bos_token }}" + CHAT_TEMPLATE
    bos = (tokenizer.bos_token, tokenizer.bos_token_id)
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[bos]
    )
    return tokenizer


@pytest.fixture
def model(tokenizer):
    return build_tiny_model("llama", len(tokenizer))


def chat_ids(tokenizer, instruction: str, input: str | None = None) -> list[int]:
    """The reference: what the tokenizer's own apply_chat_template gives for the user turn."""
    messages = chat_messages(instruction, input)
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True)["input_ids"]


def capture_prompts(model) -> list[torch.Tensor]:
    """The input_ids (B, T) of every forward; the first one is the prompt."""
    seen = []

    def hook(module, args, kwargs):
        seen.append(kwargs["input_ids"].clone())

    model.register_forward_pre_hook(hook, with_kwargs=True)
    return seen


def answer_tokens(tokenizer, answer: str = ANSWER) -> list[int]:
    """The answer, <|im_end|>, then more text the model would write if decoding did not stop."""
    ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    return ids + [tokenizer.eos_token_id] + tokenizer(" and more", add_special_tokens=False)["input_ids"]


def test_the_tokenizer_would_double_the_bos(tokenizer):
    prompt = CHAT.prompt(tokenizer, *QUESTIONS[0])
    assert tokenizer(prompt)["input_ids"][:2] == [tokenizer.bos_token_id] * 2  # else the tests prove nothing
    assert chat_ids(tokenizer, *QUESTIONS[0])[:2] == [
        tokenizer.bos_token_id,
        tokenizer.convert_tokens_to_ids("<|im_start|>"),
    ]


def test_a_chat_batch_is_prompted_with_the_chat_template_and_stops_at_im_end(model, tokenizer, script_model):
    tokens = answer_tokens(tokenizer)
    script = script_model(model, tokens)
    seen = capture_prompts(model)
    prompts = [CHAT.prompt(tokenizer, instruction, input) for instruction, input in QUESTIONS]
    responses = generate_batch(
        model, tokenizer, prompts, DecodingSettings(num_beams=1, max_new_tokens=len(tokens)), CHAT
    )
    assert responses == [ANSWER, ANSWER]
    assert script.steps == tokens.index(tokenizer.eos_token_id) + 1  # <|im_end|> ended both rows
    rows = seen[0]  # (2, T), left-padded
    for row, question in zip(rows, QUESTIONS, strict=True):
        assert row[row != tokenizer.pad_token_id].tolist() == chat_ids(tokenizer, *question)


def test_alpaca_batches_still_stop_at_the_next_section(model, tokenizer, script_model):
    tokens = answer_tokens(tokenizer)
    script_model(model, tokens)
    [response] = generate_batch(
        model, tokenizer, ["### Response:\n"], DecodingSettings(num_beams=1, max_new_tokens=len(tokens))
    )
    assert response == "5 apples"


@pytest.mark.parametrize("num_beams", [1, 2])
def test_a_chat_answer_streams_whole_up_to_im_end(model, tokenizer, script_model, num_beams):
    tokens = answer_tokens(tokenizer)
    script_model(model, tokens)
    seen = capture_prompts(model)
    settings = DecodingSettings(max_new_tokens=len(tokens), num_beams=num_beams)
    pieces = list(stream_response(model, tokenizer, *QUESTIONS[1], settings=settings, template=CHAT))
    assert "".join(pieces) == ANSWER
    if num_beams == 1:
        assert len(pieces) > 1  # streamed as written, nothing held back
    assert seen[0][0].tolist() == chat_ids(tokenizer, *QUESTIONS[1])


def test_generate_response_is_the_text_before_im_end(model, tokenizer, script_model):
    script_model(model, answer_tokens(tokenizer, "It is 5."))
    settings = DecodingSettings(max_new_tokens=30)
    assert generate_response(model, tokenizer, "Add 2 and 3.", settings=settings, template=CHAT) == "It is 5."


def test_only_alpaca_stops_at_strings(model, tokenizer):
    alpaca = stopping_settings(model, tokenizer)
    assert alpaca["stop_strings"] == list(STOP_STRINGS) and alpaca["tokenizer"] is tokenizer
    assert stopping_settings(model, tokenizer, CHAT) == {"eos_token_id": alpaca["eos_token_id"]}
    assert tokenizer.eos_token_id in alpaca["eos_token_id"]


def test_the_page_prompts_with_the_template_it_is_given(model, tokenizer, script_model):
    pytest.importorskip("gradio")
    from sibo.decode.app import build_app

    script_model(model, answer_tokens(tokenizer))
    seen = capture_prompts(model)
    app = build_app(model, tokenizer, template=CHAT)  # the chat page: message, history, system prompt, knobs
    [handler] = [function.fn for function in app.fns.values() if function.name == "run"]

    async def replies() -> list[tuple]:  # ChatInterface's async wrapper: (reply so far, the history with it)
        return [update async for update in handler("Add 2 and 3.", [], "", 0.0, 0.75, 40, 40)]

    turns = [{"role": "user", "content": "Add 2 and 3."}, {"role": "assistant", "content": ANSWER}]
    assert asyncio.run(replies())[-1] == (ANSWER, turns)
    assert seen[0][0].tolist() == chat_ids(tokenizer, "Add 2 and 3.")
