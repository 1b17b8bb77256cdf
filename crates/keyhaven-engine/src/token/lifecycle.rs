//! A token's life: minting (children, orphans, logins and the root token at init),
//! renewal, and revocation: of a tree, of one token whose children become orphans, of a
//! token whose final use a request spent, and of expired tokens.

use std::collections::BTreeMap;

use keyhaven_crypto::fill_random;
use keyhaven_storage::{Op, Transaction};
use keyhaven_types::token::{self, TokenKind};
use serde_json::{Map, Value, json};

use super::roles::normalize_policies;
use super::{
    ACCESSOR_PREFIX, EXPIRE_PREFIX, ID_PREFIX, INDEX_MARKER, PARENT_PREFIX, REVOKING_PREFIX,
    SYSTEM_MAX_TTL, TokenEntry, TokenStore, corrupt, expire_key, parse_expire_name, ttl_from,
};
use crate::auth::LoginGrant;
use crate::error::{CryptoOp, EngineError};
use crate::params;

/// Parameters of a new token. `policies` is the final set, already decided by
/// [`decide_policies`](super::roles::decide_policies) (or by an auth method's role) and
/// normalized.
#[derive(Debug, Clone, Default)]
pub(super) struct CreateParams {
    pub(super) policies: Vec<String>,
    pub(super) ttl: u64,
    pub(super) explicit_max_ttl: u64,
    pub(super) period: u64,
    pub(super) renewable: bool,
    pub(super) num_uses: u64,
    pub(super) display_name: String,
    pub(super) meta: BTreeMap<String, String>,
    pub(super) path: String,
    pub(super) bound_cidrs: Vec<crate::cidr::Cidr>,
}

impl CreateParams {
    /// Cap every duration at `max` (the mount's or the system's maximum TTL), as Vault
    /// does, with a warning for each value that was cut.
    pub(super) fn cap_durations(&mut self, max: u64) -> Vec<String> {
        let mut warnings = Vec::new();
        for (name, value) in [
            ("ttl", &mut self.ttl),
            ("explicit_max_ttl", &mut self.explicit_max_ttl),
            ("period", &mut self.period),
        ] {
            if *value > max {
                warnings.push(format!(
                    "{name} of {} exceeded the effective max_ttl of {}; {name} value is \
                     capped accordingly",
                    params::format_duration(*value),
                    params::format_duration(max)
                ));
                *value = max;
            }
        }
        warnings
    }
}

/// Generate a fresh service token string.
pub(crate) fn generate_token() -> Result<String, EngineError> {
    let mut failed = false;
    let token = token::generate(TokenKind::Service, |buf| {
        if fill_random(buf).is_err() {
            failed = true;
        }
    });
    if failed {
        Err(EngineError::Crypto(CryptoOp::Random))
    } else {
        Ok(token)
    }
}

fn generate_accessor() -> Result<String, EngineError> {
    let mut bytes = [0u8; 18];
    fill_random(&mut bytes).map_err(|_| EngineError::Crypto(CryptoOp::Random))?;
    Ok(hex::encode(bytes))
}

impl TokenStore {
    /// The storage entry (key, value) for a new root token `id`, for init; nothing is written.
    pub(crate) fn root_entry(
        &self,
        id: &str,
        now_unix: i64,
    ) -> Result<Vec<(String, Vec<u8>)>, EngineError> {
        let hash = hex::encode(self.hash(id));
        let entry = TokenEntry {
            policies: vec!["root".to_owned()],
            accessor: generate_accessor()?,
            display_name: "root".to_owned(),
            creation_time: now_unix,
            path: "auth/token/root".to_owned(),
            issue_time: now_unix,
            hash: hash.clone(),
            ..Default::default()
        };
        let value = serde_json::to_vec(&entry).map_err(|_| EngineError::Encode("a token entry"))?;
        Ok(vec![
            (Self::id_key(&hash), value),
            (
                format!("{ACCESSOR_PREFIX}{}", entry.accessor),
                hash.into_bytes(),
            ),
        ])
    }

