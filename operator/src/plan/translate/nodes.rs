//! Nodes: each budgeted node's GPU slots (from its agent's inventory, else its capacity and the GPU
//! model table), its overhead, its home budget, and whether unrelated budgets pin it at its floors.
//! Pure.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Node;
use kilowatt_crds::plan::Inventory;
use kube::ResourceExt;

use super::{BudgetFacts, BudgetIssue, GpuSlot, NodeFacts, OVERHEAD_ANNOTATION, parse_finite};
use crate::plan::gpu_models::{self, GPU_PRODUCT_LABEL, GPU_RESOURCE};
use crate::plan::reasons;

/// The facts of every node some budget selects; counts nodes and GPUs into the budgets they are in.
pub(super) fn node_facts(
    selected: BTreeMap<String, Vec<String>>,
    sorted_nodes: &BTreeMap<String, &Node>,
    inventories: &BTreeMap<String, Inventory>,
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
        let reported = inventories.get(&node_name);
        let gpu_total = match (reported, capacity) {
            (Some(inventory), _) => u32::try_from(inventory.gpus.len()).unwrap_or(u32::MAX),
            (None, None) => 0,
            (None, Some(q)) => gpu_count(&q.0).unwrap_or_else(|| {
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
    nodes
}

/// A non-negative whole number of GPUs from a quantity string (`"8"`); `None` when it is not one.
pub(super) fn gpu_count(quantity: &str) -> Option<u32> {
    quantity.trim().parse().ok()
}
