"""Padding-free batches: the collator's layout, the probe, and exactness (loss and gradients) with SIBO."""

from __future__ import annotations

from unittest import mock

import pytest
import torch
from peft import LoraConfig

import sibo
from sibo.data import PaddedCollator, Record, tokenize_records
from sibo.prompts import build_prompt
from sibo.testing import build_tiny_model, build_tokenizer
from sibo.train.packing import (
    PACKED_SDPA,
    PackingCollator,
    enable_packing,
    packed_attention_kernel,
    sequence_bounds,
    supports_packed_sequences,
)

RECORDS = [
    Record("Add 2 and 3.", "", "2 + 3 = 5. The answer is 5."),
    Record("Name the colour.", "The sky on a clear day", "Blue."),
    Record("Count the legs of two cats.", "", "Each cat has 4 legs, so 2 * 4 = 8."),
    Record("Say hi.", "", "Hi."),
]
LORA_TARGETS = {
    "llama": ["q_proj", "v_proj", "up_proj", "down_proj"],
    "mistral": ["q_proj", "v_proj", "up_proj", "down_proj"],
    "gpt2": ["c_attn", "c_fc"],
    "opt": ["q_proj", "v_proj", "fc1", "fc2"],
}


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer([build_prompt(r.instruction, r.input) + r.output for r in RECORDS], vocab_size=320)


def test_collator_makes_one_row_with_restarting_positions_and_no_mask():
    features = [
        {"input_ids": [5, 6, 7], "labels": [5, 6, 7], "length": 3},
        {"input_ids": [8, 9], "labels": [-100, 9]},
    ]
    batch = PackingCollator()(features)
    # No mask (it would join the sequences); the bounds, made here on the host, for the attention.
    assert set(batch) == {"input_ids", "labels", "position_ids", "cu_seq_lens_q", "cu_seq_lens_k",
                          "max_length_q", "max_length_k"}  # fmt: skip
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    assert batch["labels"].tolist() == [[-100, 6, 7, -100, 9]]  # nothing learns to predict the next record
    assert batch["cu_seq_lens_q"].tolist() == [0, 3, 5] and batch["cu_seq_lens_q"].dtype == torch.int32
    assert batch["max_length_q"] == 3 and type(batch["max_length_q"]) is int  # kernels take a host int


def test_sequence_bounds_are_read_back_once_per_forward_and_never_confused():
    positions = torch.tensor([[0, 1, 2, 0, 1, 0]])
    bounds = sequence_bounds(positions)
    assert bounds == [0, 3, 5, 6]
    assert sequence_bounds(positions) is bounds  # the next layer's call: no read-back from the device
    positions.copy_(torch.tensor([[0, 1, 0, 1, 2, 3]]))  # a static buffer refilled in place
    assert sequence_bounds(positions) == [0, 2, 6]
    assert sequence_bounds(torch.tensor([[0, 1, 2, 3, 0, 1]])) == [0, 4, 6]
    for length in range(1, 6):  # fresh tensors, some at a freed one's address: never mistaken for it
        assert sequence_bounds(torch.arange(length).unsqueeze(0)) == [0, length]


def test_enable_packing_picks_per_sequence_attention_where_the_probe_proves_it():
    cases = {
        "llama": PACKED_SDPA,
        "gpt2": PACKED_SDPA,
        "opt": PACKED_SDPA,
        "mistral": "sdpa",
        "bloom": "eager",
    }
    for architecture, implementation in cases.items():
        model = build_tiny_model(architecture, 300)
        assert enable_packing(model) is (architecture != "bloom"), architecture
        assert model.config._attn_implementation == implementation, architecture
    # OPT's own SDPA mask ignores position ids: packed rows would leak, and the probe says so.
    assert not supports_packed_sequences(build_tiny_model("opt", 300))


def test_per_sequence_attention_leaves_padded_batches_to_plain_sdpa():
    plain = build_tiny_model("llama", 300, seed=3)
    packed = build_tiny_model("llama", 300, seed=3)
    assert enable_packing(packed)
    ids = torch.randint(4, 300, (2, 7), generator=torch.Generator().manual_seed(1))
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3])
    with torch.no_grad():
        torch.testing.assert_close(
            packed(ids, attention_mask=mask).logits, plain(ids, attention_mask=mask).logits
        )
    # generation with a KV cache, left-padded as the tokenizer pads
    left = torch.tensor([[1] * 7, [0] * 3 + [1] * 4])
    settings = {"attention_mask": left, "max_new_tokens": 4, "do_sample": False, "pad_token_id": 0}
    assert packed.generate(ids, **settings).tolist() == plain.generate(ids, **settings).tolist()


