"""Driver of bench/database.sh: dynamic PostgreSQL credentials from keyhaven and OpenBao.

Measures, on the same PostgreSQL, for each server (one under load at a time):
  - issue rate of GET /v1/database/creds/bench at CONCURRENCY keep-alive connections
    (a Python thread per connection, this process is the load generator): credentials per
    wall second and per server CPU-second (utime+stime from /proc/<pid>/stat), p50/p99
    latency, errors; REPEATS runs interleaved between the servers;
  - the physical limit: the same CREATE ROLE + GRANT transaction run directly with pgbench
    over CONCURRENCY connections (roles per second);
  - mass expiry: N_REVOKE credentials with a REVOKE_TTL lease, then the time from the last
    (and the first) lease's expiry until none of their roles is left in pg_roles;
  - revoke-prefix: N_REVOKE live credentials, PUT sys/leases/revoke-prefix (sync): time
    until the call returns and until none of their roles is left in pg_roles.

Run it through bench/database.sh, which installs OpenBao and psycopg and sets the environment.
"""
import http.client
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time

import psycopg

E = os.environ
WORK = E["WORK"]
KEYHAVEN, BAO = E["KEYHAVEN"], E["BAO"]
DUR, WARM, REPS = int(E["DURATION"]), int(E["WARMUP"]), int(E["REPEATS"])
CONC = int(E["CONCURRENCY"])
N_REVOKE, REVOKE_TTL = int(E["N_REVOKE"]), int(E["REVOKE_TTL"])
REVOKE_REPEATS, REVOKE_DEADLINE = int(E["REVOKE_REPEATS"]), float(E["REVOKE_DEADLINE"])
MAX_OPEN = int(E["MAX_OPEN"])
SERVER_NAMES = E["SERVERS"].split()
PHASES = E["PHASES"].split()
PORT = int(E["PORT"])
PGDB, PGUSER, PGPORT = E["PGDATABASE"], E["PGUSER"], int(E["PGPORT"])
PGBENCH = E["PGBENCH"]
NICE = ["nice", "-n", E["NICE"]] if E["NICE"] != "0" else []
HZ = os.sysconf("SC_CLK_TCK")
HOST = "127.0.0.1"  # loopback only, on purpose (servers and PostgreSQL)
ROLE_PREFIX_PG = "khbpg-"  # roles the pgbench phase creates
CREATION = ['CREATE ROLE "{{name}}" WITH LOGIN PASSWORD \'{{password}}\' VALID UNTIL \'{{expiration}}\';',
            'GRANT SELECT ON t TO "{{name}}";']

LIVE = {}  # pid -> Popen, every process this driver started and has not reaped


def stop(p):
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    LIVE.pop(p.pid, None)


def stop_all(*_):
    for p in list(LIVE.values()):
        stop(p)


def on_signal(signum, _frame):
    stop_all()
    sys.exit(128 + signum)


signal.signal(signal.SIGTERM, on_signal)
signal.signal(signal.SIGINT, on_signal)
signal.signal(signal.SIGHUP, on_signal)


# ---------------------------------------------------------------- HTTP helpers
def request(port, method, path, body=None, token=None, timeout=120):
    c = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        headers = {"Content-Type": "application/json"}
        if token:
            headers["X-Vault-Token"] = token
        c.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
        r = c.getresponse()
        data = r.read()
        try:
            j = json.loads(data) if data.strip() else {}
        except ValueError:
            j = {"raw": data[:500].decode("utf-8", "replace")}
        return r.status, j
    finally:
        c.close()


class StepFailed(RuntimeError):
    pass


def call(port, method, path, body=None, token=None, ok=(200, 204)):
    status, j = request(port, method, path, body, token)
    if status not in ok:
        shown = json.dumps(body) if body is not None else ""
        raise StepFailed(f"{method} {path} {shown} -> {status} {json.dumps(j)}")
    return j


def port_free(port):
    s = __import__("socket").socket()
    try:
        return s.connect_ex((HOST, port)) != 0
    finally:
        s.close()


def proc_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def sys_busy():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return sum(v) - v[3] - v[4], sum(v)


# ---------------------------------------------------------------- PostgreSQL
def pg(db=PGDB, autocommit=True):
    return psycopg.connect(host=HOST, port=PGPORT, user=PGUSER, dbname=db, autocommit=autocommit)


