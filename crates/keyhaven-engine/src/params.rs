//! Reading request parameters the way Vault does.
//!
//! Clients such as `bao write k=v` send every value as a JSON string, so numbers,
//! booleans, durations and lists are accepted both in their JSON type and as strings.
//! Every error names the parameter and never echoes its value.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::error::EngineError;

fn wrong_type(key: &str, want: &str) -> EngineError {
    EngineError::invalid(format!(
        "invalid value for parameter {key:?}: expected {want}"
    ))
}

/// A string parameter.
pub fn string<'a>(data: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>, EngineError> {
    match data.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(wrong_type(key, "a string")),
    }
}

/// A non-negative integer parameter (JSON number or decimal string).
pub fn uint(data: &Map<String, Value>, key: &str) -> Result<Option<u64>, EngineError> {
    match data.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_u64()
            .map(Some)
            .ok_or_else(|| wrong_type(key, "a non-negative integer")),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => s
            .trim()
            .parse::<u64>()
            .map(Some)
            .map_err(|_| wrong_type(key, "a non-negative integer")),
        Some(_) => Err(wrong_type(key, "a non-negative integer")),
    }
}

/// A signed integer parameter (JSON number or decimal string).
pub fn int(data: &Map<String, Value>, key: &str) -> Result<Option<i64>, EngineError> {
    match data.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .map(Some)
            .ok_or_else(|| wrong_type(key, "an integer")),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => s
            .trim()
            .parse::<i64>()
            .map(Some)
            .map_err(|_| wrong_type(key, "an integer")),
        Some(_) => Err(wrong_type(key, "an integer")),
    }
}

/// Go's `strconv.ParseBool`, which Vault applies to boolean parameters sent as strings
/// (query parameters, form-style CLI values): `1 t T TRUE true True` and
/// `0 f F FALSE false False`, nothing else (`tRuE` and `yes` are not booleans).
pub fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// A boolean parameter: a JSON bool, 0 or 1, or a string [`parse_bool`] accepts (an empty
/// string is absent).
pub fn boolean(data: &Map<String, Value>, key: &str) -> Result<Option<bool>, EngineError> {
    match data.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => parse_bool(s.trim())
            .map(Some)
            .ok_or_else(|| wrong_type(key, "a boolean")),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(1) => Ok(Some(true)),
            Some(0) => Ok(Some(false)),
            _ => Err(wrong_type(key, "a boolean")),
        },
        Some(_) => Err(wrong_type(key, "a boolean")),
    }
}

/// A duration parameter in whole seconds: an integer (seconds) or a Go-style duration
/// string such as `"90s"`, `"1h30m"`, `"768h0m0s"` or `"7d"`.
pub fn duration_secs(data: &Map<String, Value>, key: &str) -> Result<Option<u64>, EngineError> {
    match data.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_u64()
            .filter(|n| *n <= MAX_DURATION_SECS)
            .map(Some)
            .ok_or_else(|| wrong_type(key, "a duration")),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => parse_duration(s)
            .map(Some)
            .ok_or_else(|| wrong_type(key, "a duration such as \"30m\"")),
        Some(_) => Err(wrong_type(key, "a duration")),
    }
}

/// The longest duration a client may give, in seconds: Go's `time.Duration` range
/// (2^63 - 1 nanoseconds, about 292 years), which is what Vault accepts. Anything longer
/// is refused as malformed rather than wrapped or saturated, so adding a client's
/// duration to a timestamp can never overflow.
pub const MAX_DURATION_SECS: u64 = i64::MAX.unsigned_abs() / 1_000_000_000;

