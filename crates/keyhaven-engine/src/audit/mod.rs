//! The audit broker: every request and response through [`crate::Core::handle`], allowed or
//! denied, is recorded by the enabled audit devices before it takes effect.
//!
//! Invariants:
//! - **Fail closed.** A request record must be accepted by at least one device, within that
//!   device's [`AuditDevice::timeout`], before the request runs; otherwise the request fails
//!   with [`EngineError::Unavailable`] and has no effect. The response record is gated the
//!   same way (the effect has then happened, but the caller is told the request failed and
//!   the request record is already in the log). With no devices configured nothing is
//!   recorded and nothing fails.
//! - **Requests without effects are recorded with their response.** A read or list that
//!   changes nothing (the matched route says so, see [`crate::route::Route::pure`]) runs first;
//!   its request and response records are then written together, in that order, and the
//!   response is released only once a device accepted both. If none does, the caller gets
//!   the audit error instead of the data: nothing was changed and nothing was disclosed.
//!   One write per request instead of two; the request record carries the time the request
//!   arrived, as always.
//! - **Strings are hashed.** Every string in request data, response data and nested values,
//!   and the credentials of `auth` objects (client tokens and accessors), becomes
//!   `hmac-sha256:<hex>` under a per-device key. Object keys, numbers, booleans and nulls
//!   pass in clear, as Vault does. Unlike Vault, strings that look like RFC 3339 times are
//!   hashed too: a secret value may look like a time.
//! - **Errors are hashed when they may echo the request.** Unlike Vault, which writes
//!   `error` in clear, an error message that carries text (a parse error quoting a policy,
//!   a name, a path) is hashed like a request string; the fixed messages
//!   (`permission denied`, `unsupported operation`, `keyhaven is sealed`, …) stay in
//!   clear, so denials remain searchable. `sys/audit-hash` gives the hash of a message.
//! - **Keys live behind the barrier.** Each device's HMAC key is created at the first unseal
//!   (`core/audit/<device>/salt`), loaded at unseal and dropped at seal.
//!
//! The records use Vault's JSON layout (`time`, `type`, `auth`, `request`, `response`,
//! `error`), so tools that read Vault audit logs read these. Devices may add fields of
//! their own (the file device adds its hash chain).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use keyhaven_crypto::HmacKey;
use keyhaven_storage::Store;
use parking_lot::{Mutex, RwLock};
use serde::ser::{Serialize, SerializeMap as _, SerializeSeq as _, Serializer};
use serde_json::{Map, Value, json};
use zeroize::Zeroizing;

use crate::clock::{Clock, SystemClock, rfc3339};
use crate::error::{CryptoOp, EngineError};
use crate::request::{Request, Response};
use crate::token::TokenEntry;

#[cfg(test)]
pub(crate) mod tests;

/// How long a device may take to accept a record unless it says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Prefix of every hashed value.
pub const HASH_PREFIX: &str = "hmac-sha256:";

/// Length of a device's HMAC key.
const SALT_LEN: usize = 32;

/// Log target of audit-device events (failures, recoveries); never carries record contents.
const TARGET: &str = "keyhaven::audit";

/// Tokens whose credential hashes are kept (see [`Live::creds`]) before the cache is emptied.
const CREDS_CACHE_ENTRIES: usize = 16_384;

/// A sink for audit records (the server provides a file device).
#[async_trait]
pub trait AuditDevice: Send + Sync + 'static {
    /// Device name, e.g. `file`; unique among the devices of a server.
    fn name(&self) -> &str;
    /// Device type, e.g. `file`.
    fn kind(&self) -> &str;
    /// Free text.
    fn description(&self) -> &str {
        ""
    }
    /// Options shown by `sys/audit`.
    fn options(&self) -> Map<String, Value> {
        Map::new()
    }
    /// Whether the device is local to this node (Vault's `local`).
    fn local(&self) -> bool {
        false
    }
    /// How long the broker waits for [`AuditDevice::write`] before counting the record as
    /// not accepted by this device.
    fn timeout(&self) -> Duration {
        DEFAULT_TIMEOUT
    }
    /// Record one JSON object (without a newline). Returns once the device accepted it
    /// (for a file: written and flushed). Must fail rather than wait without bound when it
    /// cannot accept records; the broker also bounds the wait by [`AuditDevice::timeout`].
    async fn write(&self, record: Vec<u8>) -> Result<(), EngineError>;

    /// Record several JSON objects, in order (a request and its response). Returns once the
    /// device accepted all of them. The default writes them one after the other; devices
    /// that can should write them together.
    async fn write_batch(&self, records: Vec<Vec<u8>>) -> Result<(), EngineError> {
        for record in records {
            self.write(record).await?;
        }
        Ok(())
    }
}

