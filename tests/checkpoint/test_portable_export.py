"""The portable export: transformers alone (no sibo, no peft importable) loads it with the adapter's logits and
greedy generations; without trust_remote_code it refuses; sibo still reads it; it keeps the base's dtype."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from peft import LoraConfig
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from sibo import get_sibo_model
from sibo.checkpoint.export import ExportConfig, export_adapter
from sibo.checkpoint.load import load_model
from sibo.checkpoint.modeling_sibo import RESIDUAL_WEIGHTS, add_h0_terms
from sibo.checkpoint.portable import MODELING_FILE, base_config, saved_dtype
from sibo.cli import main as cli_main
from sibo.core.booster import find_boost
from sibo.testing import build_tiny_model, build_tokenizer, write_llama_gguf

ATOL = 1e-5
PROMPTS = ["The sum of 2 and 3 is", "hi"]
NEW_TOKENS = 8
# (case, architecture, learnable λ): every architecture family sibo boosts, and one per-block learnt λ
CASES = [
    ("llama", "llama", False),
    ("llama-learnt-lambda", "llama", True),
    ("qwen2", "qwen2", False),
    ("mistral", "mistral", False),
    ("gpt2", "gpt2", False),
    ("gptj", "gptj", False),
    ("bloom", "bloom", False),
]

# Runs in a python whose sys.path holds the standard library and a copy of site-packages without sibo and
# peft: it proves it can import neither, then loads each export with transformers alone.
CHILD = """
import importlib.util, json, os, sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
assert importlib.util.find_spec("sibo") is None and importlib.util.find_spec("peft") is None, sys.path
from transformers.utils import is_peft_available
assert not is_peft_available()
results = {}
for case, folder in json.loads(sys.argv[1]).items():
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.padding_side = "left"
    expected = torch.load(folder + "/../expected.pt")
    try:
        AutoModelForCausalLM.from_pretrained(folder)
        refused = ""
    except ValueError as error:
        refused = str(error)
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        deviation = (model(**batch).logits.float() - expected["logits"]).abs().max().item()
        generated = model.generate(**batch, do_sample=False, max_new_tokens=NEW_TOKENS, use_cache=True,
                                   pad_token_id=tokenizer.pad_token_id)
    resave_refused = []
    for save in (model.save_pretrained, model.push_to_hub):
        try:
            save(folder + "/../resaved")
        except NotImplementedError as error:
            resave_refused.append(str(error))
    results[case] = {"deviation": deviation, "generated": generated.tolist(), "refused": refused,
                     "class": type(model).__name__, "dtype": str(model.dtype), "resave_refused": resave_refused,
                     "resaved": os.path.exists(folder + "/../resaved")}
    eager = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, attn_implementation="eager")
    results[case]["attn"] = eager.config._attn_implementation
print("RESULTS " + json.dumps(results))
"""


RESAVE_REFUSED = (
    "this SIBO export would save as its merged base alone, a plain checkpoint without the λ·ΔW·h0 term: "
    "copy or upload the export folder as it is, or write a new one with `sibo export`"
)


def lora(arch: str) -> LoraConfig:
    return LoraConfig(
        r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False, fan_in_fan_out=arch == "gpt2"
    )


def clean_site_packages(root: Path) -> Path:
    """A folder linking every entry of this venv's site-packages but sibo's and peft's (their code, metadata
    and .pth files): a python started with -S and only this on its path cannot import either."""
    site = Path(transformers.__file__).resolve().parents[1]
    clean = root / "site-packages"
    clean.mkdir()
    for entry in site.iterdir():
        name = entry.name.lower()
        if name.startswith(("peft", "sibo", "__editable__")) or name.endswith(".pth"):
            continue
        (clean / entry.name).symlink_to(entry)
    return clean


def run_without_sibo(folders: dict[str, Path], root: Path) -> dict:
    script = f"PROMPTS = {PROMPTS!r}\nNEW_TOKENS = {NEW_TOKENS}\n" + CHILD
    env = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": str(clean_site_packages(root)),
        "HF_HUB_OFFLINE": "1",
        "HF_MODULES_CACHE": str(root / "modules"),  # where transformers copies modeling_sibo.py
        "HF_HOME": str(root / "hf_home"),
        "OMP_NUM_THREADS": "1",
    }
    folders = {case: str(folder) for case, folder in folders.items()}
    completed = subprocess.run(
        [sys.executable, "-S", "-c", script, json.dumps(folders)],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "RESULTS " in completed.stdout, completed.stdout[-3000:] + completed.stderr[-3000:]
    return json.loads(completed.stdout.split("RESULTS ")[-1].splitlines()[0])


def expected_outputs(model, tokenizer) -> dict[str, torch.Tensor]:
    """The adapter's logits and greedy generation under sibo (unmerged PEFT + SIBO hooks)."""
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = model(**batch).logits.float()
        generated = model.generate(
            **batch, do_sample=False, max_new_tokens=NEW_TOKENS, pad_token_id=tokenizer.pad_token_id
        )
    return {"logits": logits, "generated": generated, "batch": batch}


