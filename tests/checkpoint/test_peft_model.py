"""SIBO on PeftModel: save/load, merging, generation with a KV cache, gradient checkpointing, learnable λ."""

import copy
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from fault_checks import add_deeper_model, refused
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

from sibo import get_sibo_model, load_sibo_model, sibo_settings
from sibo.core.booster import SiboConfig
from sibo.errors import InputError
from sibo.testing import build_tiny_model, build_tokenizer

PRE31 = Path(__file__).parent / "data" / "pre31"  # adapters as sibo wrote them before SIBO_LORA

VOCAB = 64


def lora(targets=("q_proj", "v_proj", "up_proj", "gate_proj", "down_proj"), **kwargs):
    return LoraConfig(r=4, lora_alpha=8, target_modules=list(targets), init_lora_weights=False, **kwargs)


def ids(batch=2, length=6, seed=0):
    return torch.randint(3, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("learnable", [False, True])
def test_save_load_round_trip_is_bit_exact(tmp_path, learnable):
    base = build_tiny_model("llama", VOCAB)
    model = get_sibo_model(copy.deepcopy(base), lora(), lam=0.2, targets="all", learnable_lambda=learnable)
    if learnable:  # move λ away from its initial value, as training would
        with torch.no_grad():
            model.sibo_lambdas["default"].logits.add_(torch.linspace(-0.5, 0.5, 2))
    model.eval()
    want = model(input_ids=ids()).logits
    model.save_pretrained(tmp_path)
    assert {"adapter_config.json", "adapter_model.safetensors", "sibo_config.json"} <= {
        p.name for p in tmp_path.iterdir()
    }
    loaded = load_sibo_model(copy.deepcopy(base), tmp_path)
    assert torch.equal(loaded(input_ids=ids()).logits, want)
    assert sibo_settings(loaded).lam == 0.2 and sibo_settings(loaded).learnable_lambda == learnable


def test_learnable_lambda_trains_and_stays_in_unit_interval():
    model = get_sibo_model(build_tiny_model("llama", VOCAB), lora(), lam=0.1, learnable_lambda=True)
    logits = model.sibo_lambdas["default"].logits
    assert logits.requires_grad and logits.shape == (2,)  # one λ per transformer block
    torch.testing.assert_close(torch.sigmoid(logits), torch.full((2,), 0.1))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "sibo_lambdas.default.logits" in trainable
    model.train()
    model(input_ids=ids(), labels=ids()).loss.backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    lambda_at = model._sibo_adapters["default"].lambda_at
    with torch.no_grad():
        logits.copy_(torch.tensor([0.0, math.log(3.0)]))  # sigmoid: 1/2 and 3/4
        assert (lambda_at(0).item(), lambda_at(1).item()) == pytest.approx((0.5, 0.75), abs=1e-7)
        logits.fill_(1e4)
        assert lambda_at(0).item() == 1.0
        logits.fill_(-1e4)
        assert lambda_at(0).item() == 0.0


def test_plain_peft_adapter_loads_plain_or_boosted(tmp_path):
    base = build_tiny_model("llama", VOCAB)
    plain = get_peft_model(copy.deepcopy(base), lora()).eval()
    plain.save_pretrained(tmp_path)
    want = plain(input_ids=ids()).logits
    loaded = load_sibo_model(copy.deepcopy(base), tmp_path)
    assert sibo_settings(loaded) is None and torch.equal(loaded(input_ids=ids()).logits, want)
    boosted = load_sibo_model(copy.deepcopy(base), tmp_path, lam=0.3)
    assert sibo_settings(boosted).lam == 0.3 and sibo_settings(boosted).targets == "ffn"
    assert not torch.allclose(boosted(input_ids=ids()).logits, want)


def test_lambda_override_on_load(tmp_path):
    base = build_tiny_model("llama", VOCAB)
    get_sibo_model(copy.deepcopy(base), lora(), lam=0.2).save_pretrained(tmp_path)
    assert sibo_settings(load_sibo_model(copy.deepcopy(base), tmp_path, lam=0.5)).lam == 0.5


def test_wrong_base_is_a_clear_error(tmp_path):
    get_sibo_model(build_tiny_model("llama", VOCAB), lora(), lam=0.2).save_pretrained(tmp_path)
    with pytest.raises(
        InputError, match=r"llama base with hidden size 32, but the base model is llama with hidden size 48"
    ):
        load_sibo_model(build_tiny_model("llama", VOCAB, hidden_size=48), tmp_path)
    with pytest.raises(
        InputError, match=r"llama base with hidden size 32, but the base model is gpt2 with hidden size 32$"
    ):
        load_sibo_model(build_tiny_model("gpt2", VOCAB), tmp_path)


def test_load_adapter_of_a_hub_name_asks_for_a_local_folder():
    model = get_sibo_model(build_tiny_model("llama", VOCAB), lora(), lam=0.2)
    with pytest.raises(InputError) as refused_error:
        model.load_adapter("someone/adapter", "other")
    assert str(refused_error.value) == (
        "adapter someone/adapter is not a local folder: download it first "
        "(huggingface_hub.snapshot_download('someone/adapter')) and load that folder"
    )
    assert list(model.peft_config) == ["default"]


def test_plain_adapter_on_wrong_width_names_the_base(tmp_path):
    get_peft_model(build_tiny_model("llama", VOCAB), lora()).save_pretrained(tmp_path)
    with pytest.raises(InputError, match=r"does not fit the base model \(llama, 2 layers, hidden size 48\)"):
        load_sibo_model(build_tiny_model("llama", VOCAB, hidden_size=48), tmp_path)


def test_settings_file_records_the_boost(tmp_path):
    get_sibo_model(build_tiny_model("llama", VOCAB), lora(), lam=0.2, targets="ffn").save_pretrained(tmp_path)
    settings = json.loads((tmp_path / "sibo_config.json").read_text())
    assert settings["lam"] == 0.2 and settings["targets"] == "ffn" and settings["hidden_size"] == 32
    assert sorted(settings["boosted_modules"]) == sorted(
        f"base_model.model.model.layers.{i}.mlp.{m}" for i in range(2) for m in ("gate_proj", "up_proj")
    )


def test_merge_refuses_to_drop_the_initial_residual():
    model = get_sibo_model(build_tiny_model("llama", VOCAB), lora(), lam=0.2)
    for merge in (model.merge_and_unload, model.merge_adapter):
        with pytest.raises(InputError, match=r"would drop SIBO's λ·ΔW·h0 term"):
            merge()
    model.base_model.merge_adapter()  # PEFT's own path, below ours: the forward refuses instead of going silent
    with pytest.raises(InputError, match="merged into a SIBO-boosted layer"):
        model(input_ids=ids())


def test_lambda_zero_merges_like_plain_peft():
    base = build_tiny_model("llama", VOCAB)
    model = get_sibo_model(copy.deepcopy(base), lora(), lam=0.0).eval()
    want = model(input_ids=ids()).logits
    model.merge_adapter()
    torch.testing.assert_close(model(input_ids=ids()).logits, want, rtol=1e-5, atol=1e-5)
    model.unmerge_adapter()
    merged = model.merge_and_unload()
    assert not isinstance(merged, PeftModel)
    torch.testing.assert_close(merged(input_ids=ids()).logits, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "opt"])
