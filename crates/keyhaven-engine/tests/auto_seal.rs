//! Auto-unseal through a seal the engine only knows as [`AutoSeal`]: here a software
//! AES-GCM key that can be made unreachable, on MemStore.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use async_trait::async_trait;
use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use keyhaven_crypto::shamir::Share;
use keyhaven_engine::seal::{AutoSeal, SealError, SealSetup, SealedValue};
use keyhaven_engine::{
    Core, CoreOptions, EngineError, InitParams, ManualClock, RecoveryParams, UnsealInput,
};
use keyhaven_storage::{MemStore, Store};
use secrecy::SecretString;
use zeroize::Zeroizing;

/// A software seal whose key the test knows, and which records what it encrypted.
struct SoftSeal {
    key: [u8; 32],
    down: AtomicBool,
    sealed_plaintexts: parking_lot::Mutex<Vec<Vec<u8>>>,
}

impl SoftSeal {
    fn new() -> Arc<SoftSeal> {
        Arc::new(SoftSeal {
            key: [7; 32],
            down: AtomicBool::new(false),
            sealed_plaintexts: parking_lot::Mutex::new(Vec::new()),
        })
    }

    fn aead(&self) -> LessSafeKey {
        LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &self.key).unwrap())
    }
}

#[async_trait]
impl AutoSeal for SoftSeal {
    fn seal_type(&self) -> &'static str {
        "pkcs11"
    }

    async fn encrypt(&self, plaintext: &[u8], aad: &[u8]) -> Result<SealedValue, SealError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(SealError::new("the test HSM is down"));
        }
        self.sealed_plaintexts.lock().push(plaintext.to_vec());
        let iv = [3u8; 12];
        let mut buf = plaintext.to_vec();
        self.aead()
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(iv), Aad::from(aad), &mut buf)
            .unwrap();
        Ok(SealedValue {
            seal_type: "pkcs11".to_owned(),
            key_id: "soft-1".to_owned(),
            iv: iv.to_vec(),
            ciphertext: buf,
        })
    }

    async fn decrypt(
        &self,
        value: &SealedValue,
        aad: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, SealError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(SealError::new("the test HSM is down"));
        }
        let mut buf = value.ciphertext.clone();
        let iv: [u8; 12] = value.iv.clone().try_into().unwrap();
        let plain = self
            .aead()
            .open_in_place(Nonce::assume_unique_for_key(iv), Aad::from(aad), &mut buf)
            .map_err(|_| SealError::new("does not decrypt"))?;
        Ok(Zeroizing::new(plain.to_vec()))
    }
}

fn clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(
        UNIX_EPOCH + Duration::from_secs(1_800_000_000),
    ))
}

async fn core_with(store: &Arc<MemStore>, seal: SealSetup) -> Arc<Core> {
    Core::with_options(
        store.clone(),
        clock(),
        CoreOptions {
            seal,
            ..CoreOptions::default()
        },
    )
    .await
    .unwrap()
}

fn key(s: &Share) -> SecretString {
    SecretString::from(hex::encode(s.as_bytes()))
}

