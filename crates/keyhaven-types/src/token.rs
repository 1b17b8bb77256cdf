//! The token format: an identifiable prefix, random body and checksum.
//!
//! `khs.` (service token) or `khb.` (batch token), then [`RANDOM_LEN`] base62 characters
//! drawn uniformly, then [`CHECKSUM_LEN`] base62 characters encoding the CRC-32 (IEEE) of
//! everything before them. The prefix lets secret scanners match keyhaven tokens
//! exactly; the checksum lets them (and the server) reject typos and random strings
//! without a lookup. Parsing is a plain split, never a regex.
//!
//! Operators may still choose arbitrary token ids for the dev-mode root token (as Vault's
//! `-dev-root-token-id` allows); those do not parse as [`TokenKind`] and are looked up as
//! they are.

use std::fmt;

/// Number of random base62 characters in a token (≈178 bits).
pub const RANDOM_LEN: usize = 30;
/// Number of base62 checksum characters.
pub const CHECKSUM_LEN: usize = 6;

const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// What a well-formed token is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// A service token, stored server-side (`khs.`).
    Service,
    /// A batch token (`khb.`).
    Batch,
}

impl TokenKind {
    /// The token's prefix, dot included.
    pub const fn prefix(self) -> &'static str {
        match self {
            TokenKind::Service => "khs.",
            TokenKind::Batch => "khb.",
        }
    }
}

/// Why a string is not a well-formed keyhaven token. Carries no part of the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenFormatError {
    /// The prefix is not `khs.` or `khb.`.
    #[error("token does not have a keyhaven prefix")]
    UnknownPrefix,
    /// Wrong length or characters outside base62.
    #[error("token is malformed")]
    Malformed,
    /// The checksum does not match.
    #[error("token checksum does not match")]
    BadChecksum,
}

/// Build a new token of `kind`, drawing randomness from `fill` (the caller's CSPRNG).
pub fn generate(kind: TokenKind, mut fill: impl FnMut(&mut [u8])) -> String {
    let mut out = String::with_capacity(4 + RANDOM_LEN + CHECKSUM_LEN);
    out.push_str(kind.prefix());
    let mut pool = [0u8; 64];
    let mut produced = 0;
    while produced < RANDOM_LEN {
        fill(&mut pool);
        for &b in &pool {
            // Rejection sampling keeps the distribution uniform: 248 = 4 * 62.
            if b < 248
                && produced < RANDOM_LEN
                && let Some(&c) = ALPHABET.get(usize::from(b % 62))
            {
                out.push(char::from(c));
                produced += 1;
            }
        }
    }
    pool.fill(0);
    let sum = checksum(out.as_bytes());
    out.push_str(&sum);
    out
}

/// The checksum of `data`: CRC-32 (IEEE) in [`CHECKSUM_LEN`] base62 characters, zero
/// padded. The same layout GitHub and npm use for their tokens' checksums.
pub fn checksum(data: &[u8]) -> String {
    checksum_digits(data)
        .iter()
        .map(|&b| char::from(b))
        .collect()
}

/// Whether `sum` is the checksum of `data` (what [`checksum`] gives), without building
/// a string: every request's token goes through this.
pub fn checksum_matches(data: &[u8], sum: &[u8]) -> bool {
    checksum_digits(data) == sum
}

fn checksum_digits(data: &[u8]) -> [u8; CHECKSUM_LEN] {
    let mut value = crc32(data);
    let mut digits = [b'0'; CHECKSUM_LEN];
    for slot in digits.iter_mut().rev() {
        if let Some(&c) = ALPHABET.get((value % 62) as usize) {
            *slot = c;
        }
        value /= 62;
    }
    digits
}

/// Check that `token` is a well-formed keyhaven token and say which kind.
pub fn parse(token: &str) -> Result<TokenKind, TokenFormatError> {
    let kind = if token.starts_with(TokenKind::Service.prefix()) {
        TokenKind::Service
    } else if token.starts_with(TokenKind::Batch.prefix()) {
        TokenKind::Batch
    } else {
        return Err(TokenFormatError::UnknownPrefix);
    };
    let expected_len = kind.prefix().len() + RANDOM_LEN + CHECKSUM_LEN;
    if token.len() != expected_len || !token.is_ascii() {
        return Err(TokenFormatError::Malformed);
    }
    let (body, checksum) = token.split_at(expected_len - CHECKSUM_LEN);
    let random = body
        .get(kind.prefix().len()..)
        .ok_or(TokenFormatError::Malformed)?;
    if !random
        .bytes()
        .chain(checksum.bytes())
        .all(|b| b.is_ascii_alphanumeric())
    {
        return Err(TokenFormatError::Malformed);
    }
    if !checksum_matches(body.as_bytes(), checksum.as_bytes()) {
        return Err(TokenFormatError::BadChecksum);
    }
    Ok(kind)
}

/// The reflected IEEE polynomial's remainder of every byte value, computed at build time.
const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut n = 0;
    while n < 256 {
        #[allow(clippy::cast_possible_truncation, reason = "n < 256")]
        let mut crc = n as u32;
        let mut bit = 0;
        while bit < 8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xEDB8_8320 & mask);
            bit += 1;
        }
        #[allow(
            clippy::indexing_slicing,
            reason = "evaluated at build time: an index out of range fails the build"
        )]
        {
            table[n] = crc;
        }
        n += 1;
    }
    table
};

