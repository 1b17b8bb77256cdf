//! Offline validators, entropy and placeholder filters. None of these touch the network.

use base64::Engine as _;
use serde::Deserialize;

/// An offline check applied to a candidate secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Validator {
    /// GitHub token: `prefix_` + 30 base62 + base62(CRC32(body)) in 6 characters.
    GithubCrc32,
    /// npm token: same layout as GitHub's.
    NpmCrc32,
    /// keyhaven token: `khs.`/`khb.` + 30 base62 + base62(CRC32(prefix + body)).
    KeyhavenCrc32,
    /// AWS access key id: base32 body, not a run of one character.
    AwsKeyId,
    /// AWS secret access key: 40 characters mixing upper, lower and digits, not hex.
    AwsSecret,
    /// Mixed-case alphanumeric with digits.
    MixedAlnum,
    /// JWT whose header decodes to a JSON object with `alg`.
    Jwt,
    /// PEM private key with a non-trivial base64 body.
    PemBody,
    /// Base64 that decodes to a PEM private key.
    Base64PrivateKey,
    /// Docker `auth`: base64 of `user:password`.
    DockerAuth,
    /// Human password: symbols, letters and digits; not code.
    Password,
    /// Generic secret: not a UUID, not code, mixes letters and digits.
    GenericSecret,
    /// A value assigned to a key that can only hold a password (`ansible_password`,
    /// `ansible_become_pass`…): any value of at least 4 characters that is not code, a
    /// variable reference or a boolean, printable ASCII; symbols are not required.
    PlainPassword,
}

impl Validator {
    /// Whether the validator accepts `s`.
    pub fn check(self, s: &[u8]) -> bool {
        match self {
            Validator::GithubCrc32 | Validator::NpmCrc32 => checksum_after_underscore(s),
            Validator::KeyhavenCrc32 => keyhaven_token(s),
            Validator::AwsKeyId => aws_key_id(s),
            Validator::AwsSecret => aws_secret(s),
            Validator::MixedAlnum => mixed_alnum(s),
            Validator::Jwt => jwt(s),
            Validator::PemBody => pem_body(s),
            Validator::Base64PrivateKey => base64_private_key(s),
            Validator::DockerAuth => docker_auth(s),
            Validator::Password => password(s),
            Validator::GenericSecret => generic_secret(s),
            Validator::PlainPassword => plain_password(s),
        }
    }
}

/// CRC-32 (IEEE) in base62, six characters, zero padded: the checksum of keyhaven's own
/// tokens, which GitHub and npm tokens share.
pub use keyhaven_types::token::checksum as base62_crc32;

/// `PREFIX_` + body(30) + checksum(6) of the body.
fn checksum_after_underscore(s: &[u8]) -> bool {
    let Some(pos) = memchr::memchr(b'_', s) else {
        return false;
    };
    let rest = s.get(pos + 1..).unwrap_or_default();
    if rest.len() != 36 || !rest.iter().all(u8::is_ascii_alphanumeric) {
        return false;
    }
    let (body, sum) = rest.split_at(30);
    keyhaven_types::token::checksum_matches(body, sum)
}

/// A well-formed keyhaven token, checked by the token format's own parser.
fn keyhaven_token(s: &[u8]) -> bool {
    std::str::from_utf8(s).is_ok_and(|t| keyhaven_types::token::parse(t).is_ok())
}

fn aws_key_id(s: &[u8]) -> bool {
    let body = s.get(4..).unwrap_or_default();
    body.iter()
        .all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(b))
        && distinct(body) >= 6
}

fn aws_secret(s: &[u8]) -> bool {
    s.len() == 40
        && s.iter().any(u8::is_ascii_uppercase)
        && s.iter().any(u8::is_ascii_lowercase)
        && s.iter().any(u8::is_ascii_digit)
        && distinct(s) >= 15
}

fn mixed_alnum(s: &[u8]) -> bool {
    s.iter().any(u8::is_ascii_uppercase)
        && s.iter().any(u8::is_ascii_lowercase)
        && s.iter().any(u8::is_ascii_digit)
}

fn b64_any(s: &[u8]) -> Option<Vec<u8>> {
    let trimmed: Vec<u8> = s.iter().copied().filter(|b| *b != b'=').collect();
    base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(&trimmed)
        .ok()
        .or_else(|| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(&trimmed)
                .ok()
        })
}

