//! keyhaven's Kubernetes integrations, each a thin gRPC front of the HTTP API served on a
//! unix socket: the KMS v2 plugin the kube-apiserver encrypts etcd with
//! (`keyhaven kms-plugin`) and the Secrets Store CSI driver provider
//! (`keyhaven csi-provider`); and the admission webhook (`keyhaven admission`), which
//! runs the checks of `keyhaven scan` on what is about to be stored ([`admission`]).
//!
//! Both reach key material only through the server's API (ARCHITECTURE.md, invariant 4);
//! the socket file, mode 0600, is their only access control ([`socket`]).

pub mod admission;
pub mod csi;
pub mod kms;
pub mod proto;
pub mod socket;
