"""The API in this process (starlette's TestClient): bad text and a malformed generation_config are JSON 400s,
never a text/plain 500, and the endpoints never touch the engine thread's tokenizer."""

from __future__ import annotations

import json
import re
import socket
import threading
import time

import pytest

from sibo.prompts import CHAT, INSTRUCTION_MARKER, PromptTemplate
from sibo.serve.engine import BatchingEngine
from sibo.testing import add_chat_template, build_tiny_model, build_tokenizer

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

MODEL = "tiny"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def engine():
    tokenizer = add_chat_template(build_tokenizer())
    model = build_tiny_model("llama", len(tokenizer))
    engine = BatchingEngine(model, tokenizer, PromptTemplate(CHAT)).start()
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def client(engine):
    from fastapi.testclient import TestClient

    from sibo.serve.api import build_api

    return TestClient(build_api(engine, MODEL), raise_server_exceptions=False)


def post(client, path: str, body: dict):
    """POST `body` as JSON with non-ASCII escaped, as most clients send it (a lone surrogate as \\ud800)."""
    return client.post(path, content=json.dumps(body), headers={"content-type": "application/json"})


def refused(response) -> str:
    """The message of a JSON 400."""
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/json"
    return response.json()["error"]["message"]


def test_a_lone_surrogate_is_a_json_400_naming_where(client):
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi \ud800"}]}
    assert refused(post(client, "/v1/chat/completions", chat)) == (
        "messages[0].content: not valid text (a lone surrogate '\\ud800' at character 3)"
    )
    parts = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "\udfff"}]},
    ]
    message = refused(post(client, "/v1/chat/completions", {"model": MODEL, "messages": parts}))
    assert message.startswith("messages[1].content: not valid text")
    for prompt in ("\ud800", ["\ud800"]):
        message = refused(post(client, "/v1/completions", {"model": MODEL, "prompt": prompt}))
        assert message == "prompt: not valid text (a lone surrogate '\\ud800' at character 0)"


@pytest.mark.parametrize(
    ("path", "field", "value", "message"),
    [("/v1/chat/completions", "tools", [{"type": "function", "function": {"name": "f"}}], "tools: not supported by sibo serve"),
     ("/v1/chat/completions", "logprobs", True, "logprobs: not supported by sibo serve"),
     ("/v1/chat/completions", "response_format", {"type": "json_object"}, "response_format: not supported by sibo serve"),
     ("/v1/completions", "presence_penalty", 0.5, "presence_penalty: not supported by sibo serve"),
     ("/v1/completions", "max_completion_tokens", 4, "max_completion_tokens: unknown or not supported by sibo serve"),
     ("/v1/completions", "temprature", 0.5, "temprature: unknown or not supported by sibo serve"),
     ("/v1/completions", "temperature", 2.5, "temperature: Input should be less than or equal to 2")],
)  # fmt: skip
def test_a_field_not_served_is_a_400_naming_it(client, path, field, value, message):
    body = {"model": MODEL, "max_tokens": 2, field: value}
    body |= {"messages": [{"role": "user", "content": "hi"}]} if "chat" in path else {"prompt": "hi"}
    response = post(client, path, body)
    assert refused(response) == message and response.json()["error"]["param"] == field


def test_the_model_is_retrieved_by_name_and_every_error_has_openais_shape(client):
    assert client.get(f"/v1/models/{MODEL}").json() == client.get("/v1/models").json()["data"][0]
    for response, status, message in [
        (
            client.get("/v1/models/other"),
            404,
            f"model 'other' is not served here: this server serves '{MODEL}'",
        ),
        (client.get("/v1/nowhere"), 404, "Not Found"),
        (client.get("/v1/completions"), 405, "Method Not Allowed"),
    ]:
        assert response.status_code == status and response.json()["error"]["message"] == message
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    assert client.get("/v1/completions").headers["allow"] == "POST"
    assert (
        client.get("/v1/models/org/name")
        .json()["error"]["message"]
        .startswith("model 'org/name' is not served")
    )


