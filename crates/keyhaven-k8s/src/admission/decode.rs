//! Decoding an AdmissionReview with its objects in an [`Arena`]: the review's envelope
//! by hand-written visitors (a derived decoder cannot carry the arena to the objects),
//! the objects as [`Tree`]s. It accepts and refuses what a derived decoder of the same
//! fields would: unknown fields are skipped (without recursion, however deep), a field
//! given twice is refused, `null` for an optional field is its absence, and a field of
//! the wrong type is refused with serde_json's message and position.

use std::fmt;

use keyhaven_scan::json::{Arena, Builder, Tree};
use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};

/// The review as decoded.
#[derive(Debug, Default)]
pub(super) struct ReviewIn<'a> {
    pub api_version: String,
    pub kind: String,
    pub request: Option<RequestIn<'a>>,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct GroupVersionKind {
    #[serde(default)]
    pub kind: String,
}

/// `request`: the fields the evaluator reads.
#[derive(Debug, Default)]
pub(super) struct RequestIn<'a> {
    pub uid: String,
    pub kind: GroupVersionKind,
    pub sub_resource: Option<String>,
    pub name: Option<String>,
    pub namespace: Option<String>,
    pub operation: String,
    pub object: Option<Tree<'a>>,
    pub old_object: Option<Tree<'a>>,
    pub dry_run: Option<bool>,
}

/// Decode `body` (a whole AdmissionReview, nothing after it but white space) into
/// `arena`.
pub(super) fn review<'a>(
    body: &'a [u8],
    arena: &'a Arena,
) -> Result<ReviewIn<'a>, serde_json::Error> {
    // Valid UTF-8 is checked once for the whole body, not string by string (the same
    // decoding; invalid UTF-8 keeps serde_json's error, with its position).
    match std::str::from_utf8(body) {
        Ok(text) => whole(serde_json::Deserializer::from_str(text), arena),
        Err(_) => whole(serde_json::Deserializer::from_slice(body), arena),
    }
}

/// The review read by `de`, with nothing after it but white space.
fn whole<'a, R: serde_json::de::Read<'a>>(
    mut de: serde_json::Deserializer<R>,
    arena: &'a Arena,
) -> Result<ReviewIn<'a>, serde_json::Error> {
    let review = ReviewSeed(&mut arena.builder()).deserialize(&mut de)?;
    de.end()?;
    Ok(review)
}

/// Refuse a field seen before (what a derived decoder does).
fn first<E: de::Error>(seen: &mut bool, field: &'static str) -> Result<(), E> {
    if std::mem::replace(seen, true) {
        return Err(E::duplicate_field(field));
    }
    Ok(())
}

/// The value of a field seen once.
fn value<'de, A: MapAccess<'de>, T: Deserialize<'de>>(
    map: &mut A,
    seen: &mut bool,
    field: &'static str,
) -> Result<T, A::Error> {
    first(seen, field)?;
    map.next_value()
}

/// An object seen once, `null` meaning absent.
fn object<'de: 'a, 'a, A: MapAccess<'de>>(
    map: &mut A,
    builder: &mut Builder<'a>,
    seen: &mut bool,
    field: &'static str,
) -> Result<Option<Tree<'a>>, A::Error> {
    first(seen, field)?;
    let tree = map.next_value_seed(builder.seed())?;
    Ok((tree != Tree::Null).then_some(tree))
}

struct ReviewSeed<'b, 'a>(&'b mut Builder<'a>);

