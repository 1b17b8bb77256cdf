//! Read access to a decoded JSON document, for the checks that run both on manifests
//! (parsed into `serde_json::Value`) and on admission reviews (decoded into a [`Tree`]
//! that borrows its strings from the request body).
//!
//! A [`Tree`] answers every question exactly as the `Value` of the same text would: its
//! object entries are kept sorted by key with the last of duplicate keys winning (what
//! `Value`'s `BTreeMap` does), so lookups, iteration order and re-serialisation are the
//! same. What it saves is the allocation of every key and string (a `Value` allocates
//! each, and a B-tree node per object); a `Tree` allocates one vector per non-empty array
//! or object, and a string only when it has an escape.

use std::borrow::Cow;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Deserialize, Serialize, Serializer};
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

/// A JSON value whose keys and strings borrow from the decoded text where they can (a
/// string with an escape is owned).
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Tree<'a> {
    /// `null`.
    #[default]
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// A number, as `serde_json` keeps it.
    Number(Number),
    /// A string.
    String(Cow<'a, str>),
    /// An array.
    Array(Vec<Tree<'a>>),
    /// An object: sorted by key, each key once (the last of duplicates kept).
    Object(Vec<(Cow<'a, str>, Tree<'a>)>),
}

impl<'a> Tree<'a> {
    /// A tree borrowing the strings of `value`.
    pub fn from_value(value: &'a Value) -> Tree<'a> {
        match value {
            Value::Null => Tree::Null,
            Value::Bool(b) => Tree::Bool(*b),
            Value::Number(n) => Tree::Number(n.clone()),
            Value::String(s) => Tree::String(Cow::Borrowed(s)),
            Value::Array(items) => Tree::Array(items.iter().map(Tree::from_value).collect()),
            // A `Map` iterates in key order with unique keys: already the tree's order.
            Value::Object(map) => Tree::Object(
                map.iter()
                    .map(|(k, v)| (Cow::Borrowed(k.as_str()), Tree::from_value(v)))
                    .collect(),
            ),
        }
    }

    /// Sort decoded members by key, keeping the last of duplicate keys.
    fn object(mut entries: Vec<(Cow<'a, str>, Tree<'a>)>) -> Tree<'a> {
        if !entries.is_sorted_by(|a, b| a.0 < b.0) {
            // Reversed first, so that after the stable sort the last duplicate comes first
            // and `dedup_by` (which keeps the first) keeps it.
            entries.reverse();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            entries.dedup_by(|a, b| a.0 == b.0);
        }
        Tree::Object(entries)
    }
}

impl Json for Tree<'_> {
    fn get(&self, key: &str) -> Option<&Self> {
        let Tree::Object(entries) = self else {
            return None;
        };
        // Most objects of a manifest have a handful of members: comparing lengths first
        // skips nearly every string comparison, where a binary search makes several.
        if entries.len() <= 16 {
            return entries
                .iter()
                .find(|(k, _)| k.len() == key.len() && k.as_ref() == key)
                .map(|(_, v)| v);
        }
        let i = entries
            .binary_search_by(|(k, _)| k.as_ref().cmp(key))
            .ok()?;
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
            Tree::Number(n) => n.as_i64(),
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
            Tree::Object(entries) => Some(entries.iter().map(|(k, v)| (k.as_ref(), v))),
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
            Tree::Number(n) => Value::Number(n.clone()),
            Tree::String(s) => Value::String(s.as_ref().to_owned()),
            Tree::Array(items) => Value::Array(items.iter().map(Tree::to_value).collect()),
            Tree::Object(entries) => Value::Object(
                entries
                    .iter()
                    .map(|(k, v)| (k.as_ref().to_owned(), v.to_value()))
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
            Tree::Number(n) => n.serialize(s),
            Tree::String(t) => s.serialize_str(t),
            Tree::Array(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Tree::Object(entries) => {
                let mut map = s.serialize_map(Some(entries.len()))?;
                for (k, v) in entries {
                    map.serialize_entry(k.as_ref(), v)?;
                }
                map.end()
            }
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Tree<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Tree<'a>, D::Error> {
        d.deserialize_any(TreeVisitor)
    }
}

struct TreeVisitor;

impl<'de> Visitor<'de> for TreeVisitor {
    type Value = Tree<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, b: bool) -> Result<Tree<'de>, E> {
        Ok(Tree::Bool(b))
    }

    fn visit_i64<E>(self, n: i64) -> Result<Tree<'de>, E> {
        Ok(Tree::Number(n.into()))
    }

    fn visit_u64<E>(self, n: u64) -> Result<Tree<'de>, E> {
        Ok(Tree::Number(n.into()))
    }

    fn visit_f64<E>(self, n: f64) -> Result<Tree<'de>, E> {
        // What `Value` does: a non-finite float (never produced by JSON text) is `null`.
        Ok(Number::from_f64(n).map_or(Tree::Null, Tree::Number))
    }

    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Tree<'de>, E> {
        Ok(Tree::String(Cow::Borrowed(s)))
    }

    fn visit_str<E>(self, s: &str) -> Result<Tree<'de>, E> {
        Ok(Tree::String(Cow::Owned(s.to_owned())))
    }

    fn visit_string<E>(self, s: String) -> Result<Tree<'de>, E> {
        Ok(Tree::String(Cow::Owned(s)))
    }

    fn visit_unit<E>(self) -> Result<Tree<'de>, E> {
        Ok(Tree::Null)
    }

    fn visit_none<E>(self) -> Result<Tree<'de>, E> {
        Ok(Tree::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Tree<'de>, D::Error> {
        Tree::deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Tree<'de>, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Tree::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Tree<'de>, A::Error> {
        let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(0).min(64));
        while let Some(key) = map.next_key_seed(KeySeed)? {
            entries.push((key, map.next_value()?));
        }
        Ok(Tree::object(entries))
    }
}

/// An object key, borrowed when the text has no escape.
struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Cow<'de, str>, D::Error> {
        d.deserialize_str(KeyVisitor)
    }
}

struct KeyVisitor;

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string key")
    }

    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Borrowed(s))
    }

    fn visit_str<E>(self, s: &str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(s.to_owned()))
    }

    fn visit_string<E>(self, s: String) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(s))
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
            let tree: Tree<'_> = serde_json::from_str(doc).unwrap();
            assert_eq!(tree.to_text(), value.to_string(), "{doc}");
            assert_eq!(tree.to_value(), value, "{doc}");
            assert_eq!(Tree::from_value(&value), tree, "{doc}");
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
        let tree: Tree<'_> = serde_json::from_str(text).unwrap();
        let Tree::Object(entries) = &tree else {
            panic!("an object")
        };
        for (k, v) in entries {
            let borrowed = |c: &Cow<'_, str>| matches!(c, Cow::Borrowed(_));
            let Tree::String(s) = v else {
                panic!("a string")
            };
            assert_eq!(borrowed(k), !k.contains('"'), "{k}");
            assert_eq!(borrowed(s), !s.contains('\t'), "{s}");
        }
    }

    #[test]
    fn the_nesting_limit_of_the_parser_still_applies() {
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        let err = serde_json::from_str::<Tree<'_>>(&deep).unwrap_err();
        assert!(err.to_string().contains("recursion limit"), "{err}");
    }
}
