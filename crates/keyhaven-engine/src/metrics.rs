//! Telemetry: the counters behind `sys/metrics`, with Vault's metric names.
//!
//! The engine counts; the server renders ([`Snapshot`] is what it renders from: the
//! Prometheus text format, or the JSON form of `GET sys/metrics`). Everything on the
//! request path is a relaxed atomic add: no lock and no allocation per request. The
//! counters every request adds to (latencies, requests in flight) are kept in
//! [`SHARDS`] slots, each on its own cache line, and a thread adds to its own slot:
//! worker threads on different CPUs would otherwise pass the same cache line back and
//! forth on every request. A reading sums the slots.
//!
//! Names are Vault's, dotted (`vault.core.handle_request`); the Prometheus form replaces
//! every character a metric name cannot hold with `_` (`vault_core_handle_request`,
//! `vault_route_read_secret_`), as Vault's Prometheus sink does. Latencies are
//! summaries in milliseconds with a count and a sum since the process started (per-mount
//! ones since the mount was loaded); no quantiles are computed.
//!
//! No metric carries a secret, a token or a request path: the only label values are
//! mount paths and types (bounded by the mount tables) and token types.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::{Map, Value, json};

use crate::request::Operation;

/// How many slots a counter on the request path is split into. Threads beyond this
/// many share slots (still correct, only contended).
pub(crate) const SHARDS: usize = 16;

/// The calling thread's slot, `0..SHARDS`: given out in turn on a thread's first use.
fn shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    SHARD.with(|slot| {
        let mut index = slot.get();
        if index >= SHARDS {
            index = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
            slot.set(index);
        }
        index
    })
}

/// The calling thread's element of `slots`.
fn mine<T>(slots: &[T; SHARDS]) -> &T {
    let [first, ..] = slots;
    slots.get(shard()).unwrap_or(first)
}

/// One thread's part of a [`Timer`], alone on its cache lines (128 bytes: adjacent
/// lines are fetched in pairs).
#[derive(Debug, Default)]
#[repr(align(128))]
struct TimerSlot {
    count: AtomicU64,
    nanos: AtomicU64,
}

/// A latency: how many, and their total.
#[derive(Debug, Default)]
pub(crate) struct Timer {
    slots: [TimerSlot; SHARDS],
}

impl Timer {
    /// Record one duration.
    pub(crate) fn record(&self, elapsed: Duration) {
        let slot = mine(&self.slots);
        slot.count.fetch_add(1, Ordering::Relaxed);
        slot.nanos.fetch_add(
            u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// Record the time since `started`.
    pub(crate) fn since(&self, started: Instant) {
        self.record(started.elapsed());
    }

    fn value(&self) -> SampleValue {
        #[allow(
            clippy::cast_precision_loss,
            reason = "a sum of milliseconds for display"
        )]
        let sum_ms = self.sum(|s| &s.nanos) as f64 / 1e6;
        SampleValue::Summary {
            count: self.sum(|s| &s.count),
            sum_ms,
        }
    }

    fn sum(&self, field: impl Fn(&TimerSlot) -> &AtomicU64) -> u64 {
        self.slots.iter().fold(0, |total, slot| {
            total.wrapping_add(field(slot).load(Ordering::Relaxed))
        })
    }
}

/// Per-mount request latencies, by operation (`vault.route.<operation>.<mount>`).
#[derive(Debug, Default)]
pub(crate) struct RouteTimers {
    by_op: [Timer; 6],
}

const OPERATIONS: [Operation; 6] = [
    Operation::Read,
    Operation::Create,
    Operation::Update,
    Operation::Patch,
    Operation::Delete,
    Operation::List,
];

impl RouteTimers {
    pub(crate) fn get(&self, op: Operation) -> Option<&Timer> {
        let index = OPERATIONS.iter().position(|o| *o == op)?;
        self.by_op.get(index)
    }
}

/// The storage operations timed through the barrier.
#[derive(Debug, Clone, Copy)]
pub(crate) enum BarrierOp {
    Get,
    Put,
    Delete,
    List,
    Transaction,
}

/// One thread's part of the requests-in-flight gauge: a request may end on another
/// thread than it began on, so a slot may go below zero; the sum is right.
#[derive(Debug, Default)]
#[repr(align(128))]
struct GaugeSlot(AtomicI64);

