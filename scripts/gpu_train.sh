#!/usr/bin/env bash
# Train several models at once on a lent GPU machine (Keras 3 on JAX) and pack them for the
# trip back; DEVELOPERS.md says how to call it through the device tool.
#
#   bash scripts/gpu_train.sh PLAN DATA DEADLINE_SECONDS OUT
#
# PLAN has one run per line, "NAME train-arguments...", each becoming
# `pneumotriage train --data DATA --out WORK/NAME train-arguments...`. The runs share the
# GPU: one of these small models leaves it mostly idle, so side by side they get several
# times the work of one at a time out of it (DEVELOPERS.md has the figures). Runs still
# going at the deadline are stopped and reported, so that the lease never ends with nothing
# to bring back. The finished folders are then
# re-scored under JAX (benchmarks/backend_parity.py --save) for the CPU comparison, and
# packed three to a tarball: the device returns at most eight files of 16 MiB and 64 MiB in
# all, which bounds a plan to eighteen runs of about 3.5 MB each.
set -u -f
plan=$1 data=$2 deadline=$3 out=$4
python=${PYTHON:-python3}
# A fresh folder per call: a machine still warm from an earlier call keeps its files, whose
# exit codes must never be taken for this call's.
work=${WORK:-$(mktemp -d /tmp/gpu-train-XXXXXX)}
# Six tarballs, the logs and the scores are the eight files the device brings back.
max_runs=18 per_tar=3
# The project is not installed there: the benchmark finds core/ and training/ through this.
# KERAS_BACKEND may be set otherwise for a trial run without a GPU (tests/test_gpu_train.py).
export KERAS_BACKEND=${KERAS_BACKEND:-jax} PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

names=() arguments=()
while read -r name rest || [[ -n $name ]]; do
    name=${name%$'\r'} rest=${rest%$'\r'}
    [[ -z $name || $name == \#* ]] && continue
    # A name becomes a folder, NAME.log and NAME.rc, and a tar member: nothing tar takes for
    # an option, nothing another run's files are called. (The script's own files start
    # with "_", which no name does.) Letters are ASCII whatever the locale.
    if [[ " ${names[*]} " == *" $name "* ]]; then
        echo "gpu_train.sh: $plan: run name '$name' is used twice" >&2
        exit 2
    fi
    if ! LC_ALL=C grep -Eq '^[A-Za-z0-9][A-Za-z0-9._-]*$' <<<"$name" ||
        [[ $name == *.rc || $name == *.log ]]; then
        echo "gpu_train.sh: $plan: run name '$name' must start with a letter or digit, hold" \
            "only letters, digits, . _ - and not end in .rc or .log" >&2
        exit 2
    fi
    names+=("$name") arguments+=("$rest")
done <"$plan"
if ((${#names[@]} == 0 || ${#names[@]} > max_runs)); then
    echo "gpu_train.sh: $plan has ${#names[@]} runs; give 1 to $max_runs" >&2
    exit 2
fi
# Each run takes a share of the GPU's memory instead of JAX's default three quarters.
export XLA_PYTHON_CLIENT_MEM_FRACTION=$(awk -v n="${#names[@]}" 'BEGIN { printf "%.2f", 0.9 / n }')
if [[ -n $(ls -A "$work" 2>/dev/null) ]]; then
    echo "gpu_train.sh: $work holds an earlier call's files; name an empty WORK folder" >&2
    exit 2
fi
mkdir -p "$work" "$out"
started=$(date +%s)
"$python" -c 'import keras
backend = keras.backend.backend()
extra = ", jax " + __import__("jax").__version__ if backend == "jax" else ""
print("keras", keras.__version__, "on", backend + extra)'

nvidia-smi --query-gpu=name,utilization.gpu,memory.used --format=csv -l 20 \
    >"$work/_gpu-use.csv" 2>&1 &
monitor=$!
runners=()
for i in "${!names[@]}"; do
    name=${names[i]}
    # shellcheck disable=SC2086 # the plan's arguments are words (globbing is off: set -f)
    (
        "$python" -m pneumotriage train --data "$data" --out "$work/$name" ${arguments[i]} \
            >"$work/$name.log" 2>&1
        echo $? >"$work/$name.rc"
    ) &
    runners+=($!)
done

while (($(date +%s) - started < deadline)); do
    left=0
    for name in "${names[@]}"; do [[ -f $work/$name.rc ]] || left=$((left + 1)); done
    ((left == 0)) && break
    sleep 5
done
stopped=() stopping=()
for i in "${!names[@]}"; do
    [[ -f $work/${names[i]}.rc ]] || { stopped+=("${names[i]}"); stopping+=("${runners[i]}"); }
done
# Only this script's own runs that are still going: their runner shells' children. Asked
# again each second (a runner may not have started its python yet), then killed, so that a
# run ignoring the request cannot hold the call past its limit.
for ((second = 0; ${#stopping[@]} && second < 20; second++)); do
    going=()
    for runner in "${stopping[@]}"; do
        kill -0 "$runner" 2>/dev/null && going+=("$runner") && pkill -TERM -P "$runner"
    done
    stopping=("${going[@]}")
    ((${#stopping[@]})) && sleep 1
done
for runner in "${stopping[@]}"; do pkill -KILL -P "$runner"; done
wait "${runners[@]}"
kill "$monitor" 2>/dev/null

finished=()
for name in "${names[@]}"; do
    rc=$(cat "$work/$name.rc" 2>/dev/null)
    # A run that finished between the deadline and its stop counts as finished.
    if [[ " ${stopped[*]} " == *" $name "* && $rc != 0 ]]; then
        outcome="stopped at the deadline"
    else
        outcome="exit $rc"
    fi
    echo "$name: $outcome, $(tail -n 1 "$work/$name.log")"
    [[ $outcome == "exit 0" ]] && finished+=("$work/$name")
done
if ((${#finished[@]})); then
    timeout 120 "$python" benchmarks/backend_parity.py "${finished[@]}" --data "$data" \
        --save "$out/jax-validation-scores.npz" >"$work/_parity.md" 2>"$work/_parity.log"
    cat "$work/_parity.md"
fi
for ((i = 0; i < ${#finished[@]}; i += per_tar)); do
    folders=("${finished[@]:i:per_tar}")
    tar -C "$work" -cf "$out/models-$((i / per_tar + 1)).tar" "${folders[@]##*/}"
done
(cd "$work" && find . -maxdepth 1 -type f -print0 | tar -czf "$out/logs.tar.gz" --null -T -)
echo "total $(($(date +%s) - started)) s"