fn jwt(s: &[u8]) -> bool {
    let Some(header) = s.split(|b| *b == b'.').next() else {
        return false;
    };
    match b64_any(header) {
        Some(h) => serde_json::from_slice::<serde_json::Value>(&h)
            .ok()
            .is_some_and(|v| v.get("alg").is_some()),
        None => false,
    }
}

fn pem_body(s: &[u8]) -> bool {
    // The body is what lies between the first line break after BEGIN and the END marker.
    let Some(first_nl) = s.iter().position(|b| *b == b'\n' || *b == b'\\') else {
        return false;
    };
    let end = memchr::memmem::find(s, b"-----END").unwrap_or(s.len());
    let body = s.get(first_nl..end).unwrap_or_default();
    let b64 = body
        .iter()
        .filter(|b| b.is_ascii_alphanumeric() || **b == b'+' || **b == b'/')
        .count();
    b64 >= 64 && distinct(body) >= 20
}

fn base64_private_key(s: &[u8]) -> bool {
    b64_any(s).is_some_and(|d| memchr::memmem::find(&d, b"PRIVATE KEY").is_some())
}

fn docker_auth(s: &[u8]) -> bool {
    match b64_any(s) {
        Some(d) => match memchr::memchr(b':', &d) {
            Some(pos) => {
                let pw = d.get(pos + 1..).unwrap_or_default();
                pos > 0 && pw.len() >= 3 && !is_placeholder(pw)
            }
            None => false,
        },
        None => false,
    }
}

fn is_symbol(b: u8) -> bool {
    b.is_ascii_punctuation() && !matches!(b, b'_' | b'.' | b'-')
}

fn looks_like_code(s: &[u8]) -> bool {
    let first = s.first().copied().unwrap_or(b' ');
    // variables, calls, attribute access, references, interpolation, paths
    if matches!(
        first,
        b'$' | b'%' | b'&' | b'*' | b'@' | b'/' | b'\\' | b'~' | b'!' | b'<'
    ) && !s.iter().skip(1).any(|b| b.is_ascii_digit())
    {
        return true;
    }
    // Paths and generics in code (`::std::option::Option<`, `Foo::Bar`).
    if s.windows(2).any(|w| w == b"::") || s.ends_with(b"<") {
        return true;
    }
    if s.contains(&b'(') && s.contains(&b')') {
        return true;
    }
    if s.ends_with(b";") || s.ends_with(b"{") || s.ends_with(b")") {
        return true;
    }
    let ident_like = s
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b':' | b'[' | b']'));
    // Dotted or bracketed identifiers (`args.password`, `cfg["x"]`, `Foo::BAR`).
    if ident_like && (s.contains(&b'.') || s.contains(&b'[') || s.windows(2).any(|w| w == b"::")) {
        let digits = s.iter().filter(|b| b.is_ascii_digit()).count();
        return digits * 4 < s.len();
    }
    false
}

fn password(s: &[u8]) -> bool {
    if s.len() < 8 || s.iter().any(|b| b.is_ascii_whitespace()) || looks_like_code(s) {
        return false;
    }
    let lower = s.iter().any(u8::is_ascii_lowercase);
    let upper = s.iter().any(u8::is_ascii_uppercase);
    let digit = s.iter().any(u8::is_ascii_digit);
    let symbol = s.iter().copied().any(is_symbol);
    let classes = [lower, upper, digit, symbol].iter().filter(|c| **c).count();
    symbol && (lower || upper) && classes >= 3 && distinct(s) >= 6
}

fn plain_password(s: &[u8]) -> bool {
    let lower = s.to_ascii_lowercase();
    s.len() >= 4
        && s.iter().all(u8::is_ascii_graphic)
        && !looks_like_code(s)
        && !matches!(s.first(), Some(b'$' | b'%' | b'!' | b'&' | b'*'))
        && !matches!(
            lower.as_slice(),
            b"true" | b"false" | b"null" | b"none" | b"omit" | b"undef" | b"undefined"
        )
}

fn is_uuid(s: &[u8]) -> bool {
    s.len() == 36
        && s.iter().enumerate().all(|(i, b)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                *b == b'-'
            } else {
                b.is_ascii_hexdigit()
            }
        })
}