/// `CRC_TABLES[k][b]`: the remainder of byte value `b` followed by `k` zero bytes, for
/// taking eight bytes a step ("slicing by 8"); `CRC_TABLES[0]` is [`CRC_TABLE`].
const CRC_TABLES: [[u32; 256]; 8] = {
    let mut tables = [CRC_TABLE; 8];
    let mut k = 1;
    while k < 8 {
        let mut n = 0;
        while n < 256 {
            #[allow(
                clippy::indexing_slicing,
                reason = "evaluated at build time: an index out of range fails the build"
            )]
            {
                let prev = tables[k - 1][n];
                tables[k][n] = (prev >> 8) ^ CRC_TABLE[(prev & 0xFF) as usize];
            }
            n += 1;
        }
        k += 1;
    }
    tables
};

/// CRC-32 (IEEE 802.3, reflected, as zlib computes it), eight bytes a step: the eight
/// table lookups of a step do not wait on each other, where a byte at a time each
/// waits on the one before.
pub fn crc32(data: &[u8]) -> u32 {
    // `k` is a constant below 8 at every call and the index is masked: no bounds check
    // is left, and `unwrap_or_default` never applies.
    let t = |k: usize, i: u32| {
        CRC_TABLES
            .get(k)
            .and_then(|table| table.get((i & 0xFF) as usize))
            .copied()
            .unwrap_or_default()
    };
    let mut crc = 0xFFFF_FFFFu32;
    let mut steps = data.chunks_exact(8);
    for step in &mut steps {
        if let [b0, b1, b2, b3, b4, b5, b6, b7] = *step {
            let lo = crc ^ u32::from_le_bytes([b0, b1, b2, b3]);
            let hi = u32::from_le_bytes([b4, b5, b6, b7]);
            crc = t(7, lo)
                ^ t(6, lo >> 8)
                ^ t(5, lo >> 16)
                ^ t(4, lo >> 24)
                ^ t(3, hi)
                ^ t(2, hi >> 8)
                ^ t(1, hi >> 16)
                ^ t(0, hi >> 24);
        }
    }
    for &byte in steps.remainder() {
        crc = (crc >> 8) ^ t(0, crc ^ u32::from(byte));
    }
    !crc
}

/// Redacts a token for display: keeps the prefix only.
pub struct Redacted<'a>(pub &'a str);

impl fmt::Display for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.split_once('.') {
            Some((prefix, _)) if prefix.len() <= 4 => write!(f, "{prefix}.<redacted>"),
            _ => f.write_str("<redacted>"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counter_rng() -> impl FnMut(&mut [u8]) {
        let mut state = 0x1234_5678u32;
        move |buf| {
            for b in buf {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                *b = (state >> 24) as u8;
            }
        }
    }

    #[test]
    fn generated_tokens_parse_and_carry_their_prefix() {
        let mut rng = counter_rng();
        for kind in [TokenKind::Service, TokenKind::Batch] {
            let t = generate(kind, &mut rng);
            assert!(t.starts_with(kind.prefix()));
            assert_eq!(t.len(), 4 + RANDOM_LEN + CHECKSUM_LEN);
            assert_eq!(parse(&t), Ok(kind));
        }
    }

    #[test]
    fn any_single_character_change_is_caught() {
        let t = generate(TokenKind::Service, counter_rng());
        for i in 4..t.len() {
            let mut bytes = t.clone().into_bytes();
            bytes[i] = if bytes[i] == b'a' { b'b' } else { b'a' };
            let changed = String::from_utf8(bytes).unwrap();
            assert_eq!(
                parse(&changed),
                Err(TokenFormatError::BadChecksum),
                "position {i}"
            );
        }
    }

    #[test]
    fn foreign_and_malformed_strings_are_refused() {
        assert_eq!(parse("root"), Err(TokenFormatError::UnknownPrefix));
        assert_eq!(parse("hvs.abc"), Err(TokenFormatError::UnknownPrefix));
        assert_eq!(parse("khs.short"), Err(TokenFormatError::Malformed));
        let t = generate(TokenKind::Service, counter_rng());
        let bad = format!("{}-{}", &t[..10], &t[11..]);
        assert_eq!(parse(&bad), Err(TokenFormatError::Malformed));
        assert_eq!(parse(&format!("{t}x")), Err(TokenFormatError::Malformed));
    }

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
        assert_eq!(
            crc32(b"The quick brown fox jumps over the lazy dog"),
            0x414F_A339
        );
    }

    #[test]
    fn the_table_crc_equals_the_bitwise_definition() {
        fn bitwise(data: &[u8]) -> u32 {
            let mut crc = 0xFFFF_FFFFu32;
            for &byte in data {
                crc ^= u32::from(byte);
                for _ in 0..8 {
                    let mask = (crc & 1).wrapping_neg();
                    crc = (crc >> 1) ^ (0xEDB8_8320 & mask);
                }
            }
            !crc
        }
        let mut fill = counter_rng();
        let mut data = vec![0u8; 300];
        fill(&mut data);
        for len in 0..data.len() {
            let slice = &data[..len];
            assert_eq!(crc32(slice), bitwise(slice), "length {len}");
            let sum = checksum(slice);
            assert!(checksum_matches(slice, sum.as_bytes()));
            let mut wrong = sum.into_bytes();
            wrong[0] = if wrong[0] == b'0' { b'1' } else { b'0' };
            assert!(!checksum_matches(slice, &wrong));
            assert!(!checksum_matches(slice, &wrong[1..]));
        }
    }

    #[test]
    fn redacted_display_keeps_only_the_prefix() {
        let t = generate(TokenKind::Service, counter_rng());
        let shown = Redacted(&t).to_string();
        assert_eq!(shown, "khs.<redacted>");
        assert_eq!(Redacted("my-secret-root").to_string(), "<redacted>");
    }
}
