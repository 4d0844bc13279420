//! What the operator assumes about a GPU before its node agent reports: the power-limit range of each
//! known model (from the node's `nvidia.com/gpu.product` label), and the default throughput profile of
//! each workload kind on it. Pure tables; the example curves are compiled in.

use std::sync::LazyLock;

use kilowatt_solver::model::{ProfilePoint, WorkloadKind};

use kilowatt_crds::profile_file::{self, EXAMPLE_PROFILES, ProfileKind};
use kilowatt_crds::{WorkloadProfilePoint, WorkloadProfileSpec};

/// The node label GPU feature discovery sets to the GPU product name, e.g. `NVIDIA-H100-80GB-HBM3`.
pub const GPU_PRODUCT_LABEL: &str = "nvidia.com/gpu.product";

/// The extended resource GPUs are scheduled by.
pub const GPU_RESOURCE: &str = "nvidia.com/gpu";

/// A GPU model's power-limit range as the operator assumes it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GpuModel {
    /// Canonical name used in default profile names and status messages.
    pub name: &'static str,
    pub min_watts: f64,
    pub max_watts: f64,
    /// Whether the product label was recognised; an unknown GPU is counted at `UNKNOWN.max_watts`
    /// and cannot be lowered, because a limit below its real minimum would be raised by the driver.
    pub known: bool,
}

/// Ranges of the data-centre GPUs NVIDIA publishes (nvidia-smi's min/max power limit on the default
/// board); an agent's inventory replaces them once it reports. Matched in order on the product label.
const KNOWN: &[(&[&str], GpuModel)] = &[
    (&["H200"], model("H200-SXM", 200.0, 700.0)),
    (&["H100", "PCIE"], model("H100-PCIe", 200.0, 350.0)),
    (&["H100", "NVL"], model("H100-NVL", 200.0, 400.0)),
    (&["H100"], model("H100-SXM", 200.0, 700.0)),
    (&["A100", "PCIE"], model("A100-PCIe", 150.0, 300.0)),
    (&["A100"], model("A100-SXM4", 100.0, 400.0)),
    (&["L40S"], model("L40S", 100.0, 350.0)),
    (&["L4"], model("L4", 40.0, 72.0)),
];

const fn model(name: &'static str, min_watts: f64, max_watts: f64) -> GpuModel {
    GpuModel {
        name,
        min_watts,
        max_watts,
        known: true,
    }
}

/// What an unrecognised GPU is counted at: the highest board power of current data-centre parts, as
/// a fixed limit, so no budget is ever planned below what such a GPU may draw.
pub const UNKNOWN: GpuModel = GpuModel {
    name: "unknown",
    min_watts: 1000.0,
    max_watts: 1000.0,
    known: false,
};

/// The model a product label names (`None` label: no GPU feature discovery on the node).
pub fn from_product_label(label: Option<&str>) -> GpuModel {
    let Some(label) = label else {
        return UNKNOWN;
    };
    let upper = label.to_ascii_uppercase();
    KNOWN
        .iter()
        .find(|(needles, _)| needles.iter().all(|n| upper.contains(n)))
        .map_or(UNKNOWN, |(_, m)| *m)
}

/// An example profile as the solver takes a curve.
struct ExampleCurve {
    kind: WorkloadKind,
    gpu_model: String,
    points: Vec<ProfilePoint>,
}

/// The kind of workload a profile file describes, in the solver's terms.
pub fn workload_kind(kind: ProfileKind) -> WorkloadKind {
    match kind {
        ProfileKind::Training => WorkloadKind::Training,
        ProfileKind::Inference => WorkloadKind::Inference,
    }
}

/// A profile's points in the solver's terms.
pub fn solver_points(points: &[WorkloadProfilePoint]) -> Vec<ProfilePoint> {
    points
        .iter()
        .map(|p| ProfilePoint {
            power_watts: p.power_watts,
            throughput: p.throughput,
            sm_clock_mhz: p.sm_clock_mhz,
        })
        .collect()
}

/// The default curve of `kind` on `model` as the spec of a WorkloadProfile for one job (`job`), in
/// the built-in curves' unit (`work/s`): what the operator writes when it starts keeping a job's
/// learned curve, and what simulate plans a workload without a profile on.
pub fn default_profile_spec(
    kind: WorkloadKind,
    model: &GpuModel,
    job: Option<String>,
) -> WorkloadProfileSpec {
    let (_, points) = default_profile(kind, model);
    WorkloadProfileSpec {
        gpu_model: model.name.to_owned(),
        throughput_unit: "work/s".to_owned(),
        points: points
            .into_iter()
            .map(|p| WorkloadProfilePoint {
                power_watts: p.power_watts,
                sm_clock_mhz: p.sm_clock_mhz,
                throughput: p.throughput,
            })
            .collect(),
        selector: None,
        job,
    }
}

