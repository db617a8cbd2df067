"""`sibo finetune` flags: the seed's command lines parse as they are, --help covers every flag, and
every bad input is one stderr line, exit code 2, and nothing written to output_dir."""

from __future__ import annotations

import json
import re
import shlex

import pytest

from sibo.cli import main as sibo_main
from sibo.cli.finetune import parse_config
from sibo.testing import build_tiny_model, build_tokenizer

# The seed README's single-GPU command, as written there (after `python finetune.py`).
SEED_README_FLAGS = r"""
  --base_model 'yahma/llama-7b-hf' \
  --data_path 'math_data.json' \
  --output_dir './trained_models/llama-lora' \
  --batch_size 16 \
  --micro_batch_size 4 \
  --num_epochs 3 \
  --learning_rate 3e-4 \
  --cutoff_len 256 \
  --val_set_size 120 \
  --adapter_name lora
"""
# The SIBO paper's LoRA command, target list unquoted as pasted into a shell.
SIBO_FLAGS = (
    "--adapter_name lora --embedding_lambda 0.1 --ffn True --lora_r 32 --lora_alpha 64 "
    '--target_modules ["q_proj","k_proj","v_proj","fc_in","fc_out"] --use_gradient_checkpointing'
)
SEED_FLAGS = [
    "base_model",
    "data_path",
    "output_dir",
    "adapter_name",
    "load_8bit",
    "batch_size",
    "micro_batch_size",
    "num_epochs",
    "learning_rate",
    "cutoff_len",
    "val_set_size",
    "use_gradient_checkpointing",
    "eval_step",
    "save_step",
    "lora_r",
    "lora_alpha",
    "lora_dropout",
    "lora_target_modules",
    "target_modules",
    "bottleneck_size",
    "non_linearity",
    "adapter_dropout",
    "use_parallel_adapter",
    "use_adapterp",
    "scaling",
    "train_on_inputs",
    "group_by_length",
    "wandb_project",
    "wandb_run_name",
    "wandb_watch",
    "wandb_log_model",
    "resume_from_checkpoint",
    "embedding_lambda",
    "ffn",
]
OUR_FLAGS = [
    "load_4bit",
    "sibo_targets",
    "learnable_lambda",
    "lambda_lr",
    "gradient_checkpointing",
    "seed",
    "report_to",
    "trust_remote_code",
    "max_steps",
    "warmup_steps",
    "packing",
    "save_total_limit",
    "logging_steps",
    "data_columns",
    "use_rslora",
    "init_lora_weights",
    "loraplus_lr_ratio",
    "modules_to_save",
]


@pytest.fixture(scope="module")
def base_model(tmp_path_factory):
    directory = tmp_path_factory.mktemp("base")
    tokenizer = build_tokenizer()
    build_tiny_model("llama", len(tokenizer)).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def test_help_documents_every_flag(capsys):
    with pytest.raises(SystemExit) as exited:
        sibo_main(["finetune", "--help"])
    assert exited.value.code == 0
    help_text = capsys.readouterr().out
    for flag in SEED_FLAGS + OUR_FLAGS:
        assert f"--{flag} " in help_text or f"--{flag}," in help_text, flag
    assert "(default: 128)" in help_text and "(default: 'tanh')" in help_text


def test_the_seed_readme_command_parses_as_written(tmp_path):
    argv = shlex.split(SEED_README_FLAGS.replace("\\\n", " "))
    argv[argv.index("--base_model") + 1] = str(tmp_path / "tiny")  # model and data swapped for local ones
    argv[argv.index("--data_path") + 1] = str(tmp_path / "math.json")
    config = parse_config(argv)
    assert (config.batch_size, config.micro_batch_size, config.num_epochs) == (16, 4, 3)
    assert (config.learning_rate, config.cutoff_len, config.val_set_size) == (3e-4, 256, 120)
    assert (config.adapter_name, config.output_dir) == ("lora", "./trained_models/llama-lora")
    assert (config.eval_step, config.save_step, config.lora_r) == (200, 200, 8)  # the seed's defaults


def test_the_sibo_command_parses_with_its_unquoted_module_list():
    config = parse_config(["--base_model", "m", *shlex.split(SIBO_FLAGS)])
    assert config.target_modules == ["q_proj", "k_proj", "v_proj", "fc_in", "fc_out"]
    assert (config.embedding_lambda, config.sibo_targets, config.lora_r, config.lora_alpha) == (
        0.1,
        "ffn",
        32,
        64,
    )
    assert config.use_gradient_checkpointing is True


