//! Read access to a decoded JSON document, for the checks that run both on manifests
//! (parsed into `serde_json::Value`) and on admission reviews (decoded into a [`Tree`]
//! that borrows its strings from the request body).
//!
//! A [`Tree`] answers every question exactly as the `Value` of the same text would: its
//! object entries are kept sorted by key with the last of duplicate keys winning (what
//! `Value`'s `BTreeMap` does), so lookups, iteration order and re-serialisation are the
//! same. What it saves is the allocation of every key, string and node (a `Value`
//! allocates each, and a B-tree node per object) and the walk that frees them: a `Tree`'s
//! arrays and objects are slices of an [`Arena`], given back all at once, and a string
//! is copied (into the arena) only when it has an escape.

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};
use serde_json::{Number, Value};

/// What the checks read of a JSON value.
pub trait Json: Sized {
    /// The member `key` of an object (`None` for a missing key or a non-object).
    fn get(&self, key: &str) -> Option<&Self>;
    /// The text of a string.
    fn as_str(&self) -> Option<&str>;
    /// A boolean.
    fn as_bool(&self) -> Option<bool>;
    /// An integer that fits `i64`.
    fn as_i64(&self) -> Option<i64>;
    /// The items of an array.
    fn as_array(&self) -> Option<&[Self]>;
    /// The members of an object, in key order.
    fn entries(&self) -> Option<impl Iterator<Item = (&str, &Self)>>;
    /// Whether this is `null`.
    fn is_null(&self) -> bool;
    /// Compact JSON text.
    fn to_text(&self) -> String;
    /// An owned `Value` copy.
    fn to_value(&self) -> Value;
}

impl Json for Value {
    fn get(&self, key: &str) -> Option<&Value> {
        Value::get(self, key)
    }

    fn as_str(&self) -> Option<&str> {
        Value::as_str(self)
    }

    fn as_bool(&self) -> Option<bool> {
        Value::as_bool(self)
    }

    fn as_i64(&self) -> Option<i64> {
        Value::as_i64(self)
    }

    fn as_array(&self) -> Option<&[Value]> {
        Value::as_array(self).map(Vec::as_slice)
    }

    fn entries(&self) -> Option<impl Iterator<Item = (&str, &Value)>> {
        Value::as_object(self).map(|m| m.iter().map(|(k, v)| (k.as_str(), v)))
    }

    fn is_null(&self) -> bool {
        Value::is_null(self)
    }

    fn to_text(&self) -> String {
        self.to_string()
    }

    fn to_value(&self) -> Value {
        self.clone()
    }
}

/// Memory for [`Tree`]s: every array and object of a decoded document, and every string
/// with an escape, is placed here by bumping a pointer, and all of it is given back at
/// once by [`Arena::reset`] (nothing in a tree needs dropping). One arena per thread,
/// reset between documents, makes decoding allocation-free once it has grown.
#[derive(Default)]
pub struct Arena(bumpalo::Bump);

impl Arena {
    /// An empty arena.
    pub fn new() -> Arena {
        Arena::default()
    }

    /// Give back everything allocated (the trees borrowing it are gone: the borrow
    /// checker sees to that). The largest chunk is kept for the next document.
    pub fn reset(&mut self) {
        self.0.reset();
    }

    /// Bytes held, including the free part of the current chunk.
    pub fn allocated_bytes(&self) -> usize {
        self.0.allocated_bytes()
    }

    /// A decoder of one document into this arena (see [`Builder::seed`]).
    pub fn builder(&self) -> Builder<'_> {
        Builder {
            bump: &self.0,
            members: Vec::new(),
            items: Vec::new(),
        }
    }
}

impl fmt::Debug for Arena {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Arena")
            .field("allocated_bytes", &self.allocated_bytes())
            .finish()
    }
}

