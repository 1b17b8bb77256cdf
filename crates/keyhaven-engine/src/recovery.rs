//! Operator recovery: replacing the unseal key shares (rekey), creating a root token
//! from unseal key shares (generate-root), and the keyring's automatic rotation.
//!
//! Both share-driven flows keep their progress in memory only: shares are held as
//! zeroizing [`Share`]s and dropped when the attempt completes, is cancelled, or the
//! server seals. Neither flow ever writes a share, an unseal key or an OTP to storage or
//! to a log.
//!
//! **Rekey** (as Vault's Shamir rekey): the threshold of *current* shares reconstructs
//! the unseal key, which must open the stored root key; a new unseal key is generated
//! and split, and the root key sealed under it replaces the old record together with the
//! new seal configuration, in one storage transaction conditioned on the old record being
//! unchanged. A crash before the commit leaves the old shares working; after it, only the
//! new ones. With `require_verification`, nothing is written until the threshold of the
//! *new* shares has been entered back.
//!
//! **Generate-root**: the threshold of unseal shares (checked against the stored root
//! key), with the attempt's nonce, creates a root token like init's; it leaves the
//! server only XORed with the one-time password given (or generated) at the start, as
//! unpadded standard base64, which `bao operator generate-root -decode` reverses.

use std::sync::Arc;

use base64::Engine as _;
use keyhaven_crypto::SecretKey;
use keyhaven_crypto::shamir::{self, Share};
use keyhaven_storage::{Condition, Op, Store, Transaction, TxOutcome};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use zeroize::{Zeroize, Zeroizing};

use crate::barrier;
use crate::core::{Core, Unsealed, decode_share_bytes, parse_share};
use crate::error::{CryptoOp, EngineError};
use crate::params;
use crate::token;

/// Which API a recovery request came through: the wording of the answers differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flavor {
    /// `sys/rekey/*`, `sys/generate-root/*`: unauthenticated, answered at the top level.
    Legacy,
    /// `sys/rotate/root/*`, `sys/generate-root-token/*`: authenticated.
    Token,
}

impl Flavor {
    fn rekey_noun(self) -> &'static str {
        match self {
            Flavor::Legacy => "rekey",
            Flavor::Token => "rotation",
        }
    }
}

/// Share-driven attempts in progress.
#[derive(Default)]
pub(crate) struct Attempts {
    rekey: Option<Rekey>,
    root: Option<RootGeneration>,
}

impl Attempts {
    /// Forget every attempt (on seal): the shares entered so far are zeroized.
    pub(crate) fn clear(&mut self) {
        self.rekey = None;
        self.root = None;
    }
}

struct Rekey {
    nonce: String,
    shares: u8,
    threshold: u8,
    require_verification: bool,
    /// Current unseal shares entered so far.
    progress: Vec<Share>,
    /// With verification: the new key, issued but not yet committed.
    pending: Option<PendingRekey>,
}

struct PendingRekey {
    unseal_key: SecretKey,
    /// The record the rekey replaces: the sealed root key (Shamir) or the recovery key
    /// check (auto-unseal).
    record_path: &'static str,
    /// The root key sealed under the new unseal key, to be written on verification.
    sealed_root: Vec<u8>,
    /// The root-key record the new one replaces (the commit's condition).
    previous: Vec<u8>,
    nonce: String,
    /// New shares entered back so far.
    progress: Vec<Share>,
}

struct RootGeneration {
    nonce: String,
    otp: Zeroizing<String>,
    progress: Vec<Share>,
}

/// Parameters of a rekey start.
pub(crate) struct RekeyInit {
    pub(crate) secret_shares: u64,
    pub(crate) secret_threshold: u64,
    pub(crate) require_verification: bool,
}

fn new_nonce() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Length of a root token (and so of a generate-root OTP).
pub(crate) fn otp_length() -> usize {
    keyhaven_types::token::TokenKind::Service.prefix().len()
        + keyhaven_types::token::RANDOM_LEN
        + keyhaven_types::token::CHECKSUM_LEN
}

/// An OTP of [`otp_length`] base62 characters.
fn generate_otp() -> Result<Zeroizing<String>, EngineError> {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let want = otp_length();
    let mut out = Zeroizing::new(String::with_capacity(want));
    let mut pool = Zeroizing::new([0u8; 64]);
    while out.len() < want {
        keyhaven_crypto::fill_random(&mut pool[..])
            .map_err(|_| EngineError::Crypto(CryptoOp::Random))?;
        for &b in pool.iter() {
            // 248 = 4 * 62: rejection sampling keeps every character equally likely.
            if b < 248
                && out.len() < want
                && let Some(&c) = ALPHABET.get(usize::from(b % 62))
            {
                out.push(char::from(c));
            }
        }
    }
    Ok(out)
}

/// `token` XOR `otp`, as unpadded standard base64 (Vault's encoding of the result).
pub(crate) fn encode_token(token: &str, otp: &str) -> Result<String, EngineError> {
    if token.len() != otp.len() {
        return Err(EngineError::Internal("root token and OTP lengths differ"));
    }
    let mut xored = Zeroizing::new(
        token
            .bytes()
            .zip(otp.bytes())
            .map(|(a, b)| a ^ b)
            .collect::<Vec<u8>>(),
    );
    let encoded = base64::engine::general_purpose::STANDARD_NO_PAD.encode(&xored[..]);
    xored.zeroize();
    Ok(encoded)
}

