//! Budgets: the PowerBudgets resolved into a forest (validated parents, chains, per-budget facts) and
//! which budgets' node selectors pick each node. Pure.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::jiff::Timestamp;
use kilowatt_crds::PowerBudget;
use kilowatt_solver::{MAX_CAP_WATTS, MAX_DEVICE_WATTS};
use kube::ResourceExt;

use super::{BudgetFacts, BudgetIssue};
use crate::plan::reasons;
use crate::plan::schedule;

/// Budgets resolved into a forest: validated parents, chains, and per-budget facts without counts.
pub(super) fn budget_forest(
    budgets: &[Arc<PowerBudget>],
    now: Timestamp,
    window_lead: std::time::Duration,
) -> (BTreeMap<String, BudgetFacts>, BTreeMap<String, Vec<String>>) {
    let by_name: BTreeMap<String, &PowerBudget> =
        budgets.iter().map(|b| (b.name_any(), b.as_ref())).collect();
    let mut facts: BTreeMap<String, BudgetFacts> = BTreeMap::new();
    for (name, budget) in &by_name {
        let spec = &budget.spec;
        let mut effective = schedule::effective_cap(spec, now, window_lead);
        let mut issues = Vec::new();
        if effective.cap_watts.is_nan() || effective.cap_watts > MAX_CAP_WATTS {
            issues.push(BudgetIssue {
                reason: reasons::CAP_OUT_OF_RANGE,
                message: format!(
                    "the effective cap ({} W) is above the most the solver plans ({MAX_CAP_WATTS} W); \
                     {MAX_CAP_WATTS} W is planned",
                    effective.cap_watts
                ),
            });
            effective.cap_watts = MAX_CAP_WATTS;
        }
        let node_overhead_watts = match spec.node_overhead_watts {
            Some(w) if !(0.0..=MAX_DEVICE_WATTS).contains(&w) => {
                issues.push(BudgetIssue {
                    reason: reasons::CAP_OUT_OF_RANGE,
                    message: format!(
                        "nodeOverheadWatts {w} is outside [0, {MAX_DEVICE_WATTS}]; {MAX_DEVICE_WATTS} W \
                         a node is counted"
                    ),
                });
                Some(MAX_DEVICE_WATTS)
            }
            other => other,
        };
        let margin = spec
            .safety_margin_watts
            .filter(|m| m.is_finite())
            .unwrap_or(0.0)
            .clamp(0.0, MAX_CAP_WATTS);
        let max_slowdown = match &spec.efficiency {
            Some(policy) if !(0.0..1.0).contains(&policy.max_slowdown) => {
                issues.push(BudgetIssue {
                    reason: reasons::INVALID_EFFICIENCY,
                    message: format!(
                        "efficiency.maxSlowdown {} is outside [0, 1); this budget is planned for \
                         maximum throughput",
                        policy.max_slowdown
                    ),
                });
                None
            }
            other => other.as_ref().map(|policy| policy.max_slowdown),
        };
        let parent = match &spec.parent {
            Some(parent) if !by_name.contains_key(parent) => {
                issues.push(BudgetIssue {
                    reason: reasons::PARENT_NOT_FOUND,
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
                node_overhead_watts,
                planning_cap_watts: (effective.cap_watts - margin).max(0.0),
                effective,
                safety_margin_watts: margin,
                max_slowdown,
                pinned_watts: 0.0,
                floor_watts: 0.0,
                held: Vec::new(),
                nodes: 0,
                gpus: 0,
                conflicts: Vec::new(),
                issues,
                signals: None,
                demand_response: None,
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
                reason: reasons::PARENT_CYCLE,
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

/// The budgets whose node selectors match each node, by node name. A selector that cannot be evaluated
/// selects nothing, and its budget gets an `InvalidNodeSelector` issue.
pub(super) fn select_nodes(
    budgets_in: &[Arc<PowerBudget>],
    sorted_nodes: &BTreeMap<String, &Node>,
    budgets: &mut BTreeMap<String, BudgetFacts>,
) -> BTreeMap<String, Vec<String>> {
    let mut selected: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut invalid_selectors = Vec::new();
    for budget in budgets_in {
        let Some(selector) = &budget.spec.node_selector else {
            continue;
        };
        for (node_name, node) in sorted_nodes {
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
                reason: reasons::INVALID_NODE_SELECTOR,
                message: format!("nodeSelector cannot be evaluated: {message}"),
            });
        }
        selected
            .values_mut()
            .for_each(|v| v.retain(|b| *b != budget));
    }
    selected
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
