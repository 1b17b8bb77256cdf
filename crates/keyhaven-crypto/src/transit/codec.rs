//! The `vault:v<N>:<base64>` text envelope and the base64 variants transit uses.
//!
//! The envelope carries only the key version; the key is named by the request path, and the
//! algorithm, associated data and derivation context are not in it. This is byte for byte the
//! layout OpenBao writes (`DefaultVersionTemplate = "vault:v{{version}}:"`), so ciphertexts,
//! signatures and HMACs move between the two unchanged.
//!
//! The base64 here is written out rather than taken from a crate: the crypto core keeps its
//! dependency list to the provider, and the codec is small, strict and fuzzed
//! (`fuzz/fuzz_targets/transit_ciphertext.rs`).

use crate::CryptoError;

/// The prefix every transit envelope starts with.
pub const PREFIX: &str = "vault:v";

/// The largest key version an envelope may name (Vault's versions are Go `int`s; ours are
/// `u32`).
pub const MAX_VERSION: u32 = u32::MAX;

/// Which base64 alphabet and padding a value uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Base64 {
    /// RFC 4648 §4, with `=` padding (Go's `base64.StdEncoding`). Ciphertexts, HMACs, ASN.1
    /// signatures and every plaintext field use it.
    Standard,
    /// RFC 4648 §5, no padding (Go's `base64.RawURLEncoding`). JWS-marshalled signatures use it.
    UrlNoPad,
}

const STD: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// A byte that is not a symbol of the alphabet, in a [`decode_table`]; every symbol's value
/// is below 64, so one test of the two high bits finds it.
const NOT_A_SYMBOL: u8 = 0xff;

/// Every byte's value in `alphabet`, or [`NOT_A_SYMBOL`], for decoding by table.
const fn decode_table(alphabet: &[u8; 64]) -> [u8; 256] {
    let mut table = [NOT_A_SYMBOL; 256];
    let mut value = 0;
    while value < 64 {
        #[allow(
            clippy::indexing_slicing,
            reason = "evaluated at build time: an index out of range fails the build"
        )]
        {
            table[alphabet[value] as usize] = value as u8;
        }
        value += 1;
    }
    table
}

const STD_VALUES: [u8; 256] = decode_table(STD);
const URL_VALUES: [u8; 256] = decode_table(URL);

