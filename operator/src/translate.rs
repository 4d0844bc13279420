//! The one place where cluster objects (PowerBudgets, WorkloadProfiles, Nodes, Pods) become the solver's
//! `Problem`, together with the facts that status, events and the published plan need. Pure: objects
//! and the current time in, data out; nothing here fails — bad input becomes a diagnostic and the
//! affected GPUs are planned at their minimum limit.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::jiff::Timestamp;
use kilowatt_crds::plan::Inventory;
use kilowatt_crds::{PowerBudget, WorkloadProfile};
use kilowatt_solver::model::{self, ProfilePoint, WorkloadKind};
use kube::ResourceExt;

use crate::gpu_models::{self, GPU_PRODUCT_LABEL, GPU_RESOURCE, GpuModel};
use crate::schedule::{self, EffectiveCap};

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
    /// Effective cap minus safety margin: what the plan must fit under.
    pub planning_cap_watts: f64,
    /// Floors and overheads of conflicting nodes, held outside the optimisation but counted here.
    pub pinned_watts: f64,
    /// Nodes and GPUs in this budget's subtree.
    pub nodes: u32,
    pub gpus: u32,
    /// One message per node that this budget shares with an unrelated budget.
    pub conflicts: Vec<String>,
    pub issues: Vec<BudgetIssue>,
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
    /// Selected by unrelated budgets: held at its GPUs' minimum limits, outside the optimisation.
    pub pinned: bool,
}

/// Where a managed pod's curve came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProfileSource {
    /// Named in `kilowatt.dev/profile`.
    Named(String),
    /// A WorkloadProfile whose selector matches the pod.
    Selected(String),
    /// The built-in default for its kind and GPU model.
    Default(String),
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
    /// The next instant a schedule window opens or closes.
    pub next_transition: Option<Timestamp>,
    /// Pods, as `namespace/name`, on nodes whose agents report which pods hold their GPUs, that the
    /// report does not list yet (the agent asks the kubelet every 10 s): placed on free slots in the
    /// meantime, and planned again when the report arrives.
    pub awaiting_gpu_report: Vec<String>,
}

/// How a pod came by its GPU slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placement {
    /// The node's agent does not report pods: slots in pod-name order.
    NameOrder,
    /// The slots the kubelet assigned to the pod, as the node's agent reported them.
    Reported,
    /// The agent reports pods but not this one yet: free slots for now.
    AwaitingReport,
}

/// Which of `node`'s slots the pod `pod_ref` takes, at most `wanted`, given its agent's inventory.
/// With a report (`pods_reported`), a listed pod takes only the free slots the kubelet gave it (a GPU
/// time-sliced between pods goes to the first of them in name order), and an unlisted one only slots
/// that no pod known on the node holds — never a slot the kubelet says another running pod holds.
fn choose_slots(
    node: &NodeFacts,
    inventory: Option<&Inventory>,
    pod_ref: &str,
    wanted: usize,
    gpu_pods_on_node: &BTreeSet<&str>,
) -> (Vec<usize>, Placement) {
    let free = |i: &usize| node.slots[*i].pod.is_none();
    let Some(inventory) = inventory.filter(|inventory| inventory.pods_reported) else {
        let slots = (0..node.slots.len()).filter(free).take(wanted).collect();
        return (slots, Placement::NameOrder);
    };
    let holders =
        |i: usize| -> &[String] { inventory.gpus.get(i).map_or(&[], |gpu| gpu.pods.as_slice()) };
    let listed = (0..node.slots.len()).any(|i| holders(i).iter().any(|p| p == pod_ref));
    if listed {
        let slots = (0..node.slots.len())
            .filter(free)
            .filter(|&i| holders(i).iter().any(|p| p == pod_ref))
            .take(wanted)
            .collect();
        return (slots, Placement::Reported);
    }
    // NB: slots of pods the operator no longer sees come last: the report may be up to one ask old.
    let unheld = (0..node.slots.len()).filter(|&i| holders(i).is_empty());
    let stale = (0..node.slots.len()).filter(|&i| {
        let held = holders(i);
        !held.is_empty() && held.iter().all(|p| !gpu_pods_on_node.contains(p.as_str()))
    });
    let slots = unheld.chain(stale).filter(free).take(wanted).collect();
    (slots, Placement::AwaitingReport)
}

