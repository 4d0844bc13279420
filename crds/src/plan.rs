//! The plan protocol's wire types, shared by the operator (writer of plans) and the node agent (writer
//! of inventory and acknowledgements): etcd key layout, JSON documents (docs/plan-protocol.md) and the
//! agent credentials the operator issues.
//! Types only; no IO.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Where plans live in etcd, under a configurable prefix (default `/kilowatt`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyLayout {
    prefix: String,
}

impl KeyLayout {
    pub fn new(prefix: &str) -> KeyLayout {
        KeyLayout {
            prefix: prefix.trim_end_matches('/').to_owned(),
        }
    }

    /// The whole plan (the operator's `PublishedPlan`); also the fencing key every publish compares.
    pub fn plan(&self) -> String {
        format!("{}/v1/plan", self.prefix)
    }

    /// Prefix of the parts of plans too large for one etcd value, one folder per plan revision.
    pub fn plan_parts_prefix(&self) -> String {
        format!("{}/v1/plan-parts/", self.prefix)
    }

    /// The folder of revision `revision`'s parts; zero-padded, so that folders sort by revision.
    pub fn plan_parts_of(&self, revision: u64) -> String {
        format!("{}{revision:020}/", self.plan_parts_prefix())
    }

    /// Part `index` of revision `revision`'s plan.
    pub fn plan_part(&self, revision: u64, index: usize) -> String {
        format!("{}{index:06}", self.plan_parts_of(revision))
    }

    /// Written by each replica that takes over as leader; every chunk of a publish compares its mod
    /// revision with the one the writer's takeover got, so two writers' chunks cannot interleave.
    pub fn leader_epoch(&self) -> String {
        format!("{}/v1/leader-epoch", self.prefix)
    }

    /// One node's plan ([`NodePlan`]), watched by that node's agent.
    pub fn node_plan(&self, node: &str) -> String {
        format!("{}{node}/plan", self.node_prefix())
    }

    /// Prefix of every per-node key.
    pub fn node_prefix(&self) -> String {
        format!("{}/v1/nodes/", self.prefix)
    }

    /// The node's [`Inventory`], bound to its agent's etcd lease.
    pub fn node_inventory(&self, node: &str) -> String {
        format!("{}{node}/inventory", self.node_prefix())
    }

    /// The node's [`Acknowledgement`]; not bound to the lease (it outlives a dead agent).
    pub fn node_ack(&self, node: &str) -> String {
        format!("{}{node}/ack", self.node_prefix())
    }

    /// The node's [`PowerReport`], bound to its agent's etcd lease.
    pub fn node_power(&self, node: &str) -> String {
        format!("{}{node}/power", self.node_prefix())
    }
}

/// One GPU's target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GpuTarget {
    /// `<node>/gpu<index>`.
    pub id: String,
    pub index: u32,
    pub power_limit_watts: f64,
    #[serde(
        rename = "smClockMHz",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub sm_clock_mhz: Option<u32>,
    /// The limit the agent falls back to when it loses contact: the GPU's minimum.
    pub floor_watts: f64,
    /// `namespace/name` of the pod on it, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
}

/// What one node's agent enforces.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodePlan {
    /// The plan revision in which this node's targets last changed.
    pub revision: u64,
    /// Innermost budget.
    pub budget: String,
    pub overhead_watts: f64,
    pub gpus: Vec<GpuTarget>,
    /// Limits written for this node at earlier revisions that its agent had not acknowledged when
    /// this plan replaced them, newest last: its GPUs may still enforce any of them, so the operator
    /// counts them until an acknowledgement at or after their revision. Agents ignore it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unacknowledged: Vec<EarlierLimits>,
    /// When the operator wrote this plan (RFC 3339): an agent that has not acknowledged it within the
    /// operator's `--ack-timeout` is planned as not lowering. Agents ignore it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub written_at: Option<String>,
    /// The work counters of the managed pods on this node that name one (`kilowatt.dev/work-*`
    /// annotations), for the agent to scrape; they do not take part in the rollout.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub work_counters: Vec<WorkCounter>,
}

/// Where a managed pod reports the work it did: a Prometheus counter on its own metrics endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkCounter {
    /// `namespace/name`.
    pub pod: String,
    /// The pod's UID: a new one is a new pod, whose counter starts again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// `http://<pod IP>:<port><path>`.
    pub url: String,
    /// The counter's name, e.g. `vllm:generation_tokens_total`; the values of every series of it
    /// that carries `labels` are summed.
    pub metric: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// A gauge of requests waiting (e.g. `vllm:num_requests_waiting`): a window counts as a point of
    /// the curve only while it stays above zero; without one, every window does (training).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_metric: Option<String>,
    /// Indices of the node's GPUs the pod holds.
    pub gpus: Vec<u32>,
}