/// A JSON number, as `serde_json` keeps it without arbitrary precision.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Num {
    /// A non-negative integer.
    Pos(u64),
    /// A negative integer.
    Neg(i64),
    /// Anything else (finite).
    Float(f64),
}

impl Num {
    fn of(n: &Number) -> Num {
        if let Some(u) = n.as_u64() {
            Num::Pos(u)
        } else if let Some(i) = n.as_i64() {
            Num::Neg(i)
        } else {
            Num::Float(n.as_f64().unwrap_or_default())
        }
    }

    fn number(self) -> Number {
        match self {
            Num::Pos(u) => u.into(),
            Num::Neg(i) => i.into(),
            // Only finite floats are kept (`Tree::Null` otherwise, as `Value` does).
            Num::Float(f) => Number::from_f64(f).unwrap_or_else(|| 0.into()),
        }
    }
}

/// A JSON value whose keys and strings borrow from the decoded text where they can, and
/// whose arrays, objects and escaped strings live in an [`Arena`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub enum Tree<'a> {
    /// `null`.
    #[default]
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// A number.
    Number(Num),
    /// A string.
    String(&'a str),
    /// An array.
    Array(&'a [Tree<'a>]),
    /// An object: sorted by key, each key once (the last of duplicates kept).
    Object(&'a [(&'a str, Tree<'a>)]),
}

impl<'a> Tree<'a> {
    /// A tree borrowing the strings of `value`, its arrays and objects in `arena`.
    pub fn from_value(value: &'a Value, arena: &'a Arena) -> Tree<'a> {
        match value {
            Value::Null => Tree::Null,
            Value::Bool(b) => Tree::Bool(*b),
            Value::Number(n) => Tree::Number(Num::of(n)),
            Value::String(s) => Tree::String(s),
            Value::Array(items) => Tree::Array(
                arena
                    .0
                    .alloc_slice_fill_iter(items.iter().map(|v| Tree::from_value(v, arena))),
            ),
            // A `Map` iterates in key order with unique keys: already the tree's order.
            Value::Object(map) => Tree::Object(
                arena.0.alloc_slice_fill_iter(
                    map.iter()
                        .map(|(k, v)| (k.as_str(), Tree::from_value(v, arena))),
                ),
            ),
        }
    }

    /// Decode `text` into `arena` (what `serde_json::from_str` does for a `Value`,
    /// including its nesting limit and its refusal of trailing characters).
    pub fn parse(text: &'a str, arena: &'a Arena) -> Result<Tree<'a>, serde_json::Error> {
        let mut builder = arena.builder();
        let mut de = serde_json::Deserializer::from_str(text);
        let tree = builder.seed().deserialize(&mut de)?;
        de.end()?;
        Ok(tree)
    }
}

/// Decodes trees into an [`Arena`]: members and items are gathered on two stacks shared
/// by the whole document, then copied once into an exact-size slice of the arena.
pub struct Builder<'a> {
    bump: &'a bumpalo::Bump,
    members: Vec<(&'a str, Tree<'a>)>,
    items: Vec<Tree<'a>>,
}

impl<'a> Builder<'a> {
    /// A `DeserializeSeed` that decodes one value (with `next_value_seed` and the like,
    /// inside a hand-written visitor of an enclosing document).
    pub fn seed(&mut self) -> TreeSeed<'_, 'a> {
        TreeSeed { builder: self }
    }

    /// Sort the members gathered from `start` by key, keeping the last of duplicate keys,
    /// and copy them into the arena.
    fn object(&mut self, start: usize) -> Tree<'a> {
        let members = self.members.get_mut(start..).unwrap_or_default();
        if !members.is_sorted_by(|a, b| key_less(a.0, b.0)) {
            // Reversed first, so that after the stable sort the last duplicate comes
            // first, and the loop below keeps the first of each key.
            members.reverse();
            members.sort_by(|a, b| a.0.cmp(b.0));
            let mut kept = 0;
            for i in 0..members.len() {
                if kept == 0 || members.get(kept - 1).map(|m| m.0) != members.get(i).map(|m| m.0) {
                    members.swap(kept, i);
                    kept += 1;
                }
            }
            self.members.truncate(start + kept);
        }
        let object = self
            .bump
            .alloc_slice_copy(self.members.get(start..).unwrap_or_default());
        self.members.truncate(start);
        Tree::Object(object)
    }
}

