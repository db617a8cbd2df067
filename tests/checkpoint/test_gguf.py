"""GGUF bases: a tiny F32 GGUF written here loads as the very model of its safetensors copy, in every verb."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from peft import LoraConfig
from safetensors.torch import load_file

from sibo import get_sibo_model, load_sibo_model
from sibo.checkpoint.load import load_model
from sibo.cli import main as cli_main
from sibo.prompts import build_prompt
from sibo.study.synthetic import generate_splits, write_records
from sibo.testing import build_tiny_model, build_tokenizer, write_llama_gguf

pytest.importorskip("gguf")

TEMPLATE = "{% for message in messages %}<s>{{ message['role'] }}: {{ message['content'] }}</s>{% endfor %}"
TRAIN, TEST = generate_splits(16, 3, seed=5)
INSTRUCTION = TEST[0]["instruction"]


def write_bases(root, tied: bool):
    """(GGUF file, safetensors folder) holding one tiny LLaMA; 2 KV heads of 4, so q and k permute apart."""
    tokenizer = build_tokenizer([build_prompt(r["instruction"]) + r["output"] for r in TRAIN], vocab_size=320)
    tokenizer.chat_template = TEMPLATE
    model = build_tiny_model("llama", len(tokenizer), num_key_value_heads=2, tie_word_embeddings=tied)
    (root / "gguf").mkdir()
    write_llama_gguf(model, tokenizer, root / "gguf" / "tiny.gguf")
    model.save_pretrained(root / "hf")
    tokenizer.save_pretrained(root / "hf")
    return root / "gguf" / "tiny.gguf", root / "hf"


@pytest.fixture(scope="module", params=[False, True], ids=["untied", "tied"])
def bases(request, tmp_path_factory):
    return write_bases(tmp_path_factory.mktemp("bases"), tied=request.param)


@pytest.fixture(scope="module")
def tied_bases(tmp_path_factory):
    """Tied embeddings, as SmolLM2's GGUF has them."""
    return write_bases(tmp_path_factory.mktemp("tied"), tied=True)


def logits(model, tokenizer) -> torch.Tensor:
    batch = tokenizer([build_prompt(INSTRUCTION), "12 plus 7 is"], return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**batch).logits


def test_file_and_folder_load_the_safetensors_model_with_the_files_tokenizer(bases):
    gguf_file, hf_dir = bases
    reference, reference_tokenizer = load_model(str(hf_dir))
    for source in (gguf_file, gguf_file.parent):
        model, tokenizer = load_model(str(source))
        assert type(model) is type(reference) and not getattr(model, "is_quantized", False)
        assert getattr(model.config, "quantization_config", None) is None
        assert model.name_or_path == str(gguf_file)  # what an adapter trained on it records
        assert torch.equal(logits(model, tokenizer), logits(reference, reference_tokenizer))
        text = TEST[1]["instruction"]
        assert tokenizer(text).input_ids == reference_tokenizer(text).input_ids
        chat = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
        assert chat == "<s>user: hi</s>"
        assert (tokenizer.pad_token, tokenizer.eos_token, tokenizer.padding_side) == ("<pad>", "</s>", "left")


def test_weights_come_in_the_dtype_asked_for(bases):
    gguf_file, hf_dir = bases
    model, tokenizer = load_model(str(gguf_file), dtype="bf16")
    reference, _ = load_model(str(hf_dir), dtype="bf16")
    assert {parameter.dtype for parameter in model.parameters()} == {torch.bfloat16}
    assert torch.equal(logits(model, tokenizer), logits(reference, tokenizer))


def test_a_gguf_base_saves_and_reloads(bases, tmp_path):
    model, tokenizer = load_model(str(bases[0]))
    model.save_pretrained(tmp_path / "saved")
    tokenizer.save_pretrained(tmp_path / "saved")
    reloaded, reloaded_tokenizer = load_model(str(tmp_path / "saved"))
    assert torch.equal(logits(reloaded, reloaded_tokenizer), logits(model, tokenizer))
    assert reloaded_tokenizer.chat_template == TEMPLATE


