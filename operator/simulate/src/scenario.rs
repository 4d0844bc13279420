//! The scenarios `kilowatt simulate` runs: a budget tree, groups of GPU nodes, workloads placed on them,
//! and a timeline (schedule windows, cap edits, workloads arriving and leaving, agents cut off). Parses
//! and checks a scenario (YAML, format in docs/simulate.md), and turns it into the Kubernetes objects
//! the operator plans from — PowerBudgets, WorkloadProfiles, Nodes and Pods with Kilowatt's annotations —
//! at any simulated instant. The built-in scenario is `examples/scenarios/two-rows.yaml`, compiled in.
//! Pure, except [`Scenario::load`], which reads the file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kilowatt_crds::{PowerBudget, WorkloadProfile, WorkloadProfileSpec};
use kilowatt_solver::model::WorkloadKind;
use serde::Deserialize;
use serde_json::json;

use crate::faults::Fault;
use kilowatt_crds::profile_file::{self, EXAMPLE_PROFILES};
use kilowatt_operator::plan::gpu_models::{self, GPU_PRODUCT_LABEL, GPU_RESOURCE, GpuModel};
use kilowatt_operator::plan::learning::EXPLORE_ANNOTATION;
use kilowatt_operator::plan::translate::{
    JOB_ANNOTATION, MIN_FRACTION_ANNOTATION, PROFILE_ANNOTATION, WEIGHT_ANNOTATION,
    WORK_METRIC_ANNOTATION, WORK_WAITING_METRIC_ANNOTATION, WORKLOAD_ANNOTATION,
};

/// The built-in scenario's text.
pub const BUILTIN: &str = include_str!("../scenarios/two-rows.yaml");

/// A scenario as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// The simulated clock's start (RFC 3339, UTC); schedule windows are offsets from it.
    pub start: String,
    pub duration_seconds: f64,
    /// Namespace of the workloads' pods and profiles.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    pub budgets: Vec<BudgetEntry>,
    pub node_groups: Vec<NodeGroup>,
    /// Profiles the workloads may name, besides the example profiles built in.
    #[serde(default)]
    pub profiles: Vec<ProfileEntry>,
    pub workloads: Vec<WorkloadEntry>,
    /// Edits of a budget's `capWatts` at given times.
    #[serde(default)]
    pub cap_changes: Vec<CapChange>,
    /// Stretches during which a node's agent cannot reach the plan store.
    #[serde(default)]
    pub partitions: Vec<Partition>,
    /// Agent crashes, reboots, stuck or slow GPUs, corrupt inventories, NotReady kubelets.
    #[serde(default)]
    pub faults: Vec<Fault>,
    /// Grams of CO₂ per kWh over simulated time, a step function from `atSeconds: 0`; empty: no
    /// run reports `carbonGrams`.
    #[serde(default)]
    pub carbon_intensity: Vec<CarbonIntensityPoint>,
}

/// From `atSeconds` until the next point, each kWh of GPU energy emits `gramsPerKWh` of CO₂.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CarbonIntensityPoint {
    pub at_seconds: f64,
    #[serde(rename = "gramsPerKWh")]
    pub grams_per_kwh: f64,
}

/// A budget's efficiency policy, as `PowerBudget.spec.efficiency`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EfficiencyEntry {
    /// In [0, 1): the share of the max-throughput plan's throughput the budget may give up.
    pub max_slowdown: f64,
}

fn default_namespace() -> String {
    "ml".to_owned()
}

/// A PowerBudget.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BudgetEntry {
    pub name: String,
    #[serde(default)]
    pub parent: Option<String>,
    pub cap_watts: f64,
    #[serde(default)]
    pub node_overhead_watts: Option<f64>,
    #[serde(default)]
    pub safety_margin_watts: Option<f64>,
    /// Labels a node needs to be directly in this budget (its `nodeSelector.matchLabels`); empty:
    /// no node directly, only through child budgets.
    #[serde(default)]
    pub node_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub windows: Vec<WindowEntry>,
    /// `spec.efficiency` of the PowerBudget.
    #[serde(default)]
    pub efficiency: Option<EfficiencyEntry>,
}

/// A schedule window, as offsets from the scenario's start.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WindowEntry {
    pub name: String,
    pub cap_watts: f64,
    pub start_seconds: f64,
    pub end_seconds: f64,
}

/// `count` identical GPU nodes named `<prefix><i>`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeGroup {
    pub prefix: String,
    #[serde(deserialize_with = "kilowatt_crds::profile_file::whole_number::u32")]
    pub count: u32,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(deserialize_with = "kilowatt_crds::profile_file::whole_number::u32")]
    pub gpus: u32,
    /// The `nvidia.com/gpu.product` label, e.g. `NVIDIA-H100-80GB-HBM3`; the simulated GPUs take the
    /// model's power-limit range from the operator's table.
    pub gpu_product: String,
}

/// A WorkloadProfile: a name and a spec.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProfileEntry {
    pub name: String,
    #[serde(flatten)]
    pub spec: WorkloadProfileSpec,
}

/// A training gang or an inference service: `pods` pods of `gpusPerPod` GPUs.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadEntry {
    pub name: String,
    pub kind: WorkloadKind,
    /// A profile of the scenario or a built-in example; none: the operator's default for the kind.
    #[serde(default)]
    pub profile: Option<String>,
    #[serde(deserialize_with = "kilowatt_crds::profile_file::whole_number::u32")]
    pub pods: u32,
    #[serde(deserialize_with = "kilowatt_crds::profile_file::whole_number::u32")]
    pub gpus_per_pod: u32,
    #[serde(default)]
    pub weight: Option<f64>,
    #[serde(default)]
    pub min_throughput_fraction: Option<f64>,
    /// Labels of the nodes its pods may run on; they are packed onto them in node order.
    #[serde(default)]
    pub node_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub start_seconds: f64,
    #[serde(default)]
    pub stop_seconds: Option<f64>,
    /// What its GPUs really do, when it differs from what the operator is told (`profile`): a profile
    /// of the scenario or a built-in example.
    #[serde(default)]
    pub true_profile: Option<String>,
    /// Relative standard deviation of each measured window's rate of its work counter.
    #[serde(default)]
    pub measurement_noise: f64,
    /// Its pods carry `kilowatt.dev/explore: "true"`.
    #[serde(default)]
    pub explore: bool,
}