/// The shares of a new unseal key, as `keys` (hex) and `keys_base64`.
fn share_lists(shares: &[Share]) -> (Value, Value) {
    let hex: Vec<String> = shares.iter().map(|s| hex::encode(s.as_bytes())).collect();
    let b64: Vec<String> = shares
        .iter()
        .map(|s| base64::engine::general_purpose::STANDARD.encode(s.as_bytes()))
        .collect();
    (json!(hex), json!(b64))
}

/// Decode a share from a request: hex or base64, in Vault's words when it is neither.
fn share_from(data: &Map<String, Value>) -> Result<Share, EngineError> {
    let text = params::string(data, "key")?
        .filter(|s| !s.is_empty())
        .ok_or_else(|| EngineError::invalid("missing required field 'key'"))?;
    let bytes = decode_share_bytes(text)
        .map_err(|_| EngineError::invalid("'key' must be a valid hex or base64 string"))?;
    parse_share(&bytes)
}

/// Add `share` to `progress`, refusing one of another length or one already given
/// (`during` names the operation, in Vault's words).
fn add_share(progress: &mut Vec<Share>, share: Share, during: &str) -> Result<(), EngineError> {
    if let Some(first) = progress.first()
        && first.as_bytes().len() != share.as_bytes().len()
    {
        return Err(EngineError::invalid(
            "key share has a different length than the shares already provided",
        ));
    }
    if progress.iter().any(|s| s.x() == share.x()) {
        return Err(EngineError::invalid(format!(
            "given key has already been provided during this {during}"
        )));
    }
    progress.push(share);
    Ok(())
}

fn nonce_from(data: &Map<String, Value>, flavor: Flavor) -> Result<&str, EngineError> {
    params::string(data, "nonce")?
        .filter(|s| !s.is_empty())
        .ok_or_else(|| match flavor {
            Flavor::Legacy => EngineError::invalid("missing nonce"),
            Flavor::Token => EngineError::invalid("missing required field 'nonce'"),
        })
}

/// Refuse what keyhaven does not support, naming it.
fn refuse_unsupported(data: &Map<String, Value>) -> Result<(), EngineError> {
    let given = |k: &str| {
        data.get(k)
            .is_some_and(|v| !v.is_null() && v != &json!([]) && v != &json!(""))
    };
    if given("pgp_keys") || given("pgp_key") {
        return Err(EngineError::invalid(
            "PGP encryption of key shares or tokens is not supported: shares are returned \
             in the clear and a generated root token is encoded with an OTP",
        ));
    }
    if data.get("backup").is_some_and(|v| v == &json!(true)) {
        return Err(EngineError::invalid(
            "backup is not supported: keyhaven never stores copies of unseal key shares",
        ));
    }
    Ok(())
}

impl Core {
    /// The root key, if `unseal_key` opens the stored record; with the record.
    async fn open_root_with(
        &self,
        unseal_key: &keyhaven_crypto::SecretBytes,
    ) -> Result<Option<(SecretKey, Vec<u8>)>, EngineError> {
        let sealed = self
            .raw_store()
            .get(barrier::ROOT_KEY_PATH)
            .await?
            .ok_or_else(|| EngineError::Corrupt("the sealed root key is missing".to_owned()))?;
        Ok(barrier::open_root_key(unseal_key, &sealed)?.map(|k| (k, sealed)))
    }

    /// Status of the rekey attempt (`GET sys/rekey/init`, `sys/rotate/root/init`).
    pub(crate) fn rekey_status(&self, flavor: Flavor) -> Map<String, Value> {
        let (_, required) = self.seal_shares().unwrap_or((0, 0));
        let attempts = self.recovery.lock();
        rekey_status_of(attempts.rekey.as_ref(), required, flavor)
    }

    /// Start a rekey.
    pub(crate) fn rekey_init(
        &self,
        flavor: Flavor,
        data: &Map<String, Value>,
        init: RekeyInit,
    ) -> Result<Map<String, Value>, EngineError> {
        self.unsealed()?;
        refuse_unsupported(data)?;
        let noun = flavor.rekey_noun();
        let invalid =
            |why: &str| EngineError::invalid(format!("invalid {noun} seal configuration: {why}"));
        let (n, t) = (init.secret_shares, init.secret_threshold);
        if n < 1 {
            return Err(invalid("shares must be at least one"));
        }
        if t < 1 {
            return Err(invalid("threshold must be at least one"));
        }
        if n > 255 {
            return Err(invalid("shares must be less than 256"));
        }
        if n > 1 && t == 1 {
            return Err(invalid(
                "threshold must be greater than one for multiple shares",
            ));
        }
        if t > n {
            return Err(invalid("threshold cannot be larger than shares"));
        }
        let (_, required) = self.seal_shares().ok_or(EngineError::NotInitialized)?;
        let mut attempts = self.recovery.lock();
        if attempts.rekey.is_some() {
            return Err(EngineError::invalid(format!("{noun} already in progress")));
        }
        let rekey = Rekey {
            nonce: new_nonce(),
            shares: u8::try_from(n).map_err(|_| invalid("shares must be less than 256"))?,
            threshold: u8::try_from(t).map_err(|_| invalid("threshold must be less than 256"))?,
            require_verification: init.require_verification,
            progress: Vec::new(),
            pending: None,
        };
        let status = rekey_status_of(Some(&rekey), required, flavor);
        attempts.rekey = Some(rekey);
        tracing::info!(target: "keyhaven::seal", shares = n, threshold = t, "rekey started");
        Ok(status)
    }