/// Parse a Go-style duration (`1h30m`, `45s`, `0`, `7d`, `1.5h`) into whole seconds.
/// Sub-second parts are truncated. Plain integers are seconds. Durations longer than
/// [`MAX_DURATION_SECS`] are refused (`None`).
pub fn parse_duration(s: &str) -> Option<u64> {
    let s = s.trim();
    if let Ok(n) = s.parse::<u64>() {
        return (n <= MAX_DURATION_SECS).then_some(n);
    }
    let mut total_nanos: u128 = 0;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return None;
        }
        let (num, tail) = rest.split_at(num_len);
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let scale: u128 = match unit {
            "ns" => 1,
            "us" | "µs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60 * 1_000_000_000,
            "h" => 3_600 * 1_000_000_000,
            "d" => 86_400 * 1_000_000_000,
            _ => return None,
        };
        let nanos = match num.parse::<u128>() {
            // Whole numbers exactly; only fractions go through floating point.
            Ok(whole) => whole.checked_mul(scale)?,
            Err(_) => fraction_nanos(num, scale)?,
        };
        total_nanos = total_nanos.checked_add(nanos)?;
        rest = tail;
    }
    u64::try_from(total_nanos / 1_000_000_000)
        .ok()
        .filter(|n| *n <= MAX_DURATION_SECS)
}

/// `num` (a decimal with a fraction, such as `1.5`) times `scale` nanoseconds.
#[allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_precision_loss,
    reason = "checked finite and non-negative; a fraction is approximate anyway"
)]
fn fraction_nanos(num: &str, scale: u128) -> Option<u128> {
    let value: f64 = num.parse().ok()?;
    if !value.is_finite() || value < 0.0 {
        return None;
    }
    Some((value * scale as f64) as u128)
}

/// Format seconds as Go does (`0s`, `45s`, `1h30m0s`, `768h0m0s`).
pub fn format_duration(secs: u64) -> String {
    if secs == 0 {
        return "0s".to_owned();
    }
    let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    if h > 0 {
        format!("{h}h{m}m{s}s")
    } else if m > 0 {
        format!("{m}m{s}s")
    } else {
        format!("{s}s")
    }
}

/// A list of strings: a JSON array of strings, or one comma-separated string.
pub fn string_list(
    data: &Map<String, Value>,
    key: &str,
) -> Result<Option<Vec<String>>, EngineError> {
    match data.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(
            s.split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(str::to_owned)
                .collect(),
        )),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.clone()),
                Value::Number(n) => Ok(n.to_string()),
                _ => Err(wrong_type(key, "a list of strings")),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(_) => Err(wrong_type(key, "a list of strings")),
    }
}

/// A list of non-negative integers (KV `versions`): array of numbers or numeric strings,
/// or one comma-separated string.
pub fn uint_list(data: &Map<String, Value>, key: &str) -> Result<Option<Vec<u64>>, EngineError> {
    let parse_one = |v: &Value| -> Result<u64, EngineError> {
        match v {
            Value::Number(n) => n
                .as_u64()
                .ok_or_else(|| wrong_type(key, "a list of integers")),
            Value::String(s) => s
                .trim()
                .parse::<u64>()
                .map_err(|_| wrong_type(key, "a list of integers")),
            _ => Err(wrong_type(key, "a list of integers")),
        }
    };
    match data.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) => items
            .iter()
            .map(parse_one)
            .collect::<Result<_, _>>()
            .map(Some),
        Some(Value::String(s)) => s
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| {
                p.parse::<u64>()
                    .map_err(|_| wrong_type(key, "a list of integers"))
            })
            .collect::<Result<_, _>>()
            .map(Some),
        Some(v @ Value::Number(_)) => parse_one(v).map(|n| Some(vec![n])),
        Some(_) => Err(wrong_type(key, "a list of integers")),
    }
}

/// A map of strings to strings (e.g. KV `custom_metadata`). Accepts an object whose values
/// are strings (numbers and booleans are converted), or a string `k1=v1,k2=v2`.
pub fn string_map(
    data: &Map<String, Value>,
    key: &str,
) -> Result<Option<BTreeMap<String, String>>, EngineError> {
    match data.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(obj)) => obj
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k.clone(), s.clone())),
                Value::Number(n) => Ok((k.clone(), n.to_string())),
                Value::Bool(b) => Ok((k.clone(), b.to_string())),
                _ => Err(wrong_type(key, "a map of strings")),
            })
            .collect::<Result<_, _>>()
            .map(Some),
        Some(Value::String(s)) => s
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|pair| {
                pair.split_once('=')
                    .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                    .ok_or_else(|| wrong_type(key, "a map of strings"))
            })
            .collect::<Result<_, _>>()
            .map(Some),
        Some(_) => Err(wrong_type(key, "a map of strings")),
    }
}