/// An edit of a budget's `capWatts`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CapChange {
    pub at_seconds: f64,
    pub budget: String,
    pub cap_watts: f64,
}

/// A node's agent cut off from the plan store from `startSeconds` to `endSeconds`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Partition {
    pub node: String,
    pub start_seconds: f64,
    pub end_seconds: f64,
}

/// Why a scenario cannot be run.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("cannot read the scenario {}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the scenario {origin} is not valid YAML for the format in docs/simulate.md: {message}"
    )]
    Syntax { origin: String, message: String },
    #[error("the scenario {origin}: {message}")]
    Invalid { origin: String, message: String },
}

/// A node of the scenario, with what the cap check needs to know independently of the operator.
#[derive(Debug, Clone, PartialEq)]
pub struct SimNode {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub model: GpuModel,
    pub gpus: u32,
    /// The budgets it counts against: its innermost budget, then each ancestor.
    pub chain: Vec<String>,
    pub overhead_watts: f64,
}

/// A pod of a workload, placed on a node.
#[derive(Debug, Clone, PartialEq)]
pub struct SimPod {
    pub name: String,
    /// Index into [`Prepared::workloads`].
    pub workload: usize,
    /// Index into [`Prepared::nodes`].
    pub node: usize,
    pub gpus: u32,
}

/// A workload with its resolved curve.
#[derive(Debug, Clone)]
pub struct SimWorkload {
    pub entry: WorkloadEntry,
    /// The profile the pods name (`None`: the operator's default for the kind and model).
    pub profile: Option<ProfileEntry>,
    /// What its GPUs really deliver: the true profile, else the named profile, else the operator's
    /// default curve.
    pub curve: WorkloadProfileSpec,
    /// `trueProfile`, when given: what the oracle run's pods name.
    pub true_profile: Option<ProfileEntry>,
    pub weight: f64,
}

/// The IP of the scenario's pod `index`, in 10.64.0.0/10 (unique for 4 million pods): its metrics
/// endpoint's address in the work counter the agent is told to scrape.
fn simulated_pod_ip(index: usize) -> String {
    let n = index as u32;
    format!("10.{}.{}.{}", 64 + (n >> 16 & 63), n >> 8 & 255, n & 255)
}

/// Which profile the operator is told a workload runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Told {
    /// `profile` (or the default): what Kilowatt, uniform and proportional capping plan on.
    Declared,
    /// `trueProfile` where there is one: the oracle.
    Truth,
}

/// The counter a simulated pod exports, in its work unit (its true curve's throughput unit).
pub const SIMULATED_WORK_METRIC: &str = "kilowatt_simulated_work_total";
/// The gauge of requests waiting a simulated inference pod exports: always above zero, since the
/// simulation assumes demand beyond what the GPUs serve.
pub const SIMULATED_WAITING_METRIC: &str = "kilowatt_simulated_requests_waiting";

impl SimWorkload {
    /// The WorkloadProfile its pods name when the operator is `told` so.
    pub fn told_profile(&self, told: Told) -> Option<&ProfileEntry> {
        match told {
            Told::Declared => self.profile.as_ref(),
            Told::Truth => self.true_profile.as_ref().or(self.profile.as_ref()),
        }
    }
}

/// A checked scenario, ready to simulate.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub scenario: Scenario,
    /// Where it came from, for messages: `built-in` or the file.
    pub origin: String,
    pub start: Timestamp,
    pub nodes: Vec<SimNode>,
    pub workloads: Vec<SimWorkload>,
    pub pods: Vec<SimPod>,
}

/// Whether `start` comes before `end`, both finite.
fn ordered(start: f64, end: f64) -> bool {
    start.is_finite() && end.is_finite() && start < end
}

