//! The server's seals ([`keyhaven_engine::seal::AutoSeal`] implementations) and the
//! auto-unseal loop.

pub mod pkcs11;
pub mod transit;

use std::sync::Arc;
use std::time::Duration;

use keyhaven_engine::Core;
use keyhaven_engine::seal::{AutoSeal, SealSetup};

use crate::seal_config::{SealKind, SealSettings};

/// First wait between auto-unseal attempts; doubled after each failure up to
/// [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_millis(200);
const MAX_RETRY: Duration = Duration::from_secs(5);

/// The engine's seal setup for `settings`, and the background tasks it needs (token
/// renewal of the transit seal).
pub fn setup(settings: &SealSettings) -> (SealSetup, Vec<tokio::task::JoinHandle<()>>) {
    let mut tasks = Vec::new();
    let seal: Arc<dyn AutoSeal> = match &settings.kind {
        SealKind::Shamir => return (SealSetup::Shamir, tasks),
        SealKind::Pkcs11(p) => Arc::new(pkcs11::Pkcs11Seal::new(p.clone())),
        SealKind::Transit(t) => {
            if t.address.starts_with("http://") {
                tracing::warn!(target: "keyhaven::seal", address = %t.address, "the transit seal's address is plain HTTP: its token and the sealed root key cross the network in clear text");
            }
            let seal = transit::TransitSeal::new(t.clone());
            if !settings.disabled {
                tasks.push(seal.spawn_token_renewal());
            }
            Arc::new(seal)
        }
    };
    let setup = if settings.disabled {
        SealSetup::MigrateToShamir(seal)
    } else {
        SealSetup::Auto(seal)
    };
    (setup, tasks)
}

/// Unseal `core` through its seal, retrying with backoff while the seal does not answer;
/// each failure is logged with its reason. Ends once unsealed, or when there is nothing
/// to do (Shamir, not initialized, a pending migration).
pub async fn auto_unseal_loop(core: Arc<Core>) {
    let mut wait = FIRST_RETRY;
    loop {
        match core.auto_unseal().await {
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(target: "keyhaven::seal", reason = %e, retry_in_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX), "auto-unseal failed; the server stays sealed and will retry");
            }
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(MAX_RETRY);
    }
}