/// The engine's counters. One per [`crate::Core`] (given in [`crate::CoreOptions`]).
#[derive(Debug)]
pub struct Metrics {
    in_flight: [GaugeSlot; SHARDS],
    pub(crate) handle_request: Timer,
    pub(crate) handle_login_request: Timer,
    barrier_get: Timer,
    barrier_put: Timer,
    barrier_delete: Timer,
    barrier_list: Timer,
    barrier_transaction: Timer,
    /// Live tokens at the last maintenance run; negative until one ran.
    token_count: AtomicI64,
    /// Tokens created, by (auth method, mount point, token type). Changed only when a
    /// token is issued.
    token_creation: Mutex<BTreeMap<(String, String, String), u64>>,
    /// Leases at the last count; negative until one ran.
    lease_count: AtomicI64,
    /// Irrevocable leases at the last count; negative until one ran.
    irrevocable_leases: AtomicI64,
    /// Leases revoked, and revocation attempts that failed.
    lease_revocations: (AtomicU64, AtomicU64),
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            in_flight: Default::default(),
            handle_request: Timer::default(),
            handle_login_request: Timer::default(),
            barrier_get: Timer::default(),
            barrier_put: Timer::default(),
            barrier_delete: Timer::default(),
            barrier_list: Timer::default(),
            barrier_transaction: Timer::default(),
            token_count: AtomicI64::new(-1),
            token_creation: Mutex::new(BTreeMap::new()),
            lease_count: AtomicI64::new(-1),
            irrevocable_leases: AtomicI64::new(-1),
            lease_revocations: (AtomicU64::new(0), AtomicU64::new(0)),
        }
    }
}

/// Counts a request in flight until dropped.
pub(crate) struct InFlight<'a>(&'a Metrics);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        mine(&self.0.in_flight).0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Metrics {
    /// A request starts: counted in `vault.core.in_flight_requests` until the guard drops.
    pub(crate) fn start(&self) -> InFlight<'_> {
        mine(&self.in_flight).0.fetch_add(1, Ordering::Relaxed);
        InFlight(self)
    }

    /// Requests being handled now.
    fn in_flight(&self) -> i64 {
        self.in_flight.iter().fold(0, |total, slot| {
            total.wrapping_add(slot.0.load(Ordering::Relaxed))
        })
    }

    pub(crate) fn barrier(&self, op: BarrierOp) -> &Timer {
        match op {
            BarrierOp::Get => &self.barrier_get,
            BarrierOp::Put => &self.barrier_put,
            BarrierOp::Delete => &self.barrier_delete,
            BarrierOp::List => &self.barrier_list,
            BarrierOp::Transaction => &self.barrier_transaction,
        }
    }

    pub(crate) fn set_token_count(&self, live: usize) {
        self.token_count
            .store(i64::try_from(live).unwrap_or(i64::MAX), Ordering::Relaxed);
    }

    pub(crate) fn set_lease_counts(&self, leases: usize, irrevocable: usize) {
        self.lease_count
            .store(i64::try_from(leases).unwrap_or(i64::MAX), Ordering::Relaxed);
        self.set_irrevocable_leases(irrevocable);
    }

    pub(crate) fn set_irrevocable_leases(&self, irrevocable: usize) {
        self.irrevocable_leases.store(
            i64::try_from(irrevocable).unwrap_or(i64::MAX),
            Ordering::Relaxed,
        );
    }

    /// A lease was revoked.
    pub(crate) fn lease_revoked(&self) {
        self.lease_revocations.0.fetch_add(1, Ordering::Relaxed);
    }

    /// An attempt to revoke an expired lease failed.
    pub(crate) fn lease_revoke_failed(&self) {
        self.lease_revocations.1.fetch_add(1, Ordering::Relaxed);
    }

    /// A token was issued by `auth_method` mounted at `mount_point`.
    pub(crate) fn token_created(&self, auth_method: &str, mount_point: &str, token_type: &str) {
        let token_type = match token_type {
            "batch" => "batch",
            _ => "service",
        };
        *self
            .token_creation
            .lock()
            .entry((
                auth_method.to_owned(),
                mount_point.to_owned(),
                token_type.to_owned(),
            ))
            .or_insert(0) += 1;
    }
}

/// What a metric is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// Only goes up.
    Counter,
    /// A current value.
    Gauge,
    /// Observations: a count and a sum (milliseconds).
    Summary,
}

/// One value of a metric.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SampleValue {
    /// A counter's or gauge's value.
    Number(f64),
    /// A summary's count and sum of milliseconds.
    Summary {
        /// Observations.
        count: u64,
        /// Their total, in milliseconds.
        sum_ms: f64,
    },
}

