//! The transit engine, driven through `transit::factory` on a MemStore with a manual clock.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use keyhaven_engine::{
    Backend, BackendContext, EngineError, Limits, ManualClock, Operation, Response, route, transit,
};
use keyhaven_storage::{MemStore, StorageError, Store, Transaction, TxOutcome};
use serde_json::{Map, Value, json};

use Operation::{Delete, List, Read, Update};

/// A store that counts reads and writes.
#[derive(Debug, Default)]
struct Probe {
    inner: MemStore,
    gets: AtomicUsize,
    writes: AtomicUsize,
}

#[async_trait]
impl Store for Probe {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        self.inner.get(key).await
    }
    async fn put(&self, key: &str, value: Vec<u8>) -> Result<(), StorageError> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        self.inner.put(key, value).await
    }
    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        self.inner.delete(key).await
    }
    async fn list_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, StorageError> {
        self.inner.list_page(prefix, after, limit).await
    }
    async fn transact(&self, tx: Transaction) -> Result<TxOutcome, StorageError> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        self.inner.transact(tx).await
    }
}

struct T {
    backend: Arc<dyn Backend>,
    store: Arc<Probe>,
    clock: ManualClock,
}

fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        Value::Null => Map::new(),
        other => panic!("not an object: {other}"),
    }
}

fn b64(s: impl AsRef<[u8]>) -> String {
    B64.encode(s)
}

fn unb64(s: &Value) -> Vec<u8> {
    B64.decode(s.as_str().unwrap()).unwrap()
}

fn setup() -> T {
    setup_with(Limits::default())
}

fn setup_with(limits: Limits) -> T {
    let store = Arc::new(Probe::default());
    let clock = ManualClock::new(UNIX_EPOCH + Duration::from_secs(1_800_000_000));
    let backend = transit::factory(BackendContext {
        storage: store.clone(),
        clock: Arc::new(clock.clone()),
        options: Map::new(),
        outbound: None,
        database: None,
        limits,
    })
    .unwrap();
    T {
        backend,
        store,
        clock,
    }
}

impl T {
    async fn call(&self, op: Operation, path: &str, body: Value) -> Result<Response, EngineError> {
        let data = obj(body);
        route::call(self.backend.as_ref(), op, path, &data).await
    }

    async fn ok(&self, path: &str, body: Value) -> Map<String, Value> {
        match self.call(Update, path, body).await {
            Ok(r) => r.data.unwrap_or_default(),
            Err(e) => panic!("{path}: {e}"),
        }
    }

    async fn read(&self, path: &str) -> Map<String, Value> {
        self.call(Read, path, Value::Null)
            .await
            .unwrap()
            .data
            .unwrap()
    }

    async fn err(&self, path: &str, body: Value) -> String {
        match self.call(Update, path, body).await {
            Ok(r) => panic!("{path}: expected an error, got {:?}", r.data),
            Err(e) => e.to_string(),
        }
    }

    async fn encrypt(&self, key: &str, pt: &[u8]) -> String {
        let d = self
            .ok(&format!("encrypt/{key}"), json!({ "plaintext": b64(pt) }))
            .await;
        d["ciphertext"].as_str().unwrap().to_owned()
    }

    async fn decrypt(&self, key: &str, ct: &str) -> Result<Vec<u8>, String> {
        match self
            .call(
                Update,
                &format!("decrypt/{key}"),
                json!({ "ciphertext": ct }),
            )
            .await
        {
            Ok(r) => Ok(unb64(&r.data.unwrap()["plaintext"])),
            Err(e) => Err(e.to_string()),
        }
    }

    async fn tick(&self) {
        self.backend.tick().await.unwrap();
    }
}

const DECRYPTION_FAILED: &str = "decryption failed";

#[tokio::test]
async fn create_read_list_with_vault_shapes() {
    let t = setup();
    // `bao write -f transit/keys/k` sends `null`.
    let created = t.ok("keys/k", Value::Null).await;
    assert_eq!(created["type"], "aes256-gcm96");
    assert_eq!(created["latest_version"], 1);
    let d = t.read("keys/k").await;
    for (field, want) in [
        ("allow_plaintext_backup", json!(false)),
        ("auto_rotate_period", json!(0)),
        ("deletion_allowed", json!(false)),
        ("derived", json!(false)),
        ("exportable", json!(false)),
        ("imported_key", json!(false)),
        ("latest_version", json!(1)),
        ("min_available_version", json!(0)),
        ("min_decryption_version", json!(1)),
        ("min_encryption_version", json!(0)),
        ("name", json!("k")),
        ("soft_deleted", json!(false)),
        ("supports_decryption", json!(true)),
        ("supports_derivation", json!(true)),
        ("supports_encryption", json!(true)),
        ("supports_signing", json!(false)),
        ("type", json!("aes256-gcm96")),
        ("state", json!("enabled")),
    ] {
        assert_eq!(d[field], want, "{field}");
    }
    assert_eq!(d["keys"], json!({"1": 1_800_000_000}));

    // Creating again is a no-op with Vault's warning.
    let again = t.call(Update, "keys/k", Value::Null).await.unwrap();
    assert_eq!(again.warnings, vec!["key k already existed".to_owned()]);

    t.ok("keys/e", json!({"type": "ecdsa-p256"})).await;
    let e = t.read("keys/e").await;
    let v1 = &e["keys"]["1"];
    assert_eq!(v1["name"], "P-256");
    assert!(
        v1["public_key"]
            .as_str()
            .unwrap()
            .starts_with("-----BEGIN PUBLIC KEY-----\n")
    );
    assert_eq!(e["supports_signing"], true);

    let list = t
        .call(List, "keys", Value::Null)
        .await
        .unwrap()
        .data
        .unwrap();
    assert_eq!(list["keys"], json!(["e", "k"]));

    assert!(matches!(
        t.call(Read, "keys/missing", Value::Null).await,
        Err(EngineError::NotFound(_))
    ));
    assert!(
        t.err("keys/bad name", Value::Null)
            .await
            .contains("invalid key name")
    );
    assert!(
        t.err("keys/x", json!({"type": "des"}))
            .await
            .contains("unknown key type")
    );
    assert!(
        t.err("keys/x", json!({"convergent_encryption": true}))
            .await
            .contains("requires derivation")
    );
}