/// One device and its unsealed key.
struct Slot {
    device: Arc<dyn AuditDevice>,
    /// Whether the last write failed (to log transitions, not every failure).
    failing: AtomicBool,
}

/// Fans records out to the devices and fails closed.
pub struct AuditBroker {
    slots: Vec<Slot>,
    /// Keys and caches of the unsealed server; `None` while sealed.
    live: RwLock<Option<Arc<Live>>>,
    clock: Arc<dyn Clock>,
    /// Request and response records no device accepted (`vault.audit.log_*_failure`).
    request_failures: AtomicU64,
    response_failures: AtomicU64,
}

/// What exists only while the server is unsealed.
struct Live {
    /// Per-device HMAC keys, index-aligned with `slots`.
    keys: Vec<HmacKey>,
    /// Per-device hashes of the credentials of tokens seen recently, keyed by the token
    /// store's keyed hash of the token ([`TokenEntry::hash`]). Entries are found only for a
    /// token that authenticated, so the key identifies exactly the token that was hashed.
    /// Holds hashes only, never a token; dropped at seal.
    creds: Mutex<HashMap<String, Arc<[Creds]>>>,
}

/// A request's credentials as one device logs them.
struct Creds {
    /// The presented token.
    token: Option<HashText>,
    /// The accessor of the token that authenticated.
    accessor: Option<HashText>,
}

impl Default for AuditBroker {
    fn default() -> Self {
        AuditBroker::new(Vec::new())
    }
}

impl std::fmt::Debug for AuditBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditBroker")
            .field(
                "devices",
                &self
                    .slots
                    .iter()
                    .map(|s| s.device.name())
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// What a record is about: the token that made the request (if it authenticated) and the
/// request itself.
struct Subject<'a> {
    auth: Option<&'a TokenEntry>,
    req: &'a Request,
    mount: Option<AuditMount<'a>>,
}

/// The mount a request reached, for its audit records: `mount_point`, `mount_type` and
/// `mount_accessor`, and the data keys its tuning keeps in clear.
#[derive(Debug, Clone, Copy)]
pub struct AuditMount<'a> {
    /// The mount's entry.
    pub(crate) entry: &'a crate::mounts::MountEntry,
    /// An auth method (its point is under `auth/`).
    pub(crate) auth: bool,
}

impl AuditMount<'_> {
    fn point(&self) -> impl std::fmt::Display + '_ {
        struct Point<'b>(&'b AuditMount<'b>);
        impl std::fmt::Display for Point<'_> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                if self.0.auth {
                    f.write_str("auth/")?;
                }
                f.write_str(&self.0.entry.path)
            }
        }
        Point(self)
    }
}

/// No keys kept in clear.
const NONE_CLEAR: &[String] = &[];

/// A [`Subject`] as one device sees it: with that device's hashes of the credentials.
struct Seen<'a> {
    subject: &'a Subject<'a>,
    creds: &'a Creds,
}

impl AuditBroker {
    /// A broker over these devices (names must be unique), with the system clock.
    pub fn new(devices: Vec<Arc<dyn AuditDevice>>) -> Self {
        AuditBroker {
            slots: devices
                .into_iter()
                .map(|device| Slot {
                    device,
                    failing: AtomicBool::new(false),
                })
                .collect(),
            live: RwLock::new(None),
            clock: Arc::new(SystemClock),
            request_failures: AtomicU64::new(0),
            response_failures: AtomicU64::new(0),
        }
    }

    /// How many request records and response records no device accepted since start.
    pub fn failure_counts(&self) -> (u64, u64) {
        (
            self.request_failures.load(Ordering::Relaxed),
            self.response_failures.load(Ordering::Relaxed),
        )
    }

