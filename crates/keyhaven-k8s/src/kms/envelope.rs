//! The plugin's wire formats: the ciphertext it returns from `Encrypt` (stored by the
//! apiserver in etcd, next to every object it protects) and the `key_id`.
//!
//! Ciphertext: `K` `H` (magic), a format byte (`1`), then the transit ciphertext
//! `vault:v<N>:<base64>` as ASCII. It names the transit key version `N` that wrapped the
//! seed, so a `Decrypt` needs nothing else; it is at most [`MAX_CIPHERTEXT`] bytes.
//!
//! `key_id`: `kh1:<mount>/<name>:<N>:<created>`, with `created` the creation time (Unix
//! seconds) of version `N`. Rotation raises `N`; a key deleted and created again starts at
//! version 1 with another creation time, so an id is never issued twice for different key
//! material (unless a key is deleted and re-created within the same second).

use std::fmt;

/// The apiserver's limit on `EncryptResponse.ciphertext` (`encryptedDEKSourceMaxSize`).
pub const MAX_CIPHERTEXT: usize = 1024;
/// The apiserver's limit on `key_id` (`KeyIDMaxSize`).
pub const MAX_KEY_ID: usize = 1024;
/// The apiserver's limit on annotation keys plus values.
pub const MAX_ANNOTATIONS: usize = 32 * 1024;
/// The largest plaintext `Encrypt` accepts: the apiserver sends 32-byte seeds, and a
/// plaintext this size still gives a ciphertext within [`MAX_CIPHERTEXT`].
pub const MAX_PLAINTEXT: usize = 512;

const MAGIC: &[u8; 2] = b"KH";
const FORMAT: u8 = 1;
const KEY_ID_PREFIX: &str = "kh1:";
const TRANSIT_PREFIX: &str = "vault:v";

/// Why bytes are not a ciphertext or `key_id` of this plugin. The messages name the
/// defect, never the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    /// Empty input.
    #[error("it is empty")]
    Empty,
    /// Longer than the apiserver allows.
    #[error("it is longer than {0} bytes")]
    TooLong(usize),
    /// Does not start with the plugin's magic bytes.
    #[error("it does not start with this plugin's marker (written by another KMS plugin?)")]
    Magic,
    /// A format version this build does not know.
    #[error("it has format version {0}, which this plugin does not know")]
    Format(u8),
    /// The transit part is not `vault:v<N>:<base64>`.
    #[error("its transit part is malformed: {0}")]
    Transit(&'static str),
    /// The `key_id` is not `kh1:<mount>/<name>:<version>:<created>`.
    #[error("it is not a key_id of this plugin: {0}")]
    KeyId(&'static str),
}

/// A parsed ciphertext: the transit ciphertext and the key version it names.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Envelope<'a> {
    /// The transit key version that wrapped the seed.
    pub version: u32,
    /// `vault:v<N>:<base64>`, to send to `transit/decrypt`.
    pub transit: &'a str,
}

impl fmt::Debug for Envelope<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The transit ciphertext is not secret, but long; the version says enough.
        f.debug_struct("Envelope")
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

/// Parses a version number: ASCII digits, no sign, no leading zero, at least 1.
fn version_number(s: &str) -> Option<u32> {
    if s.is_empty() || s.len() > 10 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if s.starts_with('0') {
        return None;
    }
    s.parse().ok().filter(|v| *v >= 1)
}

/// Parses `vault:v<N>:<base64>` (standard alphabet, padded): the version `N`.
pub fn transit_version(transit: &str) -> Result<u32, FormatError> {
    let rest = transit
        .strip_prefix(TRANSIT_PREFIX)
        .ok_or(FormatError::Transit("it does not start with vault:v"))?;
    let (version, body) = rest
        .split_once(':')
        .ok_or(FormatError::Transit("no ':' after the version"))?;
    let version = version_number(version).ok_or(FormatError::Transit("bad version number"))?;
    if body.is_empty() || body.len() % 4 != 0 {
        return Err(FormatError::Transit("the base64 part has a bad length"));
    }
    let unpadded = body.trim_end_matches('=');
    if body.len() - unpadded.len() > 2
        || !unpadded
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
    {
        return Err(FormatError::Transit("the base64 part has bad characters"));
    }
    Ok(version)
}