/// An object's name as `ResourceExt::name_any` gives it (name, else generateName), borrowed.
fn object_name(metadata: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> &str {
    metadata
        .name
        .as_deref()
        .or(metadata.generate_name.as_deref())
        .unwrap_or("")
}

/// Namespace and name of a pod, borrowed: the order pods take their node's GPU slots in. NB: owned keys
/// (two strings per comparison) were a fifth of translating 1,000 nodes (perf, BENCHMARKS.md).
fn pod_order_key(pod: &Pod) -> (&str, &str) {
    (
        pod.metadata.namespace.as_deref().unwrap_or(""),
        object_name(&pod.metadata),
    )
}

/// Whether `selector` matches `labels`; `Err` names what is malformed.
pub fn selector_matches(
    selector: &LabelSelector,
    labels: &BTreeMap<String, String>,
) -> Result<bool, String> {
    for (key, value) in selector.match_labels.iter().flatten() {
        if labels.get(key) != Some(value) {
            return Ok(false);
        }
    }
    for requirement in selector.match_expressions.iter().flatten() {
        let values = requirement.values.as_deref().unwrap_or_default();
        let present = labels.get(&requirement.key);
        let matched = match requirement.operator.as_str() {
            "In" => present.is_some_and(|v| values.contains(v)),
            "NotIn" => present.is_none_or(|v| !values.contains(v)),
            "Exists" => present.is_some(),
            "DoesNotExist" => present.is_none(),
            other => {
                return Err(format!(
                    "unknown operator {other:?} for key {:?} (use In, NotIn, Exists, DoesNotExist)",
                    requirement.key
                ));
            }
        };
        if !matched {
            return Ok(false);
        }
    }
    Ok(true)
}

/// A non-negative whole number of GPUs from a quantity string (`"8"`); `None` when it is not one.
fn gpu_count(quantity: &str) -> Option<u32> {
    quantity.trim().parse().ok()
}

/// GPUs a pod asks for: the sum of its containers' `nvidia.com/gpu` limits (or requests).
fn pod_gpus(pod: &Pod) -> u32 {
    let Some(spec) = &pod.spec else { return 0 };
    spec.containers
        .iter()
        .filter_map(|c| c.resources.as_ref())
        .filter_map(|r| {
            r.limits
                .as_ref()
                .and_then(|l| l.get(GPU_RESOURCE))
                .or_else(|| r.requests.as_ref().and_then(|q| q.get(GPU_RESOURCE)))
        })
        .filter_map(|q| gpu_count(&q.0))
        .sum()
}

/// Whether the pod holds its GPUs: bound to a node and not finished.
fn holds_gpus(pod: &Pod) -> Option<&str> {
    let node = pod.spec.as_ref()?.node_name.as_deref()?;
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    (!matches!(phase, Some("Succeeded" | "Failed"))).then_some(node)
}

fn parse_finite(text: &str) -> Option<f64> {
    text.trim().parse::<f64>().ok().filter(|v| v.is_finite())
}

/// A pod's validated annotations.
struct PodIntent {
    kind: WorkloadKind,
    job: String,
    weight: f64,
    min_fraction: Option<f64>,
    profile_name: Option<String>,
}

/// Reads a pod's annotations: `Ok(None)` unmanaged, `Err` malformed (with the warning to emit).
fn pod_intent(pod: &Pod) -> Result<Option<PodIntent>, PodWarning> {
    let annotations = pod.annotations();
    let malformed = |annotation: &str, value: &str, expected: &str| PodWarning {
        reason: "MalformedAnnotation",
        message: format!(
            "annotation {annotation}={value:?} is not {expected}; the pod's GPUs are held at their \
             minimum power limit until it is fixed"
        ),
    };
    let Some(kind_text) = annotations.get(WORKLOAD_ANNOTATION) else {
        return Ok(None);
    };
    let kind = match kind_text.trim() {
        "training" => WorkloadKind::Training,
        "inference" => WorkloadKind::Inference,
        _ => {
            return Err(malformed(
                WORKLOAD_ANNOTATION,
                kind_text,
                "`training` or `inference`",
            ));
        }
    };
    let weight = match annotations.get(WEIGHT_ANNOTATION) {
        None => 1.0,
        Some(text) => parse_finite(text)
            .filter(|w| *w > 0.0 && *w <= 1e6)
            .ok_or_else(|| malformed(WEIGHT_ANNOTATION, text, "a number in (0, 1e6]"))?,
    };
    let min_fraction = match annotations.get(MIN_FRACTION_ANNOTATION) {
        None => None,
        Some(text) => Some(
            parse_finite(text)
                .filter(|f| (0.0..=1.0).contains(f))
                .ok_or_else(|| malformed(MIN_FRACTION_ANNOTATION, text, "a number in [0, 1]"))?,
        ),
    };
    let job = match annotations.get(JOB_ANNOTATION) {
        Some(text) if text.trim().is_empty() || text.contains('/') => {
            return Err(malformed(
                JOB_ANNOTATION,
                text,
                "a non-empty name without `/`",
            ));
        }
        Some(text) => text.trim().to_owned(),
        None => pod
            .owner_references()
            .iter()
            .find(|o| o.controller == Some(true))
            .map_or_else(|| pod.name_any(), |o| o.name.clone()),
    };
    let profile_name = match annotations.get(PROFILE_ANNOTATION) {
        Some(text) if text.trim().is_empty() => {
            return Err(malformed(
                PROFILE_ANNOTATION,
                text,
                "the name of a WorkloadProfile",
            ));
        }
        other => other.map(|t| t.trim().to_owned()),
    };
    Ok(Some(PodIntent {
        kind,
        job,
        weight,
        min_fraction,
        profile_name,
    }))
}

fn kind_name(kind: WorkloadKind) -> &'static str {
    match kind {
        WorkloadKind::Training => "training",
        WorkloadKind::Inference => "inference",
    }
}

/// A gang being assembled from its pods.
struct Gang {
    kind: WorkloadKind,
    weight: f64,
    min_fraction: Option<f64>,
    profile: ProfileSource,
    points: Vec<ProfilePoint>,
    gpus: Vec<String>,
    pods: Vec<String>,
}

/// The curve a managed pod runs on: the profile it names, else the first (by name) whose selector
/// matches it, else the default for its kind and GPU model.
fn resolve_profile(
    profiles: &[Arc<WorkloadProfile>],
    pod: &Pod,
    intent: &PodIntent,
    model: &GpuModel,
) -> Result<(ProfileSource, Vec<ProfilePoint>), PodWarning> {
    let namespace = pod.namespace().unwrap_or_default();
    let mut in_namespace: Vec<&WorkloadProfile> = profiles
        .iter()
        .filter(|p| p.namespace().as_deref() == Some(namespace.as_str()))
        .map(Arc::as_ref)
        .collect();
    in_namespace.sort_by(|a, b| object_name(&a.metadata).cmp(object_name(&b.metadata)));
    let points_of = |profile: &WorkloadProfile| {
        profile
            .spec
            .points
            .iter()
            .map(|p| ProfilePoint {
                power_watts: p.power_watts,
                throughput: p.throughput,
                sm_clock_mhz: p.sm_clock_mhz,
            })
            .collect()
    };
    if let Some(name) = &intent.profile_name {
        return match in_namespace.iter().find(|p| p.name_any() == *name) {
            Some(profile) => Ok((ProfileSource::Named(name.clone()), points_of(profile))),
            None => Err(PodWarning {
                reason: "ProfileNotFound",
                message: format!(
                    "annotation {PROFILE_ANNOTATION}={name:?} names no WorkloadProfile in namespace \
                     {namespace}; the pod's GPUs are held at their minimum power limit until it exists"
                ),
            }),
        };
    }
    let selected = in_namespace.iter().find(|p| {
        p.spec
            .selector
            .as_ref()
            .is_some_and(|s| selector_matches(s, pod.labels()).unwrap_or(false))
    });
    Ok(match selected {
        Some(profile) => (
            ProfileSource::Selected(profile.name_any()),
            points_of(profile),
        ),
        None => {
            let (name, points) = gpu_models::default_profile(intent.kind, model);
            (ProfileSource::Default(name), points)
        }
    })
}

