"""`sibo serve` as a client sees it: the official openai client and curl against 127.0.0.1 get what
`sibo generate` prints, streamed or not; bad requests are 4xx JSON and the server keeps serving; concurrent
requests are decoded in batches; SIGTERM stops it cleanly."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from fault_checks import refused
from peft import LoraConfig

from sibo import get_sibo_model
from sibo.checkpoint.load import load_model
from sibo.cli import main as cli_main
from sibo.decode.settings import DecodingSettings
from sibo.decode.stream import generate_response, stream_completion
from sibo.prompts import PromptTemplate, write_template
from sibo.serve.engine import BatchingEngine
from sibo.testing import add_chat_template, build_tiny_model, build_tokenizer

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")

KEY = "test-key"
TOKENS = 12
PROMPTS = [
    "Add 2 and 3.",
    "What is the sum of 4 and 5?",
    "Name a color.",
    "hi",
    "Say yes.",
    "Count to three.",
]


def write_adapter(root, chat: bool):
    """A tiny LLaMA base and a LoRA-SIBO adapter on it (random B, so it changes the answers)."""
    tokenizer = build_tokenizer()
    if chat:
        add_chat_template(tokenizer)
    base = build_tiny_model("llama", len(tokenizer))
    base.save_pretrained(root / "base")
    tokenizer.save_pretrained(root / "base")
    lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    get_sibo_model(base, lora, lam=0.3).save_pretrained(root / "adapter")
    if chat:
        write_template(root / "adapter", PromptTemplate("chat"))
    return root / "base", root / "adapter"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(base, adapter, port: int, *extra: str) -> subprocess.Popen:
    argv = ["--base_model", str(base), "--weights_path", str(adapter), "--port", str(port), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    server = subprocess.Popen(
        [sys.executable, "-m", "sibo", "serve", *argv],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    for _ in range(300):  # bounded: 150 s
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return server
        except OSError:
            if server.poll() is not None:
                raise AssertionError(server.stderr.read()) from None
            time.sleep(0.5)
    server.kill()
    raise AssertionError("sibo serve did not start listening")


def stop_server(server: subprocess.Popen) -> tuple[int, str]:
    server.send_signal(signal.SIGTERM)
    out, _ = server.communicate(timeout=60)
    return server.returncode, out


@pytest.fixture(scope="module")
def alpaca(tmp_path_factory):
    base, adapter = write_adapter(tmp_path_factory.mktemp("alpaca"), chat=False)
    port = free_port()
    server = start_server(base, adapter, port, "--api_key", KEY)
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, max_retries=0, timeout=120)
    yield base, adapter, port, client, server
    if server.poll() is None:
        server.kill()


def generated(capsys, base, adapter, prompt: str) -> str:
    """What `sibo generate` prints for `prompt` (its trailing newline dropped)."""
    argv = ["generate", "--base_model", str(base), "--weights_path", str(adapter), "--prompt", prompt]
    capsys.readouterr()
    assert cli_main([*argv, "--max_new_tokens", str(TOKENS)]) == 0
    return capsys.readouterr().out.removesuffix("\n")


def curl(port: int, path: str, body: str | None = None, key: str | None = KEY) -> tuple[int, dict]:
    command = ["curl", "-s", "-w", "\n%{http_code}", f"http://127.0.0.1:{port}{path}"]
    if key:
        command += ["-H", f"Authorization: Bearer {key}"]
    if body is not None:
        command += ["-H", "Content-Type: application/json", "-d", body]
    out = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True).stdout
    payload, status = out.rsplit("\n", 1)
    return int(status), json.loads(payload)


async def answer_together(
    engine: BatchingEngine, prompts: list[str], settings: DecodingSettings, cancel: list | None = None
) -> list[list[int]]:
    """Every prompt submitted before the engine starts, so they wait as one batch (`cancel`'s slots take the
    first requests, for the test to cancel); each request's token ids once it is done, in order."""
    import asyncio

    requests = [engine.request(engine.template.prompt(engine.tokenizer, p), settings) for p in prompts]
    for request in requests:
        request.loop = asyncio.get_running_loop()
        engine.submit(request)
    if cancel is not None:
        cancel[:] = requests[: len(cancel)]
    engine.start()
    answers = []
    for request in requests:
        while (event := await request.events.get()).kind != "done":
            pass
        answers.append(event.ids)
    engine.close()
    return answers


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_the_openai_client_gets_what_sibo_generate_prints(alpaca, capsys):
    base, adapter, port, client, _ = alpaca
    assert [model.id for model in client.models.list()] == ["adapter"]
    expected = generated(capsys, base, adapter, PROMPTS[0])
    assert expected

    completion = client.completions.create(
        model="adapter", prompt=PROMPTS[0], max_tokens=TOKENS, temperature=0
    )
    assert completion.choices[0].text == expected
    assert completion.usage.completion_tokens <= TOKENS and completion.usage.prompt_tokens > 0
    chat = client.chat.completions.create(
        model="adapter", messages=[{"role": "user", "content": PROMPTS[0]}], max_tokens=TOKENS, temperature=0
    )
    assert chat.choices[0].message.content == expected
    pieces = client.chat.completions.create(
        model="adapter",
        messages=[{"role": "user", "content": PROMPTS[0]}],
        max_tokens=TOKENS,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(pieces)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected
    assert chunks[-1].usage.completion_tokens == chat.usage.completion_tokens
    streamed = client.completions.create(model="adapter", prompt=PROMPTS[0], max_tokens=TOKENS, stream=True)
    assert "".join(chunk.choices[0].text for chunk in streamed) == expected


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_bad_requests_are_4xx_json_and_the_server_keeps_serving(alpaca):
    _, _, port, client, _ = alpaca
    assert curl(port, "/v1/completions", "{not json")[0] == 400
    status, error = curl(
        port, "/v1/completions", json.dumps({"model": "adapter", "prompt": "hi", "temperature": -1})
    )
    assert status == 400 and "temperature" in error["error"]["message"]
    assert curl(port, "/v1/completions", json.dumps({"model": "other", "prompt": "hi"}))[0] == 404
    assert curl(port, "/v1/chat/completions", json.dumps({"model": "adapter", "messages": []}))[0] == 400
    status, error = curl(port, "/v1/models", key=None)
    assert status == 401 and error["error"]["type"] == "authentication_error"
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="adapter", prompt="hi", max_tokens=100_000)  # past the context
    status, body = curl(
        port, "/v1/completions", json.dumps({"model": "adapter", "prompt": "hi", "max_tokens": 3})
    )
    assert status == 200 and body["usage"]["completion_tokens"] <= 3


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_concurrent_clients_each_get_their_own_answer(alpaca, capsys):
    base, adapter, _, client, server = alpaca
    expected = [generated(capsys, base, adapter, prompt) for prompt in PROMPTS]

    def ask(prompt: str) -> str:
        reply = client.completions.create(model="adapter", prompt=prompt, max_tokens=TOKENS, temperature=0)
        return reply.choices[0].text

    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        assert list(pool.map(ask, PROMPTS)) == expected
    returncode, out = stop_server(server)  # SIGTERM: a clean stop
    assert returncode == 0 and out.rstrip().endswith("server stopped (SIGTERM)")


