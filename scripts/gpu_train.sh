#!/usr/bin/env bash
# Train several models at once on a lent GPU machine (Keras 3 on JAX) and pack them for the
# trip back; DEVELOPERS.md says how to call it through the device tool.
#
#   bash scripts/gpu_train.sh PLAN DATA DEADLINE_SECONDS OUT
#
# PLAN has one run per line, "NAME train-arguments...", each becoming
# `pneumotriage train --data DATA --out WORK/NAME train-arguments...`. The runs share the
# GPU: one of these small models leaves it mostly idle, so running them side by side costs
# little more than running one. Runs still going at the deadline are stopped and reported,
# so that the lease never ends with nothing to bring back. The finished folders are then
# re-scored under JAX (benchmarks/backend_parity.py --save) for the CPU comparison, and
# packed three to a tarball: the device returns at most eight files of 16 MiB.
set -u
plan=$1 data=$2 deadline=$3 out=$4
python=${PYTHON:-python3}
work=${WORK:-/tmp/gpu-train}
# The project is not installed there: the benchmark finds core/ and training/ through this.
# KERAS_BACKEND may be set otherwise for a trial run without a GPU (tests/test_gpu_train.py).
export KERAS_BACKEND=${KERAS_BACKEND:-jax} PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# Each run takes a share of the GPU's memory instead of JAX's default three quarters.
runs=$(grep -c '^[^#[:space:]]' "$plan")
export XLA_PYTHON_CLIENT_MEM_FRACTION=$(awk -v n="$runs" 'BEGIN { printf "%.2f", 0.9 / n }')
mkdir -p "$work" "$out"
started=$(date +%s)

nvidia-smi --query-gpu=name,utilization.gpu,memory.used --format=csv -l 20 \
    >"$work/gpu-use.csv" 2>&1 &
monitor=$!
names=() runners=()
while read -r name arguments; do
    [[ -z $name || $name == \#* ]] && continue
    names+=("$name")
    # shellcheck disable=SC2086 # the plan's arguments are words
    (
        $python -m pneumotriage train --data "$data" --out "$work/$name" $arguments \
            >"$work/$name.log" 2>&1
        echo $? >"$work/$name.rc"
    ) &
    runners+=($!)
done <"$plan"

while (($(date +%s) - started < deadline)); do
    left=0
    for name in "${names[@]}"; do [[ -f $work/$name.rc ]] || left=$((left + 1)); done
    ((left == 0)) && break
    sleep 5
done
# Only this script's own runs: their runner shells' children.
for runner in "${runners[@]}"; do pkill -P "$runner" && sleep 2; done
kill "$monitor" 2>/dev/null

finished=()
for name in "${names[@]}"; do
    rc=$(cat "$work/$name.rc" 2>/dev/null || echo "stopped at the deadline")
    echo "$name: exit $rc, $(tail -n 1 "$work/$name.log")"
    [[ $rc == 0 ]] && finished+=("$work/$name")
done
if ((${#finished[@]})); then
    timeout 120 $python benchmarks/backend_parity.py "${finished[@]}" --data "$data" \
        --save "$out/jax-validation-scores.npz" >"$work/parity.md" 2>"$work/parity.log"
    cat "$work/parity.md"
fi
for ((i = 0; i < ${#finished[@]}; i += 3)); do
    folders=("${finished[@]:i:3}")
    tar -C "$work" -cf "$out/models-$((i / 3 + 1)).tar" --exclude='checkpoint.keras' \
        "${folders[@]##*/}"
done
(cd "$work" && find . -maxdepth 1 -type f -print0 | tar -czf "$out/logs.tar.gz" --null -T -)
echo "total $(($(date +%s) - started)) s"
