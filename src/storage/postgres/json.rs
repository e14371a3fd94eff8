//! JSON columns read as text: the log reader parses them itself, so a stored
//! value that does not read back is an answer (an unreadable event), not a
//! driver error that looks like an outage.

use tokio_postgres::types::{FromSql, Type};

/// A JSON or JSONB column as its text, without building a value tree.
pub struct RawJson<'a>(pub &'a [u8]);

impl<'a> FromSql<'a> for RawJson<'a> {
    fn from_sql(
        ty: &Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        if *ty == Type::JSONB {
            match raw.split_first() {
                Some((1, text)) => Ok(Self(text)),
                _ => Err("unsupported JSONB encoding version".into()),
            }
        } else {
            Ok(Self(raw))
        }
    }

    fn accepts(ty: &Type) -> bool {
        matches!(*ty, Type::JSON | Type::JSONB)
    }
}

/// Why stored metadata does not read as JSON, in the words a payload's
/// refusal uses.
pub fn unreadable_metadata(e: &serde_json::Error) -> String {
    crate::storage::upcast::unparsable(e).replacen("payload", "metadata", 1)
}

/// Whether `text` reads as JSON by the same rules a value tree is parsed
/// with (nesting limit, number range), without building the tree.
pub fn check_json(text: &[u8]) -> Result<(), serde_json::Error> {
    struct Checked;
    impl<'de> serde::Deserialize<'de> for Checked {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_any(CheckedVisitor)
        }
    }
    struct CheckedVisitor;
    impl<'de> serde::de::Visitor<'de> for CheckedVisitor {
        type Value = Checked;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("any JSON value")
        }
        fn visit_bool<E>(self, _: bool) -> Result<Checked, E> {
            Ok(Checked)
        }
        fn visit_i64<E>(self, _: i64) -> Result<Checked, E> {
            Ok(Checked)
        }
        fn visit_u64<E>(self, _: u64) -> Result<Checked, E> {
            Ok(Checked)
        }
        fn visit_f64<E>(self, _: f64) -> Result<Checked, E> {
            Ok(Checked)
        }
        fn visit_str<E>(self, _: &str) -> Result<Checked, E> {
            Ok(Checked)
        }
        fn visit_unit<E>(self) -> Result<Checked, E> {
            Ok(Checked)
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Checked, A::Error> {
            while seq.next_element::<Checked>()?.is_some() {}
            Ok(Checked)
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Checked, A::Error> {
            while map
                .next_entry::<serde::de::IgnoredAny, Checked>()?
                .is_some()
            {}
            Ok(Checked)
        }
    }
    serde_json::from_slice::<Checked>(text).map(drop)
}

#[cfg(test)]
mod tests {
    use super::check_json;
    use proptest::prelude::*;

    fn nested(depth: usize, leaf: &str) -> String {
        format!("{}{leaf}{}", "[".repeat(depth), "]".repeat(depth))
    }

    #[test]
    fn checking_json_refuses_exactly_what_a_value_tree_refuses() {
        for text in [
            nested(127, "1"),
            nested(128, "1"),
            nested(129, "1"),
            nested(5000, ""),
            r#"{"a": 1e400}"#.to_owned(),
            r#"{"a": -1e308, "b": [1.5e-320, 18446744073709551615]}"#.to_owned(),
            r#"{"a": "\u0041", "b": {"c": null, "d": true}}"#.to_owned(),
        ] {
            let as_value = serde_json::from_str::<serde_json::Value>(&text).is_ok();
            assert_eq!(
                check_json(text.as_bytes()).is_ok(),
                as_value,
                "{}",
                &text[..text.len().min(40)]
            );
        }
    }

    proptest! {
        /// jsonb keeps numbers as exact decimals and writes them out without
        /// an exponent (1e308 comes back as 309 digits). Every double must
        /// read back as itself from that, or an event accepted at the edge
        /// could not be read back (serde_json's `float_roundtrip`).
        #[test]
        fn every_double_reads_back_from_its_exact_decimal(x in any::<f64>().prop_filter("finite", |x| x.is_finite())) {
            let stored = serde_json::Value::from(x).to_string();
            // Rust prints a double without an exponent, as PostgreSQL does.
            let written_back = format!("{}", stored.parse::<f64>().unwrap());
            let read: serde_json::Value = serde_json::from_str(&written_back).unwrap();
            prop_assert_eq!(read.as_f64(), Some(x));
        }

        #[test]
        fn checking_agrees_with_parsing_on_any_nesting(depth in 0usize..300, object in any::<bool>()) {
            let text = if object {
                format!("{}1{}", "{\"k\":".repeat(depth), "}".repeat(depth))
            } else {
                nested(depth, "1")
            };
            prop_assert_eq!(
                check_json(text.as_bytes()).is_ok(),
                serde_json::from_str::<serde_json::Value>(&text).is_ok()
            );
        }
    }
}
