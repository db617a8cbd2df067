"""Decoding: the stream adds up to what model.generate returns, and stops at max_new_tokens / EOS."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from fault_checks import refused
from peft import LoraConfig

from sibo import get_sibo_model
from sibo.checkpoint.config import context_length
from sibo.cli import main as cli_main
from sibo.decode.settings import DecodingSettings
from sibo.decode.stream import (
    _until_next_section,
    generate_response,
    stream_response,
)
from sibo.errors import InputError
from sibo.prompts import build_prompt
from sibo.testing import build_tiny_model, build_tokenizer

INSTRUCTION = "Add 2 and 3."


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="module")
def model(tokenizer):
    return build_tiny_model("llama", len(tokenizer))


def reference_ids(model, tokenizer, settings: DecodingSettings, instruction: str = INSTRUCTION) -> list[int]:
    """The new token ids of a plain model.generate call, no streamer."""
    inputs = tokenizer(build_prompt(instruction), return_tensors="pt")
    with torch.no_grad():
        output = model.generate(**inputs, **settings.generate_kwargs(), pad_token_id=tokenizer.pad_token_id)
    return output[0, inputs["input_ids"].shape[1] :].tolist()


class CountLogits:
    """A forward hook on lm_head: counts decoding steps; from step `eos_at` on, makes EOS the argmax."""

    def __init__(self, eos_id: int, eos_at: int | None = None):
        self.calls, self.eos_id, self.eos_at = 0, eos_id, eos_at

    def __call__(self, module, args, logits):
        self.calls += 1
        if self.eos_at is not None and self.calls >= self.eos_at:
            logits = logits.clone()
            logits[..., self.eos_id] = 1e4
        return logits


def test_stream_equals_generate_and_stops_at_max_new_tokens(model, tokenizer):
    settings = DecodingSettings(max_new_tokens=7)
    expected_ids = reference_ids(model, tokenizer, settings)
    assert (
        len(expected_ids) == 7 and tokenizer.eos_token_id not in expected_ids
    )  # else the test proves nothing
    counter = CountLogits(tokenizer.eos_token_id)
    handle = model.lm_head.register_forward_hook(counter)
    try:
        pieces = list(stream_response(model, tokenizer, INSTRUCTION, settings=settings))
    finally:
        handle.remove()
    assert counter.calls == 7  # one forward per new token, the KV cache holds the prompt
    assert "".join(pieces) == tokenizer.decode(expected_ids, skip_special_tokens=True)


def test_stream_stops_at_eos(model, tokenizer):
    settings = DecodingSettings(max_new_tokens=20)
    expected_ids = reference_ids(model, tokenizer, settings)[:3]
    counter = CountLogits(tokenizer.eos_token_id, eos_at=4)
    handle = model.lm_head.register_forward_hook(counter)
    try:
        response = generate_response(model, tokenizer, INSTRUCTION, settings=settings)
    finally:
        handle.remove()
    assert counter.calls == 4  # three tokens, then EOS ends it, well before max_new_tokens
    assert response == tokenizer.decode(expected_ids, skip_special_tokens=True)


ANSWER = "2 + 3 = 5"
RUN_ON = ANSWER + "\n\n### Instruction:\nAdd 4 and 4.\n\n### Response:\n8"


def tokens_until_header(tokenizer, text: str) -> tuple[list[int], int]:
    """`text`'s tokens, and how many of them complete its first '### Instruction:'."""
    script = tokenizer(text, add_special_tokens=False)["input_ids"]
    return script, next(k for k in range(len(script)) if "### Instruction:" in tokenizer.decode(script[:k]))