/// Parses a ciphertext this plugin returned from `Encrypt`.
pub fn parse(ciphertext: &[u8]) -> Result<Envelope<'_>, FormatError> {
    if ciphertext.is_empty() {
        return Err(FormatError::Empty);
    }
    if ciphertext.len() > MAX_CIPHERTEXT {
        return Err(FormatError::TooLong(MAX_CIPHERTEXT));
    }
    let rest = ciphertext
        .strip_prefix(MAGIC.as_slice())
        .ok_or(FormatError::Magic)?;
    let (&format, transit) = rest.split_first().ok_or(FormatError::Format(0))?;
    if format != FORMAT {
        return Err(FormatError::Format(format));
    }
    let transit = std::str::from_utf8(transit).map_err(|_| FormatError::Transit("not ASCII"))?;
    let version = transit_version(transit)?;
    Ok(Envelope { version, transit })
}

/// Builds a ciphertext around a transit ciphertext; refuses one that would not fit.
pub fn encode(transit: &str) -> Result<Vec<u8>, FormatError> {
    transit_version(transit)?;
    let mut out = Vec::with_capacity(MAGIC.len() + 1 + transit.len());
    out.extend_from_slice(MAGIC);
    out.push(FORMAT);
    out.extend_from_slice(transit.as_bytes());
    if out.len() > MAX_CIPHERTEXT {
        return Err(FormatError::TooLong(MAX_CIPHERTEXT));
    }
    Ok(out)
}

/// The identity of one version of a transit key, as carried in a `key_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyId {
    /// `<mount>/<name>` of the transit key.
    pub key: String,
    /// The key version.
    pub version: u32,
    /// The version's creation time, Unix seconds.
    pub created: u64,
}

impl KeyId {
    /// The `key_id` string.
    pub fn encode(&self) -> String {
        format!(
            "{KEY_ID_PREFIX}{}:{}:{}",
            self.key, self.version, self.created
        )
    }

    /// Parses a `key_id` this plugin issued.
    pub fn parse(s: &str) -> Result<KeyId, FormatError> {
        if s.is_empty() {
            return Err(FormatError::Empty);
        }
        if s.len() > MAX_KEY_ID {
            return Err(FormatError::TooLong(MAX_KEY_ID));
        }
        let rest = s
            .strip_prefix(KEY_ID_PREFIX)
            .ok_or(FormatError::KeyId("it does not start with kh1:"))?;
        let mut parts = rest.rsplitn(3, ':');
        let (Some(created), Some(version), Some(key)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(FormatError::KeyId("it has too few ':'-separated parts"));
        };
        let version = version_number(version).ok_or(FormatError::KeyId("bad version number"))?;
        if created.is_empty() || created.len() > 20 || !created.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(FormatError::KeyId("bad creation time"));
        }
        let created = created
            .parse()
            .map_err(|_| FormatError::KeyId("bad creation time"))?;
        let valid_key = key.rsplit_once('/').is_some_and(|(m, n)| {
            !m.is_empty() && !n.is_empty() && !n.contains('/') && !key.contains(':')
        });
        if !valid_key {
            return Err(FormatError::KeyId("the key is not <mount>/<name>"));
        }
        Ok(KeyId {
            key: key.to_owned(),
            version,
            created,
        })
    }
}

/// Checks annotations against the apiserver's rules: every key a fully qualified domain
/// name (lowercase RFC 1123 subdomain of at least two labels, a trailing `.` allowed), keys
/// plus values at most [`MAX_ANNOTATIONS`] bytes.
pub fn check_annotations<'a>(
    annotations: impl IntoIterator<Item = (&'a str, &'a [u8])>,
) -> Result<(), String> {
    let mut total = 0usize;
    for (key, value) in annotations {
        if !is_fqdn(key) {
            return Err(format!(
                "annotation key {key:?} is not a fully qualified domain name"
            ));
        }
        total = total.saturating_add(key.len()).saturating_add(value.len());
    }
    if total > MAX_ANNOTATIONS {
        return Err(format!(
            "annotations take {total} bytes, more than {MAX_ANNOTATIONS}"
        ));
    }
    Ok(())
}

