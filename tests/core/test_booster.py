"""SIBO's formula, checked against a hand-written reference on real architectures.

The reference never touches sibo: it runs a copy of the base model with forward hooks that add
each LoRA / DoRA branch by hand, h0 taken from transformers' own `output_hidden_states[0]`
(the hidden state entering block 0), and which modules are boosted written out per architecture.
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model

from sibo import SiboConfig, get_sibo_model, mix_initial_residual
from sibo.core import booster
from sibo.errors import InputError
from sibo.testing import build_tiny_model

VOCAB = 64
# architecture -> (LoRA targets, fan_in_fan_out, {policy: modules (names within a block) that take h0})
CASES = {
    "llama": (
        ["q_proj", "v_proj", "gate_proj", "up_proj", "down_proj"],
        False,
        {"ffn": {"mlp.gate_proj", "mlp.up_proj"}, "attn": {"self_attn.q_proj", "self_attn.v_proj"}},
    ),
    "gptj": (["q_proj", "fc_in", "fc_out"], False, {"ffn": {"mlp.fc_in"}, "attn": {"attn.q_proj"}}),
    "gpt2": (
        ["c_attn", "c_fc", "c_proj"],
        True,
        {"ffn": {"mlp.c_fc"}, "attn": {"attn.c_attn", "attn.c_proj"}},
    ),
    "opt": (
        ["q_proj", "out_proj", "fc1", "fc2"],
        False,
        {"ffn": {"fc1"}, "attn": {"self_attn.q_proj", "self_attn.out_proj"}},
    ),
    "bert": (
        ["query", "value", "intermediate.dense", "output.dense"],
        False,
        {
            "ffn": {"intermediate.dense"},
            "attn": {"attention.self.query", "attention.self.value", "attention.output.dense"},
        },
    ),
}
BLOCKS = {"llama": "model.layers", "gptj": "transformer.h", "gpt2": "transformer.h", "opt": "model.decoder.layers",
          "bert": "bert.encoder.layer"}  # fmt: skip


# The base models' own dropout off, so that a train-mode reference draws the same LoRA dropout masks.
NO_DROPOUT = {
    "gptj": {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0},
    "gpt2": {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0},
    "opt": {"dropout": 0.0, "attention_dropout": 0.0},
    "bert": {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0},
}


def tiny(arch, **kwargs):
    return build_tiny_model(
        arch, VOCAB, num_labels=2 if arch == "bert" else None, **NO_DROPOUT.get(arch, {}), **kwargs
    )


def lora_config(arch, dora=False, dropout=0.0, r=4):
    targets, fan_in_fan_out, _ = CASES[arch]
    return LoraConfig(
        r=r, lora_alpha=8, target_modules=targets, lora_dropout=dropout, use_dora=dora,
        fan_in_fan_out=fan_in_fan_out, init_lora_weights=False,
    )  # fmt: skip


def perturb_magnitudes(model):
    """DoRA starts with g = m/‖W‖ = 1, which hides a wrong W0 term: move m off its initial value."""
    torch.manual_seed(1)
    for name, p in model.named_parameters():
        if "lora_magnitude_vector" in name:
            p.data.mul_(1 + 0.3 * torch.rand_like(p))


def reference_forward(base, peft_model, arch, policy, lam, dora, dropout, inputs, seed):
    """The formula by hand: y = W0·x + s·B·A·drop(mix) (LoRA) or DoRA's with the mixed low-rank input."""
    boosted = CASES[arch][2]
    boosted = boosted["ffn"] | boosted["attn"] if policy == "all" else boosted[policy]
    weights = {n: p.detach() for n, p in peft_model.named_parameters()}
    ref = copy.deepcopy(base).train(peft_model.training)
    h0 = {}
    layers = dict(peft_model.named_modules())

    def branch(name, module):
        peft_name = "base_model.model." + name
        layer = layers[peft_name]
        A, B = weights[peft_name + ".lora_A.default.weight"], weights[peft_name + ".lora_B.default.weight"]
        s = layer.scaling["default"]
        within = name.split(".", len(BLOCKS[arch].split(".")) + 1)[-1]
        takes_h0 = within in boosted

        def hook(mod, args, out):
            x = args[0]
            W0 = mod.weight.T if CASES[arch][1] else mod.weight  # (out, in)
            drop = (
                (lambda t: F.dropout(t, dropout, training=True))
                if (dropout and ref.training)
                else (lambda t: t)
            )
            if not dora:
                low_rank_in = drop((1 - lam) * x + lam * h0["h0"].reshape(x.shape) if takes_h0 else x)
                return out + s * (low_rank_in @ A.T) @ B.T
            m = weights[peft_name + ".lora_magnitude_vector.default.weight"]
            g = m / torch.linalg.norm(W0 + s * B @ A, dim=1)
            xd = drop(x)
            low_rank_in = (1 - lam) * xd + lam * h0["h0"].reshape(x.shape) if takes_h0 else xd
            return out + (g - 1) * (xd @ W0.T) + g * (s * (low_rank_in @ A.T) @ B.T)

        module.register_forward_hook(hook)

    for name, module in ref.named_modules():
        in_block = name.startswith(BLOCKS[arch] + ".") and any(name.endswith(t) for t in CASES[arch][0])
        if in_block and "base_model.model." + name + ".lora_A" in {k.rsplit(".", 1)[0] for k in layers}:
            branch(name, module)
    with torch.no_grad():
        h0["h0"] = base(**inputs, output_hidden_states=True).hidden_states[0]
    torch.manual_seed(seed)
    return ref(**inputs).logits