#[tokio::test]
async fn every_key_type_round_trips() {
    let t = setup();
    for ty in [
        "aes128-gcm96",
        "aes256-gcm96",
        "chacha20-poly1305",
        "rsa-2048",
    ] {
        t.ok(&format!("keys/{ty}"), json!({ "type": ty })).await;
        let ct = t.encrypt(ty, b"the payload").await;
        assert!(ct.starts_with("vault:v1:"), "{ty}: {ct}");
        assert_eq!(t.decrypt(ty, &ct).await.unwrap(), b"the payload", "{ty}");
        let hmac = t
            .ok(&format!("hmac/{ty}"), json!({"input": b64("m")}))
            .await;
        let v = t
            .ok(
                &format!("verify/{ty}"),
                json!({"input": b64("m"), "hmac": hmac["hmac"]}),
            )
            .await;
        assert_eq!(v["valid"], true, "{ty}");
    }
    // AES-GCM layout: nonce(12) ‖ ct ‖ tag(16), as OpenBao writes it.
    let ct = t.encrypt("aes256-gcm96", &[7u8; 32]).await;
    assert_eq!(B64.decode(&ct["vault:v1:".len()..]).unwrap().len(), 60);

    for (ty, extra) in [
        ("ed25519", json!({})),
        ("ecdsa-p256", json!({})),
        ("ecdsa-p256", json!({"marshaling_algorithm": "jws"})),
        ("ecdsa-p384", json!({})),
        // Any hash on either curve, as Vault allows.
        ("ecdsa-p256", json!({"hash_algorithm": "sha2-384"})),
        (
            "ecdsa-p256",
            json!({"hash_algorithm": "sha2-512", "marshaling_algorithm": "jws"}),
        ),
        ("ecdsa-p384", json!({"hash_algorithm": "sha2-256"})),
        ("ecdsa-p384", json!({"hash_algorithm": "sha3-512"})),
        ("rsa-2048", json!({})),
        (
            "rsa-2048",
            json!({"signature_algorithm": "pkcs1v15", "hash_algorithm": "sha2-512"}),
        ),
        ("rsa-3072", json!({"hash_algorithm": "sha2-384"})),
    ] {
        let name = format!("sig-{ty}");
        t.ok(&format!("keys/{name}"), json!({ "type": ty })).await;
        let mut body = obj(extra.clone());
        body.insert("input".into(), json!(b64("sign me")));
        let s = t
            .ok(&format!("sign/{name}"), Value::Object(body.clone()))
            .await;
        let sig = s["signature"].as_str().unwrap().to_owned();
        assert!(sig.starts_with("vault:v1:"), "{ty}");
        assert_eq!(s["key_version"], 1);
        body.insert("signature".into(), json!(sig));
        let v = t
            .ok(&format!("verify/{name}"), Value::Object(body.clone()))
            .await;
        assert_eq!(v["valid"], true, "{ty} {extra}");
        body.insert("input".into(), json!(b64("sign mf")));
        let v = t.ok(&format!("verify/{name}"), Value::Object(body)).await;
        assert_eq!(v["valid"], false, "{ty} {extra}");
        let keys = t.read(&format!("keys/{name}")).await;
        assert!(!keys["keys"]["1"]["public_key"].as_str().unwrap().is_empty());
    }
    // The hash can also come from the URL.
    t.ok("keys/u", json!({"type": "rsa-2048"})).await;
    let s = t.ok("sign/u/sha2-384", json!({"input": b64("x")})).await;
    let v = t
        .ok(
            "verify/u/sha2-384",
            json!({"input": b64("x"), "signature": s["signature"]}),
        )
        .await;
    assert_eq!(v["valid"], true);
    let v = t
        .ok(
            "verify/u/sha2-256",
            json!({"input": b64("x"), "signature": s["signature"]}),
        )
        .await;
    assert_eq!(v["valid"], false);

    t.ok("keys/h", json!({"type": "hmac", "key_size": "64"}))
        .await;
    let h = t.ok("hmac/h/sha2-512", json!({"input": b64("m")})).await;
    assert_eq!(
        B64.decode(&h["hmac"].as_str().unwrap()["vault:v1:".len()..])
            .unwrap()
            .len(),
        64
    );
    assert_eq!(t.read("keys/h").await["key_size"], 64);
}