/// `a < b` as `str` orders them, deciding on the first byte when it differs (adjacent
/// keys of an object nearly always differ there) without the call to `memcmp`.
fn key_less(a: &str, b: &str) -> bool {
    match (a.as_bytes().first(), b.as_bytes().first()) {
        (Some(x), Some(y)) if x != y => x < y,
        _ => a < b,
    }
}

/// Decodes one value into a [`Builder`]'s arena.
pub struct TreeSeed<'b, 'a> {
    builder: &'b mut Builder<'a>,
}

impl<'de: 'a, 'a> DeserializeSeed<'de> for TreeSeed<'_, 'a> {
    type Value = Tree<'a>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Tree<'a>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de: 'a, 'a> Visitor<'de> for TreeSeed<'_, 'a> {
    type Value = Tree<'a>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, b: bool) -> Result<Tree<'a>, E> {
        Ok(Tree::Bool(b))
    }

    fn visit_i64<E>(self, n: i64) -> Result<Tree<'a>, E> {
        // `Number::from(i64)`: a non-negative integer is a `PosInt`.
        Ok(Tree::Number(u64::try_from(n).map_or(Num::Neg(n), Num::Pos)))
    }

    fn visit_u64<E>(self, n: u64) -> Result<Tree<'a>, E> {
        Ok(Tree::Number(Num::Pos(n)))
    }

    fn visit_f64<E>(self, n: f64) -> Result<Tree<'a>, E> {
        // What `Value` does: a non-finite float (never produced by JSON text) is `null`.
        Ok(if n.is_finite() {
            Tree::Number(Num::Float(n))
        } else {
            Tree::Null
        })
    }

    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Tree<'a>, E> {
        Ok(Tree::String(s))
    }

    fn visit_str<E>(self, s: &str) -> Result<Tree<'a>, E> {
        Ok(Tree::String(self.builder.bump.alloc_str(s)))
    }

    fn visit_unit<E>(self) -> Result<Tree<'a>, E> {
        Ok(Tree::Null)
    }

    fn visit_none<E>(self) -> Result<Tree<'a>, E> {
        Ok(Tree::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Tree<'a>, D::Error> {
        d.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Tree<'a>, A::Error> {
        let b = self.builder;
        let start = b.items.len();
        while let Some(item) = seq.next_element_seed(TreeSeed { builder: &mut *b })? {
            b.items.push(item);
        }
        let items = b
            .bump
            .alloc_slice_copy(b.items.get(start..).unwrap_or_default());
        b.items.truncate(start);
        Ok(Tree::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Tree<'a>, A::Error> {
        let b = self.builder;
        let start = b.members.len();
        while let Some(key) = map.next_key_seed(KeySeed(b.bump))? {
            let value = map.next_value_seed(TreeSeed { builder: &mut *b })?;
            b.members.push((key, value));
        }
        Ok(b.object(start))
    }
}

