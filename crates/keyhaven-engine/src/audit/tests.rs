//! The broker through the real request path: hashing, fail-closed behaviour, keys behind
//! the barrier.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use async_trait::async_trait;
use keyhaven_storage::{MemStore, Store};

use parking_lot::Mutex;
use serde_json::{Map, Value, json};

use super::{AuditBroker, AuditDevice};
use crate::{ClientToken, Core, CoreOptions, EngineError, ManualClock, Operation, Request};

/// Keeps records in memory; can be told to fail or to hang.
#[derive(Default)]
pub(crate) struct MemDevice {
    name: String,
    records: Mutex<Vec<Vec<u8>>>,
    /// How many records each call handed over, in order.
    pub(crate) calls: Mutex<Vec<usize>>,
    fail: Mutex<bool>,
    hang: Mutex<bool>,
    /// Accept this many more records, then fail.
    fail_after: Mutex<Option<usize>>,
}

impl MemDevice {
    pub(crate) fn named(name: &str) -> Arc<MemDevice> {
        Arc::new(MemDevice {
            name: name.to_owned(),
            ..Default::default()
        })
    }

    fn records(&self) -> Vec<Value> {
        self.records
            .lock()
            .iter()
            .map(|r| serde_json::from_slice(r).unwrap())
            .collect()
    }

    fn raw(&self) -> Vec<u8> {
        self.records.lock().concat()
    }
}

#[async_trait]
impl AuditDevice for MemDevice {
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> &str {
        "mem"
    }
    fn timeout(&self) -> Duration {
        Duration::from_millis(200)
    }
    async fn write(&self, record: Vec<u8>) -> Result<(), EngineError> {
        if *self.hang.lock() {
            std::future::pending::<()>().await;
        }
        self.write_batch(vec![record]).await
    }
    async fn write_batch(&self, records: Vec<Vec<u8>>) -> Result<(), EngineError> {
        if *self.hang.lock() {
            std::future::pending::<()>().await;
        }
        if *self.fail.lock() {
            return Err(EngineError::Unavailable("mem device: broken".to_owned()));
        }
        if let Some(left) = self.fail_after.lock().as_mut() {
            if *left < records.len() {
                return Err(EngineError::Unavailable("mem device: full".to_owned()));
            }
            *left -= records.len();
        }
        self.calls.lock().push(records.len());
        self.records.lock().extend(records);
        Ok(())
    }
}

const SECRET: &str = "planted-S3cret-value-9f8e7d";

pub(crate) async fn core_with(devices: Vec<Arc<dyn AuditDevice>>) -> (Arc<Core>, String) {
    let store = Arc::new(MemStore::new());
    let clock = Arc::new(ManualClock::new(
        UNIX_EPOCH + Duration::from_secs(1_800_000_000),
    ));
    let audit = Arc::new(AuditBroker::new(devices).with_clock(clock.clone()));
    let core = Core::with_options(
        store.clone(),
        clock,
        CoreOptions {
            audit,
            ..CoreOptions::default()
        },
    )
    .await
    .unwrap();
    let init = core.dev_setup(Some("root-token-for-tests")).await.unwrap();
    let root = secrecy::ExposeSecret::expose_secret(&init.root_token).to_owned();
    (core, root)
}