#[tokio::test]
async fn rotation_versions_and_min_decryption_version() {
    let t = setup();
    t.ok("keys/k", Value::Null).await;
    let old = t.encrypt("k", b"v1 data").await;
    let rotated = t.ok("keys/k/rotate", Value::Null).await;
    assert_eq!(rotated["latest_version"], 2);
    assert_eq!(rotated["keys"].as_object().unwrap().len(), 2);
    let new = t.encrypt("k", b"v2 data").await;
    assert!(new.starts_with("vault:v2:"));
    assert_eq!(t.decrypt("k", &old).await.unwrap(), b"v1 data");
    assert_eq!(t.decrypt("k", &new).await.unwrap(), b"v2 data");

    // Rewrap moves the old ciphertext to v2 without returning plaintext.
    let rw = t.ok("rewrap/k", json!({"ciphertext": old})).await;
    assert!(rw["ciphertext"].as_str().unwrap().starts_with("vault:v2:"));
    assert!(rw.get("plaintext").is_none());
    assert_eq!(
        t.decrypt("k", rw["ciphertext"].as_str().unwrap())
            .await
            .unwrap(),
        b"v1 data"
    );

    // Encrypt with an explicit older version.
    let v1 = t
        .ok(
            "encrypt/k",
            json!({"plaintext": b64("x"), "key_version": "1"}),
        )
        .await;
    assert!(v1["ciphertext"].as_str().unwrap().starts_with("vault:v1:"));

    // bao sends numbers as strings.
    t.ok("keys/k/config", json!({"min_decryption_version": "2"}))
        .await;
    let e = t.decrypt("k", &old).await.unwrap_err();
    assert_eq!(
        e,
        "ciphertext or signature version is disallowed by policy (too old)"
    );
    assert_eq!(t.decrypt("k", &new).await.unwrap(), b"v2 data");
    // Moving it back in an emergency works.
    t.ok("keys/k/config", json!({"min_decryption_version": 1}))
        .await;
    assert_eq!(t.decrypt("k", &old).await.unwrap(), b"v1 data");

    // Config validation.
    assert!(
        t.err("keys/k/config", json!({"min_decryption_version": 3}))
            .await
            .contains("latest key version is 2")
    );
    t.ok("keys/k/config", json!({"min_decryption_version": 2}))
        .await;
    assert!(
        t.err("keys/k/config", json!({"min_encryption_version": 1}))
            .await
            .contains("should not be less")
    );
    assert!(
        t.err("keys/k/config", json!({"auto_rotate_period": "30m"}))
            .await
            .contains("at least an hour")
    );
    t.ok(
        "keys/k/config",
        json!({"exportable": true, "allow_plaintext_backup": "true"}),
    )
    .await;
    assert!(
        t.err("keys/k/config", json!({"exportable": false}))
            .await
            .contains("cannot disable")
    );
    assert!(
        t.err("keys/k/config", json!({"allow_plaintext_backup": false}))
            .await
            .contains("cannot disable")
    );

    // Trim removes versions below min_available_version.
    assert!(
        t.err("keys/k/trim", json!({"min_available_version": 3}))
            .await
            .contains("greater than minimum decryption")
    );
    let trimmed = t
        .ok("keys/k/trim", json!({"min_available_version": "2"}))
        .await;
    assert_eq!(trimmed["min_available_version"], 2);
    assert_eq!(
        trimmed["keys"]
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        ["2"]
    );
    assert!(t.decrypt("k", &new).await.is_ok());
}

#[tokio::test]
async fn trimmed_config_cannot_go_below_available() {
    let t = setup();
    t.ok("keys/k", Value::Null).await;
    t.ok("keys/k/rotate", Value::Null).await;
    t.ok("keys/k/config", json!({"min_decryption_version": 2}))
        .await;
    t.ok("keys/k/trim", json!({"min_available_version": 2}))
        .await;
    assert!(
        t.err("keys/k/config", json!({"min_decryption_version": 1}))
            .await
            .contains("min available")
    );
}

