//! Request paths and bodies are untrusted: matching a path against every backend's route
//! table never panics and captures only what the path holds, and checking fields never
//! panics nor echoes a value.
#![no_main]

use std::sync::{Arc, OnceLock};

use keyhaven_engine::route::{check_fields, match_route};
use keyhaven_engine::{Backend, BackendContext, ManualClock, Operation, auth, kv, transit};
use keyhaven_storage::MemStore;
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};

fn backends() -> &'static Vec<Arc<dyn Backend>> {
    static B: OnceLock<Vec<Arc<dyn Backend>>> = OnceLock::new();
    B.get_or_init(|| {
        let ctx = |options: Map<String, Value>| BackendContext {
            storage: Arc::new(MemStore::new()),
            clock: Arc::new(ManualClock::new(std::time::UNIX_EPOCH)),
            options,
            outbound: None,
            database: None,
            limits: Default::default(),
        };
        let mut v2 = Map::new();
        v2.insert("version".into(), Value::String("2".into()));
        vec![
            kv::factory(ctx(v2)).unwrap(),
            transit::factory(ctx(Map::new())).unwrap(),
            auth::jwt::factory(ctx(Map::new())).unwrap(),
            auth::kubernetes::factory(ctx(Map::new())).unwrap(),
            auth::userpass::factory(ctx(Map::new())).unwrap(),
            auth::cert::factory(ctx(Map::new())).unwrap(),
            auth::approle::factory(ctx(Map::new())).unwrap(),
            keyhaven_engine::database::factory(ctx(Map::new())).unwrap(),
        ]
    })
}

const OPS: [Operation; 6] = [
    Operation::Read,
    Operation::Create,
    Operation::Update,
    Operation::Patch,
    Operation::Delete,
    Operation::List,
];

fuzz_target!(|data: &[u8]| {
    let Some((&op, rest)) = data.split_first() else {
        return;
    };
    let op = OPS[usize::from(op) % OPS.len()];
    let (path, body) = match rest.iter().position(|&b| b == 0) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    let path = String::from_utf8_lossy(path);
    let body: Option<Map<String, Value>> = serde_json::from_slice(body).ok();
    for backend in backends() {
        let Some(m) = match_route(backend.routes(), op, &path) else {
            continue;
        };
        for (name, value) in m.captures.iter() {
            assert!(m.route.captures().any(|c| c == name));
            assert!(path.contains(value), "capture {name} is not in the path");
            if !m.route.pattern.contains(&format!("{{{name}*}}")) {
                assert!(!value.is_empty(), "capture {name} is empty");
            }
        }
        if let Some(body) = &body
            && let Err(e) = check_fields(m.route, body)
        {
            let message = e.to_string();
            for value in body.values() {
                if let Value::String(s) = value
                    && s.len() >= 12
                {
                    assert!(!message.contains(s.as_str()), "a value is echoed");
                }
            }
        }
    }
});