def pg_prepare():
    with pg("postgres") as c:
        if not c.execute("SELECT 1 FROM pg_database WHERE datname = %s", (PGDB,)).fetchone():
            c.execute(f'CREATE DATABASE "{PGDB}"')
    with pg() as c:
        c.execute("CREATE TABLE IF NOT EXISTS t (id int PRIMARY KEY, v text)")
        c.execute("INSERT INTO t VALUES (1, 'bench') ON CONFLICT DO NOTHING")
    return drop_leftovers()


def leftover_roles(c):
    """Roles this benchmark made: grantees on khbench.t, pgbench's, and the servers' v-*-bench-*."""
    rows = c.execute(
        "SELECT grantee FROM information_schema.role_table_grants WHERE table_schema = 'public' "
        "AND table_name = 't' AND grantee <> %s "
        "UNION SELECT rolname FROM pg_roles WHERE rolname LIKE %s OR rolname ~ %s",
        (PGUSER, ROLE_PREFIX_PG + "%", r"^v-[a-z0-9_]+-bench-")).fetchall()
    return [r[0] for r in rows]


def drop_roles(names, batch=200):
    """DROP OWNED (the grant on t) and DROP ROLE, for the names that exist; untimed clean-up."""
    n = 0
    with pg(autocommit=False) as c:
        existing = [r[0] for r in c.execute("SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)",
                                            (list(names),)).fetchall()]
        for i, name in enumerate(existing):
            q = '"' + name.replace('"', '""') + '"'
            c.execute(f"DROP OWNED BY {q}")
            c.execute(f"DROP ROLE {q}")
            n += 1
            if i % batch == batch - 1:
                c.commit()
        c.commit()
    return n


def drop_leftovers():
    with pg() as c:
        names = leftover_roles(c)
    return drop_roles(names) if names else 0


def count_roles(c, names):
    return c.execute("SELECT count(*) FROM pg_roles WHERE rolname = ANY(%s)", (names,)).fetchone()[0]


def pg_backend_count(c):
    return c.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (PGDB,)).fetchone()[0]


# ---------------------------------------------------------------- servers
class Server:
    def __init__(self, name, port):
        self.name, self.port, self.token, self.proc = name, port, "root", None
        self.log = open(f"{WORK}/{name}.log", "ab")

    def argv(self):
        addr = f"{HOST}:{self.port}"
        if self.name == "keyhaven-dev":
            return [KEYHAVEN, "server", "--dev", "--dev-listen-address", addr, "--dev-root-token-id", "root"]
        if self.name == "openbao-dev":
            return [BAO, "server", "-dev", "-dev-root-token-id=root", f"-dev-listen-address={addr}"]
        raise SystemExit(f"unknown server {self.name}")

    def start(self):
        if not port_free(self.port):
            raise SystemExit(f"something already listens on {HOST}:{self.port}; set PORT")
        self.proc = subprocess.Popen(NICE + self.argv(), stdout=self.log, stderr=self.log,
                                     stdin=subprocess.DEVNULL)
        LIVE[self.proc.pid] = self.proc
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise StepFailed(f"{self.name} exited with {self.proc.returncode} at start-up (log {self.log.name})")
            try:
                if request(self.port, "GET", "/v1/sys/health", timeout=1)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.02)
        raise StepFailed(f"{self.name}: no 200 from /v1/sys/health within 60s")

    def stop(self):
        if self.proc is not None:
            stop(self.proc)
            self.proc = None

    def role_body(self, ttl):
        return {"db_name": "pg", "creation_statements": CREATION, "default_ttl": ttl, "max_ttl": "24h"}

    def setup(self):
        p, t = self.port, self.token
        call(p, "POST", "/v1/sys/mounts/database", {"type": "database"}, t)
        call(p, "POST", "/v1/database/config/pg", {
            "plugin_name": "postgresql-database-plugin",
            "connection_url": f"postgresql://{{{{username}}}}:{{{{password}}}}@{HOST}:{PGPORT}/{PGDB}?sslmode=disable",
            "username": PGUSER, "password": "bench-unused-trust-auth", "allowed_roles": "*",
            "max_open_connections": MAX_OPEN}, t)
        self.set_ttl("1h")
        got = call(p, "GET", "/v1/database/creds/bench", token=t)
        if not got.get("data", {}).get("username") or not got.get("lease_id"):
            raise StepFailed(f"GET /v1/database/creds/bench -> 200 without username or lease_id: "
                             f"{sorted(got)} / data {sorted(got.get('data', {}))}")
        with pg() as c:
            if count_roles(c, [got["data"]["username"]]) != 1:
                raise StepFailed(f"{self.name}: issued user {got['data']['username']} is not in pg_roles")
        # the credential works: log in with it and read the table
        with psycopg.connect(host=HOST, port=PGPORT, user=got["data"]["username"],
                             password=got["data"]["password"], dbname=PGDB) as c:
            c.execute("SELECT v FROM t WHERE id = 1").fetchone()
        self.revoke_all()

    def set_ttl(self, ttl):
        call(self.port, "POST", "/v1/database/roles/bench", self.role_body(ttl), self.token)

    def revoke_all(self):
        """revoke-prefix (sync) of every bench lease; returns seconds the call took."""
        t0 = time.perf_counter()
        call(self.port, "PUT", "/v1/sys/leases/revoke-prefix/database/creds/bench", {"sync": True}, self.token)
        return time.perf_counter() - t0