def export_case(root: Path, arch: str, learnable: bool, tokenizer) -> tuple[Path, dict]:
    model = get_sibo_model(
        build_tiny_model(arch, len(tokenizer)), lora(arch), lam=0.4, learnable_lambda=learnable
    ).eval()
    if learnable:  # blocks with different λ, so a mixed-up block index would show
        with torch.no_grad():
            find_boost(model).lambdas.logits.copy_(torch.tensor([-2.0, 1.0]))
    expected = expected_outputs(model, tokenizer)
    export_adapter(model, tokenizer, ExportConfig(root / "export"))
    torch.save({"logits": expected["logits"]}, root / "expected.pt")
    return root / "export", expected


def export_gguf_case(root: Path, tokenizer) -> tuple[Path, dict]:
    """A SIBO adapter on a GGUF base, exported by the CLI in fp32 (the default would be bf16)."""
    write_llama_gguf(
        build_tiny_model("llama", len(tokenizer), tie_word_embeddings=True), tokenizer, root / "b.gguf"
    )
    base, gguf_tokenizer = load_model(str(root / "b.gguf"))
    model = get_sibo_model(base, lora("llama"), lam=0.4).eval()
    model.save_pretrained(root / "adapter")
    expected = expected_outputs(model, gguf_tokenizer)
    argv = ["export", "--base_model", str(root / "b.gguf"), "--weights_path", str(root / "adapter")]
    assert cli_main([*argv, "--dtype", "fp32", "--output_dir", str(root / "export")]) == 0
    torch.save({"logits": expected["logits"]}, root / "expected.pt")
    return root / "export", expected


@pytest.fixture(scope="module")
def portable(tmp_path_factory):
    """Every case exported, and what a python without sibo and peft made of each: (expected, results)."""
    tokenizer = build_tokenizer()
    tokenizer.padding_side = "left"
    folders, expected = {}, {}
    for case, arch, learnable in CASES:
        folders[case], expected[case] = export_case(tmp_path_factory.mktemp(case), arch, learnable, tokenizer)
    folders["gguf"], expected["gguf"] = export_gguf_case(tmp_path_factory.mktemp("gguf"), tokenizer)
    return folders, expected, run_without_sibo(folders, tmp_path_factory.mktemp("child"))


@pytest.mark.integration
@pytest.mark.timeout(900)
@pytest.mark.parametrize("case", [case for case, _, _ in CASES] + ["gguf"])
def test_transformers_alone_loads_the_export_exactly(portable, case):
    folders, expected, results = portable
    result = results[case]
    assert result["deviation"] <= ATOL
    assert result["generated"] == expected[case]["generated"].tolist()
    assert not result["class"].startswith("SiboExport")  # the base architecture's own class, with hooks
    assert "trust_remote_code" in result["refused"]  # never the merged base alone
    assert result["resave_refused"] == [RESAVE_REFUSED] * 2 and not result["resaved"]
    assert result["attn"] == "eager"  # the caller's config settings reach the base
    # sibo's own loader still reads the folder (merged base + residual adapter through PEFT)
    reloaded, _ = load_model(str(folders[case]))
    with torch.no_grad():
        logits = reloaded(**expected[case]["batch"]).logits.float()
    torch.testing.assert_close(logits, expected[case]["logits"], atol=ATOL, rtol=0)


def test_the_modeling_file_is_versioned_and_self_contained(tmp_path):
    tokenizer = build_tokenizer()
    folder, _ = export_case(tmp_path, "llama", False, tokenizer)
    source = (folder / MODELING_FILE).read_text()
    imports = [line for line in source.splitlines() if line.startswith(("import ", "from "))]
    assert imports == [
        "from __future__ import annotations",
        "import json",
        "import torch",
        "from safetensors.torch import load_file",
        "from torch import nn",
        "from transformers import (",
        "from transformers.utils import cached_file",
    ]
    assert source.startswith('"""SIBO exact export, format version 1')
    config = json.loads((folder / "config.json").read_text())
    assert (config["model_type"], config["sibo_export_version"]) == ("sibo_export", 1)
    assert config["base_config"]["model_type"] == "llama"
    with pytest.raises(ValueError, match="trust_remote_code"):
        AutoModelForCausalLM.from_pretrained(folder)


