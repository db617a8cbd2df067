"""train/config.py: bad numbers and names are refused where the flags are parsed, before anything loads."""

from __future__ import annotations

import pytest
from fault_checks import finetune_args, refused


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--learning_rate", "inf"], "--learning_rate must be a positive finite number, got inf"),
        (["--learning_rate", "nan"], "--learning_rate must be a positive finite number, got nan"),
        (
            ["--adapter_name", "bottleneck", "--scaling", "nan"],
            "--scaling must be a finite number or 'learned', got nan",
        ),
        (
            ["--adapter_name", "bottleneck", "--scaling", "inf"],
            "--scaling must be a finite number or 'learned', got inf",
        ),
        (["--embedding_lambda", "nan"], "SIBO's λ must be a number in [0, 1], got nan"),
        (["--lora_dropout", "nan"], "--lora_dropout must be in [0, 1), got nan"),
        (["--seed", "-1"], "--seed must be in 0…4294967295, got -1"),
        (["--seed", str(2**32)], "--seed must be in 0…4294967295, got 4294967296"),
        (["--report_to", "wandbb"], "--report_to 'wandbb' is not an integration transformers knows"),
    ],
    ids=lambda value: "-".join(value) if isinstance(value, list) else "",
)
def test_bad_numbers_and_names_are_refused_where_they_are_parsed(root, tmp_path, capsys, flags, message):
    out = tmp_path / "out"
    line = refused(capsys, finetune_args(root, out, *flags), tmp_path)
    assert line.startswith(f"sibo finetune: error: {message}"), line
    assert not out.exists()


def test_sweep_refuses_a_seed_out_of_range(root, tmp_path, capsys):
    line = refused(capsys, ["sweep", *finetune_args(root, tmp_path / "sweep")[1:], "--seeds", "1,4294967296",
                            "--data_dir", root / "bench", "--datasets", "AddSub"], tmp_path)  # fmt: skip
    assert line == "sibo sweep: error: --seed must be in 0…4294967295, got 4294967296"