impl Base64 {
    fn alphabet(self) -> &'static [u8; 64] {
        match self {
            Base64::Standard => STD,
            Base64::UrlNoPad => URL,
        }
    }

    fn values(self) -> &'static [u8; 256] {
        match self {
            Base64::Standard => &STD_VALUES,
            Base64::UrlNoPad => &URL_VALUES,
        }
    }

    /// The encoded length of `n` bytes.
    pub fn encoded_len(self, n: usize) -> usize {
        match self {
            Base64::Standard => n.div_ceil(3).saturating_mul(4),
            Base64::UrlNoPad => (n / 3) * 4 + [0, 2, 3].get(n % 3).copied().unwrap_or(0),
        }
    }

    /// Appends the encoding of `bytes` to `out`, which only ever gains ASCII.
    pub fn append_to(self, bytes: &[u8], out: &mut Vec<u8>) {
        let alphabet = self.alphabet();
        let sym = |i: u32| alphabet.get((i & 63) as usize).copied().unwrap_or(b'A');
        let start = out.len();
        // Padding, where there is any, is already in place.
        out.resize(start + self.encoded_len(bytes.len()), b'=');
        let Some(dst) = out.get_mut(start..) else {
            return;
        };
        let mut groups = bytes.chunks_exact(3);
        let mut quads = dst.chunks_exact_mut(4);
        for (group, quad) in (&mut groups).zip(&mut quads) {
            if let ([a, b, c], [w, x, y, z]) = (group, quad) {
                let n = u32::from(*a) << 16 | u32::from(*b) << 8 | u32::from(*c);
                (*w, *x, *y, *z) = (sym(n >> 18), sym(n >> 12), sym(n >> 6), sym(n));
            }
        }
        let rest = groups.remainder();
        if rest.is_empty() {
            return;
        }
        let n =
            rest.iter().fold(0u32, |acc, &b| (acc << 8) | u32::from(b)) << (8 * (3 - rest.len()));
        let symbols = [sym(n >> 18), sym(n >> 12), sym(n >> 6)];
        let tail = quads.next().unwrap_or_else(|| quads.into_remainder());
        for (d, s) in tail.iter_mut().zip(symbols.iter().take(rest.len() + 1)) {
            *d = *s;
        }
    }

    /// The encoding of `bytes`.
    pub fn encode(self, bytes: &[u8]) -> String {
        let mut out = Vec::new();
        self.append_to(bytes, &mut out);
        ascii_string(out)
    }

    /// Decodes `text` strictly: no whitespace, correct padding (required for
    /// [`Base64::Standard`], refused for [`Base64::UrlNoPad`]) and zero trailing bits, so each
    /// byte string has exactly one accepted encoding.
    ///
    /// The caller zeroizes the result if it is secret.
    ///
    /// # Errors
    ///
    /// [`CryptoError::Format`] naming what is wrong (never the input).
    pub fn decode(self, text: &str) -> Result<Vec<u8>, CryptoError> {
        const BAD: CryptoError = CryptoError::Format {
            what: "invalid base64",
        };
        let bytes = text.as_bytes();
        let body = match self {
            Base64::Standard => {
                if !bytes.len().is_multiple_of(4) {
                    return Err(BAD);
                }
                let pad = bytes.iter().rev().take_while(|&&c| c == b'=').count();
                if pad > 2 {
                    return Err(BAD);
                }
                bytes.get(..bytes.len() - pad).ok_or(BAD)?
            }
            Base64::UrlNoPad => {
                if bytes.len() % 4 == 1 {
                    return Err(BAD);
                }
                bytes
            }
        };
        let values = self.values();
        let value = |c: &u8| values.get(usize::from(*c)).copied().unwrap_or(NOT_A_SYMBOL);
        let full = body.len() / 4;
        let tail = match body.len() % 4 {
            0 => 0,
            2 => 1,
            3 => 2,
            _ => return Err(BAD),
        };
        let mut out = vec![0u8; full * 3 + tail];
        let mut quads = body.chunks_exact(4);
        for (quad, group) in (&mut quads).zip(out.chunks_exact_mut(3)) {
            if let ([a, b, c, d], [x, y, z]) = (quad, group) {
                let (a, b, c, d) = (value(a), value(b), value(c), value(d));
                if (a | b | c | d) & 0xc0 != 0 {
                    return Err(BAD);
                }
                let n = u32::from(a) << 18 | u32::from(b) << 12 | u32::from(c) << 6 | u32::from(d);
                (*x, *y, *z) = ((n >> 16) as u8, (n >> 8) as u8, n as u8);
            }
        }
        let rest = quads.remainder();
        let mut n = 0u32;
        for ch in rest {
            let v = value(ch);
            if v & 0xc0 != 0 {
                return Err(BAD);
            }
            n = (n << 6) | u32::from(v);
        }
        let last = out.get_mut(full * 3..).unwrap_or_default();
        match (rest.len(), last) {
            (0, _) => {}
            // The unused low bits must be zero: one encoding per byte string.
            (2, [x]) if n & 0xf == 0 => *x = (n >> 4) as u8,
            (3, [x, y]) if n & 0x3 == 0 => (*x, *y) = ((n >> 10) as u8, (n >> 2) as u8),
            _ => return Err(BAD),
        }
        Ok(out)
    }
}

