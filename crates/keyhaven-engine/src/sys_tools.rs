//! `sys/tools/random` and `sys/tools/hash`: random bytes and hashes for clients, with
//! OpenBao's parameters, limits and messages. Transit's `random` is the same function.
//!
//! Random bytes come from the operating system's CSPRNG. OpenBao can also draw from an
//! auto-unseal device (`source` `seal`, or `all` to mix both); keyhaven's Shamir seal
//! has no entropy source, so `seal` answers platform bytes with OpenBao's own warning for
//! a server without one, and `all` is the platform alone, as OpenBao's is then.

use keyhaven_crypto::fill_random;
use keyhaven_crypto::transit::{Base64, HashAlgorithm};
use serde_json::{Map, Value};

use crate::error::{CryptoOp, EngineError};
use crate::params;
use crate::request::Response;

/// The most bytes one `random` call returns (OpenBao's limit).
pub const MAX_RANDOM_BYTES: i64 = 128 * 1024;

/// OpenBao's warning when `seal` entropy was asked of a server that has none.
const NO_SEAL_ENTROPY: &str =
    "no seal/entropy augmentation available, using platform entropy source";

/// Vault's warning for body fields named like the route's path segments: only the path
/// is read.
fn replaced_by_path(data: &Map<String, Value>, captures: &[&str]) -> Option<String> {
    let named: Vec<&str> = captures
        .iter()
        .copied()
        .filter(|c| data.contains_key(*c))
        .collect();
    (!named.is_empty()).then(|| {
        format!(
            "Endpoint replaced the value of these parameters with the values captured from the endpoint's path: [{}]",
            named.join(" ")
        )
    })
}

/// `random[/{source}][/{bytes}]`: `first` and `second` are the optional path segments
/// (a source then a count, or a count alone).
pub(crate) fn random(
    first: Option<&str>,
    second: Option<&str>,
    data: &Map<String, Value>,
) -> Result<Response, EngineError> {
    let (source, url_bytes) = match (first, second) {
        (Some(source), Some(n)) => (Some(source), Some(n)),
        (Some(s), None) if is_source(s) => (Some(s), None),
        (Some(n), None) => (None, Some(n)),
        _ => (None, None),
    };
    let mut warnings = Vec::new();
    match source.unwrap_or("platform") {
        "platform" | "all" => {}
        "seal" => warnings.push(NO_SEAL_ENTROPY.to_owned()),
        other => {
            return Err(EngineError::invalid(format!(
                "unsupported entropy source {other:?}; must be \"platform\" or \"seal\", or \"all\""
            )));
        }
    }
    let bytes = match url_bytes {
        Some(n) => n.parse::<i64>().map_err(|_| {
            EngineError::invalid(format!(
                "error parsing url-set byte count: strconv.Atoi: parsing {n:?}: invalid syntax"
            ))
        })?,
        None => params::int(data, "bytes")?.unwrap_or(32),
    };
    if bytes < 1 {
        return Err(EngineError::invalid("'bytes' cannot be less than 1"));
    }
    if bytes > MAX_RANDOM_BYTES {
        return Err(EngineError::invalid(format!(
            "'bytes' should be less than {MAX_RANDOM_BYTES}"
        )));
    }
    let format = params::string(data, "format")?.unwrap_or("base64");
    if !matches!(format, "base64" | "hex") {
        return Err(EngineError::invalid(format!(
            "unsupported encoding format {format:?}; must be \"hex\" or \"base64\""
        )));
    }
    let mut buf = vec![0u8; usize::try_from(bytes).unwrap_or(32)];
    fill_random(&mut buf).map_err(|_| EngineError::Crypto(CryptoOp::Random))?;
    let out = if format == "hex" {
        hex::encode(&buf)
    } else {
        Base64::Standard.encode(&buf)
    };
    warnings.extend(replaced_by_path(data, &["source", "urlbytes"]));
    let mut m = Map::with_capacity(1);
    m.insert("random_bytes".to_owned(), Value::String(out));
    Ok(Response {
        warnings,
        ..Response::data(m)
    })
}

/// Whether one path segment alone names the source rather than the count.
fn is_source(s: &str) -> bool {
    matches!(s, "platform" | "seal" | "all")
}