fn matches(labels: &BTreeMap<String, String>, wanted: &BTreeMap<String, String>) -> bool {
    wanted.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn example_profiles() -> Vec<ProfileEntry> {
    EXAMPLE_PROFILES
        .iter()
        .filter_map(|(_, text)| profile_file::parse(text).ok())
        .map(|profile| ProfileEntry {
            name: profile.name,
            spec: profile.spec,
        })
        .collect()
}

impl Scenario {
    /// Parses a scenario; `origin` names it in messages.
    pub fn parse(text: &str, origin: &str) -> Result<Scenario, ScenarioError> {
        serde_saphyr::from_str(text).map_err(|e| ScenarioError::Syntax {
            origin: origin.to_owned(),
            message: e.to_string(),
        })
    }

    /// Reads and parses a scenario file.
    pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: path.to_owned(),
            source,
        })?;
        Scenario::parse(&text, &path.display().to_string())
    }

    /// The built-in scenario.
    pub fn builtin() -> Result<Scenario, ScenarioError> {
        Scenario::parse(BUILTIN, "built-in")
    }

    /// Sets `efficiency.maxSlowdown` on every root budget (`kilowatt simulate --max-slowdown`);
    /// checked with the rest in [`Scenario::prepare`].
    pub fn set_root_max_slowdown(&mut self, max_slowdown: f64) {
        for budget in self.budgets.iter_mut().filter(|b| b.parent.is_none()) {
            budget.efficiency = Some(EfficiencyEntry { max_slowdown });
        }
    }

    /// Checks the scenario and places its pods.
    pub fn prepare(self, origin: &str) -> Result<Prepared, ScenarioError> {
        let invalid = |message: String| ScenarioError::Invalid {
            origin: origin.to_owned(),
            message,
        };
        let start = self.start_time().map_err(invalid)?;
        let chains = self.budget_chains().map_err(invalid)?;
        let nodes = self.nodes(&chains).map_err(invalid)?;
        let (workloads, pods) = self.place_workloads(&nodes).map_err(invalid)?;
        self.check_timeline(&nodes).map_err(invalid)?;
        self.check_carbon_intensity().map_err(invalid)?;
        Ok(Prepared {
            scenario: self,
            origin: origin.to_owned(),
            start,
            nodes,
            workloads,
            pods,
        })
    }

    /// The scenario's start instant, with its duration checked.
    fn start_time(&self) -> Result<Timestamp, String> {
        let start: Timestamp = self
            .start
            .parse()
            .map_err(|e| format!("start {:?} is not an RFC 3339 time: {e}", self.start))?;
        if !(self.duration_seconds.is_finite() && self.duration_seconds > 0.0) {
            return Err(format!(
                "durationSeconds must be a positive number, not {}",
                self.duration_seconds
            ));
        }
        Ok(start)
    }

    /// Every budget checked, and its chain: itself, its parent, …, its root.
    fn budget_chains(&self) -> Result<BTreeMap<&str, Vec<String>>, String> {
        let mut names = BTreeSet::new();
        for budget in &self.budgets {
            if !names.insert(budget.name.as_str()) {
                return Err(format!("budget {} is defined twice", budget.name));
            }
            if !(budget.cap_watts.is_finite() && budget.cap_watts >= 0.0) {
                return Err(format!(
                    "budget {}: capWatts must be zero or more",
                    budget.name
                ));
            }
            if let Some(efficiency) = &budget.efficiency
                && !(0.0..1.0).contains(&efficiency.max_slowdown)
            {
                return Err(format!(
                    "budget {}: efficiency.maxSlowdown must be a fraction in [0, 1), not {}",
                    budget.name, efficiency.max_slowdown
                ));
            }
            for window in &budget.windows {
                if !(window.cap_watts.is_finite() && window.cap_watts >= 0.0) {
                    return Err(format!(
                        "budget {} window {}: capWatts must be zero or more",
                        budget.name, window.name
                    ));
                }
                if !ordered(window.start_seconds, window.end_seconds) {
                    return Err(format!(
                        "budget {} window {}: startSeconds must be before endSeconds",
                        budget.name, window.name
                    ));
                }
            }
        }
        let parent_of: BTreeMap<&str, Option<&str>> = self
            .budgets
            .iter()
            .map(|b| (b.name.as_str(), b.parent.as_deref()))
            .collect();
        let mut chains: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for budget in &self.budgets {
            let mut chain = vec![budget.name.clone()];
            let mut current = budget.parent.as_deref();
            while let Some(parent) = current {
                if !parent_of.contains_key(parent) {
                    return Err(format!(
                        "budget {}: parent {parent} is not a budget of the scenario",
                        chain[chain.len() - 1]
                    ));
                }
                if chain.iter().any(|c| c == parent) {
                    return Err(format!("budget {}: parents form a cycle", budget.name));
                }
                chain.push(parent.to_owned());
                current = parent_of[parent];
            }
            chains.insert(budget.name.as_str(), chain);
        }
        Ok(chains)
    }

    /// The nodes of every node group, each in the innermost budget selecting it.
    fn nodes(&self, chains: &BTreeMap<&str, Vec<String>>) -> Result<Vec<SimNode>, String> {
        let mut nodes = Vec::new();
        let mut node_names = BTreeSet::new();
        for group in &self.node_groups {
            let model = gpu_models::from_product_label(Some(&group.gpu_product));
            if !model.known {
                return Err(format!(
                    "node group {}: gpuProduct {:?} is not a GPU model the operator knows (see README, GPU inventory)",
                    group.prefix, group.gpu_product
                ));
            }
            if group.gpus == 0 {
                return Err(format!(
                    "node group {}: gpus must be at least 1",
                    group.prefix
                ));
            }
            for i in 0..group.count {
                let name = format!("{}{i}", group.prefix);
                if !node_names.insert(name.clone()) {
                    return Err(format!("node {name} is defined twice"));
                }
                let homes: Vec<&BudgetEntry> = self
                    .budgets
                    .iter()
                    .filter(|b| !b.node_labels.is_empty() && matches(&group.labels, &b.node_labels))
                    .collect();
                // The innermost budget selecting the node is the one with the longest chain; every other
                // selecting budget must be on that chain, or the node is in conflicting budgets.
                let home = homes.iter().max_by_key(|b| chains[b.name.as_str()].len());
                let Some(home) = home else {
                    return Err(format!(
                        "node {name} is in no budget: no budget's nodeLabels match its labels"
                    ));
                };
                let chain = chains[home.name.as_str()].clone();
                if let Some(other) = homes.iter().find(|b| !chain.contains(&b.name)) {
                    return Err(format!(
                        "node {name} is selected by budgets {} and {}, neither inside the other",
                        home.name, other.name
                    ));
                }
                let overhead_watts = chain
                    .iter()
                    .find_map(|b| {
                        self.budgets
                            .iter()
                            .find(|entry| &entry.name == b)
                            .and_then(|entry| entry.node_overhead_watts)
                    })
                    .unwrap_or(0.0);
                let mut labels = group.labels.clone();
                labels.insert(GPU_PRODUCT_LABEL.to_owned(), group.gpu_product.clone());
                labels.insert("kubernetes.io/hostname".to_owned(), name.clone());
                nodes.push(SimNode {
                    name,
                    labels,
                    model,
                    gpus: group.gpus,
                    chain,
                    overhead_watts,
                });
            }
        }
        Ok(nodes)
    }

    /// The workloads with their curves, and their pods placed on the first nodes with free GPUs.
    fn place_workloads(
        &self,
        nodes: &[SimNode],
    ) -> Result<(Vec<SimWorkload>, Vec<SimPod>), String> {
        let examples = example_profiles();
        let mut workloads = Vec::new();
        let mut pods = Vec::new();
        let mut free: Vec<u32> = nodes.iter().map(|n| n.gpus).collect();
        let mut workload_names = BTreeSet::new();
        for entry in &self.workloads {
            let name = &entry.name;
            if !workload_names.insert(name.clone()) {
                return Err(format!("workload {name} is defined twice"));
            }
            if entry.pods == 0 || entry.gpus_per_pod == 0 {
                return Err(format!(
                    "workload {name}: pods and gpusPerPod must be at least 1"
                ));
            }
            if entry
                .stop_seconds
                .is_some_and(|stop| stop <= entry.start_seconds)
            {
                return Err(format!(
                    "workload {name}: startSeconds must be a number and stopSeconds after it"
                ));
            }
            if entry
                .weight
                .is_some_and(|w| !(w.is_finite() && w > 0.0 && w <= 1e6))
            {
                return Err(format!(
                    "workload {name}: weight must be above 0 and at most 1000000"
                ));
            }
            if entry
                .min_throughput_fraction
                .is_some_and(|f| !(0.0..=1.0).contains(&f))
            {
                return Err(format!(
                    "workload {name}: minThroughputFraction must be between 0 and 1"
                ));
            }
            if !(entry.measurement_noise.is_finite()
                && (0.0..=0.5).contains(&entry.measurement_noise))
            {
                return Err(format!(
                    "workload {name}: measurementNoise must be between 0 and 0.5"
                ));
            }
            let find = |field: &str, wanted: &Option<String>| {
                match wanted {
                None => Ok(None),
                Some(wanted) => self
                    .profiles
                    .iter()
                    .chain(&examples)
                    .find(|p| &p.name == wanted)
                    .cloned()
                    .map(Some)
                    .ok_or_else(|| {
                        format!(
                            "workload {name}: {field} {wanted} is neither in the scenario's profiles nor one of the built-in examples ({})",
                            examples.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(", ")
                        )
                    }),
            }
            };
            let profile = find("profile", &entry.profile)?;
            let true_profile = find("trueProfile", &entry.true_profile)?;
            let index = workloads.len();
            let mut first_model = None;
            for p in 0..entry.pods {
                let node = (0..nodes.len()).find(|&n| {
                    free[n] >= entry.gpus_per_pod && matches(&nodes[n].labels, &entry.node_labels)
                });
                let Some(node) = node else {
                    return Err(format!(
                        "workload {name}: pod {p} of {} needs {} GPUs and no node with matching labels has them free",
                        entry.pods, entry.gpus_per_pod
                    ));
                };
                free[node] -= entry.gpus_per_pod;
                first_model.get_or_insert(nodes[node].model);
                pods.push(SimPod {
                    name: format!("{name}-{p}"),
                    workload: index,
                    node,
                    gpus: entry.gpus_per_pod,
                });
            }
            let curve = match true_profile.as_ref().or(profile.as_ref()) {
                Some(profile) => profile.spec.clone(),
                None => {
                    let model = first_model.unwrap_or(gpu_models::UNKNOWN);
                    gpu_models::default_profile_spec(entry.kind, &model, None)
                }
            };
            workloads.push(SimWorkload {
                entry: entry.clone(),
                profile,
                curve,
                true_profile,
                weight: entry.weight.unwrap_or(1.0),
            });
        }
        Ok((workloads, pods))
    }

    /// The carbon intensity starts at 0 s, goes forward in time and is finite and not negative.
    fn check_carbon_intensity(&self) -> Result<(), String> {
        let points = &self.carbon_intensity;
        if let Some(first) = points.first()
            && first.at_seconds != 0.0
        {
            return Err(format!(
                "carbonIntensity: the first point must be at atSeconds 0 (the step function starts \
                 there), not {}",
                first.at_seconds
            ));
        }
        for (i, point) in points.iter().enumerate() {
            if !(point.grams_per_kwh.is_finite() && point.grams_per_kwh >= 0.0) {
                return Err(format!(
                    "carbonIntensity[{i}]: gramsPerKWh must be zero or more, not {}",
                    point.grams_per_kwh
                ));
            }
            if i > 0 && !ordered(points[i - 1].at_seconds, point.at_seconds) {
                return Err(format!(
                    "carbonIntensity[{i}]: atSeconds {} must be after the point before it ({})",
                    point.at_seconds,
                    points[i - 1].at_seconds
                ));
            }
        }
        Ok(())
    }

    /// Cap changes name budgets of the scenario and partitions its nodes, at sensible times.
    fn check_timeline(&self, nodes: &[SimNode]) -> Result<(), String> {
        for change in &self.cap_changes {
            if !(change.cap_watts.is_finite()
                && change.cap_watts >= 0.0
                && change.at_seconds.is_finite())
            {
                return Err(format!(
                    "capChanges: the change of {} needs a finite atSeconds and capWatts of zero or more",
                    change.budget
                ));
            }
            if !self.budgets.iter().any(|b| b.name == change.budget) {
                return Err(format!(
                    "capChanges: {} is not a budget of the scenario",
                    change.budget
                ));
            }
        }
        let gpus: Vec<(String, u32)> = nodes.iter().map(|n| (n.name.clone(), n.gpus)).collect();
        if let Some(problem) = self.faults.iter().find_map(|f| f.problem(&gpus)) {
            return Err(format!("faults: {problem}"));
        }
        for partition in &self.partitions {
            if !nodes.iter().any(|n| n.name == partition.node) {
                return Err(format!(
                    "partitions: {} is not a node of the scenario",
                    partition.node
                ));
            }
            if !ordered(partition.start_seconds, partition.end_seconds) {
                return Err(format!(
                    "partitions: node {}: startSeconds must be before endSeconds",
                    partition.node
                ));
            }
        }
        Ok(())
    }
}

