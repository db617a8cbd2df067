"""Slow loads show progress without -v: a few plain lines when stderr is not a terminal, never a
carriage-return line per update; other library bars stay hidden; sibo's own bars, piped, a line per tenth."""

from __future__ import annotations

import logging
import re

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