def test_generate_with_cache_equals_without(arch):
    """Greedy decoding of 3 left-padded prompts of different lengths: KV cache on and off agree."""
    tokenizer = build_tokenizer()
    base = build_tiny_model(arch, len(tokenizer))
    targets = {"llama": ["q_proj", "up_proj"], "gpt2": ["c_attn", "c_fc"], "opt": ["q_proj", "fc1"]}[arch]
    model = get_sibo_model(base, lora(targets), lam=0.3, targets="all").eval()
    batch = tokenizer(["a", "three word prompt", "mid prompt"], return_tensors="pt", padding=True)
    runs = [
        model.generate(**batch, max_new_tokens=8, do_sample=False, use_cache=cache, output_logits=True,
                       return_dict_in_generate=True, pad_token_id=tokenizer.pad_token_id)
        for cache in (True, False)
    ]  # fmt: skip
    assert torch.equal(runs[0].sequences, runs[1].sequences)
    for with_cache, without in zip(runs[0].logits, runs[1].logits, strict=True):
        torch.testing.assert_close(with_cache, without, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_gradient_checkpointing_gives_the_same_gradients(use_reentrant):
    base = build_tiny_model("llama", VOCAB, num_layers=3)
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = get_sibo_model(copy.deepcopy(base), lora(lora_dropout=0.1), lam=0.3, targets="all",
                               learnable_lambda=True)  # fmt: skip
        if checkpointing:
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": use_reentrant}
            )
            model.enable_input_require_grads()
        model.train()
        calls = []
        model.base_model.model.model.layers[1].self_attn.q_proj.register_forward_pre_hook(
            lambda *_, calls=calls: calls.append(1)
        )
        torch.manual_seed(1)
        model(input_ids=ids(), labels=ids()).loss.backward()
        assert len(calls) == (
            2 if checkpointing else 1
        )  # checkpointing reran the block, mixing hooks included
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys() and any("sibo_lambdas" in n for n in grads[0])
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-6, msg=name)