    fn count_failure(&self, request: bool, response: bool) {
        if request {
            self.request_failures.fetch_add(1, Ordering::Relaxed);
        }
        if response {
            self.response_failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The same broker, stamping records with `clock`.
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Whether any device is enabled.
    pub fn is_enabled(&self) -> bool {
        !self.slots.is_empty()
    }

    /// Storage key of a device's HMAC key (behind the barrier).
    fn salt_path(name: &str) -> String {
        format!("core/audit/{name}/salt")
    }

    /// Prepare per-device keys from the unsealed barrier: load each device's key, creating
    /// it at the first unseal.
    pub(crate) async fn unseal(&self, storage: Arc<dyn Store>) -> Result<(), EngineError> {
        let mut keys = Vec::with_capacity(self.slots.len());
        for slot in &self.slots {
            let path = Self::salt_path(slot.device.name());
            let salt = match storage.get(&path).await? {
                Some(bytes) => Zeroizing::new(bytes),
                None => {
                    let mut fresh = Zeroizing::new(vec![0u8; SALT_LEN]);
                    keyhaven_crypto::fill_random(&mut fresh)
                        .map_err(|_| EngineError::Crypto(CryptoOp::Random))?;
                    // Another replica may have created it first: then use theirs.
                    if storage
                        .compare_and_swap(&path, None, Some(fresh.to_vec()))
                        .await?
                    {
                        fresh
                    } else {
                        Zeroizing::new(storage.get(&path).await?.ok_or_else(|| {
                            EngineError::Corrupt("audit device key vanished".to_owned())
                        })?)
                    }
                }
            };
            if salt.len() != SALT_LEN {
                return Err(EngineError::Corrupt(format!(
                    "the key of audit device {:?} is malformed",
                    slot.device.name()
                )));
            }
            keys.push(HmacKey::new(&salt));
        }
        *self.live.write() = Some(Arc::new(Live {
            keys,
            creds: Mutex::new(HashMap::new()),
        }));
        Ok(())
    }

    /// Drop per-device keys and the hashes made with them.
    pub(crate) fn seal(&self) {
        *self.live.write() = None;
    }

    fn live(&self) -> Result<Arc<Live>, EngineError> {
        self.live.read().clone().ok_or_else(|| {
            EngineError::Unavailable("audit: device keys are not loaded (sealed)".to_owned())
        })
    }

    /// Every device's hashes of the request's credentials: from the cache for a token that
    /// authenticated, computed otherwise.
    fn creds(live: &Live, auth: Option<&TokenEntry>, req: &Request) -> Arc<[Creds]> {
        let compute = || -> Arc<[Creds]> {
            live.keys
                .iter()
                .map(|key| Creds {
                    token: req.token.as_ref().map(|t| HashText::new(key, t.expose())),
                    accessor: auth
                        .filter(|e| !e.accessor.is_empty())
                        .map(|e| HashText::new(key, &e.accessor)),
                })
                .collect()
        };
        // `auth` is set only when `req.token` authenticated, and `hash` is the token
        // store's keyed hash of exactly that token.
        let Some(entry) = auth.filter(|e| !e.hash.is_empty() && req.token.is_some()) else {
            return compute();
        };
        if let Some(hit) = live.creds.lock().get(&entry.hash) {
            return hit.clone();
        }
        let fresh = compute();
        let mut cache = live.creds.lock();
        if cache.len() >= CREDS_CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(entry.hash.clone(), fresh.clone());
        fresh
    }

    /// Record a request (after authentication and authorization, before it runs). `error`
    /// is why it was refused, if it was.
    pub async fn log_request(
        &self,
        auth: Option<&TokenEntry>,
        req: &Request,
        mount: Option<AuditMount<'_>>,
        error: Option<&EngineError>,
    ) -> Result<(), EngineError> {
        if self.slots.is_empty() {
            return Ok(());
        }
        let live = self.live()?;
        let creds = Self::creds(&live, auth, req);
        let subject = Subject { auth, req, mount };
        let time = rfc3339(self.clock.now());
        let error = error.map(ErrorText::of);
        self.fan_out(&live, &creds, "request", &subject, |key, seen| {
            Ok(vec![request_record(key, &time, seen, error.as_ref())?])
        })
        .await
        .inspect_err(|_| self.count_failure(true, false))
    }

    /// Record a response.
    pub async fn log_response(
        &self,
        auth: Option<&TokenEntry>,
        req: &Request,
        mount: Option<AuditMount<'_>>,
        result: &Result<Response, EngineError>,
    ) -> Result<(), EngineError> {
        if self.slots.is_empty() {
            return Ok(());
        }
        // The keys are gone only if the server was sealed after the request was recorded:
        // by this very request (`sys/seal`) or while it ran. Vault records only the request
        // of `sys/seal` too; the request record is in the log.
        let Ok(live) = self.live() else {
            tracing::debug!(target: TARGET, "sealed while the request ran; its response is not recorded");
            return Ok(());
        };
        let creds = Self::creds(&live, auth, req);
        let subject = Subject { auth, req, mount };
        let time = rfc3339(self.clock.now());
        self.fan_out(&live, &creds, "response", &subject, |key, seen| {
            Ok(vec![response_record(key, &time, seen, result)?])
        })
        .await
        .inspect_err(|_| self.count_failure(false, true))
    }

    /// The time to stamp on a request record written later by [`AuditBroker::log_exchange`];
    /// `None` (and no clock read) when no device is enabled, as nothing is recorded then.
    pub fn received(&self) -> Option<SystemTime> {
        self.is_enabled().then(|| self.clock.now())
    }

    /// Record a request that has no effect together with its response, after it ran (see
    /// the module documentation). `received` is when the request arrived
    /// ([`AuditBroker::received`] before it ran). The caller must withhold the response
    /// unless this succeeds.
    pub async fn log_exchange(
        &self,
        auth: Option<&TokenEntry>,
        req: &Request,
        mount: Option<AuditMount<'_>>,
        received: Option<SystemTime>,
        result: &Result<Response, EngineError>,
    ) -> Result<(), EngineError> {
        if self.slots.is_empty() {
            return Ok(());
        }
        let received = received.unwrap_or_else(|| self.clock.now());
        // Sealed while it ran: the result is not released (the request record would be
        // missing), as a request that arrives sealed is refused.
        let live = self.live()?;
        let creds = Self::creds(&live, auth, req);
        let subject = Subject { auth, req, mount };
        let asked = rfc3339(received);
        let answered = rfc3339(self.clock.now());
        self.fan_out(&live, &creds, "request", &subject, |key, seen| {
            Ok(vec![
                request_record(key, &asked, seen, None)?,
                response_record(key, &answered, seen, result)?,
            ])
        })
        .await
        // Neither record was written.
        .inspect_err(|_| self.count_failure(true, true))
    }

    /// Format each device's records and succeed as soon as one device accepted all of its
    /// records.
    async fn fan_out(
        &self,
        live: &Live,
        creds: &[Creds],
        what: &str,
        subject: &Subject<'_>,
        format: impl Fn(&HmacKey, &Seen<'_>) -> Result<Vec<Vec<u8>>, EngineError>,
    ) -> Result<(), EngineError> {
        let format_for = |index: usize| -> Result<Vec<Vec<u8>>, EngineError> {
            match (live.keys.get(index), creds.get(index)) {
                (Some(key), Some(creds)) => format(key, &Seen { subject, creds }),
                _ => Err(EngineError::Unavailable(
                    "audit: device key missing".to_owned(),
                )),
            }
        };
        let mut pending = FuturesUnordered::new();
        for (index, slot) in self.slots.iter().enumerate() {
            let records = format_for(index)?;
            pending.push(async move { (index, Self::deliver(slot, records).await) });
        }
        let mut failures = Vec::new();
        while let Some((index, outcome)) = pending.next().await {
            let Some(slot) = self.slots.get(index) else {
                continue;
            };
            match outcome {
                Ok(()) => {
                    if slot.failing.swap(false, Ordering::Relaxed) {
                        tracing::warn!(target: TARGET, device = slot.device.name(), "audit device accepts records again");
                    }
                    // At least one device has the records. The others' writes are dropped
                    // here; records they already queued are still written.
                    return Ok(());
                }
                Err(reason) => {
                    if !slot.failing.swap(true, Ordering::Relaxed) {
                        tracing::error!(target: TARGET, device = slot.device.name(), %reason, "audit device failed to record");
                    } else {
                        tracing::debug!(target: TARGET, device = slot.device.name(), %reason, "audit device failed to record");
                    }
                    failures.push(format!("{}: {reason}", slot.device.name()));
                }
            }
        }
        Err(EngineError::Unavailable(format!(
            "audit: no audit device recorded the {what} ({})",
            failures.join("; ")
        )))
    }

    /// Hand records to one device and wait at most its timeout.
    async fn deliver(slot: &Slot, records: Vec<Vec<u8>>) -> Result<(), String> {
        let timeout = slot.device.timeout();
        match tokio::time::timeout(timeout, slot.device.write_batch(records)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("timed out after {timeout:?}")),
        }
    }

    /// `sys/audit`: the devices, keyed `<name>/`.
    pub fn list(&self) -> Map<String, Value> {
        let mut out = Map::new();
        for slot in &self.slots {
            let d = &slot.device;
            let path = format!("{}/", d.name());
            out.insert(
                path.clone(),
                json!({
                    "type": d.kind(),
                    "description": d.description(),
                    "options": d.options(),
                    "path": path,
                    "local": d.local(),
                }),
            );
        }
        out
    }

    /// `sys/audit-hash/<device>`: the HMAC a device would log for `input`.
    pub fn hash(&self, device: &str, input: &str) -> Result<String, EngineError> {
        let name = device.trim_end_matches('/');
        let index = self
            .slots
            .iter()
            .position(|s| s.device.name() == name)
            .ok_or_else(|| EngineError::invalid(format!("unknown audit device {name:?}")))?;
        let live = self.live()?;
        let key = live
            .keys
            .get(index)
            .ok_or_else(|| EngineError::Unavailable("audit: device key missing".to_owned()))?;
        Ok(hash_str(key, input))
    }
}

/// The `error` of a record, and whether it is written in clear.
enum ErrorText {
    /// A fixed message that carries nothing from the request.
    Clear(String),
    /// A message with text in it that may come from the request: hashed per device.
    Hashed(String),
}

impl ErrorText {
    fn of(e: &EngineError) -> ErrorText {
        // Exhaustive on purpose: a new variant must say whether its message is fixed.
        match e {
            EngineError::PermissionDenied
            | EngineError::UnsupportedOperation
            | EngineError::Sealed
            | EngineError::NotInitialized
            | EngineError::AlreadyInitialized
            | EngineError::Storage(_)
            | EngineError::VersionGone(_)
            | EngineError::Crypto(_)
            | EngineError::Encode(_)
            | EngineError::NotActive
            | EngineError::Internal(_) => ErrorText::Clear(e.to_string()),
            EngineError::InvalidRequest(_)
            | EngineError::NotFound(_)
            | EngineError::PreconditionFailed(_)
            | EngineError::Forbidden(_)
            | EngineError::Corrupt(_)
            | EngineError::Failed(_)
            | EngineError::Unavailable(_) => ErrorText::Hashed(e.to_string()),
        }
    }

    fn is_empty(&self) -> bool {
        match self {
            ErrorText::Clear(s) | ErrorText::Hashed(s) => s.is_empty(),
        }
    }
}

/// `hmac-sha256:<hex>` of `s`.
fn hash_str(key: &HmacKey, s: &str) -> String {
    HashText::new(key, s).as_str().to_owned()
}

/// `hmac-sha256:<hex>` on the stack.
struct HashText([u8; HASH_PREFIX.len() + 64]);

impl HashText {
    fn new(key: &HmacKey, s: &str) -> HashText {
        let mut out = [0u8; HASH_PREFIX.len() + 64];
        let (prefix, hex) = out.split_at_mut(HASH_PREFIX.len());
        prefix.copy_from_slice(HASH_PREFIX.as_bytes());
        // Both lengths are fixed: 32 bytes make 64 hex digits.
        let _ = hex::encode_to_slice(key.sign(s.as_bytes()), hex);
        HashText(out)
    }

    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or(HASH_PREFIX)
    }
}

impl Serialize for HashText {
    fn serialize<S: Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        ser.serialize_str(self.as_str())
    }
}