/// One labelled value of a metric.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Label names and values (never a secret, a token or a request path).
    pub labels: Vec<(&'static str, String)>,
    /// The value.
    pub value: SampleValue,
}

/// One metric and its values.
#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    /// Vault's dotted name, e.g. `vault.core.handle_request`.
    pub name: String,
    /// What it measures.
    pub help: &'static str,
    /// Its type.
    pub kind: MetricKind,
    /// Its values.
    pub samples: Vec<Sample>,
}

/// Every metric at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// The metrics, in a fixed order.
    pub families: Vec<Family>,
}

/// What the snapshot needs to know of the core's state.
pub(crate) struct State<'a> {
    pub unsealed: bool,
    /// Unsealed and the active replica (a standby of a high-availability cluster is not).
    pub active: bool,
    pub audit_failures: (u64, u64),
    /// `(mount path with its table's prefix, timers)` of every mount.
    pub routes: Vec<(String, &'a RouteTimers)>,
    /// Mounts per table: `(type label, count)`.
    pub mount_entries: Vec<(&'static str, usize)>,
}

fn one(name: &str, help: &'static str, kind: MetricKind, value: SampleValue) -> Family {
    Family {
        name: name.to_owned(),
        help,
        kind,
        samples: vec![Sample {
            labels: Vec::new(),
            value,
        }],
    }
}

fn bool_value(b: bool) -> SampleValue {
    SampleValue::Number(if b { 1.0 } else { 0.0 })
}

#[allow(
    clippy::cast_precision_loss,
    reason = "counters shown as Prometheus floats"
)]
fn count_value(n: u64) -> SampleValue {
    SampleValue::Number(n as f64)
}

impl Metrics {
    pub(crate) fn snapshot(&self, state: &State<'_>) -> Snapshot {
        use MetricKind::{Counter, Gauge, Summary};
        let mut f = vec![
            one(
                "vault.core.unsealed",
                "1 when the server is unsealed.",
                Gauge,
                bool_value(state.unsealed),
            ),
            one(
                "vault.core.active",
                "1 when this server is unsealed and the active replica (0 on a standby).",
                Gauge,
                bool_value(state.active),
            ),
            one(
                "vault.core.in_flight_requests",
                "Requests being handled.",
                Gauge,
                #[allow(clippy::cast_precision_loss, reason = "a small gauge")]
                SampleValue::Number(self.in_flight().max(0) as f64),
            ),
            one(
                "vault.core.handle_request",
                "Latency of requests other than logins, in milliseconds.",
                Summary,
                self.handle_request.value(),
            ),
            one(
                "vault.core.handle_login_request",
                "Latency of logins (requests on unauthenticated routes), in milliseconds.",
                Summary,
                self.handle_login_request.value(),
            ),
            one(
                "vault.audit.log_request_failure",
                "Requests that no audit device recorded (the request was refused).",
                Counter,
                count_value(state.audit_failures.0),
            ),
            one(
                "vault.audit.log_response_failure",
                "Responses that no audit device recorded (the response was withheld).",
                Counter,
                count_value(state.audit_failures.1),
            ),
        ];
        for (name, op) in [
            ("vault.barrier.get", BarrierOp::Get),
            ("vault.barrier.put", BarrierOp::Put),
            ("vault.barrier.delete", BarrierOp::Delete),
            ("vault.barrier.list", BarrierOp::List),
            ("vault.barrier.transaction", BarrierOp::Transaction),
        ] {
            f.push(one(
                name,
                "Latency of encrypted storage operations, in milliseconds.",
                Summary,
                self.barrier(op).value(),
            ));
        }
        let tokens = self.token_count.load(Ordering::Relaxed);
        if tokens >= 0 {
            f.push(one(
                "vault.token.count",
                "Live tokens, counted by the last periodic maintenance run.",
                Gauge,
                #[allow(clippy::cast_precision_loss, reason = "a count")]
                SampleValue::Number(tokens as f64),
            ));
        }
        let creation = self.token_creation.lock().clone();
        f.push(Family {
            name: "vault.token.creation".to_owned(),
            help: "Tokens issued, by auth method, mount and token type.",
            kind: Counter,
            samples: creation
                .into_iter()
                .map(|((method, mount, kind), n)| Sample {
                    labels: vec![
                        ("auth_method", method),
                        ("mount_point", mount),
                        ("token_type", kind),
                    ],
                    value: count_value(n),
                })
                .collect(),
        });
        for (name, help, value) in [
            (
                "vault.expire.num_leases",
                "Leases waiting to expire, counted by the last periodic maintenance run.",
                &self.lease_count,
            ),
            (
                "vault.expire.num_irrevocable_leases",
                "Leases whose revocation failed too often; kept and listed by sys/leases?type=irrevocable.",
                &self.irrevocable_leases,
            ),
        ] {
            let n = value.load(Ordering::Relaxed);
            if n >= 0 {
                #[allow(clippy::cast_precision_loss, reason = "a count")]
                f.push(one(name, help, Gauge, SampleValue::Number(n as f64)));
            }
        }
        f.push(one(
            "vault.expire.lease_expiration",
            "Leases revoked (at expiry, by request, or with their token).",
            Counter,
            count_value(self.lease_revocations.0.load(Ordering::Relaxed)),
        ));
        f.push(one(
            "vault.expire.lease_expiration.error",
            "Attempts to revoke an expired lease that failed (each is retried).",
            Counter,
            count_value(self.lease_revocations.1.load(Ordering::Relaxed)),
        ));
        f.push(Family {
            name: "vault.core.mount_table.num_entries".to_owned(),
            help: "Entries of the mount tables (logical: secret engines, auth: auth methods).",
            kind: Gauge,
            samples: state
                .mount_entries
                .iter()
                .map(|(kind, n)| Sample {
                    labels: vec![("local", "false".to_owned()), ("type", (*kind).to_owned())],
                    value: count_value(u64::try_from(*n).unwrap_or(u64::MAX)),
                })
                .collect(),
        });
        for (mount, timers) in &state.routes {
            for (op, timer) in OPERATIONS.iter().zip(&timers.by_op) {
                let value = timer.value();
                if matches!(value, SampleValue::Summary { count: 0, .. }) {
                    continue;
                }
                f.push(one(
                    &format!("vault.route.{}.{mount}", op.as_str()),
                    "Latency of requests to one mount, by operation, in milliseconds.",
                    Summary,
                    value,
                ));
            }
        }
        Snapshot { families: f }
    }
}

