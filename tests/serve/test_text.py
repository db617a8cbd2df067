"""A response's streamed text: the pieces add up to the whole answer, whatever the tokenizer splits."""

from __future__ import annotations

import pytest

from sibo.prompts import CHAT, PromptTemplate
from sibo.serve.text import ResponseText
from sibo.testing import build_byte_fallback_tokenizer

RARE = "Hi 叫 there, 𝄞!"  # 叫: 3 bytes, 𝄞: 4 bytes, each its own byte tokens


@pytest.mark.parametrize("template", [PromptTemplate(), PromptTemplate(CHAT)], ids=["alpaca", "chat"])
def test_characters_split_over_byte_tokens_stream_whole_and_the_rest_follows(template):
    """A byte-fallback tokenizer decodes a character not yet whole to one \\ufffd per byte: none is shown, and
    the pieces streamed token by token join to the non-streamed answer."""
    tokenizer = build_byte_fallback_tokenizer()
    ids = tokenizer(RARE, add_special_tokens=False)["input_ids"]
    assert len(ids) > len(RARE)  # the rare characters went to byte tokens
    text = ResponseText(template)
    pieces = [
        text.update(tokenizer.decode(ids[:end], skip_special_tokens=True)) for end in range(1, len(ids))
    ]
    pieces.append(text.finish(tokenizer.decode(ids, skip_special_tokens=True)))
    assert "".join(pieces) == text.answer(RARE)[0] == RARE
    assert not any("\ufffd" in piece for piece in pieces)