def test_load_adapter_restores_learnable_lambda_as_trainer_resume_does(tmp_path):
    base = build_tiny_model("llama", VOCAB)
    saved = get_sibo_model(copy.deepcopy(base), lora(), lam=0.2, learnable_lambda=True)
    with torch.no_grad():
        saved.sibo_lambdas["default"].logits.add_(torch.tensor([0.3, -0.4]))
    saved.save_pretrained(tmp_path)
    fresh = get_sibo_model(copy.deepcopy(base), lora(), lam=0.2, learnable_lambda=True)
    fresh.load_adapter(str(tmp_path), "default", is_trainable=True)
    assert torch.equal(fresh.sibo_lambdas["default"].logits, saved.sibo_lambdas["default"].logits)
    assert fresh.sibo_lambdas["default"].logits.requires_grad
    fresh.load_adapter(str(tmp_path), "second")  # a new adapter name: boosted, its λ registered
    assert sibo_settings(fresh, "second").learnable_lambda and "second" in fresh.sibo_lambdas
    assert torch.equal(fresh.sibo_lambdas["second"].logits, saved.sibo_lambdas["default"].logits)


# -- checkpoints of LLM-Adapters' code (LLM-Adapters' peft 0.3 fork) ---------------------------------

SEED_TARGETS = {"self_attn.q_proj": (32, 32), "self_attn.v_proj": (32, 32), "mlp.gate_proj": (32, 64),
                "mlp.up_proj": (32, 64), "mlp.down_proj": (64, 32)}  # fmt: skip


def write_seed_lora(directory, lam=0.25, r=4, alpha=8):
    """adapter_config.json with the fork's fields and a pickled adapter_model.bin, keys without adapter names."""
    config = {"base_model_name_or_path": "yahma/llama-7b-hf", "bias": "none", "enable_lora": None,
              "fan_in_fan_out": False, "inference_mode": True, "lora_alpha": alpha, "lora_dropout": 0.05,
              "merge_weights": False, "modules_to_save": None, "peft_type": "LORA", "r": r,
              "target_modules": [name.split(".")[1] for name in SEED_TARGETS], "task_type": "CAUSAL_LM",
              "embedding_lambda": lam}  # fmt: skip
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "adapter_config.json").write_text(json.dumps(config))
    generator = torch.Generator().manual_seed(5)
    weights = {}
    for block in range(2):
        for name, (width_in, width_out) in SEED_TARGETS.items():
            key = f"base_model.model.model.layers.{block}.{name}"
            weights[f"{key}.lora_A.weight"] = torch.randn(r, width_in, generator=generator)
            weights[f"{key}.lora_B.weight"] = torch.randn(width_out, r, generator=generator)
    torch.save(weights, directory / "adapter_model.bin")
    return weights


def seed_formula(base, weights, lam, scaling=2.0):
    """Logits by hand: every adapted module gives W0·x + s·B·A·u, u = (1-λ)·x + λ·h0 on the feed-forward
    input branches (gate_proj, up_proj: they read the hidden state), u = x elsewhere."""
    ref = copy.deepcopy(base)
    with torch.no_grad():
        h0 = ref(input_ids=ids(), output_hidden_states=True).hidden_states[0]  # (B, T, H), entering block 0
    for block in range(2):
        for name in SEED_TARGETS:
            key = f"base_model.model.model.layers.{block}.{name}"
            A, B = weights[f"{key}.lora_A.weight"], weights[f"{key}.lora_B.weight"]
            mixed = name in ("mlp.gate_proj", "mlp.up_proj")

            def add_branch(module, args, y, A=A, B=B, mixed=mixed):
                u = (1 - lam) * args[0] + lam * h0 if mixed else args[0]
                return y + u @ A.T @ B.T * scaling

            ref.get_submodule(f"model.layers.{block}.{name}").register_forward_hook(add_branch)
    with torch.no_grad():
        return ref(input_ids=ids()).logits