# ---------------------------------------------------------------- load (this process)
class Loader:
    """CONC threads, each with one keep-alive HTTP/1.1 connection, issuing credentials until
    the stop time or until `count` credentials have been asked for in total."""

    def __init__(self, srv, seconds=None, count=None):
        self.srv, self.seconds, self.count = srv, seconds, count
        self.lock = threading.Lock()
        self.asked = self.attempts = 0
        self.lat, self.codes, self.errors, self.creds = [], {}, [], []

    def take(self):
        if self.count is None:
            return time.perf_counter() < self.t_end
        with self.lock:
            # asked = credentials received + requests in flight; a failed request gives its
            # place back, up to 5 attempts per credential in all
            if self.asked >= self.count or self.attempts >= 5 * self.count:
                return False
            self.asked += 1
            self.attempts += 1
            return True

    def failed(self):
        if self.count is not None:
            with self.lock:
                self.asked -= 1

    def worker(self):
        lat, codes, creds, errors = [], {}, [], []
        conn = http.client.HTTPConnection(HOST, self.srv.port, timeout=60)
        headers = {"X-Vault-Token": self.srv.token}
        while self.take():
            t0 = time.perf_counter()
            try:
                conn.request("GET", "/v1/database/creds/bench", headers=headers)
                r = conn.getresponse()
                data = r.read()
                t1 = time.perf_counter()
                codes[str(r.status)] = codes.get(str(r.status), 0) + 1
                if r.status == 200:
                    lat.append(t1 - t0)
                    j = json.loads(data)
                    creds.append((j["data"]["username"], j["lease_id"], j.get("lease_duration"), t0, t1))
                else:
                    self.failed()
                    if len(errors) < 5:
                        errors.append(f"{r.status} {data[:300]!r}")
            except (OSError, http.client.HTTPException, ValueError, KeyError) as e:
                codes["exception"] = codes.get("exception", 0) + 1
                self.failed()
                if len(errors) < 5:
                    errors.append(repr(e))
                conn.close()
                conn = http.client.HTTPConnection(HOST, self.srv.port, timeout=60)
        conn.close()
        with self.lock:
            self.lat += lat
            self.creds += creds
            self.errors += errors
            for k, v in codes.items():
                self.codes[k] = self.codes.get(k, 0) + v

    def run(self):
        self.t_start = time.perf_counter()
        self.t_end = self.t_start + (self.seconds or 0)
        th = [threading.Thread(target=self.worker) for _ in range(CONC)]
        for t in th:
            t.start()
        for t in th:
            t.join()
        self.elapsed = time.perf_counter() - self.t_start
        return self


def pct(v, q):
    if not v:
        return float("nan")
    v = sorted(v)
    return v[min(len(v) - 1, int(q * len(v)))]


CLEANUP_ERRORS = []


def cleanup(srv, names):
    """Untimed: revoke-prefix through the server, then drop whatever is left directly."""
    t0 = time.perf_counter()
    try:
        srv.revoke_all()
        err = None
    except StepFailed as e:
        err = str(e)
        print(f"    {srv.name}: clean-up revoke-prefix failed (the roles left are dropped directly): {err[:400]}",
              flush=True)
        CLEANUP_ERRORS.append(f"{srv.name}: {err}")
    t = time.perf_counter() - t0
    left = 0
    if names:
        with pg() as c:
            left = count_roles(c, names)
    dropped = drop_roles(names) if left else 0
    return t, left, dropped


