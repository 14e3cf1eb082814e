#!/usr/bin/env bash
# The GPU check: runs the `--gpu 0` path on a CUDA machine with release
# binaries built on another machine, against that machine's own libtorch
# (the torch wheel in its Python). Prints what it measured and copies the
# run's outputs to $OUT (default /tmp/ddpm-gpu-check).
#
#   DDPM_BIN=gpu-bin deploy/gpu-check.sh
#
# 1. libtorch is found and sees the GPU;
# 2. one device's training step, cifar10 U-Net at batch 128, against PyTorch
#    eager on the same architecture (ratio), and against the paper's TPU v3-8
#    (2,688 images/s);
# 3. sampling on one device: cifar10 U-Net, batch 256, ancestral and DDIM 50
#    timed over 20 evaluations each, against PyTorch eager and the paper's
#    TPU v3-8 (256 images in 17 s);
# 4. a real run: coordinator on the CPU, two workers on GPU 0, the cifar10
#    model on synthetic data for 30 steps, replicas' checksums against the
#    coordinator's CPU copy, and a sample grid (1000 ancestral steps) from
#    the EMA weights;
# 5. the same with the ring backend ([dist] backend = "ring"), 20 steps.
set -u
bin="${DDPM_BIN:-gpu-bin}"
out="${OUT:-/tmp/ddpm-gpu-check}"
mkdir -p "$out"
py="${PYTHON:-python3}"
torchlib=$("$py" -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
export LD_LIBRARY_PATH="$torchlib:${LD_LIBRARY_PATH:-}"

echo "== machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$py" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())'
echo "libraries the worker resolves:"
ldd "$bin/ddpm-worker" | grep -E "libtorch|libc10|not found" | sed 's/^/  /'

echo
echo "== training step, one device (cifar10 U-Net, batch 128)"
timeout 150 "$bin/ddpm" bench train --device cuda:0 --preset cifar10 --batch-size 128 --steps 20 --threads 8 --python "$py" \
    2>&1 | tee "$out/bench-train.txt"
ours=$(sed -n 's/^ddpm (tch): .* per step, \([0-9.]*\) img\/s/\1/p' "$out/bench-train.txt")
[ -n "$ours" ] && "$py" -c "print(f'against the paper\'s TPU v3-8 (2,688 img/s): {float(\"$ours\") / 2688:.2f}x')"

echo
echo "== sampling, one device (cifar10 U-Net, batch 256)"
timeout 120 "$bin/ddpm" bench sample --device cuda:0 --presets cifar10 --batch 256 --evals 20 --threads 8 --python "$py" \
    2>&1 | tee "$out/bench-sample.txt"

# A run with the coordinator on the CPU and two workers on GPU 0:
# dist_run NAME BACKEND STEPS SAMPLES (its files under $out/NAME).
dist_run() {
    local name="$1" backend="$2" steps="$3" samples="$4"
    local dir="$out/$name" run="$out/$name/run"
    mkdir -p "$dir"
    echo
    echo "== distributed run ($backend backend): coordinator on CPU, 2 workers on GPU 0"
    "$bin/ddpm-coord" --preset cifar10 --data synthetic:shapes --workers 2 --steps "$steps" --batch-size 128 --samples "$samples" \
        --backend "$backend" --listen 127.0.0.1:0 --run "$run" --threads 8 >"$dir/coord.out" 2>"$dir/coord.log" &
    local coord=$! addr=""
    for _ in $(seq 1 300); do
        addr=$(sed -n 's/^listening on //p' "$dir/coord.out" | head -n1)
        [ -n "$addr" ] && break
        sleep 0.1
    done
    echo "coordinator at $addr"
    "$bin/ddpm-worker" --coord "$addr" --gpu 0 --name gpu0-a 2>"$dir/worker-a.log" &
    local wa=$!
    "$bin/ddpm-worker" --coord "$addr" --gpu 0 --name gpu0-b 2>"$dir/worker-b.log" &
    local wb=$!
    ( sleep 200; kill $coord $wa $wb 2>/dev/null ) &
    local watchdog=$!
    wait $coord
    echo "coordinator exit code $?"
    wait $wa $wb
    kill $watchdog 2>/dev/null
    grep -E "step [0-9]+/|replica|sample grid|ring|error|ERROR|WARN" "$dir/coord.log" | sed 's/^.*Z //' | tail -n 12
    cat "$dir/coord.out"
    echo "summary:"
    cat "$run/summary.json" 2>/dev/null
    echo
    echo "per-step seconds (step, compute, all-reduce), last 5:"
    tail -n 5 "$run/metrics.jsonl" 2>/dev/null | "$py" -c '
import json, sys
for l in sys.stdin:
    r = json.loads(l); print(r["step"], round(r["step_s"], 4), round(r["compute_s"], 4), round(r["allreduce_s"], 4))'
}

dist_run star coordinator 30 16
# The ring backend: the same run with the gradient worker to worker (two
# workers on one GPU still exercise the GPU path: device-to-host gradient,
# the ring over loopback, the coordinator's commit).
dist_run ring ring 20 0