@pytest.mark.parametrize("arch", list(CASES))
@pytest.mark.parametrize("dora", [False, True], ids=["lora", "dora"])
@pytest.mark.parametrize("policy", ["ffn", "attn", "all"])
def test_logits_equal_hand_written_formula(arch, dora, policy):
    lam = 0.3
    for training, dropout in [(False, 0.0), (True, 0.0), (True, 0.2)]:
        base = tiny(arch)
        inputs = {"input_ids": torch.randint(3, VOCAB, (2, 6), generator=torch.Generator().manual_seed(0))}
        model = get_sibo_model(copy.deepcopy(base), lora_config(arch, dora, dropout), lam=lam, targets=policy)
        perturb_magnitudes(model)
        model.train(training)
        torch.manual_seed(7)
        got = model(**inputs).logits
        want = reference_forward(
            base.train(training), model, arch, policy, lam, dora, dropout, inputs, seed=7
        )
        torch.testing.assert_close(
            got, want, rtol=1e-5, atol=1e-5, msg=f"training={training} dropout={dropout}"
        )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])  # bf16: PEFT's adapters run in fp32 on it
@pytest.mark.parametrize("dora", [False, True], ids=["lora", "dora"])
def test_lambda_zero_is_plain_peft(dora, dtype):
    base = tiny("llama").to(dtype)
    ids = torch.randint(3, VOCAB, (2, 6))
    torch.manual_seed(0)
    plain = get_peft_model(copy.deepcopy(base), lora_config("llama", dora, dropout=0.1))
    torch.manual_seed(0)
    boosted = get_sibo_model(
        copy.deepcopy(base), lora_config("llama", dora, dropout=0.1), lam=0.0, targets="all"
    )
    for training in (False, True):
        plain.train(training), boosted.train(training)
        torch.manual_seed(3)
        a = plain(input_ids=ids).logits
        torch.manual_seed(3)
        b = boosted(input_ids=ids).logits
        assert torch.equal(a, b)


def test_the_log_says_what_is_boosted_and_why_not_once_and_nothing_at_lambda_zero(caplog, monkeypatch):
    monkeypatch.setattr(booster, "_SKIPS_SAID", set())
    base = tiny("llama")
    with caplog.at_level("INFO", logger="sibo"):
        for lam in (0.2, 0.3, 0.0):
            get_sibo_model(copy.deepcopy(base), lora_config("llama", False), lam=lam)
    assert caplog.messages == [
        "SIBO λ=0.2 targets=ffn: boosted 4 of 10 adapted modules; skipped 4 not ffn (self_attn.q_proj, "
        "self_attn.v_proj); 2 reading width 64, not the hidden size 32 (mlp.down_proj)",
        "SIBO λ=0.3 targets=ffn: boosted 4 of 10 adapted modules",  # the same skips: said once
    ]  # λ = 0: plain PEFT, nothing boosted to speak of


def test_lambda_one_branch_sees_only_h0():
    """With λ=1 the branch reads h0 alone: changing x at a boosted layer leaves its branch output unchanged."""
    model = get_sibo_model(tiny("llama"), lora_config("llama"), lam=1.0, targets="ffn")
    layer = model.base_model.model.model.layers[1].mlp.up_proj
    seen = {}
    layer.lora_A["default"].register_forward_hook(lambda m, args, out: seen.update(a_input=args[0]))
    ids = torch.randint(3, VOCAB, (1, 5))
    out = model(input_ids=ids, output_hidden_states=True)
    torch.testing.assert_close(seen["a_input"], out.hidden_states[0], rtol=0, atol=0)


def test_mix_is_lerp_of_the_formula():
    x, h0 = torch.randn(2, 3, 8), torch.randn(2, 3, 8)
    torch.testing.assert_close(mix_initial_residual(x, h0, 0.25), 0.75 * x + 0.25 * h0)
    flat = torch.randn(6, 8)  # OPT's (B·T, H) layout
    torch.testing.assert_close(mix_initial_residual(flat, h0, 0.5), 0.5 * flat + 0.5 * h0.reshape(6, 8))