def test_a_budget_past_the_context_names_max_tokens(client):
    message = refused(
        post(client, "/v1/completions", {"model": MODEL, "prompt": "hi", "max_tokens": 100_000})
    )
    found = re.fullmatch(
        r"the prompt is (\d+) tokens and max_tokens is 100000, more than the model's context of (\d+) tokens: "
        r"use max_tokens (\d+) or less",
        message,
    )
    assert found and int(found[3]) == int(found[2]) - int(found[1])


def test_what_asks_for_nothing_and_null_are_served_as_the_defaults(client):
    sdk_defaults = {"presence_penalty": 0, "frequency_penalty": 0.0, "logprobs": False, "tools": [], "user": "u1",
                    "response_format": {"type": "text"}, "temperature": None, "top_p": None, "n": None, "stream": None}  # fmt: skip
    body = {"model": MODEL, "prompt": "hi", "max_tokens": 2, **sdk_defaults}
    response = post(client, "/v1/completions", body)
    assert response.status_code == 200, response.text
    assert (
        response.json()["usage"]["completion_tokens"] <= 2 and response.json()["object"] == "text_completion"
    )


def test_generation_configs_max_new_tokens_is_a_whole_number_or_a_json_400(client, engine, script_model):
    """`transformers chat`'s generation_config is JSON text no pydantic field checks: "64" was a 500."""
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    for tokens in ("64", True, 6.5, [6]):
        config = json.dumps({"max_new_tokens": tokens})
        message = refused(client.post("/v1/chat/completions", json={**chat, "generation_config": config}))
        assert message == f"generation_config: max_new_tokens must be a whole number, got {tokens!r}"
    script_model(engine.model, engine.tokenizer("x", add_special_tokens=False)["input_ids"])  # never EOS
    config = json.dumps({"max_new_tokens": 3})
    reply = client.post("/v1/chat/completions", json={**chat, "generation_config": config}).json()
    assert reply["choices"][0]["message"]["content"] == "xxx"
    assert reply["choices"][0]["finish_reason"] == "length"


def record_users(method, watched, users: list[str]):
    """`method`, noting in `users` the name of each thread that calls it on the `watched` object."""

    def spy(self, *args, **kwargs):
        if self is watched:
            users.append(threading.current_thread().name)
        return method(self, *args, **kwargs)

    return spy