/// Budgets resolved into a forest: validated parents, chains, and per-budget facts without counts.
fn budget_forest(
    budgets: &[Arc<PowerBudget>],
    now: Timestamp,
) -> (BTreeMap<String, BudgetFacts>, BTreeMap<String, Vec<String>>) {
    let by_name: BTreeMap<String, &PowerBudget> =
        budgets.iter().map(|b| (b.name_any(), b.as_ref())).collect();
    let mut facts: BTreeMap<String, BudgetFacts> = BTreeMap::new();
    for (name, budget) in &by_name {
        let spec = &budget.spec;
        let effective = schedule::effective_cap(spec, now);
        let margin = spec.safety_margin_watts.unwrap_or(0.0).max(0.0);
        let mut issues = Vec::new();
        let parent = match &spec.parent {
            Some(parent) if !by_name.contains_key(parent) => {
                issues.push(BudgetIssue {
                    reason: "ParentNotFound",
                    message: format!(
                        "parent PowerBudget {parent:?} does not exist; this budget is planned as a root"
                    ),
                });
                None
            }
            other => other.clone(),
        };
        facts.insert(
            name.clone(),
            BudgetFacts {
                generation: budget.metadata.generation,
                parent,
                spec_cap_watts: spec.cap_watts,
                node_overhead_watts: spec.node_overhead_watts,
                planning_cap_watts: (effective.cap_watts - margin).max(0.0),
                effective,
                safety_margin_watts: margin,
                pinned_watts: 0.0,
                nodes: 0,
                gpus: 0,
                conflicts: Vec::new(),
                issues,
            },
        );
    }
    // A budget on a parent cycle is planned as a root: every member still caps its own subtree.
    let mut in_cycle = BTreeSet::new();
    for start in facts.keys() {
        let mut seen = vec![start.clone()];
        let mut current = facts[start].parent.clone();
        while let Some(name) = current {
            if name == *start {
                in_cycle.insert((start.clone(), seen.join(" → ") + " → " + start));
                break;
            }
            if seen.contains(&name) {
                break;
            }
            seen.push(name.clone());
            current = facts.get(&name).and_then(|f| f.parent.clone());
        }
    }
    for (name, cycle) in in_cycle {
        if let Some(f) = facts.get_mut(&name) {
            f.parent = None;
            f.issues.push(BudgetIssue {
                reason: "ParentCycle",
                message: format!(
                    "parents form a cycle ({cycle}); this budget is planned as a root"
                ),
            });
        }
    }
    let chains = facts
        .keys()
        .map(|name| {
            let mut chain = vec![name.clone()];
            let mut current = facts[name].parent.clone();
            while let Some(parent) = current {
                current = facts.get(&parent).and_then(|f| f.parent.clone());
                chain.push(parent);
            }
            (name.clone(), chain)
        })
        .collect();
    (facts, chains)
}

impl Translation {
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
    let (mut budgets, chains) = budget_forest(cluster.budgets, now);
    let next_transition = cluster
        .budgets
        .iter()
        .filter_map(|b| schedule::next_transition(&b.spec, now))
        .min();

    // Which budgets select each node.
    let mut selected: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut invalid_selectors = Vec::new();
    let sorted_nodes: BTreeMap<String, &Node> = cluster
        .nodes
        .iter()
        .map(|n| (n.name_any(), n.as_ref()))
        .collect();
    for budget in cluster.budgets {
        let Some(selector) = &budget.spec.node_selector else {
            continue;
        };
        for (node_name, node) in &sorted_nodes {
            match selector_matches(selector, node.labels()) {
                Ok(true) => selected
                    .entry(node_name.clone())
                    .or_default()
                    .push(budget.name_any()),
                Ok(false) => {}
                Err(message) => {
                    invalid_selectors.push((budget.name_any(), message));
                    break;
                }
            }
        }
    }
    for (budget, message) in invalid_selectors {
        if let Some(f) = budgets.get_mut(&budget) {
            // A selector the operator cannot evaluate selects nothing; its nodes stay unbudgeted.
            f.issues.push(BudgetIssue {
                reason: "InvalidNodeSelector",
                message: format!("nodeSelector cannot be evaluated: {message}"),
            });
        }
        selected
            .values_mut()
            .for_each(|v| v.retain(|b| *b != budget));
    }

