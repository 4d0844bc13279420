//! Pods: which GPU pods hold GPUs on budgeted nodes, in a stable order; which of their node's slots
//! each takes (the kubelet's assignment when the agent reports it); and what their annotations ask.
//! Pure.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Pod;
use kilowatt_crds::plan::Inventory;
use kilowatt_solver::MIN_MAGNITUDE;
use kilowatt_solver::model::WorkloadKind;
use kube::ResourceExt;

use super::nodes::gpu_count;
use super::work;
use super::{
    Cluster, JOB_ANNOTATION, MIN_FRACTION_ANNOTATION, NodeFacts, PROFILE_ANNOTATION, PodFacts,
    PodWarning, WEIGHT_ANNOTATION, WORKLOAD_ANNOTATION, object_name, parse_finite,
};
use crate::plan::gpu_models::GPU_RESOURCE;
use crate::plan::reasons;

/// A GPU pod on a budgeted node, with the slots it took.
pub(super) struct PlacedPod<'a> {
    pub pod: &'a Pod,
    /// `namespace/name`.
    pub pod_ref: String,
    pub node: String,
    pub slot_ids: Vec<String>,
    pub facts: PodFacts,
}

/// Every GPU pod on a budgeted node takes its slots, in pod order; returns them with the pods placed
/// before their node's agent reported them (`namespace/name`).
pub(super) fn place_pods<'a>(
    cluster: &Cluster<'a>,
    nodes: &mut BTreeMap<String, NodeFacts>,
) -> (Vec<PlacedPod<'a>>, Vec<String>) {
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
    let mut placed = Vec::new();
    for ((pod, node_name, wanted), pod_ref) in gpu_pods.into_iter().zip(pod_refs.iter()) {
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
                reason: reasons::GPUS_NOT_IN_INVENTORY,
                message,
            });
        }
        if placement == Placement::AwaitingReport {
            awaiting_gpu_report.push(pod_ref.clone());
        }
        let gpu_indices: Vec<u32> = chosen
            .iter()
            .map(|&i| u32::try_from(i).unwrap_or(u32::MAX))
            .collect();
        if !gpu_indices.is_empty() {
            match work::work_counter(pod, gpu_indices.clone()) {
                Ok(Some(counter)) => node.work_counters.push(counter),
                Ok(None) => match work::work_queries(pod, gpu_indices) {
                    Ok(Some(queried)) => node.work_queries.push(queried),
                    Ok(None) => {}
                    Err(warning) => facts.warnings.push(warning),
                },
                Err(warning) => facts.warnings.push(warning),
            }
        }
        let slot_ids: Vec<String> = chosen
            .into_iter()
            .map(|i| {
                let slot = &mut node.slots[i];
                slot.pod = Some(pod_ref.clone());
                slot.id.clone()
            })
            .collect();
        placed.push(PlacedPod {
            pod,
            pod_ref: pod_ref.clone(),
            node: node_name.to_owned(),
            slot_ids,
            facts,
        });
    }
    (placed, awaiting_gpu_report)
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

/// Namespace and name of a pod, borrowed: the order pods take their node's GPU slots in. NB: owned keys
/// (two strings per comparison) were a fifth of translating 1,000 nodes (perf, BENCHMARKS.md).
fn pod_order_key(pod: &Pod) -> (&str, &str) {
    (
        pod.metadata.namespace.as_deref().unwrap_or(""),
        object_name(&pod.metadata),
    )
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

/// A pod's validated annotations.
pub(super) struct PodIntent {
    pub kind: WorkloadKind,
    pub job: String,
    pub weight: f64,
    pub min_fraction: Option<f64>,
    pub profile_name: Option<String>,
}

/// Reads a pod's annotations: `Ok(None)` unmanaged, `Err` malformed (with the warning to emit).
pub(super) fn pod_intent(pod: &Pod) -> Result<Option<PodIntent>, PodWarning> {
    let annotations = pod.annotations();
    let malformed = |annotation: &str, value: &str, expected: &str| PodWarning {
        reason: reasons::MALFORMED_ANNOTATION,
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
        // NB: the lower end is the solver's smallest weight, so that a weight the annotation
        // accepts is never dropped by the solver later with another message.
        Some(text) => parse_finite(text)
            .filter(|w| (MIN_MAGNITUDE..=1e6).contains(w))
            .ok_or_else(|| malformed(WEIGHT_ANNOTATION, text, "a number from 1e-9 to 1e6"))?,
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