impl<'de: 'a, 'a> DeserializeSeed<'de> for ReviewSeed<'_, 'a> {
    type Value = ReviewIn<'a>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<ReviewIn<'a>, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de: 'a, 'a> Visitor<'de> for ReviewSeed<'_, 'a> {
    type Value = ReviewIn<'a>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an AdmissionReview object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ReviewIn<'a>, A::Error> {
        let b = self.0;
        let mut out = ReviewIn::default();
        let (mut api_version, mut kind, mut request) = (false, false, false);
        while let Some(key) = map.next_key_seed(b.key_seed())? {
            match key {
                "apiVersion" => out.api_version = value(&mut map, &mut api_version, "apiVersion")?,
                "kind" => out.kind = value(&mut map, &mut kind, "kind")?,
                "request" => {
                    first(&mut request, "request")?;
                    out.request = map.next_value_seed(OptionalRequest(&mut *b))?;
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(out)
    }
}

/// `request`, or `null`.
struct OptionalRequest<'b, 'a>(&'b mut Builder<'a>);

impl<'de: 'a, 'a> DeserializeSeed<'de> for OptionalRequest<'_, 'a> {
    type Value = Option<RequestIn<'a>>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_option(self)
    }
}

impl<'de: 'a, 'a> Visitor<'de> for OptionalRequest<'_, 'a> {
    type Value = Option<RequestIn<'a>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an admission request object or null")
    }

    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(RequestSeed(self.0)).map(Some)
    }
}

struct RequestSeed<'b, 'a>(&'b mut Builder<'a>);

impl<'de: 'a, 'a> Visitor<'de> for RequestSeed<'_, 'a> {
    type Value = RequestIn<'a>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an admission request object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RequestIn<'a>, A::Error> {
        let b = self.0;
        let mut out = RequestIn::default();
        let mut seen = [false; 9];
        let [uid, kind, sub, name, ns, op, obj, old, dry] = &mut seen;
        while let Some(key) = map.next_key_seed(b.key_seed())? {
            match key {
                "uid" => out.uid = value(&mut map, uid, "uid")?,
                "kind" => out.kind = value(&mut map, kind, "kind")?,
                "subResource" => out.sub_resource = value(&mut map, sub, "subResource")?,
                "name" => out.name = value(&mut map, name, "name")?,
                "namespace" => out.namespace = value(&mut map, ns, "namespace")?,
                "operation" => out.operation = value(&mut map, op, "operation")?,
                "object" => out.object = object(&mut map, b, obj, "object")?,
                "oldObject" => out.old_object = object(&mut map, b, old, "oldObject")?,
                "dryRun" => out.dry_run = value(&mut map, dry, "dryRun")?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(text: &str) -> Result<String, String> {
        let arena = Arena::new();
        review(text.as_bytes(), &arena)
            .map(|r| format!("{r:?}"))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn the_envelope_decodes_as_a_derived_decoder_would() {
        let ok = decode(
            r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","extra":{"deep":[[[1]]]},
               "request":{"uid":"u1","kind":{"group":"apps","kind":"Deployment"},"subResource":null,
                          "name":"n","namespace":"ns","operation":"UPDATE","dryRun":true,
                          "object":{"kind":"Pod"},"oldObject":null,"userInfo":{"username":"x"}}}"#,
        )
        .unwrap();
        for part in [
            "api_version: \"admission.k8s.io/v1\"",
            "uid: \"u1\"",
            "kind: \"Deployment\"",
            "sub_resource: None",
            "operation: \"UPDATE\"",
            "old_object: None",
            "dry_run: Some(true)",
            "object: Some(Object([(\"kind\", String(\"Pod\"))]))",
        ] {
            assert!(ok.contains(part), "{part} in {ok}");
        }
        assert!(
            decode(r#"{"request":null}"#)
                .unwrap()
                .contains("request: None")
        );
        assert!(
            decode(r#"{"ap\u0069Version":"v"}"#)
                .unwrap()
                .contains("api_version: \"v\"")
        );

        for (bad, says) in [
            (r#"{"kind":"A","kind":"B"}"#, "duplicate field `kind`"),
            (
                r#"{"request":{"uid":"a","uid":"b"}}"#,
                "duplicate field `uid`",
            ),
            (
                r#"{"request":{"uid":7}}"#,
                "invalid type: integer `7`, expected a string",
            ),
            (
                r#"{"request":{"uid":null}}"#,
                "invalid type: null, expected a string",
            ),
            (r#"{"request":{"dryRun":"yes"}}"#, "expected a boolean"),
            (r#"{"request":[1]}"#, "expected an admission request object"),
            (r#"[]"#, "expected an AdmissionReview object"),
            (r#"{"kind":"AdmissionReview"} x"#, "trailing characters"),
            (r#"{"request":{"object":{"a":}}}"#, "expected value"),
        ] {
            let e = decode(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
