"""What the decoding tests share: the test module's own tiny model and tokenizer, saved as a base folder."""

import pytest


@pytest.fixture(scope="module")
def saved_base(tmp_path_factory, model, tokenizer):
    """The requesting module's `model` and `tokenizer` fixtures, saved as a base model folder."""
    directory = tmp_path_factory.mktemp("base")
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
