"""`sibo <verb> --config FILE`: YAML or JSON settings under the verb's flag names (upstream's spellings too),
the command line winning, a finetune run's run_config.json repeating the run, one line for a bad file."""

from __future__ import annotations

import importlib
import json

import pytest

from sibo.cli import VERBS
from sibo.cli import main as sibo_main
from sibo.cli.finetune import parse_config as parse_finetune
from sibo.errors import InputError
from sibo.testing import build_tiny_model, build_tokenizer

OWN_PARSERS = [verb for verb in VERBS if verb != "lm-eval"]

# upstream's spellings: embedding_lambda, lora_target_modules, a `--`-prefixed key, YAML's yes
RUN_YAML = """\
base_model: some/base
data_path: math.jsonl
embedding_lambda: 0.2
lora_target_modules: [q_proj, v_proj]
--lora_r: 16
ffn: yes
learning_rate: 3e-4
max_steps: -1
resume_from_checkpoint: null
"""
RUN_JSON = {
    "base_model": "some/base",
    "data_path": "math.jsonl",
    "embedding_lambda": 0.2,
    "lora_target_modules": ["q_proj", "v_proj"],
    "--lora_r": 16,
    "ffn": True,
    "learning_rate": 0.0003,
    "max_steps": -1,
    "resume_from_checkpoint": None,
}


def _written(tmp_path, name: str, text: str) -> str:
    (tmp_path / name).write_text(text)
    return str(tmp_path / name)


@pytest.mark.parametrize("name", ["run.yaml", "run.json"])
def test_a_config_file_sets_the_flags_it_names(tmp_path, name):
    text = RUN_YAML if name == "run.yaml" else json.dumps(RUN_JSON)
    config = parse_finetune(["--config", _written(tmp_path, name, text)])
    assert (config.base_model, config.data_path, config.embedding_lambda) == ("some/base", "math.jsonl", 0.2)
    assert (config.target_modules, config.lora_r, config.ffn) == (["q_proj", "v_proj"], 16, True)
    assert (config.learning_rate, config.max_steps, config.resume_from_checkpoint) == (3e-4, -1, None)
    # what the file leaves out keeps the flag's default
    assert (config.lora_alpha, config.seed, config.adapter_name) == (16, 42, "lora")


def test_flags_on_the_command_line_win_before_or_after_config(tmp_path):
    path = _written(tmp_path, "run.yaml", RUN_YAML)
    config = parse_finetune(
        ["--lora_r", "4", f"--config={path}", "--embedding_lambda", "0", "--ffn", "False"]
    )
    assert (config.lora_r, config.embedding_lambda, config.ffn) == (4, 0.0, False)
    assert config.target_modules == ["q_proj", "v_proj"]
    # a list flag typed after the file replaces the file's list
    assert parse_finetune(["--config", path, "--target_modules", "k_proj"]).target_modules == ["k_proj"]


# one setting per verb, and where it lands in the parsed flags
EVERY_VERB = {
    "demo": ("methods: [LoRA, LoRA-SIBO]\n", "methods", ["LoRA", "LoRA-SIBO"]),
    "finetune": ("base_model: b\nlora_r: 4\n", "lora_r", 4),
    "evaluate": ("dataset: [gsm8k, AddSub]\nlam: 0.3\n", "datasets", "gsm8k,AddSub"),
    "generate": ("prompt: Add 2 and 3.\ntemperature: 0.5\n", "instruction", "Add 2 and 3."),
    "export": ("weights_path: w\noutput_dir: o\nformat: state_dict\n", "format", "state_dict"),
    "serve": ("weights_path: w\nport: 8123\nmax_batch_size: 4\n", "port", 8123),
    "analyze": ("data: d.json\nweights_path: [a, b]\n", "weights_paths", ["a", "b"]),
    "sweep": ("base_model: b\nlambdas: [0, 0.1]\n", "lambdas", ["0", "0.1"]),
}


@pytest.mark.parametrize("verb", OWN_PARSERS)
def test_every_verb_takes_a_config_file(tmp_path, verb):
    text, dest, expected = EVERY_VERB[verb]
    parser = importlib.import_module(VERBS[verb][0]).build_parser()
    args = parser.parse_args(["--config", _written(tmp_path, f"{verb}.yaml", text)])
    assert getattr(args, dest) == expected