// Records are serialized straight from the request, the token and the response, hashing
// strings on the way: no intermediate `Value` tree. Fields are written in the order a
// `serde_json::Map` would hold them (sorted), so the bytes are those of the map.

/// `v` with every string, at any depth, hashed. Keys are kept.
struct HashedValue<'a>(&'a HmacKey, &'a Value);

impl Serialize for HashedValue<'_> {
    fn serialize<S: Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        match self.1 {
            Value::String(s) => HashText::new(self.0, s).serialize(ser),
            Value::Array(items) => {
                let mut seq = ser.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(&HashedValue(self.0, item))?;
                }
                seq.end()
            }
            Value::Object(map) => HashedMap(self.0, map, NONE_CLEAR).serialize(ser),
            other => other.serialize(ser),
        }
    }
}

/// A map with every string value, at any depth, hashed, except the values of the
/// top-level keys in the third field (a mount's `audit_non_hmac_*_keys`), kept as sent.
struct HashedMap<'a>(&'a HmacKey, &'a Map<String, Value>, &'a [String]);

impl Serialize for HashedMap<'_> {
    fn serialize<S: Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        let mut m = ser.serialize_map(Some(self.1.len()))?;
        for (k, v) in self.1 {
            if self.2.iter().any(|c| c == k) {
                m.serialize_entry(k, v)?;
            } else {
                m.serialize_entry(k, &HashedValue(self.0, v))?;
            }
        }
        m.end()
    }
}

