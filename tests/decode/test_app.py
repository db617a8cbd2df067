"""The Gradio page: the response handler, and the real page driven in headless Chromium.

The browser test needs Debian's chromium (/usr/bin/chromium), playwright and gradio; run as root
it installs chromium with apt-get (as CI does), otherwise it skips saying how to enable it. It never
downloads a browser through playwright and talks to the page over loopback only.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess

import pytest
from fault_checks import refused

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


def test_the_page_names_its_address_and_the_share_flag(model, tokenizer, capsys, caplog):
    pytest.importorskip("gradio")
    from sibo.decode.app import build_app, launch_app

    config = ServeConfig(port=_free_port())
    with caplog.at_level("INFO", logger="sibo"):
        launch_app(build_app(model, tokenizer, config), config, block=False).close()
    assert [r.getMessage() for r in caplog.records if r.name == "sibo.decode.app"] == [
        f"the page is on http://127.0.0.1:{config.port}/ (--share adds a public link; Ctrl+C stops it)"
    ]
    assert "share=True" not in capsys.readouterr().out


@pytest.mark.integration
def test_a_busy_port_is_one_line_and_exit_2(saved_base, capsys):
    """Gradio's "Cannot find empty port" (an OSError with no errno) is bad input, said as `sibo serve` says it."""
    pytest.importorskip("gradio")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        line = refused(capsys, ["generate", "--base_model", saved_base, "--ui", "--port", port])
    assert line == (
        f"sibo generate: error: cannot listen on 127.0.0.1:{port} (in use, or not an address of this machine)"
    )


def chromium_missing(which=shutil.which, euid=os.geteuid) -> str | None:
    """None when Chromium is there (installed with apt-get when we are root); else how to get it."""
    if which(CHROMIUM) is None and euid() == 0 and which("apt-get") is not None:
        subprocess.run(
            "apt-get update -qq && apt-get install -y -qq chromium", shell=True, capture_output=True
        )
    if which(CHROMIUM) is None:
        return f"{CHROMIUM} is absent: `sudo apt-get install chromium` (or make test as root) runs this test"
    return None


@pytest.fixture(scope="module")
def chromium():
    for module in ("playwright", "gradio"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed (pip install {module})")
    reason = chromium_missing()
    if reason is not None:
        pytest.skip(reason)
    return CHROMIUM


def test_without_root_the_browser_test_says_how_to_enable_it():
    installs = []
    reason = chromium_missing(which=lambda name: installs.append(name) or None, euid=lambda: 1000)
    assert reason == (
        "/usr/bin/chromium is absent: `sudo apt-get install chromium` (or make test as root) runs this test"
    )
    assert installs == [CHROMIUM, CHROMIUM]  # looked twice, never for apt-get: no install attempted


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
def test_the_page_streams_a_response_in_chromium(chromium, served_page, model, tokenizer):
    from playwright.sync_api import expect, sync_playwright

    app, url = served_page
    assert app.server_name == "127.0.0.1"
    assert {block_fn.concurrency_limit for block_fn in app.fns.values()} == {1}  # one generation at a time
    expected = generate_response(
        model, tokenizer, "Say hello.", settings=DecodingSettings(max_new_tokens=MAX_NEW_TOKENS)
    )

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
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


def test_the_gradio_page_shows_a_status_line_never_raw_exception_text(caplog):
    from sibo.decode.app import respond

    tokenizer = build_tokenizer()
    sliders = (0.0, 0.75, 40, 1, 8)
    assert list(respond(None, tokenizer, None, "", *sliders)) == [
        ("", "**Cannot answer:** the instruction is empty")
    ]
    assert list(respond(None, tokenizer, "hi", "", 0.0, 0.75, 40, 1, None)) == [
        ("", "**Cannot answer:** max new tokens must be a number, got None")
    ]
    assert list(respond(object(), tokenizer, "hi", "", *sliders)) == [
        ("", "**Cannot answer:** the request failed (the server log has the details)")
    ]
    assert "request failed" in caplog.text  # the details go to the log


def test_a_request_that_is_not_text_or_not_whole_says_so(model, tokenizer):
    # what a Gradio API client can send: a number where the instruction goes, a fractional token count
    assert list(respond(model, tokenizer, 42, "", 0.0, 0.75, 40, 1, 6)) == [
        ("", "**Cannot answer:** the instruction must be text, got int 42")
    ]
    assert list(respond(model, tokenizer, "Say hi.", "", 0.0, 0.75, 40, 1, 2.7)) == [
        ("", "**Cannot answer:** max new tokens must be a whole number, got 2.7")
    ]
    assert list(respond(model, tokenizer, "Say hi.", "", 0.0, 0.75, 40.0, "1", 2.0))[-1][1] == ""