def issue_run(srv, rep, raw, rows):
    if WARM > 0:
        w = Loader(srv, seconds=WARM).run()
        cleanup(srv, [c[0] for c in w.creds])
    pid = srv.proc.pid
    load1 = os.getloadavg()[0]
    s0, b0, me0 = proc_ticks(pid), sys_busy(), os.times()
    ld = Loader(srv, seconds=DUR).run()
    s1, b1, me1 = proc_ticks(pid), sys_busy(), os.times()
    el = ld.elapsed
    ok = len(ld.creds)
    cores = (s1 - s0) / HZ / el
    lg = (me1.user - me0.user + me1.system - me0.system) / el
    machine = (b1[0] - b0[0]) / max(1, b1[1] - b0[1]) * os.cpu_count()
    errs = sum(v for k, v in ld.codes.items() if k != "200")
    names = [c[0] for c in ld.creds]
    t_rev, left, dropped = cleanup(srv, names)
    rec = dict(phase="issue", server=srv.name, rep=rep, conc=CONC, seconds=el, ok=ok, rps=ok / el,
               per_cpu_s=ok / max((s1 - s0) / HZ, 1e-9), server_cores=cores,
               p50_ms=pct(ld.lat, 0.50) * 1e3, p99_ms=pct(ld.lat, 0.99) * 1e3, errors=errs,
               codes=ld.codes, error_samples=ld.errors, loadgen_cores=lg, machine_busy_cores=machine,
               load1=load1, cleanup_revoke_prefix_s=t_rev, cleanup_left_after_revoke=left,
               cleanup_dropped=dropped)
    raw.write(json.dumps(rec) + "\n")
    raw.flush()
    rows.setdefault(("issue", srv.name), []).append(rec)
    print(f"rep {rep} {srv.name:13s} issue c={CONC}: {rec['rps']:7.1f} creds/s  {rec['per_cpu_s']:8.1f} per "
          f"server CPU-s  p50 {rec['p50_ms']:6.2f} ms  p99 {rec['p99_ms']:7.2f} ms  err {errs}  server "
          f"{cores:.2f} cores  loadgen {lg:.2f}  machine {machine:.2f}  load1 {load1:.1f}  | clean-up: "
          f"revoke-prefix of {ok} in {t_rev:.2f}s, {left} left, dropped {dropped}", flush=True)
    if ld.errors:
        print(f"    error samples: {ld.errors[:3]}", flush=True)


def pgbench_run(rep, raw, rows, conc):
    # Concurrent GRANTs on one table fail with "tuple concurrently updated" (both update the
    # table's pg_class row): the GRANT and the commit are serialised with a transaction-level
    # advisory lock; CREATE ROLE (password hashing included) still runs in parallel.
    script = f"{WORK}/create-role.sql"
    with open(script, "w") as f:
        f.write("\\set n random(1, 999999999999)\n"
                "BEGIN;\n"
                f"CREATE ROLE \"{ROLE_PREFIX_PG}:client_id-:n\" WITH LOGIN PASSWORD 'A1a-Zk3pQ8wLmN2xVb7Rt5Y' "
                "VALID UNTIL '2099-01-01 00:00:00+00';\n"
                "SELECT pg_advisory_xact_lock(8151);\n"
                f"GRANT SELECT ON t TO \"{ROLE_PREFIX_PG}:client_id-:n\";\n"
                "COMMIT;\n")
    load1 = os.getloadavg()[0]
    b0 = sys_busy()
    cmd = [PGBENCH, "-n", "-h", HOST, "-p", str(PGPORT), "-U", PGUSER, "-c", str(conc), "-j", str(min(conc, 2)),
           "-T", str(DUR), "-f", script, "-r", PGDB]
    out = subprocess.run(NICE + cmd, capture_output=True, text=True)
    b1 = sys_busy()
    machine = (b1[0] - b0[0]) / max(1, b1[1] - b0[1]) * os.cpu_count()
    if out.returncode != 0:
        raise StepFailed(f"pgbench failed ({out.returncode}): {out.stderr[-800:]}")
    tps = re.search(r"tps = ([0-9.]+)", out.stdout)
    lat = re.search(r"latency average = ([0-9.]+) ms", out.stdout)
    done = re.search(r"number of transactions actually processed: (\d+)", out.stdout)
    failed = re.search(r"number of failed transactions: (\d+)", out.stdout)
    with pg() as c:
        made = [r[0] for r in c.execute("SELECT rolname FROM pg_roles WHERE rolname LIKE %s",
                                        (ROLE_PREFIX_PG + "%",)).fetchall()]
    dropped = drop_roles(made)
    ph = "pg_direct" if conc == CONC else f"pg_direct_c{conc}"
    rec = dict(phase=ph, rep=rep, conc=conc, rps=float(tps.group(1)), avg_latency_ms=float(lat.group(1)),
               transactions=int(done.group(1)), failed=int(failed.group(1)) if failed else 0,
               roles_made=len(made), dropped=dropped, machine_busy_cores=machine, load1=load1,
               cmd=" ".join(cmd), script=open(script).read())
    raw.write(json.dumps(rec) + "\n")
    raw.flush()
    rows.setdefault((ph, "postgresql"), []).append(rec)
    print(f"rep {rep} postgresql    CREATE ROLE+GRANT c={conc}: {rec['rps']:7.1f} roles/s  avg {rec['avg_latency_ms']:.2f} ms  "
          f"({rec['transactions']} transactions, {rec['failed']} failed, {len(made)} roles made)  machine "
          f"{machine:.2f}  load1 {load1:.1f}", flush=True)


