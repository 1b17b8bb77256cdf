//! Code generated at build time from the `.proto` files under `proto/` (our own copies of
//! the published APIs; see `build.rs`).

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