def test_the_engine_batches_waiting_requests_and_answers_each_as_alone():
    """Requests queued together decode as one batch, with the answers each would get alone."""
    import asyncio

    tokenizer = build_tokenizer()
    model = build_tiny_model("llama", len(tokenizer))
    template = PromptTemplate()
    settings = DecodingSettings(max_new_tokens=TOKENS)
    expected = [generate_response(model, tokenizer, prompt, settings=settings) for prompt in PROMPTS]

    engine = BatchingEngine(model, tokenizer, template)
    answers = asyncio.run(answer_together(engine, PROMPTS, settings))
    texts = [template.response(tokenizer.decode(ids, skip_special_tokens=True)) for ids in answers]
    assert [text.strip() for text in texts] == [text.strip() for text in expected]
    assert max(engine.batch_sizes) > 1


def test_a_seeded_sampling_request_gets_the_same_answer_whatever_waits_with_it():
    """A seed names one answer: two identical seeded requests asked together each get the one it gets alone,
    not two draws from one seeded stream shared by their batch."""
    import asyncio

    tokenizer = build_tokenizer()
    model = build_tiny_model("llama", len(tokenizer))
    settings = DecodingSettings(max_new_tokens=TOKENS, temperature=1.0, top_p=1.0, top_k=0, seed=7)

    def answers(prompts: list[str]) -> list[list[int]]:
        return asyncio.run(
            answer_together(BatchingEngine(model, tokenizer, PromptTemplate()), prompts, settings)
        )

    [alone] = answers(PROMPTS[:1])
    assert answers([PROMPTS[0], PROMPTS[0]]) == [alone, alone]
    unseeded = DecodingSettings(max_new_tokens=TOKENS, temperature=1.0, top_p=1.0, top_k=0)
    engine = BatchingEngine(model, tokenizer, PromptTemplate())
    asyncio.run(answer_together(engine, PROMPTS[:2], unseeded))
    assert engine.batch_sizes == [2]  # unseeded sampling requests still share a batch