/// Vault's `auth` block of a record: who made the request.
struct AuthBlock<'a>(&'a Seen<'a>);

impl Serialize for AuthBlock<'_> {
    fn serialize<S: Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        let seen = self.0;
        let mut a = ser.serialize_map(None)?;
        let Some(entry) = seen.subject.auth else {
            return a.end();
        };
        if let Some(accessor) = &seen.creds.accessor {
            a.serialize_entry("accessor", accessor)?;
        }
        if let Some(token) = &seen.creds.token {
            a.serialize_entry("client_token", token)?;
        }
        if !entry.display_name.is_empty() {
            a.serialize_entry("display_name", &entry.display_name)?;
        }
        if !entry.meta.is_empty() {
            a.serialize_entry("metadata", &entry.meta)?;
        }
        if !entry.policies.is_empty() {
            a.serialize_entry("policies", &entry.policies)?;
        }
        if entry.num_uses > 0 {
            a.serialize_entry("remaining_uses", &entry.num_uses)?;
        }
        if let Some(t) = unix_time(entry.issue_time) {
            a.serialize_entry("token_issue_time", &t)?;
        }
        if !entry.policies.is_empty() {
            a.serialize_entry("token_policies", &entry.policies)?;
        }
        if entry.creation_ttl > 0 {
            a.serialize_entry("token_ttl", &entry.creation_ttl)?;
        }
        a.serialize_entry("token_type", "service")?;
        a.end()
    }
}