/// A pod's measured throughput over a window in which its GPUs held one power limit and clock.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkWindow {
    /// `namespace/name`.
    pub pod: String,
    /// The limit every GPU of the pod held for the whole window.
    pub power_limit_watts: f64,
    #[serde(
        rename = "smClockMHz",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub sm_clock_mhz: Option<u32>,
    pub gpus: u32,
    /// Mean measured draw per GPU over the window.
    pub gpu_watts: f64,
    /// The counter's rate per GPU, in the counter's unit per second.
    pub rate_per_gpu: f64,
    pub seconds: f64,
    /// Whether requests were waiting at every scrape of the window (`None`: the pod names no waiting
    /// gauge). A window that was not saturated measured demand, so its rate is only a lower bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub saturated: Option<bool>,
}

/// Limits once written for a node and not acknowledged before they were replaced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EarlierLimits {
    /// The revision they were written at; an acknowledgement of this revision or a later one
    /// supersedes them.
    pub revision: u64,
    /// Limit per GPU index.
    pub power_limits_watts: Vec<f64>,
}

impl NodePlan {
    /// A plan with one target per GPU index, no clocks and no pods, every GPU with the same floor;
    /// for examples and tests.
    pub fn with_limits(node: &str, revision: u64, limits: &[f64], floor_watts: f64) -> NodePlan {
        NodePlan {
            revision,
            budget: String::new(),
            overhead_watts: 0.0,
            gpus: limits
                .iter()
                .zip(0u32..)
                .map(|(&watts, index)| GpuTarget {
                    id: format!("{node}/gpu{index}"),
                    index,
                    power_limit_watts: watts,
                    sm_clock_mhz: None,
                    floor_watts,
                    pod: None,
                })
                .collect(),
            unacknowledged: Vec::new(),
            written_at: None,
            work_counters: Vec::new(),
        }
    }
}

/// What an agent found on its node, registered under its etcd lease.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Inventory {
    /// `nvml` or `simulated`.
    pub backend: String,
    pub gpus: Vec<InventoryGpu>,
    /// Whether each GPU's `pods` is the kubelet's answer (the agent asks its pod-resources API). When
    /// false nobody told the agent, and the operator gives a node's GPUs to its pods in name order.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pods_reported: bool,
}

/// One GPU as its driver describes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InventoryGpu {
    pub index: u32,
    pub uuid: String,
    pub model: String,
    pub min_limit_watts: f64,
    pub max_limit_watts: f64,
    /// `namespace/name` of each pod the kubelet assigned this GPU to (several when time-sliced),
    /// when `pods_reported`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pods: Vec<String>,
}

/// What an agent enforces for a plan revision, written after reading the limits back from the GPUs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Acknowledgement {
    pub revision: u64,
    /// Enforced limit per GPU index.
    pub power_limits_watts: Vec<f64>,
    /// The machine's boot ID (`/proc/sys/kernel/random/boot_id`, which the kubelet reports as the
    /// Node's `status.nodeInfo.bootID`) when the limits were read back: a reboot resets limits to the
    /// driver's default, so an acknowledgement from an earlier boot says nothing about them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
}

/// What a node's GPUs drew, as its agent measured it, written under its etcd lease every report
/// period (not every sample: etcd and the operator see one write per node per period).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PowerReport {
    /// Mean draw of all the node's GPUs together over the period.
    pub gpu_watts: f64,
    /// Energy the GPUs used over the period.
    pub gpu_energy_joules: f64,
    /// Length of the period.
    pub period_seconds: f64,
    /// The work windows the agent completed over the period.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub work_windows: Vec<WorkWindow>,
    /// Windows it discarded over the period, by reason (`limitChanged`, `counterReset`,
    /// `podRestarted`, `scrapeFailed`, `mixedLimits`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub work_windows_rejected: BTreeMap<String, u32>,
}

/// The etcd credentials the operator issues to a node's agent (`POST /api/v1/agent-credentials`): a
/// user whose role may write only that node's inventory, acknowledgement and power keys and read its
/// plan key. `Debug` leaves the password out, so logging the value cannot leak it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentCredentials {
    pub user: String,
    pub password: String,
    /// The node the credentials are bound to: the node of the pod the agent's token is bound to.
    pub node: String,
}

impl std::fmt::Debug for AgentCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentCredentials")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .field("node", &self.node)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_live_under_the_prefix() {
        let keys = KeyLayout::new("/kilowatt/");
        assert_eq!(keys.plan(), "/kilowatt/v1/plan");
        assert_eq!(keys.node_plan("gpu-17"), "/kilowatt/v1/nodes/gpu-17/plan");
        assert!(keys.node_plan("gpu-17").starts_with(&keys.node_prefix()));
        assert_eq!(
            keys.plan_part(12, 3),
            "/kilowatt/v1/plan-parts/00000000000000000012/000003"
        );
        assert!(keys.plan_parts_of(9) < keys.plan_parts_of(10));
        assert!(keys.plan_part(12, 3).starts_with(&keys.plan_parts_of(12)));
    }

    #[test]
    fn agent_credentials_do_not_show_their_password_when_logged() {
        let credentials = AgentCredentials {
            user: "kilowatt-agent-n1".into(),
            password: "secret-hex".into(),
            node: "n1".into(),
        };
        let shown = format!("{credentials:?}");
        assert!(shown.contains("kilowatt-agent-n1"), "{shown}");
        assert!(!shown.contains("secret-hex"), "{shown}");
    }
}
