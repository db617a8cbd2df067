import socket

# datasets gives its logger a StreamHandler on sys.stderr when first imported: imported inside a test
# with capsys, that stream is closed after the test, and each later datasets log line prints a
# "--- Logging error ---" traceback. Imported here, the handler holds the session's stderr.
import datasets  # noqa: F401
import pytest
import torch
from huggingface_hub import constants

from sibo.prompts import build_prompt
from sibo.study.synthetic import generate_splits, write_records
from sibo.testing import build_tiny_model, build_tokenizer


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from threads, and a shared 2-core machine makes them crawl."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class _Script:
    """Forward hook on lm_head: the model writes `tokens`, one per decoding step (then repeats the last)."""

    def __init__(self, tokens: list[int]):
        self.tokens, self.steps = tokens, 0

    def __call__(self, module, args, logits):
        forced = torch.full_like(logits, -1e4)
        forced[..., -1, self.tokens[min(self.steps, len(self.tokens) - 1)]] = 1e4
        self.steps += 1
        return forced


@pytest.fixture
def script_model():
    """`script_model(model, tokens)`: the model writes `tokens` whatever its weights; returns the step counter."""
    handles = []

    def install(model, tokens: list[int]) -> _Script:
        script = _Script(tokens)
        handles.append(model.get_output_embeddings().register_forward_hook(script))
        return script

    yield install
    for handle in handles:
        handle.remove()


@pytest.fixture(scope="session")
def tiny_training_run():
    """`make(root, train_size, test_size, seed)`: a 2-block LLaMA whose tokenizer is trained on synthetic
    records, saved as root/base, those records as root/train.json; returns the synthetic test records."""

    def make(root, train_size: int, test_size: int, seed: int) -> list[dict]:
        train, test = generate_splits(train_size, test_size, seed=seed)
        tokenizer = build_tokenizer(
            [build_prompt(r["instruction"]) + r["output"] for r in train], vocab_size=400
        )
        model = build_tiny_model("llama", len(tokenizer), num_layers=2, hidden_size=32, ffn_size=64)
        model.save_pretrained(root / "base")
        tokenizer.save_pretrained(root / "base")
        write_records(train, root / "train.json")
        return test

    return make


@pytest.fixture
def offline(monkeypatch):
    """The Hub's endpoint is a local port nobody listens on: refused at once, as with no network."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    return endpoint


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """The fault and CLI tests' folder, built once per test module (fault_checks.make_root): a 4-block base,
    a SIBO adapter on it, training records and a one-question benchmark. A module that needs more overrides
    it with a `root(root)` fixture that adds to this one."""
    from fault_checks import make_root

    return make_root(tmp_path_factory.mktemp("faults"))
