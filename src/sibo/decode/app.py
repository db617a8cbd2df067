"""A Gradio page for one model, as it was trained: a chat for a chat adapter, an instruction form for Alpaca's.

    sibo generate --base_model B --weights_path W --ui [--host 127.0.0.1] [--port 7860] [--share]

A chat adapter (its recorded template is the chat template) gets Gradio's ChatInterface: a multi-turn
conversation with a system prompt, streamed replies, a stop button and the chatbot's clear button; each
reply is prompted with the whole conversation in the chat template (`stream_reply`). An Alpaca adapter gets
the instruction / optional input form. Gradio is imported here only (pip install 'sibo[ui]'). One generation
runs at a time: a SIBO model keeps h0 in state shared by the whole model, so two concurrent forwards would
mix each other's h0. The queue's limit is per function, and the chat's public /chat API is a function of its
own, so sibo.decode.stream's lock is what keeps them apart. Bad input (an over-long prompt, an empty
instruction) is shown on the page.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

from sibo.decode.listen import ServeConfig, cannot_listen
from sibo.decode.settings import ONE_ANSWER_TOKENS, DecodingSettings
from sibo.decode.stream import stream_reply, stream_response
from sibo.errors import InputError
from sibo.prompts import CHAT, PromptTemplate

logger = logging.getLogger(__name__)


def require_gradio():
    """gradio, imported; InputError naming the extra to install when it is missing."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no phoning home from an offline box
    try:
        import gradio
    except ImportError:
        raise InputError("--ui needs gradio: pip install 'sibo[ui]'") from None
    return gradio


def respond(
    model,
    tokenizer,
    instruction: str,
    input: str,
    temperature: float,
    top_p: float,
    top_k: int,
    num_beams: int,
    max_new_tokens: int,
    template: PromptTemplate = PromptTemplate(),
) -> Iterator[tuple[str, str]]:
    """(response so far, status message) as the model writes, prompted with `template`; bad input ends
    with a message instead."""
    try:
        settings = _settings(temperature, top_p, top_k, num_beams, max_new_tokens)
        response = ""
        for piece in stream_response(model, tokenizer, instruction, input or None, settings, template):
            response += piece
            yield response, ""
        yield response, ""  # also when nothing was written (EOS first): clears the previous answer
    except InputError as error:
        yield "", f"**Cannot answer:** {error}"
    except Exception:  # noqa: BLE001 - the page shows a status line, never raw exception text
        logger.exception("request failed")
        yield "", "**Cannot answer:** the request failed (the server log has the details)"


def chat_turns(history: list[dict], system_prompt: str, message: str) -> list[dict[str, str]]:
    """The conversation as {role, content} turns: the system prompt (when not blank), the chatbot's history
    (Gradio's messages, whose content is text or a list of text parts), then the new user message."""

    def text(content) -> str:
        if isinstance(content, str):
            return content
        parts = content if isinstance(content, list) else [content]
        return "".join(part.get("text", "") for part in parts if isinstance(part, dict))

    turns = [{"role": "system", "content": system_prompt}] if (system_prompt or "").strip() else []
    turns += [{"role": turn["role"], "content": text(turn["content"])} for turn in history]
    return [*turns, {"role": "user", "content": message if isinstance(message, str) else ""}]


def chat_respond(
    model,
    tokenizer,
    message: str,
    history: list[dict],
    system_prompt: str,
    temperature: float,
    top_p: float,
    top_k: int,
    max_new_tokens: int,
    template: PromptTemplate = PromptTemplate(CHAT),
) -> Iterator[str]:
    """The reply so far as the model writes the next turn of the conversation; InputError on bad input."""
    settings = _settings(temperature, top_p, top_k, 1, max_new_tokens)
    reply = ""
    for piece in stream_reply(
        model, tokenizer, chat_turns(history, system_prompt, message), settings, template
    ):
        reply += piece
        yield reply
    yield reply  # also when nothing was written (EOS first): the turn is shown, empty


def _settings(temperature, top_p, top_k, num_beams, max_new_tokens) -> DecodingSettings:
    """The page's knobs as decoding settings; InputError for a malformed one."""
    return DecodingSettings(
        max_new_tokens=_number(max_new_tokens, int, "max new tokens"),
        temperature=_number(temperature, float, "temperature"),
        top_p=_number(top_p, float, "top p"),
        top_k=_number(top_k, int, "top k"),
        num_beams=_number(num_beams, int, "beams"),
    )


def _number(value, kind: type, name: str):
    """A slider's value as `kind`; a missing or malformed one is bad input, not a crash, and a whole number
    is whole (int(2.7) would silently be 2)."""
    try:
        number = float(value) if kind is int and not isinstance(value, int) else kind(value)
    except (TypeError, ValueError, OverflowError):
        raise InputError(f"{name} must be a number, got {value!r}") from None
    if kind is int and not float(number).is_integer():
        raise InputError(f"{name} must be a whole number, got {value!r}")
    return int(number) if kind is int else number


