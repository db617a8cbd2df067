"""Flags from dataclasses, for every verb: --help without torch, one default per flag, one-line
argparse errors, negative numbers, the recorded base model, --threads."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

import psutil
import pytest
import torch

from sibo.checkpoint.config import ModelConfig, default_threads
from sibo.checkpoint.load import load_model
from sibo.cli import VERBS
from sibo.cli import main as sibo_main
from sibo.cli.finetune import parse_config as parse_finetune
from sibo.cli.sweep import build_parser as build_sweep_parser
from sibo.errors import InputError
from sibo.testing import build_tiny_model, build_tokenizer

# lm-eval's --help is the harness's own CLI, which imports torch itself.
OWN_PARSERS = [verb for verb in VERBS if verb != "lm-eval"]
HEAVY = ("torch", "transformers", "peft", "accelerate", "datasets")


def test_help_imports_no_torch():
    script = (
        "import sys\n"
        "from sibo.cli import main\n"
        f"for argv in [['--help']] + [[verb, '--help'] for verb in {OWN_PARSERS!r}]:\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        f"print(sorted(name for name in {HEAVY!r} if name in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize("verb", OWN_PARSERS)
def test_help_shows_one_default_per_flag_none_on_required_flags_and_one_boolean_metavar(verb):
    parser = importlib.import_module(VERBS[verb][0]).build_parser()
    flags = [action for action in parser._actions if action.option_strings and action.dest != "help"]
    for action in flags:
        shown = (action.help or "").count("(default:")
        assert shown <= 1, (verb, action.dest, action.help)
        if action.required:
            assert shown == 0, (verb, action.dest, action.help)
        if action.nargs == "?":
            assert action.metavar == "BOOL", (verb, action.dest)


def test_the_same_flag_has_the_same_default_in_evaluate_and_sweep():
    evaluate = importlib.import_module("sibo.cli.evaluate").build_parser()
    sweep = build_sweep_parser()
    for flag in ("--num_beams", "--max_new_tokens", "--extraction"):
        assert evaluate.get_default(_dest(evaluate, flag)) == sweep.get_default(_dest(sweep, flag)), flag
    assert (
        evaluate.get_default("batch_size") == sweep.get_default(_dest(sweep, "--eval_batch_size")) == "auto"
    )


def _dest(parser, flag: str) -> str:
    return next(action.dest for action in parser._actions if flag in action.option_strings)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["evaluate", "--dataset"], "sibo evaluate: error: argument --dataset: expected one argument"),
        (["generate", "--nope"], "sibo generate: error: unrecognized arguments: --nope"),
        (["export", "--weights_path", "w"], "sibo export: error: the following arguments are required: --output_dir"),
        (["finetune", "--ffn", "maybe"], "sibo finetune: error: argument --ffn: expected True or False, got 'maybe'"),
        (
            ["evaluate", "--base_model", "b", "--dataset", "AddSub", "--load_8bit", "--load_4bit"],
            "sibo evaluate: error: choose one of --load_8bit and --load_4bit",
        ),
        (["generate", "--base_model", "b", "--prompt", "hi", "--threads", "0"], "sibo generate: error: --threads must be at least 1, got 0"),
    ],
)  # fmt: skip
def test_bad_flags_are_one_line_and_exit_2(argv, message, capsys):
    assert sibo_main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err == message + "\n"
    assert captured.out == ""


def test_a_negative_number_parses_in_space_form():
    with pytest.raises(InputError, match=r"^--learning_rate must be a positive finite number, got -0.0001$"):
        parse_finetune(["--base_model", "b", "--learning_rate", "-1e-4"])
    assert (
        parse_finetune(["--base_model", "b", "--embedding_lambda", "0", "--max_steps", "-1"]).max_steps == -1
    )


def _adapter_dir(tmp_path, recorded):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "base_model_name_or_path": recorded})
    )
    return adapter


def test_the_base_model_defaults_to_the_one_the_adapter_records(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    adapter = _adapter_dir(tmp_path, str(base))
    assert ModelConfig(weights_path=str(adapter)).base_model == str(base)
    assert ModelConfig(base_model="other", weights_path=str(adapter)).base_model == "other"


@pytest.mark.parametrize(
    ("recorded", "message"),
    [
        (None, "{adapter}/adapter_config.json records no base model: pass --base_model"),
        (
            "/no/such/base",
            "the base model recorded in {adapter}/adapter_config.json, /no/such/base, does not exist: "
            "pass --base_model",
        ),
    ],
)
def test_a_missing_recorded_base_model_is_one_clear_error(tmp_path, capsys, recorded, message):
    adapter = _adapter_dir(tmp_path, recorded)
    assert sibo_main(["generate", "--weights_path", str(adapter), "--prompt", "hi"]) == 2
    assert capsys.readouterr().err == "sibo generate: error: " + message.format(adapter=adapter) + "\n"


def test_no_base_model_and_no_adapter_is_an_error(capsys):
    assert sibo_main(["generate", "--prompt", "hi"]) == 2
    assert (
        capsys.readouterr().err == "sibo generate: error: --base_model is required without --weights_path\n"
    )


@pytest.mark.integration
def test_generate_finds_the_recorded_base_and_answers_as_with_it(tmp_path, capsys):
    from peft import LoraConfig

    from sibo import get_sibo_model

    tokenizer = build_tokenizer()
    base = tmp_path / "base"
    build_tiny_model("llama", len(tokenizer)).save_pretrained(base)
    tokenizer.save_pretrained(base)
    model, _ = load_model(str(base))
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "up_proj"], init_lora_weights=False)
    get_sibo_model(model, config, lam=0.3).save_pretrained(tmp_path / "adapter")
    recorded = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())[
        "base_model_name_or_path"
    ]
    assert recorded == str(base)
    common = [
        "--weights_path",
        str(tmp_path / "adapter"),
        "--prompt",
        "Add 2 and 3.",
        "--max_new_tokens",
        "4",
    ]
    assert sibo_main(["generate", "--base_model", str(base), *common]) == 0
    explicit = capsys.readouterr().out
    assert sibo_main(["generate", *common]) == 0
    assert capsys.readouterr().out == explicit


def test_default_threads_are_the_physical_cores_per_local_process(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    cores = min(psutil.cpu_count(logical=False), len(psutil.Process().cpu_affinity()))
    assert default_threads() == max(1, cores // 2)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert default_threads() == 3


def test_load_model_applies_threads(tmp_path):
    tokenizer = build_tokenizer()
    build_tiny_model("llama", len(tokenizer)).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)  # the suite's own setting: the load must change it
        load_model(str(tmp_path), threads=2)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize(("words", "share"), [([], False), (["--share_gradio"], True),
                                              (["--share_gradio", "False"], False)])  # fmt: skip
def test_generate_takes_upstreams_bare_share_gradio(words, share):
    parser = importlib.import_module(VERBS["generate"][0]).build_parser()
    assert parser.parse_args(["--ui", *words]).share is share
