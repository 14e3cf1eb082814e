#!/usr/bin/env bash
# The GPU check: one unattended command (at most about 8 minutes on one
# GPU; DDPM_GPU_CHECK_BUDGET seconds, default 450, for its parts) that
# measures ddpm's GPU path with release binaries built on another
# machine, against that machine's own torch (its Python's wheel), and
# writes one JSON file and one markdown table.
#
#   deploy/gpu-check.sh [--bin DIR] [--out DIR] [--python PY]
#   deploy/gpu-check.sh --cpu-smoke [--bin DIR] [--out DIR] [--python PY]
#
#   --bin DIR      ddpm, ddpm-coord and ddpm-worker (default $DDPM_BIN, else gpu-bin)
#   --out DIR      where results.json, results.md and every log go
#                  (default $OUT, else /tmp/ddpm-gpu-check)
#   --python PY    a Python with torch (and diffusers for the baselines;
#                  default $PYTHON, else python3)
#   --cpu-smoke    the same pipeline on the CPU with the tiny preset and tiny
#                  counts: proves the script works end to end on a machine
#                  without a GPU. Its numbers are no measurement.
#
# What it measures, in this order, all on GPU 0:
#  1. one device's training step, cifar10 U-Net at batch 128, fp32 and bf16
#     ([train] precision), each against PyTorch eager on the same U-Net
#     (fp32, and torch.autocast bf16), the two sides alternating in rounds
#     in the same run (`ddpm bench train`);
#  2. DDIM-50 sampling, cifar10 U-Net at batch 256: images/s against
#     diffusers' UNet2DModel (`ddpm bench sample`);
#  3. two workers sharing the GPU with the coordinator's star and with the
#     worker-to-worker ring (its shadow on, and off), and NCCL at world
#     size 1 (NCCL puts one rank on a GPU; the exchange has never run on a
#     GPU before this), a short run on synthetic data each, with every
#     replica's parameter checksum compared to the coordinator's. The CPU
#     smoke run skips NCCL (it needs a GPU).
# Without a GPU (no nvidia-smi, or a torch that sees no CUDA device) it
# exits 2 before measuring anything, unless --cpu-smoke.
#
# Exit code: 0 every part ran (each result says what it measured), 1 a part
# failed (results.json says which), 2 bad arguments or no GPU.
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
bin="${DDPM_BIN:-gpu-bin}"
out="${OUT:-/tmp/ddpm-gpu-check}"
py="${PYTHON:-python3}"
smoke=0
while [ $# -gt 0 ]; do
    case $1 in
        --bin) bin=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        --python) py=$2; shift 2 ;;
        --cpu-smoke) smoke=1; shift ;;
        -h | --help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        *) echo "gpu-check.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

die() { echo "gpu-check.sh: $*" >&2; exit 2; }
for b in ddpm ddpm-coord ddpm-worker; do
    [ -x "$bin/$b" ] || die "$bin/$b is missing: build with cargo build --release --workspace --bins and pass its directory with --bin (or DDPM_BIN)"