/// The boot ID of `node` after `reboots` reboots, as its kubelet and its agent report it.
pub fn simulated_boot_id(node: &str, reboots: usize) -> String {
    format!("{node}-boot-{reboots}")
}

/// `seconds` after `start`, to the millisecond.
pub fn instant(start: Timestamp, seconds: f64) -> Timestamp {
    let offset = SignedDuration::from_millis((seconds * 1000.0).round() as i64);
    start.checked_add(offset).unwrap_or(start)
}

impl Prepared {
    pub fn gpu_count(&self) -> u32 {
        self.nodes.iter().map(|n| n.gpus).sum()
    }

    /// The spec `capWatts` of every budget at `seconds` (the last edit at or before it).
    pub fn spec_caps(&self, seconds: f64) -> BTreeMap<String, f64> {
        let mut caps: BTreeMap<String, f64> = self
            .scenario
            .budgets
            .iter()
            .map(|b| (b.name.clone(), b.cap_watts))
            .collect();
        let mut changes: Vec<&CapChange> = self
            .scenario
            .cap_changes
            .iter()
            .filter(|c| c.at_seconds <= seconds)
            .collect();
        changes.sort_by(|a, b| a.at_seconds.total_cmp(&b.at_seconds));
        for change in changes {
            caps.insert(change.budget.clone(), change.cap_watts);
        }
        caps
    }