@pytest.mark.parametrize("targets", [["q_proj", "up_proj"], ["q_proj", "embed_tokens"]], ids=["ffn", "embed"])
def test_an_adapter_on_a_gguf_base_saves_quietly_and_reloads(tied_bases, tmp_path, recwarn, targets):
    """PEFT's default looks for config.json at the base's path (a GGUF has none) to see if the vocabulary
    grew, or copies the embedding matrices when embeddings are targeted: sibo never resizes, so neither."""
    base, tokenizer = load_model(str(tied_bases[0]))
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False)
    boosted = get_sibo_model(base, lora, lam=0.3, targets="all").eval()  # q_proj takes h0
    boosted.save_pretrained(tmp_path / "adapter")
    assert [str(w.message) for w in recwarn if "config file" in str(w.message)] == []
    assert [str(w.message) for w in recwarn if "save_embedding_layers" in str(w.message)] == []
    reloaded = load_sibo_model(load_model(str(tied_bases[0]))[0], tmp_path / "adapter").eval()
    assert torch.equal(logits(reloaded, tokenizer), logits(boosted, tokenizer))


@pytest.mark.integration
def test_export_merges_a_sibo_adapter_on_a_gguf_base(tied_bases, tmp_path, capsys):
    gguf_file, _ = tied_bases
    base, tokenizer = load_model(str(gguf_file))
    lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    boosted = get_sibo_model(base, lora, lam=0.3).eval()
    boosted.save_pretrained(tmp_path / "adapter")
    expected = logits(boosted, tokenizer)
    argv = ["export", "--base_model", str(gguf_file), "--weights_path", str(tmp_path / "adapter")]
    assert cli_main([*argv, "--dtype", "fp32", "--output_dir", str(tmp_path / "out")]) == 0
    assert capsys.readouterr().out.startswith("exact export: merged base + SIBO residual adapter")
    merged, merged_tokenizer = load_model(str(tmp_path / "out"))
    assert torch.allclose(logits(merged, merged_tokenizer), expected, atol=1e-5)
    assert merged_tokenizer.chat_template == TEMPLATE
    # without --dtype a GGUF base (quantized, as a rule) exports in bf16
    assert cli_main([*argv, "--output_dir", str(tmp_path / "bf16")]) == 0
    assert capsys.readouterr().out.rstrip().endswith("MB (bfloat16)")
    assert {tensor.dtype for tensor in load_file(tmp_path / "bf16" / "model.safetensors").values()} == {
        torch.bfloat16
    }


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_every_verb_takes_a_gguf_base(tied_bases, tmp_path, capsys):
    gguf_file, hf_dir = tied_bases
    write_records(TRAIN, tmp_path / "train.json")
    write_records(TEST, tmp_path / "data" / "AddSub" / "test.json")
    training = ["--data_path", str(tmp_path / "train.json"), "--max_steps", "1", "--batch_size", "4",
                "--micro_batch_size", "4", "--val_set_size", "0", "--warmup_steps", "0",
                "--target_modules", "up_proj,down_proj"]  # fmt: skip
    adapter = tmp_path / "adapter"
    argv = ["finetune", "--base_model", str(gguf_file), "--output_dir", str(adapter)]
    assert cli_main([*argv, *training]) == 0
    recorded = json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert recorded == str(gguf_file)

    evaluation = ["--dataset", "AddSub", "--data_dir", str(tmp_path / "data"), "--num_beams", "1",
                  "--max_new_tokens", "4", "--batch_size", "3"]  # fmt: skip
    argv = ["evaluate", "--base_model", str(gguf_file.parent), "--weights_path", str(adapter)]
    assert cli_main([*argv, *evaluation, "--output_dir", str(tmp_path / "eval")]) == 0
    assert json.loads((tmp_path / "eval" / "summary.json").read_text())["datasets"]["AddSub"]["n"] == 3

    capsys.readouterr()
    answers = []
    for base in (gguf_file, hf_dir):  # the same greedy answer from the GGUF and its safetensors copy
        argv = ["generate", "--base_model", str(base), "--weights_path", str(adapter)]
        assert cli_main([*argv, "--prompt", INSTRUCTION, "--max_new_tokens", "6"]) == 0
        answers.append(capsys.readouterr().out)
    assert answers[0] == answers[1]

    argv = ["analyze", "--base_model", str(gguf_file), "--weights_path", str(adapter), "--n", "2"]
    assert (
        cli_main([*argv, "--data", str(tmp_path / "train.json"), "--output_dir", str(tmp_path / "an")]) == 0
    )
    assert json.loads((tmp_path / "an" / "analyze.json").read_text())["base_model"] == str(gguf_file)

    argv = ["sweep", "--base_model", str(gguf_file), "--output_dir", str(tmp_path / "sweep"), *training]
    argv += ["--lambdas", "0.2", "--seeds", "1", "--datasets", "AddSub", "--data_dir", str(tmp_path / "data")]
    assert cli_main([*argv, "--num_beams", "1", "--max_new_tokens", "4", "--eval_batch_size", "3"]) == 0
    assert (tmp_path / "sweep" / "sweep.csv").read_text().count("\n") == 2  # header + one run


