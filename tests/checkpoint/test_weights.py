"""The guarded weights reader: damaged, truncated, wrong-format or unsafe files are refused by name, and every
verb turns that into one stderr line, exit code 2, nothing run and nothing written."""

from __future__ import annotations

import functools
import json
import os
import shutil

import pytest
import torch
from fault_checks import add_nan_adapter, evaluate_args, refused
from peft import LoraConfig
from safetensors.torch import load_file, save_file

from sibo import get_sibo_model
from sibo.checkpoint.load import load_model
from sibo.checkpoint.weights import check_weights_file
from sibo.cli import main as sibo_main
from sibo.errors import InputError
from sibo.testing import build_tiny_model, build_tokenizer, write_training_state

TENSORS = {"a": torch.arange(32, dtype=torch.float32).reshape(4, 8), "b": torch.ones(3)}


class RunsCode:
    """Pickles as a call of os.system: what torch.load without weights_only would run."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def zero_fill(path):
    path.write_bytes(bytes(path.stat().st_size))


def flip_header(path):
    """XOR 16 bytes at the start of the header: safetensors' header JSON, torch.save's zip entry header."""
    data = bytearray(path.read_bytes())
    start = 8 if path.suffix == ".safetensors" else 0
    for i in range(start, start + 16):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def unsafe_pickle(path):
    torch.save({"a": RunsCode(path.parent / "code-ran")}, path)


FAULTS = {
    "truncate": truncate,
    "zero-fill": zero_fill,
    "flip-header": flip_header,
    "unsafe-pickle": unsafe_pickle,
}
SAFETENSORS_FAULTS = ["truncate", "zero-fill", "flip-header"]


# ---------------------------------------------------------------- the reader


@pytest.mark.parametrize("fault", SAFETENSORS_FAULTS)
def test_damaged_safetensors_are_refused_by_name(tmp_path, fault):
    path = tmp_path / "model.safetensors"
    save_file(TENSORS, path)
    check_weights_file(path)
    FAULTS[fault](path)
    with pytest.raises(InputError, match=rf"^{path}: damaged or not a safetensors file \(.+\)$"):
        check_weights_file(path)


def test_extra_bytes_after_the_declared_end_are_refused(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file(TENSORS, path)
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(InputError, match="incomplete metadata"):
        check_weights_file(path)


def test_flips_in_the_tensor_data_go_undetected(tmp_path):
    # The format has no checksum: a flipped data byte is a valid file with another value (documented limit).
    path = tmp_path / "model.safetensors"
    save_file(TENSORS, path)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    check_weights_file(path)
    assert not torch.equal(load_file(path)["b"], TENSORS["b"])


@pytest.mark.parametrize("fault", list(FAULTS))
def test_damaged_or_unsafe_torch_files_are_refused_and_nothing_runs(tmp_path, fault):
    path = tmp_path / "adapter_model.bin"
    torch.save(TENSORS, path)
    check_weights_file(path)
    FAULTS[fault](path)
    message = "refused: the pickle holds more than plain tensors" if fault == "unsafe-pickle" else "damaged"
    with pytest.raises(InputError, match=rf"^{path}: {message}"):
        check_weights_file(path)
    assert not (tmp_path / "code-ran").exists()


def test_legacy_torch_files_pass(tmp_path):
    path = tmp_path / "adapter_model.bin"
    torch.save(TENSORS, path, _use_new_zipfile_serialization=False)
    check_weights_file(path)
    zero_fill(path)
    with pytest.raises(InputError, match="damaged or not a torch.save file"):
        check_weights_file(path)


# ---------------------------------------------------------------- every verb × every file kind


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny llama (safetensors and .bin), a SIBO LoRA on it (safetensors and the seed's .bin), records,
    an AddSub benchmark and an lm-eval task: all a verb needs to get as far as loading weights."""
    root = tmp_path_factory.mktemp("weights")
    tokenizer = build_tokenizer()
    base = build_tiny_model("llama", len(tokenizer))
    for name in ("base", "base_bin"):
        base.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    (root / "base_bin" / "model.safetensors").unlink()
    torch.save(base.state_dict(), root / "base_bin" / "pytorch_model.bin")
    lora = LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"], init_lora_weights=False
    )
    adapter = get_sibo_model(base, lora, lam=0.3)
    adapter.save_pretrained(root / "adapter")
    shutil.copytree(root / "adapter", root / "adapter_bin")
    (root / "adapter_bin" / "adapter_model.safetensors").unlink()
    torch.save(
        load_file(root / "adapter" / "adapter_model.safetensors"), root / "adapter_bin" / "adapter_model.bin"
    )

    records = [
        {"instruction": f"Add {a} and {b}.", "input": "", "output": str(a + b)}
        for a, b in [(1, 2), (3, 4)] * 4
    ]
    (root / "records.json").write_text(json.dumps(records))
    (root / "bench" / "AddSub").mkdir(parents=True)
    (root / "bench" / "AddSub" / "test.json").write_text(json.dumps([{**records[0], "answer": "3"}]))
    (root / "tasks").mkdir()
    (root / "tasks" / "faults.yaml").write_text(
        f"task: sibo_faults\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {root / 'records.json'}\n"
        "test_split: test\noutput_type: loglikelihood\ndoc_to_text: instruction\ndoc_to_target: output\n"
    )
    return root


