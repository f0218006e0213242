//! Unknown fields in the request's objects. Each one is refused as soon as its name is read,
//! before its value, so a value nested 200,000 deep costs nothing. The error names the closest
//! known field when one is close, and lists them all. `ExecuteRequest`'s hand-written
//! deserializer calls [`unknown`] itself; the derived objects inside it (`limits`, each entry
//! of `files`) are read through [`Strict`]. A misspelt field is refused rather than ignored,
//! because ignoring it runs the script under limits or with files the caller did not mean.

use std::borrow::Cow;
use std::fmt;

use serde::de::value::CowStrDeserializer;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, forward_to_deserialize_any};

/// The longest part of an unknown name that an error repeats: a body may hold a 12 MiB one.
const MAX_SHOWN_CHARS: usize = 64;

/// The error for the field `name` in an object whose fields are `known`.
pub fn unknown<E: de::Error>(name: &str, known: &[&str]) -> E {
    let shown: String = name.chars().take(MAX_SHOWN_CHARS).collect();
    let cut = if shown.len() < name.len() { "…" } else { "" };
    let known_list = known.join(", ");
    match closest(name, known) {
        Some(close) => E::custom(format_args!(
            "unknown field `{shown}{cut}`; did you mean `{close}`? known fields: {known_list}"
        )),
        None => E::custom(format_args!(
            "unknown field `{shown}{cut}`; known fields: {known_list}"
        )),
    }
}

/// The known name closest to `name`, ignoring ASCII case: the first that starts with it (three
/// letters at least: `time` for `time_ms`, `strict` for `strict_result`), else the nearest
/// within a third of the name's length in edit distance (at least one edit; rustc's rule for
/// its own suggestions). A name longer than any field could be mistyped as gets none.
pub fn closest<'k>(name: &str, known: &[&'k str]) -> Option<&'k str> {
    let name: Vec<char> = name
        .chars()
        .take(MAX_SHOWN_CHARS + 1)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    if name.len() > MAX_SHOWN_CHARS {
        return None;
    }
    let starting = (name.len() >= 3)
        .then(|| {
            known.iter().copied().find(|candidate| {
                candidate.chars().count() > name.len()
                    && candidate.chars().zip(&name).all(|(a, b)| a == *b)
            })
        })
        .flatten();
    let threshold = name.len().max(3) / 3;
    starting.or_else(|| {
        known
            .iter()
            .filter_map(|candidate| {
                let candidate_chars: Vec<char> = candidate.chars().collect();
                // The distance is at least the difference in length: most names need no table.
                (name.len().abs_diff(candidate_chars.len()) <= threshold)
                    .then(|| (distance(&name, &candidate_chars), *candidate))
            })
            .filter(|(distance, _)| *distance <= threshold)
            .min_by_key(|(distance, _)| *distance)
            .map(|(_, candidate)| candidate)
    })
}

/// Edits (insert, delete, substitute, swap two neighbours) from `a` to `b`: the optimal
/// string alignment distance, in two rows of the table and one before them.
fn distance(a: &[char], b: &[char]) -> usize {
    let mut before: Vec<usize> = vec![0; b.len() + 1];
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    let mut current = vec![0; b.len() + 1];
    for i in 1..=a.len() {
        current[0] = i;
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (previous[j] + 1)
                .min(current[j - 1] + 1)
                .min(previous[j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(before[j - 2] + 1);
            }
            current[j] = best;
        }
        std::mem::swap(&mut before, &mut previous);
        std::mem::swap(&mut previous, &mut current);
    }
    previous[b.len()]
}

/// A derived struct, read refusing unknown fields the way [`unknown`] words it, before their
/// values are read. The struct should still say `#[serde(deny_unknown_fields)]`, which the
/// OpenAPI document reads as `additionalProperties: false`.
#[derive(Debug)]
pub struct Strict<T>(pub T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Strict<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        T::deserialize(StructFields(deserializer)).map(Strict)
    }
}

/// Hands a struct's map to [`KnownKeys`]. Only for derived structs, which ask for nothing but
/// `deserialize_struct`: anything else goes to `deserialize_any`.
struct StructFields<D>(D);

