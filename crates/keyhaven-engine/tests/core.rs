//! Seal, unseal, keyring, mounts and the request path, on MemStore with a manual clock.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use keyhaven_crypto::shamir::Share;
use keyhaven_engine::{
    ClientToken, Core, EngineError, InitParams, InitResult, ManualClock, Operation, Request,
    UnsealInput,
};
use keyhaven_storage::{MemStore, Store};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value, json};

fn clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(
        UNIX_EPOCH + Duration::from_secs(1_800_000_000),
    ))
}

async fn new_core(store: Arc<MemStore>) -> Arc<Core> {
    Core::new(store, clock()).await.unwrap()
}

fn hex_share(s: &Share) -> UnsealInput {
    UnsealInput::Key(SecretString::from(hex::encode(s.as_bytes())))
}

async fn init_and_unseal(core: &Core, n: u8, t: u8) -> InitResult {
    let init = core
        .init(InitParams {
            secret_shares: n,
            secret_threshold: t,
        })
        .await
        .unwrap();
    for s in init.shares.iter().take(usize::from(t)) {
        core.unseal(hex_share(s)).await.unwrap();
    }
    assert!(!core.is_sealed());
    init
}

fn req(op: Operation, path: &str, data: Value, token: &str) -> Request {
    let data: Map<String, Value> = match data {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    Request {
        id: "test".into(),
        operation: op,
        path: path.into(),
        data,
        token: Some(ClientToken::new(token.to_owned())),
        remote_addr: None,
        client_certs: Vec::new(),
    }
}

#[tokio::test]
async fn init_returns_shares_once_and_leaves_the_server_sealed() {
    let store = Arc::new(MemStore::new());
    let core = new_core(store.clone()).await;
    assert!(!core.is_initialized());
    let init = core
        .init(InitParams {
            secret_shares: 5,
            secret_threshold: 3,
        })
        .await
        .unwrap();
    assert_eq!(init.shares.len(), 5);
    assert!(init.root_token.expose_secret().starts_with("khs."));
    assert!(core.is_initialized() && core.is_sealed());
    let status = core.seal_status();
    assert_eq!((status.t, status.n, status.progress), (3, 5, 0));
    let again = core
        .init(InitParams {
            secret_shares: 1,
            secret_threshold: 1,
        })
        .await;
    assert!(matches!(again, Err(EngineError::AlreadyInitialized)));
}

#[tokio::test]
async fn init_parameters_are_validated_and_nothing_is_written_on_refusal() {
    let store = Arc::new(MemStore::new());
    let core = new_core(store.clone()).await;
    for (n, t) in [(0, 0), (3, 4), (3, 1), (0, 1)] {
        let r = core
            .init(InitParams {
                secret_shares: n,
                secret_threshold: t,
            })
            .await;
        assert!(
            matches!(r, Err(EngineError::InvalidRequest(_))),
            "({n},{t})"
        );
    }
    assert!(store.list_page("", None, 100).await.unwrap().is_empty());
    assert!(!core.is_initialized());
}

#[tokio::test]
async fn unseal_takes_threshold_shares_in_any_order_and_reports_progress() {
    let core = new_core(Arc::new(MemStore::new())).await;
    let init = core
        .init(InitParams {
            secret_shares: 5,
            secret_threshold: 3,
        })
        .await
        .unwrap();
    let s1 = core.unseal(hex_share(&init.shares[4])).await.unwrap();
    assert!(s1.sealed);
    assert_eq!(s1.progress, 1);
    assert!(!s1.nonce.is_empty());
    let s2 = core.unseal(hex_share(&init.shares[0])).await.unwrap();
    assert_eq!(s2.progress, 2);
    // base64 is accepted as well as hex
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(init.shares[2].as_bytes());
    let s3 = core
        .unseal(UnsealInput::Key(SecretString::from(b64)))
        .await
        .unwrap();
    assert!(!s3.sealed);
    assert_eq!(s3.progress, 0);
}

#[tokio::test]
async fn duplicate_and_malformed_shares_are_refused_without_losing_progress() {
    let core = new_core(Arc::new(MemStore::new())).await;
    let init = core
        .init(InitParams {
            secret_shares: 3,
            secret_threshold: 2,
        })
        .await
        .unwrap();
    core.unseal(hex_share(&init.shares[0])).await.unwrap();
    let dup = core.unseal(hex_share(&init.shares[0])).await.unwrap_err();
    assert!(dup.to_string().contains("already provided"), "{dup}");
    let bad = core
        .unseal(UnsealInput::Key(SecretString::from(
            "not-a-share!".to_owned(),
        )))
        .await
        .unwrap_err();
    assert!(matches!(bad, EngineError::InvalidRequest(_)));
    assert!(
        !bad.to_string().contains("not-a-share"),
        "input echoed: {bad}"
    );
    let short = core
        .unseal(UnsealInput::Key(SecretString::from("abcd".to_owned())))
        .await
        .unwrap_err();
    assert!(matches!(short, EngineError::InvalidRequest(_)), "{short}");
    assert_eq!(core.seal_status().progress, 1);
    core.unseal(hex_share(&init.shares[1])).await.unwrap();
    assert!(!core.is_sealed());
}

#[tokio::test]
async fn shares_of_another_install_fail_clearly_and_reset_progress() {
    let core = new_core(Arc::new(MemStore::new())).await;
    let _mine = core
        .init(InitParams {
            secret_shares: 3,
            secret_threshold: 2,
        })
        .await
        .unwrap();
    let other = new_core(Arc::new(MemStore::new())).await;
    let theirs = other
        .init(InitParams {
            secret_shares: 3,
            secret_threshold: 2,
        })
        .await
        .unwrap();
    core.unseal(hex_share(&theirs.shares[0])).await.unwrap();
    let err = core.unseal(hex_share(&theirs.shares[1])).await.unwrap_err();
    assert!(err.to_string().contains("do not reconstruct"), "{err}");
    assert!(core.is_sealed());
    assert_eq!(core.seal_status().progress, 0);
}

#[tokio::test]
async fn reset_forgets_entered_shares() {
    let core = new_core(Arc::new(MemStore::new())).await;
    let init = core
        .init(InitParams {
            secret_shares: 3,
            secret_threshold: 2,
        })
        .await
        .unwrap();
    core.unseal(hex_share(&init.shares[0])).await.unwrap();
    let s = core.unseal(UnsealInput::Reset).await.unwrap();
    assert_eq!((s.progress, s.nonce.as_str()), (0, ""));
}

#[tokio::test]
async fn unseal_before_init_is_refused() {
    let core = new_core(Arc::new(MemStore::new())).await;
    let r = core
        .unseal(UnsealInput::Key(SecretString::from("00".repeat(33))))
        .await;
    assert!(matches!(r, Err(EngineError::NotInitialized)));
}

#[tokio::test]
async fn sealed_core_refuses_requests_and_unseal_restores_everything() {
    let store = Arc::new(MemStore::new());
    let core = new_core(store.clone()).await;
    let init = init_and_unseal(&core, 3, 2).await;
    let root = init.root_token.expose_secret().to_owned();
    core.handle(req(
        Operation::Update,
        "sys/mounts/kv2",
        json!({"type": "kv-v2"}),
        &root,
    ))
    .await
    .unwrap();
    core.handle(req(
        Operation::Update,
        "kv2/data/app",
        json!({"data": {"password": "M1"}}),
        &root,
    ))
    .await
    .unwrap();

    core.seal().await;
    assert!(core.is_sealed());
    let r = core
        .handle(req(Operation::Read, "kv2/data/app", json!({}), &root))
        .await;
    assert!(matches!(r, Err(EngineError::Sealed)));

    // A restarted process over the same storage comes up sealed and gets it all back.
    let restarted = new_core(store.clone()).await;
    assert!(restarted.is_initialized() && restarted.is_sealed());
    for s in init.shares.iter().skip(1) {
        restarted.unseal(hex_share(s)).await.unwrap();
    }
    let read = restarted
        .handle(req(Operation::Read, "kv2/data/app", json!({}), &root))
        .await
        .unwrap();
    let data = read.data.unwrap();
    assert_eq!(data["data"]["password"], "M1");
}

#[tokio::test]
async fn requests_need_a_known_token() {
    let core = new_core(Arc::new(MemStore::new())).await;
    let init = init_and_unseal(&core, 1, 1).await;
    let mut no_token = req(Operation::Read, "sys/mounts", json!({}), "x");
    no_token.token = None;
    assert!(matches!(
        core.handle(no_token).await,
        Err(EngineError::PermissionDenied)
    ));
    for bad in ["", "root", "khs.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAA000000"] {
        let r = core
            .handle(req(Operation::Read, "sys/mounts", json!({}), bad))
            .await;
        assert!(matches!(r, Err(EngineError::PermissionDenied)), "{bad:?}");
    }
    let root = init.root_token.expose_secret();
    assert!(
        core.handle(req(Operation::Read, "sys/mounts", json!({}), root))
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn dev_setup_uses_the_given_root_token_and_mounts_secret() {
    let core = new_core(Arc::new(MemStore::new())).await;
    let init = core.dev_setup(Some("dev-root")).await.unwrap();
    assert_eq!(init.shares.len(), 1);
    assert!(!core.is_sealed());
    let mounts = core
        .handle(req(Operation::Read, "sys/mounts", json!({}), "dev-root"))
        .await
        .unwrap();
    let data = mounts.data.unwrap();
    assert_eq!(data["secret/"]["type"], "kv");
    assert_eq!(data["secret/"]["options"]["version"], "2");
}

#[tokio::test]
async fn mounts_enable_list_tune_disable_and_persist() {
    let store = Arc::new(MemStore::new());
    let core = new_core(store.clone()).await;
    let init = init_and_unseal(&core, 1, 1).await;
    let root = init.root_token.expose_secret().to_owned();
    let h = |op, path: &str, body: Value| core.handle(req(op, path, body, &root));

    h(
        Operation::Update,
        "sys/mounts/team/a",
        json!({"type": "kv", "options": {"version": "2"}, "description": "team a"}),
    )
    .await
    .unwrap();
    let dup = h(
        Operation::Update,
        "sys/mounts/team/a/",
        json!({"type": "kv-v2"}),
    )
    .await
    .unwrap_err();
    assert!(dup.to_string().contains("already in use"), "{dup}");
    let nested = h(
        Operation::Update,
        "sys/mounts/team",
        json!({"type": "kv-v2"}),
    )
    .await
    .unwrap_err();
    assert!(nested.to_string().contains("already in use"), "{nested}");
    let bad_version = h(
        Operation::Update,
        "sys/mounts/old",
        json!({"type": "kv", "options": {"version": "9"}}),
    )
    .await
    .unwrap_err();
    assert!(
        bad_version.to_string().contains("kv version"),
        "{bad_version}"
    );
    let unknown = h(Operation::Update, "sys/mounts/x", json!({"type": "nope"}))
        .await
        .unwrap_err();
    assert!(matches!(unknown, EngineError::InvalidRequest(_)));
    let reserved = h(
        Operation::Update,
        "sys/mounts/sys",
        json!({"type": "kv-v2"}),
    )
    .await
    .unwrap_err();
    assert!(matches!(reserved, EngineError::InvalidRequest(_)));

    h(
        Operation::Update,
        "sys/mounts/team/a/tune",
        json!({"max_lease_ttl": "1h", "description": "tuned"}),
    )
    .await
    .unwrap();
    let tune = h(Operation::Read, "sys/mounts/team/a/tune", json!({}))
        .await
        .unwrap()
        .data
        .unwrap();
    assert_eq!(tune["max_lease_ttl"], 3600);
    assert_eq!(tune["description"], "tuned");

    let ui = h(
        Operation::Read,
        "sys/internal/ui/mounts/team/a/some/secret",
        json!({}),
    )
    .await
    .unwrap()
    .data
    .unwrap();
    assert_eq!(ui["path"], "team/a/");
    assert_eq!(ui["options"]["version"], "2");

    h(
        Operation::Update,
        "team/a/data/s",
        json!({"data": {"k": "v"}}),
    )
    .await
    .unwrap();

    // The table survives a restart.
    let again = new_core(store.clone()).await;
    again.unseal(hex_share(&init.shares[0])).await.unwrap();
    let list = again
        .handle(req(Operation::Read, "sys/mounts", json!({}), &root))
        .await
        .unwrap()
        .data
        .unwrap();
    assert!(list.contains_key("team/a/") && list.contains_key("sys/"));

    // Disabling deletes the mount's data; re-enabling the same path starts empty.
    h(Operation::Delete, "sys/mounts/team/a", json!({}))
        .await
        .unwrap();
    let gone = h(Operation::Read, "team/a/data/s", json!({}))
        .await
        .unwrap_err();
    assert!(matches!(gone, EngineError::NotFound(_)), "{gone}");
    h(
        Operation::Update,
        "sys/mounts/team/a",
        json!({"type": "kv-v2"}),
    )
    .await
    .unwrap();
    let empty = h(Operation::Read, "team/a/data/s", json!({}))
        .await
        .unwrap_err();
    assert!(matches!(empty, EngineError::NotFound(_)), "{empty}");
    h(
        Operation::Update,
        "team/a/data/t",
        json!({"data": {"k": "v"}}),
    )
    .await
    .unwrap();
    let leftovers = store.list_page("logical/", None, 100).await.unwrap();
    assert_eq!(
        leftovers.len(),
        1,
        "only the new mount's data remains: {leftovers:?}"
    );
}

#[tokio::test]
async fn unknown_paths_get_not_found() {
    let core = new_core(Arc::new(MemStore::new())).await;
    let init = init_and_unseal(&core, 1, 1).await;
    let root = init.root_token.expose_secret();
    let r = core
        .handle(req(Operation::Read, "nomount/data/x", json!({}), root))
        .await
        .unwrap_err();
    assert!(matches!(r, EngineError::NotFound(_)));
    let r = core
        .handle(req(Operation::Read, "sys/nothing-here", json!({}), root))
        .await
        .unwrap_err();
    assert!(matches!(r, EngineError::NotFound(_)));
}

#[tokio::test]
async fn rotation_adds_a_term_and_old_entries_stay_readable() {
    let store = Arc::new(MemStore::new());
    let core = new_core(store.clone()).await;
    let init = init_and_unseal(&core, 1, 1).await;
    let root = init.root_token.expose_secret().to_owned();
    core.handle(req(
        Operation::Update,
        "sys/mounts/kv",
        json!({"type": "kv-v2"}),
        &root,
    ))
    .await
    .unwrap();
    core.handle(req(
        Operation::Update,
        "kv/data/before",
        json!({"data": {"v": "old-term"}}),
        &root,
    ))
    .await
    .unwrap();
    let s1 = core
        .handle(req(Operation::Read, "sys/key-status", json!({}), &root))
        .await
        .unwrap()
        .data
        .unwrap();
    assert_eq!(s1["term"], 1);
    core.handle(req(Operation::Update, "sys/rotate", json!({}), &root))
        .await
        .unwrap();
    let s2 = core
        .handle(req(Operation::Read, "sys/key-status", json!({}), &root))
        .await
        .unwrap()
        .data
        .unwrap();
    assert_eq!(s2["term"], 2);
    core.handle(req(
        Operation::Update,
        "kv/data/after",
        json!({"data": {"v": "new-term"}}),
        &root,
    ))
    .await
    .unwrap();

    // Raw entries carry their term in the header (byte 1..5, big-endian).
    let mut terms = std::collections::BTreeSet::new();
    let mut stack = vec![String::from("logical/")];
    while let Some(dir) = stack.pop() {
        for name in store.list_page(&dir, None, 1000).await.unwrap() {
            let full = format!("{dir}{name}");
            if name.ends_with('/') {
                stack.push(full);
            } else {
                let raw = store.get(&full).await.unwrap().unwrap();
                terms.insert(u32::from_be_bytes(raw[1..5].try_into().unwrap()));
            }
        }
    }
    assert_eq!(terms.into_iter().collect::<Vec<_>>(), vec![1, 2]);

    // After a restart both terms decrypt.
    let again = new_core(store.clone()).await;
    again.unseal(hex_share(&init.shares[0])).await.unwrap();
    for (path, v) in [
        ("kv/data/before", "old-term"),
        ("kv/data/after", "new-term"),
    ] {
        let d = again
            .handle(req(Operation::Read, path, json!({}), &root))
            .await
            .unwrap()
            .data
            .unwrap();
        assert_eq!(d["data"]["v"], v);
    }
}

#[tokio::test]
async fn storage_never_holds_plaintext_secrets_or_tokens() {
    let store = Arc::new(MemStore::new());
    let core = new_core(store.clone()).await;
    let init = init_and_unseal(&core, 1, 1).await;
    let root = init.root_token.expose_secret().to_owned();
    let marker = "PLANTED-7f3a9c-secret-value";
    core.handle(req(
        Operation::Update,
        "sys/mounts/kv",
        json!({"type": "kv-v2"}),
        &root,
    ))
    .await
    .unwrap();
    core.handle(req(
        Operation::Update,
        "kv/data/app",
        json!({"data": {"password": marker}}),
        &root,
    ))
    .await
    .unwrap();
    let mut stack = vec![String::new()];
    let mut seen = 0;
    while let Some(dir) = stack.pop() {
        for name in store.list_page(&dir, None, 1000).await.unwrap() {
            let full = format!("{dir}{name}");
            if name.ends_with('/') {
                stack.push(full);
                continue;
            }
            seen += 1;
            let raw = store.get(&full).await.unwrap().unwrap();
            for needle in [
                marker.as_bytes(),
                root.as_bytes(),
                init.shares[0].as_bytes(),
            ] {
                assert!(
                    !raw.windows(needle.len()).any(|w| w == needle),
                    "plaintext found at {full}"
                );
            }
            assert!(!full.contains(&root), "token used in a key name");
        }
    }
    assert!(
        seen >= 6,
        "expected the seal, keyring, token, mounts and kv entries, saw {seen}"
    );
}

#[tokio::test]
async fn an_entry_moved_to_another_path_does_not_decrypt() {
    let store = Arc::new(MemStore::new());
    let core = new_core(store.clone()).await;
    let init = init_and_unseal(&core, 1, 1).await;
    let root = init.root_token.expose_secret().to_owned();
    // Swap the mount table entry for the token salt: the barrier must refuse it.
    let mounts = store.get("core/mounts").await.unwrap().unwrap();
    store.put("core/token/salt", mounts).await.unwrap();
    let again = new_core(store.clone()).await;
    let err = again.unseal(hex_share(&init.shares[0])).await.unwrap_err();
    assert!(
        matches!(err, EngineError::Storage(_) | EngineError::Corrupt(_)),
        "{err}"
    );
    drop(root);
}
