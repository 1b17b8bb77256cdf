//! The transit secrets engine: encryption as a service, compatible with Vault/OpenBao's
//! `transit`, plus a key lifecycle in the manner of the cloud KMS services.
//!
//! Endpoints, relative to the mount (OpenBao's shapes unless noted):
//!
//! | path | operations |
//! |---|---|
//! | `keys` | LIST |
//! | `keys/<name>` | write (create), read, delete (only with `deletion_allowed`) |
//! | `keys/<name>/config`, `/rotate`, `/trim` | write |
//! | `keys/<name>/disable`, `/enable` | write — keyhaven: a disabled key refuses every cryptographic operation |
//! | `keys/<name>/schedule-deletion` `{pending_window_days: 7..=30}`, `/cancel-deletion` | write — keyhaven: see below |
//! | `aliases` (LIST), `aliases/<alias>` `{key}` | keyhaven: another name for a key, usable wherever a key name is |
//! | `encrypt/<name>`, `decrypt/<name>`, `rewrap/<name>` | write, with `batch_input` |
//! | `datakey/plaintext/<name>`, `datakey/wrapped/<name>` | write |
//! | `hmac/<name>[/<alg>]`, `sign/<name>[/<hash>]`, `verify/<name>[/<hash>]` | write, with `batch_input` |
//! | `random[/<source>][/<bytes>]`, `hash[/<alg>]` | write |
//! | `config/keys` `{disable_upsert}` | read, write |
//!
//! # Semantics worth knowing
//!
//! - **Upsert.** Encrypting with a key that does not exist creates it (type from `type`,
//!   default `aes256-gcm96`; derived when the request carries a `context`), as Vault does.
//!   Vault asks for the `create` capability; keyhaven's router presents writes as `update`,
//!   so the `update` capability on `encrypt/<name>` is enough. `config/keys
//!   disable_upsert=true` turns upsert off for the mount.
//! - **Errors.** Every failure to decrypt a well-formed envelope — wrong key, wrong context
//!   or associated data, tampering, truncation — gives the same message, `decryption
//!   failed`. Malformed envelopes (no `vault:v` prefix, bad version, invalid base64), unknown
//!   versions and versions below `min_decryption_version` get their own clear messages.
//! - **Key states.** A disabled key or one pending deletion refuses encrypt, decrypt,
//!   rewrap, datakey, hmac, sign and verify with HTTP 400 (`PreconditionFailed`, the status
//!   Vault gives a failed check-and-set; AWS answers 409-like `KMSInvalidStateException`,
//!   which has no counterpart in Vault's API). Management (read, config, enable, cancel)
//!   still works.
//! - **Scheduled deletion.** `schedule-deletion` needs `deletion_allowed`, like `DELETE`.
//!   The key is destroyed by [`Backend::tick`] once the window has passed;
//!   `cancel-deletion` leaves the key *disabled*, as AWS KMS does.
//! - **Aliases and policies.** A request through an alias is authorized on the path as
//!   sent and on the same route with the key's own name ([`Backend::resolve_alias`]): a
//!   policy on `decrypt/prod` governs `decrypt/<alias of prod>` too, and a deny on either
//!   path denies. `sys/policies/explain` evaluates the path as written.
//! - **Batches are bounded** (keyhaven; Vault and OpenBao have no such limit): a
//!   `batch_input` over [`Limits`]' item or byte count is refused with 400 naming the
//!   limit, before any item is processed or the key is created.
//! - **Automatic rotation.** [`Backend::tick`] rotates every enabled key whose
//!   `auto_rotate_period` has passed since its latest version was created.
//! - **Signatures.** ECDSA P-256 signs with SHA2-256 and P-384 with SHA2-384 (the
//!   provider's pairs; P-384's default hash is therefore sha2-384, not Vault's sha2-256).
//!   RSA signs with PSS (salt as long as the hash) or PKCS#1 v1.5 over sha2-256/384/512.
//!   Ed25519 keys cannot be `derived` yet.
//!
//! # Storage and cache
//!
//! One barrier-encrypted record per key at `keys/<name>` (settings and every version's
//! material), `aliases/<alias>` for aliases and `config` for the mount settings. Keys are
//! prepared once and cached in memory per backend instance, which the core drops on seal;
//! prepared keys zeroize on drop. A cryptographic request reads only the cache. Every change
//! is serialized by a per-instance lock, written with compare-and-swap against the record as
//! read, and then replaces the cache entry. Another server sharing the store sees a change
//! when its cache entry is next loaded; cross-server invalidation is the HA layer's job.