pub(crate) fn req(op: Operation, path: &str, data: Value, token: Option<&str>) -> Request {
    let data: Map<String, Value> = match data {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    Request {
        id: format!("req-{path}"),
        operation: op,
        path: path.into(),
        data,
        token: token.map(|t| ClientToken::new(t.to_owned())),
        remote_addr: None,
        client_certs: Vec::new(),
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[tokio::test]
async fn secrets_and_tokens_never_appear_and_hashes_match_audit_hash() {
    let dev = MemDevice::named("mem");
    let (core, root) = core_with(vec![dev.clone()]).await;
    core.handle(req(
        Operation::Update,
        "secret/data/app",
        json!({"data": {"password": SECRET, "port": 5432, "enabled": true}}),
        Some(&root),
    ))
    .await
    .unwrap();
    let read = core
        .handle(req(
            Operation::Read,
            "secret/data/app",
            json!({}),
            Some(&root),
        ))
        .await
        .unwrap();
    assert_eq!(read.data.unwrap()["data"]["password"], SECRET);

    let raw = dev.raw();
    assert!(!contains(&raw, SECRET), "secret value in the audit records");
    assert!(!contains(&raw, &root), "root token in the audit records");

    let hash = core.options.audit.hash("mem", SECRET).unwrap();
    assert!(hash.starts_with("hmac-sha256:") && hash.len() == 12 + 64);
    let records = dev.records();
    // Write: request + response; read: request + response.
    assert_eq!(records.len(), 4, "{records:?}");
    let write_req = &records[0];
    assert_eq!(write_req["type"], "request");
    assert_eq!(write_req["request"]["operation"], "update");
    assert_eq!(write_req["request"]["path"], "secret/data/app");
    assert_eq!(write_req["request"]["data"]["data"]["password"], hash);
    // Numbers and booleans pass in clear; keys are not hashed.
    assert_eq!(write_req["request"]["data"]["data"]["port"], 5432);
    assert_eq!(write_req["request"]["data"]["data"]["enabled"], true);
    let token_hash = core.options.audit.hash("mem/", &root).unwrap();
    assert_eq!(write_req["request"]["client_token"], token_hash);
    assert_eq!(write_req["auth"]["client_token"], token_hash);
    assert_eq!(write_req["auth"]["policies"], json!(["root"]));
    assert!(
        write_req["auth"]["accessor"]
            .as_str()
            .unwrap()
            .starts_with("hmac-sha256:")
    );
    let read_resp = &records[3];
    assert_eq!(read_resp["type"], "response");
    assert_eq!(read_resp["response"]["data"]["data"]["password"], hash);
    // Every string in response data is hashed, times included.
    let created = read_resp["response"]["data"]["metadata"]["created_time"]
        .as_str()
        .unwrap();
    assert!(created.starts_with("hmac-sha256:"), "{created}");
    assert!(read_resp["time"].as_str().unwrap().starts_with("2027-"));
}

#[tokio::test]
async fn created_tokens_are_hashed_in_response_auth() {
    let dev = MemDevice::named("mem");
    let (core, root) = core_with(vec![dev.clone()]).await;
    let created = core
        .handle(req(
            Operation::Update,
            "auth/token/create",
            json!({"policies": ["default"], "meta": {"team": "blue"}}),
            Some(&root),
        ))
        .await
        .unwrap();
    let auth = created.auth.unwrap();
    let child = auth["client_token"].as_str().unwrap().to_owned();
    let accessor = auth["accessor"].as_str().unwrap().to_owned();
    let raw = dev.raw();
    assert!(!contains(&raw, &child));
    assert!(!contains(&raw, &accessor));
    let records = dev.records();
    let resp = records.last().unwrap();
    let audit = &core.options.audit;
    assert_eq!(
        resp["response"]["auth"]["client_token"],
        audit.hash("mem", &child).unwrap()
    );
    assert_eq!(
        resp["response"]["auth"]["accessor"],
        audit.hash("mem", &accessor).unwrap()
    );
    assert_eq!(resp["response"]["auth"]["metadata"]["team"], "blue");
    // Records are serialized field by field, in the order (and so to the bytes) a
    // `serde_json::Map` of the same record would give.
    for raw in dev.records.lock().iter() {
        let value: Value = serde_json::from_slice(raw).unwrap();
        assert_eq!(serde_json::to_vec(&value).unwrap(), *raw);
    }
}

#[tokio::test]
async fn denied_and_unauthenticated_requests_are_recorded_with_their_error() {
    let dev = MemDevice::named("mem");
    let (core, _root) = core_with(vec![dev.clone()]).await;
    let err = core
        .handle(req(
            Operation::Read,
            "secret/data/app",
            json!({}),
            Some("hvs.not-a-real-token"),
        ))
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::PermissionDenied));
    let err = core
        .handle(req(Operation::Read, "secret/data/app", json!({}), None))
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::PermissionDenied));
    let records = dev.records();
    assert_eq!(records.len(), 2, "{records:?}");
    for r in &records {
        assert_eq!(r["type"], "request");
        assert_eq!(r["error"], "permission denied");
        assert_eq!(r["request"]["path"], "secret/data/app");
    }
    // The unknown token is logged hashed, so an operator can search for it.
    assert_eq!(
        records[0]["request"]["client_token"],
        core.options
            .audit
            .hash("mem", "hvs.not-a-real-token")
            .unwrap()
    );
    assert!(!contains(&dev.raw(), "hvs.not-a-real-token"));
    assert!(records[1]["request"].get("client_token").is_none());
}

