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
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