mod key;
mod manage;
mod ops;
mod routes;

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use keyhaven_storage::{Condition, Op, ReadMostly, Store, Transaction, TxOutcome};
use parking_lot::RwLock;
use serde_json::{Map, Value};
use zeroize::Zeroizing;

use crate::backend::{Backend, BackendContext, BackendRequest, Limits};
use crate::clock::Clock;
use crate::error::EngineError;
use crate::request::{Operation, Response};
use crate::route::Route;
use manage::KeyAction;

use key::{Key, KeyState, unix_nanos};

/// The longest key or alias name accepted, in bytes.
pub const MAX_NAME_LEN: usize = 256;

/// How many times a change is recomputed after losing a race with another server.
const MAX_ATTEMPTS: usize = 8;

const CONFIG_KEY: &str = "config";

/// Build a transit backend for a mount.
pub fn factory(ctx: BackendContext) -> Result<Arc<dyn Backend>, EngineError> {
    Ok(Arc::new(TransitBackend {
        storage: ctx.storage,
        clock: ctx.clock,
        cache: ReadMostly::new(HashMap::new()),
        aliases: ReadMostly::new(HashMap::new()),
        disable_upsert: RwLock::new(None),
        write_lock: tokio::sync::Mutex::new(()),
        limits: ctx.limits,
    }))
}

/// One mounted transit engine.
pub(crate) struct TransitBackend {
    storage: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    /// Prepared keys by name.
    cache: ReadMostly<HashMap<String, Arc<Key>>>,
    /// Alias → key name, for aliases seen so far.
    aliases: ReadMostly<HashMap<String, String>>,
    /// The mount's `disable_upsert`, once read.
    disable_upsert: RwLock<Option<bool>>,
    /// Serializes changes made through this instance.
    write_lock: tokio::sync::Mutex<()>,
    /// Bounds on batches.
    limits: Limits,
}

impl std::fmt::Debug for TransitBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransitBackend").finish_non_exhaustive()
    }
}

#[async_trait]
impl Backend for TransitBackend {
    fn routes(&self) -> &'static [Route] {
        routes::ROUTES
    }

    async fn handle(&self, req: BackendRequest<'_>) -> Result<Response, EngineError> {
        use Operation::{Create, Delete, List, Read, Update};
        let op = req.operation;
        let data = req.data;
        let name = req.capture("name");
        let url_alg = req.captures.get("urlalgorithm");
        match (req.route.pattern, op) {
            ("keys", List) => self.list_keys().await,
            ("keys/{name}", Read) => self.read_key(name).await,
            ("keys/{name}", Create | Update) => self.create_key(name, data).await,
            ("keys/{name}", Delete) => self.delete_key(name).await,
            ("keys/{name}/config", _) => self.key_action(name, KeyAction::Config, data).await,
            ("keys/{name}/rotate", _) => self.key_action(name, KeyAction::Rotate, data).await,
            ("keys/{name}/trim", _) => self.key_action(name, KeyAction::Trim, data).await,
            ("keys/{name}/disable", _) => self.key_action(name, KeyAction::Disable, data).await,
            ("keys/{name}/enable", _) => self.key_action(name, KeyAction::Enable, data).await,
            ("keys/{name}/schedule-deletion", _) => {
                self.key_action(name, KeyAction::ScheduleDeletion, data)
                    .await
            }
            ("keys/{name}/cancel-deletion", _) => {
                self.key_action(name, KeyAction::CancelDeletion, data).await
            }
            ("aliases", List) => self.list_aliases().await,
            ("aliases/{alias}", Read) => self.read_alias(req.capture("alias")).await,
            ("aliases/{alias}", Create | Update) => {
                self.write_alias(req.capture("alias"), data).await
            }
            ("aliases/{alias}", Delete) => self.delete_alias(req.capture("alias")).await,
            ("config/keys", Read) => self.read_mount_config().await,
            ("config/keys", Create | Update) => self.write_mount_config(data).await,
            ("encrypt/{name}", _) => self.encrypt(name, data).await,
            ("decrypt/{name}", _) => self.decrypt(name, data).await,
            ("rewrap/{name}", _) => self.rewrap(name, data).await,
            ("datakey/{plaintext}/{name}", _) => {
                self.datakey(req.capture("plaintext"), name, data).await
            }
            ("hmac/{name}/{urlalgorithm?}", _) => self.hmac(name, url_alg, data).await,
            ("sign/{name}/{urlalgorithm?}", _) => self.sign(name, url_alg, data).await,
            ("verify/{name}/{urlalgorithm?}", _) => self.verify(name, url_alg, data).await,
            ("random/{source?}/{urlbytes?}", _) => ops::random(
                req.captures.get("source"),
                req.captures.get("urlbytes"),
                data,
            ),
            ("hash/{urlalgorithm?}", _) => ops::hash(url_alg, data),
            _ => Err(EngineError::UnsupportedOperation),
        }
    }

    async fn tick(&self) -> Result<(), EngineError> {
        self.run_schedule().await
    }

    /// Routes that take a key name take an alias too ([`routes::ROUTES`] marks them).
    async fn resolve_alias(&self, name: &str) -> Result<Option<String>, EngineError> {
        if validate_name(name).is_err() {
            return Ok(None);
        }
        // A prepared key of that name is no alias: the common case, without a copy of
        // the name.
        if self.cache.read().contains_key(name) {
            return Ok(None);
        }
        let (real, _) = self.resolve(name).await?;
        Ok(match real {
            Cow::Owned(real) if real != name => Some(real),
            _ => None,
        })
    }
}

