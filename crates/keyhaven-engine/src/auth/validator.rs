//! Offline verification of signed JWTs, shared by the `kubernetes` and `jwt` auth methods.
//!
//! Signatures are checked by `jsonwebtoken` (aws-lc-rs); this module decides which key
//! and algorithm may be used and checks the claims against the engine's clock.
//!
//! Invariants:
//! - only RS256 and ES256 are accepted; the algorithm is pinned by the *key* (an RSA key
//!   verifies RS256 only, a P-256 key ES256 only), never chosen by the token header, so
//!   `alg: none`, HMAC algorithms and HS256 keyed with a public key are refused before any
//!   cryptography runs;
//! - `exp` is required; `exp`, `nbf` and `iat` are checked here against the injected
//!   clock with a bounded leeway (`jsonwebtoken`'s own time checks, which read the system
//!   clock, are switched off);
//! - a token longer than [`MAX_JWT_LEN`] is refused unparsed;
//! - nothing here logs or returns the token or any claim value; a [`Rejection`] is a
//!   fixed, non-secret reason meant for the server log.

use std::fmt;
use std::sync::Arc;

use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use super::Outbound;
use crate::error::EngineError;

/// The longest JWT accepted, in bytes. Kubernetes tokens are 1–2 KiB; cloud STS services
/// accept up to 20 000 characters.
pub const MAX_JWT_LEN: usize = 32 * 1024;

/// Default leeway for `exp`, `nbf` and `iat`, in seconds.
pub const DEFAULT_LEEWAY_SECS: u64 = 60;

/// The largest configurable leeway, in seconds.
pub const MAX_LEEWAY_SECS: u64 = 300;

/// The most keys one key set holds; further keys are ignored.
pub const MAX_KEYS: usize = 64;

/// How long keys fetched from an issuer are used before they are fetched again.
pub const REMOTE_KEYS_TTL_SECS: i64 = 600;

/// The shortest interval between two fetches forced by an unknown `kid`.
pub const MIN_REFRESH_INTERVAL_SECS: i64 = 30;

/// A signature algorithm this module verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SigAlg {
    /// RSASSA-PKCS1-v1_5 with SHA-256 (RSA keys of 2048 to 8192 bits).
    Rs256,
    /// ECDSA on P-256 with SHA-256.
    Es256,
}

impl SigAlg {
    /// Every supported algorithm.
    pub const ALL: [SigAlg; 2] = [SigAlg::Rs256, SigAlg::Es256];

    /// The JOSE name (`RS256`, `ES256`).
    pub const fn name(self) -> &'static str {
        match self {
            SigAlg::Rs256 => "RS256",
            SigAlg::Es256 => "ES256",
        }
    }

    /// Parse a JOSE name; anything unsupported (including `none` and `HS256`) is `None`.
    pub fn parse(name: &str) -> Option<SigAlg> {
        match name {
            "RS256" => Some(SigAlg::Rs256),
            "ES256" => Some(SigAlg::Es256),
            _ => None,
        }
    }

    const fn jwt(self) -> Algorithm {
        match self {
            SigAlg::Rs256 => Algorithm::RS256,
            SigAlg::Es256 => Algorithm::ES256,
        }
    }
}