    /// What the core calls when a request ends: if the request spent the token's final
    /// use, revoke the token and its children now. A failure leaves the token marked
    /// (unusable); the sweeper finishes the revocation.
    pub(crate) async fn finish_request(&self, entry: &TokenEntry) {
        if entry.revoking
            && let Err(e) = self.revoke_tree(&entry.hash).await
        {
            tracing::warn!(target: "keyhaven::tokens", error = %e, "revoking a used-up token failed; the sweeper will finish it");
        }
    }

    /// Mint a token for a successful login and return Vault's `auth` object.
    /// `mount_max_ttl` is the auth mount's `max_lease_ttl` (0: the system maximum).
    pub(crate) async fn login(
        &self,
        grant: &LoginGrant,
        path: &str,
        mount: &crate::mounts::MountConfig,
    ) -> Result<Map<String, Value>, EngineError> {
        let policies = normalize_policies(grant.policies.clone(), !grant.no_default_policy);
        if policies.is_empty() {
            return Err(EngineError::invalid("token must have at least one policy"));
        }
        if policies.iter().any(|p| p == "root") {
            return Err(EngineError::invalid(
                "auth methods cannot create root tokens",
            ));
        }
        // A role without its own TTL gets the auth mount's tuned default.
        let ttl = if grant.ttl == 0 && grant.period == 0 {
            mount.default_lease_ttl
        } else {
            grant.ttl
        };
        let mut params = CreateParams {
            policies,
            ttl,
            explicit_max_ttl: grant.max_ttl,
            period: grant.period,
            renewable: grant.renewable,
            num_uses: grant.num_uses,
            display_name: grant.display_name.clone(),
            meta: grant.metadata.clone(),
            path: path.to_owned(),
            bound_cidrs: grant.bound_cidrs.clone(),
        };
        params.cap_durations(effective_max_ttl(mount.max_lease_ttl));
        let (token, entry) = self.create(None, params).await?;
        Ok(self.auth_object(&token, &entry))
    }

    pub(super) fn auth_object(&self, token: &str, e: &TokenEntry) -> Map<String, Value> {
        let now = self.clock.unix_seconds();
        let mut a = Map::new();
        a.insert("client_token".into(), json!(token));
        a.insert("accessor".into(), json!(e.accessor));
        a.insert("policies".into(), json!(e.policies));
        a.insert("token_policies".into(), json!(e.policies));
        a.insert(
            "metadata".into(),
            if e.meta.is_empty() {
                Value::Null
            } else {
                json!(e.meta)
            },
        );
        a.insert("lease_duration".into(), json!(e.ttl_left(now)));
        a.insert("renewable".into(), json!(e.renewable));
        a.insert("entity_id".into(), json!(""));
        a.insert("token_type".into(), json!("service"));
        a.insert("orphan".into(), json!(e.parent.is_none()));
        a.insert("mfa_requirement".into(), Value::Null);
        a.insert("num_uses".into(), json!(e.num_uses));
        a
    }