/// A fully qualified domain name as the apiserver's `IsFullyQualifiedDomainName` checks it.
pub fn is_fqdn(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() || name.len() > 253 {
        return false;
    }
    let mut labels = 0usize;
    for label in name.split('.') {
        labels += 1;
        let bytes = label.as_bytes();
        let ok = !bytes.is_empty()
            && bytes.len() <= 63
            && bytes
                .iter()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
            && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
            && bytes.last().is_some_and(u8::is_ascii_alphanumeric);
        if !ok {
            return false;
        }
    }
    labels >= 2
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRANSIT: &str =
        "vault:v3:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJygpKissLS4vMDEyMzQ1Njc4OTo7";

    #[test]
    fn a_ciphertext_round_trips_and_names_its_version() {
        let ct = encode(TRANSIT).unwrap();
        assert!(ct.len() <= MAX_CIPHERTEXT);
        let env = parse(&ct).unwrap();
        assert_eq!(env.version, 3);
        assert_eq!(env.transit, TRANSIT);
    }

    #[test]
    fn malformed_ciphertexts_are_refused_with_the_reason() {
        let cases: &[(&[u8], FormatError)] = &[
            (b"", FormatError::Empty),
            (b"vault:v1:AAAA", FormatError::Magic),
            (b"KH", FormatError::Format(0)),
            (b"KH\x02vault:v1:AAAA", FormatError::Format(2)),
            (
                b"KH\x01vault:v0:AAAA",
                FormatError::Transit("bad version number"),
            ),
            (
                b"KH\x01vault:v01:AAAA",
                FormatError::Transit("bad version number"),
            ),
            (
                b"KH\x01vault:v1:AAA",
                FormatError::Transit("the base64 part has a bad length"),
            ),
            (
                b"KH\x01vault:v1:AA*A",
                FormatError::Transit("the base64 part has bad characters"),
            ),
            (
                b"KH\x01vault:v1:A===",
                FormatError::Transit("the base64 part has bad characters"),
            ),
            (
                b"KH\x01vault:v1",
                FormatError::Transit("no ':' after the version"),
            ),
            (b"KH\x01\xff\xfe", FormatError::Transit("not ASCII")),
        ];
        for (input, want) in cases {
            assert_eq!(parse(input).unwrap_err(), *want, "{input:?}");
        }
        let long = [b'K'; MAX_CIPHERTEXT + 1];
        assert_eq!(
            parse(&long).unwrap_err(),
            FormatError::TooLong(MAX_CIPHERTEXT)
        );
        let huge = format!("vault:v1:{}", "A".repeat(MAX_CIPHERTEXT));
        assert_eq!(
            encode(&huge).unwrap_err(),
            FormatError::TooLong(MAX_CIPHERTEXT)
        );
    }

    #[test]
    fn a_key_id_round_trips_and_garbage_is_refused() {
        let id = KeyId {
            key: "transit/k8s-etcd".into(),
            version: 7,
            created: 1_796_078_363,
        };
        let s = id.encode();
        assert_eq!(s, "kh1:transit/k8s-etcd:7:1796078363");
        assert_eq!(KeyId::parse(&s).unwrap(), id);
        let nested = KeyId::parse("kh1:team/transit/k:1:5").unwrap();
        assert_eq!(nested.key, "team/transit/k");
        for bad in [
            "",
            "kms-test",
            "kh1:",
            "kh1:transit/k:1",
            "kh1:transit/k:0:5",
            "kh1:transit/k:x:5",
            "kh1:transit/k:1:",
            "kh1:transit/k:1:-5",
            "kh1:k:1:5",
            "kh1:/k:1:5",
            "kh1:transit/:1:5",
        ] {
            assert!(KeyId::parse(bad).is_err(), "{bad:?}");
        }
        assert!(KeyId::parse(&"k".repeat(MAX_KEY_ID + 1)).is_err());
    }

    #[test]
    fn annotation_keys_must_be_fqdns_and_fit_32_kib() {
        assert!(is_fqdn("transit-key.kms.keyhaven.io"));
        assert!(is_fqdn("version.encryption.remote.io."));
        for bad in [
            "version",
            "Upper.example.com",
            "-a.example",
            "a..b",
            "a_b.example",
            "",
        ] {
            assert!(!is_fqdn(bad), "{bad:?}");
        }
        assert!(check_annotations([("a.example", b"1".as_slice())]).is_ok());
        let big = vec![b'x'; MAX_ANNOTATIONS];
        let err = check_annotations([("a.example", big.as_slice())]).unwrap_err();
        assert!(err.contains("more than 32768"), "{err}");
    }
}