/// Why a login token was refused. Shown in the server log, never to the caller (who
/// always gets `permission denied`), and never carrying token or claim values.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Rejection {
    /// Not three base64url segments with a JSON header.
    Malformed,
    /// Longer than [`MAX_JWT_LEN`].
    TooLong,
    /// `alg` is not RS256 or ES256 (e.g. `none`, `HS256`), or not allowed by the config.
    UnsupportedAlgorithm,
    /// The header has a `crit` member; no JWS extension is understood.
    CriticalHeader,
    /// No configured key has the token's algorithm and `kid`.
    NoMatchingKey,
    /// No candidate key verified the signature.
    BadSignature,
    /// A required claim is absent.
    MissingClaim(&'static str),
    /// A claim has the wrong type or shape.
    InvalidClaim(&'static str),
    /// `exp` is past, beyond the leeway.
    Expired,
    /// `nbf` or `iat` is in the future, beyond the leeway.
    NotYetValid,
    /// `iss` differs from the configured issuer.
    WrongIssuer,
    /// `aud` does not contain an expected audience.
    WrongAudience,
    /// The token has an audience but the role binds none.
    UnexpectedAudience,
    /// `sub` is not `system:serviceaccount:<namespace>:<name>`.
    NotServiceAccount,
    /// The `kubernetes.io` claims disagree with `sub`.
    ClaimMismatch(&'static str),
    /// The role does not exist.
    UnknownRole,
    /// The namespace is not bound to the role.
    NamespaceNotBound,
    /// The service account is not bound to the role.
    ServiceAccountNotBound,
    /// `sub` differs from the role's `bound_subject`.
    SubjectNotBound,
    /// A claim does not match the role's `bound_claims`.
    ClaimNotBound,
    /// The role's `user_claim` is absent or not a string.
    MissingUserClaim,
    /// TokenReview said the token is not authenticated (revoked, expired, deleted).
    ReviewNotAuthenticated,
    /// TokenReview names another user than expected.
    ReviewUserMismatch,
    /// TokenReview did not confirm the role's audience.
    ReviewAudience,
    /// The API server refused the token when it was used as its own reviewer.
    ReviewUnauthorized,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::Malformed => f.write_str("not a well-formed JWT"),
            Rejection::TooLong => f.write_str("the JWT is too long"),
            Rejection::UnsupportedAlgorithm => {
                f.write_str("unsupported or disallowed signature algorithm")
            }
            Rejection::CriticalHeader => f.write_str("the JWT header has critical extensions"),
            Rejection::NoMatchingKey => f.write_str("no configured key matches the JWT"),
            Rejection::BadSignature => f.write_str("signature verification failed"),
            Rejection::MissingClaim(c) => write!(f, "claim {c:?} is missing"),
            Rejection::InvalidClaim(c) => write!(f, "claim {c:?} is malformed"),
            Rejection::Expired => f.write_str("the JWT has expired"),
            Rejection::NotYetValid => f.write_str("the JWT is not valid yet"),
            Rejection::WrongIssuer => f.write_str("unexpected issuer"),
            Rejection::WrongAudience => f.write_str("the JWT is not meant for this audience"),
            Rejection::UnexpectedAudience => {
                f.write_str("the JWT has an audience but the role binds none")
            }
            Rejection::NotServiceAccount => f.write_str("the subject is not a service account"),
            Rejection::ClaimMismatch(c) => write!(f, "claim {c:?} disagrees with the subject"),
            Rejection::UnknownRole => f.write_str("no such role"),
            Rejection::NamespaceNotBound => f.write_str("namespace not bound to the role"),
            Rejection::ServiceAccountNotBound => {
                f.write_str("service account not bound to the role")
            }
            Rejection::SubjectNotBound => f.write_str("subject not bound to the role"),
            Rejection::ClaimNotBound => f.write_str("a bound claim does not match"),
            Rejection::MissingUserClaim => f.write_str("the user claim is missing"),
            Rejection::ReviewNotAuthenticated => {
                f.write_str("TokenReview: the token is not authenticated")
            }
            Rejection::ReviewUserMismatch => f.write_str("TokenReview: unexpected user"),
            Rejection::ReviewAudience => f.write_str("TokenReview: audience not confirmed"),
            Rejection::ReviewUnauthorized => f.write_str("TokenReview: the token was refused"),
        }
    }
}

/// What the header of a JWT says, read before any key is chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenHeader {
    /// The algorithm, already known to be supported.
    pub alg: SigAlg,
    /// The key id, if any.
    pub kid: Option<String>,
}