    /// Grams of CO₂ per kWh at `seconds`: the last `carbonIntensity` point at or before it; `None`
    /// when the scenario gives none.
    pub fn carbon_intensity_at(&self, seconds: f64) -> Option<f64> {
        self.scenario
            .carbon_intensity
            .iter()
            .take_while(|p| p.at_seconds <= seconds)
            .last()
            .map(|p| p.grams_per_kwh)
    }

    /// The PowerBudgets as they stand at `seconds`.
    pub fn budgets(&self, seconds: f64) -> Vec<Arc<PowerBudget>> {
        let caps = self.spec_caps(seconds);
        self.scenario
            .budgets
            .iter()
            .filter_map(|b| {
                let schedule: Vec<serde_json::Value> = b
                    .windows
                    .iter()
                    .map(|w| {
                        json!({"name": w.name, "capWatts": w.cap_watts,
                               "start": instant(self.start, w.start_seconds).to_string(),
                               "end": instant(self.start, w.end_seconds).to_string()})
                    })
                    .collect();
                let mut spec = json!({"capWatts": caps.get(&b.name).copied().unwrap_or(b.cap_watts),
                                      "schedule": schedule});
                if let Some(parent) = &b.parent {
                    spec["parent"] = json!(parent);
                }
                if !b.node_labels.is_empty() {
                    spec["nodeSelector"] = json!({"matchLabels": b.node_labels});
                }
                if let Some(overhead) = b.node_overhead_watts {
                    spec["nodeOverheadWatts"] = json!(overhead);
                }
                if let Some(margin) = b.safety_margin_watts {
                    spec["safetyMarginWatts"] = json!(margin);
                }
                if let Some(efficiency) = &b.efficiency {
                    spec["efficiency"] = json!({"maxSlowdown": efficiency.max_slowdown});
                }
                serde_json::from_value(json!({
                    "apiVersion": "kilowatt.dev/v1alpha1", "kind": "PowerBudget",
                    "metadata": {"name": b.name, "generation": 1}, "spec": spec}))
                .ok()
                .map(Arc::new)
            })
            .collect()
    }

    /// The WorkloadProfiles the workloads name, in the scenario's namespace; `Told::Truth`: their
    /// true profiles where they have one (what the oracle run is told).
    pub fn profiles(&self, told: Told) -> Vec<Arc<WorkloadProfile>> {
        let mut seen = BTreeSet::new();
        self.workloads
            .iter()
            .filter_map(|w| w.told_profile(told))
            .filter(|p| seen.insert(p.name.clone()))
            .map(|p| {
                let mut profile = WorkloadProfile::new(&p.name, p.spec.clone());
                profile.metadata.namespace = Some(self.scenario.namespace.clone());
                Arc::new(profile)
            })
            .collect()
    }

    /// The Nodes at `seconds`, with GPU capacity and product label as the kubelet and GPU feature
    /// discovery would register them: Ready, except while a `reboot` has the machine down (Unknown)
    /// or a `nodeNotReady` fault holds (False); the boot ID counts the reboots completed.
    pub fn node_objects(&self, seconds: f64) -> Vec<Arc<Node>> {
        self.nodes
            .iter()
            .filter_map(|n| {
                let faults = || self.scenario.faults.iter().filter(|f| f.hits(&n.name));
                let down = faults().any(|f| matches!(f, Fault::Reboot { .. }) && f.active(seconds));
                let not_ready =
                    faults().any(|f| matches!(f, Fault::NodeNotReady { .. }) && f.active(seconds));
                let boots = faults()
                    .filter(|f| matches!(f, Fault::Reboot { .. }))
                    .filter(|f| f.boundaries().last().is_some_and(|up| *up <= seconds))
                    .count();
                let (status, reason) = match (down, not_ready) {
                    (true, _) => ("Unknown", "NodeStatusUnknown"),
                    (false, true) => ("False", "ContainerRuntimeUnhealthy"),
                    (false, false) => ("True", "KubeletReady"),
                };
                serde_json::from_value(json!({
                    "metadata": {"name": n.name, "labels": n.labels},
                    "status": {"capacity": {GPU_RESOURCE: n.gpus.to_string()},
                               "conditions": [{"type": "Ready", "status": status, "reason": reason}],
                               "nodeInfo": {"bootID": simulated_boot_id(&n.name, boots),
                                            "machineID": "", "systemUUID": "", "kernelVersion": "",
                                            "osImage": "", "containerRuntimeVersion": "",
                                            "kubeletVersion": "", "kubeProxyVersion": "",
                                            "operatingSystem": "linux", "architecture": "amd64"}}}))
                .ok()
                .map(Arc::new)
            })
            .collect()
    }