def test_the_endpoints_never_use_the_engine_threads_tokenizer(client, engine, monkeypatch):
    """A Rust tokenizer used by two threads at once, while one changes its padding, fails ("Already
    borrowed"): the engine's tokenizer is used by the engine's thread only."""
    users: list[str] = []
    backend = type(engine.tokenizer)
    for name in ("__call__", "decode", "apply_chat_template"):
        monkeypatch.setattr(backend, name, record_users(getattr(backend, name), engine.tokenizer, users))
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    assert client.post("/v1/chat/completions", json=chat).status_code == 200
    streamed = client.post("/v1/chat/completions", json={**chat, "stream": True})
    assert streamed.status_code == 200 and streamed.text.endswith("data: [DONE]\n\n")
    assert (
        client.post("/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 4}).status_code
        == 200
    )
    assert users and set(users) == {"sibo-serve-engine"}


def test_a_stream_closed_while_it_waits_for_its_client_cancels_its_request(engine):
    """Starlette closes a stream's generator (GeneratorExit at its `yield`) when the client leaves while the
    stream waits to send: its row must stop as when the hang-up finds it waiting for a token."""
    import asyncio
    from types import SimpleNamespace

    from sibo.serve.api import _Reply
    from sibo.serve.engine import Event

    request = SimpleNamespace(events=asyncio.Queue(), cancelled=threading.Event(), stop=())
    reply = _Reply(SimpleNamespace(tokenizer=engine.tokenizer, model_id=MODEL, engine=engine), False, request)

    async def read_one_then_leave():
        request.events.put_nowait(
            Event("tokens", engine.tokenizer("x", add_special_tokens=False)["input_ids"])
        )
        stream = reply.stream(usage=False)
        assert (await anext(stream)).startswith("data: ")
        await stream.aclose()

    asyncio.run(read_one_then_leave())
    assert request.cancelled.is_set()


@pytest.mark.parametrize("stream", [False, True])
def test_a_request_whose_client_hangs_up_stops_decoding(engine, script_model, stream):
    """uvicorn never tells a non-streamed endpoint that its client went away: the request asks, and is
    cancelled, so its row stops instead of decoding to max_tokens for nobody; a stream's too, whether the
    hang-up finds it waiting for a token or for its client."""
    import uvicorn

    from sibo.serve.api import build_api

    script = script_model(engine.model, engine.tokenizer("x", add_special_tokens=False)["input_ids"])
    slow = engine.model.get_output_embeddings().register_forward_hook(lambda *_: time.sleep(0.01))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(build_api(engine, MODEL), port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.05)
        body = json.dumps({"model": MODEL, "prompt": "hi", "max_tokens": 400, "stream": stream}).encode()
        head = "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        head += f"Content-Length: {len(body)}\r\n\r\n"
        with socket.create_connection(("127.0.0.1", port)) as client:
            client.sendall(head.encode() + body)
            while script.steps < 5:
                time.sleep(0.01)
        time.sleep(1.0)  # a few polls
        stopped_at = script.steps
        time.sleep(0.3)
        assert script.steps == stopped_at < 200
    finally:
        slow.remove()
        server.should_exit = True
        thread.join(timeout=30)


def stream_events(response) -> list[dict]:
    assert response.status_code == 200, response.text
    return [
        json.loads(line.removeprefix("data: ")) for line in response.text.splitlines() if line[6:7] == "{"
    ]


def streamed_content(response) -> tuple[str, str]:
    """(a chat stream's content, its finish_reason)."""
    chunks = [event["choices"][0] for event in stream_events(response) if event.get("choices")]
    return "".join(chunk["delta"].get("content", "") for chunk in chunks), chunks[-1]["finish_reason"]


def test_a_stream_joins_to_the_answer_not_streamed(client, engine, script_model):
    """Characters split over byte tokens, special tokens decoding skips mid-text and a stop string: the pieces
    streamed add up exactly to the non-streamed answer, with the same finish_reason."""
    tokenizer = engine.tokenizer
    ids = tokenizer("héllo 叫 😀 wörld, là-bas: the end", add_special_tokens=False)["input_ids"]
    ids[12:12] = [tokenizer.bos_token_id, tokenizer.unk_token_id]  # within 😀's bytes
    for stop in (None, "là-"):
        chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": len(ids) + 2}
        script_model(engine.model, ids)
        whole = client.post("/v1/chat/completions", json={**chat, "stop": stop}).json()["choices"][0]
        script_model(engine.model, ids)
        content, reason = streamed_content(
            client.post("/v1/chat/completions", json={**chat, "stop": stop, "stream": True})
        )
        assert (content, reason) == (whole["message"]["content"], whole["finish_reason"])
        assert content.startswith("héllo 叫 😀 wörld, ")
        assert reason == ("stop" if stop else "length")


class CountingDecoder:
    """A tokenizer whose decode counts the ids it is given."""

    def __init__(self, tokenizer):
        self.tokenizer, self.decoded = tokenizer, 0

    def decode(self, ids: list[int], **kwargs) -> str:
        self.decoded += len(ids)
        return self.tokenizer.decode(ids, **kwargs)


@pytest.mark.parametrize("template", [PromptTemplate(), PromptTemplate(CHAT)], ids=["alpaca", "chat"])
@pytest.mark.parametrize("tokens", [100, 400])
def test_each_streamed_token_costs_the_same_however_long_the_answer(engine, monkeypatch, template, tokens):
    """Each streamed token decodes a window of a few ids and searches only the text not shown yet for a header
    or a stop string; the whole answer is decoded once, at the end: n tokens cost O(n), not the O(n²) of
    decoding and searching the whole answer again for every token."""
    import asyncio
    from types import SimpleNamespace

    import sibo.serve.text
    from sibo.serve.api import _Reply
    from sibo.serve.engine import Event

    searched: list[int] = []
    cut = sibo.serve.text.cut_at_next_section
    monkeypatch.setattr(
        sibo.serve.text, "cut_at_next_section", lambda text: searched.append(len(text)) or cut(text)
    )
    text = ("A long answer ## héllo 叫 😀 wörld. " * 40)[:tokens]  # "##" is held back a token
    ids = engine.tokenizer(text, add_special_tokens=False)["input_ids"][:tokens]
    counting = CountingDecoder(engine.tokenizer)
    request = SimpleNamespace(events=asyncio.Queue(), cancelled=threading.Event(), stop=("never said",))
    served = SimpleNamespace(tokenizer=counting, model_id=MODEL, engine=SimpleNamespace(template=template))
    reply = _Reply(served, True, request)
    for token in ids:
        request.events.put_nowait(Event("tokens", [token]))
    request.events.put_nowait(Event("done", ids, "length", 5))

    async def read():
        return [chunk async for chunk in reply.stream(usage=False)]

    chunks = [json.loads(chunk.removeprefix("data: ")) for chunk in asyncio.run(read())[:-1]]
    content = "".join(chunk["choices"][0]["delta"].get("content", "") for chunk in chunks)
    assert content == engine.tokenizer.decode(ids, skip_special_tokens=True)
    assert counting.decoded <= 6 * len(ids)
    assert max(searched[:-1], default=0) <= len(INSTRUCTION_MARKER)  # the last: the whole answer, once


def chat_prompt_of(engine, tokens: int) -> list[dict]:
    """A conversation whose prompt is `tokens` tokens (the test tokenizer has a token per byte)."""
    empty = engine.template.conversation_prompt(engine.tokenizer, [{"role": "user", "content": ""}])
    template_tokens = len(engine.tokenizer(empty, add_special_tokens=False)["input_ids"])
    return [{"role": "user", "content": "a" * (tokens - template_tokens)}]


def test_an_unset_max_tokens_answers_in_the_room_the_context_leaves(client, engine, script_model):
    """OpenAI's API with no max_tokens answers up to the context's end: 50 tokens of room, not 128, is room
    enough, and the answer stops there; no room at all is a 400."""
    context = engine.model.config.max_position_embeddings
    messages = chat_prompt_of(engine, context - 50)
    script_model(engine.model, engine.tokenizer("x", add_special_tokens=False)["input_ids"])  # never EOS
    reply = client.post("/v1/chat/completions", json={"model": MODEL, "messages": messages}).json()
    assert reply["usage"]["prompt_tokens"] == context - 50
    assert reply["choices"][0] == {
        "index": 0,
        "message": {"role": "assistant", "content": "x" * 50},
        "logprobs": None,
        "finish_reason": "length",
    }
    assert reply["usage"]["completion_tokens"] == 50
    full = {"model": MODEL, "messages": chat_prompt_of(engine, context)}
    assert refused(post(client, "/v1/chat/completions", full)) == (
        f"the prompt is {context} tokens, no room left for an answer in the model's context of {context} tokens: "
        "shorten it"
    )
    over = refused(
        post(client, "/v1/chat/completions", {"model": MODEL, "messages": messages, "max_tokens": 51})
    )
    assert over == (
        f"the prompt is {context - 50} tokens and max_tokens is 51, more than the model's context of {context} "
        "tokens: use max_tokens 50 or less"
    )