/// Regression (issue 10, item 11a): an error that echoes request content (here a policy
/// parse error quoting the rule's path) was written to the `error` field in clear, while
/// the same text in the request data was hashed.
#[tokio::test]
async fn audit_error_carries_request_text_in_clear() {
    let dev = MemDevice::named("mem");
    let (core, root) = core_with(vec![dev.clone()]).await;
    let policy = format!("path \"secret/{SECRET}\" {{\n  capabilities = [\"frobnicate\"]\n}}\n");
    let err = core
        .handle(req(
            Operation::Update,
            "sys/policies/acl/leaky",
            json!({ "policy": policy }),
            Some(&root),
        ))
        .await
        .unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains(SECRET),
        "the test needs an error that echoes its input: {message}"
    );
    assert!(
        !contains(&dev.raw(), SECRET),
        "the marker is in the audit log in clear"
    );
    let records = dev.records();
    let response = records
        .iter()
        .find(|r| r["type"] == "response")
        .expect("a response record");
    assert_eq!(
        response["error"],
        core.options.audit.hash("mem", &message).unwrap(),
        "the error is hashed like any other request string"
    );
    // Fixed messages that carry nothing from the request stay readable.
    let err = core
        .handle(req(
            Operation::Read,
            "secret/data/app",
            json!({}),
            Some("hvs.not-a-real-token"),
        ))
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::PermissionDenied));
    assert_eq!(dev.records().last().unwrap()["error"], "permission denied");
}

#[tokio::test]
async fn a_failing_device_fails_the_request_before_it_runs() {
    let dev = MemDevice::named("mem");
    let (core, root) = core_with(vec![dev.clone()]).await;
    *dev.fail.lock() = true;
    let err = core
        .handle(req(
            Operation::Update,
            "secret/data/lost",
            json!({"data": {"k": "v"}}),
            Some(&root),
        ))
        .await
        .unwrap_err();
    match &err {
        EngineError::Unavailable(m) => assert!(m.starts_with("audit: "), "{m}"),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(audit_failures(&core), (1.0, 0.0));
    *dev.fail.lock() = false;
    let err = core
        .handle(req(
            Operation::Read,
            "secret/data/lost",
            json!({}),
            Some(&root),
        ))
        .await
        .unwrap_err();
    assert!(
        matches!(err, EngineError::NotFound(_)),
        "the write ran: {err:?}"
    );
}

/// What the documentation promises when only the response record fails: the caller is
/// told the request failed, but a write has already happened and stays (as in Vault);
/// its request record is in the log.
#[tokio::test]
async fn a_failed_response_record_after_a_write_fails_the_request_and_the_write_stays() {
    let dev = MemDevice::named("mem");
    let (core, root) = core_with(vec![dev.clone()]).await;
    let before = dev.records().len();
    *dev.fail_after.lock() = Some(1);
    let err = core
        .handle(req(
            Operation::Update,
            "secret/data/kept",
            json!({"data": {"k": "v"}}),
            Some(&root),
        ))
        .await
        .unwrap_err();
    match &err {
        EngineError::Unavailable(m) => assert!(m.starts_with("audit: "), "{m}"),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(audit_failures(&core), (0.0, 1.0));
    let records = dev.records();
    assert_eq!(records.len(), before + 1, "only the request record");
    assert_eq!(records[before]["type"], "request");
    assert_eq!(records[before]["request"]["path"], "secret/data/kept");
    *dev.fail_after.lock() = None;
    let read = core
        .handle(req(
            Operation::Read,
            "secret/data/kept",
            json!({}),
            Some(&root),
        ))
        .await
        .unwrap();
    assert_eq!(read.data.unwrap()["data"]["k"], "v", "the write stays");
}

// Tokio's clock is paused in these two tests: it moves only when every task waits, so
// what is measured is how long the broker chose to wait, not how busy the machine was.
#[tokio::test(start_paused = true)]
async fn a_hung_device_fails_within_its_timeout() {
    let dev = MemDevice::named("mem");
    let (core, root) = core_with(vec![dev.clone()]).await;
    *dev.hang.lock() = true;
    let started = tokio::time::Instant::now();
    let err = core
        .handle(req(
            Operation::Update,
            "secret/data/lost",
            json!({"data": {"k": "v"}}),
            Some(&root),
        ))
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::Unavailable(_)), "{err:?}");
    assert_eq!(
        started.elapsed(),
        dev.timeout(),
        "gave up at the device's timeout"
    );
}