@pytest.mark.integration
def test_run_config_json_repeats_the_run(tmp_path, capsys):
    tokenizer = build_tokenizer()
    build_tiny_model("llama", len(tokenizer)).save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    records = [{"instruction": f"Add {i} and {i}.", "input": "", "output": str(2 * i)} for i in range(8)]
    (tmp_path / "d.json").write_text(json.dumps(records))
    first, second = tmp_path / "first", tmp_path / "second"
    assert sibo_main(["finetune", "--base_model", str(tmp_path / "base"), "--data_path", str(tmp_path / "d.json"),
                      "--output_dir", str(first), "--val_set_size", "0", "--batch_size", "2", "--micro_batch_size",
                      "2", "--max_steps", "2", "--warmup_steps", "0", "--lora_r", "4", "--embedding_lambda", "0.3",
                      "--lora_target_modules", '["q_proj","up_proj"]', "--ffn", "True"]) == 0  # fmt: skip
    assert (
        sibo_main(["finetune", "--config", str(first / "run_config.json"), "--output_dir", str(second)]) == 0
    )
    capsys.readouterr()
    settings = [json.loads((run / "run_config.json").read_text())["config"] for run in (first, second)]
    assert settings[1] == {**settings[0], "output_dir": str(second)}
    losses = [json.loads((run / "train_metrics.json").read_text())["train_loss"] for run in (first, second)]
    assert losses[0] == losses[1]


BAD_FILES = [
    ("u.yaml", "lora_rank: 4\n", "{path}: unknown key 'lora_rank': the closest flag is --lora_r"),
    ("z.yaml", "zzzz: 1\n", "{path}: unknown key 'zzzz': `sibo finetune --help` lists the flags"),
    ("m.yaml", "lora_r: [4\n", "{path}: malformed YAML at line 2, column 1: expected ',' or ']', but got '<stream end>'"),
    ("m.json", '{"lora_r": 4,}', "{path}: malformed JSON at line 1, column 14: Expecting property name enclosed in double quotes"),
    ("l.yaml", "- lora_r\n- 4\n", "{path}: expected flag: value settings, got a list"),
    ("v.yaml", "lora_r: four\n", "{path}: argument --lora_r: invalid int value: 'four'"),
    ("f.yaml", "lora_dropout: high\n", "{path}: argument --lora_dropout: invalid float value: 'high'"),
    ("d.yaml", "lora_r:\n  value: 4\n", "{path}: lora_r: expected a value or a list, got a mapping"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "text", "message"), BAD_FILES, ids=[name for name, _, _ in BAD_FILES])
def test_a_bad_config_file_is_one_line_naming_it_exit_2(tmp_path, capsys, name, text, message):
    path = _written(tmp_path, name, text)
    assert sibo_main(["finetune", "--base_model", "b", "--config", path]) == 2
    captured = capsys.readouterr()
    assert captured.err == f"sibo finetune: error: {message.format(path=path)}\n"
    assert captured.out == ""


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--config", "absent.yaml"], "--config absent.yaml: no such file"),
        (["--config", "a.yaml", "--config=b.yaml"], "--config given twice: one file holds a run's settings"),
        (["--config"], "argument --config: expected one argument"),
        (["--conf", "a.yaml"], "--config must be written in full: its file is read before the other flags"),
    ],
)
def test_the_config_flag_itself(tmp_path, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.yaml").write_text("lora_r: 4\n")
    with pytest.raises(InputError) as raised:
        parse_finetune(["--base_model", "b", *argv])
    assert str(raised.value) == message


def test_an_empty_file_sets_nothing(tmp_path):
    config = parse_finetune(["--base_model", "b", "--config", _written(tmp_path, "empty.yaml", "")])
    assert config == parse_finetune(["--base_model", "b"])


@pytest.mark.parametrize("action", [{"overwrite": True}, {"resume_from_checkpoint": "latest"}])
def test_a_run_config_json_repeats_the_runs_settings_not_what_it_did_to_its_folder(tmp_path, action):
    recorded = {
        "base_model": "some/base",
        "data_path": "math.jsonl",
        "output_dir": "A",
        "lora_r": 8,
        **action,
    }
    path = _written(tmp_path, "run_config.json", json.dumps({"config": recorded, "resolved": {}}))
    config = parse_finetune(["--config", path, "--lora_r", "16"])
    assert (config.overwrite, config.resume_from_checkpoint) == (False, None)
    assert (config.base_model, config.output_dir, config.lora_r) == ("some/base", "A", 16)
    # a flags file the user wrote is the user's command: its overwrite stands
    flags = _written(tmp_path, "run.yaml", "base_model: some/base\noverwrite: true\n")
    assert parse_finetune(["--config", flags]).overwrite is True
