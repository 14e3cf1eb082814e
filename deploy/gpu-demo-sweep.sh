#!/usr/bin/env bash
# Sizing the CPU demo on a GPU machine: the demo's recipe (tiny preset on
# synthetic:shapes) trained for several step counts and resolutions at
# once, one coordinator and one GPU worker per variant, each ending in its
# sample grid. The learning dynamics are those of the CPU demo (same batches,
# noise, optimizer); only the device is faster. Also checks, on the cifar10
# model, that GPU replicas end with the coordinator's CPU checksum.
#
#   DDPM_BIN=gpu-bin deploy/gpu-demo-sweep.sh
set -u
bin="${DDPM_BIN:-gpu-bin}"
out="${OUT:-/tmp/ddpm-gpu-sweep}"
mkdir -p "$out"
py="${PYTHON:-python3}"
torchlib=$("$py" -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
export LD_LIBRARY_PATH="$torchlib:${LD_LIBRARY_PATH:-}"

# run NAME SECONDS WORKERS WORKER-FLAGS -- COORD-FLAGS...
run() {
    local name=$1 secs=$2 workers=$3 wflags=$4
    shift 5
    local dir="$out/$name"
    mkdir -p "$dir"
    timeout "$secs" "$bin/ddpm-coord" --workers "$workers" --listen 127.0.0.1:0 --run "$dir/run" --threads 2 "$@" \
        >"$dir/coord.out" 2>"$dir/coord.log" &
    local coord=$! addr="" i
    for _ in $(seq 1 300); do
        addr=$(sed -n 's/^listening on //p' "$dir/coord.out" | head -n1)
        [ -n "$addr" ] && break
        sleep 0.1
    done
    for i in $(seq 1 "$workers"); do
        timeout "$secs" "$bin/ddpm-worker" --coord "$addr" $wflags --name "$name-$i" 2>"$dir/worker$i.log" &
    done
    local start=$SECONDS
    wait $coord
    echo "$name: coordinator exit $? after $((SECONDS - start)) s"
}

variant() { # NAME SIZE STEPS BATCH
    cat >"$out/$1.toml" <<TOML
[model]
image_size = $2
[train]
steps = $3
batch_size = $4
[checkpoint]
every_steps = 1000000
at_end = false
TOML
    run "$1" 200 1 "--gpu 0 --threads 1" -- --preset tiny --config "$out/$1.toml"
}

echo "== demo sweep (tiny preset, synthetic:shapes, 1 GPU worker each)"
variant s16-1200 16 1200 32 &
variant s16-2400 16 2400 32 &
variant s16-4000 16 4000 32 &
variant s32-2400 32 2400 32 &
variant s32-4000 32 4000 32 &
variant s16b64-2400 16 2400 64 &

echo "== replicas against the coordinator: cifar10 model, 2 workers on GPU 0, 12 steps"
printf '[checkpoint]\nat_end = false\n' >"$out/replicas.toml"
run replicas 150 2 "--gpu 0" -- --preset cifar10 --config "$out/replicas.toml" --data synthetic:shapes --steps 12 --batch-size 64 --samples 0
cat "$out/replicas/run/summary.json"; echo
wait
for d in "$out"/s*/; do
    n=$(basename "$d")
    echo "$n: $(grep -E 'step +[0-9]+/' "$d/coord.log" | tail -n1 | sed 's/^.*Z //' | cut -c1-160)"
    sed -n 's/^sample grid: //p' "$d/coord.out"
done
# Only the logs, summaries and grids come back.
find "$out" -name '*.safetensors' -delete