/// Vault's rule for key names: word characters, `-` and `.`, starting and ending with a
/// word character.
fn validate_name(name: &str) -> Result<(), EngineError> {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.chars().all(|c| word(c) || c == '-' || c == '.')
        && name.starts_with(word)
        && name.ends_with(word);
    if ok {
        Ok(())
    } else {
        Err(EngineError::invalid(format!(
            "invalid key name: use letters, digits, '_', '-' and '.', at most {MAX_NAME_LEN} bytes"
        )))
    }
}

fn key_path(name: &str) -> String {
    format!("keys/{name}")
}

fn alias_path(alias: &str) -> String {
    format!("aliases/{alias}")
}

fn contention() -> EngineError {
    EngineError::Unavailable("too much contention on this key; retry later".to_owned())
}

impl TransitBackend {
    fn now_nanos(&self) -> u64 {
        unix_nanos(self.clock.now())
    }

    /// The key `name` from storage, bypassing the cache, and refresh the cache with it.
    async fn load_fresh(&self, name: &str) -> Result<Option<Arc<Key>>, EngineError> {
        match self.storage.get(&key_path(name)).await? {
            None => {
                self.cache.write().remove(name);
                Ok(None)
            }
            Some(bytes) => {
                let key = Arc::new(Key::decode(name, bytes)?);
                self.cache.write().insert(name.to_owned(), key.clone());
                Ok(Some(key))
            }
        }
    }

    /// The key `name` (no alias resolution), from the cache or storage.
    async fn load(&self, name: &str) -> Result<Option<Arc<Key>>, EngineError> {
        if let Some(k) = self.cache.read().get(name) {
            return Ok(Some(k.clone()));
        }
        self.load_fresh(name).await
    }

    /// The target of alias `alias`, if it is one.
    async fn alias_target(&self, alias: &str) -> Result<Option<String>, EngineError> {
        if let Some(t) = self.aliases.read().get(alias) {
            return Ok(Some(t.clone()));
        }
        let Some(raw) = self.storage.get(&alias_path(alias)).await? else {
            return Ok(None);
        };
        let target = manage::decode_alias(&raw)?;
        self.aliases
            .write()
            .insert(alias.to_owned(), target.clone());
        Ok(Some(target))
    }