def test_packed_rows_on_cpu_take_the_collators_bounds_and_read_nothing_back(tokenizer, monkeypatch):
    examples = tokenize_records(RECORDS, tokenizer, 512, train_on_inputs=False).examples
    model = build_tiny_model("llama", len(tokenizer), seed=2)
    assert enable_packing(model)
    with torch.no_grad():
        expected = model(**PackingCollator()(examples), use_cache=False).loss

    def no_read_back(position_ids):
        raise AssertionError("the bounds should come from the collator")

    monkeypatch.setattr("sibo.train.packing.sequence_bounds", no_read_back)
    with torch.no_grad():
        assert model(**PackingCollator()(examples), use_cache=False).loss == expected
    assert packed_attention_kernel("cpu", torch.float32, 64) == "SDPA per sequence (bounds from the collator)"
    # flash's varlen kernel takes half precision only, and head widths up to 256
    assert packed_attention_kernel("cuda", torch.float32, 64).startswith("SDPA per sequence")
    assert packed_attention_kernel("cuda", torch.bfloat16, 320).startswith("SDPA per sequence")


def test_packed_rows_skip_transformers_search_for_packed_sequences(tokenizer):
    """Under PACKED_SDPA transformers must not scan the position ids (a read-back every forward on a GPU)."""
    import transformers.masking_utils

    batch = PackingCollator()(tokenize_records(RECORDS, tokenizer, 512, train_on_inputs=False).examples)
    search = mock.patch.object(
        transformers.masking_utils,
        "find_packed_sequence_indices",
        wraps=transformers.masking_utils.find_packed_sequence_indices,
    )
    losses = {}
    for implementation in ("sdpa", PACKED_SDPA):
        model = build_tiny_model("llama", len(tokenizer), seed=4).train()
        if implementation == PACKED_SDPA:
            assert enable_packing(model)
        with search as found:
            loss = model(**batch, use_cache=False).loss
            loss.backward()
        # plain SDPA needs the search (it builds the block-diagonal mask); PACKED_SDPA never does
        assert found.called is (implementation == "sdpa"), implementation
        losses[implementation] = loss.item()
    assert losses[PACKED_SDPA] == pytest.approx(losses["sdpa"], rel=1e-5)


@pytest.mark.parametrize("architecture", ["llama", "mistral", "gpt2", "opt"])
def test_packed_and_padded_batches_give_the_same_loss_and_gradients_with_sibo(tokenizer, architecture):
    examples = tokenize_records(RECORDS, tokenizer, 512, train_on_inputs=False).examples
    base = build_tiny_model(architecture, len(tokenizer), seed=1)
    assert enable_packing(base)
    # init_lora_weights=False: B is random, so the boosted branches (and h0) change the loss.
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGETS[architecture], init_lora_weights=False)
    model = sibo.get_sibo_model(base, lora, lam=0.3, targets="all")
    assert sibo.core.booster.find_boost(model).layers  # SIBO is really on
    model.eval()  # no dropout: both layouts must see the same function

    losses, gradients = [], []
    for collator in (PaddedCollator(tokenizer.pad_token_id), PackingCollator()):
        model.zero_grad()
        loss = model(**collator(examples), use_cache=False).loss
        loss.backward()
        losses.append(loss.item())
        gradients.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad]))
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    torch.testing.assert_close(gradients[0], gradients[1], rtol=1e-4, atol=1e-6)


def _varlen_stand_in(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, **options):
    """torch's varlen_attn contract on CPU: (ΣT, H, D) tensors, causal per sequence between the bounds."""
    assert options.get("is_causal") or options.get("window_size") == (-1, 0)
    assert (
        max_q == max_k == max(b - a for a, b in zip(cu_seq_q.tolist(), cu_seq_q.tolist()[1:], strict=False))
    )
    bounds = cu_seq_q.tolist()
    return torch.cat([
        torch.nn.functional.scaled_dot_product_attention(
            *(t[s:e].transpose(0, 1) for t in (query, key, value)), is_causal=True,
            scale=options.get("scale"), enable_gqa=options.get("enable_gqa", False),
        ).transpose(0, 1)
        for s, e in zip(bounds, bounds[1:], strict=False)
    ])  # fmt: skip


@pytest.mark.parametrize(
    "parameters",
    [{"window_size", "enable_gqa", "scale"}, {"is_causal"}],  # torch 2.12+, torch 2.10
    ids=["torch-2.12", "torch-2.10"],
)
def test_varlen_path_hands_torchs_kernel_the_layout_and_options_it_documents(monkeypatch, parameters):
    """The CUDA-only path's glue (layout, grouped heads, scale, causality), against a CPU stand-in kernel."""
    import torch.nn.attention.varlen

    import sibo.train.packing

    model = build_tiny_model("llama", 300, seed=1, hidden_size=48, num_heads=6, num_key_value_heads=2)
    assert enable_packing(model)
    features = [{"input_ids": list(range(5, 5 + n)), "labels": list(range(5, 5 + n))} for n in (7, 3, 9)]
    batch = PackingCollator()(features)
    with torch.no_grad():
        expected = model(**batch, use_cache=False).logits
        calls = []
        monkeypatch.setattr(
            torch.nn.attention.varlen,
            "varlen_attn",
            lambda *a, **k: calls.append(1) or _varlen_stand_in(*a, **k),
        )
        monkeypatch.setattr(sibo.train.packing, "_varlen_parameters", lambda: frozenset(parameters))
        monkeypatch.setattr(sibo.train.packing, "_varlen_runs", lambda query, dtype, device_type=None: True)
        torch.testing.assert_close(model(**batch, use_cache=False).logits, expected)
    assert len(calls) == 2  # one call per layer
