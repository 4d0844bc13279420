//! Where plans live: the [`PlanStore`] interface the planning pass reads agents' views from and
//! publishes to, with two implementations — [`etcd`] (fenced transactions, so a replica that lost
//! leadership cannot overwrite a newer plan; network IO) and [`memory`] (the same keys in a map, for
//! `kilowatt simulate` and tests) — and the pieces both share: the order of a publish's writes and the
//! decoding of node keys. This module is pure.

pub mod etcd;
pub mod memory;

use std::collections::BTreeMap;
use std::future::Future;

use crate::plan::published::{KeyLayout, NodePlan, PublishedPlan};
use crate::plan::rollout::AgentView;

/// Why the plan could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("connecting to etcd at {endpoints}")]
    Connect {
        endpoints: String,
        source: etcd_client::Error,
    },
    #[error("reading {key} from etcd")]
    Read {
        key: String,
        source: etcd_client::Error,
    },
    #[error("writing the plan to etcd")]
    Write { source: etcd_client::Error },
    #[error("encoding the plan")]
    Encode { source: serde_json::Error },
    /// Another writer changed the plan key since this replica last read it.
    #[error("the plan in etcd changed since it was read (another operator replica published)")]
    Fenced,
}

impl StoreError {
    /// A fixed label for metrics and logs.
    pub fn category(&self) -> &'static str {
        match self {
            StoreError::Connect { .. } | StoreError::Read { .. } | StoreError::Write { .. } => {
                "etcd"
            }
            StoreError::Encode { .. } => "encode",
            StoreError::Fenced => "fenced",
        }
    }
}

/// What the store held at the last read or write.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    /// The plan, when one exists and decodes.
    pub plan: Option<PublishedPlan>,
    /// The plan key's mod revision (0: absent); the fence for the next publish.
    pub mod_revision: i64,
    /// Times the plan key was written since it was created: the next revision is above it.
    pub version: i64,
}

/// The plan's home, as the planning pass uses it: etcd in a cluster, memory in `kilowatt simulate`.
pub trait PlanStore: Clone + Send + Sync + 'static {
    /// Reads the current plan and its fence. A plan that does not decode (written by an incompatible
    /// version) counts as absent, but its version still orders the next revision above it.
    fn load(&self) -> impl Future<Output = Result<Loaded, StoreError>> + Send;

    /// The plan as stored, for `GET /api/v1/plan` (raw JSON, not re-encoded).
    fn read_raw(&self) -> impl Future<Output = Result<Option<Vec<u8>>, StoreError>> + Send;

    /// What the store says about every node's agent: the node plan written, and — bound to the
    /// agent's lease, so absent once it expired — its inventory and power report; its last
    /// acknowledgement outlives the lease.
    fn read_views(
        &self,
    ) -> impl Future<Output = Result<BTreeMap<String, AgentView>, StoreError>> + Send;

    /// Publishes the desired `plan` and the node plans of this rollout step (`writes`, over what is
    /// `written` now), in the order [`publish_operations`] gives, each write fenced on the plan key's
    /// mod revision in `loaded`. Returns the new fence.
    fn publish(
        &self,
        plan: &PublishedPlan,
        writes: &BTreeMap<String, NodePlan>,
        written: &BTreeMap<String, NodePlan>,
        loaded: &Loaded,
    ) -> impl Future<Output = Result<Loaded, StoreError>> + Send;
}

/// One write of a publish.
#[derive(Debug, Clone, PartialEq)]
pub enum KeyWrite {
    Put { key: String, value: Vec<u8> },
    Delete { key: String },
}

fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|source| StoreError::Encode { source })
}

/// The writes of a publish, in a safe order: lowered nodes first (the deepest cut first), raised ones
/// after, node keys of nodes no longer planned deleted with the cuts, and the plan key last. A node that
/// left every budget keeps no plan key; its agent falls back to its own floor.
pub fn publish_operations(
    keys: &KeyLayout,
    plan: &PublishedPlan,
    writes: &BTreeMap<String, NodePlan>,
    written: &BTreeMap<String, NodePlan>,
) -> Result<Vec<KeyWrite>, StoreError> {
    let total = |n: &NodePlan| n.gpus.iter().map(|g| g.power_limit_watts).sum::<f64>();
    let mut changed: Vec<(f64, KeyWrite)> = Vec::new();
    for (node, node_plan) in writes {
        let delta = total(node_plan) - written.get(node).map_or(f64::INFINITY, total);
        changed.push((
            delta,
            KeyWrite::Put {
                key: keys.node_plan(node),
                value: encode(node_plan)?,
            },
        ));
    }
    for node in written.keys() {
        if !plan.nodes.contains_key(node) {
            changed.push((
                f64::NEG_INFINITY,
                KeyWrite::Delete {
                    key: keys.node_plan(node),
                },
            ));
        }
    }
    // NB: lower before raise within the step too: an agent reading between two transactions of
    // a large step sees its decrease only after every other decrease has landed.
    changed.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut operations: Vec<KeyWrite> = changed.into_iter().map(|(_, op)| op).collect();
    operations.push(KeyWrite::Put {
        key: keys.plan(),
        value: encode(plan)?,
    });
    Ok(operations)
}

/// Decodes the node keys under `keys`' node prefix into views, by node. An undecodable document counts
/// as absent; for an inventory that means "no live agent", so the node's plan is lowered to its floors
/// rather than trusted.
pub fn views_from_entries<'a>(
    keys: &KeyLayout,
    entries: impl IntoIterator<Item = (&'a str, &'a [u8])>,
) -> BTreeMap<String, AgentView> {
    let prefix = keys.node_prefix();
    let mut views: BTreeMap<String, AgentView> = BTreeMap::new();
    for (key, value) in entries {
        let Some((node, kind)) = key
            .strip_prefix(&prefix)
            .and_then(|rest| rest.rsplit_once('/'))
        else {
            continue;
        };
        let view = views.entry(node.to_owned()).or_default();
        match kind {
            "plan" => view.written = serde_json::from_slice(value).ok(),
            "ack" => view.ack = serde_json::from_slice(value).ok(),
            "inventory" => view.inventory = serde_json::from_slice(value).ok(),
            "power" => view.power = serde_json::from_slice(value).ok(),
            _ => {}
        }
    }
    views
}

/// Decodes the plan key's value; a plan written by an incompatible version counts as absent.
pub fn decode_plan(key: &str, value: &[u8]) -> Option<PublishedPlan> {
    match serde_json::from_slice::<PublishedPlan>(value) {
        Ok(plan) => Some(plan),
        Err(error) => {
            tracing::warn!(%key, %error, "the stored plan does not decode; it will be replaced");
            None
        }
    }
}

/// Node plans stored under the node prefix, by node (tests and diagnostics).
pub async fn node_plans(store: &impl PlanStore) -> Result<Vec<(String, NodePlan)>, StoreError> {
    Ok(store
        .read_views()
        .await?
        .into_iter()
        .filter_map(|(node, view)| view.written.map(|plan| (node, plan)))
        .collect())
}
