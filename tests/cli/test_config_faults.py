"""--config files: a key given twice is refused naming both lines, list flags take flat lists of plain
values, sizes are bounded, and the error line stays short whatever the file holds."""

from __future__ import annotations

import pytest
from fault_checks import refused

ARGS = ["finetune", "--base_model", "base", "--data_path", "d.json", "--output_dir", "out"]

NESTED = "target_modules:\n  - &a [q, q, q, q, q, q, q, q, q]\n" + "".join(
    f"  - &{b} [{', '.join([f'*{a}'] * 9)}]\n" for a, b in zip("abcdef", "bcdefg", strict=True)
)


@pytest.mark.parametrize(
    ("name", "text", "words"),
    [
        ("dup.yaml", "learning_rate: 1e-4\nmax_steps: 2\nlearning_rate: 3e-4\n",
         "key 'learning_rate' given twice (lines 1 and 3): keep one"),
        ("dup.json", '{\n "learning_rate": 1e-4,\n "max_steps": 2,\n "learning_rate": 3e-4\n}\n',
         "key 'learning_rate' given twice (lines 2 and 4): keep one"),
        ("two.yaml", "lora_target_modules: [q_proj]\nmax_steps: 2\n--target_modules: [v_proj]\n",
         "lora_target_modules (line 1) and --target_modules (line 3) set the same flag: keep one"),
        ("two.json", '{"config": {\n "target_modules": ["q_proj"],\n "lora_dropout": 0,\n'
                     ' "lora_target_modules": ["v_proj"]\n}}\n',
         "target_modules (line 2) and lora_target_modules (line 4) set the same flag: keep one"),
        ("laughs.yaml", NESTED, "target_modules: expected a flat list of plain values, but item 0 is a list"),
        ("long.yaml", "target_modules: [" + ", ".join(["q"] * 10_001) + "]\n",
         "target_modules: 10,001 items, more than a list flag takes (10,000)"),
        ("big.yaml", "# " + "x" * (1 << 20) + "\n", "1,048,579 bytes, more than a flags file holds (1,048,576)"),
    ],
    ids=["yaml-twice", "json-twice", "yaml-two-spellings", "json-two-spellings", "billion-laughs", "long-list", "big-file"],
)  # fmt: skip
def test_a_bad_config_file_is_one_short_line(tmp_path, capsys, name, text, words):
    (tmp_path / name).write_text(text)
    line = refused(capsys, [*ARGS, "--config", tmp_path / name], tmp_path)
    assert line == f"sibo finetune: error: {tmp_path / name}: {words}"


def test_an_error_line_is_never_longer_than_a_few_hundred_characters(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text(f"data_columns: {'x' * 100_000}\n")
    line = refused(capsys, [*ARGS, "--config", tmp_path / "c.yaml"], tmp_path)
    assert line.startswith("sibo finetune: error: ") and len(line) <= 700, len(line)