def test_the_intact_files_load(saved):
    reference, _ = load_model(str(saved / "base"), str(saved / "adapter"))
    for base, adapter in (("base_bin", "adapter_bin"), ("base", "adapter_bin")):
        model, _ = load_model(str(saved / base), str(saved / adapter))
        for name, tensor in reference.state_dict().items():
            assert torch.equal(model.state_dict()[name], tensor), name


def checkpoint(out, adapter):
    """A complete Trainer checkpoint-2 of `adapter`, the only one in `out`."""
    directory = out / "checkpoint-2"
    shutil.copytree(adapter, directory)
    write_training_state(directory, 2)
    return directory / "adapter_model.safetensors"


VERBS = {  # verb -> its flags, given (root, base folder, adapter folder or None, output dir)
    "finetune": lambda r, b, a, o: ["--base_model", b, "--data_path", r / "records.json", "--output_dir", o,
                                    "--val_set_size", "0", *(["--resume_from_checkpoint", a] if a else [])],
    "evaluate": lambda r, b, a, o: ["--base_model", b, *(["--weights_path", a] if a else []), "--dataset", "AddSub",
                                    "--data_dir", r / "bench", "--output_dir", o, "--num_beams", "1"],
    "generate": lambda r, b, a, o: ["--base_model", b, *(["--weights_path", a] if a else []), "--prompt", "hi",
                                    "--max_new_tokens", "2"],
    "export": lambda r, b, a, o: ["--base_model", b, "--weights_path", a or r / "adapter", "--output_dir", o],
    "analyze": lambda r, b, a, o: ["--base_model", b, "--weights_path", *([a] if a else []), "--data",
                                   r / "records.json", "--n", "2", "--output_dir", o],
    "sweep": lambda r, b, a, o: ["--base_model", b, "--data_path", r / "records.json", "--output_dir", o,
                                 "--val_set_size", "0", "--datasets", "AddSub", "--data_dir", r / "bench"],
    "demo": lambda r, b, a, o: ["--quick", "--base_model", b, "--output_dir", o],
    "lm-eval": lambda r, b, a, o: ["--model", "sibo", "--model_args", f"pretrained={b}" + (f",peft={a}" if a else ""),
                                   "--tasks", "sibo_faults", "--include_path", r / "tasks", "--device", "cpu",
                                   "--output_path", o],
}  # fmt: skip
ADAPTER_VERBS = ["finetune", "evaluate", "generate", "export", "analyze", "lm-eval"]
KINDS = {  # kind -> (folder, damaged file, verbs that read it, faults)
    "base": ("base", "model.safetensors", list(VERBS), SAFETENSORS_FAULTS),
    "base-bin": ("base_bin", "pytorch_model.bin", list(VERBS), list(FAULTS)),
    "adapter": ("adapter", "adapter_model.safetensors", ADAPTER_VERBS, SAFETENSORS_FAULTS),
    "seed-bin": ("adapter_bin", "adapter_model.bin", ADAPTER_VERBS, list(FAULTS)),
    "checkpoint": ("adapter", "adapter_model.safetensors", ["finetune"], SAFETENSORS_FAULTS),
}
CASES = [
    (kind, verb, fault) for kind, (_, _, verbs, faults) in KINDS.items() for verb in verbs for fault in faults
]


