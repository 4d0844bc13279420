//! Serde helpers for integer fields that also accept integral floats (`855.0`, as Python's `json`
//! writes them), which JSON Schema counts as integers; pure, no IO.
//!
//! `855.5`, negative numbers and numbers past the type's range stay errors, and the message names the
//! range. NB: kilowatt-crds has the same helper; neither crate may depend on the other (the solver
//! takes no Kubernetes types, crds depends on no Kilowatt crate), so each keeps its own.

use std::fmt;

use serde::Deserializer;
use serde::de::{Error, Visitor};

/// A number as a message shows it: plain when short, otherwise in exponent form (`1e308`, never 309
/// digits).
pub(crate) fn compact(x: f64) -> String {
    let plain = x.to_string();
    if plain.len() <= 10 {
        plain
    } else {
        format!("{x:e}")
    }
}

struct WholeU32;

impl WholeU32 {
    fn out_of_range<E: Error>(got: impl fmt::Display) -> E {
        E::custom(format_args!(
            "must be a whole number between 0 and {} (got {got})",
            u32::MAX
        ))
    }
}

impl Visitor<'_> for WholeU32 {
    type Value = u32;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "a whole number between 0 and {}", u32::MAX)
    }

    fn visit_u64<E: Error>(self, v: u64) -> Result<u32, E> {
        u32::try_from(v).map_err(|_| Self::out_of_range(v))
    }

    fn visit_i64<E: Error>(self, v: i64) -> Result<u32, E> {
        u32::try_from(v).map_err(|_| Self::out_of_range(v))
    }

    fn visit_u128<E: Error>(self, v: u128) -> Result<u32, E> {
        u32::try_from(v).map_err(|_| Self::out_of_range(v))
    }

    fn visit_i128<E: Error>(self, v: i128) -> Result<u32, E> {
        u32::try_from(v).map_err(|_| Self::out_of_range(v))
    }

    fn visit_f64<E: Error>(self, v: f64) -> Result<u32, E> {
        // Every u32 is exact in an f64, so the comparison and the cast lose nothing.
        if v.fract() == 0.0 && (0.0..=f64::from(u32::MAX)).contains(&v) {
            Ok(v as u32)
        } else {
            Err(Self::out_of_range(compact(v)))
        }
    }
}

/// Deserializes a `u32` from an integer or an integral float within range.
pub fn u32<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
    // NB: `deserialize_any`, not `deserialize_u32`: YAML deserializers refuse `855.0` for a u32 before
    // a visitor sees it.
    deserializer.deserialize_any(WholeU32)
}

/// [`u32`] for an optional field (use with `#[serde(default)]`).
pub fn option_u32<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u32>, D::Error> {
    struct Optional;
    impl<'de> Visitor<'de> for Optional {
        type Value = Option<u32>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            WholeU32.expecting(f)
        }

        fn visit_none<E: Error>(self) -> Result<Option<u32>, E> {
            Ok(None)
        }

        fn visit_unit<E: Error>(self) -> Result<Option<u32>, E> {
            Ok(None)
        }

        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Option<u32>, D::Error> {
            u32(d).map(Some)
        }
    }
    deserializer.deserialize_option(Optional)
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    struct Clock {
        #[serde(deserialize_with = "super::u32")]
        mhz: u32,
        #[serde(default, deserialize_with = "super::option_u32")]
        max_mhz: Option<u32>,
    }

    fn parse(json: &str) -> Result<Clock, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
    }

    #[test]
    fn integers_and_integral_floats_are_accepted() {
        let clock = parse(r#"{"mhz": 855.0, "max_mhz": 1980.0}"#).expect("integral floats");
        assert_eq!((clock.mhz, clock.max_mhz), (855, Some(1980)));
        let clock = parse(r#"{"mhz": 855}"#).expect("an integer");
        assert_eq!((clock.mhz, clock.max_mhz), (855, None));
        let clock = parse(r#"{"mhz": 4294967295.0, "max_mhz": null}"#).expect("the largest u32");
        assert_eq!((clock.mhz, clock.max_mhz), (u32::MAX, None));
    }

    #[test]
    fn fractions_negatives_and_huge_numbers_are_refused_naming_the_range() {
        for (json, got) in [
            (r#"{"mhz": 855.5}"#, "(got 855.5)"),
            (r#"{"mhz": -1}"#, "(got -1)"),
            (r#"{"mhz": -1.0}"#, "(got -1)"),
            (r#"{"mhz": 1e20}"#, "(got 1e20)"),
            (r#"{"mhz": 4294967296}"#, "(got 4294967296)"),
            (r#"{"mhz": 1, "max_mhz": 0.5}"#, "(got 0.5)"),
        ] {
            let message = parse(json).expect_err(json);
            assert!(
                message.contains("must be a whole number between 0 and 4294967295")
                    && message.contains(got),
                "{json}: {message}"
            );
        }
        let message = parse(r#"{"mhz": "855"}"#).expect_err("a string");
        assert!(
            message.contains("a whole number between 0 and 4294967295"),
            "{message}"
        );
    }

    #[test]
    fn compact_numbers_never_spell_out_hundreds_of_digits() {
        assert_eq!(super::compact(855.5), "855.5");
        assert_eq!(super::compact(1e308), "1e308");
        assert_eq!(super::compact(1e-310), "1e-310");
        assert_eq!(super::compact(1e15), "1e15");
        assert_eq!(super::compact(10_000_000.0), "10000000");
    }
}
