"""Batched decoding (`sibo.decode.batch`): batches equal one-by-one decoding, each row stops at its
EOS, one prefill per prompt for all its beams, and batch sizes from free GPU memory."""

import copy

import pytest
import torch
from peft import LoraConfig

import sibo.decode.batch as batch_module
from sibo import get_sibo_model
from sibo.decode.batch import MAX_AUTO_BATCH_SIZE, auto_batch_size, generate_batch
from sibo.decode.settings import CPU_BATCH_SIZE, DecodingSettings, benchmark_decoding
from sibo.errors import InputError
from sibo.prompts import PromptTemplate, build_prompt
from sibo.testing import build_tiny_model, build_tokenizer

GREEDY_12 = DecodingSettings(num_beams=1, max_new_tokens=12)
MATH = [
    f"Tom has {a} apples and buys {b} more. How many apples does Tom have?"
    for a, b in [(1, 2), (3, 4), (10, 5)]
]
TRUE_FALSE = [
    f"Please answer the following question with true or false, question: is {word} a color?"
    for word in ("red", "a dog", "blue")
]


@pytest.fixture(scope="module")
def tiny():
    """A tiny 2-block LLaMA (hidden 32) with a SIBO-boosted LoRA (random B, so λ matters), and its tokenizer."""
    corpus = [
        build_prompt(text) + " The answer is 12. the correct answer is true" for text in MATH + TRUE_FALSE
    ]
    tokenizer = build_tokenizer(corpus, vocab_size=400)
    base = build_tiny_model("llama", len(tokenizer), num_layers=2, hidden_size=32)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["gate_proj", "up_proj"], init_lora_weights=False)
    return get_sibo_model(base, lora, lam=0.3).eval(), tokenizer


def test_batched_greedy_equals_unbatched(tiny):
    model, tokenizer = tiny
    prompts = [build_prompt(text) for text in MATH + TRUE_FALSE]
    assert len({len(tokenizer(p)["input_ids"]) for p in prompts}) > 1  # so the batch is really padded
    one_by_one = [generate_batch(model, tokenizer, [p], GREEDY_12)[0] for p in prompts]
    batched = generate_batch(model, tokenizer, prompts, GREEDY_12)
    assert batched == one_by_one
    assert len(set(batched)) > 1


def test_each_row_stops_at_the_tokenizers_eos_when_the_generation_config_names_none(tiny, monkeypatch):
    model, tokenizer = tiny
    prompts = [build_prompt(MATH[0]), build_prompt(TRUE_FALSE[0])]
    inputs = tokenizer(prompts, return_tensors="pt", padding=True)
    free = model.generate(**inputs, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    row0, row1 = free[:, inputs["input_ids"].shape[1] :].tolist()
    # a token row 0 writes at step k >= 1 and row 1 never does: made the EOS, row 0 must end there
    k = next(k for k in range(1, 8) if row0[k] not in row0[:k] + row1)
    stop = row0[k]
    monkeypatch.setattr(model.generation_config, "eos_token_id", None)
    # a copy: the module's shared tokenizer keeps its EOS (pytest 9.2 cannot undo this attribute)
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.eos_token = tokenizer.convert_ids_to_tokens(stop)

    seen = []
    original = type(model).generate

    def spy(self, **kwargs):
        seen.append(original(self, **kwargs))
        return seen[-1]

    monkeypatch.setattr(type(model), "generate", spy)
    generate_batch(model, tokenizer, prompts, DecodingSettings(num_beams=1, max_new_tokens=8))
    new = seen[0][:, inputs["input_ids"].shape[1] :].tolist()
    assert new == [row0[: k + 1] + [tokenizer.pad_token_id] * (7 - k), row1]  # row 0 ended, row 1 ran on


@pytest.mark.parametrize("arch", ["llama", "gpt2", "opt"])
def test_each_prompt_is_prefilled_once_for_all_its_beams_with_the_same_responses(arch, monkeypatch):
    tokenizer = build_tokenizer()
    lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    lora.fan_in_fan_out = arch == "gpt2"
    model = get_sibo_model(build_tiny_model(arch, len(tokenizer)), lora, lam=0.3).eval()
    prompts = [build_prompt(MATH[0]), build_prompt("hi")]  # left padding, absolute positions
    inputs = tokenizer(prompts, return_tensors="pt", padding=True)
    with torch.inference_mode():
        sequences = model.generate(
            **inputs, num_beams=3, do_sample=False, max_new_tokens=10, pad_token_id=tokenizer.pad_token_id
        )  # transformers' own: every prompt prefilled once per beam
    new = tokenizer.batch_decode(sequences[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    prefilled = []
    original = batch_module.prefill_once
    monkeypatch.setattr(
        batch_module,
        "prefill_once",
        lambda *args: prefilled.append(args[1]["input_ids"].shape) or original(*args),
    )
    responses = generate_batch(model, tokenizer, prompts, DecodingSettings(num_beams=3, max_new_tokens=10))
    assert prefilled == [inputs["input_ids"].shape]  # (2, T): once per prompt, not per beam
    assert responses == [PromptTemplate().response(c) for c in new]


def test_decoding_uses_the_kv_cache_and_upstreams_beams(tiny, monkeypatch):
    model, tokenizer = tiny
    seen = {}
    original = type(model).generate

    def spy(self, **kwargs):
        seen.update(kwargs)
        return original(self, **kwargs)

    monkeypatch.setattr(type(model), "generate", spy)
    [response] = generate_batch(
        model, tokenizer, [build_prompt("Add 2 and 3.")], benchmark_decoding(max_new_tokens=5)
    )
    settings = {key: seen[key] for key in ("num_beams", "do_sample", "use_cache", "max_new_tokens")}
    assert settings == {"num_beams": 4, "do_sample": False, "use_cache": True, "max_new_tokens": 5}
    # the same keywords DecodingSettings.generate_kwargs gives streaming and serving
    assert {key: seen[key] for key in benchmark_decoding(max_new_tokens=5).generate_kwargs()} == (
        benchmark_decoding(max_new_tokens=5).generate_kwargs()
    )
    assert isinstance(response, str)


def test_auto_batch_size_is_fixed_on_cpu_and_sized_from_free_memory_on_a_gpu(tiny):
    model, tokenizer = tiny
    assert DecodingSettings().batch_size == "auto"
    assert auto_batch_size(model, 10, 20, 4) == CPU_BATCH_SIZE  # the model is on the CPU
    # per question and beam (2 layers, 4 KV heads × 8, fp32): KV cache 2·2·4·8·(10+20)·4 = 15,360 bytes,
    # vocabulary rows 4·V·4, prefill 4·10·64·4 = 10,240
    per_question = 4 * (15_360 + 16 * len(tokenizer) + 10_240)
    assert auto_batch_size(model, 10, 20, 4, free_bytes=10 * per_question) == 8  # 80 % of the memory
    assert auto_batch_size(model, 10, 20, 4, free_bytes=100) == 1
    assert auto_batch_size(model, 10, 20, 4, free_bytes=10**15) == MAX_AUTO_BATCH_SIZE
    with pytest.raises(InputError, match="batch_size must be 'auto' or at least 1, got 'big'"):
        DecodingSettings(batch_size="big")