done
"$py" -c 'import torch' 2>/dev/null || die "$py cannot import torch: pass --python PY (a Python with the torch wheel the binaries were built against)"
torchlib=$("$py" -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
# The machine's libtorch, not the build machine's (a RUNPATH yields to this).
export LD_LIBRARY_PATH="$torchlib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

if [ $smoke = 0 ]; then
    command -v nvidia-smi >/dev/null 2>&1 || die "no GPU here (nvidia-smi is missing): this check measures a GPU; run it on a CUDA machine, or pass --cpu-smoke to check the script itself on the CPU"
    "$py" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' \
        || die "torch sees no CUDA device (driver, CUDA_VISIBLE_DEVICES or a CPU-only wheel): nothing to measure; --cpu-smoke checks the script on the CPU"
    device=cuda:0 worker_device=(--gpu 0) preset=cifar10 train_batch=128 train_steps=20 rounds=3
    sample_batch=256 sample_evals=20 dist_steps=30 dist_batch=128 threads=8
else
    device=cpu worker_device=(--device cpu) preset=tiny train_batch=8 train_steps=2 rounds=1
    sample_batch=2 sample_evals=2 dist_steps=3 dist_batch=4 threads=1
fi

mkdir -p "$out" || die "cannot create $out"
logs="$out/logs"
rm -rf "$logs" && mkdir -p "$logs"
start=$SECONDS
echo "gpu-check: logs under $logs"

# The whole check stays within $budget seconds (8 minutes with the start
# of the machine's Python and CUDA): each part gets its own limit or what
# is left, whichever is less (and at least 10 s, to fail with a message).
budget=${DDPM_GPU_CHECK_BUDGET:-450}
within() {
    local want=$1 left=$((budget - (SECONDS - start)))
    [ "$left" -lt "$want" ] && want=$left
    [ "$want" -lt 10 ] && want=10
    echo "$want"
}

# Runs "$@" with a time limit, its output in $logs/NAME.txt; a line saying how it ended.
step() {
    local name=$1 limit
    limit=$(within "$2")
    shift 2
    echo "== $name"
    timeout "$limit" "$@" >"$logs/$name.txt" 2>&1
    local rc=$?
    echo "$rc" >"$logs/$name.rc"
    if [ $rc != 0 ]; then
        echo "   $name failed (exit $rc; $logs/$name.txt):"
        tail -n 5 "$logs/$name.txt" | sed 's/^/   /'
    fi
}

{
    date -u +%Y-%m-%dT%H:%M:%SZ
    if [ $smoke = 0 ]; then nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -n1; else echo "cpu (smoke run)"; fi
    "$py" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'
    "$bin/ddpm" --version
} >"$logs/machine.txt" 2>&1

# 1. One device's training step, fp32 then bf16, each alternating with PyTorch.
for precision in fp32 bf16; do
    step "train-$precision" 150 "$bin/ddpm" bench train --device "$device" --preset "$preset" --batch-size "$train_batch" \
        --steps "$train_steps" --rounds "$rounds" --precision "$precision" --threads "$threads" --python "$py"
done

# 2. Sampling: DDIM-50 (and the ancestral step's cost) against diffusers.
step sample 90 "$bin/ddpm" bench sample --device "$device" --presets "$preset" --batch "$sample_batch" --evals "$sample_evals" \
    --threads "$threads" --python "$py"

# 3. Two workers sharing the device, per backend: coordinator on the CPU.
# dist_run NAME BACKEND WORKERS [COORD FLAGS...]: files under $logs/dist-NAME/.
dist_run() {
    local name=$1 backend=$2 n=$3 dir="$logs/dist-$1"
    shift 3
    # This run's own coordinator flags (the script's arguments are not
    # forwarded to ddpm-coord).
    local flags=("$@")
    mkdir -p "$dir"
    echo "== dist-$name"
    # Each process under its own time limit: no watchdog left behind holding
    # this script's output open.
    local limit
    limit=$(within 150)
    timeout "$limit" "$bin/ddpm-coord" --preset "$preset" --data synthetic:shapes --workers "$n" --steps "$dist_steps" --batch-size "$dist_batch" \
        --samples 0 --backend "$backend" ${flags[@]+"${flags[@]}"} --listen 127.0.0.1:0 --run "$dir/run" --threads "$threads" >"$dir/coord.out" 2>"$dir/coord.log" &
    local coord=$! addr=""
    for _ in $(seq 1 600); do
        addr=$(sed -n 's/^listening on //p' "$dir/coord.out" | head -n1)
        [ -n "$addr" ] && break
        kill -0 $coord 2>/dev/null || break
        sleep 0.1
    done
    if [ -z "$addr" ]; then
        echo 1 >"$dir/rc"
        echo "   the coordinator did not start ($dir/coord.log)"
        kill $coord 2>/dev/null
        return 0
    fi
    local workers=()
    for w in $(seq 1 "$n"); do
        timeout "$limit" "$bin/ddpm-worker" --coord "$addr" "${worker_device[@]}" --threads "$threads" --name "gpu0-$w" >"$dir/worker-$w.log" 2>&1 &
        workers+=($!)
    done
    wait $coord
    echo $? >"$dir/rc"
    wait "${workers[@]}" 2>/dev/null
    [ "$(cat "$dir/rc")" = 0 ] || echo "   dist-$name failed ($dir/coord.log)"
}
dist_run coordinator coordinator 2
dist_run ring ring 2
dist_run ring-shadow-off ring 2 --shadow off
[ $smoke = 1 ] || dist_run nccl nccl 1

"$py" "$here/gpu-check-report.py" --logs "$logs" --out "$out" --smoke "$smoke" --seconds $((SECONDS - start)) \
    --sample-batch "$sample_batch" --dist-batch "$dist_batch"
rc=$?
echo "gpu-check: $((SECONDS - start)) s; $out/results.json and $out/results.md"
cat "$out/results.md" 2>/dev/null
exit $rc
