//! Nodes: each budgeted node's GPU slots (from its agent's inventory, else its capacity and the GPU
//! model table), its overhead, its home budget, and whether unrelated budgets pin it at its floors.
//! Pure.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Node;
use kilowatt_crds::plan::Inventory;
use kube::ResourceExt;

use kilowatt_solver::MAX_DEVICE_WATTS;

use super::{
    BudgetFacts, BudgetIssue, GpuSlot, NodeFacts, NodeHold, OVERHEAD_ANNOTATION, parse_finite,
};
use crate::plan::gpu_models::{self, GPU_PRODUCT_LABEL, GPU_RESOURCE};
use crate::plan::reasons;

/// The facts of every node some budget selects; counts nodes and GPUs into the budgets they are in.
pub(super) fn node_facts(
    selected: BTreeMap<String, Vec<String>>,
    sorted_nodes: &BTreeMap<String, &Node>,
    (inventories, holds): (&BTreeMap<String, Inventory>, &BTreeMap<String, NodeHold>),
    budgets: &mut BTreeMap<String, BudgetFacts>,
    chains: &BTreeMap<String, Vec<String>>,
) -> BTreeMap<String, NodeFacts> {
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
        let in_conflict = !matched.iter().all(|b| deepest_chain.contains(b));
        let home = if in_conflict {
            matched[0].clone()
        } else {
            deepest
        };

        let model = gpu_models::from_product_label(
            node.labels().get(GPU_PRODUCT_LABEL).map(String::as_str),
        );
        let capacity = node
            .status
            .as_ref()
            .and_then(|s| s.capacity.as_ref())
            .and_then(|c| c.get(GPU_RESOURCE));
        let capacity_count = capacity.and_then(|q| gpu_count(&q.0));
        let mut hold = holds.get(&node_name).cloned();
        let reported = match inventories.get(&node_name) {
            Some(inventory) => match inventory_problem(inventory, capacity_count) {
                None => Some(inventory),
                Some(problem) => {
                    let message = format!(
                        "node {node_name}'s agent registered an invalid inventory ({problem}); the \
                         node is held at its floors from the GPU model table"
                    );
                    if let Some(f) = budgets.get_mut(&home) {
                        f.issues.push(BudgetIssue {
                            reason: reasons::INVALID_INVENTORY,
                            message: message.clone(),
                        });
                    }
                    hold.get_or_insert(NodeHold {
                        reason: reasons::NODE_INVENTORY_INVALID,
                        message,
                        gpu_watts: None,
                    });
                    None
                }
            },
            None => None,
        };
        let pinned = in_conflict || hold.is_some();
        let gpu_total = match (reported, capacity) {
            (Some(inventory), _) => u32::try_from(inventory.gpus.len()).unwrap_or(u32::MAX),
            (None, None) => 0,
            (None, Some(q)) => capacity_count.unwrap_or_else(|| {
                if let Some(f) = budgets.get_mut(&home) {
                    f.issues.push(BudgetIssue {
                        reason: reasons::INVALID_GPU_CAPACITY,
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
        // GPUs the Node has that its agent does not see are not planned, but they run at whatever
        // limit they hold, at most their maximum.
        let unseen = match (reported, capacity_count) {
            (Some(_), Some(count)) => count.saturating_sub(gpu_total),
            _ => 0,
        };
        let unseen_watts = f64::from(unseen) * model.max_watts;
        if unseen > 0
            && let Some(f) = budgets.get_mut(&home)
        {
            f.issues.push(BudgetIssue {
                reason: reasons::UNSEEN_GPUS,
                message: format!(
                    "node {node_name} has {} GPUs but its agent reports {gpu_total}; the {unseen} it \
                     cannot see are counted at their maximum ({unseen_watts} W together)",
                    gpu_total + unseen
                ),
            });
        }
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
                    reason: reasons::UNKNOWN_GPU_MODEL,
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
                            reason: reasons::MALFORMED_ANNOTATION,
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
        if in_conflict {
            let others = matched.join(", ");
            for b in &matched {
                if let Some(f) = budgets.get_mut(b) {
                    f.conflicts.push(format!(
                        "node {node_name} is selected by unrelated budgets ({others}); it is held at \
                         its GPUs' minimum limits and counted in each"
                    ));
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
        let floors: f64 = ranges.iter().map(|(min, _)| min).sum();
        let held_gpu_watts = hold
            .as_ref()
            .and_then(|h| h.gpu_watts.as_ref())
            .map(|watts| watts.iter().sum::<f64>());
        let least_gpu_watts = held_gpu_watts.unwrap_or(floors);
        for b in counted {
            if let Some(f) = budgets.get_mut(b) {
                f.nodes += 1;
                f.gpus += gpu_total;
                f.pinned_watts += unseen_watts;
                if pinned {
                    f.pinned_watts += overhead_watts + least_gpu_watts;
                }
                f.floor_watts += overhead_watts + least_gpu_watts + unseen_watts;
                if let (Some(hold), Some(watts)) = (&hold, held_gpu_watts) {
                    f.held.push(format!(
                        "node {node_name} ({}) counts at {:.0} W",
                        hold.message,
                        overhead_watts + watts
                    ));
                }
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
                hold,
                unseen_watts,
                work_counters: Vec::new(),
                work_queries: Vec::new(),
            },
        );
    }
    nodes
}

/// What makes an inventory impossible, if anything: GPU indices out of order, limits that are not
/// finite with 0 < min <= max <= the solver's device maximum, or more GPUs than the Node's capacity.
fn inventory_problem(inventory: &Inventory, capacity: Option<u32>) -> Option<String> {
    if let Some(count) = capacity
        && inventory.gpus.len() > count as usize
    {
        return Some(format!(
            "{} GPUs on a node whose capacity is {count}",
            inventory.gpus.len()
        ));
    }
    inventory.gpus.iter().enumerate().find_map(|(i, gpu)| {
        let (min, max) = (gpu.min_limit_watts, gpu.max_limit_watts);
        if gpu.index as usize != i {
            Some(format!("GPU {i} has index {}", gpu.index))
        } else if !(min.is_finite() && max.is_finite() && min > 0.0 && min <= max) {
            Some(format!(
                "GPU {i}: minLimitWatts {min} and maxLimitWatts {max} are not 0 < min <= max"
            ))
        } else if max > MAX_DEVICE_WATTS {
            Some(format!(
                "GPU {i}: maxLimitWatts {max} is above {MAX_DEVICE_WATTS} W"
            ))
        } else {
            None
        }
    })
}

/// A non-negative whole number of GPUs from a quantity string (`"8"`); `None` when it is not one.
pub(super) fn gpu_count(quantity: &str) -> Option<u32> {
    quantity.trim().parse().ok()
}
