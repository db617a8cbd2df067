"""The OpenAI-compatible endpoints: /v1/models, /v1/chat/completions, /v1/completions (FastAPI), and
transformers serve's /load_model, which `transformers chat` calls before it talks.

Prompts are written as `sibo generate` writes them: /v1/completions takes the prompt as the instruction in
the adapter's recorded template (Alpaca's for an instruction adapter, one user turn of the chat template
for a chat one), so a greedy answer is the one `sibo generate --prompt` prints. /v1/chat/completions renders
the whole conversation (system turns included) with the chat template; an Alpaca adapter takes one user
message there. Decoding is greedy unless `temperature` > 0 (sibo's default, not OpenAI's 1). Errors are
OpenAI's JSON `{"error": {...}}` with a 4xx status; the server keeps serving. The endpoints tokenize with a
copy of the engine's tokenizer: a Rust tokenizer used from two threads while the engine's batch padding
changes its settings fails with "Already borrowed".
"""

from __future__ import annotations

import asyncio
import copy
import hmac
import json
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException
from transformers import PreTrainedTokenizerBase

from sibo.checkpoint.config import context_length
from sibo.decode.settings import ONE_ANSWER_TOKENS, DecodingSettings, check_fits_context
from sibo.errors import InputError
from sibo.files import check_text
from sibo.serve.engine import BatchingEngine, Event
from sibo.serve.text import ResponseText, TokenText


class ApiError(Exception):
    """A request the server refuses: its HTTP status and OpenAI-style error type."""

    def __init__(
        self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None
    ):
        super().__init__(message)
        self.status, self.kind, self.param = status, kind, param


# OpenAI's fields that sibo does not implement: accepted only at the value that asks for nothing (what SDKs send
# unasked), so a request that needs them (tools, logprobs, a JSON format) is refused, not answered as if plain.
_NEUTRAL = {"presence_penalty": [0], "frequency_penalty": [0], "logprobs": [False, 0], "top_logprobs": [0],
            "logit_bias": [{}], "tools": [[]], "tool_choice": ["none"], "parallel_tool_calls": [True, False],
            "response_format": [{"type": "text"}], "echo": [False], "best_of": [1], "suffix": [""]}  # fmt: skip
_BOOKKEEPING = {"user", "metadata", "store", "service_tier"}  # fields that change no output


class Sampling(BaseModel):
    """The decoding fields both completion endpoints take."""

    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = 1
    stream: bool = False
    stream_options: dict | None = None

    @model_validator(mode="before")
    @classmethod
    def refuse_what_is_not_served(cls, body: object) -> object:
        """A field this endpoint does not serve is a 400 naming it; null asks for the default, as in OpenAI's API."""
        if not isinstance(body, dict):
            return body
        for key, value in body.items():
            if (
                key in cls.model_fields
                or key in _BOOKKEEPING
                or value is None
                or value in _NEUTRAL.get(key, ())
            ):
                continue
            served = "" if key in _NEUTRAL else "unknown or "
            raise ApiError(400, f"{key}: {served}not supported by sibo serve"[:200], param=key)
        return {key: value for key, value in body.items() if value is not None}


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class Message(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str | list[TextPart]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(part.text for part in self.content)


class ChatRequest(Sampling):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    generation_config: str | None = None  # what `transformers chat` sends: a GenerationConfig as JSON

    def apply_generation_config(self) -> None:
        """Read `transformers chat`'s max_new_tokens and, when it samples, temperature and top_p, where the
        request's own fields leave them unset; greedy otherwise, as sibo decodes."""
        try:
            config = json.loads(self.generation_config or "{}")
        except json.JSONDecodeError:
            raise ApiError(400, "generation_config: not a JSON object") from None
        if not isinstance(config, dict):
            raise ApiError(400, "generation_config: not a JSON object")
        fields = self.model_fields_set
        if "max_tokens" not in fields and "max_completion_tokens" not in fields:
            self.max_completion_tokens = _max_new_tokens(config.get("max_new_tokens")) or None
        if config.get("do_sample") and "temperature" not in fields:
            try:
                self.temperature = float(config.get("temperature") or 1.0)
                if "top_p" not in fields:
                    self.top_p = float(config.get("top_p") or 1.0)
            except (TypeError, ValueError):
                raise ApiError(400, "generation_config: temperature and top_p must be numbers") from None


class CompletionRequest(Sampling):
    prompt: str | list[str]


def _max_new_tokens(value: object) -> int | None:
    """generation_config's max_new_tokens, which no pydantic field checks: a whole number or null."""
    if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
        raise ApiError(400, f"generation_config: max_new_tokens must be a whole number, got {value!r}"[:200])
    return value


@dataclass(frozen=True)
class _Served:
    """What the endpoints answer with: the engine, the model's id, and the API's own tokenizer (never the
    engine thread's)."""

    engine: BatchingEngine
    model_id: str
    tokenizer: PreTrainedTokenizerBase


def build_api(engine: BatchingEngine, model_id: str, api_key: str | None = None) -> FastAPI:
    """The app serving `engine`'s model under the name `model_id`; `api_key`: required as a Bearer token."""
    app = FastAPI(title="sibo serve")
    created = int(time.time())
    served = _Served(engine, model_id, copy.deepcopy(engine.tokenizer))

    @app.middleware("http")
    async def check_key(request: Request, call_next):
        given = request.headers.get("authorization", "")
        if api_key and not hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
            return _error(ApiError(401, "invalid or missing API key", "authentication_error"))
        return await call_next(request)

    _answer_errors_as_openai_does(app)
    listing = {"id": model_id, "object": "model", "created": created, "owned_by": "sibo"}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [listing]}

    @app.get("/v1/models/{model:path}")  # an id may hold "/" ("org/name")
    async def retrieve_model(model: str):
        """The one model served (the openai client's models.retrieve)."""
        _check_model(model, model_id)
        return listing

    @app.post("/load_model")
    async def load_model(body: dict):
        """What `transformers chat` asks before its first turn (transformers serve's endpoint): the one model
        served here is always loaded, so it is ready at once; another is an error event."""
        if body.get("model") == model_id:
            event = {"status": "ready", "model": model_id, "cached": True}
        else:
            event = {"status": "error", "message": f"this server serves {model_id!r} only"}
        return StreamingResponse(iter([_sse(event)]), media_type="text/event-stream")

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, http: Request):
        prompt = body.prompt if isinstance(body.prompt, str) else _only(body.prompt, "prompt")
        text = engine.template.prompt(served.tokenizer, check_text(prompt, "prompt"))
        return await _complete(served, http, body, text, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, http: Request):
        body.apply_generation_config()
        body.max_tokens = body.max_tokens or body.max_completion_tokens
        return await _complete(served, http, body, _chat_prompt(served, body.messages), chat=True)

    return app