    /// Create a token under `parent` (or an orphan when `parent` is `None`) with the
    /// policies and durations of `p`, already decided and capped. A child is written only
    /// if its parent's stored entry is still exactly as read and not being revoked, so
    /// it cannot slip past a concurrent revocation of the parent.
    pub(super) async fn create(
        &self,
        parent: Option<&TokenEntry>,
        p: CreateParams,
    ) -> Result<(String, TokenEntry), EngineError> {
        let now = self.clock.unix_seconds();
        let is_root = p.policies.iter().any(|x| x == "root");
        // TTL: period wins for periodic tokens; otherwise ttl or the system default, capped
        // by explicit_max_ttl. Root tokens created without a TTL never expire.
        let mut ttl = if p.period > 0 { p.period } else { p.ttl };
        let unbounded_root = is_root && ttl == 0 && p.explicit_max_ttl == 0;
        if !unbounded_root {
            if ttl == 0 {
                ttl = SYSTEM_MAX_TTL;
            }
            if p.explicit_max_ttl > 0 {
                ttl = ttl.min(p.explicit_max_ttl);
            }
        }
        let own_expiry = if unbounded_root {
            None
        } else {
            Some(add_secs(now, ttl)?)
        };
        let token = generate_token()?;
        let hash = hex::encode(self.hash(&token));
        let display_name = if p.display_name.is_empty() {
            "token".to_owned()
        } else if p.path.starts_with("auth/token/") {
            format!("token-{}", p.display_name)
        } else {
            p.display_name
        };
        let mut entry = TokenEntry {
            policies: p.policies,
            accessor: generate_accessor()?,
            display_name,
            creation_time: now,
            path: p.path,
            creation_ttl: 0,
            expire_time: own_expiry,
            explicit_max_ttl: p.explicit_max_ttl,
            period: p.period,
            renewable: false,
            num_uses: p.num_uses,
            parent: parent.map(|e| e.hash.clone()),
            meta: p.meta,
            issue_time: now,
            hash: hash.clone(),
            revoking: false,
            // A child of a token bound to blocks stays within them unless given its own.
            bound_cidrs: match (p.bound_cidrs.is_empty(), parent) {
                (true, Some(parent)) => parent.bound_cidrs.clone(),
                _ => p.bound_cidrs,
            },
        };
        let accessor_op = Op::Put {
            key: format!("{ACCESSOR_PREFIX}{}", entry.accessor),
            value: hash.clone().into_bytes(),
        };
        let Some(parent) = parent else {
            entry.creation_ttl = ttl_from(now, entry.expire_time);
            entry.renewable = p.renewable && entry.expire_time.is_some();
            let mut ops = vec![
                Op::Put {
                    key: Self::id_key(&hash),
                    value: serde_json::to_vec(&entry)
                        .map_err(|_| EngineError::Encode("a token entry"))?,
                },
                accessor_op,
            ];
            if let Some(exp) = entry.expire_time {
                ops.push(Op::Put {
                    key: expire_key(exp, &hash),
                    value: Vec::new(),
                });
            }
            // Unconditional: it commits or fails with an error.
            let _ = self
                .storage
                .transact(Transaction {
                    conditions: Vec::new(),
                    ops,
                })
                .await?;
            return Ok((token, entry));
        };
        let parent_key = Self::id_key(&parent.hash);
        for _ in 0..16 {
            let Some(parent_bytes) = self.storage.get(&parent_key).await? else {
                return Err(EngineError::PermissionDenied);
            };
            let stored: TokenEntry =
                serde_json::from_slice(&parent_bytes).map_err(|_| corrupt())?;
            // A parent being revoked takes no new children, except in the request that
            // spent its final use: that request revokes the tree, children included,
            // when it ends.
            if stored.expired(now) || (stored.revoking && !parent.revoking) {
                return Err(EngineError::PermissionDenied);
            }
            // A child never outlives its parent.
            entry.expire_time = match (own_expiry, stored.expire_time) {
                (Some(own), Some(theirs)) => Some(own.min(theirs)),
                (None, theirs) => theirs,
                (own, None) => own,
            };
            entry.creation_ttl = ttl_from(now, entry.expire_time);
            entry.renewable = p.renewable && entry.expire_time.is_some();
            let mut ops = vec![
                Op::Put {
                    key: Self::id_key(&hash),
                    value: serde_json::to_vec(&entry)
                        .map_err(|_| EngineError::Encode("a token entry"))?,
                },
                accessor_op.clone(),
                Op::Put {
                    key: format!("{PARENT_PREFIX}{}/{hash}", parent.hash),
                    value: Vec::new(),
                },
            ];
            if let Some(exp) = entry.expire_time {
                ops.push(Op::Put {
                    key: expire_key(exp, &hash),
                    value: Vec::new(),
                });
            }
            let tx = Transaction {
                conditions: vec![keyhaven_storage::Condition::Equals {
                    key: parent_key.clone(),
                    value: parent_bytes,
                }],
                ops,
            };
            if self.storage.transact(tx).await? == keyhaven_storage::TxOutcome::Committed {
                return Ok((token, entry));
            }
        }
        Err(EngineError::Unavailable(
            "token creation conflicted with changes to its parent".to_owned(),
        ))
    }

    /// Mint a wrapping token: an orphan with only the built-in `response-wrapping`
    /// policy, one use, and `ttl` (at least a second, at most the system maximum) as both
    /// its TTL and its hard limit. `path` is the wrapped request's path.
    pub(crate) async fn create_wrapping(
        &self,
        ttl: u64,
        path: &str,
    ) -> Result<(String, TokenEntry), EngineError> {
        let ttl = ttl.clamp(1, SYSTEM_MAX_TTL);
        let params = CreateParams {
            policies: vec![crate::policy::RESPONSE_WRAPPING.to_owned()],
            ttl,
            explicit_max_ttl: ttl,
            num_uses: 1,
            path: path.to_owned(),
            ..CreateParams::default()
        };
        self.create(None, params).await
    }

