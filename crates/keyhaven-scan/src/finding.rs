//! Findings: what a scan reports.

use sha2::{Digest, Sha256};

use crate::Severity;

/// A found secret value. `Debug` is redacted and there is no `Serialize`: the value leaves
/// only through [`Secret::expose`] or [`Secret::redacted`].
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// Wrap a value.
    pub fn new(v: Vec<u8>) -> Secret {
        Secret(v)
    }

    /// The raw value, for hashing and `--show-secrets`.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// A redacted rendering: at most the first four characters, then asterisks and the
    /// length.
    pub fn redacted(&self) -> String {
        let keep = if self.0.len() >= 16 { 4 } else { 0 };
        let head: String = String::from_utf8_lossy(self.0.get(..keep).unwrap_or_default())
            .chars()
            .filter(|c| !c.is_control())
            .collect();
        format!("{head}****({} bytes)", self.0.len())
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Kind of finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Category {
    /// A hardcoded credential.
    Secret,
    /// A Kubernetes posture (RBAC, pod hardening, network) problem.
    Posture,
}

impl Category {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Category::Secret => "secret",
            Category::Posture => "posture",
        }
    }
}

/// One finding.
#[derive(Debug, Clone)]
pub struct Finding {
    /// Rule or check id.
    pub rule_id: String,
    /// Rule or check description.
    pub description: String,
    /// Severity.
    pub severity: Severity,
    /// Secret or posture.
    pub category: Category,
    /// Path (as given, or repository-relative in history scans; `-` for stdin).
    pub path: String,
    /// 1-based line.
    pub line: u64,
    /// 1-based column.
    pub column: u64,
    /// Commit that introduced the blob, in history scans.
    pub commit: Option<String>,
    /// Human message (never contains the secret).
    pub message: String,
    /// How to fix it.
    pub fix: Option<String>,
    /// Matching ids in other tools: (tool, id).
    pub references: Vec<(&'static str, &'static str)>,
    /// Set when the secret was found in decoded content (e.g. `data.password`).
    pub decoded_from: Option<String>,
    /// The field path inside the object (`spec.containers[0].securityContext.privileged`),
    /// for findings on Kubernetes objects.
    pub field: Option<String>,
    /// The secret, for secret findings.
    pub secret: Option<Secret>,
    /// Stable fingerprint: rule, path and value (or object identity).
    pub fingerprint: String,
}

/// Hex SHA-256 of a value (used in baselines and fingerprints; never the value itself).
pub fn value_hash(v: &[u8]) -> String {
    hex_lower(&Sha256::digest(v))
}

/// Stable fingerprint of `rule` + `path` + `key` (a value or an object identity).
pub fn fingerprint(rule: &str, path: &str, key: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(rule.as_bytes());
    h.update([0]);
    h.update(path.as_bytes());
    h.update([0]);
    h.update(value_hash(key).as_bytes());
    let d = h.finalize();
    hex_lower(d.get(..16).unwrap_or_default())
}

fn hex_lower(b: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for &x in b {
        s.push(char::from(
            HEX.get(usize::from(x >> 4)).copied().unwrap_or(b'0'),
        ));
        s.push(char::from(
            HEX.get(usize::from(x & 15)).copied().unwrap_or(b'0'),
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_never_formats() {
        let s = Secret::new(b"hunter2-very-secret-value".to_vec());
        assert!(!format!("{s:?}").contains("hunter2"));
        assert!(!s.redacted().contains("very-secret"));
        assert_eq!(s.redacted(), "hunt****(25 bytes)");
    }

    #[test]
    fn fingerprint_is_stable() {
        assert_eq!(fingerprint("r", "p", b"v"), fingerprint("r", "p", b"v"));
        assert_ne!(fingerprint("r", "p", b"v"), fingerprint("r", "q", b"v"));
        assert_eq!(fingerprint("r", "p", b"v").len(), 32);
    }
}
