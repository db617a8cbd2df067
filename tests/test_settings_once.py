"""Each setting is declared once (issue 30, STYLE habit 11): a dataclass field named like a shared setting
lives in its group and nowhere else; verbs embed or inherit the group and rename its flags."""

from __future__ import annotations

import ast
from pathlib import Path

import sibo

SOURCE = Path(sibo.__file__).parent
# setting -> the one group that declares it
DECLARED = {
    "max_new_tokens": "decode/settings.py:TokenBudget",
    "num_beams": "decode/settings.py:DecodingSettings",
    "base_model": "checkpoint/config.py:BaseModelSource",
    "weights_path": "checkpoint/config.py:ModelConfig",
    "dtype": "checkpoint/config.py:ModelDtype",
    "trust_remote_code": "checkpoint/config.py:ModelLoading",
    "load_8bit": "checkpoint/config.py:ModelLoading",
    "load_4bit": "checkpoint/config.py:ModelLoading",
    "threads": "checkpoint/config.py:CpuThreads",
    "merge": "checkpoint/config.py:DecodingMerge",
    "host": "decode/listen.py:ListenAddress",  # serve's server and generate's page
    "port": "decode/listen.py:ListenAddress",
    "share": "decode/listen.py:ServeConfig",
    "template": "prompts.py:TemplateChoice",
    "datasets": "eval/config.py:EvalConfig",
    "data_dir": "eval/config.py:EvalConfig",
    "limit": "eval/config.py:EvalConfig",
    "exclude_seen": "eval/config.py:EvalConfig",
    "lambdas": "study/sweep_config.py:SweepConfig",  # sweep's flags come from it
    "seeds": "study/sweep_config.py:SweepConfig",
    "heldout": "study/sweep_config.py:SweepConfig",
    "heldout_seed": "study/sweep_config.py:SweepConfig",
    "margin": "study/sweep_config.py:SweepConfig",
}
# Settings that share a name but are not the same setting, so each is declared where it means what it does.
# Any other name declared twice fails test_no_other_setting_is_declared_twice: fold it, or say here why not.
SAME_NAME_OTHER_SETTING = {
    # each verb's own: its default and contents (./lora-alpaca, outputs/evaluate, sibo_demo, …), and handing
    # over that verb's files (the one rule is output_dir.claim_output_dir)
    "output_dir", "overwrite",
    # BottleneckConfig is a PEFT config (adapter_config.json's format), beside finetune's upstream flags
    "adapter_dropout", "bottleneck_size", "modules_to_save", "non_linearity", "scaling", "target_modules",
    "use_adapterp", "use_parallel_adapter", "sibo",  # sibo: SiboLoraConfig's too, the same file format
    # decoding's, training's, the demo's and analyze's: other meanings and defaults
    "batch_size", "seed",
    # the demo's small defaults (_DemoSizes, stored in demo_config.json) beside finetune's
    "learning_rate", "lora_r", "max_steps",
    # SiboConfig's λ beside ModelConfig's override and the demo's; finetune's flags are upstream's names
    # (--embedding_lambda, --learnable_lambda) mapped onto SiboConfig
    "lam", "learnable_lambda",
    # export's adapter of the PeftModel to merge; finetune's upstream --adapter_name is the adapter type
    "adapter_name",
}  # fmt: skip

# finetune's accuracy during training stores the benchmark settings under its own names (run_config.json's
# keys): eval_<name> reuses the benchmark setting's declaration (eval.config.benchmark_setting)
REUSED = {f"eval_{name}": name for name in ("datasets", "data_dir", "limit", "num_beams", "exclude_seen")}


def _is_dataclass(node: ast.ClassDef) -> bool:
    for decorator in node.decorator_list:
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        name = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", None)
        if name == "dataclass":
            return True
    return False


def _is_setting(statement: ast.stmt) -> bool:
    """A setting is declared with field(…, metadata={"help": …}) (train/config.py: its _field helper), as the
    flag generator needs; a bare annotation is a record's field (export_card.ExportFacts), not a setting."""
    value = getattr(statement, "value", None)
    called = value.func if isinstance(value, ast.Call) else None
    name = called.attr if isinstance(called, ast.Attribute) else getattr(called, "id", "")
    return (
        isinstance(statement, ast.AnnAssign)
        and isinstance(statement.target, ast.Name)
        and name.endswith("field")
    )