@pytest.fixture
def fast_lm_eval(monkeypatch):
    """The harness indexes its ~14,000 built-in task files first (half a minute): only ours is needed."""
    lm_eval_tasks = pytest.importorskip("lm_eval.tasks")
    manager = functools.partial(lm_eval_tasks.TaskManager, include_defaults=False)
    monkeypatch.setattr(lm_eval_tasks, "TaskManager", manager)


@pytest.mark.integration
@pytest.mark.parametrize(("kind", "verb", "fault"), CASES, ids=["-".join(case) for case in CASES])
def test_a_damaged_file_is_one_line_exit_2_and_nothing_written(
    saved, tmp_path, capsys, request, kind, verb, fault
):
    if verb == "lm-eval":
        request.getfixturevalue("fast_lm_eval")
    folder, name, _, _ = KINDS[kind]
    damaged_folder = shutil.copytree(saved / folder, tmp_path / folder)
    out = tmp_path / "out"
    if kind == "checkpoint":
        out.mkdir()
        damaged = checkpoint(out, damaged_folder)
        shutil.rmtree(damaged_folder)
        adapter = damaged.parent
    else:
        damaged = damaged_folder / name
        adapter = damaged_folder if kind in ("adapter", "seed-bin") else None
    base = damaged_folder if kind.startswith("base") else saved / "base"
    FAULTS[fault](damaged)
    before = sorted(out.rglob("*")) if out.exists() else None

    code = sibo_main([verb, *map(str, VERBS[verb](saved, base, adapter, out))])

    captured = capsys.readouterr()
    assert code == 2, captured.err
    assert "Traceback" not in captured.err and captured.out == ""
    assert len(captured.err.splitlines()) == 1, captured.err
    line = captured.err.strip()
    assert line.startswith(f"sibo {verb}: error: ") and str(damaged) in line, line
    assert ("refused: the pickle" if fault == "unsafe-pickle" else "damaged") in line, line
    if kind == "checkpoint":
        assert "no earlier complete checkpoint" in line, line
    assert (sorted(out.rglob("*")) if out.exists() else None) == before
    assert not (damaged.parent / "code-ran").exists()


@pytest.mark.parametrize(
    ("kind", "fault", "message"),
    [
        ("base", truncate, "cannot load base model"),
        ("seed-bin", unsafe_pickle, "cannot read the adapter weights in"),
    ],
)
def test_what_slips_past_the_check_is_still_an_input_error(
    saved, tmp_path, monkeypatch, kind, fault, message
):
    for module in ("sibo.checkpoint.load", "sibo.checkpoint.peft_model"):
        monkeypatch.setattr(f"{module}.check_weights_dir", lambda *args: None)
    folder, name, _, _ = KINDS[kind]
    damaged = shutil.copytree(saved / folder, tmp_path / folder)
    fault(damaged / name)
    base, adapter = (damaged, None) if kind == "base" else (saved / "base", damaged)
    with pytest.raises(InputError, match=message):
        load_model(str(base), adapter and str(adapter))


@pytest.fixture(scope="module")
def root(root):
    add_nan_adapter(root)
    return root


@pytest.mark.integration
@pytest.mark.parametrize("verb", ["generate", "evaluate", "export", "analyze"])
def test_an_adapter_with_a_nan_is_refused_naming_the_tensor(root, tmp_path, capsys, verb):
    adapter = root / "nan_adapter"
    argv = {
        "generate": ["generate", "--base_model", root / "base4", "--weights_path", adapter, "--prompt", "hi"],
        "evaluate": evaluate_args(root, tmp_path / "out", adapter),
        "export": ["export", "--base_model", root / "base4", "--weights_path", adapter, "--output_dir", tmp_path / "out"],
        "analyze": ["analyze", "--base_model", root / "base4", "--weights_path", adapter, "--data",
                    root / "records.json", "--n", "2", "--output_dir", tmp_path / "out"],
    }[verb]  # fmt: skip
    line = refused(capsys, argv, adapter, tmp_path)
    assert line.startswith(f"sibo {verb}: error: {adapter / 'adapter_model.safetensors'}: tensor base_model.")
    assert "holds 1 non-finite value(s) (nan): damaged, or written by a run that diverged" in line