    /// Cancel the rekey attempt (and any verification). Succeeds with none.
    pub(crate) fn rekey_cancel(&self) -> Result<(), EngineError> {
        self.unsealed()?;
        if self.recovery.lock().rekey.take().is_some() {
            tracing::info!(target: "keyhaven::seal", "rekey cancelled");
        }
        Ok(())
    }

    /// Enter one current unseal share. At the threshold the new shares are made and,
    /// without verification, committed.
    pub(crate) async fn rekey_update(
        &self,
        flavor: Flavor,
        data: &Map<String, Value>,
    ) -> Result<Map<String, Value>, EngineError> {
        self.unsealed()?;
        let noun = flavor.rekey_noun();
        let share = share_from(data)?;
        let nonce = nonce_from(data, flavor)?;
        let (_, required) = self.seal_shares().ok_or(EngineError::NotInitialized)?;
        let combined = {
            let mut attempts = self.recovery.lock();
            let Some(rekey) = attempts.rekey.as_mut() else {
                return Err(EngineError::invalid(match flavor {
                    Flavor::Legacy => "no barrier rekey in progress",
                    Flavor::Token => "no rotation in progress",
                }));
            };
            if rekey.nonce != nonce {
                return Err(EngineError::invalid(format!(
                    "incorrect nonce supplied; nonce for {} is {:?}",
                    match flavor {
                        Flavor::Legacy => "this rekey operation",
                        Flavor::Token => "rotation",
                    },
                    rekey.nonce
                )));
            }
            if rekey.pending.is_some() {
                return Err(EngineError::invalid(format!(
                    "{noun} already completed; the new shares must be verified"
                )));
            }
            let during = match flavor {
                Flavor::Legacy => "rekey operation",
                Flavor::Token => "rotation",
            };
            add_share(&mut rekey.progress, share, during)?;
            if rekey.progress.len() < usize::from(required) {
                return Ok(rekey_status_of(Some(rekey), required, flavor));
            }
            let combined = shamir::combine(&rekey.progress);
            rekey.progress.clear();
            (
                combined,
                rekey.nonce.clone(),
                rekey.shares,
                rekey.threshold,
                rekey.require_verification,
            )
        };
        let (combined, nonce, n, t, verify) = combined;
        let what = if self.is_auto_sealed() {
            "recovery key"
        } else {
            "unseal key"
        };
        let wrong = || {
            EngineError::invalid(format!(
                "the {required} shares provided do not reconstruct the {what}; progress was reset"
            ))
        };
        let unseal_key = combined.map_err(|_| wrong())?;
        let new_key =
            SecretKey::generate().map_err(|_| EngineError::Crypto(CryptoOp::KeyGeneration))?;
        let new_shares = shamir::split(new_key.expose_secret(), t, n)
            .map_err(|e| EngineError::invalid(format!("cannot split the new unseal key: {e}")))?;
        // Under auto-unseal the shares are recovery shares: a rekey replaces the recovery
        // key (its check value); the root key stays sealed by the seal.
        let (record_path, previous, sealed_root) = if self.is_auto_sealed() {
            if !self.recovery_key_matches(&unseal_key).await? {
                return Err(wrong());
            }
            let previous = self
                .raw_store()
                .get(barrier::RECOVERY_KEY_PATH)
                .await?
                .ok_or_else(|| {
                    EngineError::Corrupt("the recovery key check is missing".to_owned())
                })?;
            (
                barrier::RECOVERY_KEY_PATH,
                previous,
                barrier::seal_recovery_check(&new_key)?,
            )
        } else {
            let (root_key, previous) = self.open_root_with(&unseal_key).await?.ok_or_else(wrong)?;
            let sealed = barrier::seal_root_key(&new_key, &root_key)?;
            (barrier::ROOT_KEY_PATH, previous, sealed)
        };
        drop(unseal_key);
        let (keys, keys_b64) = share_lists(&new_shares);
        drop(new_shares);
        let mut out = Map::new();
        out.insert("complete".to_owned(), json!(true));
        out.insert("nonce".to_owned(), json!(nonce));
        out.insert("keys".to_owned(), keys);
        out.insert("keys_base64".to_owned(), keys_b64);
        out.insert("pgp_fingerprints".to_owned(), Value::Null);
        out.insert("backup".to_owned(), json!(false));
        out.insert("verification_required".to_owned(), json!(verify));
        if verify {
            let verification_nonce = new_nonce();
            let mut attempts = self.recovery.lock();
            let rekey = attempts
                .rekey
                .as_mut()
                .filter(|r| r.nonce == nonce)
                .ok_or_else(|| EngineError::invalid(format!("the {noun} was cancelled")))?;
            rekey.pending = Some(PendingRekey {
                unseal_key: new_key,
                record_path,
                sealed_root,
                previous,
                nonce: verification_nonce.clone(),
                progress: Vec::new(),
            });
            out.insert("verification_nonce".to_owned(), json!(verification_nonce));
            return Ok(out);
        }
        {
            // The attempt must still be the one these shares were entered for.
            let mut attempts = self.recovery.lock();
            if attempts.rekey.as_ref().is_none_or(|r| r.nonce != nonce) {
                return Err(EngineError::invalid(format!("the {noun} was cancelled")));
            }
            attempts.rekey = None;
        }
        self.commit_rekey(record_path, previous, sealed_root, n, t)
            .await?;
        Ok(out)
    }

