//! The plan as the operator publishes it: the whole-plan document stored in etcd and served at
//! `GET /api/v1/plan`, with the per-node documents agents read (wire types in `kilowatt_crds::plan`,
//! layout in docs/plan-protocol.md). Pure: built from a translation and a solver plan.

use std::collections::BTreeMap;

use kilowatt_solver::model::WorkloadKind;
use kilowatt_solver::plan::BudgetEfficiency;
use kilowatt_solver::{Method, Plan, Status};
use serde::{Deserialize, Serialize};

use crate::plan::translate::{ProfileSource, Translation};

pub use kilowatt_crds::EfficiencyStatus;
pub use kilowatt_crds::plan::{GpuTarget, KeyLayout, NodePlan};

/// A budget's numbers in a plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BudgetSummary {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    pub effective_cap_watts: f64,
    /// Effective cap minus safety margin.
    pub planning_cap_watts: f64,
    /// Planned limits plus overheads of everything under the budget.
    pub allocated_watts: f64,
    pub headroom_watts: f64,
    pub nodes: u32,
    pub gpus: u32,
    /// Weighted throughput of the workloads under it over their best; 1 without workloads.
    pub normalized_throughput: f64,
    /// Names of open schedule windows.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub open_windows: Vec<String>,
    /// For a budget with `efficiency.maxSlowdown`: the watts the policy saved and the throughput it
    /// cost against the max-throughput plan of the same solve.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub efficiency: Option<EfficiencyStatus>,
}

/// A workload's setting in a plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadSummary {
    /// `namespace/job`.
    pub name: String,
    pub kind: WorkloadKind,
    pub pods: Vec<String>,
    pub gpus: u32,
    pub power_limit_watts: f64,
    #[serde(
        rename = "smClockMHz",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub sm_clock_mhz: Option<u32>,
    pub normalized_throughput: f64,
    /// Profile name, with `default-` profiles marked as such.
    pub profile: String,
}

/// The whole plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PublishedPlan {
    /// Increases by one with every publish that changes anything below.
    pub revision: u64,
    /// RFC 3339 time of the solve that produced it.
    pub solved_at: String,
    /// `optimal`, `feasible` or `infeasible` (the safe plan: every GPU at its minimum).
    pub status: String,
    pub method: String,
    pub objective: f64,
    pub upper_bound: f64,
    pub gap: f64,
    /// Budgets whose floors exceed their cap, when infeasible.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub infeasible_budgets: Vec<String>,
    pub budgets: Vec<BudgetSummary>,
    pub workloads: Vec<WorkloadSummary>,
    pub nodes: BTreeMap<String, NodePlan>,
}

impl PublishedPlan {
    /// Whether two plans set the same targets and report the same numbers (revision and solve time
    /// aside): publishing `self` over `other` would change nothing.
    pub fn same_content(&self, other: &PublishedPlan) -> bool {
        // NB: field by field rather than comparing stripped clones (a copy of two 1,000-node plans per
        // pass); the destructuring fails to compile when a field is added and not considered here.
        let PublishedPlan {
            revision: _,
            solved_at: _,
            status,
            method,
            objective,
            upper_bound,
            gap,
            infeasible_budgets,
            budgets,
            workloads,
            nodes,
        } = self;
        let same_node = |a: &NodePlan, b: &NodePlan| {
            let NodePlan {
                revision: _,
                budget,
                overhead_watts,
                gpus,
                unacknowledged: _,
                written_at: _,
                work_counters,
            } = a;
            *budget == b.budget
                && *overhead_watts == b.overhead_watts
                && *gpus == b.gpus
                && *work_counters == b.work_counters
        };
        *status == other.status
            && *method == other.method
            && *objective == other.objective
            && *upper_bound == other.upper_bound
            && *gap == other.gap
            && *infeasible_budgets == other.infeasible_budgets
            && *budgets == other.budgets
            && *workloads == other.workloads
            && nodes.len() == other.nodes.len()
            && nodes
                .iter()
                .zip(&other.nodes)
                .all(|((na, a), (nb, b))| na == nb && same_node(a, b))
    }
}