def wait_gone(names, t_ref_list, deadline_s):
    """Poll pg_roles every 50 ms until none of `names` is left; return the time it happened."""
    with pg() as c:
        t_stop = time.time() + deadline_s
        last = None
        while time.time() < t_stop:
            n = count_roles(c, names)
            now = time.time()
            if n != last:
                t_ref_list.append((now, n))
                last = n
            if n == 0:
                return now
            time.sleep(0.05)
    return None


def issue_count(srv, n):
    ld = Loader(srv, count=n)
    t0 = time.time()
    pc0 = time.perf_counter()
    ld.run()
    # convert perf_counter stamps of the credentials to wall-clock time
    off = t0 - pc0
    creds = [(u, l, d, a + off, b + off) for (u, l, d, a, b) in ld.creds]
    if len(creds) != n:
        raise StepFailed(f"{srv.name}: asked for {n} credentials, got {len(creds)}; codes {ld.codes}; "
                         f"samples {ld.errors[:3]}")
    errs = sum(v for k, v in ld.codes.items() if k != "200")
    if errs:
        print(f"    {srv.name}: {errs} failed requests while issuing {n} ({ld.codes}); samples {ld.errors[:3]}",
              flush=True)
    return creds, time.time() - t0, errs


def expiry_run(srv, rep, raw, rows):
    srv.set_ttl(f"{REVOKE_TTL}s")
    try:
        creds, t_issue, issue_errs = issue_count(srv, N_REVOKE)
    finally:
        srv.set_ttl("1h")
    names = [c[0] for c in creds]
    durs = {c[2] for c in creds}
    # a lease expires lease_duration after the server made it: between sending and receiving
    first_exp = min(c[3] + c[2] for c in creds)
    last_exp = max(c[4] + c[2] for c in creds)
    ok = time.time() < first_exp
    pid = srv.proc.pid
    s0 = proc_ticks(pid)
    steps = []
    gone = wait_gone(names, steps, (last_exp - time.time()) + REVOKE_DEADLINE)
    s1 = proc_ticks(pid)
    with pg() as c:
        left = count_roles(c, names)
    rec = dict(phase="expiry", server=srv.name, rep=rep, n=N_REVOKE, ttl_s=REVOKE_TTL, lease_durations=sorted(durs),
               issue_s=t_issue, issue_errors=issue_errs, issued_before_first_expiry=ok,
               from_last_expiry_s=None if gone is None else gone - last_exp,
               from_first_expiry_s=None if gone is None else gone - first_exp,
               first_drop_after_first_expiry_s=next((t - first_exp for t, k in steps if k < N_REVOKE), None),
               left_at_deadline=left, server_cpu_s=(s1 - s0) / HZ, deadline_s=REVOKE_DEADLINE,
               curve=[(round(t - first_exp, 3), k) for t, k in steps][:400])
    if left:
        drop_roles(names)
    cleanup(srv, [])
    raw.write(json.dumps(rec) + "\n")
    raw.flush()
    rows.setdefault(("expiry", srv.name), []).append(rec)
    if gone is None:
        print(f"rep {rep} {srv.name:13s} mass expiry of {N_REVOKE}: NOT DONE: {left} roles left "
              f"{REVOKE_DEADLINE:.0f}s after the last expiry", flush=True)
    else:
        print(f"rep {rep} {srv.name:13s} mass expiry of {N_REVOKE} (TTL {REVOKE_TTL}s, issued in {t_issue:.1f}s"
              f"{'' if ok else ', NOT before the first expiry'}): all gone {rec['from_last_expiry_s']:.2f}s after "
              f"the last expiry, {rec['from_first_expiry_s']:.2f}s after the first; server CPU {rec['server_cpu_s']:.2f}s",
              flush=True)


