//! The cryptographic endpoints: encrypt, decrypt, rewrap, datakey, hmac, sign, verify,
//! random and hash. None of them touches storage once the key is cached (an encrypt to a
//! missing key creates it first).

use std::borrow::Cow;
use std::sync::Arc;

use keyhaven_crypto::fill_random;
use keyhaven_crypto::transit::{
    Base64, HashAlgorithm, KeyType, Marshaling, RsaPadding, SignOptions, VersionKey, codec,
};
use keyhaven_types::ErrorCode;
use serde_json::{Map, Value, json};
use zeroize::Zeroizing;

use super::key::{Key, KeyState};
use super::manage::{NewKey, crypto_err, state_error};
use super::{TransitBackend, items};
use crate::error::{CryptoOp, EngineError};
use crate::params;
use crate::request::{BatchFailure, EncodedData, Response};

/// Vault's message for versions below `min_decryption_version` (or trimmed away).
pub const TOO_OLD: &str = "ciphertext or signature version is disallowed by policy (too old)";

type Item = Result<Map<String, Value>, EngineError>;

/// A base64 (standard, padded) parameter, decoded; the result is zeroized on drop.
fn b64(item: &Map<String, Value>, key: &str) -> Result<Option<Zeroizing<Vec<u8>>>, EngineError> {
    match params::string(item, key)? {
        None => Ok(None),
        Some(s) => Base64::Standard
            .decode(s)
            .map(|v| Some(Zeroizing::new(v)))
            .map_err(|_| EngineError::invalid(format!("unable to decode {key} as base64"))),
    }
}

fn no_nonce(item: &Map<String, Value>) -> Result<(), EngineError> {
    match params::string(item, "nonce")? {
        Some(n) if !n.is_empty() => Err(EngineError::invalid("nonce provided when not allowed")),
        _ => Ok(()),
    }
}

fn version_param(item: &Map<String, Value>) -> Result<u32, EngineError> {
    let v = params::uint(item, "key_version")?.unwrap_or(0);
    u32::try_from(v).map_err(|_| EngineError::invalid("invalid key version"))
}

/// Refuse a key whose type cannot do `what` (`"encryption"`, `"signing"`, …).
fn supported(key: &Key, supports: bool, what: &str) -> Result<(), EngineError> {
    if supports {
        Ok(())
    } else {
        Err(EngineError::invalid(format!(
            "key type {} does not support {what}",
            key.kind
        )))
    }
}

fn ensure_usable(key: &Key) -> Result<(), EngineError> {
    if key.config.state == KeyState::Enabled {
        Ok(())
    } else {
        Err(state_error(key))
    }
}

/// The version to encrypt (or sign, or HMAC) with: `requested`, or the latest when 0.
fn encryption_version<'k>(
    key: &'k Key,
    requested: u32,
    what: &str,
) -> Result<(u32, &'k Arc<VersionKey>), EngineError> {
    let c = &key.config;
    let ver = if requested == 0 {
        c.latest_version
    } else {
        requested
    };
    if ver > c.latest_version {
        return Err(EngineError::invalid(format!(
            "requested version for {what} is higher than the latest key version"
        )));
    }
    let found = key.version(ver);
    match found {
        Some(vk) if ver >= c.min_encryption_version => Ok((ver, vk)),
        _ => Err(EngineError::invalid(format!(
            "requested version for {what} is less than the minimum encryption key version"
        ))),
    }
}

/// The version an envelope names, if this key may still use it to decrypt or verify.
fn decryption_version<'k>(
    key: &'k Key,
    ver: u32,
    what: &str,
) -> Result<&'k Arc<VersionKey>, EngineError> {
    if ver > key.config.latest_version {
        return Err(EngineError::invalid(format!(
            "invalid {what}: version is too new"
        )));
    }
    if ver < key.config.min_decryption_version {
        return Err(EngineError::invalid(TOO_OLD));
    }
    key.version(ver)
        .ok_or_else(|| EngineError::invalid(TOO_OLD))
}

/// How a batch with failed items answers.
#[derive(Clone, Copy, PartialEq, Eq)]
enum BatchStatus {
    /// 400 (500 if every failure is internal), unless `partial_failure_response_code`
    /// overrides it while some items succeeded: encrypt, decrypt, rewrap.
    FailRequest,
    /// 200, unless `partial_failure_response_code` overrides it while some items succeeded:
    /// sign, verify, hmac (Vault answers these with 200 and per-item errors).
    Ok,
}