def dataclass_fields() -> dict[str, list[str]]:
    """Setting name -> 'path:Class' of every dataclass in src/sibo that declares it."""
    found: dict[str, list[str]] = {}
    for path in sorted(SOURCE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and _is_dataclass(node):
                for statement in node.body:
                    if _is_setting(statement):
                        where = f"{path.relative_to(SOURCE).as_posix()}:{node.name}"
                        found.setdefault(statement.target.id, []).append(where)
    return found


def test_each_shared_setting_is_declared_in_its_group_alone():
    found = dataclass_fields()
    assert {name: found.get(name) for name in DECLARED} == {name: [place] for name, place in DECLARED.items()}


def test_no_other_setting_is_declared_twice():
    declared_twice = {name for name, places in dataclass_fields().items() if len(places) > 1}
    assert declared_twice == SAME_NAME_OTHER_SETTING


def test_finetune_reuses_the_benchmark_settings_under_its_own_names():
    from dataclasses import fields

    from sibo.decode.settings import UPSTREAM_EVAL_BEAMS, DecodingSettings
    from sibo.eval.config import EvalConfig
    from sibo.train.config import FinetuneConfig

    declared = {f.name: f for f in fields(EvalConfig) + fields(DecodingSettings)}
    finetune = {f.name: f for f in fields(FinetuneConfig)}
    assert not set(REUSED) & set(dataclass_fields())  # no declaration of their own
    for name, setting in REUSED.items():
        assert finetune[name].metadata["help"] == declared[setting].metadata["help"], name
    assert finetune["eval_num_beams"].default == UPSTREAM_EVAL_BEAMS


def test_an_earlier_run_config_json_gives_the_folded_settings_as_before(tmp_path):
    """run_config.json stores asdict(FinetuneConfig) under "config": the folded settings keep their keys and
    defaults, so an earlier run's file still repeats the run (--config) and its folder still resumes."""
    import json
    from dataclasses import fields

    from sibo.cli._flags import dataclass_values
    from sibo.cli.finetune import build_parser
    from sibo.train.config import FinetuneConfig

    earlier = {"base_model": "m", "trust_remote_code": True, "load_8bit": False, "load_4bit": True, "threads": 3,
               "template": "chat", "eval_datasets": "AddSub", "eval_data_dir": "d", "eval_limit": 5,
               "eval_num_beams": 2, "eval_exclude_seen": True}  # fmt: skip
    file = tmp_path / "run_config.json"
    file.write_text(json.dumps({"config": earlier}))
    given = dataclass_values(build_parser().parse_args(["--config", str(file)]), FinetuneConfig)
    assert {name: given[name] for name in earlier} == earlier
    assert {f.name: f.default for f in fields(FinetuneConfig) if f.name in earlier} == {
        "base_model": "", "trust_remote_code": False, "load_8bit": False, "load_4bit": False, "threads": None,
        "template": "auto", "eval_datasets": "", "eval_data_dir": "", "eval_limit": None, "eval_num_beams": 4,
        "eval_exclude_seen": False,
    }  # fmt: skip


def test_the_finder_sees_inherited_groups_as_one_declaration():
    found = dataclass_fields()
    assert "study/analyze.py:AnalyzeConfig" not in found["base_model"]  # inherits BaseModelSource
    assert "study/demo.py:DemoConfig" not in found["base_model"] + found["max_new_tokens"]
    assert found["datasets"] == ["eval/config.py:EvalConfig"]  # evaluate's and sweep's flags come from it
    assert "checkpoint/export_card.py:ExportFacts" not in found.get(
        "base_model", []
    )  # a record, not a setting


def test_configs_built_from_groups_store_their_settings_in_the_old_order_and_values():
    """demo_config.json and analyze's run marker hold asdict(config): same keys, order and defaults."""
    from dataclasses import asdict, fields

    from sibo.study.analyze import AnalyzeConfig
    from sibo.study.demo import DemoConfig

    demo = asdict(DemoConfig())
    assert list(demo) == [
        "output_dir", "base_model", "methods", "lam", "num_train", "num_test", "max_steps", "batch_size",
        "learning_rate", "adapter_learning_rate", "lora_r", "bottleneck_size", "seed", "eval_batch_size",
        "max_new_tokens", "analyze_n", "threads",
    ]  # fmt: skip
    assert (demo["base_model"], demo["max_new_tokens"], demo["threads"]) == (None, 64, 1)
    assert [f.name for f in fields(AnalyzeConfig)] == [
        "data", "base_model", "weights_paths", "output_dir", "n", "batch_size", "max_length", "dtype", "overwrite",
        "threads",
    ]  # fmt: skip


def test_the_folded_flags_keep_each_verbs_names_defaults_and_help():
    """One declaration, and each verb's flag as before: serve's port 8000, generate's Gradio port, sweep's grid."""
    from importlib import import_module

    def flag(verb: str, option: str):
        parser = import_module(f"sibo.cli.{verb}").build_parser()
        return next(action for action in parser._actions if option in action.option_strings)

    def shown(verb: str, option: str) -> tuple:
        return flag(verb, option).default, flag(verb, option).help

    assert shown("serve", "--port") == (8000, "port to listen on (default: 8000)")
    assert shown("generate", "--port") == (None, "port (default: Gradio's, from 7860 up)")
    assert flag("generate", "--host").help == flag("serve", "--host").help
    merges = {flag(verb, "--merge").help for verb in ("generate", "evaluate", "serve")}
    assert len(merges) == 1 and "stay unmerged" in merges.pop()
    assert flag("analyze", "--dtype").help == flag("evaluate", "--dtype").help
    assert shown("sweep", "--lambdas") == (
        None,
        "λ values: 0,0.1,0.2 or [0,0.1,0.2] (default: --embedding_lambda)",
    )
    assert shown("sweep", "--margin")[0] == 0.002