/// Read and check the header of `jwt` without verifying anything else.
pub fn peek_header(jwt: &str) -> Result<TokenHeader, Rejection> {
    if jwt.len() > MAX_JWT_LEN {
        return Err(Rejection::TooLong);
    }
    let mut parts = jwt.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Rejection::Malformed);
    };
    if header.is_empty() || payload.is_empty() || signature.is_empty() {
        return Err(Rejection::Malformed);
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| Rejection::Malformed)?;
    let header: Map<String, Value> =
        serde_json::from_slice(&bytes).map_err(|_| Rejection::Malformed)?;
    if header.contains_key("crit") {
        return Err(Rejection::CriticalHeader);
    }
    let alg = match header.get("alg") {
        Some(Value::String(s)) => SigAlg::parse(s).ok_or(Rejection::UnsupportedAlgorithm)?,
        _ => return Err(Rejection::Malformed),
    };
    let kid = match header.get("kid") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(Rejection::Malformed),
    };
    Ok(TokenHeader { alg, kid })
}

/// One verification key with the single algorithm it may verify.
#[derive(Clone)]
struct VerifyingKey {
    kid: Option<String>,
    alg: SigAlg,
    key: DecodingKey,
}

/// A set of public keys that verify JWT signatures.
#[derive(Clone, Default)]
pub struct KeySet {
    keys: Vec<VerifyingKey>,
}

impl fmt::Debug for KeySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(
                self.keys
                    .iter()
                    .map(|k| (k.alg.name(), k.kid.as_deref().unwrap_or(""))),
            )
            .finish()
    }
}

/// A successfully verified token.
#[derive(Clone)]
pub struct Verified {
    /// The claims (a JSON object).
    pub claims: Map<String, Value>,
    /// The algorithm that verified it.
    pub alg: SigAlg,
}

