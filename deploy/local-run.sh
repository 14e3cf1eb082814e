#!/usr/bin/env bash
# The main job: a short local training run. Starts a coordinator and two CPU
# workers on loopback, trains the tiny preset on the built-in synthetic
# shapes dataset, and ends with a sample grid PNG drawn from the EMA weights.
#
#   deploy/local-run.sh                 the demo (tiny preset, 2 workers)
#   deploy/local-run.sh --steps 200     extra flags go to ddpm-coord
#
# Set-up (Python env with torch, protoc, the build) happens on first use.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
source deploy/env.sh
ddpm_setup

workers="${DDPM_DEMO_WORKERS:-2}"
cargo build --workspace --bins
bin="${CARGO_TARGET_DIR:-$root/target}/debug"
run_dir="runs/demo-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$run_dir"
log="$run_dir/coordinator.log"

"$bin/ddpm-coord" --preset tiny --config deploy/demo.toml --workers "$workers" --listen 127.0.0.1:0 \
    --metrics-listen "${DDPM_DEMO_METRICS:-127.0.0.1:0}" --run "$run_dir" "$@" >"$log.out" 2> >(tee "$log" >&2) &
coord=$!
pids=()
trap 'kill $coord "${pids[@]}" 2>/dev/null || true' EXIT
# The coordinator prints "listening on ADDR", then "metrics on URL" once its
# HTTP port is bound: wait for both, so the URL printed below is real.
addr=""
dashboard=""
for _ in $(seq 1 600); do
    addr=$(sed -n 's/^listening on //p' "$log.out" 2>/dev/null | head -n1)
    dashboard=$(sed -n 's/^metrics on //p' "$log.out" 2>/dev/null | head -n1)
    [ -n "$addr" ] && [ -n "$dashboard" ] && break
    kill -0 $coord 2>/dev/null || { echo "ddpm-coord exited early; see $log" >&2; exit 1; }
    sleep 0.1
done
[ -n "$addr" ] || { echo "ddpm-coord did not start; see $log" >&2; exit 1; }
if [ -n "$dashboard" ]; then
    echo "Watch it: the dashboard at $dashboard/ , or: $bin/ddpm status --coord $addr" >&2
else
    echo "Watch it: $bin/ddpm status --coord $addr" >&2
fi
for i in $(seq 1 "$workers"); do
    "$bin/ddpm-worker" --coord "$addr" --device cpu --threads 1 --name "local/cpu$i" 2>"$run_dir/worker$i.log" &
    pids+=($!)
done
wait $coord
cat "$log.out"
grid=$(sed -n 's/^sample grid: //p' "$log.out")
echo
echo "Done. Weights, logs and summary are in $run_dir/"
[ -n "$grid" ] && echo "Sample grid: $grid"