def test_the_export_keeps_the_bases_dtype_and_says_its_size(tmp_path, capsys):
    tokenizer = build_tokenizer()
    base = build_tiny_model("llama", len(tokenizer)).to(torch.bfloat16)
    base.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    model = get_sibo_model(load_model(str(tmp_path / "base"))[0], lora("llama"), lam=0.4)
    model.save_pretrained(tmp_path / "adapter")
    argv = ["export", "--base_model", str(tmp_path / "base"), "--weights_path", str(tmp_path / "adapter")]
    assert cli_main([*argv, "--output_dir", str(tmp_path / "out")]) == 0

    size = sum(file.stat().st_size for file in (tmp_path / "out").rglob("*") if file.is_file())
    out = capsys.readouterr().out
    assert f"export size: {size / 1e6:.1f} MB (bfloat16)" in out
    assert json.loads((tmp_path / "out" / "config.json").read_text())["base_config"]["dtype"] == "bfloat16"
    assert {tensor.dtype for tensor in load_file(tmp_path / "out" / "model.safetensors").values()} == {
        torch.bfloat16
    }


def test_a_hub_bases_dtype_is_read_from_its_cached_config(tmp_path, monkeypatch):
    """A Hub id has no config.json beside it: the one cached when the base loaded says its dtype."""
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "dtype": "bfloat16"}))
    asked = []
    monkeypatch.setattr(
        transformers.utils,
        "cached_file",
        lambda repo, name, **kwargs: asked.append((repo, name)) or str(tmp_path / name),
    )
    assert saved_dtype("org/name", "auto") == torch.bfloat16 and asked == [("org/name", "config.json")]

    def not_cached(repo, name, **kwargs):
        raise OSError("not in the cache, and the Hub cannot be reached")

    monkeypatch.setattr(transformers.utils, "cached_file", not_cached)
    assert saved_dtype("org/name", "auto") is None  # as a base that records no dtype


class Int8Linear(torch.nn.Module):
    """What a bitsandbytes 8-bit layer holds, as a CPU stand-in (bitsandbytes needs CUDA): an int8 weight and a
    float scale per row; it computes in its input's dtype."""

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        scale = linear.weight.detach().abs().amax(dim=1, keepdim=True) / 127
        weight = (linear.weight.detach() / scale).round().to(torch.int8)
        self.weight = torch.nn.Parameter(weight, requires_grad=False)
        self.register_buffer("scale", scale)

    def dequantized(self) -> torch.Tensor:
        return self.weight.float() * self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(x, self.dequantized().to(x.dtype))


def quantize_blocks(model: torch.nn.Module, blocks: str, int8: bool) -> None:
    """Every Linear in the blocks as an Int8Linear, or (int8 False) as the float Linear it dequantizes to."""
    for name, module in list(model.get_submodule(blocks).named_modules()):
        if isinstance(module, torch.nn.Linear):
            quantized = Int8Linear(module)
            if not int8:
                dequantized = torch.nn.Linear(module.in_features, module.out_features, bias=False)
                dequantized.weight.data = quantized.dequantized()
                quantized = dequantized
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(blocks).get_submodule(parent), child, quantized)


def test_the_h0_terms_run_in_floats_on_a_quantized_base(tmp_path):
    """A portable export loaded in 8 bits: its modules' weights are integers, the h0 terms must not be."""
    folder, expected = export_case(tmp_path, "llama", False, build_tokenizer())
    blocks = json.loads((folder / "config.json").read_text())["blocks"]
    outputs = {}
    for int8 in (False, True):
        model = AutoModelForCausalLM.from_pretrained(folder, config=base_config(folder)).eval()
        quantize_blocks(model, blocks, int8)
        add_h0_terms(model, blocks, load_file(folder / RESIDUAL_WEIGHTS))
        assert model.get_submodule(blocks)[0].sibo_h0_down.dtype == torch.float32
        with torch.no_grad():
            outputs[int8] = model(**expected["batch"]).logits
    torch.testing.assert_close(outputs[True], outputs[False], atol=ATOL, rtol=0)


def test_a_loaded_export_refuses_to_save_as_its_merged_base(tmp_path):
    """save_pretrained or push_to_hub would write a plain checkpoint that silently lacks λ·ΔW·h0."""
    folder, _ = export_case(tmp_path, "llama", False, build_tokenizer())
    model = AutoModelForCausalLM.from_pretrained(folder, config=base_config(folder))
    add_h0_terms(
        model,
        json.loads((folder / "config.json").read_text())["blocks"],
        load_file(folder / RESIDUAL_WEIGHTS),
    )
    for save in (model.save_pretrained, model.push_to_hub):
        with pytest.raises(NotImplementedError) as refused:
            save(tmp_path / "resaved")
        assert str(refused.value) == RESAVE_REFUSED
    assert not (tmp_path / "resaved").exists()