static EXAMPLE_CURVES: LazyLock<Vec<ExampleCurve>> = LazyLock::new(|| {
    EXAMPLE_PROFILES
        .into_iter()
        // The files are part of this build, and a unit test parses each of them.
        .filter_map(|(_, text)| profile_file::parse(text).ok())
        .map(|profile| ExampleCurve {
            kind: workload_kind(profile.kind),
            gpu_model: profile.spec.gpu_model,
            points: solver_points(&profile.spec.points),
        })
        .collect()
});

/// The default profile of a workload kind on a GPU model, with its name for events and status:
/// the project's example curve measured on that family (H100/H200 share the H100 curves, A100 PCIe
/// the A100 SXM4 ones), otherwise the kind's H100 curve with its power axis rescaled linearly from
/// 200–700 W onto the model's range. These are illustrative shapes, not measurements: a pod that
/// matters should name a measured WorkloadProfile.
pub fn default_profile(kind: WorkloadKind, model: &GpuModel) -> (String, Vec<ProfilePoint>) {
    let family = if model.name.starts_with("A100") {
        "A100-SXM4"
    } else {
        "H100-SXM"
    };
    let curve = EXAMPLE_CURVES
        .iter()
        .find(|c| c.kind == kind && c.gpu_model == family);
    let kind_name = match kind {
        WorkloadKind::Training => "training",
        WorkloadKind::Inference => "inference",
    };
    let name = format!("default-{kind_name}-{}", model.name);
    let Some(curve) = curve else {
        return (name, Vec::new());
    };
    let native = family == "A100-SXM4" || matches!(model.name, "H100-SXM" | "H200-SXM");
    if native || !model.known {
        return (name, curve.points.clone());
    }
    let (from_lo, from_hi) = (200.0, 700.0);
    let scale = (model.max_watts - model.min_watts) / (from_hi - from_lo);
    let points = curve
        .points
        .iter()
        .map(|p| ProfilePoint {
            power_watts: model.min_watts + (p.power_watts - from_lo) * scale,
            throughput: p.throughput,
            sm_clock_mhz: None,
        })
        .filter(|p| p.power_watts > 0.0)
        .collect();
    (name, points)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn product_labels_of_gpu_feature_discovery_map_to_models() {
        assert_eq!(
            from_product_label(Some("NVIDIA-H100-80GB-HBM3")).name,
            "H100-SXM"
        );
        assert_eq!(
            from_product_label(Some("NVIDIA-H100-PCIe")).name,
            "H100-PCIe"
        );
        assert_eq!(
            from_product_label(Some("NVIDIA-A100-SXM4-80GB")).name,
            "A100-SXM4"
        );
        assert_eq!(
            from_product_label(Some("NVIDIA-A100-PCIE-40GB")).name,
            "A100-PCIe"
        );
        assert_eq!(from_product_label(Some("NVIDIA-H200")).name, "H200-SXM");
        assert_eq!(from_product_label(Some("NVIDIA-L4")).name, "L4");
        assert_eq!(from_product_label(Some("Tesla-T4")), UNKNOWN);
        assert_eq!(from_product_label(None), UNKNOWN);
    }

    #[test]
    fn every_compiled_in_example_curve_parses() {
        assert_eq!(EXAMPLE_CURVES.len(), EXAMPLE_PROFILES.len());
    }

    #[test]
    fn every_kind_has_a_default_profile_on_every_model() {
        for (_, model) in KNOWN.iter().chain([&(&[][..], UNKNOWN)]) {
            for kind in [WorkloadKind::Training, WorkloadKind::Inference] {
                let (name, points) = default_profile(kind, model);
                assert!(points.len() >= 4, "{name} has {} points", points.len());
                assert!(name.contains(model.name));
            }
        }
    }

    #[test]
    fn a_rescaled_default_spans_the_models_range() {
        let l4 = from_product_label(Some("NVIDIA-L4"));
        let (_, points) = default_profile(WorkloadKind::Training, &l4);
        let first = points.first().expect("points").power_watts;
        let last = points.last().expect("points").power_watts;
        assert!(first >= l4.min_watts - 1e-9 && last <= l4.max_watts + 1e-9);
        assert!(last - first > 0.9 * (l4.max_watts - l4.min_watts));
    }
}