impl Json for Tree<'_> {
    fn get(&self, key: &str) -> Option<&Self> {
        let Tree::Object(entries) = self else {
            return None;
        };
        // Most objects of a manifest have a handful of members: comparing lengths and
        // first bytes skips nearly every call to `memcmp`, where a binary search makes
        // several.
        if entries.len() <= 16 {
            let first = key.as_bytes().first();
            return entries
                .iter()
                .find(|(k, _)| k.len() == key.len() && k.as_bytes().first() == first && *k == key)
                .map(|(_, v)| v);
        }
        let i = entries.binary_search_by(|(k, _)| (*k).cmp(key)).ok()?;
        entries.get(i).map(|(_, v)| v)
    }

    fn as_str(&self) -> Option<&str> {
        match self {
            Tree::String(s) => Some(s),
            _ => None,
        }
    }

    fn as_bool(&self) -> Option<bool> {
        match self {
            Tree::Bool(b) => Some(*b),
            _ => None,
        }
    }

    fn as_i64(&self) -> Option<i64> {
        match self {
            Tree::Number(Num::Pos(u)) => i64::try_from(*u).ok(),
            Tree::Number(Num::Neg(i)) => Some(*i),
            _ => None,
        }
    }

    fn as_array(&self) -> Option<&[Self]> {
        match self {
            Tree::Array(items) => Some(items),
            _ => None,
        }
    }

    fn entries(&self) -> Option<impl Iterator<Item = (&str, &Self)>> {
        match self {
            Tree::Object(entries) => Some(entries.iter().map(|(k, v)| (*k, v))),
            _ => None,
        }
    }

    fn is_null(&self) -> bool {
        matches!(self, Tree::Null)
    }

    fn to_text(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    fn to_value(&self) -> Value {
        match self {
            Tree::Null => Value::Null,
            Tree::Bool(b) => Value::Bool(*b),
            Tree::Number(n) => Value::Number(n.number()),
            Tree::String(s) => Value::String((*s).to_owned()),
            Tree::Array(items) => Value::Array(items.iter().map(Tree::to_value).collect()),
            Tree::Object(entries) => Value::Object(
                entries
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), v.to_value()))
                    .collect(),
            ),
        }
    }
}

impl Serialize for Tree<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Tree::Null => s.serialize_unit(),
            Tree::Bool(b) => s.serialize_bool(*b),
            Tree::Number(n) => n.number().serialize(s),
            Tree::String(t) => s.serialize_str(t),
            Tree::Array(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in *items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Tree::Object(entries) => {
                let mut map = s.serialize_map(Some(entries.len()))?;
                for (k, v) in *entries {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}

/// An object key, borrowed when the text has no escape (else copied into the arena).
pub struct KeySeed<'a>(&'a bumpalo::Bump);

impl<'de: 'a, 'a> DeserializeSeed<'de> for KeySeed<'a> {
    type Value = &'a str;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<&'a str, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de: 'a, 'a> Visitor<'de> for KeySeed<'a> {
    type Value = &'a str;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string key")
    }

    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<&'a str, E> {
        Ok(s)
    }

    fn visit_str<E>(self, s: &str) -> Result<&'a str, E> {
        Ok(self.0.alloc_str(s))
    }
}

impl<'a> Builder<'a> {
    /// A `DeserializeSeed` for a key of an enclosing document (in a hand-written visitor),
    /// read as a tree's keys are: borrowed, or copied into the arena when escaped.
    pub fn key_seed(&self) -> KeySeed<'a> {
        KeySeed(self.bump)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Documents whose `Tree` must answer as their `Value` does: escapes in keys and
    /// strings, duplicate keys, unsorted keys, every number form, nesting, empties.
    const DOCS: &[&str] = &[
        r#"{"kind":"Pod","metadata":{"name":"a","labels":{"z":"1","a":"2"}},"spec":{}}"#,
        r#"{"b":1,"a":2,"b":3,"a":{"x":[1,2,{"y":null}]},"c":true}"#,
        r#"{"k\u00e9y":"v\u00e9","plain":"caf\u00e9 \"quoted\" \\ \n","\n":""}"#,
        r#"[1,-1,18446744073709551615,-9223372036854775808,1.5,-0.0,1e300,0.1,123456789012345678901234567890]"#,
        r#"{"":{"":{"":[[],{},"",0,false,null]}}}"#,
        r#"{"runAsUser":10001,"big":9223372036854775808,"neg":-5,"f":2.0}"#,
        r#""just a string""#,
        r#"null"#,
    ];