    /// Write the new root-key record and seal configuration in one transaction, on the
    /// condition that the record is still the one the old shares opened.
    async fn commit_rekey(
        &self,
        record_path: &str,
        previous: Vec<u8>,
        sealed_root: Vec<u8>,
        n: u8,
        t: u8,
    ) -> Result<(), EngineError> {
        let _op = self.op_lock.lock().await;
        self.unsealed()?;
        let config = self.rekeyed_seal_config(n, t)?;
        let tx = Transaction {
            conditions: vec![Condition::Equals {
                key: record_path.to_owned(),
                value: previous,
            }],
            ops: vec![
                Op::Put {
                    key: record_path.to_owned(),
                    value: sealed_root,
                },
                Op::Put {
                    key: barrier::SEAL_CONFIG_PATH.to_owned(),
                    value: config,
                },
            ],
        };
        match self.raw_store().transact(tx).await? {
            TxOutcome::Committed => {}
            TxOutcome::ConditionFailed { .. } => {
                return Err(EngineError::invalid(
                    "the unseal key was changed by another rekey meanwhile; nothing was written",
                ));
            }
        }
        self.apply_seal_shares(n, t);
        tracing::info!(target: "keyhaven::seal", shares = n, threshold = t, "rekey completed: new unseal key shares are in force");
        Ok(())
    }

    /// Status of the verification (`GET sys/rekey/verify`, `sys/rotate/root/verify`).
    pub(crate) fn rekey_verify_status(
        &self,
        flavor: Flavor,
    ) -> Result<Map<String, Value>, EngineError> {
        self.unsealed()?;
        let attempts = self.recovery.lock();
        let mut out = Map::new();
        match attempts.rekey.as_ref() {
            Some(r) => {
                let pending = r.pending.as_ref();
                out.insert(
                    "nonce".to_owned(),
                    json!(pending.map_or("", |p| p.nonce.as_str())),
                );
                out.insert("started".to_owned(), json!(pending.is_some()));
                out.insert("t".to_owned(), json!(r.threshold));
                out.insert("n".to_owned(), json!(r.shares));
                out.insert(
                    "progress".to_owned(),
                    json!(pending.map_or(0, |p| p.progress.len())),
                );
            }
            None => {
                return Err(EngineError::invalid(match flavor {
                    Flavor::Legacy => "no rekey configuration found",
                    Flavor::Token => "no rotation configuration found",
                }));
            }
        }
        Ok(out)
    }

    /// Restart the verification: its progress is dropped and it gets a new nonce.
    pub(crate) fn rekey_verify_cancel(
        &self,
        flavor: Flavor,
    ) -> Result<Map<String, Value>, EngineError> {
        self.unsealed()?;
        {
            let mut attempts = self.recovery.lock();
            let Some(rekey) = attempts.rekey.as_mut() else {
                return Err(EngineError::invalid(match flavor {
                    Flavor::Legacy => "no rekey configuration found",
                    Flavor::Token => "no rotation configuration found",
                }));
            };
            if let Some(p) = rekey.pending.as_mut() {
                p.progress.clear();
                p.nonce = new_nonce();
            }
        }
        self.rekey_verify_status(flavor)
    }

    /// Enter one of the *new* shares back. At the new threshold, if they reconstruct the
    /// new key, the rekey is committed.
    pub(crate) async fn rekey_verify_update(
        &self,
        flavor: Flavor,
        data: &Map<String, Value>,
    ) -> Result<Map<String, Value>, EngineError> {
        self.unsealed()?;
        let share = share_from(data)?;
        let nonce = nonce_from(data, flavor)?;
        let (record_path, previous, sealed_root, n, t) = {
            let mut attempts = self.recovery.lock();
            let Some(rekey) = attempts.rekey.as_mut() else {
                return Err(EngineError::invalid(match flavor {
                    Flavor::Legacy => "no rekey configuration found",
                    Flavor::Token => "no rotation configuration found",
                }));
            };
            let (n, t) = (rekey.shares, rekey.threshold);
            let Some(pending) = rekey.pending.as_mut() else {
                return Err(EngineError::invalid("no rekey verification in progress"));
            };
            if pending.nonce != nonce {
                return Err(EngineError::invalid(format!(
                    "incorrect nonce supplied; nonce for this verify operation is {:?}",
                    pending.nonce
                )));
            }
            add_share(&mut pending.progress, share, "verify operation")?;
            if pending.progress.len() < usize::from(t) {
                let mut out = Map::new();
                out.insert("nonce".to_owned(), json!(pending.nonce));
                out.insert("started".to_owned(), json!(true));
                out.insert("t".to_owned(), json!(t));
                out.insert("n".to_owned(), json!(n));
                out.insert("progress".to_owned(), json!(pending.progress.len()));
                return Ok(out);
            }
            let combined = shamir::combine(&pending.progress);
            pending.progress.clear();
            let matches = combined.as_ref().is_ok_and(|k| {
                keyhaven_crypto::ct_eq(k.expose_secret(), pending.unseal_key.expose_secret())
            });
            if !matches {
                pending.nonce = new_nonce();
                return Err(EngineError::invalid(
                    "the shares provided do not reconstruct the new unseal key; verification \
                     progress was reset and has a new nonce",
                ));
            }
            let Some(pending) = rekey.pending.take() else {
                return Err(EngineError::Internal("verification state vanished"));
            };
            attempts.rekey = None;
            (
                pending.record_path,
                pending.previous,
                pending.sealed_root,
                n,
                t,
            )
        };
        self.commit_rekey(record_path, previous, sealed_root, n, t)
            .await?;
        let mut out = Map::new();
        out.insert("complete".to_owned(), json!(true));
        out.insert("nonce".to_owned(), json!(nonce));
        Ok(out)
    }