/// A plan with the given parts and fixed solver figures, for tests of what consumes plans.
#[cfg(test)]
pub(crate) fn test_plan(
    revision: u64,
    budgets: Vec<BudgetSummary>,
    workloads: Vec<WorkloadSummary>,
    nodes: BTreeMap<String, NodePlan>,
) -> PublishedPlan {
    PublishedPlan {
        revision,
        solved_at: "2026-12-01T12:00:00Z".into(),
        status: "optimal".into(),
        method: "greedy".into(),
        objective: 1.0,
        upper_bound: 1.0,
        gap: 0.0,
        infeasible_budgets: Vec::new(),
        budgets,
        workloads,
        nodes,
    }
}

fn status_name(status: Status) -> &'static str {
    match status {
        Status::Optimal => "optimal",
        Status::Feasible => "feasible",
        Status::Infeasible => "infeasible",
    }
}

fn method_name(method: Method) -> &'static str {
    match method {
        Method::Greedy => "greedy",
        Method::Milp => "milp",
        Method::Uniform => "uniform",
        Method::Proportional => "proportional",
        Method::Safe => "safe",
    }
}

/// A policy budget's saving and cost, from the solver's report: the cost is the share of the
/// reference's throughput under the budget given up (0 when the reference has none).
pub fn efficiency_status(budget: &BudgetEfficiency) -> EfficiencyStatus {
    let throughput_cost = if budget.reference_throughput > 0.0 {
        (1.0 - budget.throughput / budget.reference_throughput).max(0.0)
    } else {
        0.0
    };
    EfficiencyStatus {
        max_slowdown: budget.max_slowdown,
        saved_watts: budget.saved_watts,
        throughput_cost,
    }
}

