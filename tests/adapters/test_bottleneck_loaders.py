"""Boosted bottleneck adapters (AdapterH, AdapterP, parallel) run exactly in PEFT's and transformers' loaders
with sibo imported: their adapter_config.json carries the SIBO settings, which BottleneckModel boosts with."""

import json

import pytest
import torch
from peft import AutoPeftModelForCausalLM, PeftModel
from transformers import AutoModelForCausalLM
from without_sibo import run_without_sibo

import sibo
from sibo.adapters.bottleneck import BottleneckConfig
from sibo.core.registration import plain_config
from sibo.errors import InputError
from sibo.testing import build_tiny_model

VOCAB = 64
IDS = torch.randint(3, VOCAB, (2, 7), generator=torch.Generator().manual_seed(0))
MODES = {
    "H": {"scaling": 2.0},
    "P": {"use_adapterp": True, "scaling": "learned"},
    "parallel": {"use_parallel_adapter": True, "scaling": 0.5},
}
LOADERS = [
    "PeftModel.from_pretrained",
    "AutoPeftModel",
    "PeftModel.load_adapter",
    "transformers.load_adapter",
]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A base folder and, per mode, a boosted bottleneck adapter (λ 0.4), and a learnt λ moved off its start."""
    root = tmp_path_factory.mktemp("sibo_bottleneck")
    build_tiny_model("llama", VOCAB).save_pretrained(root / "base")
    for name, options in [*MODES.items(), ("learnt", MODES["H"])]:
        torch.manual_seed(len(name))
        config = BottleneckConfig(bottleneck_size=4, **options)
        model = sibo.get_sibo_model(
            base(root), config, lam=0.4, targets="all", learnable_lambda=name == "learnt"
        )
        with torch.no_grad():
            for parameter in model.parameters():
                if parameter.requires_grad:
                    parameter.add_(0.1 * torch.randn_like(parameter))  # learned scaling and λ off their start
        model.save_pretrained(root / name)
        torch.save(logits(model.eval()), root / name / "expected.pt")
        if name == "learnt":
            (root / name / "lambda_logits.json").write_text(
                json.dumps(model.sibo_lambdas["default"].logits.tolist())
            )
    return root


def base(root):
    return AutoModelForCausalLM.from_pretrained(root / "base", dtype=torch.float32).eval()


def logits(model):
    with torch.no_grad():
        return model(input_ids=IDS).logits


def load(loader, root, path, other):
    if loader == "PeftModel.from_pretrained":
        return PeftModel.from_pretrained(base(root), path)
    if loader == "AutoPeftModel":
        return AutoPeftModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    if loader == "PeftModel.load_adapter":  # a second adapter beside a first, then made active
        model = PeftModel.from_pretrained(base(root), other)
        model.load_adapter(path, "other")
        model.set_adapter("other")
        return model
    model = base(root)
    model.load_adapter(path)
    return model


def test_a_boosted_bottleneck_adapter_carries_its_settings(saved):
    stored = json.loads((saved / "learnt" / "adapter_config.json").read_text())
    assert stored["peft_type"] == "BOTTLENECK"
    block = stored["sibo"]
    assert (block["lam"], block["targets"], block["learnable_lambda"]) == (0.4, "all", True)
    assert block["lambda_logits"] == json.loads(
        (saved / "learnt" / "lambda_logits.json").read_text()
    )  # trained
    model = sibo.load_sibo_model(base(saved), saved / "learnt")
    assert block["lambda_logits"] == model.sibo_lambdas["default"].logits.tolist()


@pytest.mark.parametrize("name", [*MODES, "learnt"])
def test_sibo_loader_runs_it_as_trained(saved, name):
    """The tuner's own boost gives way to sibo's: the branches mix h0 once, not twice."""
    model = sibo.load_sibo_model(base(saved), saved / name)
    torch.testing.assert_close(logits(model), torch.load(saved / name / "expected.pt"), rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", [*MODES, "learnt"])
@pytest.mark.parametrize("loader", LOADERS)
def test_peft_and_transformers_loaders_run_it_exactly(saved, name, loader):
    want = logits(sibo.load_sibo_model(base(saved), saved / name))
    other = str(saved / ("H" if name != "H" else "P"))
    model = load(loader, saved, str(saved / name), other)
    torch.testing.assert_close(logits(model.eval()), want, rtol=0, atol=1e-6)
    plain = PeftModel.from_pretrained(base(saved), str(saved / name), config=plain_config(saved / name))
    assert (logits(plain) - want).abs().max() > 1e-3  # what PEFT ran before: the plain adapter


def test_peft_loaded_adapter_disables_to_the_base_and_unloads_without_hooks(saved):
    model = PeftModel.from_pretrained(base(saved), str(saved / "parallel"))
    with model.disable_adapter():
        assert torch.equal(logits(model), logits(base(saved)))
    assert torch.equal(logits(model.unload()), logits(base(saved)))


def test_lambda_zero_leaves_no_settings(tmp_path):
    model = sibo.get_sibo_model(
        build_tiny_model("llama", VOCAB), BottleneckConfig(bottleneck_size=4), lam=0.0
    )
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["sibo"] is None


def test_a_learnt_lambda_trained_after_peft_loaded_it_is_saved_back_by_peft(saved, tmp_path):
    model = PeftModel.from_pretrained(base(saved), str(saved / "learnt"), is_trainable=True)
    lambdas = model.base_model.sibo_lambdas["default"].logits
    before = lambdas.detach().clone()
    model(input_ids=IDS, labels=IDS).loss.backward()
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.grad is not None:
                parameter.sub_(parameter.grad)
    assert not torch.equal(lambdas, before)
    model.save_pretrained(tmp_path)  # PEFT's own save, as Trainer's
    assert (
        json.loads((tmp_path / "adapter_config.json").read_text())["sibo"]["lambda_logits"]
        == lambdas.tolist()
    )
    want = logits(model.eval())
    for loaded in (
        sibo.load_sibo_model(base(saved), tmp_path),
        PeftModel.from_pretrained(base(saved), str(tmp_path)),
    ):
        torch.testing.assert_close(logits(loaded), want, rtol=0, atol=1e-6)


def test_peft_without_sibo_refuses_it(saved):
    refused = run_without_sibo(f"""
        from peft import PeftModel
        from transformers import AutoModelForCausalLM
        try:
            PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained({str(saved / "base")!r}), {str(saved / "H")!r})
        except KeyError as error:
            print("refused:", error)
    """)
    assert refused == ["refused: 'BOTTLENECK'"]


@pytest.mark.parametrize("loader", ["sibo", "PeftModel.from_pretrained"])
def test_a_mixed_batch_of_bottleneck_adapters_is_refused_not_run_as_the_active_one(saved, loader):
    path = saved / "H"
    model = (
        sibo.load_sibo_model(base(saved), path)
        if loader == "sibo"
        else PeftModel.from_pretrained(base(saved), str(path))
    )
    with pytest.raises(InputError) as error:
        model(input_ids=IDS, adapter_names=["default", "__base__"])
    assert str(error.value) == (
        "adapter_names= (a batch of several adapters) runs LoRA adapters only, not BottleneckModel's: "
        "run one adapter per batch (set_adapter)"
    )
