//! Splitting a large document into its events without parsing it whole.
//!
//! simd-json builds a tape of about 24 bytes per JSON value before anything is decoded, so a
//! 16 MiB body of tiny values needs a 400 MB tape. A large document is therefore first cut
//! into its top-level values and, inside an array or an `EventList`'s `items`, into single
//! items by serde_json, which borrows each piece from the input and allocates nothing per
//! item; each piece is then decoded on its own. Memory follows the largest event, not the
//! document.

use std::borrow::Cow;
use std::fmt;

use serde::Deserializer as _;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

/// One piece of a large document, to decode on its own.
#[derive(Debug)]
pub(crate) enum Piece<'a> {
    /// A top-level value decoded as a whole (an Event, or a small list).
    Whole(&'a [u8]),
    /// The `index`th item of a top-level array or of an `EventList`'s `items`.
    Item {
        /// The item's bytes.
        raw: &'a [u8],
        /// Its position in its list.
        index: u64,
        /// The list's `apiVersion` (items without their own take it).
        list_api_version: Option<&'a str>,
    },
    /// An `EventList` whose `items` is not an array (the type found).
    BadItems(&'a [u8], &'static str),
}

/// The top-level values of `bytes` (one, or several separated by whitespace as in NDJSON),
/// each validated; an error names the line and column of the first problem.
pub(crate) fn top_level_values(bytes: &[u8]) -> Result<Vec<&RawValue>, serde_json::Error> {
    serde_json::Deserializer::from_slice(bytes)
        .into_iter::<&RawValue>()
        .collect()
}

/// Cuts one top-level value into pieces, in order, handing each to `each`. Values up to
/// `whole_up_to` bytes are handed whole.
pub(crate) fn pieces(
    value: &RawValue,
    whole_up_to: usize,
    each: &mut dyn FnMut(Piece<'_>),
) -> Result<(), serde_json::Error> {
    let text = value.get();
    if text.len() <= whole_up_to {
        each(Piece::Whole(text.as_bytes()));
        return Ok(());
    }
    match text.as_bytes().first() {
        Some(b'[') => {
            let mut de = serde_json::Deserializer::from_str(text);
            (&mut de).deserialize_seq(Items {
                each,
                list_api_version: None,
            })
        }
        Some(b'{') => {
            let head = ListHead::of(text)?;
            if head.kind.as_deref() != Some("EventList") {
                each(Piece::Whole(text.as_bytes()));
                return Ok(());
            }
            match head.items {
                None | Some("null") => Ok(()),
                Some("array") => {
                    let mut de = serde_json::Deserializer::from_str(text);
                    (&mut de).deserialize_map(ListItems {
                        each,
                        list_api_version: head.api_version.as_deref(),
                    })
                }
                Some(other) => {
                    each(Piece::BadItems(text.as_bytes(), other));
                    Ok(())
                }
            }
        }
        _ => {
            each(Piece::Whole(text.as_bytes()));
            Ok(())
        }
    }
}

/// What a large object says of itself: `kind`, `apiVersion`, and the type of `items`.
struct ListHead<'a> {
    kind: Option<Cow<'a, str>>,
    api_version: Option<Cow<'a, str>>,
    items: Option<&'static str>,
}

impl<'a> ListHead<'a> {
    fn of(text: &'a str) -> Result<Self, serde_json::Error> {
        let mut de = serde_json::Deserializer::from_str(text);
        (&mut de).deserialize_map(HeadVisitor)
    }
}

struct HeadVisitor;

impl<'de> Visitor<'de> for HeadVisitor {
    type Value = ListHead<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut head = ListHead {
            kind: None,
            api_version: None,
            items: None,
        };
        // A key given twice counts at its first occurrence, as the whole-document path reads
        // it (simd-json's lookup finds the first entry); otherwise a crafted duplicate could
        // make one document decode differently depending on its size.
        let (mut kind_seen, mut api_version_seen) = (false, false);
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            match key.as_ref() {
                "kind" if !kind_seen => {
                    kind_seen = true;
                    head.kind = map.next_value::<Option<Cow<'de, str>>>().ok().flatten()
                }
                "apiVersion" if !api_version_seen => {
                    api_version_seen = true;
                    head.api_version = map.next_value::<Option<Cow<'de, str>>>().ok().flatten()
                }
                "items" if head.items.is_none() => head.items = Some(map.next_value::<TypeOf>()?.0),
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(head)
    }
}