    /// Whether a workload's pods run at `seconds`.
    pub fn running(&self, workload: usize, seconds: f64) -> bool {
        let entry = &self.workloads[workload].entry;
        entry.start_seconds <= seconds && entry.stop_seconds.is_none_or(|stop| seconds < stop)
    }

    /// The pods running at `seconds`, bound and Running, with their annotations (naming the profile
    /// `told` says) and their work counters.
    pub fn pod_objects(&self, seconds: f64, told: Told) -> Vec<Arc<Pod>> {
        self.pods
            .iter()
            .enumerate()
            .filter(|(_, p)| self.running(p.workload, seconds))
            .filter_map(|(index, p)| {
                let workload = &self.workloads[p.workload];
                let entry = &workload.entry;
                let mut annotations = json!({
                    WORKLOAD_ANNOTATION: match entry.kind {
                        WorkloadKind::Training => "training",
                        WorkloadKind::Inference => "inference",
                    },
                    JOB_ANNOTATION: entry.name,
                });
                if let Some(profile) = workload.told_profile(told) {
                    annotations[PROFILE_ANNOTATION] = json!(profile.name);
                }
                annotations[WORK_METRIC_ANNOTATION] = json!(SIMULATED_WORK_METRIC);
                if entry.kind == WorkloadKind::Inference {
                    annotations[WORK_WAITING_METRIC_ANNOTATION] = json!(SIMULATED_WAITING_METRIC);
                }
                if entry.explore {
                    annotations[EXPLORE_ANNOTATION] = json!("true");
                }
                if let Some(weight) = entry.weight {
                    annotations[WEIGHT_ANNOTATION] = json!(weight.to_string());
                }
                if let Some(fraction) = entry.min_throughput_fraction {
                    annotations[MIN_FRACTION_ANNOTATION] = json!(fraction.to_string());
                }
                serde_json::from_value(json!({
                    "metadata": {"name": p.name, "namespace": self.scenario.namespace,
                                 "uid": format!("sim-{}", p.name), "annotations": annotations,
                                 "labels": {"app": entry.name}},
                    "spec": {"nodeName": self.nodes[p.node].name, "containers": [{"name": "main",
                             "resources": {"limits": {GPU_RESOURCE: p.gpus.to_string()}}}]},
                    "status": {"phase": "Running", "podIP": simulated_pod_ip(index)}}))
                .ok()
                .map(Arc::new)
            })
            .collect()
    }

    /// Which pod holds each GPU of `node` at `seconds`, as a device plugin hands them out: a starting
    /// pod takes the lowest-indexed free GPUs and keeps them until it stops (pods starting together
    /// go in name order). Unlike the operator's fallback (slots in pod-name order), a pod that starts
    /// later never takes GPUs from one already running, so the two orders differ and the operator
    /// must learn the real one from the agents' inventories, as in a cluster.
    pub fn gpu_pods(&self, node: usize, seconds: f64) -> Vec<Option<&SimPod>> {
        let start_of = |pod: &SimPod| self.workloads[pod.workload].entry.start_seconds;
        let stopped_by = |pod: &SimPod, t: f64| {
            self.workloads[pod.workload]
                .entry
                .stop_seconds
                .is_some_and(|stop| stop <= t)
        };
        let mut started: Vec<&SimPod> = self
            .pods
            .iter()
            .filter(|p| p.node == node && start_of(p) <= seconds)
            .collect();
        started.sort_by(|a, b| {
            start_of(a)
                .total_cmp(&start_of(b))
                .then_with(|| a.name.cmp(&b.name))
        });
        let mut gpus: Vec<Option<&SimPod>> = vec![None; self.nodes[node].gpus as usize];
        for pod in started {
            let at = start_of(pod);
            for slot in gpus.iter_mut() {
                if slot.is_some_and(|holder| stopped_by(holder, at)) {
                    *slot = None;
                }
            }
            if stopped_by(pod, at) {
                continue;
            }
            let mut wanted = pod.gpus;
            for slot in gpus.iter_mut().filter(|slot| slot.is_none()) {
                if wanted == 0 {
                    break;
                }
                *slot = Some(pod);
                wanted -= 1;
            }
        }
        for slot in gpus.iter_mut() {
            if slot.is_some_and(|holder| stopped_by(holder, seconds)) {
                *slot = None;
            }
        }
        gpus
    }

    /// Which workload each GPU of `node` runs at `seconds` (see [`Prepared::gpu_pods`]).
    pub fn gpu_workloads(&self, node: usize, seconds: f64) -> Vec<Option<usize>> {
        self.gpu_pods(node, seconds)
            .into_iter()
            .map(|pod| pod.map(|p| p.workload))
            .collect()
    }

    /// The pod holding each GPU of `node` at `seconds`, as `namespace/name`.
    pub fn gpu_holders(&self, node: usize, seconds: f64) -> Vec<Option<String>> {
        self.gpu_pods(node, seconds)
            .into_iter()
            .map(|pod| pod.map(|p| format!("{}/{}", self.scenario.namespace, p.name)))
            .collect()
    }