def _chat_prompt(served: _Served, messages: list[Message]) -> str:
    turns = [
        {"role": message.role, "content": check_text(message.text(), f"messages[{at}].content")}
        for at, message in enumerate(messages)
    ]
    return served.engine.template.conversation_prompt(served.tokenizer, turns)


def _answer_errors_as_openai_does(app: FastAPI) -> None:
    """Every refusal in OpenAI's error shape: a bad body (naming its field), sibo's own, an unknown route or
    method (not starlette's {"detail": …})."""

    @app.exception_handler(RequestValidationError)
    async def bad_body(request: Request, error: RequestValidationError):
        first = error.errors()[0] if error.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ())[1:])
        return _error(
            ApiError(400, f"{where or 'body'}: {first.get('msg', 'invalid request')}", param=where or None)
        )

    app.add_exception_handler(ApiError, lambda request, error: _error(error))
    app.add_exception_handler(InputError, lambda request, error: _error(ApiError(400, str(error))))
    app.add_exception_handler(
        StarletteHTTPException,
        lambda request, error: _error(ApiError(error.status_code, str(error.detail)), error.headers),
    )


def _check_model(asked: str, model_id: str) -> None:
    if asked != model_id:
        raise ApiError(
            404, f"model {asked!r} is not served here: this server serves {model_id!r}", param="model"
        )


def _only(values: list[str], name: str) -> str:
    if len(values) != 1:
        raise ApiError(400, f"{name}: one prompt per request, got {len(values)}")
    return values[0]


async def _complete(served: _Served, http: Request, body: Sampling, prompt: str, chat: bool):
    engine = served.engine
    _check_model(body.model, served.model_id)
    if body.n != 1:
        raise ApiError(400, "n: one choice per request")
    tokens = len(served.tokenizer(prompt, add_special_tokens=engine.template.add_special_tokens)["input_ids"])
    budget = _budget(engine.model, tokens, body.max_tokens)
    request = engine.request(prompt, _settings(body, budget), _stops(body.stop))
    request.loop = asyncio.get_running_loop()
    engine.submit(request)
    reply = _Reply(served, chat, request)
    if body.stream:
        usage = bool((body.stream_options or {}).get("include_usage"))
        return StreamingResponse(reply.stream(usage), media_type="text/event-stream")
    return await reply.whole(http)


def _budget(model, prompt_tokens: int, max_tokens: int | None) -> int:
    """The answer's most tokens: `max_tokens`, refused unless the prompt and it fit the context; unset,
    ONE_ANSWER_TOKENS or the room the context leaves if less (OpenAI's API answers up to the context's end)."""
    if max_tokens is not None:
        check_fits_context(model, prompt_tokens, max_tokens, "the prompt", "max_tokens")
        return max_tokens
    limit = context_length(model)
    if limit is None:
        return ONE_ANSWER_TOKENS
    if prompt_tokens >= limit:
        raise ApiError(
            400,
            f"the prompt is {prompt_tokens} tokens, no room left for an answer in the model's context "
            f"of {limit} tokens: shorten it",
        )
    return min(ONE_ANSWER_TOKENS, limit - prompt_tokens)