    let mut nodes: BTreeMap<String, NodeFacts> = BTreeMap::new();
    for (node_name, mut matched) in selected {
        if matched.is_empty() {
            continue;
        }
        matched.sort();
        let node = sorted_nodes[&node_name];
        let deepest = matched
            .iter()
            .max_by_key(|b| chains.get(*b).map_or(0, Vec::len))
            .cloned()
            .unwrap_or_default();
        let deepest_chain = chains.get(&deepest).cloned().unwrap_or_default();
        let pinned = !matched.iter().all(|b| deepest_chain.contains(b));
        let home = if pinned { matched[0].clone() } else { deepest };

        let model = gpu_models::from_product_label(
            node.labels().get(GPU_PRODUCT_LABEL).map(String::as_str),
        );
        let capacity = node
            .status
            .as_ref()
            .and_then(|s| s.capacity.as_ref())
            .and_then(|c| c.get(GPU_RESOURCE));
        let reported = cluster.inventories.get(&node_name);
        let gpu_total = match (reported, capacity) {
            (Some(inventory), _) => u32::try_from(inventory.gpus.len()).unwrap_or(u32::MAX),
            (None, None) => 0,
            (None, Some(q)) => gpu_count(&q.0).unwrap_or_else(|| {
                if let Some(f) = budgets.get_mut(&home) {
                    f.issues.push(BudgetIssue {
                        reason: "InvalidGpuCapacity",
                        message: format!(
                            "node {node_name} reports {GPU_RESOURCE} capacity {:?}, not a GPU count; \
                             its GPUs are not planned",
                            q.0
                        ),
                    });
                }
                0
            }),
        };
        // Each GPU's range: what its agent reported, else the model table.
        let ranges: Vec<(f64, f64)> = (0..gpu_total as usize)
            .map(|i| {
                reported
                    .and_then(|inventory| inventory.gpus.get(i))
                    .map_or((model.min_watts, model.max_watts), |g| {
                        (g.min_limit_watts, g.max_limit_watts)
                    })
            })
            .collect();
        if gpu_total > 0
            && !model.known
            && reported.is_none()
            && let Some(f) = budgets.get_mut(&home)
        {
            {
                f.issues.push(BudgetIssue {
                    reason: "UnknownGpuModel",
                    message: format!(
                        "node {node_name} has GPUs of unknown model ({GPU_PRODUCT_LABEL}={:?}); each is \
                         counted at a fixed {} W until its agent reports",
                        node.labels().get(GPU_PRODUCT_LABEL).map_or("", String::as_str),
                        model.max_watts
                    ),
                });
            }
        }
        let default_overhead = chains
            .get(&home)
            .into_iter()
            .flatten()
            .find_map(|b| budgets.get(b).and_then(|f| f.node_overhead_watts))
            .unwrap_or(0.0);
        let overhead_watts = match node.annotations().get(OVERHEAD_ANNOTATION) {
            None => default_overhead,
            Some(text) => match parse_finite(text).filter(|w| *w >= 0.0 && *w <= 1e6) {
                Some(w) => w,
                None => {
                    if let Some(f) = budgets.get_mut(&home) {
                        f.issues.push(BudgetIssue {
                            reason: "MalformedAnnotation",
                            message: format!(
                                "node {node_name} annotation {OVERHEAD_ANNOTATION}={text:?} is not a \
                                 number of watts in [0, 1e6]; the budget's nodeOverheadWatts \
                                 ({default_overhead} W) is used"
                            ),
                        });
                    }
                    default_overhead
                }
            },
        };
        if pinned {
            let others = matched.join(", ");
            for b in &matched {
                if let Some(f) = budgets.get_mut(b) {
                    f.conflicts.push(format!(
                        "node {node_name} is selected by unrelated budgets ({others}); it is held at \
                         its GPUs' minimum limits and counted in each"
                    ));
                }
            }
            let floor_watts = overhead_watts + ranges.iter().map(|(min, _)| min).sum::<f64>();
            let affected: BTreeSet<&String> = matched
                .iter()
                .flat_map(|b| chains.get(b).into_iter().flatten())
                .collect();
            for b in affected {
                if let Some(f) = budgets.get_mut(b) {
                    f.pinned_watts += floor_watts;
                }
            }
        }
        let counted: BTreeSet<&String> = if pinned {
            matched
                .iter()
                .flat_map(|b| chains.get(b).into_iter().flatten())
                .collect()
        } else {
            chains.get(&home).into_iter().flatten().collect()
        };
        for b in counted {
            if let Some(f) = budgets.get_mut(b) {
                f.nodes += 1;
                f.gpus += gpu_total;
            }
        }
        let slots = ranges
            .iter()
            .enumerate()
            .map(|(i, &(min_watts, max_watts))| GpuSlot {
                id: format!("{node_name}/gpu{i}"),
                min_watts,
                max_watts,
                pod: None,
            })
            .collect();
        nodes.insert(
            node_name,
            NodeFacts {
                budget: home,
                model,
                overhead_watts,
                slots,
                selected_by: matched,
                pinned,
            },
        );
    }

    // Pods, in a stable order, take the GPU slots of their node and join their gangs.
    let mut gpu_pods: Vec<(&Pod, &str, u32)> = cluster
        .pods
        .iter()
        .filter_map(|p| {
            let node = holds_gpus(p)?;
            let gpus = pod_gpus(p);
            (gpus > 0 && nodes.contains_key(node)).then_some((p.as_ref(), node, gpus))
        })
        .collect();
    // NB: borrowed keys: an owned key per comparison was a tenth of a 1,000-node pass (perf).
    gpu_pods.sort_by(|(a, _, _), (b, _, _)| pod_order_key(a).cmp(&pod_order_key(b)));
    let pod_refs: Vec<String> = gpu_pods
        .iter()
        .map(|(pod, _, _)| {
            let (namespace, name) = pod_order_key(pod);
            format!("{namespace}/{name}")
        })
        .collect();
    let mut gpu_pods_by_node: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for ((_, node_name, _), pod_ref) in gpu_pods.iter().zip(&pod_refs) {
        gpu_pods_by_node
            .entry(node_name)
            .or_default()
            .insert(pod_ref.as_str());
    }
    let mut awaiting_gpu_report = Vec::new();
    let mut gangs: BTreeMap<String, Gang> = BTreeMap::new();
    let mut pods = Vec::new();
    let mut profile_pods: BTreeMap<(String, String), u32> = BTreeMap::new();
    for ((pod, node_name, wanted), pod_ref) in gpu_pods.into_iter().zip(&pod_refs) {
        let namespace = pod.namespace().unwrap_or_default();
        let mut facts = PodFacts {
            namespace: namespace.clone(),
            name: pod.name_any(),
            uid: pod.uid(),
            workload: None,
            profile: None,
            warnings: Vec::new(),
        };
        let Some(node) = nodes.get_mut(node_name) else {
            continue;
        };
        let (chosen, placement) = choose_slots(
            node,
            cluster.inventories.get(node_name),
            pod_ref,
            wanted as usize,
            &gpu_pods_by_node[node_name],
        );
        if chosen.len() < wanted as usize {
            let message = match placement {
                Placement::Reported => format!(
                    "the pod requests {wanted} GPUs but node {node_name}'s agent reports it on {} \
                     GPUs not held by pods before it (a GPU time-sliced between pods is planned with \
                     the first of them by name); its other GPUs are not planned",
                    chosen.len()
                ),
                Placement::NameOrder | Placement::AwaitingReport => format!(
                    "the pod requests {wanted} GPUs but only {} of node {node_name}'s {} are left \
                     after the pods before it; its other GPUs are not planned",
                    chosen.len(),
                    node.slots.len()
                ),
            };
            facts.warnings.push(PodWarning {
                reason: "GpusNotInInventory",
                message,
            });
        }
        if placement == Placement::AwaitingReport {
            awaiting_gpu_report.push(pod_ref.clone());
        }
        let slot_ids: Vec<String> = chosen
            .into_iter()
            .map(|i| {
                let slot = &mut node.slots[i];
                slot.pod = Some(pod_ref.clone());
                slot.id.clone()
            })
            .collect();
        let pinned = node.pinned;
        let model = node.model;

        let intent = match pod_intent(pod) {
            Ok(Some(intent)) => intent,
            Ok(None) => {
                pods.push(facts);
                continue;
            }
            Err(warning) => {
                facts.warnings.push(warning);
                pods.push(facts);
                continue;
            }
        };
        let (source, points) = match resolve_profile(cluster.profiles, pod, &intent, &model) {
            Ok(resolved) => resolved,
            Err(warning) => {
                facts.warnings.push(warning);
                pods.push(facts);
                continue;
            }
        };
        if let ProfileSource::Named(name) | ProfileSource::Selected(name) = &source {
            *profile_pods
                .entry((namespace.clone(), name.clone()))
                .or_default() += 1;
        }
        facts.profile = Some(source.clone());
        if pinned {
            facts.warnings.push(PodWarning {
                reason: "NodeInConflictingBudgets",
                message: format!(
                    "node {node_name} is selected by PowerBudgets that are not ancestor and descendant; \
                     the pod's GPUs are held at their minimum power limit until the selectors are fixed"
                ),
            });
            pods.push(facts);
            continue;
        }
        let workload = format!("{namespace}/{}", intent.job);
        let gang = gangs.entry(workload.clone()).or_insert_with(|| Gang {
            kind: intent.kind,
            weight: intent.weight,
            min_fraction: intent.min_fraction,
            profile: source.clone(),
            points,
            gpus: Vec::new(),
            pods: Vec::new(),
        });
        let agrees = gang.kind == intent.kind
            && gang.weight == intent.weight
            && gang.min_fraction == intent.min_fraction
            && gang.profile == source;
        if !agrees {
            facts.warnings.push(PodWarning {
                reason: "GangMismatch",
                message: format!(
                    "the pod's workload kind, profile, weight or minimum throughput fraction differ from \
                     those of the first pod of job {workload} ({}, {:?}, weight {}, min fraction {:?}); \
                     the job runs at one limit with the first pod's settings",
                    kind_name(gang.kind),
                    gang.profile,
                    gang.weight,
                    gang.min_fraction
                ),
            });
        }
        gang.gpus.extend(slot_ids);
        gang.pods.push(pod_ref.clone());
        facts.workload = Some(workload);
        pods.push(facts);
    }