/// `sys/tools/hash[/{algorithm}]`: the hash of `input` (base64; absent or empty is the
/// empty string, as in OpenBao), as hex or base64.
pub(crate) fn hash(
    url_algorithm: Option<&str>,
    data: &Map<String, Value>,
) -> Result<Response, EngineError> {
    let name = match url_algorithm.filter(|a| !a.is_empty()) {
        Some(a) => a,
        None => params::string(data, "algorithm")?.unwrap_or("sha2-256"),
    };
    let algorithm = match HashAlgorithm::parse(name) {
        // SHA-1 is transit's only: OpenBao's sys/tools/hash refuses it.
        Some(HashAlgorithm::Sha1) | None => {
            return Err(EngineError::invalid(format!(
                "unsupported algorithm {name}"
            )));
        }
        Some(a) => a,
    };
    let input = params::string(data, "input")?.unwrap_or("");
    let input = decode_base64(input).map_err(|at| {
        EngineError::invalid(format!(
            "unable to decode input as base64: illegal base64 data at input byte {at}"
        ))
    })?;
    let format = params::string(data, "format")?.unwrap_or("hex");
    if !matches!(format, "hex" | "base64") {
        return Err(EngineError::invalid(format!(
            "unsupported encoding format {format}; must be \"hex\" or \"base64\""
        )));
    }
    let sum = algorithm
        .digest(&input)
        .map_err(|_| EngineError::Internal("hash failed"))?;
    let out = if format == "hex" {
        hex::encode(&sum)
    } else {
        Base64::Standard.encode(&sum)
    };
    let mut m = Map::with_capacity(1);
    m.insert("sum".to_owned(), Value::String(out));
    Ok(Response {
        warnings: replaced_by_path(data, &["urlalgorithm"])
            .into_iter()
            .collect(),
        ..Response::data(m)
    })
}

/// Decode standard, padded base64 as Go's `base64.StdEncoding` does, the decoder OpenBao
/// reads `input` with: line breaks (`\r`, `\n`) are skipped anywhere, unused bits of the
/// last character are ignored, and an error is the byte offset Go reports
/// ("illegal base64 data at input byte N").
pub fn decode_base64(text: &str) -> Result<Vec<u8>, usize> {
    let src = text.as_bytes();
    let mut out = Vec::with_capacity(src.len() / 4 * 3 + 3);
    let mut si = 0usize;
    while si < src.len() {
        let mut quantum = [0u8; 4];
        let mut len = 4usize;
        let mut j = 0usize;
        let mut done = false;
        while j < 4 {
            let Some(&c) = src.get(si) else {
                if j == 0 {
                    return Ok(out);
                }
                // An incomplete last quantum: padding is required.
                return Err(si - j);
            };
            si += 1;
            if let Some(v) = sextet(c) {
                if let Some(slot) = quantum.get_mut(j) {
                    *slot = v;
                }
                j += 1;
                continue;
            }
            if c == b'\n' || c == b'\r' {
                continue;
            }
            if c != b'=' {
                return Err(si - 1);
            }
            // Padding: the end of the data.
            match j {
                0 | 1 => return Err(si - 1),
                2 => {
                    while src.get(si).is_some_and(|c| *c == b'\n' || *c == b'\r') {
                        si += 1;
                    }
                    match src.get(si) {
                        None => return Err(src.len()),
                        Some(b'=') => si += 1,
                        Some(_) => return Err(si - 1),
                    }
                }
                _ => {}
            }
            while src.get(si).is_some_and(|c| *c == b'\n' || *c == b'\r') {
                si += 1;
            }
            if si < src.len() {
                return Err(si);
            }
            len = j;
            done = true;
            break;
        }
        let [a, b, c, d] = quantum.map(u32::from);
        let val = (a << 18) | (b << 12) | (c << 6) | d;
        let [_, b0, b1, b2] = val.to_be_bytes();
        out.push(b0);
        if len >= 3 {
            out.push(b1);
        }
        if len == 4 {
            out.push(b2);
        }
        if done {
            break;
        }
    }
    Ok(out)
}