@pytest.mark.parametrize("num_beams", [1, 2])
def test_an_adapter_that_runs_on_stops_at_the_next_template_section(
    model, tokenizer, script_model, num_beams
):
    tokens, steps = tokens_until_header(tokenizer, RUN_ON)
    script = script_model(model, tokens)
    settings = DecodingSettings(max_new_tokens=len(tokens), num_beams=num_beams)
    pieces = list(stream_response(model, tokenizer, INSTRUCTION, settings=settings))
    assert "".join(pieces) == ANSWER  # neither the header nor the blank lines before it are shown
    if num_beams == 1:
        assert script.steps == steps  # decoding stopped at the header, not at max_new_tokens


@pytest.mark.parametrize(
    ("pieces", "shown"),
    [
        (["The sum", " is 5.\n", "\n##", "# Instruction", ":\nmore"], ["The sum", " is 5."]),
        (["a ##", " b\n", "\n"], ["a", " ## b", "\n\n"]),  # no header after all: everything, in the end
    ],
)
def test_the_stream_holds_back_only_what_may_start_a_header(pieces, shown):
    assert list(_until_next_section(piece for piece in pieces)) == shown


def test_input_goes_into_the_shared_template(model, tokenizer):
    settings = DecodingSettings(max_new_tokens=4)
    inputs = tokenizer(build_prompt(INSTRUCTION, "x = 2"), return_tensors="pt")
    with torch.no_grad():
        output = model.generate(**inputs, **settings.generate_kwargs(), pad_token_id=tokenizer.pad_token_id)
    expected = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert generate_response(model, tokenizer, INSTRUCTION, "x = 2", settings) == expected


def test_beam_search_yields_the_whole_response_once(model, tokenizer):
    settings = DecodingSettings(max_new_tokens=5, num_beams=2)
    pieces = list(stream_response(model, tokenizer, INSTRUCTION, settings=settings))
    assert pieces == [tokenizer.decode(reference_ids(model, tokenizer, settings), skip_special_tokens=True)]


def test_seeded_sampling_is_reproducible(model, tokenizer):
    settings = DecodingSettings(max_new_tokens=6, temperature=1.0, top_k=0, top_p=1.0, seed=3)
    first = generate_response(model, tokenizer, INSTRUCTION, settings=settings)
    assert generate_response(model, tokenizer, INSTRUCTION, settings=settings) == first
    greedy = generate_response(model, tokenizer, INSTRUCTION, settings=DecodingSettings(max_new_tokens=6))
    assert first != greedy


def test_boosted_model_streams_what_it_generates(model, tokenizer):
    config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    boosted = get_sibo_model(build_tiny_model("llama", len(tokenizer)), config, lam=0.3).eval()
    settings = DecodingSettings(max_new_tokens=6)
    expected = tokenizer.decode(reference_ids(boosted, tokenizer, settings), skip_special_tokens=True)
    assert generate_response(boosted, tokenizer, INSTRUCTION, settings=settings) == expected


def test_over_long_prompt_is_an_input_error(tokenizer):
    short_model = build_tiny_model("llama", len(tokenizer), max_positions=200)
    assert context_length(short_model) == 200
    with pytest.raises(
        InputError,
        match="the prompt is 640 tokens and max_new_tokens is 8, more than the model's context of 200 tokens: shorten it",
    ):
        next(
            stream_response(
                short_model, tokenizer, "word " * 100, settings=DecodingSettings(max_new_tokens=8)
            )
        )


def test_error_in_the_worker_reaches_the_reader(model, tokenizer):
    def fail(module, args, output):
        raise RuntimeError("boom in lm_head")

    handle = model.lm_head.register_forward_hook(fail)
    try:
        with pytest.raises(RuntimeError, match="boom in lm_head"):
            generate_response(model, tokenizer, INSTRUCTION, settings=DecodingSettings(max_new_tokens=3))
    finally:
        handle.remove()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("max_new_tokens", 0, "max_new_tokens must be at least 1"),
        ("temperature", -0.5, "temperature must be a finite number >= 0, got -0.5"),
        ("temperature", float("nan"), "temperature must be a finite number >= 0, got nan"),
        ("temperature", 1e-300, r"temperature must be 0 \(greedy\) or at least 1e-05, got 1e-300"),
        ("seed", 2**32, "seed must be in 0…4294967295, got 4294967296"),
        ("top_p", 0.0, r"top_p must be in \(0, 1\]"),
        ("num_beams", 0, "num_beams must be at least 1"),
    ],
)
def test_decoding_settings_refuse_bad_values(field, value, message):
    with pytest.raises(InputError, match=message):
        DecodingSettings(**{field: value})