impl crate::Core {
    /// Every metric now (`sys/metrics`). Works sealed too: then only the core's own.
    pub fn metrics(&self) -> Snapshot {
        let metrics = &self.options.metrics;
        let audit_failures = self.options.audit.failure_counts();
        let Ok(inner) = self.unsealed() else {
            return metrics.snapshot(&State {
                unsealed: false,
                active: false,
                audit_failures,
                routes: Vec::new(),
                mount_entries: Vec::new(),
            });
        };
        let secrets = inner.secrets.read().clone();
        let auth = inner.auth.read().clone();
        let routes = secrets
            .mounted()
            .iter()
            .map(|m| (m.entry.path.clone(), &*m.timers))
            .chain(
                auth.mounted()
                    .iter()
                    .map(|m| (format!("auth/{}", m.entry.path), &*m.timers)),
            )
            .collect();
        metrics.snapshot(&State {
            unsealed: true,
            active: self.role() == crate::ha::Role::Active,
            audit_failures,
            routes,
            mount_entries: vec![
                ("auth", auth.mounted().len()),
                ("logical", secrets.mounted().len()),
            ],
        })
    }
}

impl crate::Core {
    /// `GET sys/metrics`, once authorized: the JSON form without `format`; with
    /// `format=prometheus`, nothing (the server writes the text format, which is not
    /// JSON); any other format is refused with OpenBao's message.
    pub(crate) fn metrics_response(
        &self,
        data: &Map<String, Value>,
    ) -> Result<crate::Response, crate::EngineError> {
        match crate::params::string(data, "format")?.unwrap_or("") {
            "" => Ok(crate::Response::data(self.metrics_json())),
            "prometheus" => Ok(crate::Response::no_content()),
            other => Err(crate::EngineError::invalid(format!(
                "metric response format {other:?} unknown"
            ))),
        }
    }
}

impl crate::Core {
    /// [`crate::Core::metrics`] in the JSON form of `GET sys/metrics`
    /// ([`Snapshot::to_json`]), stamped with the engine's clock.
    pub fn metrics_json(&self) -> Map<String, Value> {
        let now = crate::clock::rfc3339(self.clock.now());
        self.metrics().to_json(&go_time(&now))
    }
}

