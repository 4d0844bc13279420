//! The allocation problem as users write it (the public `--problem` file format); plain data, no IO.
//!
//! Field names are a public contract: other tools generate these files, so they are spelled exactly
//! as documented in README.md and never renamed.

use serde::{Deserialize, Serialize};

/// A power-allocation problem: a tree of power caps, the GPU nodes under it, and the workloads on them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Problem {
    /// Power caps; a budget without `parent` is a root.
    pub budgets: Vec<Budget>,
    /// GPU nodes, each attached to its innermost budget.
    pub nodes: Vec<Node>,
    /// Workloads (gangs of GPUs) with their measured throughput curves.
    #[serde(default)]
    pub workloads: Vec<Workload>,
    /// What to optimise; `maxThroughput`, refined per budget by [`Budget::max_slowdown`].
    #[serde(default)]
    pub objective: Objective,
}

/// A power cap over everything below it in the tree.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Budget {
    pub name: String,
    pub cap_watts: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// Efficiency policy, a fraction in `[0, 1)`: the GPUs under this budget may give up at most this
    /// share of the throughput the max-throughput plan gives them, and within that the plan uses the
    /// least GPU power. Absent: maximum throughput, as without a policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_slowdown: Option<f64>,
}

/// A machine whose GPUs and non-GPU overhead count against `budget` and all of its ancestors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Node {
    pub name: String,
    pub budget: String,
    #[serde(default)]
    pub overhead_watts: f64,
    pub gpus: Vec<Gpu>,
}

/// One GPU and the power-limit range its driver accepts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Gpu {
    pub id: String,
    pub min_watts: f64,
    pub max_watts: f64,
}

/// Whether a workload trains or serves; carried through to the plan for reporting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum WorkloadKind {
    Training,
    Inference,
}

/// A gang of GPUs that runs at one power limit (and clock) and its measured throughput curve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Workload {
    pub name: String,
    pub kind: WorkloadKind,
    pub weight: f64,
    pub gpus: Vec<String>,
    /// SLO floor: throughput must stay at or above this fraction of the best measured throughput.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_throughput_fraction: Option<f64>,
    pub profile: Vec<ProfilePoint>,
}

/// One measured point of a workload's throughput curve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProfilePoint {
    pub power_watts: f64,
    pub throughput: f64,
    /// Present on every point of a locked-clock profile, absent on every point of a power-limit one.
    #[serde(
        rename = "smClockMHz",
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::whole_number::option_u32"
    )]
    pub sm_clock_mhz: Option<u32>,
}

/// The optimisation goal.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Objective {
    /// Maximise Σ weight × GPUs × throughput / best measured throughput over all workloads.
    #[default]
    MaxThroughput,
}