#[tokio::test(start_paused = true)]
async fn one_working_device_is_enough() {
    let good = MemDevice::named("good");
    let bad = MemDevice::named("bad");
    *bad.hang.lock() = true;
    let (core, root) = core_with(vec![bad.clone(), good.clone()]).await;
    let started = tokio::time::Instant::now();
    core.handle(req(
        Operation::Update,
        "secret/data/app",
        json!({"data": {"k": "v"}}),
        Some(&root),
    ))
    .await
    .unwrap();
    // The working device answers at once; the hung one is not waited for.
    assert_eq!(started.elapsed(), Duration::ZERO);
    assert_eq!(good.records().len(), 2);
    // Keys differ per device.
    let audit = &core.options.audit;
    assert_ne!(
        audit.hash("good", "x").unwrap(),
        audit.hash("bad", "x").unwrap()
    );
}

#[tokio::test]
async fn keys_live_behind_the_barrier_and_drop_at_seal() {
    let dev = MemDevice::named("mem");
    let store = Arc::new(MemStore::new());
    let clock = Arc::new(ManualClock::new(
        UNIX_EPOCH + Duration::from_secs(1_800_000_000),
    ));
    let core = Core::with_options(
        store.clone(),
        clock,
        CoreOptions {
            audit: Arc::new(AuditBroker::new(vec![dev.clone()])),
            ..CoreOptions::default()
        },
    )
    .await
    .unwrap();
    let init = core.dev_setup(None).await.unwrap();
    let before = core.options.audit.hash("mem", "x").unwrap();
    // Stored at the documented path, encrypted by the barrier.
    let raw = store.get("core/audit/mem/salt").await.unwrap().unwrap();
    assert_ne!(raw.len(), 32, "the key is stored in clear");
    let list = core.options.audit.list();
    assert_eq!(list["mem/"]["type"], "mem");
    assert_eq!(list["mem/"]["path"], "mem/");

    core.seal().await;
    assert!(core.options.audit.hash("mem", "x").is_err());
    let share = hex::encode(init.shares[0].as_bytes());
    core.unseal(crate::UnsealInput::Key(secrecy::SecretString::from(share)))
        .await
        .unwrap();
    assert_eq!(core.options.audit.hash("mem", "x").unwrap(), before);
}

#[tokio::test]
async fn no_devices_records_nothing_and_fails_nothing() {
    let (core, root) = core_with(Vec::new()).await;
    assert!(!core.options.audit.is_enabled());
    core.handle(req(
        Operation::Update,
        "secret/data/app",
        json!({"data": {"k": "v"}}),
        Some(&root),
    ))
    .await
    .unwrap();
    assert!(core.options.audit.list().is_empty());
    assert!(core.options.audit.hash("file", "x").is_err());
}

#[tokio::test]
async fn sys_audit_and_audit_hash_through_the_api() {
    let dev = MemDevice::named("mem");
    let (core, root) = core_with(vec![dev.clone()]).await;
    let listed = core
        .handle(req(Operation::Read, "sys/audit", json!({}), Some(&root)))
        .await
        .unwrap();
    assert_eq!(listed.data.unwrap()["mem/"]["type"], "mem");
    let hashed = core
        .handle(req(
            Operation::Update,
            "sys/audit-hash/mem",
            json!({"input": SECRET}),
            Some(&root),
        ))
        .await
        .unwrap();
    let h = hashed.data.unwrap()["hash"].as_str().unwrap().to_owned();
    assert_eq!(h, core.options.audit.hash("mem", SECRET).unwrap());
    // The input of audit-hash is itself hashed in the record.
    assert!(!contains(&dev.raw(), SECRET));
}

#[tokio::test]
async fn sealing_through_the_api_succeeds_with_audit_enabled() {
    let dev = MemDevice::named("mem");
    let (core, root) = core_with(vec![dev.clone()]).await;
    core.handle(req(Operation::Update, "sys/seal", json!({}), Some(&root)))
        .await
        .unwrap();
    assert!(core.is_sealed());
    let records = dev.records();
    assert_eq!(records.last().unwrap()["request"]["path"], "sys/seal");
}

