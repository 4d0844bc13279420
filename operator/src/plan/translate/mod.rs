//! The one place where cluster objects (PowerBudgets, WorkloadProfiles, Nodes, Pods) become the solver's
//! `Problem`, together with the facts that status, events and the published plan need, in steps that
//! follow the data: [`budgets`] (the forest and node selection), [`nodes`] (GPU slots and overheads),
//! [`pods`] (placement and annotations), [`profiles`] (which curve) and [`gangs`] (workloads). Pure:
//! objects and the current time in, data out; nothing here fails — bad input becomes a diagnostic and
//! the affected GPUs are planned at their minimum limit.

mod budgets;
mod gangs;
mod nodes;
mod pods;
mod profiles;
#[cfg(test)]
pub(crate) mod tests;
mod work;

pub use budgets::selector_matches;

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::jiff::Timestamp;
use kilowatt_crds::plan::Inventory;
use kilowatt_crds::{PowerBudget, WorkloadProfile};
use kilowatt_solver::model;
use kube::ResourceExt;

use crate::plan::gpu_models::GpuModel;
use crate::plan::schedule::{self, EffectiveCap};

/// `training` or `inference`: makes a GPU pod managed.
pub const WORKLOAD_ANNOTATION: &str = "kilowatt.dev/workload";
/// Name of a WorkloadProfile in the pod's namespace.
pub const PROFILE_ANNOTATION: &str = "kilowatt.dev/profile";
/// Gang name: pods with the same job in one namespace run at one limit.
pub const JOB_ANNOTATION: &str = "kilowatt.dev/job";
/// Positive number; the workload's share of the objective per GPU.
pub const WEIGHT_ANNOTATION: &str = "kilowatt.dev/weight";
/// Inference SLO floor in [0, 1]: throughput never planned below this fraction of the best.
pub const MIN_FRACTION_ANNOTATION: &str = "kilowatt.dev/min-throughput-fraction";
/// The pod's work counter on its own metrics endpoint: a metric name, optionally with equality label
/// matchers, e.g. `vllm:generation_tokens_total{model_name="llama"}`; its node's agent scrapes it.
pub const WORK_METRIC_ANNOTATION: &str = "kilowatt.dev/work-metric";
/// Port of the pod's metrics endpoint (default 8000).
pub const WORK_PORT_ANNOTATION: &str = "kilowatt.dev/work-port";
/// Path of the pod's metrics endpoint (default `/metrics`).
pub const WORK_PATH_ANNOTATION: &str = "kilowatt.dev/work-path";
/// A gauge of requests waiting on the same endpoint, e.g. `vllm:num_requests_waiting`: a window
/// counts as a point of the curve only while it is above zero.
pub const WORK_WAITING_METRIC_ANNOTATION: &str = "kilowatt.dev/work-waiting-metric";
/// Node annotation: non-GPU draw of this node in watts, overriding the budget's `nodeOverheadWatts`.
pub const OVERHEAD_ANNOTATION: &str = "kilowatt.dev/overhead-watts";

/// The objects a translation reads, as the watch caches hold them.
#[derive(Debug, Clone, Copy)]
pub struct Cluster<'a> {
    pub budgets: &'a [Arc<PowerBudget>],
    pub profiles: &'a [Arc<WorkloadProfile>],
    pub nodes: &'a [Arc<Node>],
    pub pods: &'a [Arc<Pod>],
    /// GPU inventories reported by node agents, by node; they replace the capacity and the model
    /// table for their nodes.
    pub inventories: &'a BTreeMap<String, Inventory>,
    /// Nodes the planning pass holds outside the optimisation, by node.
    pub holds: &'a BTreeMap<String, NodeHold>,
    /// How long before a schedule window opens its cap is planned.
    pub window_lead: std::time::Duration,
}

/// A node the planning pass holds outside the optimisation: its GPUs are planned at their floors and
/// counted in its budgets at `gpu_watts` — what they may still enforce, for a node that does not
/// lower, or their floors (`None`) for a node under an infeasible budget.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeHold {
    /// CamelCase pod warning reason.
    pub reason: &'static str,
    /// Why, for the budget's condition and the pods' warnings.
    pub message: String,
    pub gpu_watts: Option<Vec<f64>>,
}

/// Something wrong with a budget's inputs, shown in its `Degraded` condition.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct BudgetIssue {
    /// CamelCase condition reason.
    pub reason: &'static str,
    pub message: String,
}

