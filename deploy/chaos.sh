#!/usr/bin/env bash
# Chaos: a real local training run (coordinator and CPU workers on loopback)
# under random faults for as long as you like, then a check that nothing was
# lost. The same faults tests/faults.rs provokes once each, here again and
# again, mixed:
#
#   worker-kill    kill -9 a worker, start a new one       (step redone by the others)
#   worker-hang    SIGSTOP a worker for 3-12 s, then SIGCONT (dropped as a straggler
#                  or silent member; it rejoins by itself)
#   coord-kill     kill -9 the coordinator, start it again  (resumes from its latest
#                  complete checkpoint; the workers rejoin by themselves)
#   coord-term     SIGTERM the coordinator, start it again  (checkpoint, clean stop, resume)
#
#   deploy/chaos.sh                         10 minutes, 2 workers, 20000 steps
#   deploy/chaos.sh --minutes 60 --workers 3 --steps 20000 --seed 7
#   deploy/chaos.sh --faults worker-kill,coord-kill
#
# When the time is up the faults stop and the run trains to its last step.
# Then it checks: the coordinator exited 0; summary.json has every step, no
# error, and replicas that agree; the latest complete checkpoint is the last
# step; every step's metrics row is there exactly once. It prints the faults
# it injected and exits non-zero if any check fails. The run stays in
# runs/chaos-<time>/ (logs of every process start included).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

minutes=10 workers=2 steps=20000 seed=$$ faults="worker-kill,worker-hang,coord-kill,coord-term"
while [ $# -gt 0 ]; do
    case "$1" in
        --minutes) minutes="$2"; shift 2 ;;
        --workers) workers="$2"; shift 2 ;;
        --steps) steps="$2"; shift 2 ;;
        --seed) seed="$2"; shift 2 ;;
        --faults) faults="$2"; shift 2 ;;
        -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
        *) echo "unknown flag $1 (see --help)" >&2; exit 2 ;;
    esac
done
IFS=, read -r -a fault_kinds <<<"$faults"
for f in "${fault_kinds[@]}"; do
    case "$f" in worker-kill|worker-hang|coord-kill|coord-term) ;; *) echo "unknown fault $f" >&2; exit 2 ;; esac
done
RANDOM=$seed

source deploy/env.sh
ddpm_setup
cargo build --workspace --bins
bin="${CARGO_TARGET_DIR:-$root/target}/debug"
run="runs/chaos-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$run/logs"
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
addr="127.0.0.1:$port"
cfg="$run/chaos.toml"
cat >"$cfg" <<TOML
# The tiny U-Net at 16x16, checkpointing often so that every restart has one near.
[model]
image_size = 16
ch = 16
ch_mult = [1, 2]
num_res_blocks = 1
attn_resolutions = []
dropout = 0.0
num_groups = 8
[train]
batch_size = 16
log_every = 10
[checkpoint]
every_steps = 50
every_minutes = 0.0
[dist]
heartbeat_timeout_s = 5.0
straggler_min_s = 3.0
TOML

starts=0
coord_pid=""
start_coord() {
    starts=$((starts + 1))
    "$bin/ddpm-coord" --preset tiny --config "$cfg" --workers "$workers" --steps "$steps" --samples 0 --threads 1 \
        --listen "$addr" --run "$run" >"$run/logs/coord.$starts.log" 2>&1 &
    coord_pid=$!
}
declare -a wpids
wstarts=0
start_worker() {
    local i=$1
    wstarts=$((wstarts + 1))
    "$bin/ddpm-worker" --coord "$addr" --device cpu --threads 1 --name "chaos/w$i" --connect-timeout 600 \
        >"$run/logs/worker$i.$wstarts.log" 2>&1 &
    wpids[$i]=$!
}
cleanup() { kill -9 "$coord_pid" "${wpids[@]}" 2>/dev/null || true; }
trap cleanup EXIT

start_coord
for i in $(seq 1 "$workers"); do start_worker "$i"; done
declare -A injected
end=$((SECONDS + minutes * 60))
echo "chaos: run $run on $addr, $workers workers, $steps steps, faults for $minutes min (seed $seed)"
coord_exit=""
while [ $SECONDS -lt $end ]; do
    sleep $((5 + RANDOM % 16))
    if ! kill -0 "$coord_pid" 2>/dev/null; then
        wait "$coord_pid" && coord_exit=0 || coord_exit=$?
        break # it finished (or failed) before the time was up
    fi
    f="${fault_kinds[$((RANDOM % ${#fault_kinds[@]}))]}"
    w=$((1 + RANDOM % workers))
    injected[$f]=$(( ${injected[$f]:-0} + 1 ))
    case "$f" in
        worker-kill) echo "  $(date +%T) kill -9 worker $w"; kill -9 "${wpids[$w]}" 2>/dev/null || true; start_worker "$w" ;;
        worker-hang)
            t=$((3 + RANDOM % 10)); echo "  $(date +%T) SIGSTOP worker $w for $t s"
            kill -STOP "${wpids[$w]}" 2>/dev/null || true; sleep "$t"; kill -CONT "${wpids[$w]}" 2>/dev/null || true ;;
        coord-kill) echo "  $(date +%T) kill -9 the coordinator"; kill -9 "$coord_pid"; wait "$coord_pid" 2>/dev/null || true; start_coord ;;
        coord-term) echo "  $(date +%T) SIGTERM the coordinator"; kill -TERM "$coord_pid"; wait "$coord_pid" 2>/dev/null || true; start_coord ;;
    esac
done
if [ -z "$coord_exit" ]; then
    echo "chaos: faults over; training to the last step"
    wait "$coord_pid" && coord_exit=0 || coord_exit=$?
fi

echo "chaos: injected $(for k in "${!injected[@]}"; do printf '%s=%s ' "$k" "${injected[$k]}"; done)(coordinator starts: $starts, worker starts: $wstarts)"
fail=0
check() { if eval "$2"; then echo "  ok    $1"; else echo "  FAIL  $1"; fail=1; fi; }
check "the coordinator's last start exited 0 (logs/coord.$starts.log)" '[ "$coord_exit" = 0 ]'
python3 - "$run" "$steps" <<'PY' || fail=1
import json, sys, pathlib
run, steps = pathlib.Path(sys.argv[1]), int(sys.argv[2])
ok = True
def check(name, cond):
    global ok
    print(("  ok    " if cond else "  FAIL  ") + name)
    ok &= bool(cond)
s = json.loads((run / "summary.json").read_text()) if (run / "summary.json").exists() else {}
check(f"summary.json: {s.get('steps')} of {steps} steps", s.get("steps") == steps)
check(f"summary.json: no error ({s.get('error')})", s.get("error") is None)
check("summary.json: replicas agree", s.get("replicas_agree") is True)
rows = [json.loads(l)["step"] for l in (run / "metrics.jsonl").read_text().splitlines() if l.strip() and '"loss"' in l]
check(f"metrics.jsonl: each of the {steps} steps once ({len(rows)} rows)", sorted(rows) == list(range(1, steps + 1)))
sys.exit(0 if ok else 1)
PY
latest="$("$bin/ddpm" checkpoints list --run "$run" --json | python3 -c 'import json,sys; c=[x for x in json.load(sys.stdin) if x.get("complete")]; print(max((x["step"] for x in c), default=0))')"
check "the latest complete checkpoint is step $steps (it is $latest)" '[ "$latest" = "$steps" ]'
[ $fail = 0 ] && echo "chaos: nothing lost" || echo "chaos: CHECKS FAILED; see $run/logs"
exit $fail