/// An object parameter (a JSON object; `null` counts as absent).
pub fn object<'a>(
    data: &'a Map<String, Value>,
    key: &str,
) -> Result<Option<&'a Map<String, Value>>, EngineError> {
    match data.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(obj)) => Ok(Some(obj)),
        Some(_) => Err(wrong_type(key, "an object")),
    }
}

/// A duration parameter in whole seconds that may be negative (Vault's
/// `TypeSignedDurationSecond`): an integer, or a duration string with an optional
/// leading `-` such as `"-1s"`.
pub fn signed_duration_secs(
    data: &Map<String, Value>,
    key: &str,
) -> Result<Option<i64>, EngineError> {
    match data.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .filter(|n| n.unsigned_abs() <= MAX_DURATION_SECS)
            .map(Some)
            .ok_or_else(|| wrong_type(key, "a duration")),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => {
            let s = s.trim();
            let (negative, body) = match s.strip_prefix('-') {
                Some(rest) => (true, rest),
                None => (false, s),
            };
            let secs = parse_duration(body)
                .and_then(|n| i64::try_from(n).ok())
                .ok_or_else(|| wrong_type(key, "a duration such as \"30m\""))?;
            Ok(Some(if negative { -secs } else { secs }))
        }
        Some(_) => Err(wrong_type(key, "a duration")),
    }
}

/// Format signed seconds as Go does (`-1s`, `0s`, `1h0m0s`).
pub fn format_signed_duration(secs: i64) -> String {
    if secs < 0 {
        format!("-{}", format_duration(secs.unsigned_abs()))
    } else {
        format_duration(secs.unsigned_abs())
    }
}