    /// Resolve a key name or alias to the key's real name and the key, if it exists.
    /// The name is borrowed unless `name` was an alias.
    async fn resolve<'n>(
        &self,
        name: &'n str,
    ) -> Result<(Cow<'n, str>, Option<Arc<Key>>), EngineError> {
        validate_name(name)?;
        if let Some(k) = self.cache.read().get(name) {
            return Ok((Cow::Borrowed(name), Some(k.clone())));
        }
        if let Some(k) = self.load(name).await? {
            return Ok((Cow::Borrowed(name), Some(k)));
        }
        if let Some(target) = self.alias_target(name).await? {
            let k = self.load(&target).await?;
            return Ok((Cow::Owned(target), k));
        }
        Ok((Cow::Borrowed(name), None))
    }

    /// Apply `change` to the key `name` (already resolved) and store the result with
    /// compare-and-swap, retrying if another server changed it meanwhile. `change` gets the
    /// current key (`None` if absent) and returns the new settings and versions, or `None`
    /// to delete the key. Returns the key as stored (`None` when deleted).
    async fn modify<F>(&self, name: &str, mut change: F) -> Result<Option<Arc<Key>>, EngineError>
    where
        F: FnMut(Option<&Key>) -> Result<Change, EngineError>,
    {
        let _guard = self.write_lock.lock().await;
        let path = key_path(name);
        for _ in 0..MAX_ATTEMPTS {
            let current = match self.storage.get(&path).await? {
                Some(bytes) => Some(Key::decode(name, bytes)?),
                None => None,
            };
            let condition = match &current {
                Some(k) => Condition::Equals {
                    key: path.clone(),
                    value: k.stored.to_vec(),
                },
                None => Condition::Absent { key: path.clone() },
            };
            let (op, next) = match change(current.as_ref())? {
                Change::Keep => return Ok(current.map(Arc::new)),
                Change::Delete => (Op::Delete { key: path.clone() }, None),
                Change::Put(config, versions) => {
                    let bytes = Key::encode(&config, &versions)?;
                    let kind = keyhaven_crypto::transit::KeyType::parse(&config.kind)
                        .ok_or_else(|| EngineError::invalid("unknown key type"))?;
                    let next = Key {
                        name: name.to_owned(),
                        kind,
                        config,
                        versions,
                        stored: Zeroizing::new(bytes.to_vec()),
                    };
                    (
                        Op::Put {
                            key: path.clone(),
                            value: bytes.to_vec(),
                        },
                        Some(Arc::new(next)),
                    )
                }
            };
            let tx = Transaction {
                conditions: vec![condition],
                ops: vec![op],
            };
            match self.storage.transact(tx).await? {
                TxOutcome::Committed => {
                    let mut cache = self.cache.write();
                    match &next {
                        Some(k) => cache.insert(name.to_owned(), k.clone()),
                        None => cache.remove(name),
                    };
                    return Ok(next);
                }
                TxOutcome::ConditionFailed { .. } => continue,
            }
        }
        Err(contention())
    }

    /// The mount's `disable_upsert`.
    async fn upsert_disabled(&self) -> Result<bool, EngineError> {
        if let Some(v) = *self.disable_upsert.read() {
            return Ok(v);
        }
        let v = match self.storage.get(CONFIG_KEY).await? {
            Some(raw) => manage::decode_mount_config(&raw)?,
            None => false,
        };
        *self.disable_upsert.write() = Some(v);
        Ok(v)
    }

    /// Scheduled work: finish pending deletions whose window has passed and rotate keys
    /// whose `auto_rotate_period` has elapsed.
    async fn run_schedule(&self) -> Result<(), EngineError> {
        let now = self.now_nanos();
        let names = self.list_names("keys/").await?;
        for name in names {
            if name.ends_with('/') {
                continue;
            }
            let Some(key) = self.load(&name).await? else {
                continue;
            };
            let c = &key.config;
            let due_deletion =
                c.state == KeyState::PendingDeletion && c.deletion_time.is_some_and(|t| now >= t);
            let due_rotation = c.state == KeyState::Enabled
                && c.auto_rotate_period > 0
                && now
                    >= key
                        .last_rotation()
                        .saturating_add(c.auto_rotate_period.saturating_mul(1_000_000_000));
            if due_deletion {
                self.destroy(&name, now).await?;
                tracing::info!(target: "keyhaven::transit", key = %name, "key destroyed after its pending deletion window");
            } else if due_rotation {
                self.rotate_if_due(&name, now).await?;
                tracing::info!(target: "keyhaven::transit", key = %name, "key rotated automatically");
            }
        }
        Ok(())
    }
}

/// What [`TransitBackend::modify`] should do.
enum Change {
    /// Nothing to write.
    Keep,
    /// Write these settings and versions.
    Put(
        key::KeyConfig,
        std::collections::BTreeMap<u32, key::Version>,
    ),
    /// Remove the key.
    Delete,
}

/// Read a batch or single request: `batch_input` as a list of objects (or that list as a
/// JSON string, which is what `bao write … batch_input=…` sends), or the request itself as
/// one item. The flag says whether it was a batch.
type Items<'a> = (Vec<Cow<'a, Map<String, Value>>>, bool);

/// The items of a request, refusing a batch over `limits` before any item is looked at.
fn items(data: &Map<String, Value>, limits: Limits) -> Result<Items<'_>, EngineError> {
    const WRONG: &str = "invalid value for parameter \"batch_input\": expected a list of objects";
    fn check(i: usize, v: &Value) -> Result<&Map<String, Value>, EngineError> {
        match v {
            Value::Object(m) => Ok(m),
            _ => Err(EngineError::invalid(format!(
                "batch_input[{i}]: expected an object"
            ))),
        }
    }
    let out: Vec<Cow<'_, Map<String, Value>>> = match data.get("batch_input") {
        None | Some(Value::Null) => return Ok((vec![Cow::Borrowed(data)], false)),
        Some(Value::Array(list)) => {
            check_item_count(list.len(), limits)?;
            check_byte_count(input_bytes(list), limits)?;
            list.iter()
                .enumerate()
                .map(|(i, v)| check(i, v).map(Cow::Borrowed))
                .collect::<Result<_, _>>()?
        }
        Some(Value::String(s)) => {
            check_byte_count(s.len(), limits)?;
            let list = parse_bounded_list(s, limits)?;
            list.into_iter()
                .enumerate()
                .map(|(i, v)| match v {
                    Value::Object(m) => Ok(Cow::Owned(m)),
                    _ => Err(EngineError::invalid(format!(
                        "batch_input[{i}]: expected an object"
                    ))),
                })
                .collect::<Result<_, _>>()?
        }
        Some(_) => return Err(EngineError::invalid(WRONG)),
    };
    if out.is_empty() {
        return Err(EngineError::invalid("missing batch input to process"));
    }
    Ok((out, true))
}

