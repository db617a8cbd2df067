"""--config files: a key given twice (or two spellings of one flag) is refused naming both lines, list flags
take flat lists of plain values, sizes are bounded, the error line stays short whatever the file holds, and a
rerun from run_config.json says when its data changed."""

from __future__ import annotations

import json

import pytest
from fault_checks import finetune_args, make_root, refused, run, snapshot

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


def test_a_rerun_from_run_config_warns_when_its_data_changed(tmp_path, capsys, caplog, monkeypatch):
    root = make_root(tmp_path / "root")
    data = root / "records.json"
    assert run(capsys, finetune_args(root, tmp_path / "first", "--max_steps", "1"))[0] == 0
    recorded = tmp_path / "first" / "run_config.json"
    resolved = json.loads(recorded.read_text())["resolved"]
    assert resolved["data_records"] == 8 and len(resolved["data_fingerprint"]) == 16
    before = snapshot(tmp_path / "first")

    def rerun(name: str) -> list[str]:
        caplog.clear()
        code, _, err = run(capsys, ["finetune", "--config", recorded, "--output_dir", tmp_path / name])
        assert code == 0 and "Traceback" not in err, err
        return [
            r.getMessage()
            for r in caplog.records
            if r.levelname == "WARNING" and "is not the data" in r.getMessage()
        ]

    assert rerun("same") == []
    records = json.loads(data.read_text())
    data.write_text(json.dumps(records[:4]))
    warned = rerun("shrunk")
    shrunk = json.loads((tmp_path / "shrunk" / "run_config.json").read_text())["resolved"]
    assert warned == [
        f"{data} is not the data {recorded} trained on: it now holds 4 records, not 8; content fingerprint "
        f"{shrunk['data_fingerprint']}, not {resolved['data_fingerprint']}; training on the data as it is now"
    ]
    records[0]["output"] += " (edited)"
    data.write_text(json.dumps(records))
    edited = rerun("edited")
    assert len(edited) == 1 and "it now holds content fingerprint " in edited[0], edited
    assert snapshot(tmp_path / "first") == before