def test_port_0_is_refused_in_one_line(capsys):
    """Port 0 (any free one) would be announced as http://127.0.0.1:0/v1, where nobody can connect."""
    line = refused(capsys, ["serve", "--base_model", "nowhere", "--port", "0"])
    assert line == "sibo serve: error: --port must be in 1..65535, got 0"


def test_an_empty_api_key_is_refused_not_served_open(capsys):
    line = refused(capsys, ["serve", "--base_model", "nowhere", "--api_key", " "])
    assert (
        line
        == "sibo serve: error: --api_key is empty: give the key, or leave the flag out to serve without one"
    )


def test_a_cancelled_request_stops_decoding_its_row_and_an_all_cancelled_batch_stops():
    """A client that went away (its request cancelled mid-generation) does not keep the batch decoding."""
    import asyncio

    tokenizer = build_tokenizer()
    model = build_tiny_model("llama", len(tokenizer))
    word = tokenizer("x", add_special_tokens=False)["input_ids"][0]
    steps = []

    def write_x_and_cancel(module, args, logits):  # never EOS: each row would run to max_new_tokens
        steps.append(len(steps))
        if len(steps) == 3:
            for request in cancel:
                request.cancelled.set()
        forced = torch.full_like(logits, -1e4)
        forced[..., -1, word] = 1e4
        return forced

    model.get_output_embeddings().register_forward_hook(write_x_and_cancel)
    template, settings = PromptTemplate(), DecodingSettings(max_new_tokens=40)

    def decode(prompts: list[str]) -> list[list[int]]:
        engine = BatchingEngine(model, tokenizer, template)
        return asyncio.run(answer_together(engine, prompts, settings, cancel))

    cancel = [None]  # the first of two requests
    first, second = decode(PROMPTS[:2])
    assert len(first) == 3 and second == [word] * 40
    steps.clear()
    cancel = [None, None]  # both
    assert [len(ids) for ids in decode(PROMPTS[:2])] == [3, 3]
    assert len(steps) == 3  # the batch stopped decoding, 37 steps short of max_new_tokens