/// Builds the plan document from a translation and the solver's answer. Node revisions are carried
/// over from `previous` where a node's targets did not change.
pub fn build(
    translation: &Translation,
    plan: &Plan,
    revision: u64,
    solved_at: String,
    previous: Option<&PublishedPlan>,
) -> PublishedPlan {
    let gpu_settings: BTreeMap<&str, (f64, Option<u32>)> = plan
        .gpus
        .iter()
        .map(|g| (g.id.as_str(), (g.power_limit_watts, g.sm_clock_mhz)))
        .collect();
    let nodes: BTreeMap<String, NodePlan> = translation
        .nodes
        .iter()
        .map(|(name, facts)| {
            let gpus = facts
                .slots
                .iter()
                .enumerate()
                .map(|(index, slot)| {
                    // Pinned nodes are not in the problem: their GPUs sit at the minimum.
                    let (limit, clock) = gpu_settings
                        .get(slot.id.as_str())
                        .copied()
                        .unwrap_or((slot.min_watts, None));
                    GpuTarget {
                        id: slot.id.clone(),
                        index: u32::try_from(index).unwrap_or(u32::MAX),
                        power_limit_watts: limit,
                        sm_clock_mhz: clock,
                        floor_watts: slot.min_watts,
                        pod: slot.pod.clone(),
                    }
                })
                .collect();
            let mut node_plan = NodePlan {
                revision,
                budget: facts.budget.clone(),
                overhead_watts: facts.overhead_watts,
                gpus,
                unacknowledged: Vec::new(),
                written_at: None,
                work_counters: facts.work_counters.clone(),
            };
            if let Some(old) = previous.and_then(|p| p.nodes.get(name)) {
                let unchanged = NodePlan {
                    revision: old.revision,
                    unacknowledged: old.unacknowledged.clone(),
                    written_at: old.written_at.clone(),
                    ..node_plan.clone()
                };
                if unchanged == *old {
                    node_plan.revision = old.revision;
                }
            }
            (name.clone(), node_plan)
        })
        .collect();

    // Per budget: allocated watts and weighted throughput of what is under it.
    let mut allocated: BTreeMap<&str, f64> = BTreeMap::new();
    for (name, node) in &nodes {
        let Some(facts) = translation.nodes.get(name) else {
            continue;
        };
        let watts =
            node.overhead_watts + node.gpus.iter().map(|g| g.power_limit_watts).sum::<f64>();
        let chains = &translation.chains;
        let mut counted: Vec<&str> = Vec::new();
        // A conflicting node counts in every chain that selects it, once per budget.
        let homes: &[String] = if facts.pinned {
            &facts.selected_by
        } else {
            std::slice::from_ref(&facts.budget)
        };
        for home in homes {
            for budget in chains.get(home).into_iter().flatten() {
                if !counted.contains(&budget.as_str()) {
                    counted.push(budget);
                    *allocated.entry(budget).or_default() += watts;
                }
            }
        }
    }
    let workload_settings: BTreeMap<&str, _> = plan
        .workloads
        .iter()
        .map(|w| (w.name.as_str(), w))
        .collect();
    // Every pod of a gang runs on its first pod's profile.
    let mut profiles: BTreeMap<&str, &ProfileSource> = BTreeMap::new();
    for pod in &translation.pods {
        if let (Some(workload), Some(source)) = (&pod.workload, &pod.profile) {
            profiles.entry(workload.as_str()).or_insert(source);
        }
    }
    let mut throughput: BTreeMap<&str, (f64, f64)> = BTreeMap::new();
    let mut workloads = Vec::new();
    for workload in &translation.problem.workloads {
        let Some(setting) = workload_settings.get(workload.name.as_str()) else {
            continue;
        };
        for gpu in &workload.gpus {
            let node = gpu.split_once('/').map_or("", |(n, _)| n);
            let Some(home) = translation.nodes.get(node).map(|n| &n.budget) else {
                continue;
            };
            for budget in translation.chains.get(home).into_iter().flatten() {
                let entry = throughput.entry(budget).or_default();
                entry.0 += workload.weight * setting.normalized_throughput;
                entry.1 += workload.weight;
            }
        }
        let pods = translation
            .workload_pods
            .get(&workload.name)
            .cloned()
            .unwrap_or_default();
        let profile = profiles
            .get(workload.name.as_str())
            .map_or_else(String::new, |source| match source {
                ProfileSource::Named(n)
                | ProfileSource::Selected(n)
                | ProfileSource::ForJob(n)
                | ProfileSource::Default(n) => n.clone(),
            });
        workloads.push(WorkloadSummary {
            name: workload.name.clone(),
            kind: workload.kind,
            pods,
            gpus: u32::try_from(workload.gpus.len()).unwrap_or(u32::MAX),
            power_limit_watts: setting.power_limit_watts,
            sm_clock_mhz: setting.sm_clock_mhz,
            normalized_throughput: setting.normalized_throughput,
            profile,
        });
    }
    let efficiency: BTreeMap<&str, EfficiencyStatus> = plan
        .efficiency
        .iter()
        .flat_map(|e| &e.budgets)
        .map(|b| (b.name.as_str(), efficiency_status(b)))
        .collect();
    let budgets = translation
        .budgets
        .iter()
        .map(|(name, facts)| {
            let allocated_watts = allocated.get(name.as_str()).copied().unwrap_or(0.0);
            let (weighted, weights) = throughput.get(name.as_str()).copied().unwrap_or((0.0, 0.0));
            BudgetSummary {
                name: name.clone(),
                parent: facts.parent.clone(),
                effective_cap_watts: facts.effective.cap_watts,
                planning_cap_watts: facts.planning_cap_watts,
                allocated_watts,
                headroom_watts: facts.effective.cap_watts - allocated_watts,
                nodes: facts.nodes,
                gpus: facts.gpus,
                normalized_throughput: if weights > 0.0 {
                    weighted / weights
                } else {
                    1.0
                },
                open_windows: facts.effective.open_windows.clone(),
                efficiency: efficiency.get(name.as_str()).cloned(),
            }
        })
        .collect();
    PublishedPlan {
        revision,
        solved_at,
        status: status_name(plan.status).to_owned(),
        method: method_name(plan.method).to_owned(),
        objective: plan.objective,
        upper_bound: plan.upper_bound,
        gap: plan.gap(),
        infeasible_budgets: plan.shortfalls.iter().map(|s| s.budget.clone()).collect(),
        budgets,
        workloads,
        nodes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::translate::tests::{budget, two_node_fleet};
    use kilowatt_solver::{SolveOptions, solve};
    use serde_json::json;

    fn fleet(rack_cap: f64) -> Translation {
        let budgets = [
            budget(
                "facility",
                json!({"capWatts": 30000.0, "nodeOverheadWatts": 1000.0}),
            ),
            budget(
                "rack",
                json!({"capWatts": rack_cap, "parent": "facility", "nodeSelector": {}}),
            ),
        ];
        two_node_fleet(&budgets)
    }

    fn published(
        translation: &Translation,
        revision: u64,
        previous: Option<&PublishedPlan>,
    ) -> PublishedPlan {
        let plan = solve(&translation.problem, &SolveOptions::default()).expect("solves");
        build(
            translation,
            &plan,
            revision,
            "2026-11-28T12:00:00Z".into(),
            previous,
        )
    }

    #[test]
    fn every_budget_carries_its_nodes_limits_and_overheads_within_its_cap() {
        let translation = fleet(9000.0);
        let plan = published(&translation, 1, None);
        let rack = plan
            .budgets
            .iter()
            .find(|b| b.name == "rack")
            .expect("rack");
        let node_watts: f64 = plan
            .nodes
            .values()
            .map(|n| n.overhead_watts + n.gpus.iter().map(|g| g.power_limit_watts).sum::<f64>())
            .sum();
        assert!((rack.allocated_watts - node_watts).abs() < 1e-6);
        assert!(rack.allocated_watts <= 9000.0 + 1e-6);
        assert!(
            rack.allocated_watts > 8900.0,
            "the binding cap is used: {}",
            rack.allocated_watts
        );
        assert!(rack.normalized_throughput > 0.0 && rack.normalized_throughput < 1.0);
        assert_eq!(plan.workloads.len(), 2);
        assert!(plan.nodes["n1"].gpus.iter().all(|g| g.floor_watts == 200.0));
    }

    #[test]
    fn a_policy_budget_carries_its_saving_and_cost_and_the_others_none() {
        let budgets = [
            budget(
                "facility",
                json!({"capWatts": 30000.0, "efficiency": {"maxSlowdown": 0.05}}),
            ),
            budget(
                "rack",
                json!({"capWatts": 20000.0, "parent": "facility", "nodeSelector": {}}),
            ),
        ];
        let translation = two_node_fleet(&budgets);
        let plan = published(&translation, 1, None);
        let summary = |name: &str| {
            plan.budgets
                .iter()
                .find(|b| b.name == name)
                .expect("budget")
                .clone()
        };
        let efficiency = summary("facility")
            .efficiency
            .expect("the policy's figures");
        assert_eq!(efficiency.max_slowdown, 0.05);
        assert!(efficiency.saved_watts > 100.0, "{efficiency:?}");
        assert!(
            efficiency.throughput_cost > 0.0 && efficiency.throughput_cost <= 0.05 + 1e-9,
            "{efficiency:?}"
        );
        assert_eq!(summary("rack").efficiency, None);
        let without_policy = [
            budget("facility", json!({"capWatts": 30000.0})),
            budgets[1].clone(),
        ];
        let reference = published(&two_node_fleet(&without_policy), 1, None);
        let saved = reference
            .budgets
            .iter()
            .find(|b| b.name == "facility")
            .map(|b| b.allocated_watts - summary("facility").allocated_watts)
            .expect("facility");
        assert!((saved - efficiency.saved_watts).abs() < 1e-3, "{saved}");
    }

    #[test]
    fn an_unchanged_node_keeps_its_revision_and_a_replan_of_the_same_cluster_has_the_same_content()
    {
        let first = published(&fleet(9000.0), 1, None);
        let again = published(&fleet(9000.0), 2, Some(&first));
        assert!(again.same_content(&first));
        assert_eq!(again.nodes["n1"].revision, 1);
        let changed = published(&fleet(8000.0), 2, Some(&first));
        assert!(!changed.same_content(&first));
        assert_eq!(changed.revision, 2);
        assert!(changed.nodes.values().any(|n| n.revision == 2));
    }
}