/// An RFC 3339 time (`2026-12-03T18:37:30.5Z`) as Go prints a UTC time to the second
/// (`2026-12-03 18:37:30 +0000 UTC`), the form of go-metrics' `Timestamp`.
fn go_time(rfc3339: &str) -> String {
    match (rfc3339.get(..10), rfc3339.get(11..19)) {
        (Some(date), Some(time)) => format!("{date} {time} +0000 UTC"),
        _ => rfc3339.to_owned(),
    }
}

impl Snapshot {
    /// The JSON form of `GET sys/metrics`: go-metrics' layout (`Gauges`, `Counters`,
    /// `Samples`, each entry with `Name` and `Labels`), holding totals since the process
    /// started rather than the last ten-second interval, and without the statistics
    /// keyhaven does not compute (rate, minimum, maximum, deviation).
    pub fn to_json(&self, timestamp: &str) -> Map<String, Value> {
        let mut gauges = Vec::new();
        let mut counters = Vec::new();
        let mut samples = Vec::new();
        for family in &self.families {
            for s in &family.samples {
                let labels: Map<String, Value> = s
                    .labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), Value::String(v.clone())))
                    .collect();
                match (family.kind, s.value) {
                    (MetricKind::Gauge, SampleValue::Number(v)) => gauges
                        .push(json!({"Name": family.name, "Value": v, "Labels": labels})),
                    (MetricKind::Counter, SampleValue::Number(v)) => counters
                        .push(json!({"Name": family.name, "Count": v, "Sum": v, "Labels": labels})),
                    (_, SampleValue::Summary { count, sum_ms }) => samples.push(
                        json!({"Name": family.name, "Count": count, "Sum": sum_ms, "Labels": labels}),
                    ),
                    (_, SampleValue::Number(v)) => gauges
                        .push(json!({"Name": family.name, "Value": v, "Labels": labels})),
                }
            }
        }
        let mut out = Map::new();
        out.insert("Timestamp".to_owned(), Value::String(timestamp.to_owned()));
        out.insert("Gauges".to_owned(), Value::Array(gauges));
        out.insert("Points".to_owned(), Value::Array(Vec::new()));
        out.insert("Counters".to_owned(), Value::Array(counters));
        out.insert("Samples".to_owned(), Value::Array(samples));
        out
    }

    /// The Prometheus text exposition format (version 0.0.4). Names get `_` for every
    /// character a metric name cannot hold; families whose names become equal are merged
    /// (their values added), as Vault's sink merges them.
    pub fn to_prometheus(&self) -> String {
        use std::fmt::Write as _;
        let mut merged: BTreeMap<String, (MetricKind, &'static str, Vec<Sample>)> = BTreeMap::new();
        for family in &self.families {
            let name = prometheus_name(&family.name);
            let entry = merged
                .entry(name)
                .or_insert_with(|| (family.kind, family.help, Vec::new()));
            // A name taken by a metric of another type keeps the first one.
            if entry.0 != family.kind {
                continue;
            }
            for s in &family.samples {
                match entry.2.iter_mut().find(|e| e.labels == s.labels) {
                    Some(existing) => existing.value = add(existing.value, s.value),
                    None => entry.2.push(s.clone()),
                }
            }
        }
        let mut out = String::with_capacity(4096);
        for (name, (kind, help, samples)) in &merged {
            let kind_text = match kind {
                MetricKind::Counter => "counter",
                MetricKind::Gauge => "gauge",
                MetricKind::Summary => "summary",
            };
            let _ = writeln!(out, "# HELP {name} {}", escape_help(help));
            let _ = writeln!(out, "# TYPE {name} {kind_text}");
            for s in samples {
                let labels = render_labels(&s.labels);
                match s.value {
                    SampleValue::Number(v) => {
                        let _ = writeln!(out, "{name}{labels} {}", number(v));
                    }
                    SampleValue::Summary { count, sum_ms } => {
                        let _ = writeln!(out, "{name}_sum{labels} {}", number(sum_ms));
                        let _ = writeln!(out, "{name}_count{labels} {count}");
                    }
                }
            }
        }
        out
    }
}

fn add(a: SampleValue, b: SampleValue) -> SampleValue {
    match (a, b) {
        (SampleValue::Number(x), SampleValue::Number(y)) => SampleValue::Number(x + y),
        (
            SampleValue::Summary {
                count: c1,
                sum_ms: s1,
            },
            SampleValue::Summary {
                count: c2,
                sum_ms: s2,
            },
        ) => SampleValue::Summary {
            count: c1.saturating_add(c2),
            sum_ms: s1 + s2,
        },
        (a, _) => a,
    }
}

