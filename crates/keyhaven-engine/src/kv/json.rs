//! JSON transformations on secret payloads: merge patch and the subkeys view.
//!
//! Both recurse over the payload; serde_json's decoder already bounds nesting (128
//! levels), so the recursion is bounded too.

use serde_json::{Map, Value};

/// Apply a JSON merge patch (RFC 7386) whose top level is an object to `target`.
pub(super) fn merge_patch(target: &mut Map<String, Value>, patch: &Map<String, Value>) {
    for (name, value) in patch {
        match value {
            Value::Null => {
                target.remove(name);
            }
            Value::Object(inner) => {
                let slot = target
                    .entry(name.clone())
                    .or_insert_with(|| Value::Object(Map::new()));
                if !slot.is_object() {
                    *slot = Value::Object(Map::new());
                }
                if let Value::Object(t) = slot {
                    merge_patch(t, inner);
                }
            }
            other => {
                target.insert(name.clone(), other.clone());
            }
        }
    }
}

/// Replace every leaf value with `null`, keeping the structure, as Vault's `subkeys`
/// does. Non-empty objects are descended into while their depth is at most
/// `max_depth` (0: no limit); the top-level keys are at depth 1.
pub(super) fn strip_values(map: &mut Map<String, Value>, max_depth: i64) {
    strip_at(map, 1, max_depth);
}

fn strip_at(map: &mut Map<String, Value>, depth: i64, max_depth: i64) {
    let child_depth = depth.saturating_add(1);
    for value in map.values_mut() {
        match value {
            Value::Object(inner)
                if !inner.is_empty() && (max_depth == 0 || child_depth <= max_depth) =>
            {
                strip_at(inner, child_depth, max_depth);
            }
            _ => *value = Value::Null,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    #[test]
    fn merge_patch_follows_rfc_7386_examples() {
        let cases = [
            (json!({"a": "b"}), json!({"a": "c"}), json!({"a": "c"})),
            (
                json!({"a": "b"}),
                json!({"b": "c"}),
                json!({"a": "b", "b": "c"}),
            ),
            (json!({"a": "b"}), json!({"a": null}), json!({})),
            (
                json!({"a": "b", "b": "c"}),
                json!({"a": null}),
                json!({"b": "c"}),
            ),
            (json!({"a": ["b"]}), json!({"a": "c"}), json!({"a": "c"})),
            (json!({"a": "c"}), json!({"a": ["b"]}), json!({"a": ["b"]})),
            (
                json!({"a": {"b": "c"}}),
                json!({"a": {"b": "d", "c": null}}),
                json!({"a": {"b": "d"}}),
            ),
            (
                json!({"a": [{"b": "c"}]}),
                json!({"a": [1]}),
                json!({"a": [1]}),
            ),
            (
                json!({"e": null}),
                json!({"a": 1}),
                json!({"e": null, "a": 1}),
            ),
            (
                json!({}),
                json!({"a": {"bb": {"ccc": null}}}),
                json!({"a": {"bb": {}}}),
            ),
            (
                json!({"a": "x"}),
                json!({"a": {"b": 1}}),
                json!({"a": {"b": 1}}),
            ),
        ];
        for (target, patch, want) in cases {
            let mut t = obj(target);
            merge_patch(&mut t, &obj(patch));
            assert_eq!(Value::Object(t), want);
        }
    }

    #[test]
    fn subkeys_keep_structure_to_the_depth_asked() {
        let data = json!({"foo": "abc", "bar": {"baz": 1, "deep": {"x": true}}, "empty": {}, "list": [1, 2]});
        let mut all = obj(data.clone());
        strip_values(&mut all, 0);
        assert_eq!(
            Value::Object(all),
            json!({"foo": null, "bar": {"baz": null, "deep": {"x": null}}, "empty": null, "list": null})
        );
        let mut one = obj(data.clone());
        strip_values(&mut one, 1);
        assert_eq!(
            Value::Object(one),
            json!({"foo": null, "bar": null, "empty": null, "list": null})
        );
        let mut two = obj(data);
        strip_values(&mut two, 2);
        assert_eq!(
            Value::Object(two),
            json!({"foo": null, "bar": {"baz": null, "deep": null}, "empty": null, "list": null})
        );
    }
}
