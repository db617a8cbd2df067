"""Bottleneck adapters (AdapterH, AdapterP, parallel) as a peft method, plain and boosted by SIBO.

The reference never runs sibo's layer code: it hooks a copy of the base model and adds each branch
s·up(tanh(down(u))) by hand, u mixed as (1-λ)·u + λ·h0 where the table below says SIBO boosts it,
h0 taken from transformers' own `output_hidden_states[0]`.
"""

import copy
import importlib
import json

import pytest
import torch
import torch.nn.functional as F
from peft import PeftModel, get_peft_model
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING
from peft.utils.peft_types import PeftType
from torch import nn

import sibo.adapters.bottleneck as bottleneck
from sibo import get_sibo_model, load_sibo_model, sibo_settings
from sibo.adapters.bottleneck import BottleneckConfig, BottleneckLayer
from sibo.errors import InputError
from sibo.testing import build_tiny_model

VOCAB = 64
B = 4  # bottleneck size
BLOCKS = {"llama": "model.layers", "gptj": "transformer.h", "bert": "bert.encoder.layer"}
NO_DROPOUT = {
    "gptj": {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0},
    "bert": {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0},
}
MODES = {
    "H": {"scaling": 2.0},
    "P": {"use_adapterp": True, "scaling": "learned"},
    "parallel": {"use_parallel_adapter": True, "scaling": 0.5},
}
# (architecture, mode) -> modules (names within a block) that SIBO boosts under targets="ffn" / "attn".
# Every one of them reads a hidden-size input: x for input and parallel adapters, y for output adapters.
BOOSTED = {
    ("llama", "H"): ({"mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"}, set()),
    ("llama", "P"): ({"mlp.down_proj"}, set()),
    ("llama", "parallel"): (set(), {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"}),
    ("gptj", "H"): ({"mlp.fc_in", "mlp.fc_out"}, set()),
    ("gptj", "P"): ({"mlp.fc_out"}, set()),
    ("gptj", "parallel"): (set(), {"attn.q_proj", "attn.k_proj", "attn.v_proj"}),
    ("bert", "H"): ({"intermediate.dense", "output.dense"}, set()),
    ("bert", "P"): ({"output.dense"}, set()),
    ("bert", "parallel"): (set(), {"attention.self.query", "attention.self.key", "attention.self.value"}),
}


def tiny(arch="llama", **kwargs):
    return build_tiny_model(
        arch, VOCAB, num_labels=2 if arch == "bert" else None, **NO_DROPOUT.get(arch, {}), **kwargs
    )


def inputs_for(seed=0, batch=2, length=6):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (batch, length), generator=generator)
    mask = torch.ones_like(ids)
    mask[0, :2] = 0  # left padding on the first row
    return {"input_ids": ids, "attention_mask": mask}


def perturb(model, seed=1):
    """Move every adapter weight (and learned scaling) off its initial value, so nothing is at a special point."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".adapter_" in name:
                p.add_(0.5 * torch.randn_like(p))


def out(model, inputs):
    """Last hidden states and logits, flattened: a classifier's 2 logits alone would hide too much."""
    result = model(**inputs, output_hidden_states=True)
    return torch.cat([result.hidden_states[-1].flatten(), result.logits.flatten()])


def reference_logits(base, model, arch, inputs, lam_of_block=None, boosted=frozenset(), dropout=0.0, seed=0):
    """The placements by hand on a copy of `base`; `lam_of_block(i)` is block i's λ (None: no SIBO)."""
    ref = copy.deepcopy(base).train(model.training)
    with torch.no_grad():
        h0 = ref(**inputs, output_hidden_states=True).hidden_states[0]  # (B, T, H), entering block 0
    prefix = BLOCKS[arch] + "."
    for name, layer in model.base_model.model.named_modules():
        if not isinstance(layer, BottleneckLayer):
            continue
        block, _, in_block = name.removeprefix(prefix).partition(".")
        down, up = layer.adapter_down["default"].weight.detach(), layer.adapter_up["default"].weight.detach()
        s = layer.adapter_scaling["default"].detach() if layer.adapter_scaling else layer.scaling["default"]
        lam = lam_of_block(int(block)) if lam_of_block is not None and in_block in boosted else None

        def branch(u, down=down, up=up, s=s, lam=lam):
            if lam is not None:
                u = (1 - lam) * u + lam * h0
            u = F.dropout(u, dropout, training=ref.training)
            return s * (torch.tanh(u @ down.T) @ up.T)

        module = ref.get_submodule(name)
        role = layer.adapter_role["default"]
        if role == "mh_adapter":
            module.register_forward_pre_hook(lambda m, args, b=branch: (args[0] + b(args[0]), *args[1:]))
        elif role == "output_adapter":
            module.register_forward_hook(lambda m, args, y, b=branch: y + b(y))
        else:
            module.register_forward_hook(lambda m, args, y, b=branch: y + b(args[0]))
    torch.manual_seed(seed)
    return out(ref, inputs)


@pytest.mark.parametrize("arch, mode", sorted(BOOSTED))
@pytest.mark.parametrize("targets", [None, "ffn", "attn"])
def test_placement_matches_formula(arch, mode, targets):
    base = tiny(arch)
    config = BottleneckConfig(bottleneck_size=B, **MODES[mode])
    torch.manual_seed(0)
    ffn, attn = BOOSTED[arch, mode]
    boosted = {"ffn": ffn, "attn": attn}.get(targets, set())
    if targets is None:
        model = get_peft_model(copy.deepcopy(base), config)
    elif not boosted:  # λ > 0 that boosts nothing would train a plain adapter: refused
        with pytest.raises(InputError, match=r"^SIBO λ 0.3 boosts nothing: targets \S+ have no "):
            get_sibo_model(copy.deepcopy(base), config, lam=0.3, targets=targets)
        return
    else:
        model = get_sibo_model(copy.deepcopy(base), config, lam=0.3, targets=targets)
    perturb(model)
    inputs = inputs_for()
    expected = reference_logits(
        base, model, arch, inputs, None if targets is None else lambda i: 0.3, boosted
    )
    torch.testing.assert_close(out(model, inputs), expected)
    if boosted:  # and the boost is visible: the plain formula gives other logits
        assert (out(model, inputs) - reference_logits(base, model, arch, inputs)).abs().max() > 1e-4


def test_branches_wider_than_hidden_take_no_h0():
    """A parallel adapter reads down_proj's input (width 64 ≠ hidden 32): never boosted, even with targets='all'."""
    base = tiny("llama")
    config = BottleneckConfig(
        bottleneck_size=B, use_parallel_adapter=True, target_modules=["q_proj", "down_proj"]
    )
    model = get_sibo_model(copy.deepcopy(base), config, lam=0.5, targets="all")
    perturb(model)
    expected = reference_logits(base, model, "llama", inputs_for(), lambda i: 0.5, {"self_attn.q_proj"})
    torch.testing.assert_close(out(model, inputs_for()), expected)


def test_learnable_lambda_per_block_and_train_mode_dropout():
    base = tiny("llama")
    config = BottleneckConfig(bottleneck_size=B, adapter_dropout=0.25)
    model = get_sibo_model(copy.deepcopy(base), config, lam=0.2, learnable_lambda=True).train()
    perturb(model)
    (lambdas,) = model.sibo_lambdas.values()
    with torch.no_grad():
        lambdas.logits.copy_(torch.tensor([-1.0, 0.5]))
    torch.manual_seed(7)
    logits = out(model, inputs_for())
    boosted = BOOSTED["llama", "H"][0]
    expected = reference_logits(
        base,
        model,
        "llama",
        inputs_for(),
        lambda i: torch.sigmoid(torch.tensor([-1.0, 0.5]))[i],
        boosted,
        0.25,
        7,
    )
    torch.testing.assert_close(logits, expected)
    logits.float().pow(2).mean().backward()
    assert lambdas.logits.grad is not None and (lambdas.logits.grad != 0).all()


@pytest.mark.parametrize("mode", sorted(MODES))
def test_lambda_zero_is_the_plain_adapter_bit_for_bit(mode):
    config = BottleneckConfig(bottleneck_size=B, **MODES[mode])
    torch.manual_seed(0)
    plain = get_peft_model(tiny(), copy.deepcopy(config))
    torch.manual_seed(0)
    boosted = get_sibo_model(tiny(), copy.deepcopy(config), lam=0.0, targets="all")
    assert torch.equal(out(plain, inputs_for()), out(boosted, inputs_for()))


def test_each_branch_calls_its_dropout_once_per_forward():
    """SIBO's hook contract: adapter_dropout[name] sees the branch input u once per adapter and forward."""
    model = get_peft_model(tiny(), BottleneckConfig(bottleneck_size=B, adapter_dropout=0.1)).train()
    model.base_model.set_adapter(["default"])
    calls = {}
    for name, layer in model.named_modules():
        if isinstance(layer, BottleneckLayer):
            assert isinstance(layer.sibo_branch_input("default"), nn.Dropout)
            assert layer.sibo_branch_in_features("default") == 32  # hidden size: x of gate/up, y of down
            layer.sibo_branch_input("default").register_forward_pre_hook(
                lambda m, args, n=name: calls.__setitem__(n, calls.get(n, 0) + 1)
            )
    out(model, inputs_for())
    assert len(calls) == 6 and set(calls.values()) == {1}


@pytest.mark.parametrize(
    "mode, scaling, per_layer",
    [("H", 1.0, [32 + 32, 32 + 32, 32 + 32]), ("P", "learned", [32 + 32]), ("parallel", 1.0, [32 + 32] * 3)],
)
def test_trainable_parameters_follow_the_closed_form(mode, scaling, per_layer):
    """b·(width of down's input + width of up's output) per adapter, + 1 per learned scaling; 2 blocks."""
    config = BottleneckConfig(bottleneck_size=B, **{**MODES[mode], "scaling": scaling})
    trainable, _ = get_peft_model(tiny(), config).get_nb_trainable_parameters()
    assert trainable == 2 * sum(B * width + (scaling == "learned") for width in per_layer)


def test_bias_all_trains_the_base_biases_too():
    config = BottleneckConfig(bottleneck_size=B, bias="all")
    model = get_peft_model(tiny("gptj"), config)
    biases = sum(p.numel() for n, p in model.named_parameters() if n.endswith(".bias"))
    assert model.get_nb_trainable_parameters()[0] == 2 * B * (32 + 32) * 2 + biases


@pytest.mark.parametrize("arch", ["gpt2", "bert"])
def test_default_ffn_targets_leave_attention_output_alone(arch):
    """gpt2's attn.c_proj and bert's attention.output.dense share a name suffix with the FFN output."""
    model = get_peft_model(tiny(arch), BottleneckConfig(bottleneck_size=B))
    roles = {n.split(".0.")[1]: m.adapter_role["default"] for n, m in model.named_modules()
             if isinstance(m, BottleneckLayer) and ".0." in n}  # fmt: skip
    assert roles == {"gpt2": {"mlp.c_fc": "mh_adapter", "mlp.c_proj": "output_adapter"},
                     "bert": {"intermediate.dense": "mh_adapter", "output.dense": "output_adapter"}}[arch]  # fmt: skip


def test_save_load_round_trip_is_bit_exact(tmp_path):
    config = BottleneckConfig(
        bottleneck_size=B, scaling="learned", adapter_dropout=0.1, init_weights="mam_adapter"
    )
    model = get_peft_model(tiny(), config)
    perturb(model)
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["peft_type"] == "BOTTLENECK" and saved["scaling"] == "learned"
    loaded = PeftModel.from_pretrained(tiny(), tmp_path)
    assert torch.equal(out(loaded, inputs_for()), out(model.eval(), inputs_for()))
    assert not any(p.requires_grad for p in loaded.parameters())
    trainable = PeftModel.from_pretrained(tiny(), tmp_path, is_trainable=True)
    assert trainable.get_nb_trainable_parameters()[0] == model.get_nb_trainable_parameters()[0]


def test_sibo_save_load_round_trip_with_learnable_lambda(tmp_path):
    model = get_sibo_model(tiny(), BottleneckConfig(bottleneck_size=B), lam=0.2, learnable_lambda=True)
    perturb(model)
    with torch.no_grad():
        next(iter(model.sibo_lambdas.values())).logits.copy_(torch.tensor([0.3, -0.4]))
    model.save_pretrained(tmp_path)
    loaded = load_sibo_model(tiny(), tmp_path)
    assert sibo_settings(loaded).learnable_lambda and sibo_settings(loaded).lam == 0.2
    assert torch.equal(out(loaded, inputs_for()), out(model.eval(), inputs_for()))


def write_seed_checkpoint(directory, **extra):
    """The seed's adapters: adapter_model.bin with `<module>.adapter_down.weight` keys, peft_type BOTTLENECK."""
    config = {"peft_type": "BOTTLENECK", "task_type": "CAUSAL_LM", "bottleneck_size": B, "non_linearity": "tanh",
              "adapter_dropout": 0.0, "use_parallel_adapter": False, "use_adapterp": False, "scaling": 1.0,
              "bias": "none", "init_weights": "bert", "modules_to_save": None, "inference_mode": True,
              "target_modules": ["gate_proj", "up_proj", "down_proj"], "base_model_name_or_path": "llama-7b-hf",
              **extra}  # fmt: skip
    (directory / "adapter_config.json").write_text(json.dumps(config))
    torch.manual_seed(3)
    weights = {}
    for block in range(2):
        for module, width in [("gate_proj", 32), ("up_proj", 32), ("down_proj", 32)]:
            key = f"base_model.model.model.layers.{block}.mlp.{module}"
            weights[f"{key}.adapter_down.weight"] = torch.randn(B, width)
            weights[f"{key}.adapter_up.weight"] = torch.randn(width, B)
    torch.save(weights, directory / "adapter_model.bin")
    return weights


def test_loads_a_checkpoint_laid_out_as_llm_adapters_writes_it(tmp_path):
    weights = write_seed_checkpoint(tmp_path)
    model = PeftModel.from_pretrained(tiny(), tmp_path)
    state = model.state_dict()
    for key, value in weights.items():
        assert torch.equal(state[key.replace(".weight", ".default.weight")], value)


def test_a_seed_checkpoint_with_embedding_lambda_loads_boosted_with_it(tmp_path):
    """The seed's fork kept λ in adapter_config.json: applied as `targets="ffn"` (the seed's --ffn True)."""
    write_seed_checkpoint(tmp_path, embedding_lambda=0.3)
    base = tiny()
    model = load_sibo_model(copy.deepcopy(base), tmp_path)
    assert sibo_settings(model).lam == 0.3 and sibo_settings(model).targets == "ffn"
    inputs = inputs_for()
    expected = reference_logits(base, model, "llama", inputs, lambda i: 0.3, BOOSTED["llama", "H"][0])
    torch.testing.assert_close(out(model, inputs), expected)


def test_generate_with_kv_cache_gives_the_tokens_of_no_cache():
    model = get_sibo_model(
        tiny(), BottleneckConfig(bottleneck_size=8, use_parallel_adapter=True), lam=0.4, targets="all"
    )
    perturb(model)
    inputs = inputs_for(seed=2, length=5)
    kwargs = {"max_new_tokens": 6, "min_new_tokens": 6, "do_sample": False, "pad_token_id": 0}
    with_cache = model.generate(**inputs, use_cache=True, **kwargs)
    assert with_cache.shape == (2, 11)
    assert torch.equal(with_cache, model.generate(**inputs, use_cache=False, **kwargs))


def test_disable_adapter_runs_the_base_model():
    base = tiny()
    model = get_peft_model(copy.deepcopy(base), BottleneckConfig(bottleneck_size=B))
    with model.disable_adapter():
        assert torch.equal(out(model, inputs_for()), out(base, inputs_for()))
    assert not torch.allclose(out(model, inputs_for()), out(base, inputs_for()))


def test_mam_adapter_init_starts_as_the_identity_and_bert_init_does_not():
    base = tiny()
    mam = get_peft_model(copy.deepcopy(base), BottleneckConfig(bottleneck_size=B, init_weights="mam_adapter"))
    assert torch.equal(out(mam, inputs_for()), out(base, inputs_for()))
    bert = get_peft_model(copy.deepcopy(base), BottleneckConfig(bottleneck_size=64))
    up = bert.base_model.model.model.layers[0].mlp.gate_proj.adapter_up["default"].weight
    assert 0.018 < up.std().item() < 0.022 and abs(up.mean().item()) < 0.002


def test_several_named_adapters_add_set_load_and_delete(tmp_path):
    h_config, p_config = (
        BottleneckConfig(bottleneck_size=B),
        BottleneckConfig(bottleneck_size=B, use_parallel_adapter=True),
    )
    bases = [tiny() for _ in range(3)]  # built first: building reseeds torch
    torch.manual_seed(1)
    only_h = out(get_peft_model(bases[0], copy.deepcopy(h_config)), inputs_for())
    torch.manual_seed(2)
    only_p_model = get_peft_model(bases[1], copy.deepcopy(p_config), adapter_name="par")
    only_p = out(only_p_model, inputs_for())
    torch.manual_seed(1)
    model = get_peft_model(bases[2], copy.deepcopy(h_config))
    torch.manual_seed(2)
    model.add_adapter("par", copy.deepcopy(p_config))
    q_proj = model.base_model.model.model.layers[0].self_attn.q_proj
    assert not q_proj.adapter_down["par"].weight.requires_grad  # an added adapter trains once set active
    assert torch.equal(out(model, inputs_for()), only_h)
    model.set_adapter("par")
    assert q_proj.adapter_down["par"].weight.requires_grad
    assert torch.equal(out(model, inputs_for()), only_p)
    only_p_model.save_pretrained(tmp_path)
    reloaded = get_peft_model(tiny(), BottleneckConfig(bottleneck_size=B))
    reloaded.load_adapter(tmp_path / "par", adapter_name="par")
    reloaded.set_adapter("par")
    assert torch.equal(out(reloaded, inputs_for()), only_p)
    model.delete_adapter("par")
    assert "par" not in q_proj.adapter_down and list(model.peft_config) == ["default"]
    model.set_adapter("default")  # peft leaves no active adapter when the deleted one held other modules
    assert torch.equal(out(model, inputs_for()), only_h)


def test_active_adapters_on_one_module_add_their_branches():
    """Two active input adapters both read x: y = module(x + s·b₁(x) + s·b₂(x))."""
    torch.manual_seed(0)
    toy = nn.Sequential(nn.Linear(8, 5))
    roles = {"0": "mh_adapter"}
    model = get_peft_model(
        copy.deepcopy(toy), BottleneckConfig(bottleneck_size=3, target_modules=["0"], module_roles=roles)
    )
    model.add_adapter(
        "second", BottleneckConfig(bottleneck_size=2, target_modules=["0"], module_roles=roles, scaling=3.0)
    )
    model.base_model.set_adapter(["default", "second"])
    layer = model.base_model.model[0]
    x = torch.randn(4, 8)

    def b(name, s):
        return s * torch.tanh(x @ layer.adapter_down[name].weight.T) @ layer.adapter_up[name].weight.T

    torch.testing.assert_close(model(x), toy(x + b("default", 1.0) + b("second", 3.0)))


def test_merging_is_refused_and_leaves_the_model_intact():
    base = tiny()
    model = get_peft_model(copy.deepcopy(base), BottleneckConfig(bottleneck_size=B))
    before = out(model, inputs_for())
    for attempt in (model.merge_and_unload, model.merge_adapter, model.unmerge_adapter):
        with pytest.raises(ValueError, match="bottleneck adapters cannot be merged"):
            attempt()
    assert torch.equal(out(model, inputs_for()), before)
    sibo_model = get_sibo_model(tiny(), BottleneckConfig(bottleneck_size=B), lam=0.0)
    with pytest.raises(ValueError, match="cannot be merged"):
        sibo_model.merge_and_unload()
    assert torch.equal(out(model.unload(), inputs_for()), out(base, inputs_for()))


def test_unmatched_target_lists_the_modules_that_exist():
    config = BottleneckConfig(bottleneck_size=B, target_modules=["gate_proj", "fc_in"])
    with pytest.raises(InputError, match=r"entry 'fc_in'; its Linear/Conv1D modules are: lm_head, mlp.down_proj, "
                                         r"mlp.gate_proj, mlp.up_proj, self_attn.k_proj"):  # fmt: skip
        get_peft_model(tiny(), config)


def test_a_refused_target_leaves_the_model_untouched():
    base = tiny()
    with pytest.raises(InputError, match="no bottleneck adapter role for module 'lm_head'"):
        get_peft_model(base, BottleneckConfig(bottleneck_size=B, target_modules=["gate_proj", "lm_head"]))
    assert not any(isinstance(m, BottleneckLayer) for m in base.modules())
    with pytest.raises(InputError, match="wrap Linear or Conv1D modules, not LlamaRMSNorm"):
        get_peft_model(
            base, BottleneckConfig(bottleneck_size=B, use_parallel_adapter=True, target_modules=["norm"])
        )


def test_another_architecture_needs_named_roles():
    toy = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 8))
    with pytest.raises(InputError, match="no default target_modules for model type 'custom'"):
        get_peft_model(copy.deepcopy(toy), BottleneckConfig(bottleneck_size=B))
    with pytest.raises(InputError, match=r"no bottleneck adapter role for module '0'.*module_roles=\{'0'"):
        get_peft_model(copy.deepcopy(toy), BottleneckConfig(bottleneck_size=B, target_modules=["0", "2"]))
    roles = {"0": "output_adapter", "2": "parallel_adapter"}
    model = get_peft_model(
        copy.deepcopy(toy), BottleneckConfig(bottleneck_size=B, target_modules=["0", "2"], module_roles=roles)
    )
    assert [
        m.adapter_down["default"].in_features for m in model.modules() if isinstance(m, BottleneckLayer)
    ] == [16, 16]