/// A dotted name as a Prometheus metric name: `[a-zA-Z0-9_:]`, not starting with a digit.
pub fn prometheus_name(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

fn render_labels(labels: &[(&'static str, String)]) -> String {
    if labels.is_empty() {
        return String::new();
    }
    let inner: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape_label(v)))
        .collect();
    format!("{{{}}}", inner.join(","))
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_owned()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_sanitized_as_vaults_prometheus_sink_does() {
        assert_eq!(
            prometheus_name("vault.core.handle_request"),
            "vault_core_handle_request"
        );
        assert_eq!(
            prometheus_name("vault.route.read.secret/"),
            "vault_route_read_secret_"
        );
        assert_eq!(
            prometheus_name("vault.route.list.team-a/kv.2/"),
            "vault_route_list_team_a_kv_2_"
        );
        assert_eq!(prometheus_name("9lives"), "_9lives");
    }

    #[test]
    fn the_exposition_is_well_formed_and_merges_equal_names() {
        let summary = |count, sum_ms| SampleValue::Summary { count, sum_ms };
        let snap = Snapshot {
            families: vec![
                one(
                    "vault.route.read.a-b/",
                    "h",
                    MetricKind::Summary,
                    summary(2, 1.5),
                ),
                one(
                    "vault.route.read.a_b/",
                    "h",
                    MetricKind::Summary,
                    summary(1, 0.5),
                ),
                Family {
                    name: "vault.token.creation".into(),
                    help: "h",
                    kind: MetricKind::Counter,
                    samples: vec![Sample {
                        labels: vec![("mount_point", "auth/\"x\"\\/".into())],
                        value: SampleValue::Number(3.0),
                    }],
                },
            ],
        };
        let text = snap.to_prometheus();
        assert_eq!(
            text,
            "# HELP vault_route_read_a_b_ h\n# TYPE vault_route_read_a_b_ summary\n\
             vault_route_read_a_b__sum 2\nvault_route_read_a_b__count 3\n\
             # HELP vault_token_creation h\n# TYPE vault_token_creation counter\n\
             vault_token_creation{mount_point=\"auth/\\\"x\\\"\\\\/\"} 3\n"
        );
    }

    /// More threads than slots, requests that end on another thread than they began
    /// on: the readings are the totals.
    #[test]
    fn counts_from_many_threads_add_up() {
        let m = Metrics::default();
        let threads = SHARDS + 5;
        let guards = std::sync::Mutex::new(Vec::new());
        std::thread::scope(|scope| {
            for t in 0..threads {
                let (m, guards) = (&m, &guards);
                scope.spawn(move || {
                    for i in 0..100u64 {
                        m.handle_request.record(Duration::from_nanos(i + 1));
                    }
                    let t = u64::try_from(t).unwrap();
                    m.barrier(BarrierOp::Get)
                        .record(Duration::from_millis(t + 1));
                    guards.lock().unwrap().push(m.start());
                });
            }
        });
        assert_eq!(m.in_flight(), i64::try_from(threads).unwrap());
        // Ended on other threads than they began on.
        let mut guards = guards.into_inner().unwrap();
        std::thread::scope(|scope| {
            for _ in 0..3 {
                let batch: Vec<_> = guards.drain(..guards.len().min(7)).collect();
                scope.spawn(move || drop(batch));
            }
        });
        assert_eq!(m.in_flight(), i64::try_from(threads - 21).unwrap());
        drop(guards);
        assert_eq!(m.in_flight(), 0);
        let n = u64::try_from(threads).unwrap();
        assert_eq!(m.handle_request.sum(|s| &s.count), 100 * n);
        assert_eq!(m.handle_request.sum(|s| &s.nanos), 5050 * n);
        let ms: u64 = (1..=n).sum();
        assert_eq!(
            m.barrier(BarrierOp::Get).value(),
            SampleValue::Summary {
                count: n,
                #[allow(clippy::cast_precision_loss, reason = "small")]
                sum_ms: ms as f64,
            }
        );
    }

    #[test]
    fn timers_and_in_flight_count() {
        let m = Metrics::default();
        {
            let _a = m.start();
            let _b = m.start();
            assert_eq!(m.in_flight(), 2);
        }
        assert_eq!(m.in_flight(), 0);
        m.handle_request.record(Duration::from_millis(3));
        m.handle_request.record(Duration::from_millis(1));
        assert_eq!(
            m.handle_request.value(),
            SampleValue::Summary {
                count: 2,
                sum_ms: 4.0
            }
        );
    }
}
