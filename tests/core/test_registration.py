"""SIBO_LORA: a boosted LoRA adapter runs exactly in PEFT's and transformers' loaders with sibo imported, and
is refused by PEFT without sibo; a λ = 0 adapter stays a plain LORA folder."""

import json
import math
import shutil
import subprocess
import sys

import pytest
import torch
from peft import AutoPeftModelForCausalLM, LoraConfig, PeftModel
from transformers import AutoModelForCausalLM
from without_sibo import run_without_sibo

import sibo
from sibo.errors import InputError
from sibo.testing import build_tiny_model

VOCAB = 64
IDS = torch.randint(3, VOCAB, (2, 7), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A base model folder and two SIBO adapters trained on it: λ 0.4 fixed, and a learnt λ moved off its start."""
    root = tmp_path_factory.mktemp("sibo_lora")
    build_tiny_model("llama", VOCAB).save_pretrained(root / "base")
    for name, learnable in (("fixed", False), ("learnt", True)):
        torch.manual_seed(1 if learnable else 2)
        lora = LoraConfig(r=4, target_modules=["q_proj", "up_proj", "down_proj"], init_lora_weights=False)
        model = sibo.get_sibo_model(base(root), lora, lam=0.4, targets="all", learnable_lambda=learnable)
        if learnable:
            with torch.no_grad():
                model.sibo_lambdas["default"].logits.add_(torch.tensor([0.3, -0.2]))
        model.save_pretrained(root / name)
    return root


def base(root):
    return AutoModelForCausalLM.from_pretrained(root / "base", dtype=torch.float32).eval()


def logits(model):
    return logits_of(model, IDS)


def logits_of(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_a_boosted_adapter_says_sibo_lora_with_its_settings(saved):
    stored = json.loads((saved / "learnt" / "adapter_config.json").read_text())
    assert stored["peft_type"] == "SIBO_LORA"
    block = stored["sibo"]
    assert (block["lam"], block["targets"], block["learnable_lambda"]) == (0.4, "all", True)
    start = math.log(0.4 / 0.6)  # λ 0.4's logit, then moved by the fixture's [+0.3, −0.2]
    assert block["lambda_logits"] == pytest.approx([start + 0.3, start - 0.2], abs=1e-6)
    model = sibo.load_sibo_model(base(saved), saved / "learnt")
    assert block["lambda_logits"] == model.sibo_lambdas["default"].logits.tolist()


@pytest.mark.parametrize("name", ["fixed", "learnt"])
@pytest.mark.parametrize("loader", ["PeftModel.from_pretrained", "AutoPeftModel", "PeftModel.load_adapter",
                                    "transformers.load_adapter"])  # fmt: skip
def test_peft_and_transformers_loaders_run_it_exactly(saved, name, loader):
    want = logits(sibo.load_sibo_model(base(saved), saved / name))
    path = str(saved / name)
    if loader == "PeftModel.from_pretrained":
        model = PeftModel.from_pretrained(base(saved), path)
    elif loader == "AutoPeftModel":
        model = AutoPeftModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    elif loader == "PeftModel.load_adapter":  # a second adapter beside the first, then made active
        model = PeftModel.from_pretrained(
            base(saved), str(saved / ("learnt" if name == "fixed" else "fixed"))
        )
        model.load_adapter(path, "other")
        model.set_adapter("other")
    else:
        model = base(saved)
        model.load_adapter(path)
    torch.testing.assert_close(logits(model.eval()), want, rtol=0, atol=1e-6)
    plain = PeftModel.from_pretrained(base(saved), path, config=sibo.core.registration.plain_config(path))
    assert (logits(plain) - want).abs().max() > 1e-3  # what PEFT ran before: plain LoRA


def test_peft_loaded_adapter_disables_to_the_base_and_refuses_to_merge(saved):
    model = PeftModel.from_pretrained(base(saved), str(saved / "fixed"))
    with model.disable_adapter():
        assert torch.equal(logits(model), logits(base(saved)))
    with pytest.raises(InputError, match=r"^merging would drop SIBO's λ·ΔW·h0 term"):
        model.merge_and_unload()
    assert torch.equal(logits(model.unload()), logits(base(saved)))  # every hook gone with the adapter


def peft_loaded_pair(saved):
    """Both adapters loaded the PEFT way, "fixed" active."""
    model = PeftModel.from_pretrained(base(saved), str(saved / "fixed"), adapter_name="fixed")
    model.load_adapter(str(saved / "learnt"), "learnt")
    model.set_adapter("fixed")
    return model


def test_peft_loaded_adapters_run_a_mixed_batch_each_on_its_rows(saved):
    ids = torch.cat([IDS, IDS[:1]])
    want = {
        name: logits_of(sibo.load_sibo_model(base(saved), saved / name), ids) for name in ("fixed", "learnt")
    }
    want["__base__"] = logits_of(base(saved), ids)
    names = ["fixed", "__base__", "learnt"]
    with torch.no_grad():
        mixed = peft_loaded_pair(saved).eval()(input_ids=ids, adapter_names=names).logits
    for row, name in enumerate(names):
        torch.testing.assert_close(mixed[row], want[name][row], rtol=1e-5, atol=1e-5)


def test_boosting_one_peft_loaded_adapter_keeps_the_others_boost_and_learnt_lambda(saved, tmp_path):
    want = logits(sibo.load_sibo_model(base(saved), saved / "learnt"))
    model = sibo.boost_adapter(peft_loaded_pair(saved), sibo.SiboConfig(lam=0.3), "fixed")
    model.set_adapter("learnt")
    torch.testing.assert_close(logits(model.eval()), want, rtol=0, atol=1e-6)
    assert sibo.sibo_settings(model, "fixed").lam == 0.3
    # saved, each folder says what the adapter now runs with: fixed's new λ, learnt's λ as trained on
    with torch.no_grad():
        model.sibo_lambdas["learnt"].logits.add_(0.5)
    trained = model.sibo_lambdas["learnt"].logits.tolist()
    model.save_pretrained(tmp_path)
    assert sibo.sibo_settings(sibo.load_sibo_model(base(saved), tmp_path / "fixed")).lam == 0.3
    reloaded = PeftModel.from_pretrained(base(saved), str(tmp_path / "learnt"))
    assert reloaded.base_model.sibo_lambdas["default"].logits.tolist() == trained
    # boosted with λ 0, it is a plain LoRA folder again
    sibo.boost_adapter(model, sibo.SiboConfig(lam=0.0), "fixed")
    model.save_pretrained(tmp_path / "again", selected_adapters=["fixed"])
    stored = json.loads((tmp_path / "again" / "fixed" / "adapter_config.json").read_text())
    assert stored["peft_type"] == "LORA" and "sibo" not in stored


def test_sibo_load_adapter_takes_a_sibo_lora_folder_under_a_new_name(saved):
    model = sibo.load_sibo_model(base(saved), saved / "learnt")
    model.load_adapter(str(saved / "fixed"), "fixed")
    model.set_adapter("fixed")
    want = logits(sibo.load_sibo_model(base(saved), saved / "fixed"))
    torch.testing.assert_close(logits(model), want, rtol=0, atol=1e-6)
    assert sibo.sibo_settings(model, "fixed").lam == 0.4


def test_lambda_zero_stays_a_plain_lora_folder(tmp_path):
    lora = LoraConfig(r=4, target_modules=["up_proj"], init_lora_weights=False)
    model = sibo.get_sibo_model(build_tiny_model("llama", VOCAB), lora, lam=0.0)
    model.save_pretrained(tmp_path)
    stored = json.loads((tmp_path / "adapter_config.json").read_text())
    assert stored["peft_type"] == "LORA" and "sibo" not in stored


def test_peft_without_sibo_refuses_it(saved):
    refused = run_without_sibo(f"""
        from peft import PeftModel
        from transformers import AutoModelForCausalLM
        for load in (lambda m: PeftModel.from_pretrained(m, {str(saved / "fixed")!r}),
                     lambda m: m.load_adapter({str(saved / "fixed")!r})):
            try:
                load(AutoModelForCausalLM.from_pretrained({str(saved / "base")!r}))
            except KeyError as error:
                print("refused:", error)
            else:
                raise SystemExit("loaded")
    """)
    assert refused == ["refused: 'SIBO_LORA'"] * 2


@pytest.mark.parametrize(
    "imports",
    [
        "import sibo; assert 'torch' not in sys.modules; import sibo.train.recipe",  # transformers probes peft first
        "import peft; import sibo",
        "import sibo; from peft import PeftModel",
    ],
)
def test_import_sibo_teaches_peft_the_type_in_any_order(imports):
    script = f"import sys; {imports}; from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING as M; print(M['SIBO_LORA'])"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert done.stdout.strip() == "<class 'sibo.core.registration.SiboLoraConfig'>", done.stderr[-2000:]


def train_one_step(model):
    """One SGD step on every trainable parameter; returns the λ logits before it."""
    before = model.base_model.sibo_lambdas["default"].logits.detach().clone()
    loss = model(input_ids=IDS, labels=IDS).loss
    loss.backward()
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.grad is not None:
                parameter.sub_(1.0 * parameter.grad)
    return before


def test_a_learnt_lambda_trained_after_peft_loaded_it_is_saved_back_by_peft(saved, tmp_path):
    frozen = PeftModel.from_pretrained(base(saved), str(saved / "learnt"))
    assert not frozen.base_model.sibo_lambdas["default"].logits.requires_grad
    model = PeftModel.from_pretrained(base(saved), str(saved / "learnt"), is_trainable=True)
    lambdas = model.base_model.sibo_lambdas["default"].logits
    assert lambdas.requires_grad and any(p is lambdas for p in model.parameters())
    before = train_one_step(model)
    assert not torch.equal(lambdas, before)
    model.save_pretrained(tmp_path)  # PEFT's own save, as Trainer's
    stored = json.loads((tmp_path / "adapter_config.json").read_text())["sibo"]
    assert stored["lambda_logits"] == lambdas.tolist()
    want = logits(model.eval())
    for loaded in (
        sibo.load_sibo_model(base(saved), tmp_path),
        PeftModel.from_pretrained(base(saved), str(tmp_path)),
    ):
        torch.testing.assert_close(logits(loaded), want, rtol=0, atol=1e-6)


@pytest.mark.parametrize(("logits", "words"), [
    ([float("nan"), 0.1], "the SIBO settings (its 'sibo' block) are damaged (lambda_logits must be finite numbers, "
                          "one per block)"),
    ([0.1, 0.2, 0.3], "the learnt λ has 3 values (lambda_logits), the model 2 transformer blocks: one per block"),
])  # fmt: skip
def test_a_damaged_learnt_lambda_is_refused_by_sibos_and_pefts_loaders(saved, tmp_path, logits, words):
    shutil.copytree(saved / "learnt", tmp_path / "adapter")
    file = tmp_path / "adapter" / "adapter_config.json"
    stored = json.loads(file.read_text())
    file.write_text(json.dumps({**stored, "sibo": {**stored["sibo"], "lambda_logits": logits}}))
    with pytest.raises(InputError) as error:
        sibo.load_sibo_model(base(saved), tmp_path / "adapter")
    assert str(error.value) == f"{file if 'damaged' in words else tmp_path / 'adapter'}: {words}"
    with pytest.raises(InputError) as error:
        PeftModel.from_pretrained(base(saved), str(tmp_path / "adapter"))
    assert str(error.value) == f"adapter_config.json: {words}"
