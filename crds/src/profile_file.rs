//! The profile file: a `WorkloadProfile` spec with the workload's name and kind, as shipped in
//! `crds/profiles/` (also reachable as `examples/profiles/`), and its one parser, shared by the
//! operator's default curves, `kilowatt simulate` and the agent's simulated GPUs. Parses text; no IO.

use serde::Deserialize;

use crate::{WorkloadProfilePoint, WorkloadProfileSpec};

/// The project's example profiles, compiled in, by name: the operator's default curves and the
/// profiles scenarios and simulated GPUs may name. The first of each kind and GPU model is the default.
pub const EXAMPLE_PROFILES: [(&str, &str); 5] = [
    (
        "llm-pretrain-h100",
        include_str!("../profiles/llm-pretrain-h100.yaml"),
    ),
    (
        "llm-serve-h100",
        include_str!("../profiles/llm-serve-h100.yaml"),
    ),
    (
        "vision-train-a100",
        include_str!("../profiles/vision-train-a100.yaml"),
    ),
    (
        "recsys-serve-a100",
        include_str!("../profiles/recsys-serve-a100.yaml"),
    ),
    (
        "llm-finetune-h100-clocks",
        include_str!("../profiles/llm-finetune-h100-clocks.yaml"),
    ),
];

/// The text of the example profile called `name`.
pub fn example_profile(name: &str) -> Option<&'static str> {
    EXAMPLE_PROFILES
        .iter()
        .find(|(example, _)| *example == name)
        .map(|(_, text)| *text)
}

/// Whether a profile's workload trains or serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ProfileKind {
    Training,
    Inference,
}

/// A parsed profile file.
#[derive(Debug, Clone, PartialEq)]
pub struct ProfileFile {
    pub name: String,
    pub kind: ProfileKind,
    /// The curve, exactly as a `WorkloadProfile` would carry it (no selector).
    pub spec: WorkloadProfileSpec,
}

/// The file's fields; unknown ones are refused, so a misspelt field is an error, not a silent default.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Fields {
    name: String,
    kind: ProfileKind,
    gpu_model: String,
    throughput_unit: String,
    points: Vec<WorkloadProfilePoint>,
}

/// Why a text is not a profile file.
#[derive(Debug, thiserror::Error)]
#[error(
    "not a profile file (name, kind: training or inference, gpuModel, throughputUnit, and points of powerWatts, throughput and optional smClockMHz): {message}"
)]
pub struct ProfileFileError {
    message: String,
}

/// Parses a profile file. Points are checked by whoever turns them into a curve.
pub fn parse(text: &str) -> Result<ProfileFile, ProfileFileError> {
    let fields: Fields = serde_saphyr::from_str(text).map_err(|e| ProfileFileError {
        message: e.to_string(),
    })?;
    Ok(ProfileFile {
        name: fields.name,
        kind: fields.kind,
        spec: WorkloadProfileSpec {
            gpu_model: fields.gpu_model,
            throughput_unit: fields.throughput_unit,
            points: fields.points,
            selector: None,
            job: None,
        },
    })
}

/// Serde helpers for integer fields (`smClockMHz`, scenario counts) that also accept integral floats
/// (`855.0`, as Python's `json` writes them), which JSON Schema and so the API server count as
/// integers. `855.5`, negative numbers and numbers past the type's range stay errors naming the range.
///
/// NB: kilowatt-solver has the same helper for problem files: the solver takes no Kubernetes types and
/// crds depends on no Kilowatt crate, so neither can use the other's. They live here, not in a module
/// of their own, because profile points are their first user.
pub mod whole_number {
    use std::fmt;

    use serde::Deserializer;
    use serde::de::{Error, Visitor};

    struct WholeU32;

    fn out_of_range<E: Error>(got: impl fmt::Display) -> E {
        E::custom(format_args!(
            "must be a whole number between 0 and {} (got {got})",
            u32::MAX
        ))
    }

