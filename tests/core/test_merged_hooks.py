import torch
from peft import LoraConfig

from sibo import get_sibo_model
from sibo.core.merge import merge_for_inference
from sibo.core.merged_hooks import UP_BUFFER, add_h0_branches
from sibo.testing import build_tiny_model


def test_each_module_adds_its_own_term_on_h0_to_its_output():
    model = build_tiny_model("llama", 64).eval()
    hidden = model.config.hidden_size
    modules = dict(model.named_modules())
    names = [
        f"model.layers.{i}.mlp.{part}"
        for i in range(model.config.num_hidden_layers)
        for part in ("gate_proj", "up_proj")
    ]
    generator = torch.Generator().manual_seed(0)
    weights = {  # ranks differ, so each module must read its own columns of the stacked projection
        name: (
            torch.randn(2 + k % 3, hidden, generator=generator),
            torch.randn(modules[name].out_features, 2 + k % 3, generator=generator),
        )
        for k, name in enumerate(names)
    }
    plain, final, seen = {}, {}, {}
    model.model.layers[0].register_forward_pre_hook(lambda _, args: seen.setdefault("h0", args[0]))
    for name in names:
        modules[name].register_forward_hook(lambda _, args, output, name=name: plain.setdefault(name, output))
    add_h0_branches(model, weights)
    for name in names:
        modules[name].register_forward_hook(lambda _, args, output, name=name: final.setdefault(name, output))

    with torch.no_grad():
        model(torch.tensor([[3, 5, 7, 11], [2, 4, 6, 8]]))

    for name, (lora_a, scaled_b) in weights.items():
        torch.testing.assert_close(final[name], plain[name] + seen["h0"] @ lora_a.T @ scaled_b.T)


def test_the_terms_are_not_part_of_the_state_dict():
    model = build_tiny_model("llama", 64)
    keys = set(model.state_dict())
    gate = model.model.layers[0].mlp.gate_proj
    add_h0_branches(
        model,
        {"model.layers.0.mlp.gate_proj": (torch.ones(2, gate.in_features), torch.ones(gate.out_features, 2))},
    )
    assert set(model.state_dict()) == keys and hasattr(gate, UP_BUFFER)


def test_a_merged_model_decodes_alike_under_a_static_cache_and_a_compiled_step():
    """The hooks trace into one graph (fullgraph, aot_eager: the trace a CUDA graph would replay)."""
    from transformers import CompileConfig

    model = get_sibo_model(
        build_tiny_model("llama", 64),
        LoraConfig(r=2, target_modules="all-linear", init_lora_weights=False),
        lam=0.3,
    ).eval()
    inputs = {"input_ids": torch.randint(3, 64, (2, 6)), "attention_mask": torch.ones(2, 6, dtype=torch.long)}
    inputs["attention_mask"][1, :2] = 0  # left padding

    def decode(model, **settings):
        with torch.no_grad():
            return model.generate(**inputs, max_new_tokens=6, do_sample=False, pad_token_id=0, **settings)

    expected = decode(model)
    merged = merge_for_inference(model)
    assert sum(hasattr(module, UP_BUFFER) for module in merged.modules()) == 4  # gate and up, 2 blocks
    compile_config = CompileConfig(backend="aot_eager", fullgraph=True, mode="default")
    compile_config._compile_all_devices = True  # transformers compiles on accelerators only by default
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    assert torch.equal(decode(merged, cache_implementation="static", compile_config=compile_config), expected)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # it did compile
    torch._dynamo.reset()