    /// Status of root generation (`GET sys/generate-root/attempt`,
    /// `sys/generate-root-token/attempt`).
    pub(crate) fn generate_root_status(
        &self,
        flavor: Flavor,
    ) -> Result<Map<String, Value>, EngineError> {
        self.unsealed()?;
        let (_, required) = self.seal_shares().unwrap_or((0, 0));
        let attempts = self.recovery.lock();
        Ok(root_status_of(
            attempts.root.as_ref(),
            required,
            flavor,
            None,
        ))
    }

    /// Start root generation with `otp` (or a generated one, returned once).
    pub(crate) fn generate_root_init(
        &self,
        flavor: Flavor,
        data: &Map<String, Value>,
    ) -> Result<Map<String, Value>, EngineError> {
        self.unsealed()?;
        refuse_unsupported(data)?;
        let given = params::string(data, "otp")?.unwrap_or_default();
        let (otp, generated) = if given.is_empty() {
            (generate_otp()?, true)
        } else {
            if given.len() != otp_length() {
                return Err(EngineError::invalid("OTP string has incorrect length"));
            }
            (Zeroizing::new(given.to_owned()), false)
        };
        let (_, required) = self.seal_shares().ok_or(EngineError::NotInitialized)?;
        let mut attempts = self.recovery.lock();
        if attempts.root.is_some() {
            return Err(EngineError::invalid(match flavor {
                Flavor::Legacy => "root generation already in progress",
                Flavor::Token => "root generation already in progress for this namespace",
            }));
        }
        let root = RootGeneration {
            nonce: new_nonce(),
            otp,
            progress: Vec::new(),
        };
        let shown = generated.then(|| root.otp.as_str());
        let status = root_status_of(Some(&root), required, flavor, shown);
        attempts.root = Some(root);
        tracing::info!(target: "keyhaven::seal", "root token generation started");
        Ok(status)
    }

    /// Cancel root generation. Succeeds with none.
    pub(crate) fn generate_root_cancel(&self) -> Result<(), EngineError> {
        self.unsealed()?;
        if self.recovery.lock().root.take().is_some() {
            tracing::info!(target: "keyhaven::seal", "root token generation cancelled");
        }
        Ok(())
    }

    /// Enter one unseal share. At the threshold, if the shares open the root key, a
    /// root token is created and returned encoded with the OTP.
    pub(crate) async fn generate_root_update(
        &self,
        inner: &Arc<Unsealed>,
        flavor: Flavor,
        data: &Map<String, Value>,
    ) -> Result<Map<String, Value>, EngineError> {
        let share = share_from(data)?;
        let nonce = params::string(data, "nonce")?
            .filter(|s| !s.is_empty())
            .ok_or_else(|| EngineError::invalid("nonce is required"))?;
        let (_, required) = self.seal_shares().ok_or(EngineError::NotInitialized)?;
        let (combined, otp, nonce) = {
            let mut attempts = self.recovery.lock();
            let Some(root) = attempts.root.as_mut() else {
                return Err(EngineError::invalid("no root generation in progress"));
            };
            if root.nonce != nonce {
                return Err(EngineError::invalid(format!(
                    "incorrect nonce supplied; nonce for this root generation operation is {:?}",
                    root.nonce
                )));
            }
            add_share(&mut root.progress, share, "generation operation")?;
            if root.progress.len() < usize::from(required) {
                let mut out = root_status_of(Some(root), required, flavor, None);
                if flavor == Flavor::Token {
                    // As OpenBao's answer to a share: no OTP fields, an empty token.
                    out.remove("otp");
                    out.remove("otp_length");
                    out.insert("encoded_token".to_owned(), json!(""));
                }
                return Ok(out);
            }
            let combined = shamir::combine(&root.progress);
            root.progress.clear();
            (combined, root.otp.clone(), root.nonce.clone())
        };
        let what = if self.is_auto_sealed() {
            "recovery key"
        } else {
            "unseal key"
        };
        let wrong = || {
            EngineError::invalid(format!(
                "the {required} shares provided do not reconstruct the {what}; progress was reset"
            ))
        };
        let unseal_key = combined.map_err(|_| wrong())?;
        if self.is_auto_sealed() {
            if !self.recovery_key_matches(&unseal_key).await? {
                return Err(wrong());
            }
        } else {
            self.open_root_with(&unseal_key).await?.ok_or_else(wrong)?;
        }
        drop(unseal_key);
        {
            let mut attempts = self.recovery.lock();
            if attempts.root.as_ref().is_none_or(|r| r.nonce != nonce) {
                return Err(EngineError::invalid("the root generation was cancelled"));
            }
            attempts.root = None;
        }
        let token = Zeroizing::new(token::generate_token()?);
        let entries = inner.tokens.root_entry(&token, self.clock.unix_seconds())?;
        let ops = entries
            .into_iter()
            .map(|(key, value)| Op::Put { key, value })
            .collect();
        let store: &dyn Store = inner.barrier.as_ref();
        let outcome = store
            .transact(Transaction {
                conditions: Vec::new(),
                ops,
            })
            .await?;
        if !matches!(outcome, TxOutcome::Committed) {
            return Err(EngineError::Internal("an unconditional write was refused"));
        }
        let encoded = encode_token(&token, &otp)?;
        tracing::info!(target: "keyhaven::seal", "root token generated from unseal key shares");
        let mut out = Map::new();
        out.insert("nonce".to_owned(), json!(nonce));
        out.insert("started".to_owned(), json!(true));
        out.insert("progress".to_owned(), json!(required));
        out.insert("required".to_owned(), json!(required));
        out.insert("complete".to_owned(), json!(true));
        out.insert("encoded_token".to_owned(), json!(encoded));
        out.insert("pgp_fingerprint".to_owned(), json!(""));
        if flavor == Flavor::Legacy {
            out.insert("encoded_root_token".to_owned(), json!(encoded));
            out.insert("otp".to_owned(), json!(""));
            out.insert("otp_length".to_owned(), json!(0));
        }
        Ok(out)
    }
}

