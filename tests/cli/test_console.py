"""What a verb shows on the console: sibo's own lines always; the libraries' logs, FutureWarnings and
transformers' per-load progress bars only with -v/--verbose, before or after the verb."""

from __future__ import annotations

import logging
import warnings

import pytest
from peft import LoraConfig
from transformers import AutoTokenizer
from transformers.utils import logging as hf_logging

from sibo import get_sibo_model
from sibo.cli import console
from sibo.cli import main as sibo_main
from sibo.testing import build_tiny_model, build_tokenizer


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("console")
    tokenizer = build_tokenizer()
    base = build_tiny_model("llama", len(tokenizer))
    base.save_pretrained(root / "base")
    tokenizer.save_pretrained(root / "base")
    adapter = LoraConfig(r=2, lora_alpha=4, target_modules=["up_proj"], init_lora_weights=False)
    get_sibo_model(base, adapter, lam=0.2).save_pretrained(root / "adapter")
    return root


@pytest.mark.integration
@pytest.mark.filterwarnings("default::FutureWarning")  # as outside pytest, whose settings ignore them
@pytest.mark.parametrize(
    ("before", "after"), [([], []), (["-v"], []), ([], ["-v"]), (["--verbose"], []), ([], ["--verbose"])]
)
def test_library_noise_shows_only_with_verbose(
    checkpoint, capfd, caplog, recwarn, monkeypatch, before, after
):
    # a library's deprecation warning during the load (which ones the libraries give changes with their releases)
    load_tokenizer = AutoTokenizer.from_pretrained.__func__

    def from_pretrained(cls, *args, **kwargs):
        warnings.warn("a library's deprecation", FutureWarning, stacklevel=2)
        return load_tokenizer(cls, *args, **kwargs)

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", classmethod(from_pretrained))
    argv = ["generate", "--base_model", str(checkpoint / "base"), "--weights_path", str(checkpoint / "adapter"),
            "--prompt", "Add 2 and 3.", "--max_new_tokens", "2"]  # fmt: skip
    assert sibo_main([*before, *argv, *after]) == 0
    verbose = bool(before or after)
    err = capfd.readouterr().err
    assert ("Loading weights" in err) == verbose  # transformers' bar, one per model load
    assert any("a library's deprecation" in str(w.message) for w in recwarn) == verbose
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("sibo")]
    assert ours[1:] == [  # sibo's own lines, either way, after the first (tests/cli/test_first_line.py)
        "SIBO λ=0.2 targets=ffn: boosted 2 of 2 adapted modules",
        "merged the adapter into the base weights for decoding; λ·ΔW·h0 kept on 2 modules",
    ]


def test_lm_eval_keeps_its_own_dash_v(monkeypatch):
    seen = []
    monkeypatch.setattr("sibo.cli.lm_eval.main", seen.append)
    assert sibo_main(["-v", "lm-eval", "--tasks", "piqa", "-v", "DEBUG"]) == 0
    assert seen == [["--tasks", "piqa", "-v", "DEBUG"]]  # after the verb, -v is the harness's --verbosity


def test_console_keeps_sibo_info_and_restores_what_it_changed():
    root = logging.getLogger()
    level = root.level
    for verbose in (False, True):
        with console(verbose):
            assert logging.getLogger("sibo.train.recipe").isEnabledFor(logging.INFO)
            assert logging.getLogger("matplotlib.font_manager").isEnabledFor(logging.INFO) == verbose
        assert root.level == level
    assert hf_logging.set_tqdm_hook(None) is None  # no bar-hiding hook left behind


@pytest.mark.parametrize(("rank", "says"), [(None, True), ("0", True), ("1", False)])
def test_under_torchrun_only_rank_0_logs_setup(monkeypatch, rank, says):
    if rank is None:
        monkeypatch.delenv("RANK", raising=False)
    else:
        monkeypatch.setenv("RANK", rank)
    with console(False):
        assert logging.getLogger("sibo.train.recipe").isEnabledFor(logging.INFO) == says
        assert logging.getLogger("sibo.train.recipe").isEnabledFor(logging.WARNING)