#[tokio::test]
async fn bad_input_gets_clear_errors_and_decryption_failures_are_opaque() {
    let t = setup();
    t.ok("keys/k", Value::Null).await;
    t.ok("keys/other", Value::Null).await;
    let ct = t.encrypt("k", b"secret").await;
    let body = B64.decode(&ct["vault:v1:".len()..]).unwrap();

    // Malformed envelopes: clear, specific messages.
    assert_eq!(
        t.decrypt("k", "vault:v1:!!!notbase64").await.unwrap_err(),
        "invalid ciphertext: could not decode base64"
    );
    assert_eq!(
        t.decrypt("k", "nope").await.unwrap_err(),
        "invalid ciphertext: no prefix"
    );
    assert!(
        t.decrypt("k", "vault:vX:AAAA")
            .await
            .unwrap_err()
            .contains("version number")
    );
    assert_eq!(
        t.decrypt("k", &ct.replace("vault:v1:", "vault:v9:"))
            .await
            .unwrap_err(),
        "invalid ciphertext: version is too new"
    );
    // Only the canonical spelling of a valid envelope decrypts.
    for other in ["vault:v01:", "vault:v0:"] {
        assert_eq!(
            t.decrypt("k", &ct.replace("vault:v1:", other))
                .await
                .unwrap_err(),
            "invalid ciphertext: version number must be at least 1, without leading zeros"
        );
    }
    assert!(
        t.err("decrypt/k", json!({}))
            .await
            .contains("missing ciphertext")
    );
    assert!(
        t.err("encrypt/k", json!({"plaintext": "%%%"}))
            .await
            .contains("base64")
    );

    // Every failure to decrypt a well-formed envelope: the same opaque message.
    let mut tampered = body.clone();
    tampered[14] ^= 1;
    let mut bad_tag = body.clone();
    *bad_tag.last_mut().unwrap() ^= 0x80;
    let other = t.encrypt("other", b"secret").await;
    let failures = [
        format!("vault:v1:{}", b64(&tampered)),
        format!("vault:v1:{}", b64(&bad_tag)),
        format!("vault:v1:{}", b64(&body[..body.len() - 1])),
        format!("vault:v1:{}", b64(&body[..20])),
        format!("vault:v1:{}", b64(&body[..5])),
        "vault:v1:".to_owned(),
        other,
    ];
    for f in &failures {
        assert_eq!(
            t.decrypt("k", f).await.unwrap_err(),
            DECRYPTION_FAILED,
            "{f}"
        );
    }
    // Wrong associated data.
    let with_ad = t
        .ok(
            "encrypt/k",
            json!({"plaintext": b64("p"), "associated_data": b64("ad1")}),
        )
        .await;
    let e = t
        .err(
            "decrypt/k",
            json!({"ciphertext": with_ad["ciphertext"], "associated_data": b64("ad2")}),
        )
        .await;
    assert_eq!(e, DECRYPTION_FAILED);
    let e = t
        .err("decrypt/k", json!({"ciphertext": with_ad["ciphertext"]}))
        .await;
    assert_eq!(e, DECRYPTION_FAILED);
    let ok = t
        .ok(
            "decrypt/k",
            json!({"ciphertext": with_ad["ciphertext"], "associated_data": b64("ad1")}),
        )
        .await;
    assert_eq!(unb64(&ok["plaintext"]), b"p");

    // Wrong key type for the operation.
    t.ok("keys/ed", json!({"type": "ed25519"})).await;
    assert!(
        t.err("encrypt/ed", json!({"plaintext": b64("x")}))
            .await
            .contains("does not support encryption")
    );
    assert!(
        t.err("decrypt/ed", json!({"ciphertext": ct}))
            .await
            .contains("does not support decryption")
    );
    assert!(
        t.err("sign/k", json!({"input": b64("x")}))
            .await
            .contains("does not support signing")
    );
    assert!(
        t.err("datakey/plaintext/ed", json!({}))
            .await
            .contains("does not support encryption")
    );
    t.ok("keys/rsa", json!({"type": "rsa-2048"})).await;
    assert!(
        t.err(
            "encrypt/rsa",
            json!({"plaintext": b64("x"), "associated_data": b64("a")})
        )
        .await
        .contains("associated_data")
    );
    assert!(
        t.err(
            "sign/rsa",
            json!({"input": b64("x"), "hash_algorithm": "sha3-256"})
        )
        .await
        .contains("sha2-256")
    );
    assert!(
        t.err(
            "sign/rsa",
            json!({"input": b64("x"), "hash_algorithm": "md5"})
        )
        .await
        .contains("invalid hash algorithm")
    );

    // Missing context on a derived key.
    t.ok("keys/d", json!({"derived": true})).await;
    assert!(
        t.err("encrypt/d", json!({"plaintext": b64("x")}))
            .await
            .contains("missing 'context'")
    );
    let dct = t
        .ok(
            "encrypt/d",
            json!({"plaintext": b64("x"), "context": b64("tenant-1")}),
        )
        .await;
    assert!(
        t.err("decrypt/d", json!({"ciphertext": dct["ciphertext"]}))
            .await
            .contains("missing 'context'")
    );
    // A wrong context is a decryption failure like any other.
    assert_eq!(
        t.err(
            "decrypt/d",
            json!({"ciphertext": dct["ciphertext"], "context": b64("tenant-2")})
        )
        .await,
        DECRYPTION_FAILED
    );
    let ok = t
        .ok(
            "decrypt/d",
            json!({"ciphertext": dct["ciphertext"], "context": b64("tenant-1")}),
        )
        .await;
    assert_eq!(unb64(&ok["plaintext"]), b"x");

    // A caller-chosen nonce is refused (OpenBao: only legacy convergent keys took one).
    assert!(
        t.err(
            "encrypt/k",
            json!({"plaintext": b64("x"), "nonce": b64([0u8; 12])})
        )
        .await
        .contains("nonce")
    );
    // Unknown keys.
    assert!(
        t.err("decrypt/nokey", json!({"ciphertext": ct}))
            .await
            .contains("not found")
    );
    assert!(
        t.err("sign/nokey", json!({"input": b64("x")}))
            .await
            .contains("not found")
    );
}

#[tokio::test]
async fn convergent_encryption_is_deterministic_per_context() {
    let t = setup();
    t.ok(
        "keys/c",
        json!({"derived": "true", "convergent_encryption": true}),
    )
    .await;
    let read = t.read("keys/c").await;
    assert_eq!(read["convergent_encryption"], true);
    assert_eq!(read["convergent_encryption_version"], 3);
    assert_eq!(read["kdf"], "hkdf_sha256");
    let enc = |ctx: &str| json!({"plaintext": b64("same"), "context": b64(ctx)});
    let a = t.ok("encrypt/c", enc("ctx")).await;
    let b = t.ok("encrypt/c", enc("ctx")).await;
    let c = t.ok("encrypt/c", enc("ctx2")).await;
    assert_eq!(a["ciphertext"], b["ciphertext"]);
    assert_ne!(a["ciphertext"], c["ciphertext"]);
    let d = t
        .ok(
            "decrypt/c",
            json!({"ciphertext": a["ciphertext"], "context": b64("ctx")}),
        )
        .await;
    assert_eq!(unb64(&d["plaintext"]), b"same");
}