#[tokio::test]
async fn a_read_is_recorded_with_its_response_and_withheld_if_that_fails() {
    let dev = MemDevice::named("mem");
    let (core, root) = core_with(vec![dev.clone()]).await;
    core.handle(req(
        Operation::Update,
        "secret/data/app",
        json!({"data": {"password": SECRET}}),
        Some(&root),
    ))
    .await
    .unwrap();
    // A write is recorded before it runs, its response after: two hand-overs.
    assert_eq!(*dev.calls.lock(), vec![1, 1]);

    *dev.fail.lock() = true;
    let err = core
        .handle(req(
            Operation::Read,
            "secret/data/app",
            json!({}),
            Some(&root),
        ))
        .await
        .unwrap_err();
    match &err {
        EngineError::Unavailable(m) => assert!(m.starts_with("audit: "), "{m}"),
        other => panic!("the read was answered without its records: {other:?}"),
    }
    assert!(!err.to_string().contains(SECRET));
    // Neither the read's request record nor its response record was written.
    assert_eq!(audit_failures(&core), (1.0, 1.0));
    assert_eq!(
        dev.records().len(),
        2,
        "nothing recorded for the refused read"
    );

    *dev.fail.lock() = false;
    let read = core
        .handle(req(
            Operation::Read,
            "secret/data/app",
            json!({}),
            Some(&root),
        ))
        .await
        .unwrap();
    assert_eq!(read.data.unwrap()["data"]["password"], SECRET);
    // The read's request and response records went over together, in order.
    assert_eq!(*dev.calls.lock(), vec![1, 1, 2]);
    let records = dev.records();
    let (request, response) = (&records[2], &records[3]);
    assert_eq!(request["type"], "request");
    assert_eq!(request["request"]["operation"], "read");
    assert!(request.get("response").is_none());
    assert_eq!(response["type"], "response");
    assert_eq!(
        response["response"]["data"]["data"]["password"],
        core.options.audit.hash("mem", SECRET).unwrap()
    );
    assert_eq!(request["request"]["id"], response["request"]["id"]);
    assert_eq!(
        request["time"], response["time"],
        "the manual clock did not move"
    );
}

#[tokio::test]
async fn reads_of_routes_that_do_not_declare_themselves_pure_are_recorded_first() {
    let dev = MemDevice::named("mem");
    let (core, root) = core_with(vec![dev.clone()]).await;
    core.handle(req(
        Operation::Update,
        "sys/auth/kubernetes",
        json!({"type": "kubernetes"}),
        Some(&root),
    ))
    .await
    .unwrap();
    let before = dev.calls.lock().len();
    // An auth method's reads are not declared free of effects: request record first.
    let _ = core
        .handle(req(
            Operation::Read,
            "auth/kubernetes/config",
            json!({}),
            Some(&root),
        ))
        .await;
    assert_eq!(dev.calls.lock()[before..], [1, 1]);
    // Reads under sys/ are.
    core.handle(req(Operation::Read, "sys/mounts", json!({}), Some(&root)))
        .await
        .unwrap();
    assert_eq!(dev.calls.lock()[before + 2..], [2]);
}

#[tokio::test]
async fn each_token_is_logged_with_its_own_hashes() {
    let dev = MemDevice::named("mem");
    let (core, root) = core_with(vec![dev.clone()]).await;
    let mut children = Vec::new();
    for _ in 0..2 {
        let created = core
            .handle(req(
                Operation::Update,
                "auth/token/create",
                json!({"policies": ["default"]}),
                Some(&root),
            ))
            .await
            .unwrap();
        let auth = created.auth.unwrap();
        children.push((
            auth["client_token"].as_str().unwrap().to_owned(),
            auth["accessor"].as_str().unwrap().to_owned(),
        ));
    }
    let audit = &core.options.audit;
    // Twice each, so the second request of a token is served from the cache.
    for round in 0..2 {
        for (token, accessor) in &children {
            core.handle(req(
                Operation::Read,
                "auth/token/lookup-self",
                json!({}),
                Some(token),
            ))
            .await
            .unwrap();
            let records = dev.records();
            let n = records.len();
            for r in &records[n - 2..] {
                assert_eq!(r["auth"]["client_token"], audit.hash("mem", token).unwrap());
                assert_eq!(
                    r["request"]["client_token"],
                    audit.hash("mem", token).unwrap()
                );
                assert_eq!(r["auth"]["accessor"], audit.hash("mem", accessor).unwrap());
                assert_eq!(
                    r["request"]["client_token_accessor"],
                    audit.hash("mem", accessor).unwrap(),
                    "round {round}"
                );
            }
        }
    }
}