#[tokio::test]
async fn init_under_auto_unseal_unseals_and_restarts_unseal_without_shares() {
    let store = Arc::new(MemStore::new());
    let seal = SoftSeal::new();
    let core = core_with(&store, SealSetup::Auto(seal.clone())).await;
    assert_eq!(core.init_seal_type(), "pkcs11");
    let err = core
        .init(InitParams {
            secret_shares: 1,
            secret_threshold: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "parameters secret_shares,secret_threshold not applicable to seal type pkcs11"
    );
    let init = core
        .init_auto(RecoveryParams {
            recovery_shares: 3,
            recovery_threshold: 2,
        })
        .await
        .unwrap();
    assert!(init.shares.is_empty());
    assert_eq!(init.recovery_shares.len(), 3);
    assert!(!core.is_sealed());
    let s = core.seal_status();
    assert_eq!(
        (
            s.kind.as_str(),
            s.recovery_seal,
            s.recovery_seal_type.as_deref(),
            s.t,
            s.n
        ),
        ("pkcs11", true, Some("shamir"), 2, 3)
    );

    // The stored record is the seal's blob; the root key it sealed is in no record.
    let root_key = seal.sealed_plaintexts.lock()[0].clone();
    assert_eq!(root_key.len(), 32);
    let blob = store.get("core/root-key").await.unwrap().unwrap();
    assert_eq!(SealedValue::decode(&blob).unwrap().seal_type, "pkcs11");
    let mut prefixes = vec![String::new()];
    let mut records = 0;
    while let Some(prefix) = prefixes.pop() {
        for name in store.list_page(&prefix, None, 10_000).await.unwrap() {
            let k = format!("{prefix}{name}");
            if k.ends_with('/') {
                prefixes.push(k);
                continue;
            }
            let v = store.get(&k).await.unwrap().unwrap();
            assert!(!v.windows(32).any(|w| w == root_key.as_slice()), "{k}");
            records += 1;
        }
    }
    assert!(records > 5, "{records} records");

    // A new core over the same storage unseals through the seal.
    let again = core_with(&store, SealSetup::Auto(seal.clone())).await;
    assert!(again.is_sealed());
    assert!(again.auto_unseal().await.unwrap());
    assert!(!again.is_sealed());

    // Recovery shares alone do not unseal while the seal is down.
    again.seal().await;
    seal.down.store(true, Ordering::SeqCst);
    again
        .unseal(UnsealInput::Key(key(&init.recovery_shares[0])))
        .await
        .unwrap();
    let err = again
        .unseal(UnsealInput::Key(key(&init.recovery_shares[1])))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("the pkcs11 seal cannot decrypt the root key: the test HSM is down"),
        "{err}"
    );
    assert!(again.is_sealed());
    let err = again.auto_unseal().await.unwrap_err();
    assert!(matches!(err, EngineError::Unavailable(_)), "{err:?}");
    assert!(again.seal_error().unwrap().contains("the test HSM is down"));

    // Shares that are not the recovery key are refused before the seal is asked.
    seal.down.store(false, Ordering::SeqCst);
    let other = core_with(&Arc::new(MemStore::new()), SealSetup::Auto(SoftSeal::new())).await;
    let other_init = other
        .init_auto(RecoveryParams {
            recovery_shares: 3,
            recovery_threshold: 2,
        })
        .await
        .unwrap();
    again
        .unseal(UnsealInput::Key(key(&other_init.recovery_shares[0])))
        .await
        .unwrap();
    let err = again
        .unseal(UnsealInput::Key(key(&other_init.recovery_shares[1])))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("recovery key"), "{err}");
    assert!(again.is_sealed());
    again
        .unseal(UnsealInput::Key(key(&init.recovery_shares[2])))
        .await
        .unwrap();
    let s = again
        .unseal(UnsealInput::Key(key(&init.recovery_shares[0])))
        .await
        .unwrap();
    assert!(!s.sealed);
}

#[tokio::test]
async fn migration_needs_migrate_and_the_old_seals_shares_both_ways() {
    let store = Arc::new(MemStore::new());
    let shamir = core_with(&store, SealSetup::Shamir).await;
    let err = shamir
        .init_auto(RecoveryParams {
            recovery_shares: 1,
            recovery_threshold: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "parameters recovery_shares,recovery_threshold not applicable to seal type shamir"
    );
    let init = shamir
        .init(InitParams {
            secret_shares: 2,
            secret_threshold: 2,
        })
        .await
        .unwrap();
    let old_record = store.get("core/root-key").await.unwrap().unwrap();

    let seal = SoftSeal::new();
    let to_auto = core_with(&store, SealSetup::Auto(seal.clone())).await;
    assert!(to_auto.seal_status().migration);
    let err = to_auto
        .unseal(UnsealInput::Key(key(&init.shares[0])))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("migrate=true"), "{err}");
    to_auto
        .unseal(UnsealInput::Migrate(key(&init.shares[0])))
        .await
        .unwrap();
    let s = to_auto
        .unseal(UnsealInput::Migrate(key(&init.shares[1])))
        .await
        .unwrap();
    assert!(!s.sealed && !s.migration && s.recovery_seal, "{s:?}");
    assert_eq!(s.kind, "pkcs11");
    let new_record = store.get("core/root-key").await.unwrap().unwrap();
    assert_ne!(new_record, old_record);
    assert!(SealedValue::decode(&new_record).is_ok());

    // A Shamir config cannot open storage sealed by the HSM, whatever the shares.
    let mismatch = core_with(&store, SealSetup::Shamir).await;
    let err = mismatch
        .unseal(UnsealInput::Key(key(&init.shares[0])))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("storage is sealed by the \"pkcs11\" seal"),
        "{err}"
    );

    // Back to Shamir: the seal marked disabled, the recovery (former unseal) shares.
    let back = core_with(&store, SealSetup::MigrateToShamir(seal.clone())).await;
    assert!(back.seal_status().migration);
    back.unseal(UnsealInput::Migrate(key(&init.shares[1])))
        .await
        .unwrap();
    let s = back
        .unseal(UnsealInput::Migrate(key(&init.shares[0])))
        .await
        .unwrap();
    assert!(!s.sealed && !s.recovery_seal, "{s:?}");
    assert_eq!(s.kind, "shamir");
    assert!(store.get("core/recovery-key").await.unwrap().is_none());

    let plain = core_with(&store, SealSetup::Shamir).await;
    plain
        .unseal(UnsealInput::Key(key(&init.shares[0])))
        .await
        .unwrap();
    let s = plain
        .unseal(UnsealInput::Key(key(&init.shares[1])))
        .await
        .unwrap();
    assert!(!s.sealed);
}