    #[test]
    fn a_tree_answers_as_the_value_of_the_same_text() {
        for doc in DOCS {
            let value: Value = serde_json::from_str(doc).unwrap();
            let (arena, converted) = (Arena::new(), Arena::new());
            let tree = Tree::parse(doc, &arena).unwrap();
            assert_eq!(tree.to_text(), value.to_string(), "{doc}");
            assert_eq!(tree.to_value(), value, "{doc}");
            assert_eq!(Tree::from_value(&value, &converted), tree, "{doc}");
            same(&tree, &value);
        }
    }

    /// Every accessor gives the same answer on both, all the way down.
    fn same(tree: &Tree<'_>, value: &Value) {
        assert_eq!(Json::as_str(tree), Json::as_str(value));
        assert_eq!(Json::as_bool(tree), Json::as_bool(value));
        assert_eq!(Json::as_i64(tree), Json::as_i64(value));
        assert_eq!(Json::is_null(tree), Json::is_null(value));
        assert_eq!(
            Json::as_array(tree).map(<[_]>::len),
            Json::as_array(value).map(<[_]>::len)
        );
        for (t, v) in Json::as_array(tree)
            .unwrap_or_default()
            .iter()
            .zip(Json::as_array(value).unwrap_or_default())
        {
            same(t, v);
        }
        let tree_keys: Option<Vec<&str>> = Json::entries(tree).map(|e| e.map(|(k, _)| k).collect());
        let value_keys: Option<Vec<&str>> =
            Json::entries(value).map(|e| e.map(|(k, _)| k).collect());
        assert_eq!(tree_keys, value_keys);
        for (k, v) in Json::entries(value).into_iter().flatten() {
            let t = Json::get(tree, k).expect("every key of the value is in the tree");
            same(t, v);
        }
        assert!(Json::get(tree, "no such key").is_none());
    }

    #[test]
    fn strings_without_escapes_are_borrowed_from_the_text() {
        let text = r#"{"name":"plain","esc\"aped":"a\tb"}"#;
        let arena = Arena::new();
        let tree = Tree::parse(text, &arena).unwrap();
        let Tree::Object(entries) = tree else {
            panic!("an object")
        };
        let borrowed = |s: &str| text.as_bytes().as_ptr_range().contains(&s.as_ptr());
        for (k, v) in entries {
            let Tree::String(s) = v else {
                panic!("a string")
            };
            assert_eq!(borrowed(k), !k.contains('"'), "{k}");
            assert_eq!(borrowed(s), !s.contains('\t'), "{s}");
        }
    }

    #[test]
    fn keys_are_ordered_as_strings_are() {
        let keys = [
            "",
            "a",
            "b",
            "ab",
            "aa",
            "B",
            "é",
            "e",
            "ée",
            "\u{10000}",
            "z\0",
            "z",
        ];
        for a in keys {
            for b in keys {
                assert_eq!(key_less(a, b), a < b, "{a:?} < {b:?}");
            }
        }
    }

    #[test]
    fn an_arena_is_reused_after_a_reset_and_trailing_text_is_refused() {
        let mut arena = Arena::new();
        let doc = DOCS.first().copied().unwrap_or_default();
        let first = Tree::parse(doc, &arena).unwrap().to_text();
        let held = arena.allocated_bytes();
        for _ in 0..100 {
            arena.reset();
            assert_eq!(Tree::parse(doc, &arena).unwrap().to_text(), first);
        }
        assert_eq!(arena.allocated_bytes(), held, "no growth across resets");
        assert!(Tree::parse("{} {}", &arena).is_err());
        assert!(Tree::parse("[1,", &arena).is_err());
    }

    #[test]
    fn the_nesting_limit_of_the_parser_still_applies() {
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        let err = Tree::parse(&deep, &Arena::new()).unwrap_err();
        assert!(err.to_string().contains("recursion limit"), "{err}");
    }
}