// Claims are identity data, not secrets, but keep them out of Debug output anyway.
impl fmt::Debug for Verified {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verified")
            .field("alg", &self.alg)
            .field("claim_names", &self.claims.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// The PEM blocks in `text` as `(label, block)`, in order. Blocks may be separated by
/// whitespace or commas (as `pem_keys=@file` and comma-joined lists send them); any other
/// text is an error.
pub fn pem_blocks(text: &str) -> Option<Vec<(&str, &str)>> {
    let mut out = Vec::new();
    let mut rest = text;
    loop {
        rest = rest.trim_start_matches(|c: char| c.is_whitespace() || c == ',');
        if rest.is_empty() {
            return Some(out);
        }
        let after_begin = rest.strip_prefix("-----BEGIN ")?;
        let (label, _) = after_begin.split_once("-----")?;
        if label.is_empty() || label.len() > 64 || label.contains('\n') {
            return None;
        }
        let end_marker = format!("-----END {label}-----");
        let end = rest.find(&end_marker)?.checked_add(end_marker.len())?;
        let (block, tail) = rest.split_at_checked(end)?;
        out.push((label, block));
        rest = tail;
    }
}

fn key_from_pem(label: &str, block: &str) -> Option<VerifyingKey> {
    if !matches!(label, "PUBLIC KEY" | "RSA PUBLIC KEY" | "CERTIFICATE") {
        return None;
    }
    if let Ok(key) = DecodingKey::from_rsa_pem(block.as_bytes()) {
        return Some(VerifyingKey {
            kid: None,
            alg: SigAlg::Rs256,
            key,
        });
    }
    let key = DecodingKey::from_ec_pem(block.as_bytes()).ok()?;
    is_p256_point(&key).then_some(VerifyingKey {
        kid: None,
        alg: SigAlg::Es256,
        key,
    })
}

/// Whether an EC decoding key holds an uncompressed P-256 point (65 bytes).
fn is_p256_point(key: &DecodingKey) -> bool {
    key.try_get_as_bytes()
        .is_ok_and(|b| b.len() == 65 && b.first() == Some(&4))
}

fn key_from_jwk(value: &Value) -> Option<VerifyingKey> {
    let obj = value.as_object()?;
    // A published private key is a configuration mistake; never use it.
    if obj.contains_key("d") {
        return None;
    }
    let jwk: Jwk = serde_json::from_value(value.clone()).ok()?;
    if let Some(u) = &jwk.common.public_key_use
        && !matches!(u, PublicKeyUse::Signature)
    {
        return None;
    }
    let alg = match (&jwk.algorithm, &jwk.common.key_algorithm) {
        (AlgorithmParameters::RSA(_), None | Some(KeyAlgorithm::RS256)) => SigAlg::Rs256,
        (AlgorithmParameters::EllipticCurve(p), None | Some(KeyAlgorithm::ES256))
            if matches!(p.curve, EllipticCurve::P256) =>
        {
            SigAlg::Es256
        }
        _ => return None,
    };
    let key = DecodingKey::from_jwk(&jwk).ok()?;
    if alg == SigAlg::Es256 && !is_p256_point(&key) {
        return None;
    }
    Some(VerifyingKey {
        kid: jwk.common.key_id.clone(),
        alg,
        key,
    })
}

impl KeySet {
    /// Keys from PEM text: each entry may hold one or more `PUBLIC KEY`,
    /// `RSA PUBLIC KEY` or `CERTIFICATE` blocks (RSA or P-256). Errors name the entry
    /// (`param[i]`), never its content.
    pub fn from_pem_keys(param: &str, entries: &[String]) -> Result<KeySet, EngineError> {
        let mut keys = Vec::new();
        for (i, entry) in entries.iter().enumerate() {
            let blocks = pem_blocks(entry)
                .ok_or_else(|| EngineError::invalid(format!("{param}[{i}] is not PEM-encoded")))?;
            if blocks.is_empty() {
                return Err(EngineError::invalid(format!("{param}[{i}] is empty")));
            }
            for (label, block) in blocks {
                let key = key_from_pem(label, block).ok_or_else(|| {
                    EngineError::invalid(format!(
                        "{param}[{i}] is not an RSA or P-256 public key or certificate"
                    ))
                })?;
                keys.push(key);
            }
        }
        if keys.len() > MAX_KEYS {
            return Err(EngineError::invalid(format!(
                "{param} holds more than {MAX_KEYS} keys"
            )));
        }
        Ok(KeySet { keys })
    }

    /// Keys from a JWKS document (`{"keys": [...]}`). Keys that are not RS256 or ES256
    /// signing keys (encryption keys, other algorithms or curves, private keys) are
    /// skipped; a set with no usable key is an error.
    pub fn from_jwks(jwks: &Value) -> Result<KeySet, EngineError> {
        let entries = jwks
            .get("keys")
            .and_then(Value::as_array)
            .ok_or_else(|| EngineError::invalid("a JWKS must be an object with a \"keys\" list"))?;
        let keys: Vec<VerifyingKey> = entries
            .iter()
            .filter_map(key_from_jwk)
            .take(MAX_KEYS)
            .collect();
        if keys.is_empty() {
            return Err(EngineError::invalid(
                "the JWKS holds no RS256 or ES256 (P-256) signing key",
            ));
        }
        Ok(KeySet { keys })
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Whether a token with this header could find a key here without a refresh.
    fn knows(&self, header: &TokenHeader) -> bool {
        self.keys.iter().any(|k| {
            k.alg == header.alg
                && match (&header.kid, &k.kid) {
                    (Some(want), Some(have)) => want == have,
                    _ => true,
                }
        })
    }

    /// Verify the signature of `jwt` with a key of the token's algorithm (and `kid`,
    /// when both name one), if that algorithm is in `allowed`. Claims are not checked
    /// here; see [`check_claims`].
    pub fn verify(&self, jwt: &str, allowed: &[SigAlg]) -> Result<Verified, Rejection> {
        let header = peek_header(jwt)?;
        if !allowed.contains(&header.alg) {
            return Err(Rejection::UnsupportedAlgorithm);
        }
        let mut tried = false;
        for key in self.keys.iter().filter(|k| {
            k.alg == header.alg
                && match (&header.kid, &k.kid) {
                    (Some(want), Some(have)) => want == have,
                    _ => true,
                }
        }) {
            tried = true;
            let mut validation = Validation::new(key.alg.jwt());
            // Time, audience and issuer are checked by `check_claims` against the
            // engine's clock; jsonwebtoken's checks read the system clock.
            validation.validate_exp = false;
            validation.validate_nbf = false;
            validation.validate_aud = false;
            validation.required_spec_claims.clear();
            validation.leeway = 0;
            match jsonwebtoken::decode::<Map<String, Value>>(jwt, &key.key, &validation) {
                Ok(data) => {
                    return Ok(Verified {
                        claims: data.claims,
                        alg: key.alg,
                    });
                }
                Err(e) => match e.kind() {
                    ErrorKind::InvalidSignature
                    | ErrorKind::InvalidRsaKey(_)
                    | ErrorKind::InvalidEcdsaKey
                    | ErrorKind::InvalidKeyFormat => {}
                    ErrorKind::InvalidAlgorithm => return Err(Rejection::UnsupportedAlgorithm),
                    _ => return Err(Rejection::Malformed),
                },
            }
        }
        Err(if tried {
            Rejection::BadSignature
        } else {
            Rejection::NoMatchingKey
        })
    }
}

/// What the claims of a verified token must satisfy.
#[derive(Debug, Clone, Copy)]
pub struct Expectations<'a> {
    /// Now, in Unix seconds, from the engine's clock.
    pub now: i64,
    /// Leeway for `exp`, `nbf` and `iat`, in seconds (capped at [`MAX_LEEWAY_SECS`]).
    pub leeway: u64,
    /// The required `iss`, if any.
    pub issuer: Option<&'a str>,
    /// When set, `aud` must contain at least one of these.
    pub audiences: Option<&'a [String]>,
}

/// A NumericDate claim as whole seconds.
fn numeric_date(claims: &Map<String, Value>, name: &'static str) -> Result<Option<i64>, Rejection> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => {
            if let Some(i) = n.as_i64() {
                return Ok(Some(i));
            }
            match n.as_f64() {
                #[allow(clippy::cast_possible_truncation, reason = "range checked just before")]
                Some(f) if f.is_finite() && f.abs() < 1e15 => Ok(Some(f.floor() as i64)),
                _ => Err(Rejection::InvalidClaim(name)),
            }
        }
        Some(_) => Err(Rejection::InvalidClaim(name)),
    }
}

