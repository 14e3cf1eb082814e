#!/usr/bin/env bash
# A real S3-compatible server on 127.0.0.1 for the store conformance tests:
# Garage 2.5.0 (https://garagehq.deuxfleurs.fr), single node, one bucket,
# fixed test credentials, data in a temporary directory.
#
# Sourced (tests/run.sh does this):
#     source deploy/s3-test-server.sh
#     ddpm_s3_start            # installs Garage if missing, starts it, exports DDPM_TEST_S3_*
#     trap ddpm_s3_stop EXIT   # stops it and removes its data
#
# Run directly, it starts the server, prints the variables to export in
# another shell, and serves until Ctrl-C:
#     deploy/s3-test-server.sh
#
# Garage is built from crates.io once (`cargo install garage@2.5.0 --locked
# --debug`, 6 to 12 minutes on 2 cores, no protoc needed) into
# $DDPM_GARAGE_ROOT (default ~/.cache/ddpm/garage), outside the clone, so
# later runs on the same machine reuse it. It starts in about a second.
#
# Exported: DDPM_TEST_S3_ENDPOINT (http://127.0.0.1:PORT), DDPM_TEST_S3_BUCKET,
# DDPM_TEST_S3_ACCESS_KEY, DDPM_TEST_S3_SECRET, DDPM_TEST_S3_REGION, DDPM_TEST_S3_PID.

DDPM_GARAGE_VERSION="2.5.0"
DDPM_GARAGE_ROOT="${DDPM_GARAGE_ROOT:-$HOME/.cache/ddpm/garage}"

ddpm_s3_log() { printf '[s3 test server] %s\n' "$*" >&2; }

# Installs Garage into $DDPM_GARAGE_ROOT unless the right version is there.
ddpm_s3_install() {
    local bin="$DDPM_GARAGE_ROOT/bin/garage"
    if [ -x "$bin" ] && "$bin" --version 2>/dev/null | grep -qF "$DDPM_GARAGE_VERSION"; then
        return 0
    fi
    ddpm_s3_log "installing Garage $DDPM_GARAGE_VERSION into $DDPM_GARAGE_ROOT (cargo install, about 6-12 minutes once)"
    # Its own target directory: the workspace's CARGO_TARGET_DIR must not
    # receive Garage's 300 crates.
    ( unset CARGO_TARGET_DIR; cargo install "garage@$DDPM_GARAGE_VERSION" --locked --debug --root "$DDPM_GARAGE_ROOT" ) >&2 \
        || { ddpm_s3_log "cargo install garage failed"; return 1; }
}

# Prints a free TCP port on 127.0.0.1.
ddpm_s3_free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

ddpm_s3_start() {
    ddpm_s3_install || return 1
    DDPM_S3_DIR="$(mktemp -d "${TMPDIR:-/tmp}/ddpm-garage.XXXXXX")"
    local s3_port rpc_port admin_port
    s3_port="$(ddpm_s3_free_port)"; rpc_port="$(ddpm_s3_free_port)"; admin_port="$(ddpm_s3_free_port)"
    cat > "$DDPM_S3_DIR/garage.toml" <<EOF
metadata_dir = "$DDPM_S3_DIR/meta"
data_dir = "$DDPM_S3_DIR/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$rpc_port"
rpc_public_addr = "127.0.0.1:$rpc_port"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$s3_port"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:$admin_port"
EOF
    export DDPM_TEST_S3_ENDPOINT="http://127.0.0.1:$s3_port"
    export DDPM_TEST_S3_BUCKET="ddpm-test"
    export DDPM_TEST_S3_ACCESS_KEY="GK0ddb0e5t0000000000000001"
    export DDPM_TEST_S3_SECRET="ddpmtest00000000000000000000000000000000000000000000000000000001"
    export DDPM_TEST_S3_REGION="garage"
    GARAGE_RPC_SECRET="$(python3 -c 'import secrets; print(secrets.token_hex(32))')" \
    GARAGE_DEFAULT_ACCESS_KEY="$DDPM_TEST_S3_ACCESS_KEY" \
    GARAGE_DEFAULT_SECRET_KEY="$DDPM_TEST_S3_SECRET" \
    GARAGE_DEFAULT_BUCKET="$DDPM_TEST_S3_BUCKET" \
    RUST_LOG="${DDPM_GARAGE_LOG:-garage=warn}" \
        "$DDPM_GARAGE_ROOT/bin/garage" -c "$DDPM_S3_DIR/garage.toml" server --single-node --default-bucket \
        > "$DDPM_S3_DIR/garage.log" 2>&1 &
    DDPM_S3_PID=$!
    # The fault tests freeze and thaw the server (SIGSTOP, SIGCONT) by this.
    export DDPM_TEST_S3_PID="$DDPM_S3_PID"
    local i
    for i in $(seq 1 300); do
        if ! kill -0 "$DDPM_S3_PID" 2>/dev/null; then
            ddpm_s3_log "Garage exited while starting; its log:"; cat "$DDPM_S3_DIR/garage.log" >&2
            return 1
        fi
        # /health answers 200 once the node serves requests; the bucket
        # is created right after the layout, so also wait for the S3 port.
        if python3 - "$admin_port" "$s3_port" <<'PY' 2>/dev/null
import sys, urllib.request, socket
urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/health", timeout=1).read()
socket.create_connection(("127.0.0.1", int(sys.argv[2])), timeout=1).close()
PY
        then
            ddpm_s3_log "Garage $DDPM_GARAGE_VERSION serving S3 at $DDPM_TEST_S3_ENDPOINT (bucket $DDPM_TEST_S3_BUCKET, region garage) after $((i / 10)).$((i % 10)) s"
            return 0
        fi
        sleep 0.1
    done
    ddpm_s3_log "Garage did not become healthy within 30 s; its log:"; cat "$DDPM_S3_DIR/garage.log" >&2
    ddpm_s3_stop
    return 1
}

ddpm_s3_stop() {
    if [ -n "${DDPM_S3_PID:-}" ]; then
        kill "$DDPM_S3_PID" 2>/dev/null && wait "$DDPM_S3_PID" 2>/dev/null
        DDPM_S3_PID=""
    fi
    if [ -n "${DDPM_S3_DIR:-}" ] && [ -d "$DDPM_S3_DIR" ]; then
        rm -rf "$DDPM_S3_DIR"
        DDPM_S3_DIR=""
    fi
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    set -euo pipefail
    ddpm_s3_start
    trap ddpm_s3_stop EXIT
    trap 'exit 0' INT TERM
    echo "export DDPM_TEST_S3_ENDPOINT=$DDPM_TEST_S3_ENDPOINT DDPM_TEST_S3_BUCKET=$DDPM_TEST_S3_BUCKET DDPM_TEST_S3_ACCESS_KEY=$DDPM_TEST_S3_ACCESS_KEY DDPM_TEST_S3_SECRET=$DDPM_TEST_S3_SECRET DDPM_TEST_S3_REGION=$DDPM_TEST_S3_REGION"
    ddpm_s3_log "serving until Ctrl-C"
    wait "$DDPM_S3_PID"
fi