fn generic_secret(s: &[u8]) -> bool {
    if is_uuid(s) || looks_like_code(s) || !s.iter().all(u8::is_ascii_graphic) {
        return false;
    }
    let letters = s.iter().any(u8::is_ascii_alphabetic);
    let digits = s.iter().filter(|b| b.is_ascii_digit()).count();
    // Identifiers in SCREAMING_CASE or snake_case with no digits are names, not secrets.
    letters && digits >= 2 && !s.starts_with(b"http") && distinct(s) >= 10
}

fn distinct(s: &[u8]) -> usize {
    let mut seen = [false; 256];
    let mut n = 0;
    for &b in s {
        if let Some(slot) = seen.get_mut(usize::from(b)).filter(|s| !**s) {
            *slot = true;
            n += 1;
        }
    }
    n
}

/// Shannon entropy in bits per byte.
pub fn shannon_entropy(s: &[u8]) -> f64 {
    if s.is_empty() {
        return 0.0;
    }
    let mut counts = [0u32; 256];
    for &b in s {
        if let Some(c) = counts.get_mut(usize::from(b)) {
            *c += 1;
        }
    }
    let len = s.len() as f64;
    counts
        .iter()
        .filter(|c| **c > 0)
        .map(|&c| {
            let p = f64::from(c) / len;
            -p * p.log2()
        })
        .sum()
}

const PLACEHOLDER_WORDS: &[&str] = &[
    "example",
    "changeme",
    "change_me",
    "change-me",
    "placeholder",
    "your_",
    "your-",
    "yourkey",
    "yourtoken",
    "xxxxx",
    "*****",
    "redacted",
    "dummy",
    "sample",
    "replace_me",
    "replaceme",
    "insert_",
    "todo",
    "fixme",
    "00000000",
    "12345678",
    "abcdefgh",
    "deadbeef",
    "lorem",
    "notreal",
    "not_real",
    "not-a-real",
];

/// Whether a secret value is a documented example, a template or a placeholder.
pub fn is_placeholder(s: &[u8]) -> bool {
    if s.is_empty() {
        return true;
    }
    let lower = s.to_ascii_lowercase();
    if PLACEHOLDER_WORDS
        .iter()
        .any(|w| memchr::memmem::find(&lower, w.as_bytes()).is_some())
    {
        return true;
    }
    // Templates and references: {{ }}, ${ }, $( ), <...>, %(...)s, {placeholder}.
    for pat in [&b"{{"[..], b"}}", b"${", b"$(", b"%("] {
        if memchr::memmem::find(s, pat).is_some() {
            return true;
        }
    }
    if s.first() == Some(&b'<') && s.last() == Some(&b'>') {
        return true;
    }
    if s.first() == Some(&b'{') && s.last() == Some(&b'}') {
        return true;
    }
    // One or two distinct characters (e.g. "aaaa", "x0x0").
    distinct(s) <= 3 && s.len() >= 6
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_base62_vector() {
        // Published test vector for the GitHub token checksum.
        assert_eq!(base62_crc32(b"hello"), "0zNvy2");
    }

    #[test]
    fn entropy_bounds() {
        assert!(shannon_entropy(b"aaaa") < 0.01);
        assert!((shannon_entropy(b"ab") - 1.0).abs() < 1e-9);
    }

    #[test]
    fn passwords() {
        assert!(password(b"S3cret!Vault#2024"));
        assert!(!password(b"get_password()"));
        assert!(!password(b"args.password"));
        assert!(!password(b"$DB_PASSWORD"));
        assert!(!password(b"::std::option::Option<"));
        assert!(!password(b"abcdefgh"));
    }

    #[test]
    fn plain_passwords() {
        assert!(plain_password(b"winter2024"));
        assert!(plain_password(b"vagrant"));
        assert!(!plain_password(b"$ANSIBLE_PW"));
        assert!(!plain_password(b"!vault"));
        assert!(!plain_password(b"lookup('env','PW')"));
        assert!(!plain_password(b"none"));
        assert!(!plain_password(b"abc"));
    }

    #[test]
    fn placeholders() {
        assert!(is_placeholder(b"AKIAIOSFODNN7EXAMPLE"));
        assert!(is_placeholder(b"{{ .Values.x }}"));
        assert!(is_placeholder(b"<your-token>"));
        assert!(!is_placeholder(b"Zk3Xq9Lm2Vt8Rw5Yn1Pb7Hc4"));
    }
}