@pytest.mark.parametrize("lam", [-0.1, 1.5, float("nan"), "0.1"])
def test_lambda_out_of_range_names_the_value(lam):
    with pytest.raises(ValueError, match=str(lam) if isinstance(lam, float) else "'0.1'"):
        SiboConfig(lam=lam)


def test_unknown_targets_policy():
    with pytest.raises(ValueError, match="'mlp'"):
        SiboConfig(targets="mlp")


def test_disable_adapter_gives_base_outputs():
    base = tiny("gpt2")
    ids = torch.randint(3, VOCAB, (2, 5))
    want = base(input_ids=ids).logits
    model = get_sibo_model(copy.deepcopy(base), lora_config("gpt2"), lam=0.4, targets="all")
    assert not torch.equal(model(input_ids=ids).logits, want)
    with model.disable_adapter():
        assert torch.equal(model(input_ids=ids).logits, want)


@pytest.mark.parametrize(("reentrant", "boosted_again"), [(False, False), (True, False), (False, True)])
def test_gradient_checkpointing_reruns_each_forward_with_its_own_h0(reentrant, boosted_again):
    """Two forwards, then one backward (two losses, a KL term): a block rerun in backward mixes the h0 of the
    forward it belongs to, not the last one's; the gradients are those of the model without checkpointing.
    So too for a base boosted again after its first adapter was unloaded (its blocks checkpointed before)."""
    base = tiny("llama")
    first, second = (
        torch.randint(3, VOCAB, (2, 7), generator=torch.Generator().manual_seed(s)) for s in (1, 2)
    )

    def boosted(model):
        return get_sibo_model(
            model, lora_config("llama"), lam=0.5, targets="all", learnable_lambda=True
        ).train()

    def gradients(checkpointing: bool) -> dict[str, torch.Tensor]:
        model = copy.deepcopy(base)
        if checkpointing and boosted_again:
            earlier = boosted(model)
            earlier.gradient_checkpointing_enable({"use_reentrant": reentrant})
            earlier.enable_input_require_grads()
            earlier(input_ids=first, labels=first).loss.backward()
            model = earlier.unload()
        torch.manual_seed(0)
        model = boosted(model)
        if checkpointing and not boosted_again:  # the base's blocks are still checkpointed
            model.gradient_checkpointing_enable({"use_reentrant": reentrant})
            model.enable_input_require_grads()
        (model(input_ids=first, labels=first).loss + model(input_ids=second, labels=second).loss).backward()
        return {name: p.grad for name, p in model.named_parameters() if p.requires_grad}

    # exact but for the order a reentrant backward sums in (the wrong h0 was off by ~2e-3)
    torch.testing.assert_close(gradients(True), gradients(False), rtol=1e-6, atol=1e-8)


def test_a_model_sibo_cannot_read_and_a_lone_layer_are_input_errors():
    model = tiny("llama")
    model.config.num_hidden_layers = 5  # no list of 5 blocks
    with pytest.raises(InputError, match=r"^SIBO found no list of 5 transformer blocks in LlamaForCausalLM$"):
        get_sibo_model(model, lora_config("llama"), lam=0.2)
    boosted = get_sibo_model(tiny("llama"), lora_config("llama"), lam=0.2, targets="all")
    with pytest.raises(InputError, match=r"^SIBO found no h0: call the whole model, not a single layer$"):
        boosted.base_model.model.model.layers[0].mlp.up_proj(torch.zeros(1, 2, 32))


def test_mixed_batch_adapter_names_uses_each_adapters_rows():
    """`adapter_names=` runs each adapter on its rows: h0 must be cut to the same rows."""
    from sibo import boost_adapter

    base = tiny("llama")
    ids = torch.randint(3, VOCAB, (3, 5))
    model = get_sibo_model(copy.deepcopy(base), lora_config("llama"), lam=0.2, targets="all")
    torch.manual_seed(5)
    model.add_adapter("other", lora_config("llama"))
    boost_adapter(model, SiboConfig(lam=0.6, targets="ffn"), "other")
    model.eval()
    rows = []
    for name in ["default", "other", "default"]:
        model.set_adapter(name)
        rows.append(model(input_ids=ids).logits)
    mixed = model(input_ids=ids, adapter_names=["default", "other", "default"]).logits
    for i in range(3):
        torch.testing.assert_close(mixed[i], rows[i][i], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "arch, overrides",
    [("llama", {}), ("gpt2", {}), ("bert", {}), ("opt", {"word_embed_proj_dim": 16}), ("gpt_neox", {})],
    ids=["llama", "gpt2-positions", "bert", "opt-project-in", "gpt_neox"],
)
def test_h0_is_the_hidden_state_entering_block_0(arch, overrides):
    """h0 includes what runs before block 0: GPT-2's position embeddings, OPT-350m's project_in (16 → 32)."""
    targets = {"llama": ["up_proj"], "gpt2": ["c_fc"], "bert": ["intermediate.dense"], "opt": ["fc1"],
               "gpt_neox": ["dense_h_to_4h"]}[arch]  # fmt: skip
    base = build_tiny_model(arch, VOCAB, num_labels=2 if arch == "bert" else None, **overrides)
    model = get_sibo_model(base, LoraConfig(r=2, target_modules=targets), lam=0.5).eval()
    out = model(input_ids=torch.randint(3, VOCAB, (2, 5)), output_hidden_states=True)
    assert model._sibo_state.h0.shape[-1] == 32
    torch.testing.assert_close(model._sibo_state.h0, out.hidden_states[0], rtol=0, atol=0)