#[tokio::test]
async fn records_name_the_mount_and_the_remote_address_and_keep_tuned_keys_in_clear() {
    let dev = MemDevice::named("mem");
    let (core, root) = core_with(vec![dev.clone()]).await;
    let call = |op, path: &str, body: Value| {
        let mut r = req(op, path, body, Some(&root));
        r.remote_addr = Some("192.0.2.7".parse().unwrap());
        core.handle(r)
    };
    call(
        Operation::Update,
        "sys/mounts/secret/tune",
        json!({"audit_non_hmac_request_keys": ["options"]}),
    )
    .await
    .unwrap();
    call(
        Operation::Update,
        "secret/data/app",
        json!({"data": {"password": SECRET}, "options": {"cas": 0}}),
    )
    .await
    .unwrap();
    let records = dev.records();
    let write = records
        .iter()
        .find(|r| r["type"] == "request" && r["request"]["path"] == "secret/data/app")
        .expect("the write's request record");
    let r = &write["request"];
    assert_eq!(r["remote_address"], "192.0.2.7");
    assert_eq!(r["mount_point"], "secret/");
    assert_eq!(r["mount_type"], "kv");
    assert!(
        r["mount_accessor"].as_str().unwrap().starts_with("kv_"),
        "{r}"
    );
    assert_eq!(
        r["data"]["options"],
        json!({"cas": 0}),
        "tuned key in clear"
    );
    assert!(
        r["data"]["data"]["password"]
            .as_str()
            .unwrap()
            .starts_with("hmac-sha256:"),
        "{r}"
    );
    assert!(!contains(&dev.raw(), SECRET));
    // An auth method's point is under auth/.
    call(Operation::Read, "auth/token/lookup-self", json!({}))
        .await
        .unwrap();
    let records = dev.records();
    let lookup = records
        .iter()
        .find(|r| r["request"]["path"] == "auth/token/lookup-self")
        .unwrap();
    assert_eq!(lookup["request"]["mount_point"], "auth/token/");
    assert_eq!(lookup["request"]["mount_type"], "token");
}

/// `(vault.audit.log_request_failure, vault.audit.log_response_failure)` now.
fn audit_failures(core: &Core) -> (f64, f64) {
    let snapshot = core.metrics();
    let value = |name: &str| {
        let family = snapshot.families.iter().find(|f| f.name == name).unwrap();
        match family.samples[0].value {
            crate::metrics::SampleValue::Number(v) => v,
            crate::metrics::SampleValue::Summary { .. } => panic!("{name} is a summary"),
        }
    };
    (
        value("vault.audit.log_request_failure"),
        value("vault.audit.log_response_failure"),
    )
}

#[tokio::test]
async fn wrapped_responses_are_recorded_with_the_wrapping_token_hashed() {
    let dev = MemDevice::named("mem");
    let (core, root) = core_with(vec![dev.clone()]).await;
    core.handle(req(
        Operation::Update,
        "secret/data/app",
        json!({"data": {"password": SECRET}}),
        Some(&root),
    ))
    .await
    .unwrap();
    let wrapped = core
        .handle_wrapped(
            req(Operation::Read, "secret/data/app", json!({}), Some(&root)),
            Some(crate::WrapRequest { ttl: 60 }),
        )
        .await
        .unwrap();
    let info = wrapped.wrap_info.unwrap();
    let records = dev.records();
    let record = records.last().unwrap();
    let audit = &core.options.audit;
    let logged = &record["response"]["wrap_info"];
    assert_eq!(logged["token"], audit.hash("mem", &info.token).unwrap());
    assert_eq!(
        logged["accessor"],
        audit.hash("mem", &info.accessor).unwrap()
    );
    assert_eq!(logged["creation_path"], "secret/data/app");
    assert_eq!(logged["ttl"], 60);
    // The wrapped data is not in the record of the wrapping request.
    assert!(record["response"].get("data").is_none(), "{record}");
    // Unwrapping with the token in the body: the token is hashed in the request, and
    // the unwrapped secret in the response.
    core.handle(req(
        Operation::Update,
        "sys/wrapping/unwrap",
        json!({"token": info.token}),
        Some(&root),
    ))
    .await
    .unwrap();
    let raw = dev.raw();
    assert!(!contains(&raw, &info.token), "a wrapping token in clear");
    assert!(!contains(&raw, SECRET), "a wrapped secret in clear");
}
