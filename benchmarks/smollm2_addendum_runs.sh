#!/usr/bin/env bash
# The SmolLM2 study's addendum runs (docs/BENCHMARKS.md, "Addendum of 2026-12-07"), all 39, in its order,
# resumable: each trained by code 252c4f3 from a worktree of that commit, then rescored by this checkout.
#
#   bash benchmarks/smollm2_addendum_runs.sh             # from the repository root; again after any stop
#   bash benchmarks/smollm2_addendum_runs.sh --plan      # which runs are done, which are next; runs nothing
#
# Each call of the study trains the arms of one seed, as the addendum's commands do (both arms of a pair
# together). A run whose folder has result.json is done and skipped; a folder without it (a run stopped
# midway) is deleted and the run starts over. Training and rescoring take turns on the cores.
# Commit each finished run folder (its adapter is gitignored); then `smollm2_study.py --stage addendum`.
# Environment: STUDY (the worktree, default ../study), PYTHON (default .venv/bin/python), LOGS (a log per
# run, default ../study_logs), RESULTS (default benchmarks/results/smollm2_heldout).
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
TRAINED_BY=252c4f3
STUDY=${STUDY:-../study}
PYTHON=$(realpath -ms "${PYTHON:-.venv/bin/python}")  # -s: a venv's python is a link
LOGS=${LOGS:-../study_logs}
OUT=$(realpath -m "${RESULTS:-benchmarks/results/smollm2_heldout}")
PLAN=$([ "${1:-}" = --plan ] && echo 1 || echo 0)

# folder, arms, seed, then the rates: the addendum's order, seed by seed
OTHER_ARMS=lora-sibo0.5,lora-sibo0.2-all,lora-sibo-learnable,adapterh,adapterh-sibo0.2
CALLS=()
for seed in 0 3 4 5 6 7 1 2; do CALLS+=("addendum-lr3e-3 lora,lora-sibo0.2 $seed --lora_lr 0.003"); done
for rate in 6e-3 1e-2; do
  for seed in 0 1; do CALLS+=("addendum-lr$rate lora,lora-sibo0.2 $seed --lora_lr $rate"); done
done
for seed in 0 1 2; do CALLS+=("addendum-lr3e-3 $OTHER_ARMS $seed --lora_lr 0.003 --adapterh_lr 0.001"); done

rescore() {  # every finished run of $1 whose adapter has not been rescored, by committed code only
  local folder=$OUT/$1
  for run in "$folder"/runs/*/; do
    if [ -f "$run/result.json" ] && [ -d "$run/adapter" ] && [ ! -f "$run/rescore.json" ]; then
      until git diff --quiet HEAD -- src 'benchmarks/*.py'; do
        echo "$(date -u +%FT%TZ) waiting for src/ and benchmarks/ to match HEAD, the version rescore.json records"
        sleep 60
      done
      echo "$(date -u +%FT%TZ) rescoring $1 by $(git rev-parse --short HEAD)"
      PYTHONPATH=src "$PYTHON" benchmarks/smollm2_study.py --stage rescore --size cpu --threads 2 \
        --out "$folder" >> "$LOGS/rescore.log" 2>&1
      return
    fi
  done
}

if [ $PLAN = 0 ]; then
  mkdir -p "$LOGS"
  [ -d "$STUDY" ] || git worktree add "$STUDY" $TRAINED_BY
  if [ "$(git -C "$STUDY" rev-parse --short=7 HEAD)" != $TRAINED_BY ]; then
    echo "$STUDY is not at $TRAINED_BY, the code that trains every addendum run" >&2
    exit 2
  fi
fi
finished=0 total=0
for call in "${CALLS[@]}"; do
  read -r folder arms seed rates <<< "$call"
  todo=()
  for arm in ${arms//,/ }; do
    total=$((total + 1))
    if [ -f "$OUT/$folder/runs/${arm}_seed$seed/result.json" ]; then
      finished=$((finished + 1))
    else
      todo+=("$arm")
    fi
  done
  [ $PLAN = 1 ] || rescore "$folder"
  [ ${#todo[@]} = 0 ] || [ $PLAN = 1 ] || {
    for arm in "${todo[@]}"; do rm -rf "$OUT/$folder/runs/${arm}_seed$seed"; done
    arms=$(IFS=,; echo "${todo[*]}")
    echo "$(date -u +%FT%TZ) training $folder $arms seed $seed by $TRAINED_BY"
    (cd "$STUDY" && PYTHONPATH=src "$PYTHON" benchmarks/smollm2_study.py --size cpu --threads 2 --arms "$arms" \
      --seeds "$seed" $rates --out "$OUT/$folder" > "$LOGS/$folder-seed$seed-$arms.log" 2>&1)
    rescore "$folder"
  }
  [ ${#todo[@]} = 0 ] || [ $PLAN = 0 ] || echo "to do: $folder ${todo[*]} seed $seed ($rates)"
done
echo "finished before this call: $finished of $total runs"