def build_app(
    model,
    tokenizer,
    config: ServeConfig | None = None,
    defaults: DecodingSettings | None = None,
    template: PromptTemplate = PromptTemplate(),
):
    """The page as gradio Blocks, queued one request at a time, not yet launched: a chat for the chat
    template, the instruction form for Alpaca's."""
    gr = require_gradio()
    config = config or ServeConfig()
    defaults = defaults or DecodingSettings()
    with gr.Blocks(title=config.title, analytics_enabled=False) as app:
        if template.name == CHAT:
            _chat_page(gr, model, tokenizer, config, defaults, template)
        else:
            _instruction_page(gr, model, tokenizer, config, defaults, template)
    app.queue(max_size=config.queue_size, default_concurrency_limit=1)
    return app


def _sliders(gr, defaults: DecodingSettings, beams: bool) -> list:
    """The decoding knobs, rendered where called: temperature, top p, top k, (beams,) max new tokens."""
    knobs = [
        gr.Slider(0, 2, value=defaults.temperature, step=0.05, label="Temperature"),
        gr.Slider(0.05, 1, value=defaults.top_p, step=0.05, label="Top p"),
        gr.Slider(0, 100, value=defaults.top_k, step=1, label="Top k"),
    ]
    if beams:
        knobs.append(gr.Slider(1, 4, value=defaults.num_beams, step=1, label="Beams (no streaming above 1)"))
    tokens = defaults.tokens_or(ONE_ANSWER_TOKENS)
    return [
        *knobs,
        gr.Slider(1, 2048, value=tokens, step=1, label="Max new tokens", elem_id="max_new_tokens"),
    ]


def _instruction_page(
    gr, model, tokenizer, config: ServeConfig, defaults: DecodingSettings, template
) -> None:
    """Instruction, optional input and knobs on the left; the streamed response and a status line on the right."""

    def run(instruction, input, temperature, top_p, top_k, num_beams, max_new_tokens):
        knobs = (temperature, top_p, top_k, num_beams, max_new_tokens)
        yield from respond(model, tokenizer, instruction, input, *knobs, template=template)

    gr.Markdown(f"# {config.title}\nAn instruction-tuned model boosted by SIBO. Greedy at temperature 0.")
    with gr.Row():
        with gr.Column():
            instruction = gr.Textbox(label="Instruction", lines=2, elem_id="instruction")
            input = gr.Textbox(label="Input (optional)", lines=2, elem_id="input")
            knobs = _sliders(gr, defaults, beams=True)
            submit = gr.Button("Generate", variant="primary", elem_id="submit")
        with gr.Column():
            response = gr.Textbox(label="Response", lines=12, interactive=False, elem_id="response")
            status = gr.Markdown(elem_id="status")
    inputs = [instruction, input, *knobs]
    submit.click(run, inputs=inputs, outputs=[response, status], concurrency_limit=1)
    instruction.submit(run, inputs=inputs, outputs=[response, status], concurrency_limit=1)


def _chat_page(gr, model, tokenizer, config: ServeConfig, defaults: DecodingSettings, template) -> None:
    """A system prompt and knobs on the left; Gradio's ChatInterface (history, streaming, stop, clear) on the right."""

    def run(message, history, system_prompt, temperature, top_p, top_k, max_new_tokens):
        knobs = (temperature, top_p, top_k, max_new_tokens)
        try:
            yield from chat_respond(
                model, tokenizer, message, history, system_prompt, *knobs, template=template
            )
        except InputError as error:
            raise gr.Error(f"Cannot answer: {error}", print_exception=False) from None
        except Exception:  # noqa: BLE001 - the page shows a one-line error, never raw exception text
            logger.exception("request failed")
            raise gr.Error("Cannot answer: the request failed (the server log has the details)") from None

    gr.Markdown(
        f"# {config.title}\nA chat model boosted by SIBO, prompted with its chat template. "
        "Greedy at temperature 0."
    )
    with gr.Row():
        with gr.Column(scale=1):
            system_prompt = gr.Textbox(label="System prompt", lines=3, elem_id="system_prompt")
            knobs = _sliders(gr, defaults, beams=False)
        with gr.Column(scale=3):
            gr.ChatInterface(
                run,
                chatbot=gr.Chatbot(label="Conversation", elem_id="chat", height=480),
                textbox=gr.Textbox(
                    placeholder="Your message", elem_id="message", scale=7, submit_btn=True, stop_btn=True
                ),
                additional_inputs=[system_prompt, *knobs],
                concurrency_limit=1,
                fill_height=False,
            )


def launch_app(app, config: ServeConfig, block: bool = True):
    """Serve the page; `block=False` returns at once (tests); the caller closes it with app.close()."""
    if config.host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning("serving on %s: anyone who can reach this address can use the model", config.host)
    # quiet: gradio's own lines tell a CLI user to "set `share=True` in `launch()`"; ours name --share
    try:
        app.launch(
            server_name=config.host,
            server_port=config.port,
            share=config.share,
            prevent_thread_lock=True,
            quiet=True,
            show_error=True,
        )
    except OSError as error:
        if error.errno is not None:  # a fault of the machine (a full disk): the CLI names it
            raise
        raise cannot_listen(config.host, config.port) from None  # gradio's "Cannot find empty port"
    public = f"public link {app.share_url}" if app.share_url else "--share adds a public link"
    logger.info("the page is on %s (%s; Ctrl+C stops it)", app.local_url, public)
    if block:
        app.block_thread()
    return app