@pytest.mark.integration
def test_cli_streams_the_response_to_stdout(saved_base, model, tokenizer, capsys):
    settings = DecodingSettings(max_new_tokens=5)
    expected = tokenizer.decode(reference_ids(model, tokenizer, settings), skip_special_tokens=True)
    code = cli_main(
        ["generate", "--base_model", str(saved_base), "--prompt", INSTRUCTION, "--max_new_tokens", "5"]
    )
    assert code == 0
    assert capsys.readouterr().out == expected + "\n"


@pytest.mark.integration
@pytest.mark.parametrize("merge", [True, False])
def test_cli_loads_a_sibo_adapter(saved_base, tokenizer, tmp_path, capsys, caplog, merge):
    config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    base = build_tiny_model("llama", len(tokenizer))
    boosted = get_sibo_model(base, config, lam=0.4).eval()
    boosted.save_pretrained(tmp_path / "adapter")
    expected = tokenizer.decode(
        reference_ids(boosted, tokenizer, DecodingSettings(max_new_tokens=5)), skip_special_tokens=True
    )
    argv = ["generate", "--base_model", str(saved_base), "--weights_path", str(tmp_path / "adapter")]
    with caplog.at_level("INFO", logger="sibo.core.merge"):
        assert cli_main([*argv, "--prompt", INSTRUCTION, "--max_new_tokens", "5", "--merge", str(merge)]) == 0
    assert capsys.readouterr().out == expected + "\n"  # merged or not, the same tokens
    assert ("λ·ΔW·h0 kept on 4 modules" in caplog.text) == merge  # gate, up × 2


@pytest.mark.integration
def test_cli_needs_a_prompt_or_ui(saved_base, capsys):
    assert cli_main(["generate", "--base_model", str(saved_base)]) == 2
    error = capsys.readouterr().err
    assert (
        error
        == "sibo generate: error: give either --prompt TEXT (one answer on stdout) or --ui (a Gradio page)\n"
    )


@pytest.mark.integration
def test_a_lone_surrogate_prompt_is_one_line(root, capsys):
    line = refused(
        capsys, ["generate", "--base_model", root / "base4", "--prompt", "hi \udcff"], root / "base4"
    )
    assert (
        line
        == "sibo generate: error: the instruction: not valid text (a lone surrogate '\\udcff' at character 3)"
    )


def test_concurrent_generations_on_one_model_run_one_at_a_time(model, tokenizer, monkeypatch):
    """The Gradio chat's UI and its /chat API are separate functions to Gradio's queue: a beam search and a
    streamed answer asked at once never run model.generate together (h0 is state of the whole model)."""
    running, most = [0], [0]
    generate = model.generate

    def slow_generate(*args, **kwargs):
        running[0] += 1
        most[0] = max(most[0], running[0])
        time.sleep(0.3)  # long enough for the other call to start, were it let in
        try:
            return generate(*args, **kwargs)
        finally:
            running[0] -= 1

    monkeypatch.setattr(model, "generate", slow_generate)
    settings = [DecodingSettings(max_new_tokens=3, num_beams=2), DecodingSettings(max_new_tokens=3)]
    with ThreadPoolExecutor(2) as pool:
        answers = list(
            pool.map(lambda s: generate_response(model, tokenizer, INSTRUCTION, settings=s), settings)
        )
    assert len(answers) == 2 and most[0] == 1
