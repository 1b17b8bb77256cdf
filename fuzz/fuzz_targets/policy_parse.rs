//! Policy text (HCL or JSON) → `Policy::parse` → `Acl::compile` → checks.
//!
//! Must hold: parsing never panics and never overflows the stack, whatever the input;
//! a policy that parses compiles, and every check on it (each rule's own path, with each
//! operation, with and without parameters) returns without panicking; error messages stay
//! short (they never repeat a large part of the input).
#![no_main]

use keyhaven_engine::Operation;
use keyhaven_engine::policy::{Acl, Policy};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};

const OPS: [Operation; 6] = [
    Operation::Read,
    Operation::Create,
    Operation::Update,
    Operation::Patch,
    Operation::Delete,
    Operation::List,
];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let policy = match Policy::parse(text) {
        Ok(p) => p,
        Err(e) => {
            assert!(e.to_string().len() < 1024, "error message too long");
            return;
        }
    };
    let acl = Acl::compile([("fuzz", &policy)]);
    let mut params = Map::new();
    params.insert("data".to_owned(), Value::String("x".to_owned()));
    params.insert("Options".to_owned(), Value::Array(vec![Value::from(1)]));
    for rule in policy.rules() {
        let concrete = rule.path.trim_end_matches('*').replace('+', "seg");
        for path in [rule.path.as_str(), concrete.as_str()] {
            for op in OPS {
                let _ = acl.authorize(op, path, &Map::new(), false);
                let _ = acl.authorize(op, path, &params, true);
            }
            let _ = acl.capabilities(path);
        }
    }
});