/// The `aud` claim as a list (a single string counts as a list of one).
pub fn audiences(claims: &Map<String, Value>) -> Result<Vec<&str>, Rejection> {
    match claims.get("aud") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s.as_str()]),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().ok_or(Rejection::InvalidClaim("aud")))
            .collect(),
        Some(_) => Err(Rejection::InvalidClaim("aud")),
    }
}

/// Check `exp` (required), `nbf`, `iat`, `iss` and `aud` against `expect`.
pub fn check_claims(
    claims: &Map<String, Value>,
    expect: &Expectations<'_>,
) -> Result<(), Rejection> {
    let leeway = i64::try_from(expect.leeway.min(MAX_LEEWAY_SECS)).unwrap_or(0);
    let exp = numeric_date(claims, "exp")?.ok_or(Rejection::MissingClaim("exp"))?;
    if expect.now.saturating_sub(leeway) > exp {
        return Err(Rejection::Expired);
    }
    for name in ["nbf", "iat"] {
        if let Some(t) = numeric_date(claims, name)?
            && t > expect.now.saturating_add(leeway)
        {
            return Err(Rejection::NotYetValid);
        }
    }
    if let Some(want) = expect.issuer {
        match claims.get("iss") {
            Some(Value::String(iss)) if iss == want => {}
            None | Some(Value::Null) => return Err(Rejection::MissingClaim("iss")),
            Some(_) => return Err(Rejection::WrongIssuer),
        }
    }
    if let Some(wanted) = expect.audiences {
        let have = audiences(claims)?;
        if have.is_empty() {
            return Err(Rejection::MissingClaim("aud"));
        }
        if !have.iter().any(|a| wanted.iter().any(|w| w == a)) {
            return Err(Rejection::WrongAudience);
        }
    }
    Ok(())
}

