"""The chat page of a chat adapter: each reply is prompted with the whole conversation in the chat template,
and the real page (Gradio's ChatInterface) is driven in headless Chromium: history, system prompt,
streaming, stop and clear. Chromium is found (or installed, as root) as in test_app.py.
"""

from __future__ import annotations

import time

import pytest
import torch
from test_app import CHROMIUM_ARGS, _free_port, chromium  # noqa: F401 - chromium is a fixture

from sibo.decode.app import ServeConfig, chat_respond, chat_turns
from sibo.decode.settings import DecodingSettings
from sibo.decode.stream import stream_reply
from sibo.errors import InputError
from sibo.prompts import PromptTemplate
from sibo.testing import add_chat_template, build_tiny_model, build_tokenizer

CHAT = PromptTemplate("chat")
SLOW_STEP_S = 0.05  # per token of the endless reply, so that the browser can press stop mid-way
ENDLESS_TOKENS = 400


class Turns:
    """Hooks that make the model write `replies[k]` (then its EOS) as the k-th reply, whatever its weights,
    recording each reply's prompt (the prefill's input_ids) and its decoding steps. A reply of None writes
    x forever, slowly, until decoding stops."""

    def __init__(self, model, tokenizer, replies: list[str | None]):
        self.eos = tokenizer.eos_token_id
        self.word = tokenizer("x", add_special_tokens=False)["input_ids"][0]
        self.replies = [
            None if r is None else tokenizer(r, add_special_tokens=False)["input_ids"] for r in replies
        ]
        self.prompts: list[list[int]] = []
        self.steps: list[int] = []
        model.register_forward_pre_hook(self.see_prompt, with_kwargs=True)
        model.get_output_embeddings().register_forward_hook(self.write)

    def see_prompt(self, module, args, kwargs) -> None:
        ids = kwargs["input_ids"]
        if ids.shape[1] > 1:  # a prefill: a new reply begins
            self.prompts.append(ids[0].tolist())
            self.steps.append(0)

    def write(self, module, args, logits: torch.Tensor) -> torch.Tensor:
        turn, step = len(self.prompts) - 1, self.steps[-1]
        reply = self.replies[turn]
        if reply is None:
            time.sleep(SLOW_STEP_S)
            token = self.word
        else:
            token = (reply + [self.eos])[min(step, len(reply))]
        self.steps[-1] += 1
        forced = torch.full_like(logits, -1e4)
        forced[..., -1, token] = 1e4
        return forced


@pytest.fixture
def tokenizer():
    return add_chat_template(build_tokenizer())


@pytest.fixture
def model(tokenizer):
    return build_tiny_model("llama", len(tokenizer), max_positions=600)


def chat_ids(tokenizer, turns: list[dict[str, str]]) -> list[int]:
    """The reference: the tokenizer's own apply_chat_template of the conversation, ready for the reply."""
    return tokenizer.apply_chat_template(turns, add_generation_prompt=True)["input_ids"]


def test_a_reply_is_prompted_with_the_system_prompt_and_the_whole_history(model, tokenizer):
    turns = Turns(model, tokenizer, ["Fine, thanks."])
    history = [  # as Gradio's Chatbot hands it over: content as text parts, plus its own keys
        {"role": "user", "content": [{"type": "text", "text": "Say hi."}], "metadata": None},
        {"role": "assistant", "content": [{"type": "text", "text": "Hello there."}], "options": None},
    ]
    updates = list(chat_respond(model, tokenizer, "How are you?", history, "Be brief.", 0.0, 1.0, 0, 20))
    assert updates[-1] == "Fine, thanks."
    assert all(later.startswith(earlier) for earlier, later in zip(updates, updates[1:], strict=False))
    expected = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Say hi."},
        {"role": "assistant", "content": "Hello there."},
        {"role": "user", "content": "How are you?"},
    ]
    assert turns.prompts == [chat_ids(tokenizer, expected)]


def test_a_blank_system_prompt_is_no_turn_and_a_blank_message_is_refused(model, tokenizer):
    assert chat_turns([], "  ", "Hi.") == [{"role": "user", "content": "Hi."}]
    with pytest.raises(InputError, match="the message is empty"):
        list(chat_respond(model, tokenizer, "   ", [], "", 0.0, 1.0, 0, 5))


