"""The Gradio page: the response handler, and the real page driven in headless Chromium.

The browser test needs Debian's chromium (/usr/bin/chromium), playwright and gradio; it never
downloads a browser and talks to the page over loopback only.
"""

from __future__ import annotations

import importlib.util
import shutil
import socket

import pytest

from sibo.decode.app import ServeConfig, respond
from sibo.decode.settings import DecodingSettings
from sibo.decode.stream import generate_response
from sibo.errors import InputError
from sibo.testing import build_tiny_model, build_tokenizer

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
MAX_NEW_TOKENS = 12


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="module")
def model(tokenizer):
    return build_tiny_model("llama", len(tokenizer), max_positions=300)


def test_respond_streams_growing_text_and_ends_with_the_response(model, tokenizer):
    updates = list(respond(model, tokenizer, "Say hi.", "", 0.0, 0.75, 40, 1, 6))
    expected = generate_response(model, tokenizer, "Say hi.", settings=DecodingSettings(max_new_tokens=6))
    assert updates[-1] == (expected, "")
    texts = [text for text, _ in updates]
    assert all(later.startswith(earlier) for earlier, later in zip(texts, texts[1:], strict=False))


def test_the_page_stops_where_the_adapter_starts_a_new_instruction(model, tokenizer, script_model):
    run_on = "Hi there.\n\n### Instruction:\nSay bye.\n\n### Response:\nBye."
    script_model(model, tokenizer(run_on, add_special_tokens=False)["input_ids"])
    updates = list(respond(model, tokenizer, "Say hi.", "", 0.0, 0.75, 40, 1, 40))
    assert updates[-1] == ("Hi there.", "")
    assert not any("###" in text for text, _ in updates)


def test_respond_turns_bad_input_into_a_message(model, tokenizer):
    assert list(respond(model, tokenizer, "word " * 200, "", 0.0, 0.75, 40, 1, 6)) == [
        (
            "",
            "**Cannot answer:** the prompt is 1140 tokens and max_new_tokens is 6, more than the model's "
            "context of 300 tokens: shorten it",
        )
    ]
    assert list(respond(model, tokenizer, "   ", "", 0.0, 0.75, 40, 1, 6)) == [
        ("", "**Cannot answer:** the instruction is empty")
    ]


def test_serve_config_checks_the_port():
    with pytest.raises(InputError, match="--port must be in 1..65535"):
        ServeConfig(port=70000)
    assert ServeConfig().host == "127.0.0.1" and ServeConfig().share is False


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _browser_missing() -> str | None:
    if shutil.which(CHROMIUM) is None:
        return f"{CHROMIUM} is absent (apt-get install chromium)"
    for module in ("playwright", "gradio"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (pip install {module})"
    return None


@pytest.fixture(scope="module")
def served_page(model, tokenizer):
    """The page on 127.0.0.1, launched in this process; yields (app, url)."""
    from sibo.decode.app import build_app, launch_app

    config = ServeConfig(port=_free_port(), title="SIBO test page")
    app = launch_app(
        build_app(model, tokenizer, config, DecodingSettings(max_new_tokens=MAX_NEW_TOKENS)),
        config,
        block=False,
    )
    yield app, f"http://127.0.0.1:{config.port}/"
    app.close()


@pytest.mark.integration
@pytest.mark.browser
@pytest.mark.skipif(_browser_missing() is not None, reason=str(_browser_missing()))
def test_the_page_streams_a_response_in_chromium(served_page, model, tokenizer):
    from playwright.sync_api import expect, sync_playwright

    app, url = served_page
    assert app.server_name == "127.0.0.1"
    assert {block_fn.concurrency_limit for block_fn in app.fns.values()} == {1}  # one generation at a time
    expected = generate_response(
        model, tokenizer, "Say hello.", settings=DecodingSettings(max_new_tokens=MAX_NEW_TOKENS)
    )

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(url)
            expect(page).to_have_title("SIBO test page")
            page.locator("#instruction textarea").fill("Say hello.")
            page.locator("#submit").click()
            expect(page.locator("#response textarea")).to_have_value(expected, timeout=30_000)

            page.locator("#instruction textarea").fill("word " * 200)
            page.locator("#submit").click()
            expect(page.locator("#status")).to_contain_text(
                "Cannot answer: the prompt is 1140 tokens", timeout=30_000
            )
            expect(page.locator("#response textarea")).to_have_value("")
        finally:
            browser.close()