@pytest.mark.parametrize("targets", ["ffn", "all"])
def test_static_cache_and_compiled_steps_decode_like_the_dynamic_cache(targets):
    """The hooks trace into one graph (fullgraph): under a compiled step, h0 is an intermediate of it,
    so a CUDA graph replays it as well (aot_eager here: the same trace, no C++ compiler on CPU)."""
    from transformers import CompileConfig

    model = get_sibo_model(tiny("llama"), lora_config("llama", r=2), lam=0.3, targets=targets).eval()
    inputs = {
        "input_ids": torch.randint(3, VOCAB, (2, 6)),
        "attention_mask": torch.ones(2, 6, dtype=torch.long),
    }
    inputs["attention_mask"][1, :2] = 0  # left padding

    def decode(**settings):
        with torch.no_grad():
            return model.generate(**inputs, max_new_tokens=6, do_sample=False, pad_token_id=0, **settings)

    expected = decode()
    compile_config = CompileConfig(backend="aot_eager", fullgraph=True, mode="default")
    compile_config._compile_all_devices = True  # transformers compiles on accelerators only by default
    assert torch.equal(decode(cache_implementation="static"), expected)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    assert torch.equal(decode(cache_implementation="static", compile_config=compile_config), expected)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # it did compile
    torch._dynamo.reset()


def test_targets_with_nothing_to_boost_are_refused_in_one_line():
    config = LoraConfig(r=2, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    with pytest.raises(booster.InputError) as error:
        get_sibo_model(tiny("llama"), config, lam=0.1)
    assert str(error.value) == (
        "SIBO λ 0.1 boosts nothing: targets q_proj,v_proj have no FFN input; add up_proj (the paper's targets: "
        "q_proj,k_proj,v_proj,up_proj,down_proj), choose targets attn or all (--sibo_targets), or use λ 0 for "
        "plain PEFT (--embedding_lambda 0)"
    )
    get_sibo_model(tiny("llama"), copy.deepcopy(config), lam=0.0)  # plain PEFT: nothing to boost, as asked


@pytest.mark.parametrize(
    ("make_config", "name"),
    [
        (
            lambda: __import__("peft").VeraConfig(r=4, target_modules=["up_proj"], task_type="CAUSAL_LM"),
            "VERA",
        ),
        (
            lambda: __import__("peft").LoHaConfig(r=2, target_modules=["up_proj"], task_type="CAUSAL_LM"),
            "LOHA",
        ),
        (
            lambda: __import__("peft").IA3Config(
                target_modules=["up_proj"], feedforward_modules=[], task_type="CAUSAL_LM"
            ),
            "IA3",
        ),  # fmt: skip
        (
            lambda: __import__("peft").PrefixTuningConfig(num_virtual_tokens=2, task_type="CAUSAL_LM"),
            "PREFIX_TUNING",
        ),
    ],
)
def test_tuners_sibo_cannot_mix_are_refused_by_name(make_config, name):
    with pytest.raises(booster.InputError) as error:
        get_sibo_model(tiny("llama"), make_config(), lam=0.5)
    assert str(error.value) == (
        f"SIBO cannot boost {name} adapters: their branches have no input to mix h0 into; sibo boosts LoRA, DoRA "
        f"and bottleneck adapters (AdapterH, AdapterP, parallel); use one of those, or λ 0 for plain {name}"
    )


def test_a_lora_variant_sibo_cannot_mix_is_counted_and_refused_when_it_is_all():
    """A LoRA variant other than DoRA (here aLoRA) runs its own forward: no branch to hook, said, not ignored."""
    config = LoraConfig(r=2, target_modules=["up_proj"], alora_invocation_tokens=[5], task_type="CAUSAL_LM")
    with pytest.raises(
        booster.InputError,
        match=r"^SIBO λ 0.5 boosts nothing: targets up_proj have no FFN input \(ALoraLinearVariant branches sibo cannot mix\); ",
    ):
        get_sibo_model(tiny("llama"), config, lam=0.5)