/// A map of strings to strings in which `null` values are kept as `None` (for merge
/// patches, where `null` removes an entry). Numbers and booleans are converted.
pub fn nullable_string_map(
    data: &Map<String, Value>,
    key: &str,
) -> Result<Option<BTreeMap<String, Option<String>>>, EngineError> {
    match data.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(obj)) => obj
            .iter()
            .map(|(k, v)| match v {
                Value::Null => Ok((k.clone(), None)),
                Value::String(s) => Ok((k.clone(), Some(s.clone()))),
                Value::Number(n) => Ok((k.clone(), Some(n.to_string()))),
                Value::Bool(b) => Ok((k.clone(), Some(b.to_string()))),
                _ => Err(wrong_type(key, "a map of strings")),
            })
            .collect::<Result<_, _>>()
            .map(Some),
        Some(_) => Err(wrong_type(key, "a map of strings")),
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
    fn strings_are_coerced_as_vault_does() {
        let d = obj(json!({"n": "5", "b": "true", "d": "1h30m", "l": "a, b", "m": 7, "x": "nope"}));
        assert_eq!(uint(&d, "n").unwrap(), Some(5));
        assert_eq!(uint(&d, "m").unwrap(), Some(7));
        assert_eq!(boolean(&d, "b").unwrap(), Some(true));
        assert_eq!(duration_secs(&d, "d").unwrap(), Some(5400));
        assert_eq!(
            string_list(&d, "l").unwrap(),
            Some(vec!["a".into(), "b".into()])
        );
        let err = uint(&d, "x").unwrap_err().to_string();
        assert!(err.contains("\"x\"") && !err.contains("nope"), "{err}");
    }

    #[test]
    fn booleans_parse_as_gos_parse_bool() {
        for t in ["1", "t", "T", "TRUE", "true", "True"] {
            assert_eq!(parse_bool(t), Some(true), "{t}");
        }
        for f in ["0", "f", "F", "FALSE", "false", "False"] {
            assert_eq!(parse_bool(f), Some(false), "{f}");
        }
        for bad in ["tRuE", "yes", "no", "on", "2", "", " true"] {
            assert_eq!(parse_bool(bad), None, "{bad:?}");
        }
        let d = obj(json!({"a": "True", "b": "FALSE", "c": "yes", "e": ""}));
        assert_eq!(boolean(&d, "a").unwrap(), Some(true));
        assert_eq!(boolean(&d, "b").unwrap(), Some(false));
        assert_eq!(boolean(&d, "e").unwrap(), None);
        let err = boolean(&d, "c").unwrap_err().to_string();
        assert!(err.contains("\"c\"") && err.contains("boolean"), "{err}");
    }

    #[test]
    fn durations_parse_and_format_like_go() {
        assert_eq!(parse_duration("0s"), Some(0));
        assert_eq!(parse_duration("768h0m0s"), Some(2_764_800));
        assert_eq!(parse_duration("10m0s"), Some(600));
        assert_eq!(parse_duration("7d"), Some(604_800));
        assert_eq!(parse_duration("1.5h"), Some(5400));
        assert_eq!(parse_duration("42"), Some(42));
        assert_eq!(parse_duration("5x"), None);
        assert_eq!(parse_duration("h"), None);
        assert_eq!(parse_duration("-5s"), None);
    }

    #[test]
    fn durations_beyond_gos_range_are_refused() {
        // Regression: `{"period":"9223372036854775807"}` overflowed `now + period`.
        assert_eq!(parse_duration("9223372036854775807"), None);
        assert_eq!(parse_duration("2562048h"), None);
        assert_eq!(parse_duration("9223372036"), Some(MAX_DURATION_SECS));
        assert_eq!(parse_duration("2562047h"), Some(2_562_047 * 3600));
        assert_eq!(parse_duration("9223372035s"), Some(9_223_372_035));
        assert_eq!(parse_duration("1h0.5m"), Some(3630));
        let mut d = Map::new();
        d.insert("p".into(), json!(u64::MAX));
        d.insert("s".into(), json!("9223372036854775807"));
        d.insert("n".into(), json!(i64::MIN));
        assert!(duration_secs(&d, "p").is_err());
        assert!(duration_secs(&d, "s").is_err());
        assert!(signed_duration_secs(&d, "n").is_err());
        assert!(signed_duration_secs(&d, "s").is_err());
        assert_eq!(format_duration(0), "0s");
        assert_eq!(format_duration(5400), "1h30m0s");
        assert_eq!(format_duration(90), "1m30s");
    }

    #[test]
    fn signed_durations_and_nullable_maps() {
        let d = obj(
            json!({"neg": "-1s", "pos": "1h", "n": -5, "bad": "-x", "m": {"a": null, "b": 1}, "s": "x"}),
        );
        assert_eq!(signed_duration_secs(&d, "neg").unwrap(), Some(-1));
        assert_eq!(signed_duration_secs(&d, "pos").unwrap(), Some(3600));
        assert_eq!(signed_duration_secs(&d, "n").unwrap(), Some(-5));
        assert!(signed_duration_secs(&d, "bad").is_err());
        assert_eq!(format_signed_duration(-1), "-1s");
        assert_eq!(format_signed_duration(3600), "1h0m0s");
        let m = nullable_string_map(&d, "m").unwrap().unwrap();
        assert_eq!(m.get("a"), Some(&None));
        assert_eq!(m.get("b"), Some(&Some("1".to_owned())));
        assert!(nullable_string_map(&d, "s").is_err());
        assert!(object(&d, "m").unwrap().is_some());
        assert!(object(&d, "s").is_err());
        assert!(object(&d, "absent").unwrap().is_none());
    }

    #[test]
    fn version_lists_accept_all_client_shapes() {
        let d = obj(json!({"a": ["3", 4], "b": "1,2", "c": 9, "e": [true]}));
        assert_eq!(uint_list(&d, "a").unwrap(), Some(vec![3, 4]));
        assert_eq!(uint_list(&d, "b").unwrap(), Some(vec![1, 2]));
        assert_eq!(uint_list(&d, "c").unwrap(), Some(vec![9]));
        assert!(uint_list(&d, "e").is_err());
    }
}