def test_non_finite_logits_fail_the_request_with_their_cause_and_the_engine_keeps_serving():
    """A model whose logits go non-finite answers an error naming the cause, never an empty answer."""
    import asyncio

    tokenizer = build_tokenizer()
    model = build_tiny_model("llama", len(tokenizer))
    template, settings = PromptTemplate(), DecodingSettings(max_new_tokens=TOKENS)
    poisoned = model.get_output_embeddings().register_forward_hook(lambda m, a, logits: logits * math.inf)

    async def ask(engine: BatchingEngine):
        request = engine.request(template.prompt(tokenizer, PROMPTS[0]), settings)
        request.loop = asyncio.get_running_loop()
        engine.submit(request)
        while (event := await request.events.get()).kind not in ("done", "error"):
            pass
        return event

    async def twice():
        engine = BatchingEngine(model, tokenizer, template)
        engine.start()
        failed = await ask(engine)
        poisoned.remove()
        answered = await ask(engine)
        engine.close()
        return failed, answered

    failed, answered = asyncio.run(twice())
    assert failed.kind == "error" and "logits" in failed.message and "non-finite" in failed.message
    assert answered.kind == "done" and answered.ids


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_a_chat_adapter_takes_conversations_with_system_turns(tmp_path, capsys):
    base, adapter = write_adapter(tmp_path, chat=True)
    expected = generated(capsys, base, adapter, PROMPTS[0])
    port = free_port()
    server = start_server(base, adapter, port)
    try:
        client = openai.OpenAI(
            base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=120
        )
        ask = {"model": "adapter", "max_tokens": TOKENS, "temperature": 0}
        one_turn = client.chat.completions.create(messages=[{"role": "user", "content": PROMPTS[0]}], **ask)
        assert one_turn.choices[0].message.content == expected
        conversation = [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": PROMPTS[0]},
            {"role": "assistant", "content": "5"},
            {"role": "user", "content": PROMPTS[1]},
        ]
        reply = client.chat.completions.create(messages=conversation, **ask)
        model, tokenizer = load_model(str(base), str(adapter))
        prompt = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
        settings = DecodingSettings(max_new_tokens=TOKENS)
        decoded = "".join(stream_completion(model, tokenizer, prompt, settings, PromptTemplate("chat")))
        assert reply.choices[0].message.content == decoded
        assert reply.usage.prompt_tokens == len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        console = transformers_chat(port, PROMPTS[0])
        assert f"{TOKENS} tokens in" in console  # its max_new_tokens, read from its generation_config
        assert visible(expected) in visible(console)
    finally:
        returncode, _ = stop_server(server)
    assert returncode == 0


def visible(text: str) -> str:
    """The characters a console shows of `text`, without spaces (its wrapping and padding)."""
    return "".join(char for char in text if char.isprintable() and not char.isspace())


def transformers_chat(port: int, message: str) -> str:
    """What `transformers chat` (a client of transformers serve's API) prints when it sends `message` to the
    server on `port`, greedy, at most TOKENS new tokens, then exits: its console."""
    env = {
        name: value for name, value in os.environ.items() if name != "HF_HUB_OFFLINE"
    }  # it refuses loopback too
    command = [sys.executable, "-m", "transformers.cli.transformers", "chat", "adapter"]
    command += [f"http://127.0.0.1:{port}/v1", "do_sample=False", f"max_new_tokens={TOKENS}"]
    chat = subprocess.run(
        command,
        input=f"{message}\nn\n!exit\n",  # n: no "Continue generating?" at the token limit
        env={**env, "COLUMNS": "500"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert chat.returncode == 0, chat.stderr[-2000:]
    return chat.stdout


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_transformers_serve_cannot_carry_the_portable_export_yet(tmp_path):
    """transformers serve (5.24) loads a model by `getattr(transformers, config.architectures[0])`: its
    --trust-remote-code reaches the config and tokenizer, never the model class, so the export's
    SiboExportForCausalLM (modeling_sibo.py) is not found and the server stops. The README says so; when
    transformers resolves remote code there, this test fails, and the README should say it serves the export."""
    from sibo.checkpoint.export import ExportConfig, export_adapter

    tokenizer = add_chat_template(build_tokenizer())
    lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    model = get_sibo_model(build_tiny_model("llama", len(tokenizer)), lora, lam=0.4).eval()
    export_adapter(model, tokenizer, ExportConfig(tmp_path / "export"))
    port = free_port()
    command = [sys.executable, "-m", "transformers.cli.transformers", "serve", str(tmp_path / "export")]
    command += ["--trust-remote-code", "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "OMP_NUM_THREADS": "1"}
    served = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert served.returncode != 0
    assert "module transformers has no attribute SiboExportForCausalLM" in served.stdout + served.stderr