fn rekey_status_of(rekey: Option<&Rekey>, required: u8, flavor: Flavor) -> Map<String, Value> {
    let mut out = Map::new();
    out.insert("started".to_owned(), json!(rekey.is_some()));
    out.insert("t".to_owned(), json!(rekey.map_or(0, |r| r.threshold)));
    out.insert("n".to_owned(), json!(rekey.map_or(0, |r| r.shares)));
    out.insert("required".to_owned(), json!(required));
    match flavor {
        Flavor::Legacy => {
            out.insert(
                "nonce".to_owned(),
                json!(rekey.map_or("", |r| r.nonce.as_str())),
            );
            out.insert(
                "progress".to_owned(),
                json!(rekey.map_or(0, |r| r.progress.len())),
            );
            out.insert("pgp_fingerprints".to_owned(), Value::Null);
            out.insert("backup".to_owned(), json!(false));
            out.insert(
                "verification_required".to_owned(),
                json!(rekey.is_some_and(|r| r.require_verification)),
            );
            if let Some(p) = rekey.and_then(|r| r.pending.as_ref()) {
                out.insert("verification_nonce".to_owned(), json!(p.nonce));
            }
        }
        Flavor::Token => {
            if let Some(r) = rekey {
                out.insert("nonce".to_owned(), json!(r.nonce));
                out.insert("progress".to_owned(), json!(r.progress.len()));
                out.insert(
                    "verification_required".to_owned(),
                    json!(r.require_verification),
                );
                out.insert(
                    "verification_nonce".to_owned(),
                    json!(r.pending.as_ref().map_or("", |p| p.nonce.as_str())),
                );
            }
        }
    }
    out
}

fn root_status_of(
    root: Option<&RootGeneration>,
    required: u8,
    flavor: Flavor,
    generated_otp: Option<&str>,
) -> Map<String, Value> {
    let mut out = Map::new();
    out.insert("started".to_owned(), json!(root.is_some()));
    out.insert(
        "progress".to_owned(),
        json!(root.map_or(0, |r| r.progress.len())),
    );
    out.insert("required".to_owned(), json!(required));
    out.insert("complete".to_owned(), json!(false));
    out.insert("otp".to_owned(), json!(generated_otp.unwrap_or("")));
    out.insert("otp_length".to_owned(), json!(otp_length()));
    if flavor == Flavor::Legacy || root.is_some() {
        out.insert(
            "nonce".to_owned(),
            json!(root.map_or("", |r| r.nonce.as_str())),
        );
        out.insert("pgp_fingerprint".to_owned(), json!(""));
    }
    if flavor == Flavor::Legacy {
        out.insert("encoded_token".to_owned(), json!(""));
        out.insert("encoded_root_token".to_owned(), json!(""));
    }
    out
}

/// Automatic keyring rotation (`sys/rotate/keyring/config`): stored in the barrier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RotationConfig {
    pub(crate) enabled: bool,
    /// Rotate once the active term has encrypted this many values.
    pub(crate) max_operations: u64,
    /// Rotate once the active term is this old (seconds; 0: never by age).
    pub(crate) interval_secs: u64,
}

/// The largest (and default) `max_operations`, as OpenBao: 3,865,470,566 (a safe bound
/// for AES-GCM with random nonces).
pub(crate) const MAX_OPERATIONS: u64 = 3_865_470_566;
/// The smallest `max_operations` accepted.
pub(crate) const MIN_OPERATIONS: u64 = 1_000_000;
/// The shortest `interval` accepted.
pub(crate) const MIN_INTERVAL_SECS: u64 = 24 * 3600;

const ROTATION_CONFIG_PATH: &str = "core/keyring-rotation";

impl Default for RotationConfig {
    fn default() -> Self {
        RotationConfig {
            enabled: true,
            max_operations: MAX_OPERATIONS,
            interval_secs: 0,
        }
    }
}

impl RotationConfig {
    pub(crate) async fn load(store: &dyn Store) -> Result<RotationConfig, EngineError> {
        match store.get(ROTATION_CONFIG_PATH).await? {
            None => Ok(RotationConfig::default()),
            Some(bytes) => serde_json::from_slice(&bytes).map_err(|_| {
                EngineError::Corrupt("the keyring rotation configuration is malformed".to_owned())
            }),
        }
    }