fn finish(
    batch: bool,
    list: &[Cow<'_, Map<String, Value>>],
    results: Vec<Item>,
    data: &Map<String, Value>,
    rule: BatchStatus,
) -> Result<Response, EngineError> {
    if !batch {
        return results
            .into_iter()
            .next()
            .unwrap_or(Err(EngineError::Internal(
                "a single-item request produced no result",
            )))
            .map(Response::data);
    }
    let (mut ok, mut user, mut internal) = (false, false, false);
    let mut out = Vec::with_capacity(results.len());
    for (r, item) in results.into_iter().zip(list) {
        let mut m = match r {
            Ok(m) => {
                ok = true;
                m
            }
            Err(e) => {
                if e.code() == ErrorCode::Internal || e.code() == ErrorCode::Unavailable {
                    internal = true;
                } else {
                    user = true;
                }
                let mut m = Map::new();
                m.insert("error".into(), Value::String(e.to_string()));
                m
            }
        };
        let reference = match item.get("reference") {
            Some(Value::String(s)) => Value::String(s.clone()),
            Some(Value::Number(n)) => Value::String(n.to_string()),
            _ => Value::String(String::new()),
        };
        m.insert("reference".into(), reference);
        out.push(Value::Object(m));
    }
    let mut d = Map::new();
    d.insert("batch_results".into(), Value::Array(out));
    let mut resp = Response::data(d);
    if (user || internal) && rule == BatchStatus::FailRequest {
        let mut failed = BatchFailure {
            internal: !user,
            status_override: None,
        };
        if ok && let Some(c) = params::uint(data, "partial_failure_response_code")? {
            if (1..=599).contains(&c) {
                failed.status_override = u16::try_from(c).ok();
            } else {
                resp.warnings.push(
                    "invalid HTTP response code override from partial_failure_response_code"
                        .to_owned(),
                );
            }
        }
        resp.batch_failure = Some(failed);
    }
    Ok(resp)
}

impl TransitBackend {
    /// The key `name` (or alias) for a cryptographic request: it must exist and be enabled.
    async fn usable_key(&self, name: &str, missing: &str) -> Result<Arc<Key>, EngineError> {
        let (_, key) = self.resolve(name).await?;
        let key = key.ok_or_else(|| EngineError::invalid(missing.to_owned()))?;
        ensure_usable(&key)?;
        Ok(key)
    }

    pub(crate) async fn encrypt(
        &self,
        name: &str,
        data: &Map<String, Value>,
    ) -> Result<Response, EngineError> {
        let (list, batch) = items(data, self.limits)?;
        let (real, key) = self.resolve(name).await?;
        let key = match key {
            Some(k) => k,
            None => self.upsert(&real, data, &list).await?,
        };
        ensure_usable(&key)?;
        supported(&key, key.kind.supports_encryption(), "encryption")?;
        if !batch {
            // The one item's answer, written as bytes: every encrypt comes this way.
            let item = list.first().ok_or(EngineError::Internal(
                "a single-item request produced no result",
            ))?;
            let (ver, body) = encrypt_item(&key, item)?;
            return Ok(Response::encoded(ciphertext_json(ver, &body)));
        }
        let results = list.iter().map(|item| encrypt_one(&key, item)).collect();
        finish(batch, &list, results, data, BatchStatus::FailRequest)
    }

    /// Create `name` for an encrypt request, as Vault's upsert does.
    async fn upsert(
        &self,
        name: &str,
        data: &Map<String, Value>,
        list: &[Cow<'_, Map<String, Value>>],
    ) -> Result<Arc<Key>, EngineError> {
        if self.upsert_disabled().await? {
            return Err(EngineError::invalid("encryption key not found"));
        }
        let has_context = list
            .first()
            .and_then(|i| params::string(i, "context").ok().flatten())
            .is_some_and(|c| !c.is_empty());
        let mut spec_data = Map::new();
        for k in ["type", "convergent_encryption"] {
            if let Some(v) = data.get(k) {
                spec_data.insert(k.to_owned(), v.clone());
            }
        }
        spec_data.insert("derived".to_owned(), Value::Bool(has_context));
        let spec = NewKey::parse(&spec_data)?;
        if !spec.kind.supports_encryption() {
            return Err(EngineError::invalid(format!(
                "key type {} not supported for this operation",
                spec.kind
            )));
        }
        let now = self.now_nanos();
        self.modify(name, |current| match current {
            Some(_) => Ok(super::Change::Keep),
            None => spec.build(now),
        })
        .await?
        .ok_or(EngineError::Internal(
            "a transit key created on request was not returned",
        ))
    }

    pub(crate) async fn decrypt(
        &self,
        name: &str,
        data: &Map<String, Value>,
    ) -> Result<Response, EngineError> {
        let (list, batch) = items(data, self.limits)?;
        let key = self.usable_key(name, "encryption key not found").await?;
        supported(&key, key.kind.supports_decryption(), "decryption")?;
        let results = list
            .iter()
            .map(|item| {
                let pt = decrypt_one(&key, item)?;
                let mut m = Map::new();
                m.insert(
                    "plaintext".into(),
                    Value::String(Base64::Standard.encode(pt.expose_secret())),
                );
                Ok(m)
            })
            .collect();
        finish(batch, &list, results, data, BatchStatus::FailRequest)
    }

    pub(crate) async fn rewrap(
        &self,
        name: &str,
        data: &Map<String, Value>,
    ) -> Result<Response, EngineError> {
        let (list, batch) = items(data, self.limits)?;
        let key = self.usable_key(name, "encryption key not found").await?;
        supported(&key, key.kind.supports_encryption(), "encryption")?;
        let results = list
            .iter()
            .map(|item| {
                let pt = decrypt_one(&key, item)?;
                let ctx = b64(item, "context")?;
                let aad = b64(item, "associated_data")?;
                let (ver, vk) = encryption_version(&key, version_param(item)?, "encryption")?;
                let body = vk
                    .encrypt(
                        ctx.as_deref().map_or(&[][..], |v| v),
                        aad.as_deref().map_or(&[][..], |v| v),
                        pt.expose_secret(),
                    )
                    .map_err(crypto_err)?;
                Ok(ciphertext_map(ver, &body))
            })
            .collect();
        finish(batch, &list, results, data, BatchStatus::FailRequest)
    }

    pub(crate) async fn datakey(
        &self,
        kind: &str,
        name: &str,
        data: &Map<String, Value>,
    ) -> Result<Response, EngineError> {
        let with_plaintext = match kind {
            "plaintext" => true,
            "wrapped" => false,
            _ => {
                return Err(EngineError::invalid(
                    "invalid type: use plaintext or wrapped",
                ));
            }
        };
        let bits = params::uint(data, "bits")?.unwrap_or(256);
        if !matches!(bits, 128 | 256 | 512) {
            return Err(EngineError::invalid("invalid bits: use 128, 256 or 512"));
        }
        no_nonce(data)?;
        let key = self.usable_key(name, "encryption key not found").await?;
        supported(&key, key.kind.supports_encryption(), "encryption")?;
        let ctx = b64(data, "context")?;
        let aad = b64(data, "associated_data")?;
        let mut dek = Zeroizing::new(vec![0u8; usize::try_from(bits / 8).unwrap_or(32)]);
        fill_random(&mut dek).map_err(|_| EngineError::Crypto(CryptoOp::Random))?;
        let (ver, vk) = encryption_version(&key, version_param(data)?, "encryption")?;
        let body = vk
            .encrypt(
                ctx.as_deref().map_or(&[][..], |v| v),
                aad.as_deref().map_or(&[][..], |v| v),
                &dek,
            )
            .map_err(crypto_err)?;
        let mut m = ciphertext_map(ver, &body);
        if with_plaintext {
            m.insert(
                "plaintext".into(),
                Value::String(Base64::Standard.encode(&dek)),
            );
        }
        Ok(Response::data(m))
    }

    pub(crate) async fn hmac(
        &self,
        name: &str,
        url_alg: Option<&str>,
        data: &Map<String, Value>,
    ) -> Result<Response, EngineError> {
        let alg = hmac_algorithm(url_alg, data)?;
        let (list, batch) = items(data, self.limits)?;
        let key = self.usable_key(name, "encryption key not found").await?;
        let requested = version_param(data)?;
        let c = &key.config;
        let ver = if requested == 0 {
            c.latest_version
        } else {
            requested
        };
        if ver > c.latest_version {
            return Err(EngineError::invalid("invalid key version"));
        }
        let Some(vk) = key.version(ver).filter(|_| ver >= c.min_encryption_version) else {
            return Err(EngineError::invalid(
                "cannot generate HMAC: version is too old (disallowed by policy)",
            ));
        };
        let results = list
            .iter()
            .map(|item| {
                let input = b64(item, "input")?
                    .ok_or_else(|| EngineError::invalid("missing input for HMAC"))?;
                let tag = vk.hmac(alg, &input).map_err(crypto_err)?;
                let mut m = Map::new();
                m.insert(
                    "hmac".into(),
                    Value::String(codec::encode(ver, &tag, Base64::Standard)),
                );
                Ok(m)
            })
            .collect();
        finish(batch, &list, results, data, BatchStatus::Ok)
    }

    pub(crate) async fn sign(
        &self,
        name: &str,
        url_alg: Option<&str>,
        data: &Map<String, Value>,
    ) -> Result<Response, EngineError> {
        let (list, batch) = items(data, self.limits)?;
        let key = self.usable_key(name, "signing key not found").await?;
        supported(&key, key.kind.supports_signing(), "signing")?;
        let opts = sign_options(key.kind, url_alg, data)?;
        let (ver, vk) = encryption_version(&key, version_param(data)?, "signing")?;
        let results = list
            .iter()
            .map(|item| {
                let input =
                    b64(item, "input")?.ok_or_else(|| EngineError::invalid("missing input"))?;
                let sig = vk.sign(&opts, &input).map_err(crypto_err)?;
                let mut m = Map::new();
                m.insert(
                    "signature".into(),
                    Value::String(codec::encode(ver, &sig, opts.marshaling.base64())),
                );
                m.insert("key_version".into(), json!(ver));
                Ok(m)
            })
            .collect();
        finish(batch, &list, results, data, BatchStatus::Ok)
    }

    pub(crate) async fn verify(
        &self,
        name: &str,
        url_alg: Option<&str>,
        data: &Map<String, Value>,
    ) -> Result<Response, EngineError> {
        let (list, batch) = items(data, self.limits)?;
        let has = |k: &str| list.iter().filter(|i| i.contains_key(k)).count();
        let (sigs, hmacs) = (has("signature"), has("hmac"));
        let n = list.len();
        let use_hmac = match (sigs, hmacs) {
            (0, 0) => {
                return Err(EngineError::invalid(
                    "neither a 'signature' nor an 'hmac' were given to verify",
                ));
            }
            (s, 0) if s == n => false,
            (0, h) if h == n => true,
            (s, h) if s > 0 && h > 0 => {
                return Err(EngineError::invalid(if batch {
                    "elements of batch_input must all provide 'signature' or all provide 'hmac'"
                } else {
                    "provide one of 'signature' or 'hmac'"
                }));
            }
            (s, _) if s > 0 => {
                return Err(EngineError::invalid(
                    "some elements of batch_input are missing 'signature'",
                ));
            }
            _ => {
                return Err(EngineError::invalid(
                    "some elements of batch_input are missing 'hmac'",
                ));
            }
        };
        let key = self
            .usable_key(name, "signature verification key not found")
            .await?;
        let results: Vec<Item> = if use_hmac {
            let alg = hmac_algorithm(url_alg, data)?;
            list.iter()
                .map(|item| {
                    let input =
                        b64(item, "input")?.ok_or_else(|| EngineError::invalid("missing input"))?;
                    let given = params::string(item, "hmac")?
                        .ok_or_else(|| EngineError::invalid("missing hmac"))?;
                    let (ver, rest) = codec::split(given).map_err(|_| {
                        EngineError::invalid("invalid HMAC to verify: no prefix or version")
                    })?;
                    if ver > key.config.latest_version {
                        return Err(EngineError::invalid("invalid HMAC: version is too new"));
                    }
                    let vk = key
                        .version(ver)
                        .filter(|_| ver >= key.config.min_decryption_version)
                        .ok_or_else(|| {
                            EngineError::invalid(
                                "cannot verify HMAC: version is too old (disallowed by policy)",
                            )
                        })?;
                    let tag = Base64::Standard.decode(rest).map_err(|_| {
                        EngineError::invalid("unable to decode verification HMAC as base64")
                    })?;
                    let valid = vk.verify_hmac(alg, &input, &tag).map_err(crypto_err)?;
                    Ok(valid_map(valid))
                })
                .collect()
        } else {
            supported(&key, key.kind.supports_signing(), "verification")?;
            let opts = sign_options(key.kind, url_alg, data)?;
            list.iter()
                .map(|item| {
                    let input =
                        b64(item, "input")?.ok_or_else(|| EngineError::invalid("missing input"))?;
                    let given = params::string(item, "signature")?
                        .ok_or_else(|| EngineError::invalid("missing signature"))?;
                    let (ver, rest) = codec::split(given).map_err(|e| {
                        EngineError::invalid(e.to_string().replace("ciphertext", "signature"))
                    })?;
                    let vk = decryption_version(&key, ver, "signature")?;
                    let sig = opts
                        .marshaling
                        .base64()
                        .decode(rest)
                        .map_err(|_| EngineError::invalid("invalid base64 signature value"))?;
                    let valid = vk.verify(&opts, &input, &sig).map_err(crypto_err)?;
                    Ok(valid_map(valid))
                })
                .collect()
        };
        finish(batch, &list, results, data, BatchStatus::Ok)
    }
}

fn valid_map(valid: bool) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("valid".into(), Value::Bool(valid));
    m
}

fn ciphertext_map(ver: u32, body: &[u8]) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert(
        "ciphertext".into(),
        Value::String(codec::encode(ver, body, Base64::Standard)),
    );
    m.insert("key_version".into(), Value::from(ver));
    m
}

