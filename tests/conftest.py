import pytest
import torch


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