def prefix_run(srv, rep, raw, rows):
    creds, t_issue, issue_errs = issue_count(srv, N_REVOKE)
    names = [c[0] for c in creds]
    pid = srv.proc.pid
    s0 = proc_ticks(pid)
    t0 = time.time()
    status, j = request(srv.port, "PUT", "/v1/sys/leases/revoke-prefix/database/creds/bench", {"sync": True},
                        srv.token, timeout=600)
    t_call = time.time() - t0
    steps = []
    gone = wait_gone(names, steps, REVOKE_DEADLINE)
    s1 = proc_ticks(pid)
    with pg() as c:
        left = count_roles(c, names)
    rec = dict(phase="revoke_prefix", server=srv.name, rep=rep, n=N_REVOKE, issue_s=t_issue, issue_errors=issue_errs,
               status=status,
               body=j if status not in (200, 204) else None, call_s=t_call,
               gone_s=None if gone is None else gone - t0, left_at_deadline=left, server_cpu_s=(s1 - s0) / HZ)
    if left:
        drop_roles(names)
    raw.write(json.dumps(rec) + "\n")
    raw.flush()
    rows.setdefault(("revoke_prefix", srv.name), []).append(rec)
    print(f"rep {rep} {srv.name:13s} revoke-prefix of {N_REVOKE} live leases: status {status}, call returned in "
          f"{t_call:.2f}s, " + ("roles all gone after %.2fs" % rec["gone_s"] if gone is not None
                                 else f"NOT DONE: {left} roles left after {REVOKE_DEADLINE:.0f}s")
          + f"; server CPU {rec['server_cpu_s']:.2f}s" + ("" if status in (200, 204) else f"; body {j}"), flush=True)


# ---------------------------------------------------------------- report
def med(v):
    return statistics.median(v)


def mm(v, f="{:,.1f}"):
    return f"{f.format(med(v))} ({f.format(min(v))}-{f.format(max(v))})"


