"""A response's text as it grows token by token: what may be shown yet, and where it ends.

The answer is what `sibo generate` prints: with Alpaca's template, the completion up to its next section
header (`### Instruction:` …, the blank lines before it dropped); with a chat template, the whole turn. A
request's own `stop` strings end it too, and are never shown. While streaming, text that may still turn
out to begin a header or a stop string is held back until the next token tells.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sibo.prompts import PromptTemplate, cut_at_next_section


@dataclass
class ResponseText:
    """The shown part of one response; `update` with each new decoding of the completion, `finish` at its end."""

    template: PromptTemplate
    stop: tuple[str, ...] = ()
    shown: str = field(default="", init=False)

    def answer(self, completion: str) -> tuple[str, bool]:
        """(the answer in a whole `completion`, whether a section header or stop string ended it)."""
        answer = cut_at_next_section(completion) if self.template.stop_strings else completion
        ended = len(answer) < len(completion)
        at = min((found for stop in self.stop if (found := answer.find(stop)) >= 0), default=-1)
        return (answer[:at], True) if at >= 0 else (answer, ended)

    def update(self, completion: str) -> str:
        """The text newly safe to show, given the completion decoded so far."""
        answer, ended = self.answer(completion)
        if not ended:
            # a multi-byte character not yet whole: one \ufffd, or one per byte from byte-fallback tokens
            answer = answer.rstrip("\ufffd")
            markers = (*self.template.stop_strings, *self.stop)
            held = max((_partial_suffix(answer, marker) for marker in markers), default=0)
            answer = answer[: len(answer) - held]
            if self.template.stop_strings:
                answer = answer.rstrip()  # blank lines before a header are dropped with it
        return self._delta(answer)

    def finish(self, completion: str) -> str:
        """The rest of the answer once decoding has ended."""
        return self._delta(self.answer(completion)[0])

    def _delta(self, answer: str) -> str:
        if len(answer) <= len(self.shown) or not answer.startswith(self.shown):
            return ""
        delta, self.shown = answer[len(self.shown) :], answer
        return delta


def _partial_suffix(text: str, marker: str) -> int:
    """The length of the longest end of `text` that is a proper beginning of `marker`."""
    return next((k for k in range(len(marker) - 1, 0, -1) if text.endswith(marker[:k])), 0)