    /// The kubelet's answer to which pods hold `node`'s GPUs at `seconds`, by the UUID
    /// `gpu_uuid(index)` gives each GPU, as the agent registers it.
    pub fn pods_by_gpu_uuid(
        &self,
        node: usize,
        seconds: f64,
        gpu_uuid: impl Fn(u32) -> String,
    ) -> BTreeMap<String, Vec<String>> {
        self.gpu_holders(node, seconds)
            .into_iter()
            .zip(0u32..)
            .filter_map(|(holder, index)| Some((gpu_uuid(index), vec![holder?])))
            .collect()
    }

    /// Every instant at which the cluster objects change (workloads start or stop, caps are edited),
    /// after 0 and before the end.
    pub fn change_times(&self) -> Vec<f64> {
        let mut times: Vec<f64> = self
            .workloads
            .iter()
            .flat_map(|w| [Some(w.entry.start_seconds), w.entry.stop_seconds])
            .flatten()
            .chain(self.scenario.cap_changes.iter().map(|c| c.at_seconds))
            .chain(self.scenario.faults.iter().flat_map(Fault::boundaries))
            .filter(|t| *t > 0.0 && *t < self.scenario.duration_seconds)
            .collect();
        times.sort_by(f64::total_cmp);
        times.dedup();
        times
    }

