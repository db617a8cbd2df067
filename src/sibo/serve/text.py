"""A response's text as it grows token by token: what may be shown yet, and where it ends.

The answer is what `sibo generate` prints: with Alpaca's template, the completion up to its next section
header (`### Instruction:` …, the blank lines before it dropped); with a chat template, the whole turn. A
request's own `stop` strings end it too, and are never shown. While streaming, text that may still turn
out to begin a header or a stop string is held back until the next token tells.

Each streamed token costs the same however long the answer has grown: `TokenText` decodes a few ids around
it, and `ResponseText` searches only the text not shown yet. The whole completion is decoded once, at the end.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sibo.prompts import PromptTemplate, cut_at_next_section

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)


@dataclass
class TokenText:
    """A completion's text, decoded token by token as TGI's and vLLM's servers do: decoding a token alone would
    lose what depends on its neighbours (a SentencePiece "▁word" first in a text loses its space, a character
    split over byte tokens is one \\ufffd per byte), so the last piece's ids are decoded again with the new ones
    and only the difference is new text, held back while it ends in an incomplete character."""

    tokenizer: PreTrainedTokenizerBase
    ids: list[int] = field(default_factory=list)
    prefix_offset: int = 0  # ids[prefix_offset:read_offset] made the last piece: the new ids' context
    read_offset: int = 0  # the ids before it are in the text given out

    def add(self, ids: list[int]) -> str:
        """The text that `ids` add to the completion; "" while a character is not yet whole."""
        self.ids += ids
        read = self._decode(self.prefix_offset, self.read_offset)
        text = self._decode(self.prefix_offset, len(self.ids))
        if len(text) <= len(read) or text.endswith("\ufffd"):
            return ""
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        return text[len(read) :]

    def _decode(self, start: int, end: int) -> str:
        return self.tokenizer.decode(self.ids[start:end], skip_special_tokens=True)


@dataclass
class ResponseText:
    """The shown part of one response: `update` with each new piece of the completion, `finish` with the whole."""

    template: PromptTemplate
    stop: tuple[str, ...] = ()
    ended: bool = field(default=False, init=False)  # a section header or a stop string ended the answer
    pending: str = field(default="", init=False)  # the completion's text after what is shown
    shown: list[str] = field(default_factory=list, init=False)

    def answer(self, completion: str) -> tuple[str, bool]:
        """(the answer in a whole `completion`, whether a section header or stop string ended it)."""
        answer = cut_at_next_section(completion) if self.template.stop_strings else completion
        ended = len(answer) < len(completion)
        at = min((found for stop in self.stop if (found := answer.find(stop)) >= 0), default=-1)
        return (answer[:at], True) if at >= 0 else (answer, ended)

    def update(self, piece: str) -> str:
        """The text newly safe to show, once `piece` follows the completion so far. Only the text not yet shown
        is searched: no header or stop string can begin in what is shown (text that may begin one is held back),
        and that text never ends in whitespace with Alpaca's template, so the answer's rule applies to the rest
        alone."""
        if self.ended:
            return ""
        self.pending += piece
        answer, self.ended = self.answer(self.pending)
        if not self.ended:
            markers = (*self.template.stop_strings, *self.stop)
            held = max((_partial_suffix(answer, marker) for marker in markers), default=0)
            answer = answer[: len(answer) - held]
            if self.template.stop_strings:
                answer = answer.rstrip()  # blank lines before a header are dropped with it
        self.pending = self.pending[len(answer) :]
        return self._show(answer)

    def finish(self, completion: str) -> str:
        """The rest of the answer in the whole decoded `completion`, once decoding has ended: what streamed
        pieces left out (a last incomplete character, held-back text) so the pieces join to the whole answer."""
        answer, self.ended = self.answer(completion)
        shown = "".join(self.shown)
        if not answer.startswith(shown):
            logger.warning("the streamed text differs from the whole answer's decoding: its end is not sent")
            return ""
        return self._show(answer[len(shown) :])

    def _show(self, text: str) -> str:
        if text:
            self.shown.append(text)
        return text


def _partial_suffix(text: str, marker: str) -> int:
    """The length of the longest end of `text` that is a proper beginning of `marker`."""
    return next((k for k in range(len(marker) - 1, 0, -1) if text.endswith(marker[:k])), 0)