def test_seed_lora_checkpoint_loads_boosted_with_its_stored_lambda(tmp_path, caplog, recwarn):
    base = build_tiny_model("llama", VOCAB)
    weights = write_seed_lora(tmp_path, lam=0.25)
    with caplog.at_level("INFO", logger="sibo"):
        model = load_sibo_model(copy.deepcopy(base), tmp_path).eval()
    assert sibo_settings(model) == SiboConfig(lam=0.25, targets="ffn")
    with torch.no_grad():
        logits = model(input_ids=ids()).logits
    torch.testing.assert_close(logits, seed_formula(base, weights, lam=0.25))
    assert (logits - seed_formula(base, weights, lam=0.0)).abs().max() > 1e-3  # the boost shows
    seed_lines = [r.getMessage() for r in caplog.records if "LLM-Adapters' code" in r.getMessage()]
    assert seed_lines == [
        f"{tmp_path} was written by LLM-Adapters' code: boosting it with its embedding_lambda=0.25 on the "
        "feed-forward branches, as upstream's --ffn True does (--embedding_lambda overrides it; 0 loads it plain)"
    ]
    assert not [
        w for w in recwarn if "upgrade the PEFT version" in str(w.message)
    ]  # its fields are read here


def test_seed_lora_checkpoint_lambda_is_overridden_or_zero(tmp_path):
    base = build_tiny_model("llama", VOCAB)
    weights = write_seed_lora(tmp_path, lam=0.25)
    overridden = load_sibo_model(copy.deepcopy(base), tmp_path, lam=0.5).eval()
    assert sibo_settings(overridden) == SiboConfig(lam=0.5, targets="ffn")
    with torch.no_grad():
        torch.testing.assert_close(overridden(input_ids=ids()).logits, seed_formula(base, weights, lam=0.5))
    write_seed_lora(tmp_path, lam=0.0)
    assert sibo_settings(load_sibo_model(copy.deepcopy(base), tmp_path)) is None


def test_seed_checkpoint_with_a_bad_lambda_names_the_file(tmp_path):
    write_seed_lora(tmp_path, lam=1.5)
    with pytest.raises(
        InputError, match=r"adapter_config.json: SIBO's λ must be a number in \[0, 1\], got 1.5"
    ):
        load_sibo_model(build_tiny_model("llama", VOCAB), tmp_path)


@pytest.mark.parametrize(("record", "content"), [
    ("run_config.json", {"config": {"embedding_lambda": 0.1}}),
    ("sibo_run.json", {"verb": "finetune", "settings": {"embedding_lambda": 0.2}}),
])  # fmt: skip
def test_missing_settings_with_records_of_a_lambda_are_refused_by_name(tmp_path, record, content):
    """An adapter written before SIBO_LORA (PEFT's LORA type, λ in sibo_config.json) that lost its settings."""
    base = AutoModelForCausalLM.from_pretrained(PRE31 / "base")
    shutil.copytree(PRE31 / "fixed", tmp_path, dirs_exist_ok=True)
    (tmp_path / "sibo_config.json").unlink()
    (tmp_path / record).write_text(json.dumps(content))
    lam = content.get("config", content.get("settings"))["embedding_lambda"]
    with pytest.raises(InputError) as error:
        load_sibo_model(copy.deepcopy(base), tmp_path)
    assert str(error.value) == (
        f"{tmp_path / 'sibo_config.json'} is missing, but {record} beside it records λ {lam}: without it the adapter "
        "would run as plain LoRA; restore the file, or load it plain on purpose with λ 0 (--embedding_lambda 0)"
    )
    assert sibo_settings(load_sibo_model(copy.deepcopy(base), tmp_path, lam=0.0)).lam == 0.0  # on purpose