/// [`ciphertext_map`] as JSON: a ciphertext (`vault:v<n>:` and standard base64) has
/// nothing to escape.
fn ciphertext_json(ver: u32, body: &[u8]) -> EncodedData {
    // The envelope is ASCII without quotes or backslashes: nothing to escape.
    const FRAME: &[u8] = br#"{"ciphertext":"","key_version":4294967295}"#;
    // The frame holds the longest version; the envelope adds its prefix, its version
    // (at most 10 digits), a ':' and the base64.
    let envelope = codec::PREFIX.len() + 11 + Base64::Standard.encoded_len(body.len());
    let mut out = Vec::with_capacity(FRAME.len() + envelope);
    out.extend_from_slice(br#"{"ciphertext":""#);
    codec::append_envelope(ver, body, Base64::Standard, &mut out);
    out.extend_from_slice(br#"","key_version":"#);
    codec::append_u32(&mut out, ver);
    out.push(b'}');
    EncodedData::new(out).unwrap_or_else(|| unreachable!("written between braces"))
}

fn encrypt_one(key: &Key, item: &Map<String, Value>) -> Item {
    encrypt_item(key, item).map(|(ver, body)| ciphertext_map(ver, &body))
}

/// Encrypt one item: the key version used and the ciphertext's bytes.
fn encrypt_item(key: &Key, item: &Map<String, Value>) -> Result<(u32, Vec<u8>), EngineError> {
    let pt = b64(item, "plaintext")?
        .ok_or_else(|| EngineError::invalid("missing plaintext to encrypt"))?;
    no_nonce(item)?;
    let ctx = b64(item, "context")?;
    let aad = b64(item, "associated_data")?;
    if aad.is_some() && !key.kind.supports_associated_data() {
        return Err(EngineError::invalid(format!(
            "associated_data provided for non-AEAD key type {}",
            key.kind
        )));
    }
    let (ver, vk) = encryption_version(key, version_param(item)?, "encryption")?;
    let body = vk
        .encrypt(
            ctx.as_deref().map_or(&[][..], |v| v),
            aad.as_deref().map_or(&[][..], |v| v),
            &pt,
        )
        .map_err(crypto_err)?;
    Ok((ver, body))
}

fn decrypt_one(
    key: &Key,
    item: &Map<String, Value>,
) -> Result<keyhaven_crypto::SecretBytes, EngineError> {
    let text = params::string(item, "ciphertext")?
        .ok_or_else(|| EngineError::invalid("missing ciphertext to decrypt"))?;
    no_nonce(item)?;
    let ctx = b64(item, "context")?;
    let aad = b64(item, "associated_data")?;
    let (ver, rest) = codec::split(text).map_err(crypto_err)?;
    let vk = decryption_version(key, ver, "ciphertext")?;
    let body = Base64::Standard
        .decode(rest)
        .map_err(|_| EngineError::invalid("invalid ciphertext: could not decode base64"))?;
    vk.decrypt(
        ctx.as_deref().map_or(&[][..], |v| v),
        aad.as_deref().map_or(&[][..], |v| v),
        &body,
    )
    .map_err(crypto_err)
}

fn hmac_algorithm(
    url_alg: Option<&str>,
    data: &Map<String, Value>,
) -> Result<HashAlgorithm, EngineError> {
    let name = match url_alg.filter(|a| !a.is_empty()) {
        Some(a) => a,
        None => params::string(data, "algorithm")?
            .or(params::string(data, "hash_algorithm")?)
            .filter(|a| !a.is_empty())
            .unwrap_or("sha2-256"),
    };
    HashAlgorithm::parse(name)
        .filter(|a| {
            matches!(
                a,
                HashAlgorithm::Sha2_224
                    | HashAlgorithm::Sha2_256
                    | HashAlgorithm::Sha2_384
                    | HashAlgorithm::Sha2_512
            )
        })
        .ok_or_else(|| EngineError::invalid(format!("unsupported algorithm {name:?}")))
}

fn sign_options(
    kind: KeyType,
    url_alg: Option<&str>,
    data: &Map<String, Value>,
) -> Result<SignOptions, EngineError> {
    let name = match url_alg.filter(|a| !a.is_empty()) {
        Some(a) => Some(a),
        None => params::string(data, "hash_algorithm")?
            .or(params::string(data, "algorithm")?)
            .filter(|a| !a.is_empty()),
    };
    let hash = match name {
        None => kind.default_signature_hash(),
        Some(n) => HashAlgorithm::parse(n)
            .ok_or_else(|| EngineError::invalid(format!("invalid hash algorithm {n:?}")))?,
    };
    let padding = match params::string(data, "signature_algorithm")?.unwrap_or("") {
        "" | "pss" => RsaPadding::Pss,
        "pkcs1v15" => RsaPadding::Pkcs1v15,
        other => {
            return Err(EngineError::invalid(format!(
                "unsupported rsa signature algorithm {other:?}"
            )));
        }
    };
    let marshaling = match params::string(data, "marshaling_algorithm")?.unwrap_or("") {
        "" | "asn1" => Marshaling::Asn1,
        "jws" => Marshaling::Jws,
        other => {
            return Err(EngineError::invalid(format!(
                "invalid marshaling type {other:?}"
            )));
        }
    };
    match params::string(data, "salt_length")? {
        None | Some("" | "auto" | "hash") => {}
        Some(_) => {
            return Err(EngineError::invalid(
                "salt_length: only \"auto\" and \"hash\" (a salt as long as the hash) are supported",
            ));
        }
    }
    Ok(SignOptions {
        hash,
        prehashed: params::boolean(data, "prehashed")?.unwrap_or(false),
        padding,
        marshaling,
    })
}

/// `random[/<source>][/<bytes>]`.
pub(crate) fn random(
    a: Option<&str>,
    b: Option<&str>,
    data: &Map<String, Value>,
) -> Result<Response, EngineError> {
    // The same endpoint as `sys/tools/random`, with OpenBao's limits and messages.
    crate::sys_tools::random(a, b, data)
}

/// `hash[/<alg>]`.
pub(crate) fn hash(alg: Option<&str>, data: &Map<String, Value>) -> Result<Response, EngineError> {
    let name = match alg.filter(|a| !a.is_empty()) {
        Some(a) => a,
        None => params::string(data, "algorithm")?.unwrap_or("sha2-256"),
    };
    let alg = HashAlgorithm::parse(name)
        .ok_or_else(|| EngineError::invalid(format!("unsupported algorithm {name:?}")))?;
    let input = b64(data, "input")?.ok_or_else(|| EngineError::invalid("missing input to hash"))?;
    let sum = alg.digest(&input).map_err(crypto_err)?;
    let out = match params::string(data, "format")?.unwrap_or("hex") {
        "hex" => hex::encode(&sum),
        "base64" => Base64::Standard.encode(&sum),
        other => {
            return Err(EngineError::invalid(format!(
                "unsupported encoding format {other:?}; must be \"hex\" or \"base64\""
            )));
        }
    };
    let mut m = Map::new();
    m.insert("sum".into(), Value::String(out));
    Ok(Response::data(m))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_written_ciphertext_answer_is_what_serde_json_writes_for_the_map() {
        for ver in [1, 9, 10, 123, u32::MAX] {
            for len in [0, 1, 2, 3, 28, 60, 61, 62] {
                let body: Vec<u8> = (0..len).map(|i| (i * 37 + 251) as u8).collect();
                let written = ciphertext_json(ver, &body);
                let expected = serde_json::to_vec(&ciphertext_map(ver, &body)).unwrap();
                assert_eq!(
                    String::from_utf8(written.as_bytes().to_vec()).unwrap(),
                    String::from_utf8(expected).unwrap()
                );
            }
        }
    }
}
