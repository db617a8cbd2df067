"""Slow loads show progress without -v: a few plain lines when stderr is not a terminal, never a
carriage-return line per update; other library bars stay hidden."""

from __future__ import annotations

import logging

from transformers.utils import logging as hf_logging

from sibo.cli import console


def test_a_piped_gguf_load_is_five_log_lines_and_other_bars_are_hidden(caplog, capsys):
    with console(verbose=False), caplog.at_level(logging.INFO, logger="sibo"):
        for _ in hf_logging.tqdm(range(200), desc="Converting and de-quantizing GGUF tensors..."):
            pass
        for _ in hf_logging.tqdm(range(50), desc="Writing model shards"):
            pass
    lines = [r.getMessage() for r in caplog.records if r.name == "sibo.progress"]
    assert lines == [
        f"Converting and de-quantizing GGUF tensors {n}/200 ({n // 2}%)" for n in (0, 50, 100, 150, 200)
    ]
    captured = capsys.readouterr()
    assert "\r" not in captured.err and "Writing model shards" not in captured.err