def unsupported_architecture(path) -> None:
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), "rwkv6")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda path, real: path.write_bytes(b"not a model" * 50), "does not start with the GGUF magic"),
        (lambda path, real: path.write_bytes(real.read_bytes()[:300]), "cannot load GGUF base model"),
        (lambda path, real: path.write_bytes(real.read_bytes()[:-2000]), "cannot load GGUF base model"),
        (lambda path, real: unsupported_architecture(path), "architecture rwkv6 is not supported"),
        (lambda path, real: None, "does not exist"),
        (
            lambda path, real: [(path.parent / name).write_bytes(b"") for name in ("a.gguf", "b.gguf")],
            "holds 2 GGUF files",
        ),
    ],
    ids=["junk", "cut-in-header", "cut-in-tensors", "architecture", "missing", "two-files"],
)
def test_a_bad_gguf_is_one_line_and_exit_2(tied_bases, tmp_path, capsys, make, message):
    path = tmp_path / "model.gguf"
    make(path, tied_bases[0])
    base = str(tmp_path) if message == "holds 2 GGUF files" else str(path)
    assert cli_main(["generate", "--base_model", base, "--prompt", "hi"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("sibo generate: error: ") and message in error
    assert error.count("\n") == 1


@pytest.mark.parametrize(
    ("name", "parts"), [("tiny-00001-of-00002.gguf", 2), ("tiny.gguf", 3)], ids=["by-name", "by-metadata"]
)
def test_a_split_gguf_is_refused_in_one_line(tmp_path, capsys, name, parts):
    """Each file is a whole model, which transformers loads: the part's name, or its metadata, refuses it."""
    tokenizer = build_tokenizer(vocab_size=320)
    path = tmp_path / name
    write_llama_gguf(build_tiny_model("llama", len(tokenizer)), tokenizer, path, split_count=parts)
    assert cli_main(["generate", "--base_model", str(path), "--prompt", "hi"]) == 2
    assert capsys.readouterr().err == (
        f"sibo generate: error: {path} is one part of a GGUF split into {parts} files, which transformers "
        f"cannot read: merge them with `llama-gguf-split --merge {path} merged.gguf` and pass merged.gguf\n"
    )


def test_a_quant_type_gguf_cannot_dequantize_is_one_line(tied_bases, monkeypatch, capsys):
    import gguf

    def unsupported(data, qtype):
        raise NotImplementedError("Dequantization for IQ1_M is not yet implemented")

    monkeypatch.setattr(gguf, "dequantize", unsupported)
    assert cli_main(["generate", "--base_model", str(tied_bases[0]), "--prompt", "hi"]) == 2
    assert capsys.readouterr().err == (
        f"sibo generate: error: cannot load GGUF base model {tied_bases[0]}: "
        "Dequantization for IQ1_M is not yet implemented\n"
    )


def test_without_the_gguf_package_the_error_names_the_extra(tied_bases, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gguf", None)  # `import gguf` now raises ImportError
    assert cli_main(["generate", "--base_model", str(tied_bases[0]), "--prompt", "hi"]) == 2
    assert capsys.readouterr().err == (
        "sibo generate: error: a GGUF base model needs the gguf package: pip install 'sibo[gguf]'\n"
    )


@pytest.mark.parametrize("verbose", [[], ["-v"]])
def test_the_dequantizing_bar_shows_only_with_verbose(tied_bases, capfd, verbose):
    argv = ["generate", "--base_model", str(tied_bases[0]), "--prompt", "hi", "--max_new_tokens", "1"]
    capfd.readouterr()
    assert cli_main([*verbose, *argv]) == 0
    assert ("de-quantizing GGUF tensors" in capfd.readouterr().err) == bool(verbose)
