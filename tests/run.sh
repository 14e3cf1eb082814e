#!/usr/bin/env bash
# The whole test suite: set-up (Python env with torch and the reference
# packages, protoc, headless Chromium, patchelf, kubectl, Prometheus), golden fixtures from their generator scripts, a build of
# every binary, the S3 test server (deploy/s3-test-server.sh), then every
# test of the workspace.
#
#   tests/run.sh            everything
#   tests/run.sh FILTER     only tests whose name contains FILTER
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
source deploy/env.sh
ddpm_setup
# The dashboard's test drives a real browser.
ddpm_setup_chromium
# The image layout test patches RUNPATHs; the manifest tests render with kubectl.
ddpm_setup_patchelf
ddpm_setup_kubectl
# The alert tests run promtool and a real Prometheus.
ddpm_setup_prometheus

export DDPM_GOLDEN_DIR="${DDPM_GOLDEN_DIR:-$root/target/golden}"
mkdir -p "$DDPM_GOLDEN_DIR"
# Reference numbers come from PyTorch, diffusers and numpy, produced by the
# scripts in tests/golden/ (each reruns only when it or its inputs change).
for gen in tests/golden/gen_*.py; do
    [ -e "$gen" ] || continue
    "$DDPM_PYTHON" "$gen" --out "$DDPM_GOLDEN_DIR/$(basename "$gen" .py | sed 's/^gen_//')"
done

# Integration tests start the real binaries, so build them first.
cargo build --workspace --bins

# The store conformance tests run against a real S3-compatible server on
# loopback: Garage, installed once into ~/.cache/ddpm/garage and started
# here with a fresh temporary bucket (DDPM_TEST_S3_* tell the tests where).
source deploy/s3-test-server.sh
ddpm_s3_start
trap ddpm_s3_stop EXIT

cargo test --workspace --no-fail-fast -- "$@"
