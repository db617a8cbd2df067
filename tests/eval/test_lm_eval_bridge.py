"""The lm-evaluation-harness bridge: `--model sibo` scores the boosted adapter, `--model hf` would not."""

import functools
import json
import sys

import pytest
import torch
from peft import LoraConfig

from sibo import get_sibo_model
from sibo.checkpoint.load import load_model
from sibo.cli import main as sibo_main
from sibo.testing import build_tiny_model, build_tokenizer

pytest.importorskip("lm_eval")

WORDS = [("red", 1), ("a dog", 0), ("blue", 1), ("a car", 0), ("green", 1), ("a tree", 0)]
CHOICES = ["no", "yes"]  # the harness puts its target delimiter, " ", before each
TASK_YAML = """\
task: sibo_colors
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Is {{{{word}}}} a color?"
doc_to_choice: {choices}
doc_to_target: label
metric_list:
  - metric: acc
"""
# a task whose dataset lives on the Hub, as the harness's arc_easy
HUB_TASK_YAML = """\
task: sibo_arc
dataset_path: allenai/ai2_arc
dataset_name: ARC-Easy
test_split: test
output_type: multiple_choice
doc_to_text: "{{question}}"
doc_to_choice: "{{choices.text}}"
doc_to_target: 0
"""


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny LLaMA and a SIBO LoRA (λ=0.5, random B) on it, saved as `sibo finetune` would."""
    root = tmp_path_factory.mktemp("bridge")
    tokenizer = build_tokenizer([f"Is {word} a color? yes no" for word, _ in WORDS], vocab_size=300)
    base = build_tiny_model("llama", len(tokenizer), num_layers=2, hidden_size=32)
    tokenizer.save_pretrained(root / "base")
    base.save_pretrained(root / "base")
    lora = LoraConfig(r=4, lora_alpha=16, target_modules=["gate_proj", "up_proj"], init_lora_weights=False)
    get_sibo_model(base, lora, lam=0.5).save_pretrained(root / "adapter")
    return root


def reference_loglikelihood(model, tokenizer, context: str, continuation: str) -> float:
    """log p(continuation | context), tokenized as the harness does (whole string, context prefix cut)."""
    whole = tokenizer(context + continuation)["input_ids"]
    start = len(tokenizer(context)["input_ids"])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(torch.tensor([whole])).logits[0].float(), dim=-1)  # (T, V)
    return sum(logprobs[position - 1, whole[position]].item() for position in range(start, len(whole)))


def requests():
    from lm_eval.api.instance import Instance

    pairs = [(f"Is {word} a color?", f" {choice}") for word, _ in WORDS[:2] for choice in CHOICES]
    return pairs, [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]


def test_sibo_model_class_scores_the_boosted_adapter(saved):
    from lm_eval.models.huggingface import HFLM

    from sibo.eval.lm_eval_bridge import SiboLM

    base, adapter = str(saved / "base"), str(saved / "adapter")
    pairs, instances = requests()
    boosted, _ = load_model(base, adapter)
    expected = [reference_loglikelihood(boosted, _tokenizer(saved), *pair) for pair in pairs]

    def scores(lm) -> list[float]:
        return [value for value, _ in lm.loglikelihood(instances)]

    sibo = scores(SiboLM(pretrained=base, peft=adapter, device="cpu", batch_size=2))
    assert sibo == pytest.approx(expected, abs=1e-4)
    # with sibo imported, the harness's own class (PEFT's loader) runs the SIBO_LORA adapter exactly too
    harness = scores(HFLM(pretrained=base, peft=adapter, device="cpu", batch_size=2))
    assert harness == pytest.approx(expected, abs=1e-4)
    at_zero = scores(SiboLM(pretrained=base, peft=adapter, lam=0, device="cpu"))  # plain LoRA: other numbers
    assert max(abs(a - b) for a, b in zip(at_zero, sibo, strict=True)) > 1e-3


@pytest.mark.parametrize(("lam", "shown"), [("abc", "'abc'"), (True, "True")])
def test_a_lambda_that_is_no_number_is_named_before_any_model_loads(lam, shown):
    """The harness passes `lam=abc` on as text and `lam=true` as True."""
    from sibo.errors import InputError
    from sibo.eval.lm_eval_bridge import SiboLM

    with pytest.raises(InputError) as raised:
        SiboLM(pretrained="unused", lam=lam)
    assert str(raised.value) == f"lam must be a number, got {shown} (--model_args)"


def _tokenizer(saved):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(saved / "base")


def only_included_tasks(monkeypatch):
    """The harness indexes its ~14,000 built-in task files first (half a minute here): only ours are needed."""
    import lm_eval.tasks

    monkeypatch.setattr(
        lm_eval.tasks, "TaskManager", functools.partial(lm_eval.tasks.TaskManager, include_defaults=False)
    )


@pytest.mark.integration
def test_cli_runs_a_harness_task_with_the_sibo_model(saved, tmp_path, monkeypatch, caplog):
    only_included_tasks(monkeypatch)
    data = tmp_path / "colors.jsonl"
    data.write_text("".join(json.dumps({"word": word, "label": label}) + "\n" for word, label in WORDS))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "colors.yaml").write_text(TASK_YAML.format(data=data, choices=json.dumps(CHOICES)))
    out = tmp_path / "out"
    model_args = f"pretrained={saved / 'base'},peft={saved / 'adapter'}"
    argv = ["lm-eval", "--model", "sibo", "--model_args", model_args, "--tasks", "sibo_colors",
            "--include_path", str(tasks), "--device", "cpu", "--batch_size", "4", "--output_path", str(out)]  # fmt: skip
    assert sibo_main(argv) == 0
    assert (
        f"lm-eval model: {saved / 'base'} + {saved / 'adapter'} (SIBO λ=0.5 targets=ffn)" in caplog.messages
    )

    [results_file] = out.rglob("results_*.json")
    accuracy = json.loads(results_file.read_text())["results"]["sibo_colors"]["acc,none"]
    boosted, _ = load_model(str(saved / "base"), str(saved / "adapter"))
    tokenizer = _tokenizer(saved)
    picks = []
    for word, _ in WORDS:
        scores = [
            reference_loglikelihood(boosted, tokenizer, f"Is {word} a color?", f" {c}") for c in CHOICES
        ]
        picks.append(scores.index(max(scores)))
    assert accuracy == pytest.approx(
        sum(p == label for p, (_, label) in zip(picks, WORDS, strict=True)) / len(WORDS)
    )


def test_cli_without_the_harness_says_how_to_install_it(monkeypatch, capsys):
    monkeypatch.delitem(sys.modules, "sibo.eval.lm_eval_bridge", raising=False)
    for name in [name for name in sys.modules if name.split(".")[0] == "lm_eval"] + ["lm_eval"]:
        monkeypatch.setitem(sys.modules, name, None)  # as if the harness were not installed
    assert sibo_main(["lm-eval", "--tasks", "arc_easy"]) == 2
    assert capsys.readouterr().err == (
        "sibo lm-eval: error: sibo lm-eval needs lm-evaluation-harness: pip install 'sibo[eval]'\n"
    )


def test_cli_says_in_one_line_when_a_tasks_dataset_is_out_of_reach(
    saved, tmp_path, monkeypatch, capfd, offline
):
    only_included_tasks(monkeypatch)
    (tmp_path / "arc.yaml").write_text(HUB_TASK_YAML)
    argv = ["lm-eval", "--model", "sibo", "--model_args", f"pretrained={saved / 'base'}", "--tasks", "sibo_arc",
            "--include_path", str(tmp_path), "--device", "cpu"]  # fmt: skip
    capfd.readouterr()
    assert sibo_main(argv) == 2
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Retry" not in err
    # the harness's INFO lines only with -v: the error line alone
    assert len(err.splitlines()) == 1
    assert err.splitlines()[-1] == (
        "sibo lm-eval: error: Couldn't reach 'allenai/ai2_arc' on the Hub (OfflineModeIsEnabled); "
        f"{offline} cannot be reached: pass a local folder or file, or set HF_HUB_OFFLINE=1 to load it from "
        "the Hugging Face cache"
    )
