//! The admission webhook's review tree against `serde_json::Value`: arbitrary text decodes
//! into a `Tree` exactly when it decodes into a `Value`, and then into the same document
//! (same members in the same order, the last of duplicate keys, the same numbers).
#![no_main]

use keyhaven_scan::json::{Arena, Json, Tree};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let value = serde_json::from_str::<serde_json::Value>(text);
    let (arena, converted) = (Arena::new(), Arena::new());
    let tree = Tree::parse(text, &arena);
    match (value, tree) {
        (Ok(value), Ok(tree)) => {
            assert_eq!(tree.to_value(), value, "a tree that is not its value");
            assert_eq!(tree.to_text(), value.to_string(), "a tree that prints otherwise");
            assert_eq!(Tree::from_value(&value, &converted), tree, "a tree not as converted");
        }
        (Err(_), Err(_)) => {}
        (value, tree) => panic!(
            "one decodes, the other not: value {:?}, tree {:?}",
            value.is_ok(),
            tree.is_ok()
        ),
    }
});