/// What a budget is, before solving.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetFacts {
    pub generation: Option<i64>,
    /// Parent after validation (`None` when the spec's parent is missing or in a cycle).
    pub parent: Option<String>,
    pub spec_cap_watts: f64,
    /// The spec's `nodeOverheadWatts`, inherited by nodes whose nearer budgets do not set it.
    pub node_overhead_watts: Option<f64>,
    pub effective: EffectiveCap,
    pub safety_margin_watts: f64,
    /// The spec's `efficiency.maxSlowdown` when it is in [0, 1) (else an issue and `None`): the
    /// solver's `Budget::max_slowdown`.
    pub max_slowdown: Option<f64>,
    /// Effective cap minus safety margin: what the plan must fit under.
    pub planning_cap_watts: f64,
    /// Floors and overheads of conflicting nodes, and what held nodes may enforce, held outside the
    /// optimisation but counted here; unseen GPUs at their maximum too.
    pub pinned_watts: f64,
    /// The least the limits and overheads under this budget can be brought to now: every GPU at its
    /// floor, except held nodes at what they may enforce and unseen GPUs at their maximum.
    pub floor_watts: f64,
    /// One message per node under this budget that is held at what it may enforce.
    pub held: Vec<String>,
    /// Nodes and GPUs in this budget's subtree.
    pub nodes: u32,
    pub gpus: u32,
    /// One message per node that this budget shares with an unrelated budget.
    pub conflicts: Vec<String>,
    pub issues: Vec<BudgetIssue>,
    /// With `spec.signals.carbonForecast`, once [`crate::signals::apply`] ran: the forecast in force;
    /// `max_slowdown` is then the one it sets.
    pub signals: Option<crate::signals::SignalReading>,
    /// With `spec.signals.openadr`, once [`crate::signals::openadr::apply`] ran: its program's
    /// events and whether the VTN answers.
    pub demand_response: Option<crate::signals::openadr::ProgramReading>,
}

/// One GPU slot of a node in the plan.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuSlot {
    /// `<node>/gpu<index>`: the index the agent maps to a physical GPU.
    pub id: String,
    pub min_watts: f64,
    pub max_watts: f64,
    /// `namespace/name` of the pod holding it.
    pub pod: Option<String>,
}

/// A node that some budget selects.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeFacts {
    /// Innermost budget; for a conflicting node, the first (by name) of the budgets selecting it.
    pub budget: String,
    pub model: GpuModel,
    pub overhead_watts: f64,
    pub slots: Vec<GpuSlot>,
    /// Every budget whose selector matches the node, by name.
    pub selected_by: Vec<String>,
    /// Held at its GPUs' minimum limits, outside the optimisation: selected by unrelated budgets, or
    /// held by the pass (`hold`), or its inventory is invalid.
    pub pinned: bool,
    /// Why the pass holds it, when it does.
    pub hold: Option<NodeHold>,
    /// GPUs the Node has (capacity) beyond those its agent reports, counted at their maximum.
    pub unseen_watts: f64,
    /// The work counters of its managed pods, for its agent to scrape.
    pub work_counters: Vec<kilowatt_crds::plan::WorkCounter>,
    /// Its managed pods whose work counter the operator reads from Prometheus.
    pub work_queries: Vec<crate::measure::QueriedPod>,
}

/// Where a managed pod's curve came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProfileSource {
    /// Named in `kilowatt.dev/profile`.
    Named(String),
    /// A WorkloadProfile whose selector matches the pod.
    Selected(String),
    /// A WorkloadProfile made for the pod's job (`spec.job`).
    ForJob(String),
    /// The built-in default for its kind and GPU model.
    Default(String),
}

/// A job planned on a built-in default curve: where a WorkloadProfile made for it would live and
/// what it would start from.
#[derive(Debug, Clone, PartialEq)]
pub struct UnprofiledJob {
    pub namespace: String,
    /// `kilowatt.dev/job`, else the pods' controller, else the pod's name.
    pub job: String,
    pub kind: model::WorkloadKind,
    /// The GPU model of its first pod's node.
    pub model: GpuModel,
}

/// A problem with one pod's annotations or placement; becomes a Warning event on the pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodWarning {
    /// CamelCase event reason.
    pub reason: &'static str,
    pub message: String,
}

/// What the operator made of one GPU pod on a budgeted node.
#[derive(Debug, Clone, PartialEq)]
pub struct PodFacts {
    pub namespace: String,
    pub name: String,
    pub uid: Option<String>,
    /// The solver workload it belongs to; `None` when unmanaged (its GPUs sit at their minimum).
    pub workload: Option<String>,
    pub profile: Option<ProfileSource>,
    pub warnings: Vec<PodWarning>,
}

/// The solver's problem and everything around it.
#[derive(Debug, Clone, PartialEq)]
pub struct Translation {
    pub problem: model::Problem,
    pub budgets: BTreeMap<String, BudgetFacts>,
    /// Each budget's chain: itself, its parent, …, its root.
    pub chains: BTreeMap<String, Vec<String>>,
    pub nodes: BTreeMap<String, NodeFacts>,
    pub pods: Vec<PodFacts>,
    /// Pods using each WorkloadProfile, by (namespace, name); profiles in use by none are absent.
    pub profile_pods: BTreeMap<(String, String), u32>,
    /// Pods of each solver workload, as `namespace/name`.
    pub workload_pods: BTreeMap<String, Vec<String>>,
    /// Solver workloads planned on a built-in default curve.
    pub unprofiled: BTreeMap<String, UnprofiledJob>,
    /// The next instant a schedule window opens or closes.
    pub next_transition: Option<Timestamp>,
    /// Pods, as `namespace/name`, on nodes whose agents report which pods hold their GPUs, that the
    /// report does not list yet (the agent asks the kubelet every 10 s): placed on free slots in the
    /// meantime, and planned again when the report arrives.
    pub awaiting_gpu_report: Vec<String>,
    /// The curves `plan_on_learned` replaced in `problem` with merged ones, as their profiles declare
    /// them, by workload: the page draws them next to what was measured.
    pub declared_profiles: BTreeMap<String, Vec<model::ProfilePoint>>,
}