#[tokio::test]
async fn datakeys_random_and_hash() {
    let t = setup();
    t.ok("keys/k", Value::Null).await;
    let p = t.ok("datakey/plaintext/k", Value::Null).await;
    assert_eq!(unb64(&p["plaintext"]).len(), 32);
    assert_eq!(p["key_version"], 1);
    let dek = t
        .decrypt("k", p["ciphertext"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(dek, unb64(&p["plaintext"]));
    let w = t
        .ok(
            "datakey/wrapped/k",
            json!({"bits": "512", "associated_data": b64("file-7")}),
        )
        .await;
    assert!(w.get("plaintext").is_none());
    let d = t
        .ok(
            "decrypt/k",
            json!({"ciphertext": w["ciphertext"], "associated_data": b64("file-7")}),
        )
        .await;
    assert_eq!(unb64(&d["plaintext"]).len(), 64);
    assert!(
        t.err("datakey/plaintext/k", json!({"bits": 100}))
            .await
            .contains("bits")
    );
    assert!(
        t.err("datakey/other/k", json!({}))
            .await
            .contains("plaintext or wrapped")
    );

    let r = t.ok("random", Value::Null).await;
    assert_eq!(unb64(&r["random_bytes"]).len(), 32);
    let r = t.ok("random/16", json!({"format": "hex"})).await;
    assert_eq!(r["random_bytes"].as_str().unwrap().len(), 32);
    let r = t.ok("random/platform/8", Value::Null).await;
    assert_eq!(unb64(&r["random_bytes"]).len(), 8);
    assert!(
        t.err("random", json!({"bytes": 200_000}))
            .await
            .contains("bytes")
    );

    let h = t.ok("hash", json!({"input": b64("abc")})).await;
    assert_eq!(
        h["sum"],
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    let h = t
        .ok(
            "hash/sha2-512",
            json!({"input": b64("abc"), "format": "base64"}),
        )
        .await;
    assert_eq!(unb64(&h["sum"]).len(), 64);
    assert!(
        t.err("hash/md5", json!({"input": b64("abc")}))
            .await
            .contains("unsupported algorithm")
    );
}

#[tokio::test]
async fn batches_keep_order_references_and_per_item_errors() {
    let t = setup();
    t.ok("keys/k", Value::Null).await;
    let items: Vec<Value> = (0..5)
        .map(|i| json!({"plaintext": b64(format!("item {i}")), "reference": format!("r{i}")}))
        .collect();
    let r = t.ok("encrypt/k", json!({ "batch_input": items })).await;
    let results = r["batch_results"].as_array().unwrap();
    assert_eq!(results.len(), 5);
    let mut cts = Vec::new();
    for (i, item) in results.iter().enumerate() {
        assert_eq!(item["reference"], format!("r{i}"));
        assert_eq!(item["key_version"], 1);
        cts.push(item["ciphertext"].clone());
    }

    // Decrypt with one bad item: per-item error, order kept, 400 by default.
    let mut batch: Vec<Value> = cts
        .iter()
        .enumerate()
        .map(|(i, c)| json!({"ciphertext": c, "reference": format!("d{i}")}))
        .collect();
    batch[2] = json!({"ciphertext": "vault:v1:AAAA", "reference": "bad"});
    let resp = t
        .call(Update, "decrypt/k", json!({ "batch_input": batch }))
        .await
        .unwrap();
    // A failed item fails the batch with the client's fault (the server answers 400).
    assert_eq!(
        resp.batch_failure.map(|f| (f.internal, f.status_override)),
        Some((false, None))
    );
    let results = resp.data.unwrap()["batch_results"]
        .as_array()
        .unwrap()
        .clone();
    for (i, item) in results.iter().enumerate() {
        if i == 2 {
            assert_eq!(item["error"], DECRYPTION_FAILED);
            assert_eq!(item["reference"], "bad");
        } else {
            assert_eq!(unb64(&item["plaintext"]), format!("item {i}").as_bytes());
            assert_eq!(item["reference"], format!("d{i}"));
        }
    }
    let resp = t
        .call(
            Update,
            "decrypt/k",
            json!({ "batch_input": batch, "partial_failure_response_code": 207 }),
        )
        .await
        .unwrap();
    assert_eq!(
        resp.batch_failure.map(|f| (f.internal, f.status_override)),
        Some((false, Some(207)))
    );

    // Rewrap, sign, verify and hmac batches.
    t.ok("keys/k/rotate", Value::Null).await;
    let rw = t.ok("rewrap/k", json!({"batch_input": [{"ciphertext": cts[0]}, {"ciphertext": cts[1], "reference": "x"}]})).await;
    let rw = rw["batch_results"].as_array().unwrap();
    assert!(
        rw[0]["ciphertext"]
            .as_str()
            .unwrap()
            .starts_with("vault:v2:")
    );
    assert_eq!(rw[1]["reference"], "x");

    let h = t
        .ok(
            "hmac/k",
            json!({"batch_input": [{"input": b64("a")}, {"input": "%"}]}),
        )
        .await;
    let h = h["batch_results"].as_array().unwrap();
    assert!(h[0]["hmac"].as_str().unwrap().starts_with("vault:v2:"));
    assert!(h[1]["error"].as_str().unwrap().contains("base64"));
    let v = t
        .ok("verify/k", json!({"batch_input": [{"input": b64("a"), "hmac": h[0]["hmac"]}, {"input": b64("b"), "hmac": h[0]["hmac"]}]}))
        .await;
    let v = v["batch_results"].as_array().unwrap();
    assert_eq!(
        (v[0]["valid"].clone(), v[1]["valid"].clone()),
        (json!(true), json!(false))
    );

    t.ok("keys/s", json!({"type": "ed25519"})).await;
    let s = t.ok("sign/s", json!({"batch_input": [{"input": b64("one"), "reference": "1"}, {"input": b64("two"), "reference": "2"}]})).await;
    let s = s["batch_results"].as_array().unwrap();
    let v = t
        .ok(
            "verify/s",
            json!({"batch_input": [
                {"input": b64("one"), "signature": s[0]["signature"], "reference": "a"},
                {"input": b64("one"), "signature": s[1]["signature"], "reference": "b"},
                {"input": b64("two"), "signature": "garbage", "reference": "c"}
            ]}),
        )
        .await;
    let v = v["batch_results"].as_array().unwrap();
    assert_eq!(v[0]["valid"], true);
    assert_eq!(v[1]["valid"], false);
    assert!(v[2]["error"].as_str().unwrap().contains("no prefix"));
    assert_eq!(v[2]["reference"], "c");

    // The list may also arrive as a JSON string (bao write batch_input=…).
    let r = t
        .ok(
            "encrypt/k",
            json!({"batch_input": json!([{"plaintext": b64("s")}]).to_string()}),
        )
        .await;
    assert_eq!(r["batch_results"].as_array().unwrap().len(), 1);
    assert!(
        t.err("encrypt/k", json!({"batch_input": []}))
            .await
            .contains("missing batch input")
    );
}

/// Regression (issue 10, item 7): `batch_input` had no bound; one request of a million
/// items took the server to 1.6 GB. The default limit is 10,000 items, and a batch over
/// it is refused before any item is looked at (nothing is created, nothing decrypted).
#[tokio::test]
async fn unbounded_batch_input() {
    let t = setup();
    t.ok("keys/k", Value::Null).await;
    t.ok("keys/s", json!({"type": "ed25519"})).await;
    const LIMIT: usize = 10_000;
    let want = format!(
        "batch_input has {} items; the limit is {LIMIT} (max_batch_items)",
        LIMIT + 1
    );
    let over = |item: Value| Value::Array(vec![item; LIMIT + 1]);
    for (path, item) in [
        ("encrypt/k", json!({"plaintext": b64("x")})),
        ("encrypt/fresh", json!({"plaintext": b64("x")})),
        ("decrypt/k", json!({"ciphertext": "vault:v1:AAAA"})),
        ("rewrap/k", json!({"ciphertext": "vault:v1:AAAA"})),
        ("hmac/k", json!({"input": b64("x")})),
        (
            "verify/k",
            json!({"input": b64("x"), "hmac": "vault:v1:AAAA"}),
        ),
        ("sign/s", json!({"input": b64("x")})),
        (
            "verify/s",
            json!({"input": b64("x"), "signature": "vault:v1:AAAA"}),
        ),
    ] {
        let e = t
            .err(path, json!({ "batch_input": over(item.clone()) }))
            .await;
        assert_eq!(e, want, "{path}");
        // The same list as one JSON string (what `bao write batch_input=…` sends).
        let e = t
            .err(path, json!({ "batch_input": over(item).to_string() }))
            .await;
        assert_eq!(e, want, "{path} (as a string)");
    }
    // The encrypt upsert did not run.
    assert!(t.call(Read, "keys/fresh", Value::Null).await.is_err());
    // At the limit the batch runs.
    let full = Value::Array(vec![json!({"plaintext": b64("x")}); LIMIT]);
    let r = t.ok("encrypt/k", json!({ "batch_input": full })).await;
    assert_eq!(r["batch_results"].as_array().unwrap().len(), LIMIT);
}

#[tokio::test]
async fn batch_limits_are_configurable_and_count_bytes() {
    let t = setup_with(Limits {
        max_batch_items: 3,
        max_batch_bytes: 64,
    });
    t.ok("keys/k", Value::Null).await;
    let item = json!({"plaintext": b64("0123456789")}); // 9 + 16 bytes
    let three = json!([item, item, item]);
    assert_eq!(
        t.err("encrypt/k", json!({ "batch_input": three })).await,
        "batch_input has 75 bytes of input; the limit is 64 (max_batch_bytes)"
    );
    let text = json!([item, item]).to_string();
    assert_eq!(
        t.err("encrypt/k", json!({ "batch_input": text })).await,
        format!(
            "batch_input has {} bytes of input; the limit is 64 (max_batch_bytes)",
            text.len()
        )
    );
    let small = json!({"plaintext": ""});
    assert_eq!(
        t.err(
            "encrypt/k",
            json!({ "batch_input": [small, small, small, small] })
        )
        .await,
        "batch_input has 4 items; the limit is 3 (max_batch_items)"
    );
    let r = t
        .ok("encrypt/k", json!({ "batch_input": [item, item] }))
        .await;
    assert_eq!(r["batch_results"].as_array().unwrap().len(), 2);
    // Nested values count too, and a single request is not a batch.
    let nested = json!([{"plaintext": "", "context": {"x": ["a".repeat(60)]}}]);
    assert!(
        t.err("encrypt/k", json!({ "batch_input": nested }))
            .await
            .contains("(max_batch_bytes)")
    );
    t.ok("encrypt/k", json!({"plaintext": b64("x".repeat(1000))}))
        .await;
}

#[tokio::test]
async fn disabled_and_pending_deletion_keys_refuse_use() {
    let t = setup();
    t.ok("keys/k", Value::Null).await;
    let ct = t.encrypt("k", b"data").await;
    let d = t.ok("keys/k/disable", Value::Null).await;
    assert_eq!(d["state"], "disabled");
    let refusals = [
        ("encrypt/k", json!({"plaintext": b64("x")})),
        ("decrypt/k", json!({"ciphertext": ct})),
        ("rewrap/k", json!({"ciphertext": ct})),
        ("datakey/plaintext/k", json!({})),
        ("hmac/k", json!({"input": b64("x")})),
        (
            "verify/k",
            json!({"input": b64("x"), "hmac": "vault:v1:AAAA"}),
        ),
    ];
    for (path, body) in &refusals {
        match t.call(Update, path, body.clone()).await {
            Err(EngineError::PreconditionFailed(m)) => {
                assert_eq!(m, "key \"k\" is disabled", "{path}")
            }
            other => panic!("{path}: {other:?}"),
        }
    }
    assert!(
        t.err("keys/k/rotate", Value::Null)
            .await
            .contains("disabled")
    );
    t.ok("keys/k/enable", Value::Null).await;
    assert_eq!(t.decrypt("k", &ct).await.unwrap(), b"data");

    // Scheduled deletion needs deletion_allowed and a window of 7..=30 days.
    assert!(
        t.err(
            "keys/k/schedule-deletion",
            json!({"pending_window_days": 7})
        )
        .await
        .contains("not allowed")
    );
    t.ok("keys/k/config", json!({"deletion_allowed": true}))
        .await;
    for bad in [6, 31, 0] {
        assert!(
            t.err(
                "keys/k/schedule-deletion",
                json!({"pending_window_days": bad})
            )
            .await
            .contains("between 7 and 30")
        );
    }
    let s = t
        .ok(
            "keys/k/schedule-deletion",
            json!({"pending_window_days": "7"}),
        )
        .await;
    assert_eq!(s["state"], "pending_deletion");
    assert_eq!(s["deletion_time"], "2027-01-22T08:00:00Z");
    for (path, body) in &refusals {
        match t.call(Update, path, body.clone()).await {
            Err(EngineError::PreconditionFailed(m)) => {
                assert!(m.contains("pending deletion"), "{path}: {m}")
            }
            other => panic!("{path}: {other:?}"),
        }
    }
    assert!(t.err("keys/k/enable", Value::Null).await.contains("cancel"));

    // Cancelling leaves the key disabled, as AWS KMS does.
    let c = t.ok("keys/k/cancel-deletion", Value::Null).await;
    assert_eq!(c["state"], "disabled");
    assert!(c.get("deletion_time").is_none());
    t.ok("keys/k/enable", Value::Null).await;

    // Schedule again, move the clock past the window, tick: the key is gone.
    t.ok("aliases/kk", json!({"key": "k"})).await;
    t.ok(
        "keys/k/schedule-deletion",
        json!({"pending_window_days": 7}),
    )
    .await;
    t.clock.advance(Duration::from_secs(7 * 86_400 - 1));
    t.tick().await;
    assert_eq!(t.read("keys/k").await["state"], "pending_deletion");
    t.clock.advance(Duration::from_secs(1));
    t.tick().await;
    assert!(matches!(
        t.call(Read, "keys/k", Value::Null).await,
        Err(EngineError::NotFound(_))
    ));
    assert!(matches!(
        t.call(Read, "aliases/kk", Value::Null).await,
        Err(EngineError::NotFound(_))
    ));
    assert!(t.decrypt("k", &ct).await.unwrap_err().contains("not found"));
    // Ticking again is harmless.
    t.tick().await;
}

#[tokio::test]
async fn delete_needs_deletion_allowed() {
    let t = setup();
    t.ok("keys/k", Value::Null).await;
    match t.call(Delete, "keys/k", Value::Null).await {
        Err(e) => assert_eq!(e.to_string(), "deletion is not allowed for this key"),
        Ok(_) => panic!("deleted"),
    }
    t.ok("keys/k/config", json!({"deletion_allowed": "true"}))
        .await;
    assert!(
        t.call(Delete, "keys/k", Value::Null)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(matches!(
        t.call(Read, "keys/k", Value::Null).await,
        Err(EngineError::NotFound(_))
    ));
}

#[tokio::test]
async fn automatic_rotation_follows_the_clock() {
    let t = setup();
    t.ok("keys/k", json!({"auto_rotate_period": "1h"})).await;
    t.ok("keys/n", Value::Null).await;
    assert_eq!(t.read("keys/k").await["auto_rotate_period"], 3600);
    t.clock.advance(Duration::from_secs(3599));
    t.tick().await;
    assert_eq!(t.read("keys/k").await["latest_version"], 1);
    t.clock.advance(Duration::from_secs(1));
    t.tick().await;
    t.tick().await;
    assert_eq!(t.read("keys/k").await["latest_version"], 2);
    assert_eq!(t.read("keys/n").await["latest_version"], 1);
    assert!(t.encrypt("k", b"x").await.starts_with("vault:v2:"));
    // The period counts from the latest version, including manual rotations.
    t.clock.advance(Duration::from_secs(1800));
    t.ok("keys/k/rotate", Value::Null).await;
    t.clock.advance(Duration::from_secs(1800));
    t.tick().await;
    assert_eq!(t.read("keys/k").await["latest_version"], 3);
    t.clock.advance(Duration::from_secs(1800));
    t.tick().await;
    assert_eq!(t.read("keys/k").await["latest_version"], 4);
    // Disabled keys are not rotated; 0 turns rotation off.
    t.ok("keys/k/disable", Value::Null).await;
    t.clock.advance(Duration::from_secs(7200));
    t.tick().await;
    assert_eq!(t.read("keys/k").await["latest_version"], 4);
    t.ok("keys/k/enable", Value::Null).await;
    t.ok("keys/k/config", json!({"auto_rotate_period": 0}))
        .await;
    t.clock.advance(Duration::from_secs(7200));
    t.tick().await;
    assert_eq!(t.read("keys/k").await["latest_version"], 4);
}

#[tokio::test]
async fn aliases_work_wherever_a_key_name_does() {
    let t = setup();
    t.ok("keys/real", Value::Null).await;
    assert!(
        t.call(Update, "aliases/app", json!({"key": "real"}))
            .await
            .unwrap()
            .is_empty()
    );
    let a = t.read("aliases/app").await;
    assert_eq!(a["key"], "real");
    let ct = t.encrypt("app", b"via alias").await;
    assert_eq!(t.decrypt("real", &ct).await.unwrap(), b"via alias");
    assert_eq!(t.read("keys/app").await["name"], "real");
    t.ok("keys/app/rotate", Value::Null).await;
    assert_eq!(t.read("keys/real").await["latest_version"], 2);
    assert!(
        t.err("aliases/x", json!({"key": "nokey"}))
            .await
            .contains("not found")
    );
    assert!(
        t.err("aliases/real", json!({"key": "real"}))
            .await
            .contains("exists")
    );
    assert!(t.err("keys/app", Value::Null).await.contains("alias"));
    let list = t
        .call(List, "aliases", Value::Null)
        .await
        .unwrap()
        .data
        .unwrap();
    assert_eq!(list["keys"], json!(["app"]));
    t.call(Delete, "aliases/app", Value::Null).await.unwrap();
    assert!(
        t.decrypt("app", &ct)
            .await
            .unwrap_err()
            .contains("not found")
    );
}

#[tokio::test]
async fn encrypt_upserts_unless_disabled() {
    let t = setup();
    let ct = t.encrypt("fresh", b"hello").await;
    assert!(ct.starts_with("vault:v1:"));
    assert_eq!(t.read("keys/fresh").await["type"], "aes256-gcm96");
    t.ok(
        "encrypt/dk",
        json!({"plaintext": b64("x"), "context": b64("c"), "type": "chacha20-poly1305"}),
    )
    .await;
    let dk = t.read("keys/dk").await;
    assert_eq!(
        (dk["derived"].clone(), dk["type"].clone()),
        (json!(true), json!("chacha20-poly1305"))
    );
    assert!(
        t.err(
            "encrypt/sig",
            json!({"plaintext": b64("x"), "type": "ed25519"})
        )
        .await
        .contains("not supported")
    );

    assert_eq!(
        t.ok("config/keys", json!({"disable_upsert": true})).await["disable_upsert"],
        true
    );
    assert_eq!(t.read("config/keys").await["disable_upsert"], true);
    assert_eq!(
        t.err("encrypt/other", json!({"plaintext": b64("x")})).await,
        "encryption key not found"
    );
}

#[tokio::test]
async fn crypto_requests_touch_no_storage_once_cached() {
    let t = setup();
    t.ok("keys/k", Value::Null).await;
    t.ok("keys/s", json!({"type": "ecdsa-p256"})).await;
    let ct = t.encrypt("k", b"warm").await;
    let (gets, writes) = (
        t.store.gets.load(Ordering::SeqCst),
        t.store.writes.load(Ordering::SeqCst),
    );
    for _ in 0..50 {
        let c = t.encrypt("k", b"0123456789abcdef0123456789abcdef").await;
        t.decrypt("k", &c).await.unwrap();
        t.decrypt("k", &ct).await.unwrap();
        t.ok("datakey/wrapped/k", Value::Null).await;
        t.ok("hmac/k", json!({"input": b64("m")})).await;
        t.ok("sign/s", json!({"input": b64("m")})).await;
    }
    assert_eq!(t.store.gets.load(Ordering::SeqCst), gets);
    assert_eq!(t.store.writes.load(Ordering::SeqCst), writes);

    // A write replaces the cached key, so the next encrypt sees the new version.
    t.ok("keys/k/rotate", Value::Null).await;
    assert!(t.encrypt("k", b"x").await.starts_with("vault:v2:"));
}

#[tokio::test]
async fn a_new_instance_reads_keys_back_from_storage() {
    let t = setup();
    t.ok("keys/k", Value::Null).await;
    t.ok("keys/r", json!({"type": "rsa-2048"})).await;
    t.ok("keys/k/rotate", Value::Null).await;
    let ct = t.encrypt("k", b"persisted").await;
    let sig = t.ok("sign/r", json!({"input": b64("m")})).await;
    // As after seal and unseal: a fresh backend on the same storage.
    let again = transit::factory(BackendContext {
        storage: t.store.clone(),
        clock: Arc::new(t.clock.clone()),
        options: Map::new(),
        outbound: None,
        database: None,
        limits: Default::default(),
    })
    .unwrap();
    let t2 = T {
        backend: again,
        store: t.store.clone(),
        clock: t.clock.clone(),
    };
    assert_eq!(t2.decrypt("k", &ct).await.unwrap(), b"persisted");
    assert_eq!(t2.read("keys/k").await["latest_version"], 2);
    let v = t2
        .ok(
            "verify/r",
            json!({"input": b64("m"), "signature": sig["signature"]}),
        )
        .await;
    assert_eq!(v["valid"], true);
    assert_eq!(
        t.read("keys/r").await["keys"],
        t2.read("keys/r").await["keys"]
    );
}

#[tokio::test]
async fn nothing_secret_in_debug_output() {
    let t = setup();
    t.ok("keys/k", Value::Null).await;
    let p = t.ok("datakey/plaintext/k", Value::Null).await;
    let dek = p["plaintext"].as_str().unwrap().to_owned();
    let resp = t
        .call(Update, "datakey/plaintext/k", Value::Null)
        .await
        .unwrap();
    assert!(!format!("{resp:?}").contains(&dek));
    assert!(
        !format!(
            "{:?}",
            route::call(t.backend.as_ref(), Read, "keys/k", &Map::new())
                .await
                .unwrap()
        )
        .contains(&dek)
    );
}

/// The backend's own cost per request, without HTTP, token lookup or audit. Run with
/// `cargo test --release -p keyhaven-engine --test engine transit::throughput -- --ignored --nocapture`.
#[tokio::test]
#[ignore = "a measurement, not a check"]
async fn throughput() {
    let t = setup();
    t.ok("keys/k", Value::Null).await;
    let body = obj(json!({ "plaintext": b64([7u8; 32]) }));
    let n = 200_000u32;
    let start = std::time::Instant::now();
    for _ in 0..n {
        route::call(t.backend.as_ref(), Update, "encrypt/k", &body)
            .await
            .unwrap();
    }
    let single = f64::from(n) / start.elapsed().as_secs_f64();
    let items: Vec<Value> = (0..100)
        .map(|_| json!({ "plaintext": b64([7u8; 32]) }))
        .collect();
    let batch = obj(json!({ "batch_input": items }));
    let rounds = 5_000u32;
    let start = std::time::Instant::now();
    for _ in 0..rounds {
        route::call(t.backend.as_ref(), Update, "encrypt/k", &batch)
            .await
            .unwrap();
    }
    let items_per_s = f64::from(rounds * 100) / start.elapsed().as_secs_f64();
    println!(
        "encrypt 32 B: {single:.0} req/s; batch of 100: {items_per_s:.0} items/s (one core, backend only)"
    );
}