/// The JSON type of a value, read without keeping it.
struct TypeOf(&'static str);

impl<'de> de::Deserialize<'de> for TypeOf {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = TypeOf;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any value")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<TypeOf, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(TypeOf("array"))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TypeOf, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(TypeOf("object"))
            }
            fn visit_unit<E>(self) -> Result<TypeOf, E> {
                Ok(TypeOf("null"))
            }
            fn visit_bool<E>(self, _: bool) -> Result<TypeOf, E> {
                Ok(TypeOf("boolean"))
            }
            fn visit_str<E>(self, _: &str) -> Result<TypeOf, E> {
                Ok(TypeOf("string"))
            }
            fn visit_i64<E>(self, _: i64) -> Result<TypeOf, E> {
                Ok(TypeOf("number"))
            }
            fn visit_u64<E>(self, _: u64) -> Result<TypeOf, E> {
                Ok(TypeOf("number"))
            }
            fn visit_f64<E>(self, _: f64) -> Result<TypeOf, E> {
                Ok(TypeOf("number"))
            }
        }
        d.deserialize_any(V)
    }
}

/// Hands every element of a sequence to `each` as an item.
struct Items<'e, 'v> {
    each: &'e mut dyn FnMut(Piece<'_>),
    list_api_version: Option<&'v str>,
}

impl<'de> Visitor<'de> for Items<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of events")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut index = 0u64;
        while let Some(raw) = seq.next_element::<&'de RawValue>()? {
            (self.each)(Piece::Item {
                raw: raw.get().as_bytes(),
                index,
                list_api_version: self.list_api_version,
            });
            index += 1;
        }
        Ok(())
    }
}

impl<'de> DeserializeSeed<'de> for Items<'_, '_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

/// Hands every item of an `EventList`'s `items` to `each`; other keys are skipped.
struct ListItems<'e, 'v> {
    each: &'e mut dyn FnMut(Piece<'_>),
    list_api_version: Option<&'v str>,
}

impl<'de> Visitor<'de> for ListItems<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an EventList")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        // Only the first `items` counts, as in `ListHead`.
        let mut items_seen = false;
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            if key == "items" && !items_seen {
                items_seen = true;
                map.next_value_seed(Items {
                    each: &mut *self.each,
                    list_api_version: self.list_api_version,
                })?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(text: &str) -> Vec<String> {
        let mut out = Vec::new();
        for v in top_level_values(text.as_bytes()).unwrap() {
            pieces(v, 0, &mut |p| {
                out.push(match p {
                    Piece::Whole(b) => format!("whole {}", String::from_utf8_lossy(b)),
                    Piece::Item {
                        raw,
                        index,
                        list_api_version,
                    } => format!(
                        "item {index} {} {list_api_version:?}",
                        String::from_utf8_lossy(raw)
                    ),
                    Piece::BadItems(_, t) => format!("bad {t}"),
                })
            })
            .unwrap();
        }
        out
    }

    #[test]
    fn lists_arrays_and_events_are_cut_into_their_items() {
        assert_eq!(
            collect(
                r#"{"items":[{"a":1},{"b":[2]}],"kind":"EventList","apiVersion":"audit.k8s.io/v1"}"#
            ),
            [
                r#"item 0 {"a":1} Some("audit.k8s.io/v1")"#,
                r#"item 1 {"b":[2]} Some("audit.k8s.io/v1")"#
            ]
        );
        assert_eq!(
            collect("[0, {\"x\":\"y\"}]"),
            ["item 0 0 None", "item 1 {\"x\":\"y\"} None"]
        );
        assert_eq!(
            collect("{\"kind\":\"Event\",\"items\":[1]}\n{\"kind\":\"EventList\",\"items\":{}}"),
            ["whole {\"kind\":\"Event\",\"items\":[1]}", "bad object"]
        );
        assert!(collect(r#"{"kind":"EventList","items":null}"#).is_empty());
        assert!(top_level_values(b"[1,2").is_err());
        assert!(top_level_values(b"{} x").is_err());
    }
}