    /// Whether `node`'s agent is cut off at `seconds`.
    pub fn partitioned(&self, node: &str, seconds: f64) -> bool {
        self.scenario
            .partitions
            .iter()
            .any(|p| p.node == node && p.start_seconds <= seconds && seconds < p.end_seconds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prepared() -> Prepared {
        Scenario::builtin()
            .expect("the built-in scenario parses")
            .prepare("built-in")
            .expect("the built-in scenario is valid")
    }

    #[test]
    fn the_builtin_scenario_is_two_rows_of_four_racks_with_256_gpus() {
        let p = prepared();
        assert_eq!(p.nodes.len(), 32);
        assert_eq!(p.gpu_count(), 256);
        let racks: BTreeSet<&str> = p.nodes.iter().map(|n| n.chain[0].as_str()).collect();
        assert_eq!(racks.len(), 4);
        assert!(p.nodes.iter().all(|n| n.chain.len() == 3));
        let dip = p
            .scenario
            .budgets
            .iter()
            .flat_map(|b| &b.windows)
            .find(|w| w.name == "demand-response")
            .expect("a demand-response window");
        let facility = p
            .scenario
            .budgets
            .iter()
            .find(|b| b.parent.is_none())
            .expect("root");
        assert_eq!(dip.cap_watts, 0.6 * facility.cap_watts);
    }

    #[test]
    fn pods_become_annotated_objects_only_while_their_workload_runs() {
        let p = prepared();
        let late = p
            .workloads
            .iter()
            .position(|w| w.entry.start_seconds > 0.0)
            .expect("a workload that arrives later");
        let late_name = p.workloads[late].entry.name.clone();
        let at_start = p.pod_objects(0.0, Told::Declared);
        assert!(at_start.iter().all(|pod| {
            pod.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(JOB_ANNOTATION))
                != Some(&late_name)
        }));
        let later = p.pod_objects(p.workloads[late].entry.start_seconds, Told::Declared);
        assert!(later.len() > at_start.len());
        let annotations = later[0].metadata.annotations.as_ref().expect("annotations");
        assert!(annotations.contains_key(WORKLOAD_ANNOTATION));
        assert!(annotations.contains_key(JOB_ANNOTATION));
    }

    #[test]
    fn a_scheduled_window_becomes_an_absolute_schedule_on_the_power_budget() {
        let p = prepared();
        let budgets = p.budgets(0.0);
        let with_window = budgets
            .iter()
            .find(|b| !b.spec.schedule.is_empty())
            .expect("a budget with a window");
        let window = &with_window.spec.schedule[0];
        assert!(window.start.as_ref().expect("start").0 > p.start);
    }

    #[test]
    fn a_starting_pod_takes_the_lowest_free_gpus_and_keeps_them_until_it_stops() {
        let text = r#"
name: t
start: "2026-12-01T00:00:00Z"
durationSeconds: 100
budgets: [{name: f, capWatts: 10000, nodeLabels: {rack: r}}]
nodeGroups: [{prefix: n, count: 1, labels: {rack: r}, gpus: 5, gpuProduct: NVIDIA-H100-80GB-HBM3}]
workloads:
  - {name: b, kind: inference, pods: 1, gpusPerPod: 2, stopSeconds: 70}
  - {name: a, kind: training, pods: 1, gpusPerPod: 2, startSeconds: 50}
  - {name: c, kind: training, pods: 1, gpusPerPod: 1, startSeconds: 80}
"#;
        let p = Scenario::parse(text, "test")
            .expect("parses")
            .prepare("test")
            .expect("valid");
        assert_eq!(
            p.gpu_workloads(0, 0.0),
            vec![Some(0), Some(0), None, None, None]
        );
        // `a-0` sorts before `b-0`, but `b-0` runs already and keeps GPUs 0 and 1.
        assert_eq!(
            p.gpu_workloads(0, 60.0),
            vec![Some(0), Some(0), Some(1), Some(1), None]
        );
        // `b-0` stopped at 70 s; `c-0` takes the lowest GPU it freed.
        assert_eq!(
            p.gpu_workloads(0, 90.0),
            vec![Some(2), None, Some(1), Some(1), None]
        );
        let pods = p.pods_by_gpu_uuid(0, 90.0, |i| format!("GPU-{i}"));
        let namespace = &p.scenario.namespace;
        assert_eq!(pods["GPU-0"], [format!("{namespace}/c-0")]);
        assert_eq!(pods["GPU-2"], [format!("{namespace}/a-0")]);
        assert!(!pods.contains_key("GPU-1"), "a free GPU is held by nobody");
    }

    #[test]
    fn mistakes_in_a_scenario_are_named() {
        let base = r#"
name: t
start: "2026-12-01T00:00:00Z"
durationSeconds: 100
budgets: [{name: f, capWatts: 10000, nodeLabels: {rack: r}}]
nodeGroups: [{prefix: n, count: 1, labels: {rack: r}, gpus: 4, gpuProduct: NVIDIA-H100-80GB-HBM3}]
"#;
        let cases = [
            (
                "workloads: [{name: w, kind: training, pods: 3, gpusPerPod: 2}]",
                "no node with matching labels",
            ),
            (
                "workloads: [{name: w, kind: training, profile: nope, pods: 1, gpusPerPod: 1}]",
                "profile nope",
            ),
            (
                "workloads: []\ncapChanges: [{atSeconds: 5, budget: g, capWatts: 1}]",
                "g is not a budget",
            ),
            (
                "workloads: []\npartitions: [{node: x, startSeconds: 1, endSeconds: 2}]",
                "x is not a node",
            ),
            (
                "workloads: []\ncarbonIntensity: [{atSeconds: 10, gramsPerKWh: 250}]",
                "the first point must be at atSeconds 0",
            ),
            (
                "workloads: []\ncarbonIntensity: [{atSeconds: 0, gramsPerKWh: 250}, {atSeconds: 0, gramsPerKWh: 300}]",
                "carbonIntensity[1]: atSeconds 0 must be after",
            ),
            (
                "workloads: []\ncarbonIntensity: [{atSeconds: 0, gramsPerKWh: -1}]",
                "carbonIntensity[0]: gramsPerKWh must be zero or more",
            ),
        ];
        for (tail, expected) in cases {
            let error = Scenario::parse(&format!("{base}{tail}"), "test")
                .expect("parses")
                .prepare("test")
                .expect_err("invalid");
            assert!(error.to_string().contains(expected), "{error}");
        }
        let syntax = Scenario::parse("name: t\nbogus: 1\n", "test").expect_err("unknown field");
        assert!(syntax.to_string().contains("bogus"), "{syntax}");
    }

    const POLICY_SCENARIO: &str = r#"
name: t
start: "2026-12-01T00:00:00Z"
durationSeconds: 100
budgets:
  - {name: facility, capWatts: 150000}
  - {name: rack, parent: facility, capWatts: 10000, nodeLabels: {rack: r}, efficiency: {maxSlowdown: 0.1}}
nodeGroups: [{prefix: n, count: 1, labels: {rack: r}, gpus: 4, gpuProduct: NVIDIA-H100-80GB-HBM3}]
workloads: []
carbonIntensity:
  - {atSeconds: 0, gramsPerKWh: 250}
  - {atSeconds: 3600, gramsPerKWh: 520}
"#;

    fn max_slowdowns(p: &Prepared) -> Vec<(String, Option<f64>)> {
        p.budgets(0.0)
            .iter()
            .map(|b| {
                (
                    b.metadata.name.clone().unwrap_or_default(),
                    b.spec.efficiency.as_ref().map(|e| e.max_slowdown),
                )
            })
            .collect()
    }

    #[test]
    fn efficiency_becomes_the_power_budgets_spec_and_the_flag_sets_it_on_every_root() {
        let as_written = Scenario::parse(POLICY_SCENARIO, "test")
            .expect("parses")
            .prepare("test")
            .expect("valid");
        assert_eq!(
            max_slowdowns(&as_written),
            [
                ("facility".to_owned(), None),
                ("rack".to_owned(), Some(0.1))
            ]
        );
        let mut flagged = Scenario::parse(POLICY_SCENARIO, "test").expect("parses");
        flagged.set_root_max_slowdown(0.02);
        let flagged = flagged.prepare("test").expect("valid");
        assert_eq!(
            max_slowdowns(&flagged),
            [
                ("facility".to_owned(), Some(0.02)),
                ("rack".to_owned(), Some(0.1))
            ]
        );
        for bad in [1.0, -0.5] {
            let mut scenario = Scenario::parse(POLICY_SCENARIO, "test").expect("parses");
            scenario.set_root_max_slowdown(bad);
            let error = scenario.prepare("test").expect_err("out of range");
            assert!(
                error.to_string().contains(
                    "budget facility: efficiency.maxSlowdown must be a fraction in [0, 1)"
                ),
                "{error}"
            );
        }
        let unknown = POLICY_SCENARIO.replace("maxSlowdown: 0.1", "maxSlowdown: 0.1, bands: 2");
        let error = Scenario::parse(&unknown, "test").expect_err("unknown field");
        assert!(error.to_string().contains("bands"), "{error}");
    }

    #[test]
    fn carbon_intensity_is_a_step_function_of_simulated_time() {
        let p = Scenario::parse(POLICY_SCENARIO, "test")
            .expect("parses")
            .prepare("test")
            .expect("valid");
        assert_eq!(p.carbon_intensity_at(0.0), Some(250.0));
        assert_eq!(p.carbon_intensity_at(3599.9), Some(250.0));
        assert_eq!(p.carbon_intensity_at(3600.0), Some(520.0));
        assert_eq!(p.carbon_intensity_at(1e6), Some(520.0));
        let without = POLICY_SCENARIO
            .split("carbonIntensity:")
            .next()
            .expect("the scenario's head");
        let none = Scenario::parse(without, "test")
            .expect("parses")
            .prepare("test")
            .expect("valid");
        assert_eq!(none.carbon_intensity_at(0.0), None);
        assert_eq!(prepared().carbon_intensity_at(4000.0), Some(520.0));
    }
}
