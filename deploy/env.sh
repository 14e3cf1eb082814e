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

ddpm_setup() {
    ddpm_setup_venv || { ddpm_log "Python environment set-up failed"; return 1; }
    ddpm_setup_protoc || return 1
    export VIRTUAL_ENV="$DDPM_VENV"
    export PATH="$DDPM_VENV/bin:$PATH"
    export LIBTORCH_USE_PYTORCH=1
    export DDPM_PYTHON="$DDPM_VENV/bin/python"
}