def test_damaged_settings_are_refused_by_name(tmp_path):
    base = build_tiny_model("llama", VOCAB)
    get_sibo_model(copy.deepcopy(base), lora(), lam=0.1).save_pretrained(tmp_path)
    (tmp_path / "sibo_config.json").write_text('{"lam": 0.1, "targ')
    with pytest.raises(
        InputError, match=rf"^{tmp_path / 'sibo_config.json'}: not a valid SIBO settings file"
    ):
        load_sibo_model(copy.deepcopy(base), tmp_path)
    (tmp_path / "sibo_config.json").unlink()
    stored = json.loads((tmp_path / "adapter_config.json").read_text())
    for damage in ({"lam": 0.1}, None):  # a key lost; the whole block lost
        (tmp_path / "adapter_config.json").write_text(json.dumps({**stored, "sibo": damage}))
        with pytest.raises(InputError) as error:
            load_sibo_model(copy.deepcopy(base), tmp_path)
        assert str(error.value).startswith(
            f"{tmp_path / 'adapter_config.json'}: the SIBO settings (its 'sibo' block) are damaged ("
        )
        with pytest.raises(
            InputError, match=r"^adapter_config.json: the SIBO settings \(its 'sibo' block\) are damaged"
        ):
            PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path))


def fuse_mlp(mlp):
    """What fused-kernel trainers do: the MLP computes base + s·B·A·x from the weights, never calling the LoRA
    modules' forward, so SIBO's hooks on them never run."""

    def linear(layer, x):
        y = torch.nn.functional.linear(x, getattr(layer, "base_layer", layer).weight)
        if hasattr(layer, "lora_A"):
            a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
            y = y + torch.nn.functional.linear(torch.nn.functional.linear(x, a), b) * layer.scaling["default"]
        return y

    mlp.forward = lambda x: linear(
        mlp.down_proj, mlp.act_fn(linear(mlp.gate_proj, x)) * linear(mlp.up_proj, x)
    )


def test_a_fused_mlp_that_skips_the_mixing_is_refused_at_the_first_forward():
    model = get_sibo_model(
        build_tiny_model("llama", VOCAB), lora(("q_proj", "up_proj", "down_proj")), lam=0.3
    )
    fuse_mlp(model.base_model.model.model.layers[1].mlp)
    with pytest.raises(InputError) as error:
        model(input_ids=ids())
    assert str(error.value) == (
        "SIBO's mixing did not run in 1 of 2 boosted modules (base_model.model.model.layers.1.mlp.up_proj): a fused "
        "kernel, a replaced forward or a compiled graph skipped their LoRA modules, so they would run as plain LoRA; "
        "turn that kernel off for SIBO adapters"
    )


def test_the_mixing_check_passes_once_and_waits_for_a_forward_that_runs_the_adapter():
    model = get_sibo_model(build_tiny_model("llama", VOCAB), lora(), lam=0.3)
    state = model._sibo_state
    with model.disable_adapter():
        model(input_ids=ids())  # no branch ran: nothing to check yet
    assert state.unverified == [model._sibo_adapters["default"]]
    model(input_ids=ids())
    assert state.unverified == [] and state.mixed is None
    fuse_mlp(model.base_model.model.model.layers[1].mlp)  # after the check: not looked at again
    model(input_ids=ids())


@pytest.fixture(scope="module")
def root(root):
    add_deeper_model(root)
    return root


@pytest.mark.integration
@pytest.mark.parametrize(("base", "adapter", "words"), [
    (4, 6, "its tensor base_model.model.model.layers.4.mlp.up_proj.lora_A.weight [4, 32] has no module in the base"),
    (6, 4, "the base's base_model.model.model.layers.4.self_attn.q_proj.lora_A.weight [4, 32] has no tensor in the adapter"),
])  # fmt: skip
@pytest.mark.parametrize("verb", ["export", "generate"])
def test_an_adapter_of_another_depth_is_refused_naming_the_key(
    root, tmp_path, capsys, base, adapter, words, verb
):
    argv = [verb, "--base_model", root / f"base{base}", "--weights_path", root / f"adapter{adapter}"]
    argv += ["--output_dir", tmp_path / "out"] if verb == "export" else ["--prompt", "hi"]
    line = refused(capsys, argv, root / f"adapter{adapter}", tmp_path)
    assert line == (
        f"sibo {verb}: error: the adapter at {root / f'adapter{adapter}'} does not fit the base model (llama, "
        f"{base} layers, hidden size 32): {words}"
    )