/// `bytes`, which hold only ASCII, as a `String`.
fn ascii_string(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// Builds `vault:v<version>:<encoding of body>`.
pub fn encode(version: u32, body: &[u8], b64: Base64) -> String {
    let mut out = Vec::new();
    append_envelope(version, body, b64, &mut out);
    ascii_string(out)
}

/// Appends `vault:v<version>:<encoding of body>` to `out`, which only ever gains ASCII.
pub fn append_envelope(version: u32, body: &[u8], b64: Base64, out: &mut Vec<u8>) {
    out.reserve(PREFIX.len() + 11 + b64.encoded_len(body.len()));
    out.extend_from_slice(PREFIX.as_bytes());
    append_u32(out, version);
    out.push(b':');
    b64.append_to(body, out);
}

/// Appends `v` in decimal.
pub fn append_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

/// Splits `vault:v<N>:<rest>` into the version and the still-encoded rest.
///
/// Only the canonical spelling is accepted: `N` is a decimal number from 1 to
/// [`MAX_VERSION`] without leading zeros, as [`encode`] writes it. (OpenBao also reads
/// `v0` as version 1, for envelopes from Vault's first releases, and Go's `Atoi` lets
/// leading zeros through; keyhaven never wrote either, and one spelling per envelope
/// keeps ciphertexts comparable and unmalleable.)
///
/// # Errors
///
/// [`CryptoError::Format`] for a missing prefix, a missing separator or a version that is not
/// a canonical decimal number in range.
pub fn split(text: &str) -> Result<(u32, &str), CryptoError> {
    const BAD_VERSION: CryptoError = CryptoError::Format {
        what: "invalid ciphertext: version number could not be decoded",
    };
    const NOT_CANONICAL: CryptoError = CryptoError::Format {
        what: "invalid ciphertext: version number must be at least 1, without leading zeros",
    };
    let rest = text.strip_prefix(PREFIX).ok_or(CryptoError::Format {
        what: "invalid ciphertext: no prefix",
    })?;
    let (ver, body) = rest.split_once(':').ok_or(CryptoError::Format {
        what: "invalid ciphertext: wrong number of fields",
    })?;
    if ver.is_empty() || ver.len() > 10 || !ver.bytes().all(|b| b.is_ascii_digit()) {
        return Err(BAD_VERSION);
    }
    if ver.starts_with('0') {
        return Err(NOT_CANONICAL);
    }
    let ver: u32 = ver.parse().map_err(|_| BAD_VERSION)?;
    Ok((ver, body))
}

/// Parses `vault:v<N>:<base64>` into the version and the decoded body.
///
/// # Errors
///
/// As [`split`], plus [`CryptoError::Format`] for a body that is not valid base64.
pub fn decode(text: &str, b64: Base64) -> Result<(u32, Vec<u8>), CryptoError> {
    let (ver, body) = split(text)?;
    let body = b64.decode(body).map_err(|_| CryptoError::Format {
        what: "invalid ciphertext: could not decode base64",
    })?;
    Ok((ver, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc4648_vectors() {
        for (raw, std, url) in [
            ("", "", ""),
            ("f", "Zg==", "Zg"),
            ("fo", "Zm8=", "Zm8"),
            ("foo", "Zm9v", "Zm9v"),
            ("foob", "Zm9vYg==", "Zm9vYg"),
            ("fooba", "Zm9vYmE=", "Zm9vYmE"),
            ("foobar", "Zm9vYmFy", "Zm9vYmFy"),
        ] {
            assert_eq!(Base64::Standard.encode(raw.as_bytes()), std);
            assert_eq!(Base64::UrlNoPad.encode(raw.as_bytes()), url);
            assert_eq!(Base64::Standard.decode(std).unwrap(), raw.as_bytes());
            assert_eq!(Base64::UrlNoPad.decode(url).unwrap(), raw.as_bytes());
            assert_eq!(Base64::Standard.encoded_len(raw.len()), std.len());
            assert_eq!(Base64::UrlNoPad.encoded_len(raw.len()), url.len());
        }
        assert_eq!(Base64::Standard.encode(&[0xfb, 0xff]), "+/8=");
        assert_eq!(Base64::UrlNoPad.encode(&[0xfb, 0xff]), "-_8");
    }

    #[test]
    fn the_decoding_tables_invert_the_alphabets() {
        for (b64, alphabet) in [(Base64::Standard, STD), (Base64::UrlNoPad, URL)] {
            let values = b64.values();
            for c in 0..=255u8 {
                let expected = alphabet
                    .iter()
                    .position(|&s| s == c)
                    .map_or(NOT_A_SYMBOL, |i| i as u8);
                assert_eq!(values[usize::from(c)], expected, "{b64:?} {c}");
            }
        }
    }

    #[test]
    fn every_length_round_trips() {
        let bytes: Vec<u8> = (0..=255u8).rev().collect();
        for n in 0..bytes.len() {
            for b64 in [Base64::Standard, Base64::UrlNoPad] {
                let mut out = b"prefix:".to_vec();
                b64.append_to(&bytes[..n], &mut out);
                assert_eq!(out.len(), 7 + b64.encoded_len(n));
                let text = std::str::from_utf8(&out[7..]).unwrap();
                assert_eq!(b64.encode(&bytes[..n]), text);
                assert_eq!(b64.decode(text).unwrap(), &bytes[..n], "{b64:?} {n}");
            }
        }
    }

    #[test]
    fn strict_decoding() {
        for bad in [
            "Zg", "Zg=", "Zh==", "Z===", "Zm9v\n", " Zm9v", "Zm9v=", "-_8=", "Zm8=Zm8=",
        ] {
            assert!(Base64::Standard.decode(bad).is_err(), "{bad:?}");
        }
        for bad in ["Zg==", "Z", "Zh", "+/8"] {
            assert!(Base64::UrlNoPad.decode(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn envelope_round_trip() {
        let s = encode(42, b"\x00\x01\x02", Base64::Standard);
        assert_eq!(s, "vault:v42:AAEC");
        assert_eq!(decode(&s, Base64::Standard).unwrap(), (42, vec![0, 1, 2]));
        assert_eq!(
            encode(u32::MAX, b"", Base64::Standard),
            "vault:v4294967295:"
        );
        assert!(split("vault:v0:abc").is_err());
    }

    /// Regression (issue 10, item 11b): `vault:v01:`, `vault:v0:` and other spellings of an envelope were
    /// accepted; only the one `encode` writes is.
    #[test]
    fn non_canonical_transit_ciphertext_accepted() {
        for bad in [
            "vault:v01:AAEC",
            "vault:v001:AAEC",
            "vault:v0:AAEC",
            "vault:v00:AAEC",
            "vault:v0042:AAEC",
            "vault:v1:AAE",
            "vault:v1:AAF=",
            "vault:v1:AAEC=",
            "vault:v1:AA EC",
            "vault:v1:AAEC\n",
            "vault:v1:-_8=",
        ] {
            assert!(
                decode(bad, Base64::Standard).is_err(),
                "{bad:?} was accepted"
            );
            assert!(
                split(bad).is_err() || bad.starts_with("vault:v1:"),
                "{bad:?}"
            );
        }
        for good in ["vault:v1:AAEC", "vault:v10:AAEC", "vault:v4294967295:Zg=="] {
            let (ver, body) = decode(good, Base64::Standard).unwrap();
            assert_eq!(encode(ver, &body, Base64::Standard), good);
        }
    }

    #[test]
    fn envelope_errors() {
        for bad in [
            "",
            "vault:",
            "vault:v",
            "vault:v1",
            "vault:vx:AAAA",
            "vault:v-1:AAAA",
            "vault:v+1:AAAA",
            "vault:v4294967296:AAAA",
            "Vault:v1:AAAA",
        ] {
            assert!(decode(bad, Base64::Standard).is_err(), "{bad:?}");
        }
        assert_eq!(
            decode("vault:v1:!!!!", Base64::Standard).unwrap_err(),
            CryptoError::Format {
                what: "invalid ciphertext: could not decode base64"
            }
        );
    }
}