@pytest.mark.parametrize(
    "spelling",
    [
        ['["q_proj","k_proj"]'],  # quoted, as JSON
        ["[q_proj,k_proj]"],  # what the shell leaves of the unquoted JSON
        ["q_proj,k_proj"],
        ['["q_proj",', '"k_proj"]'],  # JSON with a space, quoted word by word
        ["[q_proj,", "k_proj]"],  # ... and unquoted
        ["['q_proj', 'k_proj']"],  # a Python list
    ],
)
@pytest.mark.parametrize("flag", ["--target_modules", "--lora_target_modules"])
def test_module_lists_in_every_spelling(flag, spelling):
    assert parse_config(["--base_model", "m", flag, *spelling]).target_modules == ["q_proj", "k_proj"]


def test_booleans_in_the_seeds_spellings():
    config = parse_config(["--base_model", "m", "--train_on_inputs", "False", "--use_adapterp", "--ffn", "false",
                           "--group_by_length", "True", "--gradient_checkpointing"])  # fmt: skip
    assert (config.train_on_inputs, config.use_adapterp, config.group_by_length) == (False, True, True)
    assert (config.sibo_targets, config.use_gradient_checkpointing) == ("attn", True)
    assert parse_config(["--base_model", "m", "--scaling", "learned"]).scaling == "learned"
    assert parse_config(["--base_model", "m", "--scaling", "2"]).scaling == 2.0


RECORD = {"instruction": "Add 2 and 3.", "input": "", "output": "5"}
BAD_INPUTS = [
    ("data.json", '[\n{"instruction": "a", "output": "b"},\n{"instruction": "a" "output": "b"}]', [],
     r"data.json: malformed JSON at line 3, column 21"),
    ("data.jsonl", json.dumps(RECORD) + "\n" + json.dumps(RECORD)[:-3] + "\n", [], "data.jsonl: malformed JSON at line 2"),
    ("data.json", json.dumps([RECORD, {"instruction": "x"}]), [], "data.json: record 1: missing field 'output'"),
    ("data.jsonl", json.dumps({**RECORD, "input": 3}), [], "data.jsonl: line 1: field 'input' must be a string, got int"),
    ("data.json", "[]", [], "data.json: zero usable records"),
    ("data.json", json.dumps([RECORD] * 4), ["--val_set_size", "4"], "val_set_size 4 leaves no training records"),
    ("data.json", json.dumps([RECORD] * 4), ["--batch_size", "6"], "--batch_size 6 is not a multiple of --micro_batch_size 4"),
    ("data.json", json.dumps([RECORD] * 4), ["--load_8bit"], "--load_8bit needs a CUDA GPU"),
    ("data.json", json.dumps([RECORD] * 4), ["--resume_from_checkpoint", "latest"], "latest: no complete checkpoint in"),
    ("data.json", json.dumps([RECORD] * 4), ["--target_modules", "nope_proj"], "cannot add a lora adapter to"),
    ("data.json", json.dumps([RECORD] * 4), ["--cutoff_len", "8", "--train_on_inputs", "False"],
     "zero usable training records: every response is cut off at cutoff_len=8"),
    (None, "", [], "data file .*missing.json does not exist"),
    ("data.json", json.dumps([RECORD] * 4), [], "already holds checkpoints of another run"),
]  # fmt: skip


BAD_INPUT_IDS = [
    "malformed-json", "malformed-jsonl-line", "missing-field", "wrong-type", "zero-records", "no-train-left",
    "batch-not-divisible", "8bit-without-cuda", "no-checkpoint", "unknown-target-module", "all-cut-off",
    "missing-file", "stale-checkpoints",
]  # fmt: skip


@pytest.mark.integration
@pytest.mark.parametrize(("name", "text", "flags", "message"), BAD_INPUTS, ids=BAD_INPUT_IDS)
def test_bad_input_is_one_line_exit_2_and_nothing_written(
    base_model, tmp_path, capsys, name, text, flags, message
):
    data = tmp_path / (name or "missing.json")
    if name is not None:
        data.write_text(text)
    output_dir = tmp_path / "out"
    if message.startswith("already holds"):
        (output_dir / "checkpoint-10").mkdir(parents=True)
    before = sorted(output_dir.rglob("*")) if output_dir.exists() else None
    argv = ["finetune", "--base_model", str(base_model), "--data_path", str(data), "--output_dir", str(output_dir),
            "--val_set_size", "0", *flags]  # fmt: skip
    assert sibo_main(argv) == 2
    stderr = capsys.readouterr().err
    errors = [line for line in stderr.splitlines() if line.startswith("sibo finetune: error:")]
    assert len(errors) == 1, stderr
    assert re.search(message, errors[0]), errors[0]
    assert "Traceback" not in stderr
    assert (sorted(output_dir.rglob("*")) if output_dir.exists() else None) == before  # untouched
