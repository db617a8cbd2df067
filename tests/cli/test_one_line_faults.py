"""Faults that used to end in a traceback: each is one stderr line, exit 2, nothing written or lost —
damaged adapter_config.json whatever the flags, non-UTF-8 data, a full disk however a library words it,
read-only folders, dangling symlinks, an export missing its residual, chat records in analyze."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from fault_checks import evaluate_args, finetune_args, refused, run, tmpfs

from sibo.testing import add_chat_template, build_tokenizer

DAMAGED_CONFIGS = {
    "empty": ("", "malformed JSON at line 1, column 1: Expecting value"),
    "truncated": ('{"peft_type": "LORA", "r', "malformed JSON at line 1, column 23: Unterminated string"),
    "r-eight": ('{"peft_type": "LORA", "r": "eight"}', "damaged: r must be a number, got 'eight'"),
    "list": ("[1, 2]", "damaged: a JSON object is expected, not a list"),
}


@pytest.mark.parametrize("damage", list(DAMAGED_CONFIGS))
@pytest.mark.parametrize("verb", ["generate", "export", "evaluate"])
def test_a_damaged_adapter_config_is_one_line_with_or_without_base_model(
    root, tmp_path, capsys, verb, damage
):
    adapter = shutil.copytree(root / "adapter4", tmp_path / "adapter")
    text, words = DAMAGED_CONFIGS[damage]
    (adapter / "adapter_config.json").write_text(text)
    argv = {
        "generate": ["generate", "--base_model", root / "base4", "--weights_path", adapter, "--prompt", "hi"],
        "export": ["export", "--base_model", root / "base4", "--weights_path", adapter, "--output_dir", tmp_path / "o"],
        "evaluate": evaluate_args(root, tmp_path / "o", adapter),
    }[verb]  # fmt: skip
    for flags in (
        argv,
        [arg for index, arg in enumerate(argv) if "--base_model" not in argv[index - 1 : index + 1]],
    ):
        line = refused(capsys, flags, tmp_path)
        assert line.startswith(f"sibo {verb}: error: {adapter / 'adapter_config.json'}: {words}"), line
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("name", "data", "where"),
    [
        ("bad.jsonl", b'{"instruction": "a", "output": "b"}\n{"instruction": "a\xff", "output": "b"}\n',
         "invalid start byte at byte 54, line 2"),
        ("bad.csv", b"instruction,output\na\xff,b\n", "invalid start byte at byte 20, line 2"),
    ],
    ids=["jsonl", "csv"],
)  # fmt: skip
def test_a_non_utf8_byte_in_data_is_one_line(root, tmp_path, capsys, name, data, where):
    (tmp_path / name).write_bytes(data)
    argv = finetune_args(root, tmp_path / "out")
    argv[argv.index("--data_path") + 1] = tmp_path / name
    line = refused(capsys, argv, tmp_path)
    assert line == f"sibo finetune: error: {tmp_path / name}: not UTF-8 text ({where})"
    if name.endswith(".jsonl"):
        line = refused(
            capsys, [*evaluate_args(root, tmp_path / "eval"), "--train_data", tmp_path / name], tmp_path
        )
        assert line == f"sibo evaluate: error: {tmp_path / name}: not UTF-8 text ({where})"


@pytest.mark.integration
def test_an_export_missing_its_residual_is_refused_by_name(root, tmp_path, capsys):
    out = tmp_path / "export"
    assert run(capsys, ["export", "--base_model", root / "base4", "--weights_path", root / "adapter4",
                        "--output_dir", out])[0] == 0  # fmt: skip
    (out / "sibo_residual" / "adapter_model.safetensors").unlink()
    line = refused(capsys, ["generate", "--base_model", out, "--prompt", "hi"], out)
    assert line == (
        f"sibo generate: error: no adapter weights in {out / 'sibo_residual'}: adapter_model.safetensors or "
        "adapter_model.bin is missing"
    )
    shutil.rmtree(out / "sibo_residual")
    line = refused(capsys, ["generate", "--base_model", out, "--prompt", "hi"], out)
    assert line == (
        f"sibo generate: error: the export at {out} is missing its SIBO residual adapter "
        f"({out / 'sibo_residual'}): export the adapter again"
    )


@pytest.mark.parametrize("verb", ["finetune", "evaluate", "export", "analyze", "demo", "sweep"])
def test_a_dangling_symlink_or_a_file_as_output_dir_is_one_line(root, tmp_path, capsys, verb):
    link = tmp_path / "out"
    link.symlink_to(tmp_path / "gone")
    argv = {
        "finetune": finetune_args(root, link),
        "evaluate": evaluate_args(root, link),
        "export": ["export", "--base_model", root / "base4", "--weights_path", root / "adapter4", "--output_dir", link],
        "analyze": ["analyze", "--base_model", root / "base4", "--data", root / "records.json", "--output_dir", link],
        "demo": ["demo", "--quick", "--base_model", root / "base4", "--output_dir", link],
        "sweep": ["sweep", *finetune_args(root, link)[1:], "--datasets", "AddSub", "--data_dir", root / "bench"],
    }[verb]  # fmt: skip
    line = refused(capsys, argv, tmp_path)
    assert (
        line
        == f"sibo {verb}: error: --output_dir {link} is a dangling symbolic link (to {tmp_path / 'gone'})"
    )
    link.unlink()
    link.write_text("mine")
    line = refused(capsys, argv, tmp_path)
    assert line == f"sibo {verb}: error: --output_dir {link} is a file, not a folder"


@pytest.fixture
def read_only_disk(tmp_path):
    """A read-only tmpfs at tmp_path/ro (root only): even root cannot write there."""
    yield from tmpfs(tmp_path / "ro", "ro,size=1m")


@pytest.mark.parametrize("verb", ["finetune", "evaluate", "export", "analyze"])
def test_a_read_only_output_folder_is_one_line(root, read_only_disk, capsys, verb):
    out = read_only_disk / "out"
    argv = {
        "finetune": finetune_args(root, out, "--max_steps", "1"),
        "evaluate": evaluate_args(root, out),
        "export": ["export", "--base_model", root / "base4", "--weights_path", root / "adapter4", "--output_dir", out],
        "analyze": ["analyze", "--base_model", root / "base4", "--data", root / "records.json", "--n", "2",
                    "--output_dir", out],
    }[verb]  # fmt: skip
    line = refused(capsys, argv, root)
    assert line == f"sibo {verb}: error: --output_dir {out}: cannot write there (Read-only file system)"


@pytest.mark.integration
def test_a_full_disk_worded_only_in_text_is_one_line(root, tmp_path, capsys, monkeypatch):
    tokenizer_class = type(build_tokenizer())

    def full(self, *args, **kwargs):
        raise Exception("No space left on device (os error 28)")  # as the tokenizers library raises it

    monkeypatch.setattr(tokenizer_class, "save_pretrained", full)
    out = tmp_path / "run"
    line = refused(capsys, finetune_args(root, out, "--max_steps", "2", "--save_step", "1"))
    assert line.startswith("sibo finetune: error: disk full while writing "), line
    assert line.endswith("no complete checkpoint was written"), line


@pytest.mark.integration
def test_analyze_reads_chat_records_as_finetune_does(tmp_path, capsys):
    from sibo.testing import build_tiny_model

    tokenizer = add_chat_template(build_tokenizer())
    build_tiny_model("llama", len(tokenizer), num_layers=2).save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    chats = tmp_path / "chats.jsonl"
    chats.write_text(
        json.dumps(
            {"conversations": [{"from": "human", "value": "Add 1 and 2."}, {"from": "gpt", "value": "3"}]}
        )
        + "\n"
        + json.dumps(
            {"messages": [{"role": "user", "content": "Add 2 and 2."}, {"role": "assistant", "content": "4"}]}
        )
        + "\n"
    )
    code, _, err = run(capsys, ["analyze", "--base_model", tmp_path / "base", "--data", chats, "--n", "2",
                                "--output_dir", tmp_path / "out"])  # fmt: skip
    assert code == 0, err
    assert json.loads((tmp_path / "out" / "analyze.json").read_text())["n"] == 2


@pytest.mark.parametrize("ratio", ["inf", "nan", "-1"])
def test_a_loraplus_ratio_that_is_not_finite_is_refused_where_parsed(root, tmp_path, capsys, ratio):
    line = refused(capsys, finetune_args(root, tmp_path / "out", "--loraplus_lr_ratio", ratio), tmp_path)
    assert line == (
        f"sibo finetune: error: --loraplus_lr_ratio must be 0 (off) or a positive finite number, got {float(ratio)}"
    )


@pytest.mark.integration
def test_generate_into_a_pipe_its_reader_left_stops_quietly_with_141(root):
    reader, writer = os.pipe()
    os.close(reader)  # as `sibo generate … | head -c 20` once head has its 20 bytes
    argv = ["generate", "--base_model", root / "base4", "--weights_path", root / "adapter4",
            "--prompt", "Add 1 and 2.", "--max_new_tokens", "8"]  # fmt: skip
    try:
        done = subprocess.run([sys.executable, "-m", "sibo", *map(str, argv)], stdout=writer,
                              stderr=subprocess.PIPE, text=True, timeout=120)  # fmt: skip
    finally:
        os.close(writer)
    assert done.returncode == 141, done.stderr
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr, done.stderr


def test_a_broken_pipe_other_than_stdouts_is_not_a_quiet_exit(root, monkeypatch, capsys):
    import sibo.cli.generate

    def lost_worker(args):
        raise BrokenPipeError(32, "Broken pipe")  # as a data worker's pipe, while stdout is fine

    monkeypatch.setattr(sibo.cli.generate, "run", lost_worker)
    with pytest.raises(BrokenPipeError):
        run(capsys, ["generate", "--base_model", root / "base4", "--prompt", "Add 1 and 2."])