def test_an_adapter_peft_cannot_build_on_the_base_is_refused_in_one_line(tmp_path):
    get_peft_model(build_tiny_model("llama", VOCAB), lora(("q_proj",))).save_pretrained(tmp_path / "q")
    with pytest.raises(InputError) as error:
        load_sibo_model(build_tiny_model("gpt2", VOCAB), tmp_path / "q")
    assert str(error.value) == (
        f"the adapter at {tmp_path / 'q'} does not fit the base model (gpt2, 2 layers, hidden size 32): Target "
        "modules {'q_proj'} not found in the base model. Please check the target modules and try again."
    )
    stored = json.loads((tmp_path / "q" / "adapter_config.json").read_text())
    (tmp_path / "q" / "adapter_config.json").write_text(json.dumps({**stored, "r": 0}))
    zero_rank = (
        f"the adapter at {tmp_path / 'q'} does not fit the base model (llama, 2 layers, hidden size 32): "
        "`r` should be a positive integer value but the value passed is 0"
    )
    with pytest.raises(InputError) as error:
        load_sibo_model(build_tiny_model("llama", VOCAB), tmp_path / "q")
    assert str(error.value) == zero_rank
    model = get_sibo_model(build_tiny_model("llama", VOCAB), lora(), lam=0.2)
    with pytest.raises(InputError) as error:
        model.load_adapter(str(tmp_path / "q"), "other")
    assert str(error.value) == zero_rank


@pytest.mark.integration
def test_generate_refuses_an_adapter_whose_targets_the_base_lacks(tmp_path, capsys):
    tokenizer = build_tokenizer()
    build_tiny_model("gpt2", len(tokenizer)).save_pretrained(tmp_path / "gpt2")
    tokenizer.save_pretrained(tmp_path / "gpt2")
    get_peft_model(build_tiny_model("llama", len(tokenizer)), lora(("q_proj",))).save_pretrained(
        tmp_path / "q"
    )
    argv = ["generate", "--base_model", tmp_path / "gpt2", "--weights_path", tmp_path / "q", "--prompt", "hi"]
    capsys.readouterr()  # the saves' progress bars
    assert refused(capsys, argv, tmp_path / "q") == (
        f"sibo generate: error: the adapter at {tmp_path / 'q'} does not fit the base model (gpt2, 2 layers, "
        "hidden size 32): Target modules {'q_proj'} not found in the base model. Please check the target modules "
        "and try again."
    )


def pre31_learnt(directory: Path, logits) -> Path:
    """The learnt-λ adapter sibo wrote before SIBO_LORA (λ in sibo_config.json), with `logits` stored
    as its lambda_logits (None: the key removed)."""
    shutil.copytree(PRE31 / "learnt", directory)
    settings = json.loads((directory / "sibo_config.json").read_text())
    settings.pop("lambda_logits")
    if logits is not None:
        settings["lambda_logits"] = logits
    (directory / "sibo_config.json").write_text(json.dumps(settings))
    return directory


@pytest.mark.parametrize(("logits", "words"), [
    ([float("nan"), 0.9], "not a valid SIBO settings file (lambda_logits must be finite numbers, one per block)"),
    ([0.1, "0.2"], "not a valid SIBO settings file (lambda_logits must be finite numbers, one per block)"),
    (None, "not a valid SIBO settings file (a learnt λ without its lambda_logits)"),
])  # fmt: skip
def test_a_learnt_lambda_that_is_damaged_or_missing_is_refused_naming_the_file(tmp_path, logits, words):
    adapter = pre31_learnt(tmp_path / "adapter", logits)
    with pytest.raises(InputError) as error:
        load_sibo_model(AutoModelForCausalLM.from_pretrained(PRE31 / "base"), adapter)
    assert str(error.value) == f"{adapter / 'sibo_config.json'}: {words}"


def test_a_learnt_lambda_of_another_depth_is_refused_naming_the_adapter(tmp_path):
    adapter = pre31_learnt(tmp_path / "adapter", [0.1, 0.2, 0.3])
    with pytest.raises(InputError) as error:
        load_sibo_model(AutoModelForCausalLM.from_pretrained(PRE31 / "base"), adapter)
    assert str(error.value) == (
        f"{adapter}: the learnt λ has 3 values (lambda_logits), the model 2 transformer blocks: one per block"
    )
