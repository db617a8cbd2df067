"""A response's streamed text: the pieces add up to the whole answer, whatever the tokenizer splits."""

from __future__ import annotations

import pytest

from sibo.prompts import CHAT, INSTRUCTION_MARKER, PromptTemplate
from sibo.serve.text import ResponseText, TokenText
from sibo.testing import build_byte_fallback_tokenizer, build_tokenizer

RARE = "Hi 叫 there, 𝄞! 😀 là-bas"  # 叫: 3 bytes, 𝄞 and 😀: 4 bytes, à: 2, each its own byte tokens
TEMPLATES = [PromptTemplate(), PromptTemplate(CHAT)]
TOKENIZERS = {
    "sentencepiece": build_byte_fallback_tokenizer,  # "▁" spaces, byte fallback
    "byte-level bpe": lambda: build_tokenizer(["Hi there, here is the answer: the end."], vocab_size=300),
}


def with_skipped_tokens(tokenizer, text: str) -> list[int]:
    """`text`'s ids with special tokens between some of them (before a "▁word" too), which decoding skips."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    special = [tokenizer.bos_token_id, tokenizer.unk_token_id]
    return [
        token for at, one in enumerate(ids) for token in ([special[at % 2], one] if at % 3 == 0 else [one])
    ]


def streamed(tokenizer, ids: list[int], text: ResponseText) -> list[str]:
    """The pieces `text` shows as `ids` are decoded one at a time, the whole decoding's last."""
    tokens = TokenText(tokenizer)
    pieces = [text.update(tokens.add([token])) for token in ids]
    return [*pieces, text.finish(tokenizer.decode(ids, skip_special_tokens=True))]


@pytest.mark.parametrize("template", TEMPLATES, ids=["alpaca", "chat"])
@pytest.mark.parametrize("name", TOKENIZERS)
@pytest.mark.parametrize(
    ("completion", "stop"),
    [(RARE, ()),
     (f"{RARE} \n\n{INSTRUCTION_MARKER}\nmore", ()),  # Alpaca's answer ends at the next header
     (f"{RARE} and then", ("d th",)),
     (f"{RARE} and then", ("叫 t",))],
    ids=["plain", "header", "stop", "multi-byte stop"],
)  # fmt: skip
def test_streamed_pieces_join_to_the_whole_answer(template, name, completion, stop):
    """Decoded token by token (characters split over byte tokens, "▁" spaces, special tokens skipped mid-text),
    the pieces join exactly to the non-streamed answer, never show half a character, and none waits for the end."""
    tokenizer = TOKENIZERS[name]()
    ids = with_skipped_tokens(tokenizer, completion)
    whole = ResponseText(template, stop).answer(tokenizer.decode(ids, skip_special_tokens=True))[0]
    pieces = streamed(tokenizer, ids, ResponseText(template, stop))
    assert "".join(pieces) == whole
    assert whole.startswith(RARE[:2]) and not any("\ufffd" in piece for piece in pieces)
    assert pieces[-1] == ""


def test_an_incomplete_last_character_is_shown_at_the_end_as_the_whole_decoding_has_it():
    tokenizer = build_byte_fallback_tokenizer()
    ids = tokenizer("ok 叫", add_special_tokens=False)["input_ids"][:-1]  # the last byte never comes
    pieces = streamed(tokenizer, ids, ResponseText(PromptTemplate(CHAT)))
    assert pieces[-1] == "\ufffd\ufffd" and "".join(pieces) == "ok \ufffd\ufffd"
