"""Offline: a hub name fails at once in one line when the Hub cannot be reached; nothing is probed under
HF_HUB_OFFLINE=1; huggingface_hub's retry warnings stay off the console without -v."""

from __future__ import annotations

import http.server
import logging
import threading

import pytest
from huggingface_hub import constants

import sibo.hub
from sibo.cli import console
from sibo.cli import main as sibo_main
from sibo.hub import hub_reachable, require_hub
from sibo.testing import build_tiny_model, build_tokenizer


def unreachable(what: str, name: str, endpoint: str) -> str:
    return (
        f"{what} {name} is not a local path and {endpoint} cannot be reached: pass a local folder or file, "
        "or set HF_HUB_OFFLINE=1 to load it from the Hugging Face cache\n"
    )


def test_generate_with_an_unreachable_hub_model_says_so_in_one_line(offline, capsys):
    assert sibo_main(["generate", "--base_model", "Qwen/Qwen2.5-0.5B", "--prompt", "hi"]) == 2
    out, err = capsys.readouterr()
    assert (out, err) == (
        "",
        "sibo generate: error: " + unreachable("base model", "Qwen/Qwen2.5-0.5B", offline),
    )


def test_finetune_with_the_default_hub_dataset_offline_says_so_in_one_line(offline, tmp_path, capfd):
    tokenizer = build_tokenizer()
    build_tiny_model("llama", len(tokenizer)).save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    argv = ["finetune", "--base_model", str(tmp_path / "base"), "--output_dir", str(tmp_path / "out")]
    capfd.readouterr()
    assert sibo_main(argv) == 2
    err = capfd.readouterr().err
    assert err == "sibo finetune: error: " + unreachable("data_path", "yahma/alpaca-cleaned", offline)
    assert not (tmp_path / "out").exists()


def test_hf_hub_offline_skips_the_probe(monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(sibo.hub, "hub_reachable", lambda endpoint: pytest.fail("probed the Hub"))
    assert require_hub("Qwen/Qwen2.5-0.5B", "base model") is None  # the libraries read the cache only


def test_any_http_answer_means_the_hub_is_reachable(offline):
    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), NotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert hub_reachable(f"http://127.0.0.1:{server.server_port}") is True
        assert hub_reachable(offline) is False
    finally:
        server.shutdown()
        server.server_close()


def test_an_unreachable_hub_is_probed_again_after_a_while(offline, monkeypatch):
    """A blip must not fail every later load of a long process: "unreachable" holds for UNREACHABLE_FOR_S."""
    assert hub_reachable(offline) is False
    port = int(offline.rpartition(":")[2])
    server = http.server.HTTPServer(("127.0.0.1", port), http.server.BaseHTTPRequestHandler)  # now it answers
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert hub_reachable(offline) is False  # believed for a while: no probe per load
        monkeypatch.setattr(sibo.hub, "UNREACHABLE_FOR_S", 0.0)
        assert hub_reachable(offline) is True
        monkeypatch.setattr(sibo.hub, "UNREACHABLE_FOR_S", 1e9)
        server.shutdown()
        assert hub_reachable(offline) is True  # a "yes" is kept
    finally:
        server.server_close()


def test_huggingface_hub_retry_warnings_only_with_verbose():
    retries = logging.getLogger("huggingface_hub.utils._http")
    for verbose in (False, True):
        with console(verbose):
            assert retries.isEnabledFor(logging.WARNING) == verbose