impl Translation {
    /// Plans budget `name` with `max_slowdown` as its efficiency policy, in its facts and in the
    /// solver's problem alike.
    pub fn set_max_slowdown(&mut self, name: &str, max_slowdown: Option<f64>) {
        if let Some(facts) = self.budgets.get_mut(name) {
            facts.max_slowdown = max_slowdown;
        }
        if let Some(budget) = self.problem.budgets.iter_mut().find(|b| b.name == name) {
            budget.max_slowdown = max_slowdown;
        }
    }

    /// Makes the pass due again at `at` if that is sooner than the next transition known.
    pub fn wake_at(&mut self, at: Option<Timestamp>) {
        self.next_transition = [self.next_transition, at].into_iter().flatten().min();
    }

    /// Whether each budget's cap can be enforced: nodes that do not lower at what they hold, unseen
    /// GPUs at their maximum, every other GPU at its floor, all under the effective cap.
    pub fn cap_enforced(&self) -> BTreeMap<String, bool> {
        self.budgets
            .iter()
            .map(|(name, facts)| {
                let enforced = facts.floor_watts <= facts.effective.cap_watts + 1e-6;
                (name.clone(), enforced)
            })
            .collect()
    }

    /// The curve `workload`'s profile declares (or the default it fell back to), before any learning.
    pub fn declared_profile<'a>(
        &'a self,
        workload: &'a model::Workload,
    ) -> &'a [model::ProfilePoint] {
        self.declared_profiles
            .get(&workload.name)
            .map_or(&workload.profile, Vec::as_slice)
    }

    /// Each budget's spec `capWatts`, by name.
    pub fn spec_caps(&self) -> BTreeMap<String, f64> {
        self.budgets
            .iter()
            .map(|(name, facts)| (name.clone(), facts.spec_cap_watts))
            .collect()
    }
}

/// Translates the cluster at `now` into a problem and its facts.
pub fn translate(cluster: Cluster<'_>, now: Timestamp) -> Translation {
    let (mut budgets, chains) = budgets::budget_forest(cluster.budgets, now, cluster.window_lead);
    let next_transition = cluster
        .budgets
        .iter()
        .filter_map(|b| schedule::next_transition(&b.spec, now, cluster.window_lead))
        .min();
    let sorted_nodes: BTreeMap<String, &Node> = cluster
        .nodes
        .iter()
        .map(|n| (n.name_any(), n.as_ref()))
        .collect();
    let selected = budgets::select_nodes(cluster.budgets, &sorted_nodes, &mut budgets);
    let mut nodes = nodes::node_facts(
        selected,
        &sorted_nodes,
        (cluster.inventories, cluster.holds),
        &mut budgets,
        &chains,
    );
    let (placed, awaiting_gpu_report) = pods::place_pods(&cluster, &mut nodes);
    let mut gangs = gangs::Gangs::default();
    for pod in placed {
        if let Some(node) = nodes.get(&pod.node) {
            gangs.join(pod, node, cluster.profiles);
        }
    }
    let gangs::Joined {
        workloads,
        workload_pods,
        pods,
        profile_pods,
        unprofiled,
    } = gangs.finish();

    let problem = model::Problem {
        budgets: budgets
            .iter()
            .map(|(name, f)| model::Budget {
                name: name.clone(),
                cap_watts: (f.planning_cap_watts - f.pinned_watts).max(0.0),
                parent: f.parent.clone(),
                max_slowdown: f.max_slowdown,
            })
            .collect(),
        nodes: nodes
            .iter()
            .filter(|(_, n)| !n.pinned)
            .map(|(name, n)| model::Node {
                name: name.clone(),
                budget: n.budget.clone(),
                overhead_watts: n.overhead_watts,
                gpus: n
                    .slots
                    .iter()
                    .map(|s| model::Gpu {
                        id: s.id.clone(),
                        min_watts: s.min_watts,
                        max_watts: s.max_watts,
                    })
                    .collect(),
            })
            .collect(),
        workloads,
        objective: model::Objective::MaxThroughput,
    };
    Translation {
        problem,
        budgets,
        chains,
        nodes,
        pods,
        profile_pods,
        workload_pods,
        unprofiled,
        next_transition,
        awaiting_gpu_report,
        declared_profiles: BTreeMap::new(),
    }
}

/// An object's name as `ResourceExt::name_any` gives it (name, else generateName), borrowed.
fn object_name(metadata: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> &str {
    metadata
        .name
        .as_deref()
        .or(metadata.generate_name.as_deref())
        .unwrap_or("")
}

fn parse_finite(text: &str) -> Option<f64> {
    text.trim().parse::<f64>().ok().filter(|v| v.is_finite())
}