fn unix_time(secs: i64) -> Option<String> {
    if secs <= 0 {
        return None;
    }
    let t = time::OffsetDateTime::from_unix_timestamp(secs).ok()?;
    t.format(&time::format_description::well_known::Rfc3339)
        .ok()
}

/// Vault's `request` block of a record.
struct RequestBlock<'a>(&'a HmacKey, &'a Seen<'a>);

impl Serialize for RequestBlock<'_> {
    fn serialize<S: Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        let (key, seen) = (self.0, self.1);
        let s = seen.subject;
        let mut r = ser.serialize_map(None)?;
        if let Some(token) = &seen.creds.token {
            r.serialize_entry("client_token", token)?;
        }
        if let Some(accessor) = &seen.creds.accessor {
            r.serialize_entry("client_token_accessor", accessor)?;
        }
        if !s.req.data.is_empty() {
            let clear = s
                .mount
                .map_or(NONE_CLEAR, |m| &m.entry.config.audit_non_hmac_request_keys);
            r.serialize_entry("data", &HashedMap(key, &s.req.data, clear))?;
        }
        if !s.req.id.is_empty() {
            r.serialize_entry("id", &s.req.id)?;
        }
        if let Some(m) = &s.mount {
            r.serialize_entry("mount_accessor", &m.entry.accessor)?;
            r.serialize_entry("mount_point", &format_args!("{}", m.point()))?;
            r.serialize_entry("mount_type", &m.entry.kind)?;
        }
        r.serialize_entry("operation", s.req.operation.as_str())?;
        r.serialize_entry("path", &s.req.path)?;
        if let Some(addr) = &s.req.remote_addr {
            r.serialize_entry("remote_address", &format_args!("{addr}"))?;
        }
        r.end()
    }
}

/// The credentials in an `auth` object of a response (logins, token creation) are hashed;
/// policies, metadata and the other descriptive fields are kept, as Vault does.
struct ResponseAuth<'a>(&'a HmacKey, &'a Map<String, Value>);

impl Serialize for ResponseAuth<'_> {
    fn serialize<S: Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        let mut m = ser.serialize_map(Some(self.1.len()))?;
        for (k, v) in self.1 {
            match (k.as_str(), v) {
                ("client_token" | "accessor", Value::String(s)) => {
                    m.serialize_entry(k, &HashText::new(self.0, s))?;
                }
                (_, other) => m.serialize_entry(k, other)?,
            }
        }
        m.end()
    }
}