/// A claim by name, or by JSON pointer when the name starts with `/`
/// (`/kubernetes.io/namespace`).
pub fn claim<'a>(claims: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    let Some(pointer) = name.strip_prefix('/') else {
        return claims.get(name);
    };
    let mut segments = pointer
        .split('/')
        .map(|s| s.replace("~1", "/").replace("~0", "~"));
    let first = segments.next()?;
    let mut current = claims.get(&first)?;
    for seg in segments {
        current = match current {
            Value::Object(o) => o.get(&seg)?,
            Value::Array(a) => a.get(seg.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(current)
}

/// Glob match with `*` as the only wildcard (any run of characters), as Vault's bound
/// names and namespaces use it.
pub fn glob_match(pattern: &str, value: &str) -> bool {
    let (p, v) = (pattern.as_bytes(), value.as_bytes());
    let (mut pi, mut vi) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while vi < v.len() {
        match p.get(pi) {
            Some(b'*') => {
                star = Some((pi, vi));
                pi += 1;
            }
            Some(c) if Some(c) == v.get(vi) => {
                pi += 1;
                vi += 1;
            }
            _ => match star {
                Some((sp, sv)) => {
                    pi = sp + 1;
                    vi = sv + 1;
                    star = Some((sp, sv + 1));
                }
                None => return false,
            },
        }
    }
    while p.get(pi) == Some(&b'*') {
        pi += 1;
    }
    pi == p.len()
}

/// Where remote keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RemoteSource {
    /// `<url>/.well-known/openid-configuration`, then its `jwks_uri`.
    Discovery {
        /// The issuer URL.
        url: String,
        /// CA to trust instead of the system roots.
        ca_pem: Option<String>,
    },
    /// A JWKS URL.
    Jwks {
        /// The JWKS URL.
        url: String,
        /// CA to trust instead of the system roots.
        ca_pem: Option<String>,
    },
}

struct Cached {
    source: RemoteSource,
    keys: Arc<KeySet>,
    issuer: Option<String>,
    fetched_at: i64,
}

/// Keys fetched from an issuer, cached for [`REMOTE_KEYS_TTL_SECS`] and fetched again
/// early when a token names an unknown `kid` (at most every
/// [`MIN_REFRESH_INTERVAL_SECS`]). When a fetch fails, keys fetched before stay in use.
#[derive(Default)]
pub(crate) struct RemoteKeys {
    cached: parking_lot::Mutex<Option<Arc<Cached>>>,
    fetching: tokio::sync::Mutex<()>,
}

/// Keys and the issuer the discovery document names.
pub(crate) struct RemoteKeySet {
    pub keys: Arc<KeySet>,
    pub issuer: Option<String>,
}

impl RemoteKeys {
    fn fresh(&self, source: &RemoteSource, now: i64, header: &TokenHeader) -> Option<Arc<Cached>> {
        let guard = self.cached.lock();
        let c = guard.as_ref()?;
        let age = now.saturating_sub(c.fetched_at);
        let usable = c.source == *source
            && (0..REMOTE_KEYS_TTL_SECS).contains(&age)
            && (c.keys.knows(header) || age < MIN_REFRESH_INTERVAL_SECS);
        usable.then(|| c.clone())
    }

    /// The keys to verify a token with this header.
    pub(crate) async fn get(
        &self,
        outbound: Option<&Arc<dyn Outbound>>,
        source: &RemoteSource,
        now: i64,
        header: &TokenHeader,
    ) -> Result<RemoteKeySet, EngineError> {
        if let Some(c) = self.fresh(source, now, header) {
            return Ok(RemoteKeySet {
                keys: c.keys.clone(),
                issuer: c.issuer.clone(),
            });
        }
        let _one_fetch_at_a_time = self.fetching.lock().await;
        if let Some(c) = self.fresh(source, now, header) {
            return Ok(RemoteKeySet {
                keys: c.keys.clone(),
                issuer: c.issuer.clone(),
            });
        }
        match fetch_remote(outbound, source).await {
            Ok((keys, issuer)) => {
                let c = Arc::new(Cached {
                    source: source.clone(),
                    keys: Arc::new(keys),
                    issuer,
                    fetched_at: now,
                });
                *self.cached.lock() = Some(c.clone());
                Ok(RemoteKeySet {
                    keys: c.keys.clone(),
                    issuer: c.issuer.clone(),
                })
            }
            Err(err) => {
                let stale = self.cached.lock().clone();
                match stale {
                    Some(c) if c.source == *source => {
                        tracing::warn!(target: "keyhaven::auth", error = %err, "cannot refresh the issuer's keys; using the keys fetched before");
                        Ok(RemoteKeySet {
                            keys: c.keys.clone(),
                            issuer: c.issuer.clone(),
                        })
                    }
                    _ => Err(err),
                }
            }
        }
    }
}

fn unavailable(msg: impl Into<String>) -> EngineError {
    EngineError::Unavailable(msg.into())
}

async fn fetch_remote(
    outbound: Option<&Arc<dyn Outbound>>,
    source: &RemoteSource,
) -> Result<(KeySet, Option<String>), EngineError> {
    let outbound = outbound
        .ok_or_else(|| unavailable("outbound HTTPS is not available to fetch the issuer's keys"))?;
    let (jwks_url, ca_pem, issuer) = match source {
        RemoteSource::Jwks { url, ca_pem } => (url.clone(), ca_pem.as_deref(), None),
        RemoteSource::Discovery { url, ca_pem } => {
            let doc_url = format!(
                "{}/.well-known/openid-configuration",
                url.trim_end_matches('/')
            );
            let doc = outbound.get_json(&doc_url, ca_pem.as_deref()).await?;
            if doc.status != 200 {
                return Err(unavailable(format!(
                    "OIDC discovery at {doc_url} answered HTTP {}",
                    doc.status
                )));
            }
            let jwks_uri = doc
                .body
                .get("jwks_uri")
                .and_then(Value::as_str)
                .filter(|u| is_https_url(u))
                .ok_or_else(|| {
                    unavailable(format!(
                        "the OIDC discovery document at {doc_url} has no https jwks_uri"
                    ))
                })?
                .to_owned();
            let issuer = doc
                .body
                .get("issuer")
                .and_then(Value::as_str)
                .map(str::to_owned);
            (jwks_uri, ca_pem.as_deref(), issuer)
        }
    };
    let resp = outbound.get_json(&jwks_url, ca_pem).await?;
    if resp.status != 200 {
        return Err(unavailable(format!(
            "the JWKS at {jwks_url} answered HTTP {}",
            resp.status
        )));
    }
    let keys = KeySet::from_jwks(&resp.body)
        .map_err(|e| unavailable(format!("the JWKS at {jwks_url} is unusable: {e}")))?;
    Ok((keys, issuer))
}

/// Whether `url` is an absolute `https://` URL with a host and no whitespace.
pub fn is_https_url(url: &str) -> bool {
    url.len() <= 2048
        && !url.chars().any(|c| c.is_whitespace() || c.is_control())
        && url
            .strip_prefix("https://")
            .is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_like_vault() {
        assert!(glob_match("*", ""));
        assert!(glob_match("*", "team-a"));
        assert!(glob_match("team-*", "team-a"));
        assert!(!glob_match("team-*", "tea"));
        assert!(glob_match("*-a", "team-a"));
        assert!(glob_match("t*m-*a", "team-a"));
        assert!(!glob_match("team-a", "team-ab"));
        assert!(glob_match("a*b*c", "aXbYbZc"));
        assert!(!glob_match("a*b*c", "aXbYbZ"));
        assert!(glob_match("app", "app"));
    }

    #[test]
    fn headers_refuse_none_hmac_and_crit() {
        let enc = |h: &str| {
            format!(
                "{}.e30.c2ln",
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(h)
            )
        };
        assert_eq!(
            peek_header(&enc(r#"{"alg":"none"}"#)),
            Err(Rejection::UnsupportedAlgorithm)
        );
        assert_eq!(
            peek_header(&enc(r#"{"alg":"HS256"}"#)),
            Err(Rejection::UnsupportedAlgorithm)
        );
        assert_eq!(
            peek_header(&enc(r#"{"alg":"RS256","crit":["x"]}"#)),
            Err(Rejection::CriticalHeader)
        );
        assert_eq!(
            peek_header(&enc(r#"{"alg":"ES256","kid":"k1"}"#)),
            Ok(TokenHeader {
                alg: SigAlg::Es256,
                kid: Some("k1".into())
            })
        );
        assert_eq!(peek_header("a.b"), Err(Rejection::Malformed));
        assert_eq!(peek_header("a.b.c.d"), Err(Rejection::Malformed));
        assert_eq!(peek_header("!!.b.c"), Err(Rejection::Malformed));
        let long = "a".repeat(MAX_JWT_LEN + 1);
        assert_eq!(peek_header(&long), Err(Rejection::TooLong));
    }

    #[test]
    fn claims_are_checked_against_the_given_time() {
        let claims: Map<String, Value> = serde_json::from_value(serde_json::json!({
            "exp": 1000, "nbf": 900, "iat": 900, "iss": "https://issuer", "aud": ["a", "b"]
        }))
        .unwrap();
        let aud = vec!["b".to_owned()];
        let e = |now| Expectations {
            now,
            leeway: 60,
            issuer: Some("https://issuer"),
            audiences: Some(&aud),
        };
        assert_eq!(check_claims(&claims, &e(950)), Ok(()));
        assert_eq!(check_claims(&claims, &e(1060)), Ok(()));
        assert_eq!(check_claims(&claims, &e(1061)), Err(Rejection::Expired));
        assert_eq!(check_claims(&claims, &e(840)), Ok(()));
        assert_eq!(check_claims(&claims, &e(839)), Err(Rejection::NotYetValid));
        let other = vec!["c".to_owned()];
        let wrong_aud = Expectations {
            audiences: Some(&other),
            ..e(950)
        };
        assert_eq!(
            check_claims(&claims, &wrong_aud),
            Err(Rejection::WrongAudience)
        );
        let wrong_iss = Expectations {
            issuer: Some("https://other"),
            ..e(950)
        };
        assert_eq!(
            check_claims(&claims, &wrong_iss),
            Err(Rejection::WrongIssuer)
        );
        let mut no_exp = claims.clone();
        no_exp.remove("exp");
        assert_eq!(
            check_claims(&no_exp, &e(950)),
            Err(Rejection::MissingClaim("exp"))
        );
    }

    #[test]
    fn pem_blocks_split_lists_and_reject_junk() {
        let a = "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----";
        let joined = format!("{a},\n{a}\n");
        assert_eq!(pem_blocks(&joined).unwrap().len(), 2);
        assert!(pem_blocks("junk").is_none());
        assert!(pem_blocks("-----BEGIN PUBLIC KEY-----\nAAAA").is_none());
        assert_eq!(pem_blocks(" , ").unwrap().len(), 0);
    }

    #[test]
    fn json_pointer_claims() {
        let claims: Map<String, Value> = serde_json::from_value(serde_json::json!({
            "kubernetes.io": {"namespace": "team-a"}, "a/b": 1
        }))
        .unwrap();
        assert_eq!(
            claim(&claims, "/kubernetes.io/namespace"),
            Some(&Value::String("team-a".into()))
        );
        assert_eq!(claim(&claims, "/a~1b"), Some(&serde_json::json!(1)));
        assert_eq!(claim(&claims, "kubernetes.io/namespace"), None);
    }
}