@pytest.mark.parametrize(
    "field, value, message",
    [("bottleneck_size", 0, "positive integer"), ("non_linearity", "swoosh", "not a transformers activation"),
     ("adapter_dropout", 1.0, r"in \[0, 1\)"), ("scaling", "big", "a finite number or 'learned'"),
     ("init_weights", "xavier", "init_weights must be one of"), ("bias", "lora_only", "bias must be one of"),
     ("module_roles", {"fc": "sideways"}, "a role is one of"), ("use_adapterp", True, "choose one")],
)  # fmt: skip
def test_config_refuses_bad_values(field, value, message):
    extra = {"use_parallel_adapter": True} if field == "use_adapterp" else {}
    with pytest.raises(InputError, match=message):
        BottleneckConfig(**{field: value}, **extra)


def test_config_normalises_scaling_and_registration_is_idempotent():
    assert BottleneckConfig(scaling=2).scaling == 2.0 and BottleneckConfig(scaling="0.5").scaling == 0.5
    bottleneck.register()
    importlib.reload(bottleneck)
    assert PeftType.BOTTLENECK in list(PeftType) and PeftType("BOTTLENECK") is PeftType.BOTTLENECK
    assert PEFT_TYPE_TO_CONFIG_MAPPING[PeftType.BOTTLENECK] is BottleneckConfig


def test_bf16_base_keeps_fp32_adapters_and_bf16_outputs():
    model = get_peft_model(
        tiny().to(torch.bfloat16), BottleneckConfig(bottleneck_size=B, use_parallel_adapter=True)
    )
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    assert layer.adapter_down["default"].weight.dtype == torch.float32
    assert out(model, inputs_for()).dtype == torch.bfloat16


def test_gradient_checkpointing_gives_the_same_gradients():
    """Checkpointing reruns block forwards: SIBO's hooks and the adapters must give the same gradients."""

    def gradients(checkpointing):
        torch.manual_seed(0)
        model = get_sibo_model(
            tiny(), BottleneckConfig(bottleneck_size=B), lam=0.3, learnable_lambda=True
        ).train()
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        ids = inputs_for()["input_ids"]
        model(input_ids=ids, labels=ids).loss.backward()
        return {n: p.grad for n, p in model.named_parameters() if p.requires_grad}

    plain, checkpointed = gradients(False), gradients(True)
    assert len(plain) == 2 * 3 * 2 + 1  # down and up of 3 adapters per block, 2 blocks, + λ logits
    torch.testing.assert_close(checkpointed, plain)  # dicts: their names too