def test_the_reply_is_what_decoding_the_conversation_gives(model, tokenizer):
    history = [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi."}]
    settings = DecodingSettings(max_new_tokens=8)
    expected = "".join(stream_reply(model, tokenizer, chat_turns(history, "", "Again."), settings, CHAT))
    assert list(chat_respond(model, tokenizer, "Again.", history, "", 0.0, 0.75, 40, 8))[-1] == expected


def test_a_template_that_refuses_the_conversation_is_one_line(model, tokenizer):
    tokenizer.chat_template = "{{ raise_exception('Conversation roles must alternate user/assistant') }}"
    with pytest.raises(
        InputError, match=r"^the chat template refuses this conversation \(Conversation roles"
    ):
        list(chat_respond(model, tokenizer, "Hi.", [], "", 0.0, 1.0, 0, 5))


def test_a_chat_adapter_gets_the_chat_page_and_an_alpaca_one_the_form(model, tokenizer):
    gr = pytest.importorskip("gradio")
    from sibo.decode.app import build_app

    def page(template: PromptTemplate) -> tuple[set[type], str]:
        app = build_app(model, tokenizer, ServeConfig(title="T"), template=template)
        blocks = app.blocks.values()
        caption = next(b.value for b in blocks if isinstance(b, gr.Markdown))
        return {type(b) for b in blocks}, caption

    kinds, caption = page(CHAT)
    assert gr.Chatbot in kinds and "chat model" in caption and "instruction-tuned" not in caption
    kinds, caption = page(PromptTemplate("alpaca"))
    assert gr.Chatbot not in kinds and "An instruction-tuned model" in caption


@pytest.fixture
def chat_page(model, tokenizer):
    """The chat page on 127.0.0.1 with scripted replies; yields (app, url, turns)."""
    from sibo.decode.app import build_app, launch_app

    turns = Turns(model, tokenizer, ["Hello there.", "Fine, thanks.", None, "Hello again."])
    config = ServeConfig(port=_free_port(), title="SIBO chat test")
    defaults = DecodingSettings(max_new_tokens=ENDLESS_TOKENS)
    app = launch_app(build_app(model, tokenizer, config, defaults, CHAT), config, block=False)
    yield app, f"http://127.0.0.1:{config.port}/", turns
    app.close()


def _settled(steps: list[int], turn: int) -> bool:
    """Whether the reply `turn` made no decoding step for the time of ten."""
    before = steps[turn]
    time.sleep(10 * SLOW_STEP_S)
    return steps[turn] == before


def _wait_until(condition, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


@pytest.mark.integration
@pytest.mark.browser
def test_the_chat_page_keeps_history_stops_and_clears_in_chromium(chromium, chat_page, tokenizer):  # noqa: F811
    from playwright.sync_api import expect, sync_playwright

    app, url, turns = chat_page
    model_fns = [fn for fn in app.fns.values() if fn.name == "run"]
    assert [fn.concurrency_limit for fn in model_fns] == [1]  # one generation at a time
    system = {"role": "system", "content": "Be brief."}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(url)
            expect(page).to_have_title("SIBO chat test")
            expect(page.locator("body")).not_to_contain_text("instruction-tuned")
            bot = page.locator("#chat [data-testid='bot']")
            page.locator("#system_prompt textarea").fill("Be brief.")
            for message, reply in (("Say hi.", "Hello there."), ("How are you?", "Fine, thanks.")):
                page.locator("#message textarea").fill(message)
                page.locator("#message textarea").press("Enter")
                expect(bot.last).to_have_text(reply, timeout=30_000)
            first = [system, {"role": "user", "content": "Say hi."}]
            second = [*first, {"role": "assistant", "content": "Hello there."}]
            second.append({"role": "user", "content": "How are you?"})
            assert turns.prompts == [chat_ids(tokenizer, first), chat_ids(tokenizer, second)]

            page.locator("#message textarea").fill("Count.")
            page.locator("#message textarea").press("Enter")
            expect(bot.nth(2)).to_contain_text("xxx", timeout=30_000)  # streaming, not done
            stop = page.locator("#message [data-testid='stop-button']")
            stop.click()
            expect(stop).to_have_count(0)
            _wait_until(lambda: _settled(turns.steps, 2))
            assert turns.steps[2] < ENDLESS_TOKENS  # decoding ended with the stop, not at max_new_tokens

            page.get_by_role("button", name="Clear").click()
            expect(bot).to_have_count(0)
            page.locator("#message textarea").fill("Say hi.")
            page.locator("#message textarea").press("Enter")
            expect(bot.last).to_have_text("Hello again.", timeout=30_000)
            assert turns.prompts[3] == chat_ids(tokenizer, first)  # the cleared history is gone
        finally:
            browser.close()