    pub(crate) fn to_data(self) -> Map<String, Value> {
        let mut out = Map::new();
        out.insert("enabled".to_owned(), json!(self.enabled));
        out.insert("max_operations".to_owned(), json!(self.max_operations));
        out.insert(
            "interval".to_owned(),
            if self.interval_secs == 0 {
                json!(0)
            } else {
                json!(params::format_duration(self.interval_secs))
            },
        );
        out
    }

    /// This configuration with the request's fields applied, checked.
    pub(crate) fn updated(
        mut self,
        data: &Map<String, Value>,
    ) -> Result<RotationConfig, EngineError> {
        if let Some(enabled) = params::boolean(data, "enabled")? {
            self.enabled = enabled;
        }
        if let Some(ops) = params::uint(data, "max_operations")? {
            if !(MIN_OPERATIONS..=MAX_OPERATIONS).contains(&ops) {
                return Err(EngineError::invalid(format!(
                    "max_operations must be in the range [{MIN_OPERATIONS},{MAX_OPERATIONS}]"
                )));
            }
            self.max_operations = ops;
        }
        if let Some(secs) = params::duration_secs(data, "interval")? {
            if secs != 0 && secs < MIN_INTERVAL_SECS {
                return Err(EngineError::invalid(
                    "interval must be greater or equal to 24h0m0s",
                ));
            }
            self.interval_secs = secs;
        }
        Ok(self)
    }

    pub(crate) async fn save(self, store: &dyn Store) -> Result<(), EngineError> {
        let bytes = serde_json::to_vec(&self)
            .map_err(|_| EngineError::Encode("the keyring rotation configuration"))?;
        store.put(ROTATION_CONFIG_PATH, bytes).await?;
        Ok(())
    }

    /// Whether the active term is due for rotation.
    pub(crate) fn due(self, status: barrier::KeyStatus, now_unix: i64) -> bool {
        if !self.enabled {
            return false;
        }
        let by_count = status.encryptions >= self.max_operations;
        let age = u64::try_from(now_unix.saturating_sub(status.installed_unix)).unwrap_or(0);
        let by_age = self.interval_secs > 0 && age >= self.interval_secs;
        by_count || by_age
    }
}

impl Core {
    /// Rotate the keyring when its configuration says the active term is due. Run by
    /// [`Core::maintenance`].
    pub(crate) async fn rotate_keyring_if_due(&self, inner: &Unsealed) -> Result<(), EngineError> {
        let store: &dyn Store = inner.barrier.as_ref();
        let config = RotationConfig::load(store).await?;
        let now = self.clock.unix_seconds();
        if config.due(inner.barrier.key_status()?, now) {
            let status = inner.barrier.rotate(now).await?;
            tracing::info!(target: "keyhaven::seal", term = status.term, "keyring rotated automatically");
        }
        Ok(())
    }
}

