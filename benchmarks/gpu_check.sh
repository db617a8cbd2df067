#!/usr/bin/env bash
# The checks that need a CUDA GPU, as one script for a lent GPU machine; under 8 minutes on one H100.
#
#     bash benchmarks/gpu_check.sh            # from the repository root; writes $OUT (or ./gpu_check_out)
#
# 1. the tests marked gpu (tests/test_gpu.py): bf16 fine-tuning, 4-bit QLoRA through bitsandbytes
#    (skipped, and said so, when bitsandbytes is not installed: the GPU machine has no network);
# 2. the throughput benchmarks on a ~0.5B-parameter LLaMA-style config built from scratch
#    (24 blocks, hidden 1280: no weights are downloaded), each given a time limit so one slow
#    benchmark cannot eat the others' time. A benchmark without a --device flag runs on CPU
#    only and is skipped here.
# Every step's output goes to $OUT/<step>.log; the summary lists each step's exit status.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu_check_out}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export TOKENIZERS_PARALLELISM=false
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
    python -c "import torch, transformers, peft; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'| transformers', transformers.__version__, '| peft', peft.__version__)"
    python -c "import bitsandbytes; print('bitsandbytes', bitsandbytes.__version__)" 2>/dev/null \
        || echo "bitsandbytes: not installed (the QLoRA test will skip)"
} | tee -a "$SUMMARY"

step gpu_tests 240 python -m pytest tests/test_gpu.py -m gpu -v -rs -p no:cacheprovider

# ~0.5B parameters: 24 × (4·1280² + 3·1280·3520) ≈ 0.48B in the blocks.
MODEL=(--layers 24 --hidden 1280)
if python benchmarks/overhead.py --help 2>/dev/null | grep -q -- --device; then
    step overhead 100 python benchmarks/overhead.py --device cuda "${MODEL[@]}"
fi
for bench in generate_speed eval_throughput finetune_throughput; do
    if [ -f "benchmarks/$bench.py" ] && python "benchmarks/$bench.py" --help 2>/dev/null | grep -q -- --device; then
        step "$bench" 90 python "benchmarks/$bench.py" --device cuda "${MODEL[@]}"
    else
        echo "$bench: skipped (no --device flag: CPU only)" | tee -a "$SUMMARY"
    fi
done

echo "all logs in $OUT/"
! grep -q "exit [1-9]" "$SUMMARY"