fn too_many_items(n: usize, limits: Limits) -> EngineError {
    EngineError::invalid(format!(
        "batch_input has {n} items; the limit is {} (max_batch_items)",
        limits.max_batch_items
    ))
}

fn check_item_count(n: usize, limits: Limits) -> Result<(), EngineError> {
    if n > limits.max_batch_items {
        return Err(too_many_items(n, limits));
    }
    Ok(())
}

fn check_byte_count(n: usize, limits: Limits) -> Result<(), EngineError> {
    if n > limits.max_batch_bytes {
        return Err(EngineError::invalid(format!(
            "batch_input has {n} bytes of input; the limit is {} (max_batch_bytes)",
            limits.max_batch_bytes
        )));
    }
    Ok(())
}

/// The bytes of the field names and string values in `items`, at any depth.
fn input_bytes(items: &[Value]) -> usize {
    let mut total = 0usize;
    let mut stack: Vec<&Value> = items.iter().collect();
    while let Some(v) = stack.pop() {
        match v {
            Value::String(s) => total = total.saturating_add(s.len()),
            Value::Array(list) => stack.extend(list),
            Value::Object(m) => {
                for (k, v) in m {
                    total = total.saturating_add(k.len());
                    stack.push(v);
                }
            }
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
    }
    total
}

/// Parse `batch_input` given as a JSON string, keeping at most `max_batch_items` items:
/// past the limit the rest is only counted (for the message), never built.
fn parse_bounded_list(text: &str, limits: Limits) -> Result<Vec<Value>, EngineError> {
    use serde::de::{DeserializeSeed, IgnoredAny, SeqAccess, Visitor};

    const WRONG: &str = "invalid value for parameter \"batch_input\": expected a list of objects";

    enum Parsed {
        Items(Vec<Value>),
        TooMany(usize),
    }

    struct Bounded(usize);

    impl<'de> Visitor<'de> for Bounded {
        type Value = Parsed;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a list")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Parsed, A::Error> {
            let mut out = Vec::new();
            while out.len() < self.0 {
                match seq.next_element::<Value>()? {
                    Some(v) => out.push(v),
                    None => return Ok(Parsed::Items(out)),
                }
            }
            if seq.next_element::<IgnoredAny>()?.is_none() {
                return Ok(Parsed::Items(out));
            }
            let mut n = out.len().saturating_add(1);
            drop(out);
            while seq.next_element::<IgnoredAny>()?.is_some() {
                n = n.saturating_add(1);
            }
            Ok(Parsed::TooMany(n))
        }
    }

    impl<'de> DeserializeSeed<'de> for Bounded {
        type Value = Parsed;

        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Parsed, D::Error> {
            d.deserialize_seq(self)
        }
    }

    let mut de = serde_json::Deserializer::from_str(text);
    let parsed = Bounded(limits.max_batch_items)
        .deserialize(&mut de)
        .and_then(|p| de.end().map(|()| p))
        .map_err(|_| EngineError::invalid(WRONG))?;
    match parsed {
        Parsed::Items(list) => Ok(list),
        Parsed::TooMany(n) => Err(too_many_items(n, limits)),
    }
}

#[cfg(test)]
mod tests {
    use keyhaven_storage::KeyWrite;

    /// A standby caches keys, aliases and the mount configuration: the active must
    /// announce every change of them.
    #[test]
    fn cached_entries_are_announced_to_standbys() {
        let put = KeyWrite::Put { replaced: true };
        for rel in [
            super::key_path("k"),
            super::alias_path("a"),
            super::CONFIG_KEY.to_owned(),
        ] {
            let key = format!("logical/5f0c/{rel}");
            assert!(crate::ha::announces(&key, put), "{key}");
            assert!(crate::ha::announces(&key, KeyWrite::Delete), "{key}");
        }
    }
}