def report(rows, notes, failures):
    L = [f"keyhaven {E['KEYHAVEN_VERSION']} (built from {E['KEYHAVEN_COMMIT']}) vs OpenBao {E['BAO_VERSION']}; "
         f"PostgreSQL {notes['pg_version']}; load from this driver (Python threads, {CONC} keep-alive connections); "
         f"{DUR}s per issue run after {WARM}s warm-up, {REPS} runs each, interleaved; max_open_connections={MAX_OPEN} "
         f"for both; {notes['cpus']} CPUs; load average at start {notes['start_load'][0]:.2f}/"
         f"{notes['start_load'][1]:.2f}/{notes['start_load'][2]:.2f}, at end {notes['end_load'][0]:.2f}/"
         f"{notes['end_load'][1]:.2f}/{notes['end_load'][2]:.2f}; wall {notes['wall_s']:.0f}s", ""]
    pgr = rows.get(("pg_direct", "postgresql"))
    err_lines = []
    if ("issue", SERVER_NAMES[0]) in rows or pgr:
        L += ["Issue rate (medians of the runs; min-max in brackets):", "",
              "| who | creds/s (wall) | per server CPU-s | server cores | p50 ms | p99 ms | errors | of the pgbench limit | loadgen cores | machine busy cores |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for n in SERVER_NAMES:
            r = rows.get(("issue", n))
            if not r:
                continue
            frac = f"{med([x['rps'] for x in r]) / med([x['rps'] for x in pgr]):.2f}" if pgr else "-"
            L.append(f"| {n} | {mm([x['rps'] for x in r])} | {mm([x['per_cpu_s'] for x in r])} | "
                     f"{med([x['server_cores'] for x in r]):.2f} | {med([x['p50_ms'] for x in r]):.2f} | "
                     f"{med([x['p99_ms'] for x in r]):.2f} | {sum(x['errors'] for x in r)} of "
                     f"{sum(x['ok'] + x['errors'] for x in r)} | {frac} | "
                     f"{med([x['loadgen_cores'] for x in r]):.2f} | {med([x['machine_busy_cores'] for x in r]):.2f} |")
        if pgr:
            L.append(f"| PostgreSQL direct (pgbench, CREATE ROLE + GRANT) | {mm([x['rps'] for x in pgr])} | - | - | "
                     f"avg {med([x['avg_latency_ms'] for x in pgr]):.2f} | - | {sum(x['failed'] for x in pgr)} | 1.00 | - | "
                     f"{med([x['machine_busy_cores'] for x in pgr]):.2f} |")
        for n in SERVER_NAMES:
            r = rows.get(("issue", n)) or []
            if any(x["errors"] for x in r):
                tot = {}
                for x in r:
                    for k, v in x["codes"].items():
                        tot[k] = tot.get(k, 0) + v
                sample = next(x["error_samples"][0] for x in r if x["error_samples"])
                err_lines.append(f"{n} answers: {tot}; first error: {sample[:300]}")
        p1 = rows.get(("pg_direct_c1", "postgresql"))
        if p1:
            L.append(f"| PostgreSQL direct, 1 connection (serial) | {mm([x['rps'] for x in p1])} | - | - | "
                     f"avg {med([x['avg_latency_ms'] for x in p1]):.2f} | - | {sum(x['failed'] for x in p1)} | "
                     f"{med([x['rps'] for x in p1]) / med([x['rps'] for x in pgr]):.2f} | - | "
                     f"{med([x['machine_busy_cores'] for x in p1]):.2f} |")
    if err_lines:
        L += [""] + err_lines
    for ph, title in [("expiry", f"Mass expiry of {N_REVOKE} leases (TTL {REVOKE_TTL}s)"),
                      ("revoke_prefix", f"revoke-prefix of {N_REVOKE} live leases (sync)")]:
        if not any((ph, n) in rows for n in SERVER_NAMES):
            continue
        L += ["", f"{title}:", ""]
        if ph == "expiry":
            L += [f"| server | issue {N_REVOKE:,} s | all roles gone after the last expiry, s | after the first expiry, s | first role gone after the first expiry, s | left at deadline | server CPU s |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        else:
            L += ["| server | call returned, s | all roles gone, s | left at deadline | server CPU s |",
                  "|---|---:|---:|---:|---:|"]
        for n in SERVER_NAMES:
            for x in rows.get((ph, n), []):
                f = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
                if ph == "expiry":
                    L.append(f"| {n} (run {x['rep']}) | {x['issue_s']:.1f}{'' if x['issued_before_first_expiry'] else ' (late!)'} | "
                             f"{f(x['from_last_expiry_s'])} | {f(x['from_first_expiry_s'])} | "
                             f"{f(x['first_drop_after_first_expiry_s'])} | {x['left_at_deadline']} | {x['server_cpu_s']:.2f} |")
                else:
                    L.append(f"| {n} (run {x['rep']}) | {x['call_s']:.2f} (HTTP {x['status']}) | {f(x['gone_s'])} | "
                             f"{x['left_at_deadline']} | {x['server_cpu_s']:.2f} |")
    kh, ob = "keyhaven-dev", "openbao-dev"
    L += ["", "Ratios keyhaven / OpenBao, measured in this run:", ""]
    a, b = rows.get(("issue", kh)), rows.get(("issue", ob))
    if a and b:
        for key, unit in [("rps", "per wall s"), ("per_cpu_s", "per server CPU-s")]:
            x, y = med([r[key] for r in a]), med([r[key] for r in b])
            L.append(f"- issue rate {unit}: {x:,.1f} / {y:,.1f} = {x / y:.2f}x (target >= 3x OpenBao's issue rate)")
    for ph, key, what in [("expiry", "from_last_expiry_s", "mass expiry, last expiry -> all gone"),
                          ("expiry", "from_first_expiry_s", "mass expiry, first expiry -> all gone"),
                          ("revoke_prefix", "gone_s", "revoke-prefix -> all gone")]:
        a, b = rows.get((ph, kh)), rows.get((ph, ob))
        if a and b:
            va, vb = [r[key] for r in a], [r[key] for r in b]
            if None in va or None in vb:
                L.append(f"- {what}: not complete within the deadline for "
                         + ", ".join(n for n, v in ((kh, va), (ob, vb)) if None in v))
            else:
                L.append(f"- {what}: OpenBao {med(vb):.2f}s / keyhaven {med(va):.2f}s = {med(vb) / max(med(va), 1e-9):.2f}x "
                         "faster (target >= 3x)")
    if failures:
        L += ["", "Failures:", ""] + [f"- {f}" for f in failures]
    if CLEANUP_ERRORS:
        L += ["", f"Clean-up revoke-prefix calls that failed ({len(CLEANUP_ERRORS)}; the roles were then dropped "
              "directly):", ""] + [f"- {f[:400]}" for f in CLEANUP_ERRORS]
    table = "\n".join(L)
    print("\n" + table)
    with open(f"{WORK}/summary.md", "w") as f:
        f.write(table + "\n")
    with open(f"{WORK}/results.json", "w") as f:
        json.dump(dict(env={k: E.get(k) for k in ("KEYHAVEN_VERSION", "KEYHAVEN_COMMIT", "BAO_VERSION", "DURATION",
                                                  "WARMUP", "REPEATS", "CONCURRENCY", "N_REVOKE", "REVOKE_TTL",
                                                  "MAX_OPEN", "SERVERS", "PHASES", "NICE")},
                       notes=notes, failures=failures, cleanup_errors=CLEANUP_ERRORS,
                       rows={f"{k[0]}/{k[1]}": v for k, v in rows.items()}), f, indent=1)
    print(f"\nraw results: {WORK}/raw.jsonl and {WORK}/results.json, table: {WORK}/summary.md, "
          f"server logs: {WORK}/*.log")


def main():
    t_all = time.time()
    os.makedirs(WORK, exist_ok=True)
    servers = {n: Server(n, PORT + i) for i, n in enumerate(["keyhaven-dev", "openbao-dev"])}
    for n in SERVER_NAMES:
        if n not in servers:
            raise SystemExit(f"unknown server {n}")
    with pg("postgres") as c:
        pgv = c.execute("SHOW server_version").fetchone()[0]
    dropped = pg_prepare()
    notes = dict(start_load=os.getloadavg(), cpus=os.cpu_count(), pg_version=pgv, leftovers_dropped=dropped)
    print(f"load average {notes['start_load'][0]:.2f} {notes['start_load'][1]:.2f} {notes['start_load'][2]:.2f}; "
          f"PostgreSQL {pgv}; dropped {dropped} leftover bench roles", flush=True)
    rows, failures, live = {}, [], []
    raw = open(f"{WORK}/raw.jsonl", "w")
    for n in SERVER_NAMES:
        srv = servers[n]
        try:
            srv.start()
            srv.setup()
            live.append(srv)
            print(f"{n}: set up (mount, config with max_open_connections={MAX_OPEN}, role, one credential "
                  f"checked by logging in)", flush=True)
        except StepFailed as e:
            failures.append(f"{n}: set-up failed: {e}")
            print(f"{n}: SET-UP FAILED: {e}", flush=True)
            srv.stop()
    for ph, fn in [("issue", issue_run), ("pg_direct", None), ("expiry", expiry_run),
                   ("revoke_prefix", prefix_run)]:
        if ph not in PHASES:
            continue
        reps = REPS if ph in ("issue", "pg_direct") else REVOKE_REPEATS
        for rep in range(1, reps + 1):
            if ph == "pg_direct":
                pgbench_run(rep, raw, rows, CONC)
                pgbench_run(rep, raw, rows, 1)
                continue
            for srv in live:
                try:
                    fn(srv, rep, raw, rows)
                except StepFailed as e:
                    failures.append(f"{srv.name}: {ph} run {rep}: {e}")
                    print(f"{srv.name}: {ph} run {rep} FAILED: {e}", flush=True)
                    drop_leftovers()
    for srv in live:
        srv.stop()
    raw.close()
    notes["leftovers_dropped_at_end"] = drop_leftovers()
    notes["end_load"] = os.getloadavg()
    notes["wall_s"] = time.time() - t_all
    report(rows, notes, failures)


if __name__ == "__main__":
    try:
        main()
    finally:
        stop_all()