impl<'de, D: Deserializer<'de>> Deserializer<'de> for StructFields<D> {
    type Error = D::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.0.deserialize_any(visitor)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0
            .deserialize_struct(name, fields, KnownOnly { visitor, fields })
    }

    forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

/// The struct's own visitor, given a map that yields only known keys.
struct KnownOnly<V> {
    visitor: V,
    fields: &'static [&'static str],
}

impl<'de, V: Visitor<'de>> Visitor<'de> for KnownOnly<V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.visitor.expecting(f)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
        self.visitor.visit_map(KnownKeys {
            map,
            fields: self.fields,
        })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<V::Value, A::Error> {
        self.visitor.visit_seq(seq)
    }
}

/// A map whose next key, when unknown, is an error before its value is read.
struct KnownKeys<A> {
    map: A,
    fields: &'static [&'static str],
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for KnownKeys<A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        let Some(key) = self.map.next_key::<Cow<'de, str>>()? else {
            return Ok(None);
        };
        if !self.fields.contains(&key.as_ref()) {
            return Err(unknown(&key, self.fields));
        }
        seed.deserialize(CowStrDeserializer::new(key)).map(Some)
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, A::Error> {
        self.map.next_value_seed(seed)
    }

    fn size_hint(&self) -> Option<usize> {
        self.map.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    const KNOWN: &[&str] = &[
        "script",
        "input",
        "files",
        "return_files",
        "limits",
        "strict_result",
    ];

    #[test]
    fn the_closest_name_is_a_few_edits_away_or_starts_with_it() {
        for (name, close) in [
            ("limit", Some("limits")),
            ("return_file", Some("return_files")),
            ("scirpt", Some("script")),
            ("Script", Some("script")),
            ("INPUT", Some("input")),
            ("file", Some("files")),
            ("strict", Some("strict_result")),
            ("ret", Some("return_files")),
            ("banana", None),
            ("in", None),
            ("x", None),
            ("", None),
        ] {
            assert_eq!(closest(name, KNOWN), close, "{name}");
        }
        let limits = &["time_ms", "memory_bytes", "output_bytes"];
        assert_eq!(closest("time", limits), Some("time_ms"));
        assert_eq!(closest("memory", limits), Some("memory_bytes"));
        assert_eq!(closest("timeout", limits), None);
        assert_eq!(closest(&"s".repeat(1 << 20), KNOWN), None);
    }

    #[test]
    fn edits_count_swaps_as_one() {
        let chars = |s: &str| s.chars().collect::<Vec<_>>();
        for (a, b, edits) in [
            ("", "", 0),
            ("abc", "", 3),
            ("kitten", "sitting", 3),
            ("scirpt", "script", 1),
            ("limit", "limits", 1),
            ("ca", "abc", 3),
        ] {
            assert_eq!(distance(&chars(a), &chars(b)), edits, "{a} {b}");
            assert_eq!(distance(&chars(b), &chars(a)), edits, "{b} {a}");
        }
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Limits {
        time_ms: Option<u64>,
        #[serde(default)]
        memory_bytes: u64,
    }

    #[test]
    fn a_strict_struct_refuses_an_unknown_field_before_its_value() {
        let read = |text: &str| serde_json::from_str::<Strict<Limits>>(text).map(|s| s.0);
        assert_eq!(
            read(r#"{"time_ms": 5}"#).unwrap(),
            Limits {
                time_ms: Some(5),
                memory_bytes: 0
            }
        );
        let error = read(r#"{"time_ms": 5, "time": [[[["#)
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with(
                "unknown field `time`; did you mean `time_ms`? known fields: time_ms, \
                 memory_bytes at line 1 column "
            ),
            "{error}"
        );
        let long = format!("{{\"{}\": 1}}", "é".repeat(100));
        let error = read(&long).unwrap_err().to_string();
        assert!(
            error.starts_with(&format!("unknown field `{}…`; known", "é".repeat(64))),
            "{error}"
        );
        // Everything else is as serde says.
        let error = read(r#"{"time_ms": "5"}"#).unwrap_err().to_string();
        assert!(error.starts_with("invalid type: string \"5\""), "{error}");
        let error = read("5").unwrap_err().to_string();
        assert!(error.contains("expected struct Limits"), "{error}");
        assert!(read(r#"{"time_ms": 1, "time_ms": 2}"#).is_err());
    }
}