impl Core {
    /// Serve the recovery routes of `sys/` (see [`crate::sys::ROUTES`]).
    pub(crate) async fn handle_recovery(
        &self,
        inner: &Arc<Unsealed>,
        pattern: &str,
        op: crate::request::Operation,
        req: &crate::request::Request,
    ) -> Result<crate::request::Response, EngineError> {
        use crate::request::Operation::{Create, Delete, Read, Update};
        use crate::request::Response;
        let d = &req.data;
        let data = |map: Map<String, Value>| Ok(Response::data(map));
        let legacy_rekey = pattern.starts_with("rekey/") && pattern != "rekey/backup";
        if legacy_rekey && !self.options.unauthenticated_rekey
            || pattern.starts_with("generate-root/") && !self.options.unauthenticated_generate_root
        {
            // As OpenBao 2.5+ with `disable_unauthed_*_endpoints` (its default).
            return Err(EngineError::UnsupportedOperation);
        }
        let flavor = if pattern.starts_with("rekey/") || pattern.starts_with("generate-root/") {
            Flavor::Legacy
        } else {
            Flavor::Token
        };
        let rekey_init = || -> Result<RekeyInit, EngineError> {
            Ok(RekeyInit {
                secret_shares: params::uint(d, "secret_shares")?.unwrap_or(0),
                secret_threshold: params::uint(d, "secret_threshold")?.unwrap_or(0),
                require_verification: params::boolean(d, "require_verification")?.unwrap_or(false),
            })
        };
        match (pattern, op) {
            ("rotate/keyring", _) => {
                let status = inner.barrier.rotate(self.clock.unix_seconds()).await?;
                tracing::info!(target: "keyhaven::seal", term = status.term, "keyring rotated");
                Ok(Response::no_content())
            }
            ("rotate/keyring/config", Read) => {
                let store: &dyn Store = inner.barrier.as_ref();
                data(RotationConfig::load(store).await?.to_data())
            }
            ("rotate/keyring/config", _) => {
                let store: &dyn Store = inner.barrier.as_ref();
                let config = RotationConfig::load(store).await?.updated(d)?;
                config.save(store).await?;
                Ok(Response::no_content())
            }
            ("rotate/root/init" | "rekey/init", Read) => data(self.rekey_status(flavor)),
            ("rotate/root/init" | "rekey/init", Create | Update) => {
                data(self.rekey_init(flavor, d, rekey_init()?)?)
            }
            ("rotate/root/init" | "rekey/init", Delete) => {
                self.rekey_cancel()?;
                Ok(Response::no_content())
            }
            ("rotate/root/update" | "rekey/update", _) => data(self.rekey_update(flavor, d).await?),
            ("rotate/root/verify" | "rekey/verify", Read) => {
                data(self.rekey_verify_status(flavor)?)
            }
            ("rotate/root/verify" | "rekey/verify", Delete) => {
                data(self.rekey_verify_cancel(flavor)?)
            }
            ("rotate/root/verify" | "rekey/verify", _) => {
                data(self.rekey_verify_update(flavor, d).await?)
            }
            ("rotate/root/backup" | "rekey/backup", _) => {
                Err(EngineError::invalid("no backed-up keys found"))
            }
            ("generate-root-token/attempt" | "generate-root/attempt", Read) => {
                data(self.generate_root_status(flavor)?)
            }
            ("generate-root-token/attempt" | "generate-root/attempt", Create | Update) => {
                data(self.generate_root_init(flavor, d)?)
            }
            ("generate-root-token/attempt" | "generate-root/attempt", Delete) => {
                self.generate_root_cancel()?;
                Ok(Response::no_content())
            }
            ("generate-root-token/update" | "generate-root/update", _) => {
                data(self.generate_root_update(inner, flavor, d).await?)
            }
            ("host-info", _) => {
                let now = self.clock.unix_seconds();
                let stamp = crate::clock::rfc3339(
                    std::time::UNIX_EPOCH
                        + std::time::Duration::from_secs(u64::try_from(now).unwrap_or(0)),
                );
                data(crate::host_info::host_info(now, stamp))
            }
            ("ha-status", _) => {
                let status = self.options.ha.as_ref().map(|ha| ha.status());
                let nodes: Vec<Value> = match status {
                    Some(status) if !status.nodes.is_empty() => status
                        .nodes
                        .iter()
                        .map(|n| {
                            json!({
                                "hostname": n.hostname,
                                "api_address": n.api_address,
                                "cluster_address": n.cluster_address,
                                "active_node": n.active_node,
                                "last_echo": n.last_echo,
                                "version": n.version,
                            })
                        })
                        .collect(),
                    status => vec![json!({
                        "hostname": crate::host_info::hostname(),
                        "api_address": self.options.api_address,
                        "cluster_address": status.map(|s| s.cluster_address).unwrap_or_default(),
                        "active_node": true,
                        "last_echo": null,
                        "version": crate::REPORTED_VERSION,
                    })],
                };
                let mut out = Map::new();
                out.insert("nodes".to_owned(), Value::Array(nodes));
                data(out)
            }
            _ => Err(EngineError::UnsupportedOperation),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_encoded_token_decodes_with_its_otp_only() {
        let token = "khs.abcdefghijklmnopqrstuvwxyz0123ABCDEF";
        let otp = "0123456789abcdefghijklmnopqrstuvwxyzABCD";
        assert_eq!(token.len(), otp.len());
        let encoded = encode_token(token, otp).unwrap();
        assert!(!encoded.ends_with('='));
        let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(&encoded)
            .unwrap();
        let back: Vec<u8> = bytes.iter().zip(otp.bytes()).map(|(a, b)| a ^ b).collect();
        assert_eq!(back, token.as_bytes());
        assert!(encode_token(token, "short").is_err());
    }

    #[test]
    fn generated_otps_have_the_token_length_and_differ() {
        let a = generate_otp().unwrap();
        let b = generate_otp().unwrap();
        assert_eq!(a.len(), otp_length());
        assert_eq!(otp_length(), 40);
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(*a, *b);
    }

    #[test]
    fn rotation_is_due_by_count_or_age_when_enabled() {
        let status = |encryptions, installed_unix| barrier::KeyStatus {
            term: 1,
            installed_unix,
            encryptions,
        };
        let c = RotationConfig {
            enabled: true,
            max_operations: MIN_OPERATIONS,
            interval_secs: MIN_INTERVAL_SECS,
        };
        assert!(!c.due(status(MIN_OPERATIONS - 1, 1000), 1000));
        assert!(c.due(status(MIN_OPERATIONS, 1000), 1000));
        assert!(!c.due(status(0, 1000), 1000 + 86_399));
        assert!(c.due(status(0, 1000), 1000 + 86_400));
        let off = RotationConfig {
            enabled: false,
            ..c
        };
        assert!(!off.due(status(MAX_OPERATIONS, 0), 10_000_000));
        let never_by_age = RotationConfig {
            interval_secs: 0,
            ..c
        };
        assert!(!never_by_age.due(status(0, 0), i64::MAX));
    }

    #[test]
    fn rotation_config_checks_its_bounds() {
        let base = RotationConfig::default();
        let with = |v: Value| base.updated(v.as_object().unwrap());
        assert!(with(json!({"max_operations": 999_999})).is_err());
        assert!(with(json!({"max_operations": MAX_OPERATIONS + 1})).is_err());
        assert!(with(json!({"interval": "1h"})).is_err());
        let c = with(json!({"max_operations": 2_000_000, "interval": "48h", "enabled": false}))
            .unwrap();
        assert_eq!(
            c,
            RotationConfig {
                enabled: false,
                max_operations: 2_000_000,
                interval_secs: 48 * 3600
            }
        );
        assert_eq!(c.to_data()["interval"], json!("48h0m0s"));
        assert_eq!(base.to_data()["interval"], json!(0));
    }
}