    let mut workload_pods = BTreeMap::new();
    let workloads = gangs
        .into_iter()
        .filter(|(_, g)| !g.gpus.is_empty())
        .map(|(name, gang)| {
            workload_pods.insert(name.clone(), gang.pods);
            model::Workload {
                name,
                kind: gang.kind,
                weight: gang.weight,
                gpus: gang.gpus,
                min_throughput_fraction: gang.min_fraction,
                profile: gang.points,
            }
        })
        .collect();
    for pod in &mut pods {
        if pod
            .workload
            .as_ref()
            .is_some_and(|w| !workload_pods.contains_key(w))
        {
            pod.workload = None;
        }
    }

    let problem = model::Problem {
        budgets: budgets
            .iter()
            .map(|(name, f)| model::Budget {
                name: name.clone(),
                cap_watts: (f.planning_cap_watts - f.pinned_watts).max(0.0),
                parent: f.parent.clone(),
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
        next_transition,
        awaiting_gpu_report,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::{Value, json};

    pub(crate) fn at(text: &str) -> Timestamp {
        text.parse().expect("timestamp")
    }

    pub(crate) fn budget(name: &str, spec: Value) -> Arc<PowerBudget> {
        Arc::new(
            serde_json::from_value(
                json!({"apiVersion": "kilowatt.dev/v1alpha1", "kind": "PowerBudget",
                "metadata": {"name": name, "generation": 1}, "spec": spec}),
            )
            .expect("budget"),
        )
    }

    pub(crate) fn node(name: &str, labels: Value, gpus: &str) -> Arc<Node> {
        let mut labels = labels;
        labels[GPU_PRODUCT_LABEL] = json!("NVIDIA-H100-80GB-HBM3");
        Arc::new(
            serde_json::from_value(json!({"metadata": {"name": name, "labels": labels},
                "status": {"capacity": {GPU_RESOURCE: gpus}}}))
            .expect("node"),
        )
    }

    pub(crate) fn pod(name: &str, node: &str, gpus: u32, annotations: Value) -> Arc<Pod> {
        Arc::new(
            serde_json::from_value(
                json!({"metadata": {"name": name, "namespace": "ml", "uid": format!("uid-{name}"),
                    "annotations": annotations, "labels": {"app": name}},
                "spec": {"nodeName": node, "containers": [{"name": "c",
                    "resources": {"limits": {GPU_RESOURCE: gpus.to_string()}}}]},
                "status": {"phase": "Running"}}),
            )
            .expect("pod"),
        )
    }

    fn profile(name: &str, selector: Option<Value>) -> Arc<WorkloadProfile> {
        let mut spec = json!({"gpuModel": "H100-SXM", "throughputUnit": "tokens/s", "points": [
            {"powerWatts": 200.0, "throughput": 1.0}, {"powerWatts": 700.0, "throughput": 2.0}]});
        if let Some(selector) = selector {
            spec["selector"] = selector;
        }
        Arc::new(
            serde_json::from_value(
                json!({"apiVersion": "kilowatt.dev/v1alpha1", "kind": "WorkloadProfile",
                "metadata": {"name": name, "namespace": "ml"}, "spec": spec}),
            )
            .expect("profile"),
        )
    }

    /// Two 8-GPU H100 nodes selected by every budget with a selector: a training pod on one, an
    /// inference pod on the other, both on default profiles.
    pub(crate) fn two_node_fleet(budgets: &[Arc<PowerBudget>]) -> Translation {
        let nodes = [node("n1", json!({}), "8"), node("n2", json!({}), "8")];
        let pods = [
            pod("t0", "n1", 8, json!({WORKLOAD_ANNOTATION: "training"})),
            pod("s0", "n2", 8, json!({WORKLOAD_ANNOTATION: "inference"})),
        ];
        run(budgets, &[], &nodes, &pods)
    }

    fn run(
        budgets: &[Arc<PowerBudget>],
        profiles: &[Arc<WorkloadProfile>],
        nodes: &[Arc<Node>],
        pods: &[Arc<Pod>],
    ) -> Translation {
        translate(
            Cluster {
                budgets,
                profiles,
                nodes,
                pods,
                inventories: &BTreeMap::new(),
            },
            at("2026-11-28T12:00:00Z"),
        )
    }

    fn pod_facts<'a>(t: &'a Translation, name: &str) -> &'a PodFacts {
        t.pods.iter().find(|p| p.name == name).expect("pod facts")
    }

    #[test]
    fn a_gang_shares_one_workload_and_unannotated_pods_stay_out_of_the_problem() {
        let t = run(
            &[budget(
                "rack",
                json!({"capWatts": 20000.0, "nodeSelector": {}}),
            )],
            &[],
            &[node("n1", json!({}), "8"), node("n2", json!({}), "8")],
            &[
                pod(
                    "t0",
                    "n1",
                    8,
                    json!({WORKLOAD_ANNOTATION: "training", JOB_ANNOTATION: "llm"}),
                ),
                pod(
                    "t1",
                    "n2",
                    4,
                    json!({WORKLOAD_ANNOTATION: "training", JOB_ANNOTATION: "llm"}),
                ),
                pod("plain", "n2", 2, json!({})),
            ],
        );
        assert_eq!(t.problem.workloads.len(), 1);
        let gang = &t.problem.workloads[0];
        assert_eq!(gang.name, "ml/llm");
        assert_eq!(gang.gpus.len(), 12);
        assert_eq!(t.workload_pods["ml/llm"], ["ml/t0", "ml/t1"]);
        assert_eq!(pod_facts(&t, "plain").workload, None);
        assert!(pod_facts(&t, "plain").warnings.is_empty());
        let holders: Vec<Option<&str>> = t.nodes["n2"]
            .slots
            .iter()
            .map(|s| s.pod.as_deref())
            .collect();
        assert_eq!(
            holders[..7],
            [
                Some("ml/plain"),
                Some("ml/plain"),
                Some("ml/t1"),
                Some("ml/t1"),
                Some("ml/t1"),
                Some("ml/t1"),
                None
            ],
            "slots are handed out in pod-name order"
        );
        assert_eq!(
            pod_facts(&t, "t0").profile,
            Some(ProfileSource::Default("default-training-H100-SXM".into()))
        );
    }

    #[test]
    fn each_malformed_annotation_leaves_its_pod_unmanaged_with_a_warning_naming_it() {
        let cases = [
            (WORKLOAD_ANNOTATION, json!({WORKLOAD_ANNOTATION: "batch"})),
            (
                WEIGHT_ANNOTATION,
                json!({WORKLOAD_ANNOTATION: "training", WEIGHT_ANNOTATION: "-1"}),
            ),
            (
                WEIGHT_ANNOTATION,
                json!({WORKLOAD_ANNOTATION: "training", WEIGHT_ANNOTATION: "NaN"}),
            ),
            (
                MIN_FRACTION_ANNOTATION,
                json!({WORKLOAD_ANNOTATION: "inference", MIN_FRACTION_ANNOTATION: "1.5"}),
            ),
            (
                JOB_ANNOTATION,
                json!({WORKLOAD_ANNOTATION: "training", JOB_ANNOTATION: " "}),
            ),
            (
                PROFILE_ANNOTATION,
                json!({WORKLOAD_ANNOTATION: "training", PROFILE_ANNOTATION: "absent"}),
            ),
        ];
        for (annotation, annotations) in cases {
            let t = run(
                &[budget(
                    "rack",
                    json!({"capWatts": 9000.0, "nodeSelector": {}}),
                )],
                &[],
                &[node("n1", json!({}), "8")],
                &[pod("p", "n1", 8, annotations.clone())],
            );
            let facts = pod_facts(&t, "p");
            assert_eq!(facts.workload, None, "{annotations}");
            assert!(t.problem.workloads.is_empty());
            let warning = facts.warnings.first().expect("a warning");
            assert!(
                warning.message.contains(annotation),
                "{annotation}: {}",
                warning.message
            );
        }
    }

    #[test]
    fn a_named_profile_beats_a_selector_which_beats_the_default() {
        let profiles = [
            profile("by-name", None),
            profile("by-selector", Some(json!({"matchLabels": {"app": "sel"}}))),
        ];
        let t = run(
            &[budget(
                "rack",
                json!({"capWatts": 20000.0, "nodeSelector": {}}),
            )],
            &profiles,
            &[node("n1", json!({}), "8")],
            &[
                pod(
                    "named",
                    "n1",
                    2,
                    json!({WORKLOAD_ANNOTATION: "inference", PROFILE_ANNOTATION: "by-name"}),
                ),
                pod("sel", "n1", 2, json!({WORKLOAD_ANNOTATION: "inference"})),
                pod("other", "n1", 2, json!({WORKLOAD_ANNOTATION: "inference"})),
            ],
        );
        assert_eq!(
            pod_facts(&t, "named").profile,
            Some(ProfileSource::Named("by-name".into()))
        );
        assert_eq!(
            pod_facts(&t, "sel").profile,
            Some(ProfileSource::Selected("by-selector".into()))
        );
        assert_eq!(
            pod_facts(&t, "other").profile,
            Some(ProfileSource::Default("default-inference-H100-SXM".into()))
        );
        assert_eq!(t.profile_pods[&("ml".to_owned(), "by-name".to_owned())], 1);
        assert_eq!(
            t.profile_pods[&("ml".to_owned(), "by-selector".to_owned())],
            1
        );
    }

    #[test]
    fn a_node_goes_to_its_innermost_budget_and_counts_up_the_chain() {
        let t = run(
            &[
                budget(
                    "facility",
                    json!({"capWatts": 50000.0, "nodeSelector": {}, "nodeOverheadWatts": 800.0}),
                ),
                budget(
                    "rack",
                    json!({"capWatts": 9000.0, "parent": "facility",
                    "nodeSelector": {"matchExpressions": [{"key": "rack", "operator": "In", "values": ["a"]}]}}),
                ),
            ],
            &[],
            &[
                node("n1", json!({"rack": "a"}), "8"),
                node("n2", json!({"rack": "b"}), "8"),
            ],
            &[],
        );
        assert_eq!(t.nodes["n1"].budget, "rack");
        assert_eq!(t.nodes["n2"].budget, "facility");
        assert_eq!(
            t.nodes["n1"].overhead_watts, 800.0,
            "inherited from the nearest budget setting it"
        );
        assert!(!t.nodes["n1"].pinned);
        assert_eq!(
            (t.budgets["facility"].nodes, t.budgets["facility"].gpus),
            (2, 16)
        );
        assert_eq!((t.budgets["rack"].nodes, t.budgets["rack"].gpus), (1, 8));
        assert!(t.budgets.values().all(|b| b.conflicts.is_empty()));
    }

    #[test]
    fn a_node_in_two_unrelated_budgets_is_pinned_at_its_floor_and_counted_in_both() {
        let t = run(
            &[
                budget(
                    "a",
                    json!({"capWatts": 9000.0, "nodeSelector": {"matchLabels": {"x": "1"}}}),
                ),
                budget(
                    "b",
                    json!({"capWatts": 9000.0, "nodeSelector": {"matchLabels": {"y": "1"}}}),
                ),
            ],
            &[],
            &[node("n1", json!({"x": "1", "y": "1"}), "4")],
            &[pod("p", "n1", 4, json!({WORKLOAD_ANNOTATION: "training"}))],
        );
        assert!(t.nodes["n1"].pinned);
        assert!(
            t.problem.nodes.is_empty(),
            "a pinned node is outside the optimisation"
        );
        for name in ["a", "b"] {
            assert_eq!(t.budgets[name].pinned_watts, 800.0);
            assert_eq!(t.budgets[name].conflicts.len(), 1);
            let cap = t
                .problem
                .budgets
                .iter()
                .find(|b| b.name == name)
                .expect("budget")
                .cap_watts;
            assert_eq!(cap, 8200.0, "the pinned floor is taken off the cap");
        }
        assert_eq!(
            pod_facts(&t, "p").warnings[0].reason,
            "NodeInConflictingBudgets"
        );
    }

    #[test]
    fn missing_parents_and_cycles_become_roots_with_an_issue() {
        let t = run(
            &[
                budget("orphan", json!({"capWatts": 1.0, "parent": "nowhere"})),
                budget("x", json!({"capWatts": 1.0, "parent": "y"})),
                budget("y", json!({"capWatts": 1.0, "parent": "x"})),
                budget("child", json!({"capWatts": 1.0, "parent": "x"})),
            ],
            &[],
            &[],
            &[],
        );
        assert_eq!(t.budgets["orphan"].parent, None);
        assert_eq!(t.budgets["orphan"].issues[0].reason, "ParentNotFound");
        for name in ["x", "y"] {
            assert_eq!(t.budgets[name].parent, None);
            assert_eq!(t.budgets[name].issues[0].reason, "ParentCycle");
        }
        assert_eq!(t.chains["child"], ["child", "x"]);
        assert!(t.budgets["child"].issues.is_empty());
    }

    #[test]
    fn margin_and_open_windows_lower_the_planning_cap() {
        let t = run(
            &[budget(
                "rack",
                json!({"capWatts": 10000.0, "safetyMarginWatts": 500.0, "schedule": [
                {"name": "noon", "capWatts": 8000.0, "daily": {"start": "11:00", "end": "13:00"}},
                {"name": "night", "capWatts": 6000.0, "daily": {"start": "22:00", "end": "06:00"}}]}),
            )],
            &[],
            &[],
            &[],
        );
        let facts = &t.budgets["rack"];
        assert_eq!(facts.effective.cap_watts, 8000.0);
        assert_eq!(facts.planning_cap_watts, 7500.0);
        assert_eq!(t.problem.budgets[0].cap_watts, 7500.0);
        assert_eq!(t.next_transition, Some(at("2026-11-28T13:00:00Z")));
    }

    #[test]
    fn node_overrides_unknown_models_and_overfull_nodes_are_reported() {
        let mut odd = (*node("n1", json!({}), "2")).clone();
        odd.metadata
            .labels
            .get_or_insert_default()
            .insert(GPU_PRODUCT_LABEL.into(), "Tesla-T4".into());
        odd.metadata.annotations =
            Some([(OVERHEAD_ANNOTATION.to_owned(), "lots".to_owned())].into());
        let mut tuned = (*node("n2", json!({}), "8")).clone();
        tuned.metadata.annotations =
            Some([(OVERHEAD_ANNOTATION.to_owned(), "1500".to_owned())].into());
        let t = run(
            &[budget(
                "rack",
                json!({"capWatts": 90000.0, "nodeSelector": {}, "nodeOverheadWatts": 700.0}),
            )],
            &[],
            &[Arc::new(odd), Arc::new(tuned)],
            &[
                pod("big", "n1", 2, json!({WORKLOAD_ANNOTATION: "training"})),
                pod("late", "n1", 1, json!({WORKLOAD_ANNOTATION: "training"})),
            ],
        );
        assert_eq!(t.nodes["n2"].overhead_watts, 1500.0);
        assert_eq!(
            t.nodes["n1"].overhead_watts, 700.0,
            "a malformed override falls back"
        );
        assert_eq!(t.nodes["n1"].slots[0].min_watts, 1000.0);
        let reasons: Vec<&str> = t.budgets["rack"].issues.iter().map(|i| i.reason).collect();
        assert!(
            reasons.contains(&"UnknownGpuModel") && reasons.contains(&"MalformedAnnotation"),
            "{reasons:?}"
        );
        assert_eq!(
            pod_facts(&t, "late").warnings[0].reason,
            "GpusNotInInventory"
        );
        assert_eq!(
            pod_facts(&t, "late").workload,
            None,
            "a pod with no GPU slot left plans nothing"
        );
    }

    #[test]
    fn an_agents_inventory_replaces_capacity_and_the_model_table() {
        let mut unknown = (*node("n1", json!({}), "8")).clone();
        unknown
            .metadata
            .labels
            .get_or_insert_default()
            .insert(GPU_PRODUCT_LABEL.into(), "Tesla-T4".into());
        let inventory = Inventory {
            backend: "nvml".into(),
            gpus: (0..2)
                .map(|index| kilowatt_crds::plan::InventoryGpu {
                    index,
                    uuid: format!("GPU-{index}"),
                    model: "Tesla T4".into(),
                    min_limit_watts: 60.0,
                    max_limit_watts: 70.0,
                    pods: Vec::new(),
                })
                .collect(),
            pods_reported: false,
        };
        let budgets = [budget(
            "rack",
            json!({"capWatts": 9000.0, "nodeSelector": {}}),
        )];
        let t = translate(
            Cluster {
                budgets: &budgets,
                profiles: &[],
                nodes: &[Arc::new(unknown)],
                pods: &[],
                inventories: &BTreeMap::from([("n1".to_owned(), inventory)]),
            },
            at("2026-11-28T12:00:00Z"),
        );
        let slots = &t.nodes["n1"].slots;
        assert_eq!(slots.len(), 2, "the agent's GPU count wins over capacity");
        assert_eq!((slots[1].min_watts, slots[1].max_watts), (60.0, 70.0));
        assert!(
            t.budgets["rack"].issues.is_empty(),
            "a reported GPU is not unknown"
        );
    }

    /// An H100 inventory with one GPU per `|`-separated entry of `holders`, each held by the pods (of
    /// namespace `ml`) its entry lists, separated by `+`: `"b|b||a+c"` is four GPUs, the third free.
    fn reported_inventory(holders: &str) -> Inventory {
        Inventory {
            backend: "nvml".into(),
            gpus: holders
                .split('|')
                .zip(0..)
                .map(|(pods, index)| kilowatt_crds::plan::InventoryGpu {
                    index,
                    uuid: format!("GPU-{index}"),
                    model: "NVIDIA H100 80GB HBM3".into(),
                    min_limit_watts: 200.0,
                    max_limit_watts: 700.0,
                    pods: pods
                        .split('+')
                        .filter(|p| !p.is_empty())
                        .map(|p| format!("ml/{p}"))
                        .collect(),
                })
                .collect(),
            pods_reported: true,
        }
    }

    fn slot_pods(t: &Translation, node: &str) -> Vec<Option<String>> {
        t.nodes[node].slots.iter().map(|s| s.pod.clone()).collect()
    }

    #[test]
    fn pods_take_the_gpus_their_agent_reports_and_unlisted_pods_only_unheld_ones() {
        let budgets = [budget(
            "rack",
            json!({"capWatts": 9000.0, "nodeSelector": {}}),
        )];
        let training = json!({WORKLOAD_ANNOTATION: "training"});
        let pods = [
            pod("a", "n1", 2, training.clone()),
            pod("b", "n1", 2, json!({WORKLOAD_ANNOTATION: "inference"})),
            pod("c", "n1", 1, training.clone()),
        ];
        let nodes = [node("n1", json!({}), "6")];
        let translate_with = |inventory: Inventory| {
            translate(
                Cluster {
                    budgets: &budgets,
                    profiles: &[],
                    nodes: &nodes,
                    pods: &pods,
                    inventories: &BTreeMap::from([("n1".to_owned(), inventory)]),
                },
                at("2026-11-28T12:00:00Z"),
            )
        };
        let held = |p: &str| Some(format!("ml/{p}"));

        // The kubelet gave `b` (started first) GPUs 0 and 1, `a` GPUs 3 and 4; `c` is not listed yet,
        // and GPU 2 still shows `gone`, a pod that has left.
        let t = translate_with(reported_inventory("b|b|gone|a|a|"));
        assert_eq!(
            slot_pods(&t, "n1"),
            [held("b"), held("b"), None, held("a"), held("a"), held("c")],
            "a and b on their reported GPUs; c on the GPU nobody holds before the stale one"
        );
        assert_eq!(t.awaiting_gpu_report, ["ml/c"]);
        let workload_gpus = |name: &str| -> Vec<String> {
            t.problem
                .workloads
                .iter()
                .find(|w| w.name == name)
                .map(|w| w.gpus.clone())
                .unwrap_or_default()
        };
        assert_eq!(workload_gpus("ml/a"), ["n1/gpu3", "n1/gpu4"]);
        assert_eq!(workload_gpus("ml/b"), ["n1/gpu0", "n1/gpu1"]);

        // With no unheld GPU left, an unlisted pod takes the one of a pod that has left.
        let t = translate_with(reported_inventory("b|b|gone|a|a|a"));
        assert_eq!(slot_pods(&t, "n1")[2], held("c"));
        assert_eq!(
            slot_pods(&t, "n1")[5],
            None,
            "a takes only the two it asks for"
        );

        // A GPU time-sliced between a and c goes to a, the first by name; c is told.
        let t = translate_with(reported_inventory("b|b||a|a+c|"));
        assert_eq!(slot_pods(&t, "n1")[4], held("a"));
        assert!(t.awaiting_gpu_report.is_empty(), "c is listed");
        assert_eq!(
            pod_facts(&t, "c").warnings[0].reason,
            "GpusNotInInventory",
            "{:?}",
            pod_facts(&t, "c").warnings
        );
        assert!(pod_facts(&t, "c").workload.is_none(), "c plans nothing");

        // Without a report the pods take the slots in name order, as before.
        let mut unreported = reported_inventory("|||||");
        unreported.pods_reported = false;
        let t = translate_with(unreported);
        assert_eq!(
            slot_pods(&t, "n1"),
            [held("a"), held("a"), held("b"), held("b"), held("c"), None]
        );
        assert!(t.awaiting_gpu_report.is_empty());
    }

    #[test]
    fn finished_and_unbound_pods_hold_no_gpus() {
        let mut done = (*pod("done", "n1", 8, json!({WORKLOAD_ANNOTATION: "training"}))).clone();
        done.status.get_or_insert_default().phase = Some("Succeeded".into());
        let mut pending =
            (*pod("pending", "n1", 8, json!({WORKLOAD_ANNOTATION: "training"}))).clone();
        pending.spec.get_or_insert_default().node_name = None;
        let t = run(
            &[budget(
                "rack",
                json!({"capWatts": 9000.0, "nodeSelector": {}}),
            )],
            &[],
            &[node("n1", json!({}), "8")],
            &[Arc::new(done), Arc::new(pending)],
        );
        assert!(t.pods.is_empty());
        assert!(t.nodes["n1"].slots.iter().all(|s| s.pod.is_none()));
    }

    #[test]
    fn an_invalid_selector_operator_selects_nothing_and_says_why() {
        let t = run(
            &[budget(
                "rack",
                json!({"capWatts": 9000.0,
                "nodeSelector": {"matchExpressions": [{"key": "rack", "operator": "Near"}]}}),
            )],
            &[],
            &[node("n1", json!({"rack": "a"}), "8")],
            &[],
        );
        assert!(t.nodes.is_empty());
        assert_eq!(t.budgets["rack"].issues[0].reason, "InvalidNodeSelector");
        assert!(t.budgets["rack"].issues[0].message.contains("Near"));
    }
}