fn sextet(c: u8) -> Option<u8> {
    match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn base64_is_decoded_and_refused_as_go_does() {
        assert_eq!(decode_base64("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(decode_base64("aGVsbG8=\n").unwrap(), b"hello");
        assert_eq!(decode_base64("aGVs\r\nbG8=").unwrap(), b"hello");
        assert_eq!(decode_base64("").unwrap(), b"");
        assert_eq!(decode_base64("aGk=").unwrap(), b"hi");
        assert_eq!(decode_base64("aA==").unwrap(), b"h");
        // Unused bits are ignored (Go's decoder is not strict).
        assert_eq!(decode_base64("aB==").unwrap(), b"h");
        // The offsets OpenBao reports for these (checked against its answers).
        assert_eq!(decode_base64("!!notb64"), Err(0));
        assert_eq!(decode_base64("aGVsbG8"), Err(4));
        assert_eq!(decode_base64("a"), Err(0));
        assert_eq!(decode_base64("aGVsbG8=x"), Err(8));
        assert_eq!(decode_base64("aG=="), Ok(b"h".to_vec()));
        assert_eq!(decode_base64("a==="), Err(1));
        assert_eq!(decode_base64("aG="), Err(3));
        assert_eq!(decode_base64("aG=x"), Err(2));
        assert_eq!(decode_base64("aGVs bG8="), Err(4));
        assert_eq!(decode_base64("="), Err(0));
        // Line breaks are skipped but still counted in the offset of a later error.
        assert_eq!(decode_base64("aGVz\ndA"), Err(5));
        assert_eq!(decode_base64("aGV\n=").unwrap(), b"he");
    }

    #[test]
    fn hash_has_openbaos_defaults_and_messages() {
        let sum = |data: Value, alg: Option<&str>| {
            hash(alg, &obj(data)).unwrap().data.unwrap()["sum"]
                .as_str()
                .unwrap()
                .to_owned()
        };
        assert_eq!(
            sum(json!({"input": "aGVsbG8="}), None),
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        // No input hashes the empty string.
        assert_eq!(
            sum(json!({}), None),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            sum(
                json!({"input": "aGVsbG8=", "format": "base64"}),
                Some("sha2-512")
            ),
            "m3HSJL1i83hdltRq0+o9czGb+8KJDKra4t/3JRlnPKcjI8PZm6XBHXx6zG4UuMXaDEZjR1wuXDre9G9zvN7AQw=="
        );
        assert_eq!(
            sum(json!({"input": "aGVsbG8=", "algorithm": "sha3-256"}), None),
            "3338be694f50c5f338814986cdf0686453a888b84f424d792af4b9202398f392"
        );
        let ignored = hash(None, &obj(json!({"urlalgorithm": "sha2-512", "input": ""}))).unwrap();
        assert_eq!(
            ignored.warnings,
            vec!["Endpoint replaced the value of these parameters with the values captured from the endpoint's path: [urlalgorithm]".to_owned()]
        );
        assert_eq!(
            ignored.data.unwrap()["sum"],
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "sha2-256, the default"
        );
        let err = |data: Value, alg: Option<&str>| hash(alg, &obj(data)).unwrap_err().to_string();
        assert_eq!(
            err(json!({"input": "aGVsbG8="}), Some("md5")),
            "unsupported algorithm md5"
        );
        assert_eq!(
            err(json!({"input": "aGVsbG8=", "algorithm": "sha1"}), None),
            "unsupported algorithm sha1"
        );
        assert_eq!(
            err(json!({"input": "!!notb64"}), None),
            "unable to decode input as base64: illegal base64 data at input byte 0"
        );
        assert_eq!(
            err(json!({"input": "aGVsbG8=", "format": "raw"}), None),
            "unsupported encoding format raw; must be \"hex\" or \"base64\""
        );
    }

    #[test]
    fn random_has_openbaos_bounds_sources_and_messages() {
        let bytes = |resp: Response| {
            resp.data.unwrap()["random_bytes"]
                .as_str()
                .unwrap()
                .to_owned()
        };
        let b64 = bytes(random(None, None, &Map::new()).unwrap());
        assert_eq!(Base64::Standard.decode(&b64).unwrap().len(), 32);
        let hex =
            bytes(random(Some("platform"), Some("8"), &obj(json!({"format": "hex"}))).unwrap());
        assert_eq!(hex.len(), 16);
        let hex = bytes(random(Some("4"), None, &obj(json!({"format": "hex"}))).unwrap());
        assert_eq!(hex.len(), 8);
        let seal = random(Some("seal"), None, &Map::new()).unwrap();
        assert_eq!(seal.warnings, vec![NO_SEAL_ENTROPY.to_owned()]);
        assert!(
            random(Some("all"), None, &Map::new())
                .unwrap()
                .warnings
                .is_empty()
        );
        // Body fields named like path segments are not read, as in OpenBao, which says so.
        let replaced = random(
            Some("seal"),
            Some("4"),
            &obj(json!({"source": "all", "urlbytes": "64"})),
        )
        .unwrap();
        assert_eq!(
            replaced.warnings,
            vec![
                NO_SEAL_ENTROPY.to_owned(),
                "Endpoint replaced the value of these parameters with the values captured from the endpoint's path: [source urlbytes]".to_owned(),
            ]
        );
        assert_eq!(bytes(replaced).len(), 8, "4 bytes, as the path says");
        let err = |a: Option<&str>, b: Option<&str>, data: Value| {
            random(a, b, &obj(data)).unwrap_err().to_string()
        };
        assert_eq!(
            err(None, None, json!({"bytes": 0})),
            "'bytes' cannot be less than 1"
        );
        assert_eq!(
            err(None, None, json!({"bytes": -1})),
            "'bytes' cannot be less than 1"
        );
        assert_eq!(
            err(None, None, json!({"bytes": 131_073})),
            "'bytes' should be less than 131072"
        );
        assert!(random(None, None, &obj(json!({"bytes": 131_072}))).is_ok());
        assert_eq!(
            err(Some("bogus"), Some("8"), json!({})),
            "unsupported entropy source \"bogus\"; must be \"platform\" or \"seal\", or \"all\""
        );
        // One segment that names no source is the count.
        assert_eq!(
            err(Some("bogus"), None, json!({})),
            "error parsing url-set byte count: strconv.Atoi: parsing \"bogus\": invalid syntax"
        );
        assert_eq!(
            err(Some("platform"), Some("abc"), json!({})),
            "error parsing url-set byte count: strconv.Atoi: parsing \"abc\": invalid syntax"
        );
        assert_eq!(
            err(None, None, json!({"format": "raw"})),
            "unsupported encoding format \"raw\"; must be \"hex\" or \"base64\""
        );
    }
}
