"""Slow loads show progress without -v: a few plain lines when stderr is not a terminal, never a
carriage-return line per update; other library bars stay hidden."""

from __future__ import annotations

import logging

from transformers.utils import logging as hf_logging

from sibo import progress
from sibo.cli import console


def test_a_piped_slow_load_is_five_log_lines_and_other_bars_are_hidden(caplog, capsys, monkeypatch):
    monkeypatch.setattr(progress, "SHOW_AFTER_S", 0.0)  # as if dequantizing took half a minute
    with console(verbose=False), caplog.at_level(logging.INFO, logger="sibo"):
        for _ in hf_logging.tqdm(range(200), desc="Converting and de-quantizing GGUF tensors..."):
            pass
        for _ in hf_logging.tqdm(range(50), desc="Writing model shards"):
            pass
    lines = [r.getMessage() for r in caplog.records if r.name == "sibo.progress"]
    assert all(line.startswith("Converting and de-quantizing GGUF tensors ") for line in lines)
    assert [int(line.split("(")[1].rstrip("%)")) // 25 for line in lines] == [0, 1, 2, 3, 4]  # one a quarter
    assert lines[-1].endswith("200/200 (100%)")
    captured = capsys.readouterr()
    assert "\r" not in captured.err and "Writing model shards" not in captured.err


def test_a_load_over_in_a_blink_stays_silent(caplog, capsys):
    with console(verbose=False), caplog.at_level(logging.INFO, logger="sibo"):
        for _ in hf_logging.tqdm(range(20), desc="Loading weights"):
            pass
    assert not [r for r in caplog.records if r.name == "sibo.progress"]
    assert "Loading weights" not in capsys.readouterr().err