def _settings(body: Sampling, max_new_tokens: int) -> DecodingSettings:
    """The engine's settings: the budget is one of them, so requests batch only with the same one."""
    return DecodingSettings(
        max_new_tokens=max_new_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=0,
        seed=body.seed,
    )


def _stops(stop: str | list[str] | None) -> tuple[str, ...]:
    stops = (stop,) if isinstance(stop, str) else tuple(stop or ())
    if len(stops) > 4 or not all(stops):
        raise ApiError(400, "stop: up to 4 non-empty strings")
    return stops


class _Reply:
    """One request's answer, as OpenAI's JSON or as server-sent events."""

    def __init__(self, served: _Served, chat: bool, request):
        self.tokenizer, self.model_id = served.tokenizer, served.model_id
        self.chat, self.request = chat, request
        self.id = ("chatcmpl-" if chat else "cmpl-") + secrets.token_hex(12)
        self.created = int(time.time())
        self.text = ResponseText(served.engine.template, request.stop)

    def _completion(self, done: Event) -> str:
        return self.tokenizer.decode(done.ids, skip_special_tokens=True)

    async def _events(self) -> AsyncIterator[Event]:
        while True:
            event = await self.request.events.get()
            if event.kind == "error":
                raise ApiError(500, event.message, "server_error")
            yield event
            if event.kind == "done":
                return

    def _usage(self, done: Event) -> dict:
        completion = len(done.ids)
        return {
            "prompt_tokens": done.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": done.prompt_tokens + completion,
        }

    def _reason(self, done: Event) -> str:
        return "stop" if self.text.ended else done.finish_reason

    def _body(self, choices: list[dict], chunk: bool = False) -> dict:
        kind = ("chat.completion" if self.chat else "text_completion") + (
            ".chunk" if chunk and self.chat else ""
        )
        return {
            "id": self.id,
            "object": kind,
            "created": self.created,
            "model": self.model_id,
            "choices": choices,
        }

    def _choice(self, text: str | None, reason: str | None, chunk: bool) -> dict:
        if not self.chat:
            return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": reason}
        if chunk:
            delta = {} if text is None else {"role": "assistant", "content": text}
            return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}
        return {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "logprobs": None,
            "finish_reason": reason,
        }

    async def whole(self, http: Request) -> dict:
        """The answer as one JSON body. Nothing reads a non-streamed request's connection until its answer
        is written, so it is listened to meanwhile: a client that hangs up cancels its request."""
        last = asyncio.ensure_future(self._last_event())
        hung_up = asyncio.ensure_future(_hung_up(http))
        try:
            await asyncio.wait({last, hung_up}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            hung_up.cancel()
            if not last.done():  # the client went away, or this request's task was cancelled
                self.request.cancelled.set()
                last.cancel()
        if last.cancelled():
            raise ApiError(499, "the client closed the connection before its answer", "client_closed_request")
        done = last.result()
        answer = self.text.finish(self._completion(done))
        return {
            **self._body([self._choice(answer, self._reason(done), chunk=False)]),
            "usage": self._usage(done),
        }

    async def _last_event(self) -> Event:
        async for event in self._events():
            done = event
        return done

    async def stream(self, usage: bool) -> AsyncIterator[str]:
        """The answer as server-sent events, each token's text decoded as it comes (`TokenText`)."""
        tokens = TokenText(self.tokenizer)
        try:
            async for event in self._events():
                if event.kind == "tokens":
                    delta = self.text.update(tokens.add(event.ids))
                else:
                    delta = self.text.finish(self._completion(event))
                if delta:
                    yield _sse(self._body([self._choice(delta, None, chunk=True)], chunk=True))
            yield _sse(self._body([self._choice(None, self._reason(event), chunk=True)], chunk=True))
            if usage:
                yield _sse({**self._body([], chunk=True), "usage": self._usage(event)})
        except ApiError as error:
            yield _sse({"error": {"message": str(error), "type": error.kind, "param": None, "code": None}})
        except (asyncio.CancelledError, GeneratorExit):
            self.request.cancelled.set()  # the client left while this awaited a token, or its send
            raise
        yield "data: [DONE]\n\n"


async def _hung_up(http: Request) -> None:
    """Return once the client of `http` has closed its connection: its body is read, so the next message
    is the disconnect. (Request.is_disconnected never sees it through the API key middleware.)"""
    while (await http.receive())["type"] != "http.disconnect":
        pass


def _sse(payload: dict) -> str:
    return f"data: {json.dumps(payload)}\n\n"


def _error(error: ApiError, headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"message": str(error), "type": error.kind, "param": error.param, "code": None}}
    return JSONResponse(body, status_code=error.status, headers=headers)