    impl Visitor<'_> for WholeU32 {
        type Value = u32;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            write!(f, "a whole number between 0 and {}", u32::MAX)
        }

        fn visit_u64<E: Error>(self, v: u64) -> Result<u32, E> {
            u32::try_from(v).map_err(|_| out_of_range(v))
        }

        fn visit_i64<E: Error>(self, v: i64) -> Result<u32, E> {
            u32::try_from(v).map_err(|_| out_of_range(v))
        }

        fn visit_u128<E: Error>(self, v: u128) -> Result<u32, E> {
            u32::try_from(v).map_err(|_| out_of_range(v))
        }

        fn visit_i128<E: Error>(self, v: i128) -> Result<u32, E> {
            u32::try_from(v).map_err(|_| out_of_range(v))
        }

        fn visit_f64<E: Error>(self, v: f64) -> Result<u32, E> {
            // Every u32 is exact in an f64, so the comparison and the cast lose nothing.
            if v.fract() == 0.0 && (0.0..=f64::from(u32::MAX)).contains(&v) {
                Ok(v as u32)
            } else {
                // Short, never hundreds of digits: `1e20`, not `100000000000000000000`.
                let plain = v.to_string();
                let shown = if plain.len() <= 10 {
                    plain
                } else {
                    format!("{v:e}")
                };
                Err(out_of_range(shown))
            }
        }
    }

    /// Deserializes a `u32` from an integer or an integral float within range.
    pub fn u32<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
        // NB: `deserialize_any`, not `deserialize_u32`: YAML deserializers refuse `855.0` for a u32
        // before a visitor sees it.
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
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLOCKED: &str = "name: a\nkind: training\ngpuModel: H100-SXM\nthroughputUnit: samples/s\npoints:\n  - {powerWatts: 300.0, smClockMHz: 855.0, throughput: 1.0}\n  - {powerWatts: 400.0, smClockMHz: 1980, throughput: 2.0}\n";

    #[test]
    fn an_integral_float_clock_is_a_clock() {
        let profile = parse(CLOCKED).expect("855.0 is a whole number");
        let clocks: Vec<_> = profile.spec.points.iter().map(|p| p.sm_clock_mhz).collect();
        assert_eq!(clocks, [Some(855), Some(1980)]);
    }

    #[test]
    fn a_fractional_or_huge_clock_is_refused_naming_the_range() {
        for (clock, got) in [
            ("855.5", "(got 855.5)"),
            ("1e20", "(got 1e20)"),
            ("-1", "(got -1)"),
        ] {
            let text = CLOCKED.replace("855.0", clock);
            let error = parse(&text).expect_err(clock).to_string();
            assert!(
                error.contains("must be a whole number between 0 and 4294967295")
                    && error.contains(got),
                "{clock}: {error}"
            );
        }
    }

    #[test]
    fn a_workload_profile_from_the_api_server_takes_integral_float_clocks() {
        let json = r#"{"gpuModel": "H100-SXM", "throughputUnit": "samples/s", "points": [{"powerWatts": 300, "smClockMHz": 855.0, "throughput": 1}]}"#;
        let spec: crate::WorkloadProfileSpec = serde_json::from_str(json).expect("855.0");
        assert_eq!(spec.points[0].sm_clock_mhz, Some(855));
        let error =
            serde_json::from_str::<crate::WorkloadProfileSpec>(&json.replace("855.0", "855.5"))
                .expect_err("855.5");
        assert!(
            error
                .to_string()
                .contains("must be a whole number between 0 and 4294967295 (got 855.5)"),
            "{error}"
        );
        let spec: crate::WorkloadProfileSpec =
            serde_json::from_str(&json.replace(r#", "smClockMHz": 855.0"#, "")).expect("no clock");
        assert_eq!(spec.points[0].sm_clock_mhz, None);
    }

    #[test]
    fn every_example_profile_parses_under_its_own_name() {
        for (name, text) in EXAMPLE_PROFILES {
            let profile = parse(text).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(profile.name, name);
            assert!(!profile.spec.points.is_empty(), "{name} has points");
        }
        assert!(example_profile("llm-serve-h100").is_some());
        assert!(example_profile("no-such-profile").is_none());
    }

    #[test]
    fn a_misspelt_field_is_refused_and_named() {
        let text =
            "name: a\nkind: training\ngpuModel: H100-SXM\nthroughputUnit: samples/s\npionts: []\n";
        let error = parse(text).expect_err("unknown field");
        assert!(error.to_string().contains("pionts"), "{error}");
    }

    #[test]
    fn a_kind_other_than_training_or_inference_is_refused() {
        let text = "name: a\nkind: batch\ngpuModel: H100-SXM\nthroughputUnit: samples/s\npoints: [{powerWatts: 300, throughput: 1}]\n";
        assert!(parse(text).is_err());
    }
}
