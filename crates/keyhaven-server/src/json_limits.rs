//! Bounds on the shape of a JSON request body, checked before the body becomes a tree.
//!
//! A 27 MB body of a million small objects becomes more than a gigabyte of
//! `serde_json::Value`s, which the engine's own limits (e.g. `max_batch_items`) only see
//! after it was built. So a large body is first walked by a visitor that allocates
//! nothing and counts the elements of each array and the entries of each object; a body
//! over a limit is refused (400, naming the limit and its config key) before anything is
//! built. Nesting depth is already bounded by `serde_json`'s recursion limit (128).
//! Small bodies cannot hold enough values to matter and skip the walk.

use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// Bodies up to this size are not walked: they cannot build a large tree.
pub const WALK_ABOVE: usize = 64 * 1024;

/// The bounds (listener config keys `max_json_array_element_count`,
/// `max_json_object_entry_count`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JsonLimits {
    /// Elements in any one array.
    pub max_array_elements: usize,
    /// Entries in any one object.
    pub max_object_entries: usize,
}

impl Default for JsonLimits {
    /// Vault's listener defaults for the same limits.
    fn default() -> Self {
        JsonLimits {
            max_array_elements: 10_000,
            max_object_entries: 10_000,
        }
    }
}

/// Which limit a body broke (and the limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exceeded {
    /// An array had more elements than this.
    ArrayElements(usize),
    /// An object had more entries than this.
    ObjectEntries(usize),
}

impl fmt::Display for Exceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exceeded::ArrayElements(max) => write!(
                f,
                "request body has an array of more than {max} elements \
                 (listener max_json_array_element_count)"
            ),
            Exceeded::ObjectEntries(max) => write!(
                f,
                "request body has an object of more than {max} entries \
                 (listener max_json_object_entry_count)"
            ),
        }
    }
}

/// Walk `body` and say whether it breaks a limit. Malformed JSON is not judged here
/// (`Ok`): the parser that follows reports it with its position.
pub fn check(body: &[u8], limits: JsonLimits) -> Result<(), Exceeded> {
    if body.len() <= WALK_ABOVE {
        return Ok(());
    }
    let exceeded = Cell::new(None);
    let walk = Walk {
        limits,
        exceeded: &exceeded,
    };
    let mut de = serde_json::Deserializer::from_slice(body);
    let _ = walk.deserialize(&mut de);
    match exceeded.get() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[derive(Clone, Copy)]
struct Walk<'a> {
    limits: JsonLimits,
    exceeded: &'a Cell<Option<Exceeded>>,
}

impl<'de> DeserializeSeed<'de> for Walk<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Walk<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut count = 0usize;
        while seq.next_element_seed(self)?.is_some() {
            count += 1;
            if count > self.limits.max_array_elements {
                self.exceeded.set(Some(Exceeded::ArrayElements(
                    self.limits.max_array_elements,
                )));
                return Err(de::Error::custom("limit"));
            }
        }
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut count = 0usize;
        while map.next_key::<IgnoredAny>()?.is_some() {
            map.next_value_seed(self)?;
            count += 1;
            if count > self.limits.max_object_entries {
                self.exceeded.set(Some(Exceeded::ObjectEntries(
                    self.limits.max_object_entries,
                )));
                return Err(de::Error::custom("limit"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(items: usize) -> Vec<u8> {
        let item = r#"{"plaintext":"aGVsbG8="}"#;
        let mut body = String::from(r#"{"batch_input":["#);
        for i in 0..items {
            if i > 0 {
                body.push(',');
            }
            body.push_str(item);
        }
        body.push_str("]}");
        body.into_bytes()
    }

    #[test]
    fn a_million_item_batch_is_refused_before_it_becomes_a_tree() {
        let limits = JsonLimits::default();
        assert_eq!(
            check(&batch(1_000_000), limits),
            Err(Exceeded::ArrayElements(10_000))
        );
        assert_eq!(check(&batch(10_000), limits), Ok(()));
        let nested = format!(
            r#"{{"data":{{"list":{}}}}}"#,
            String::from_utf8(batch(20_000)).unwrap()
        );
        assert_eq!(
            check(nested.as_bytes(), limits),
            Err(Exceeded::ArrayElements(10_000))
        );
    }

    #[test]
    fn wide_objects_are_refused_and_small_bodies_are_not_walked() {
        let limits = JsonLimits {
            max_array_elements: 10,
            max_object_entries: 100,
        };
        let mut wide = String::from("{");
        for i in 0..5_000 {
            if i > 0 {
                wide.push(',');
            }
            wide.push_str(&format!(r#""key-{i}":"value""#));
        }
        wide.push('}');
        assert_eq!(
            check(wide.as_bytes(), limits),
            Err(Exceeded::ObjectEntries(100))
        );
        // Under the walking threshold nothing is judged.
        assert_eq!(check(br#"{"a":[1,2,3,4,5,6,7,8,9,10,11]}"#, limits), Ok(()));
        // Malformed JSON is left to the parser that follows.
        let mut broken = batch(100);
        broken.extend_from_slice(&[b' '; WALK_ABOVE]);
        broken.push(b'x');
        assert_eq!(check(&broken, JsonLimits::default()), Ok(()));
    }
}
