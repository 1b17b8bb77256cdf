//! Code generated at build time from the `.proto` files under `proto/` (our own copies of
//! the published APIs; see `build.rs`).
//!
//! Messages that carry secrets (a KMS seed, the pod's ServiceAccount tokens in a mount's
//! attributes, node-publish secrets, file contents) have a hand-written `Debug` that shows
//! their lengths only, so a stray `{:?}` never prints them.

use std::fmt;

/// The length of a secret field, for `Debug`.
struct Redacted(usize);

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<redacted, {} bytes>", self.0)
    }
}

/// The Kubernetes KMS v2 plugin API (package `v2`), and the `EncryptedObject` record the
/// apiserver stores in etcd.
#[allow(missing_docs, clippy::all, clippy::pedantic, reason = "generated code")]
pub mod kms {
    tonic::include_proto!("v2");
}

/// The Secrets Store CSI driver provider API (package `v1alpha1`).
#[allow(missing_docs, clippy::all, clippy::pedantic, reason = "generated code")]
pub mod csi {
    tonic::include_proto!("v1alpha1");
}

impl fmt::Debug for kms::EncryptRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EncryptRequest")
            .field("plaintext", &Redacted(self.plaintext.len()))
            .field("uid", &self.uid)
            .finish()
    }
}

impl fmt::Debug for kms::DecryptResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DecryptResponse")
            .field("plaintext", &Redacted(self.plaintext.len()))
            .finish()
    }
}

impl fmt::Debug for csi::MountRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MountRequest")
            .field("attributes", &Redacted(self.attributes.len()))
            .field("secrets", &Redacted(self.secrets.len()))
            .field("target_path", &self.target_path)
            .field("permission", &self.permission)
            .field("current_object_version", &self.current_object_version)
            .finish()
    }
}

impl fmt::Debug for csi::MountResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MountResponse")
            .field("object_version", &self.object_version)
            .field("error", &self.error)
            .field("files", &self.files)
            .finish()
    }
}

impl fmt::Debug for csi::File {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("File")
            .field("path", &self.path)
            .field("mode", &self.mode)
            .field("contents", &Redacted(self.contents.len()))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::{csi, kms};

    const MARKER: &str = "kh-marker-7f3a9c-secret";

    #[test]
    fn debug_output_of_messages_with_secrets_shows_none_of_them() {
        let shown = [
            format!(
                "{:?}",
                kms::EncryptRequest {
                    plaintext: MARKER.as_bytes().to_vec(),
                    uid: "u-1".into(),
                }
            ),
            format!(
                "{:?}",
                kms::DecryptResponse {
                    plaintext: MARKER.as_bytes().to_vec(),
                }
            ),
            format!(
                "{:?}",
                csi::MountRequest {
                    attributes: format!(
                        r#"{{"csi.storage.k8s.io/serviceAccount.tokens":"{MARKER}"}}"#
                    ),
                    secrets: MARKER.into(),
                    target_path: "/var/lib/kubelet/pods/p/volumes/v/mount".into(),
                    permission: "420".into(),
                    current_object_version: Vec::new(),
                }
            ),
            format!(
                "{:?}",
                csi::MountResponse {
                    object_version: vec![csi::ObjectVersion {
                        id: "db-password".into(),
                        version: "v1".into(),
                    }],
                    error: None,
                    files: vec![csi::File {
                        path: "db-password".into(),
                        mode: 0o440,
                        contents: MARKER.as_bytes().to_vec(),
                    }],
                }
            ),
        ];
        for s in &shown {
            assert!(!s.contains(MARKER), "{s}");
            assert!(s.contains("<redacted, "), "{s}");
        }
        // What is not secret stays visible.
        assert!(shown[0].contains("u-1"));
        assert!(shown[2].contains("/var/lib/kubelet/pods/p/volumes/v/mount"));
        assert!(shown[3].contains("db-password") && shown[3].contains("288"));
    }
}
