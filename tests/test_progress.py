"""Slow loads show progress without -v: a few plain lines when stderr is not a terminal, never a
carriage-return line per update; other library bars stay hidden; sibo's own bars, piped, a line per tenth."""

from __future__ import annotations

import importlib.util
import logging
import re
import sys

from transformers.utils import logging as hf_logging

from sibo import progress
from sibo.cli import console
from sibo.progress import bar


def test_a_piped_slow_load_is_five_log_lines_and_other_bars_are_hidden(caplog, capsys, monkeypatch):
    monkeypatch.setattr(progress, "SHOW_AFTER_S", 0.0)  # as if dequantizing took half a minute
    with console(verbose=False), caplog.at_level(logging.INFO, logger="sibo"):
        for _ in hf_logging.tqdm(range(200), desc="Converting and de-quantizing GGUF tensors..."):
            pass
        for _ in hf_logging.tqdm(range(50), desc="Writing model shards"):
            pass
    lines = [r.getMessage() for r in caplog.records if r.name == "sibo.progress"]
    assert all(line.startswith("Converting and de-quantizing GGUF tensors ") for line in lines)
    assert [int(re.search(r"\((\d+)%\)", line)[1]) // 25 for line in lines] == [
        0,
        1,
        2,
        3,
        4,
    ]  # a quarter each
    assert lines[-1].startswith("Converting and de-quantizing GGUF tensors 200/200 (100%) in 00:")
    captured = capsys.readouterr()
    assert "\r" not in captured.err and "Writing model shards" not in captured.err


def test_a_load_over_in_a_blink_stays_silent(caplog, capsys):
    with console(verbose=False), caplog.at_level(logging.INFO, logger="sibo"):
        for _ in hf_logging.tqdm(range(20), desc="Loading weights"):
            pass
    assert not [r for r in caplog.records if r.name == "sibo.progress"]
    assert "Loading weights" not in capsys.readouterr().err


def test_a_piped_bar_is_a_log_line_per_tenth_with_time_rate_and_postfix(caplog, capsys):
    with caplog.at_level(logging.INFO, logger="sibo"):  # under capsys stderr is no terminal: piped
        progress_bar = bar(total=40, desc="AddSub", unit="ex")
        for n in range(1, 41):
            progress_bar.set_postfix(acc=f"{n / 40:.3f}", refresh=False)  # as evaluate's bar
            progress_bar.update(1)
        progress_bar.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "sibo.progress"]
    assert [int(re.search(r"\((\d+)%\)", line)[1]) // 10 for line in lines] == list(range(11))  # 2 %, 10 %, …
    assert re.fullmatch(r"AddSub 40/40 \(100%\) in 00:00, [\d.e+]+ ex/s, acc=1.000", lines[-1]), lines[-1]
    assert capsys.readouterr().err == ""


def _announced(caplog, module: str, body) -> list[str]:
    """The log lines of `body()` run inside announced_before(module, …), each prefixed by when it came."""
    caplog.set_level(logging.INFO, logger="sibo.progress")
    lines = []
    try:
        with progress.announced_before(module, "to test", base="/nowhere"):
            lines.append(f"inside: {[r.getMessage() for r in caplog.records]}")
            body()
    except ValueError:
        pass
    return [*lines, f"after: {[r.getMessage() for r in caplog.records]}"]


FIRST = "loading base /nowhere (not found) to test …"


def test_announced_before_logs_when_the_module_is_first_looked_for(caplog):
    def body():
        assert not caplog.records
        # transformers asks so whether torch is installed, just before it imports it
        importlib.util.find_spec("sibo_test_not_a_module")
        assert [r.getMessage() for r in caplog.records] == [FIRST]
        importlib.util.find_spec("sibo_test_not_a_module")

    assert _announced(caplog, "sibo_test_not_a_module", body) == ["inside: []", f"after: {[FIRST]}"]


def test_announced_before_logs_at_the_end_of_a_block_that_never_looks_for_it(caplog):
    assert _announced(caplog, "sibo_test_not_a_module", lambda: None) == ["inside: []", f"after: {[FIRST]}"]


def test_a_block_that_fails_before_the_module_is_looked_for_logs_nothing(caplog):
    def body():
        raise ValueError("a bad value")

    assert _announced(caplog, "sibo_test_not_a_module", body) == ["inside: []", "after: []"]
    assert not any(isinstance(finder, progress._BeforeImport) for finder in sys.meta_path)


def test_announced_before_a_module_already_imported_logs_at_once(caplog):
    assert _announced(caplog, "json", lambda: None) == [f"inside: {[FIRST]}", f"after: {[FIRST]}"]