    /// Mark a token `revoking`: it stops working at once and takes no new children.
    async fn mark_revoking(&self, hash_hex: &str) -> Result<(), EngineError> {
        self.update_entry(hash_hex, |e| {
            if e.revoking {
                return Ok(false);
            }
            e.revoking = true;
            Ok(true)
        })
        .await?;
        Ok(())
    }

    /// Every child of a token, one page of the tree index at a time.
    async fn children(&self, hash_hex: &str) -> Result<Vec<String>, EngineError> {
        let prefix = format!("{PARENT_PREFIX}{hash_hex}/");
        let mut children = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self
                .storage
                .list_page(&prefix, after.as_deref(), 1000)
                .await?;
            children.extend(page.iter().map(|c| c.trim_end_matches('/').to_owned()));
            if page.len() < 1000 {
                return Ok(children);
            }
            after = page.last().cloned();
        }
    }

    /// Revoke a token and every descendant. Each token is marked before its children are
    /// listed, so a child created concurrently is either listed or refused; entries are
    /// deleted children first.
    pub(crate) async fn revoke_tree(&self, hash_hex: &str) -> Result<(), EngineError> {
        let mut stack = vec![hash_hex.to_owned()];
        let mut order = Vec::new();
        while let Some(h) = stack.pop() {
            self.mark_revoking(&h).await?;
            stack.extend(self.children(&h).await?);
            order.push(h);
        }
        for h in order.iter().rev() {
            self.revoke_one(h).await?;
        }
        Ok(())
    }

    async fn revoke_one(&self, hash_hex: &str) -> Result<(), EngineError> {
        let key = Self::id_key(hash_hex);
        let Some(bytes) = self.storage.get(&key).await? else {
            return Ok(());
        };
        // The cubbyhole and the leases go first: if this stops half-way, the marked entry
        // remains and the sweeper comes back for all.
        if let Some(leases) = self.leases.get() {
            leases.expire_token_leases(hash_hex).await?;
        }
        if let Some(cubbyholes) = self.cubbyholes.get() {
            crate::core::delete_prefix(cubbyholes.as_ref(), &format!("{hash_hex}/")).await?;
        }
        let entry: TokenEntry = serde_json::from_slice(&bytes).map_err(|_| corrupt())?;
        let mut ops = vec![
            Op::Delete { key },
            Op::Delete {
                key: format!("{ACCESSOR_PREFIX}{}", entry.accessor),
            },
        ];
        if let Some(parent) = &entry.parent {
            ops.push(Op::Delete {
                key: format!("{PARENT_PREFIX}{parent}/{hash_hex}"),
            });
        }
        if let Some(exp) = entry.expire_time {
            ops.push(Op::Delete {
                key: expire_key(exp, hash_hex),
            });
        }
        ops.push(Op::Delete {
            key: format!("{REVOKING_PREFIX}{hash_hex}"),
        });
        // Unconditional: it commits or fails with an error.
        let _ = self
            .storage
            .transact(Transaction {
                conditions: Vec::new(),
                ops,
            })
            .await?;
        self.forget_hex(hash_hex)
    }

    /// Revoke only this token; its children become orphans.
    pub(super) async fn revoke_orphan(&self, entry: &TokenEntry) -> Result<(), EngineError> {
        // Marked first, so no child appears after the listing below.
        self.mark_revoking(&entry.hash).await?;
        let prefix = format!("{PARENT_PREFIX}{}/", entry.hash);
        for child in self.children(&entry.hash).await? {
            self.update_entry(&child, |c| {
                let was_child = c.parent.is_some();
                c.parent = None;
                Ok(was_child)
            })
            .await?;
            self.storage.delete(&format!("{prefix}{child}")).await?;
        }
        self.revoke_one(&entry.hash).await
    }

    /// Renew: extend the TTL by `increment` (or the token's period / original TTL), within
    /// explicit_max_ttl, the system maximum and the parent's expiry. Conditioned on the
    /// entry as read, so a renewal never undoes a concurrent revocation.
    pub(super) async fn renew(
        &self,
        entry: &TokenEntry,
        increment: Option<u64>,
    ) -> Result<TokenEntry, EngineError> {
        if !entry.renewable || entry.expire_time.is_none() {
            return Err(EngineError::invalid("token is not renewable"));
        }
        let now = self.clock.unix_seconds();
        let mut parent_expiry = None;
        if let Some(parent_hash) = &entry.parent {
            let mut h = [0u8; 32];
            hex::decode_to_slice(parent_hash, &mut h).map_err(|_| corrupt())?;
            match self.entry_by_hash(&h).await? {
                Some(p) if p.live(now) => parent_expiry = p.expire_time,
                _ => return Err(EngineError::invalid("token's parent was revoked")),
            }
        }
        let renewed = self
            .update_entry(&entry.hash, |e| {
                if !e.live(now) {
                    return Err(EngineError::invalid("token was revoked"));
                }
                let mut ttl = if e.period > 0 {
                    e.period
                } else {
                    increment.filter(|i| *i > 0).unwrap_or(e.creation_ttl)
                };
                if e.period == 0 {
                    ttl = ttl.min(SYSTEM_MAX_TTL);
                }
                let mut exp = add_secs(now, ttl)?;
                if e.explicit_max_ttl > 0 {
                    exp = exp.min(add_secs(e.creation_time, e.explicit_max_ttl)?);
                }
                if e.period == 0 {
                    exp = exp.min(add_secs(e.creation_time, SYSTEM_MAX_TTL)?);
                }
                if let Some(pexp) = parent_expiry {
                    exp = exp.min(pexp);
                }
                e.expire_time = Some(exp.max(now));
                e.issue_time = now;
                Ok(true)
            })
            .await?;
        renewed.ok_or_else(|| EngineError::invalid("token was revoked"))
    }

    /// Delete expired tokens (and their subtrees), and finish revocations that were
    /// interrupted. Returns how many trees were removed.
    ///
    /// Reads only the revocations begun and the expiry index up to now: an idle server
    /// does two short listings, however many tokens it holds.
    pub async fn sweep_expired(&self) -> Result<usize, EngineError> {
        let mut removed = 0;
        for hash in crate::core::list_all(self.storage.as_ref(), REVOKING_PREFIX).await? {
            if self.storage.get(&Self::id_key(&hash)).await?.is_some() {
                self.revoke_tree(&hash).await?;
                removed += 1;
            } else {
                self.storage
                    .delete(&format!("{REVOKING_PREFIX}{hash}"))
                    .await?;
            }
        }
        let now = self.clock.unix_seconds();
        // Small pages: the first is usually all an idle sweep reads.
        const PAGE: usize = 64;
        let mut after: Option<String> = None;
        'pages: loop {
            let page = self
                .storage
                .list_page(EXPIRE_PREFIX, after.as_deref(), PAGE)
                .await?;
            for name in &page {
                let Some((at, hash)) = parse_expire_name(name) else {
                    // Not written by this store: left alone, and not read again.
                    tracing::warn!(target: "keyhaven::tokens", "malformed expiry index entry skipped");
                    continue;
                };
                if at > now {
                    break 'pages;
                }
                let index_key = format!("{EXPIRE_PREFIX}{name}");
                let stored = match self.storage.get(&Self::id_key(hash)).await? {
                    Some(bytes) => {
                        Some(serde_json::from_slice::<TokenEntry>(&bytes).map_err(|_| corrupt())?)
                    }
                    None => None,
                };
                match stored {
                    Some(e) if !e.live(now) => {
                        self.revoke_tree(hash).await?;
                        removed += 1;
                    }
                    // Renewed since this time was indexed: its current expiry is (or, after
                    // an interrupted write, is now) in the index too.
                    Some(e) => {
                        if let Some(exp) = e.expire_time {
                            self.storage.put(&expire_key(exp, hash), Vec::new()).await?;
                        }
                    }
                    None => {}
                }
                self.storage.delete(&index_key).await?;
            }
            if page.len() < PAGE {
                break;
            }
            after = page.last().cloned();
        }
        Ok(removed)
    }

    /// `auth/token/tidy`: walk every entry, revoke what is expired or was being revoked,
    /// and restore missing index entries of the rest. Returns how many trees were removed.
    pub async fn tidy(&self) -> Result<usize, EngineError> {
        let removed = self.sweep_expired().await?;
        let now = self.clock.unix_seconds();
        let mut due = Vec::new();
        let mut keys = Vec::new();
        self.for_each_entry(|e| {
            if e.live(now) {
                keys.extend(index_keys(e));
            } else {
                due.push(e.hash.clone());
            }
        })
        .await?;
        for h in &due {
            self.revoke_tree(h).await?;
        }
        for key in keys {
            if self.storage.get(&key).await?.is_none() {
                self.storage.put(&key, Vec::new()).await?;
            }
        }
        Ok(removed + due.len())
    }

    /// Index every stored entry (installations from before the index), then mark the
    /// index complete.
    pub(super) async fn build_expiry_index(&self) -> Result<(), EngineError> {
        let mut keys = Vec::new();
        let mut seen = 0usize;
        self.for_each_entry(|e| {
            seen += 1;
            keys.extend(index_keys(e));
        })
        .await?;
        for key in keys {
            self.storage.put(&key, Vec::new()).await?;
        }
        self.storage.put(INDEX_MARKER, b"1".to_vec()).await?;
        if seen > 0 {
            tracing::info!(target: "keyhaven::tokens", tokens = seen, "token expiry index built");
        }
        Ok(())
    }

    /// Call `f` with every stored entry, one page at a time.
    async fn for_each_entry(&self, mut f: impl FnMut(&TokenEntry)) -> Result<(), EngineError> {
        let mut after: Option<String> = None;
        loop {
            let page = self
                .storage
                .list_page(ID_PREFIX, after.as_deref(), 1000)
                .await?;
            for h in &page {
                if let Some(bytes) = self.storage.get(&Self::id_key(h)).await? {
                    let mut e: TokenEntry =
                        serde_json::from_slice(&bytes).map_err(|_| corrupt())?;
                    if e.hash.is_empty() {
                        e.hash.clone_from(h);
                    }
                    f(&e);
                }
            }
            if page.len() < 1000 {
                return Ok(());
            }
            after = page.last().cloned();
        }
    }

    /// How many tokens are stored (names only, no entry is read), at most once per
    /// `every` seconds of the engine's clock: `None` when counted more recently.
    pub(crate) async fn count_if_due(&self, every: i64) -> Result<Option<usize>, EngineError> {
        use std::sync::atomic::Ordering;
        let now = self.clock.unix_seconds();
        let last = self.counted_at.load(Ordering::Acquire);
        if last != i64::MIN && now.saturating_sub(last) < every {
            return Ok(None);
        }
        self.counted_at.store(now, Ordering::Release);
        let mut count = 0usize;
        let mut after: Option<String> = None;
        loop {
            let page = self
                .storage
                .list_page(ID_PREFIX, after.as_deref(), 1000)
                .await?;
            count += page.len();
            if page.len() < 1000 {
                return Ok(Some(count));
            }
            after = page.last().cloned();
        }
    }
}

/// The index entries an entry should have: its expiry, and its revocation if begun.
fn index_keys(e: &TokenEntry) -> impl Iterator<Item = String> + '_ {
    e.expire_time
        .map(|exp| expire_key(exp, &e.hash))
        .into_iter()
        .chain(e.revoking.then(|| format!("{REVOKING_PREFIX}{}", e.hash)))
}

/// `at + secs`, refusing what a timestamp cannot hold.
fn add_secs(at: i64, secs: u64) -> Result<i64, EngineError> {
    i64::try_from(secs)
        .ok()
        .and_then(|s| at.checked_add(s))
        .ok_or_else(|| EngineError::invalid("duration is out of range"))
}

/// A mount's `max_lease_ttl` within the system maximum (0: the system maximum).
fn effective_max_ttl(mount_max_ttl: u64) -> u64 {
    if mount_max_ttl == 0 {
        SYSTEM_MAX_TTL
    } else {
        mount_max_ttl.min(SYSTEM_MAX_TTL)
    }
}