/// Vault's `response` block of a record (empty for an error).
struct ResponseBlock<'a>(&'a HmacKey, &'a Result<Response, EngineError>, &'a [String]);

impl Serialize for ResponseBlock<'_> {
    fn serialize<S: Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        let mut m = ser.serialize_map(None)?;
        if let Ok(r) = self.1 {
            if let Some(auth) = &r.auth {
                m.serialize_entry("auth", &ResponseAuth(self.0, auth))?;
            }
            if let Some(data) = r.data_view().map_err(serde::ser::Error::custom)? {
                m.serialize_entry("data", &HashedMap(self.0, &data, self.2))?;
            }
            if !r.warnings.is_empty() {
                m.serialize_entry("warnings", &r.warnings)?;
            }
            if let Some(wrap) = &r.wrap_info {
                m.serialize_entry("wrap_info", &WrapInfoBlock(self.0, wrap))?;
            }
        }
        m.end()
    }
}

/// The `wrap_info` of a wrapped response: the wrapping token and the accessors are
/// hashed (the token would unwrap the response), the rest is kept.
struct WrapInfoBlock<'a>(&'a HmacKey, &'a keyhaven_types::wire::WrapInfo);

impl Serialize for WrapInfoBlock<'_> {
    fn serialize<S: Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        let (key, w) = (self.0, self.1);
        let mut m = ser.serialize_map(None)?;
        m.serialize_entry("accessor", &HashText::new(key, &w.accessor))?;
        m.serialize_entry("creation_path", &w.creation_path)?;
        m.serialize_entry("creation_time", &w.creation_time)?;
        m.serialize_entry("token", &HashText::new(key, &w.token))?;
        m.serialize_entry("ttl", &w.ttl)?;
        if let Some(wrapped) = &w.wrapped_accessor {
            m.serialize_entry("wrapped_accessor", &HashText::new(key, wrapped))?;
        }
        m.end()
    }
}

/// A whole record.
struct Record<'a> {
    key: &'a HmacKey,
    time: &'a str,
    kind: &'static str,
    seen: &'a Seen<'a>,
    error: Option<&'a ErrorText>,
    /// Set for a response record.
    response: Option<&'a Result<Response, EngineError>>,
}

impl Serialize for Record<'_> {
    fn serialize<S: Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        let mut m = ser.serialize_map(None)?;
        m.serialize_entry("auth", &AuthBlock(self.seen))?;
        match self.error.filter(|e| !e.is_empty()) {
            Some(ErrorText::Clear(e)) => m.serialize_entry("error", e)?,
            Some(ErrorText::Hashed(e)) => {
                m.serialize_entry("error", &HashText::new(self.key, e))?
            }
            None => {}
        }
        m.serialize_entry("request", &RequestBlock(self.key, self.seen))?;
        if let Some(result) = self.response {
            let clear = self
                .seen
                .subject
                .mount
                .map_or(NONE_CLEAR, |m| &m.entry.config.audit_non_hmac_response_keys);
            m.serialize_entry("response", &ResponseBlock(self.key, result, clear))?;
        }
        m.serialize_entry("time", self.time)?;
        m.serialize_entry("type", self.kind)?;
        m.end()
    }
}

fn encode(record: &Record<'_>) -> Result<Vec<u8>, EngineError> {
    let mut out = Vec::with_capacity(1024);
    serde_json::to_writer(&mut out, record)
        .map_err(|_| EngineError::Unavailable("audit: cannot encode a record".to_owned()))?;
    Ok(out)
}

fn request_record(
    key: &HmacKey,
    time: &str,
    seen: &Seen<'_>,
    error: Option<&ErrorText>,
) -> Result<Vec<u8>, EngineError> {
    encode(&Record {
        key,
        time,
        kind: "request",
        seen,
        error,
        response: None,
    })
}

fn response_record(
    key: &HmacKey,
    time: &str,
    seen: &Seen<'_>,
    result: &Result<Response, EngineError>,
) -> Result<Vec<u8>, EngineError> {
    let error = result.as_ref().err().map(ErrorText::of);
    encode(&Record {
        key,
        time,
        kind: "response",
        seen,
        error: error.as_ref(),
        response: Some(result),
    })
}
