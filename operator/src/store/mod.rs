//! Where plans live: the [`PlanStore`] interface the planning pass reads agents' views from and
//! publishes to, with two implementations — [`etcd`] (fenced transactions, so a replica that lost
//! leadership cannot overwrite a newer plan; network IO) and [`memory`] (the same keys in a map, for
//! `kilowatt simulate` and tests) — and the pieces both share: the order of a publish's writes, their
//! split into transactions, and the decoding of node keys and of the plan key ([`plan_document`]).
//! This module is pure.

pub mod etcd;
pub mod memory;
pub mod plan_document;

use std::collections::BTreeMap;
use std::future::Future;

use kilowatt_plumbing::errors::error_chain;

use crate::plan::published::{KeyLayout, NodePlan, PublishedPlan};
use crate::plan::rollout::AgentView;
use crate::store::plan_document::PlanKeyValue;

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
    /// The leader epoch key's mod revision from this replica's takeover ([`PlanStore::take_over`]);
    /// every transaction of a publish is fenced on it too (0: never taken over, so nothing publishes).
    pub epoch: i64,
}

/// The plan's home, as the planning pass uses it: etcd in a cluster, memory in `kilowatt simulate`.
pub trait PlanStore: Clone + Send + Sync + 'static {
    /// Marks a new writer: writes the leader epoch key and returns its mod revision. A publish under
    /// an older epoch fails at its next transaction, so the chunks of two writers' publishes cannot
    /// interleave. A replica takes over each time it reads the plan afresh.
    fn take_over(&self) -> impl Future<Output = Result<i64, StoreError>> + Send;

    /// Reads the current plan and its fence (its `epoch` is 0: the caller sets its takeover's). A plan that does not decode (written by an incompatible
    /// version) counts as absent, but its version still orders the next revision above it.
    fn load(&self) -> impl Future<Output = Result<Loaded, StoreError>> + Send;

    /// The plan's JSON document as stored (decompressed, joined, not re-encoded), for
    /// `GET /api/v1/plan`.
    fn read_raw(&self) -> impl Future<Output = Result<Option<Vec<u8>>, StoreError>> + Send;

    /// What the store says about every node's agent: the node plan written, and — bound to the
    /// agent's lease, so absent once it expired — its inventory and power report; its last
    /// acknowledgement outlives the lease.
    fn read_views(
        &self,
    ) -> impl Future<Output = Result<BTreeMap<String, AgentView>, StoreError>> + Send;

    /// Publishes the desired `plan` and the node plans of this rollout step (`writes`, over what is
    /// `written` now), in the order [`publish_operations`] gives, each write fenced on the plan key's
    /// mod revision and the leader epoch in `loaded`. Returns the new fence.
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
    Put {
        key: String,
        value: Vec<u8>,
    },
    Delete {
        key: String,
    },
    /// Every key from `from` up to, not including, `to`.
    DeleteRange {
        from: String,
        to: String,
    },
}

impl KeyWrite {
    /// About what the write adds to a transaction's request.
    fn bytes(&self) -> usize {
        match self {
            KeyWrite::Put { key, value } => key.len() + value.len(),
            KeyWrite::Delete { key } => key.len(),
            KeyWrite::DeleteRange { from, to } => from.len() + to.len(),
        }
    }
}

/// etcd's default limit on operations in one transaction is 128; stay under it.
pub const OPS_PER_TXN: usize = 100;

/// The most bytes of keys and values in one transaction: etcd refuses requests above
/// `--max-request-bytes` (1.5 MiB by default); a plan part is at most half of this.
pub const TXN_BYTES: usize = 1024 * 1024;

/// Splits a publish's writes, in order, into transactions of at most [`OPS_PER_TXN`] writes and
/// [`TXN_BYTES`] bytes (a single larger write gets a transaction of its own).
pub fn transactions(writes: Vec<KeyWrite>) -> Vec<Vec<KeyWrite>> {
    let mut chunks: Vec<Vec<KeyWrite>> = Vec::new();
    let mut bytes = 0;
    for write in writes {
        let size = write.bytes();
        match chunks.last_mut() {
            Some(chunk) if chunk.len() < OPS_PER_TXN && bytes + size <= TXN_BYTES => {
                bytes += size;
                chunk.push(write);
            }
            _ => {
                bytes = size;
                chunks.push(vec![write]);
            }
        }
    }
    chunks
}

fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|source| StoreError::Encode { source })
}

/// The writes of a publish, in a safe order: lowered nodes first (the deepest cut first), raised ones
/// after, node keys of nodes no longer planned deleted with the cuts, then the plan's parts (when it
/// needs them) and the plan key last: every transaction but the last is fenced on the plan key
/// being unchanged. Parts of revisions older than the plan in force (the one before `plan`'s) are
/// deleted first; the parts of the plan in force stay until the next publish, so a reader never
/// finds its manifest without them. A node that left every budget keeps no plan key; its agent
/// falls back to its own floor.
pub fn publish_operations(
    keys: &KeyLayout,
    plan: &PublishedPlan,
    writes: &BTreeMap<String, NodePlan>,
    written: &BTreeMap<String, NodePlan>,
) -> Result<Vec<KeyWrite>, StoreError> {
    let total = |n: &NodePlan| n.gpus.iter().map(|g| g.power_limit_watts).sum::<f64>();
    let mut changed: Vec<(f64, KeyWrite)> = vec![(
        f64::NEG_INFINITY,
        KeyWrite::DeleteRange {
            from: keys.plan_parts_prefix(),
            to: keys.plan_parts_of(plan.revision.saturating_sub(1)),
        },
    )];
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
    let document = plan_document::encode(plan).map_err(|source| StoreError::Encode { source })?;
    for (index, part) in document.parts.into_iter().enumerate() {
        operations.push(KeyWrite::Put {
            key: keys.plan_part(plan.revision, index),
            value: part,
        });
    }
    operations.push(KeyWrite::Put {
        key: keys.plan(),
        value: document.plan_value,
    });
    Ok(operations)
}

/// What the plan key's value needs read besides itself.
pub enum PlanJson {
    /// The plan's JSON document.
    Whole(Vec<u8>),
    /// `count` part keys from `from` up to, not including, `to`.
    InParts {
        from: String,
        to: String,
        count: usize,
    },
    /// The value is corrupt (logged): the plan counts as absent.
    Unreadable,
}

/// Reads the plan key's value `value`; the parts it may name are read by the caller and joined
/// with [`join_plan_parts`].
pub fn plan_json(keys: &KeyLayout, value: &[u8]) -> PlanJson {
    match plan_document::decode_key(value) {
        Ok(PlanKeyValue::Json(json)) => PlanJson::Whole(json),
        Ok(PlanKeyValue::Parts { revision, parts }) => PlanJson::InParts {
            from: keys.plan_part(revision, 0),
            to: keys.plan_part(revision, parts),
            count: parts,
        },
        Err(error) => {
            let error = error_chain(&error);
            tracing::warn!(key = %keys.plan(), %error, "the stored plan does not decode; it will be replaced");
            PlanJson::Unreadable
        }
    }
}

/// Joins the parts read for [`PlanJson::InParts`]; `None` (logged) when they do not make a plan.
pub fn join_plan_parts(keys: &KeyLayout, parts: &[&[u8]], count: usize) -> Option<Vec<u8>> {
    match plan_document::join_parts(parts, count) {
        Ok(json) => Some(json),
        Err(error) => {
            let error = error_chain(&error);
            tracing::warn!(key = %keys.plan(), %error, "the stored plan's parts do not decode; it will be replaced");
            None
        }
    }
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

/// Decodes the plan's JSON document; a plan written by an incompatible version counts as absent.
pub fn decode_plan(key: &str, json: &[u8]) -> Option<PublishedPlan> {
    match serde_json::from_slice::<PublishedPlan>(json) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, bytes: usize) -> KeyWrite {
        KeyWrite::Put {
            key: key.to_owned(),
            value: vec![b'x'; bytes],
        }
    }

    fn keys_of(chunk: &[KeyWrite]) -> Vec<&str> {
        chunk
            .iter()
            .map(|w| match w {
                KeyWrite::Put { key, .. } | KeyWrite::Delete { key } => key.as_str(),
                KeyWrite::DeleteRange { from, .. } => from.as_str(),
            })
            .collect()
    }

    #[test]
    fn transactions_keep_the_order_and_stay_under_both_limits() {
        let many: Vec<KeyWrite> = (0..250).map(|i| put(&format!("k{i:03}"), 10)).collect();
        let chunks = transactions(many);
        assert_eq!(
            chunks.iter().map(Vec::len).collect::<Vec<_>>(),
            [OPS_PER_TXN, OPS_PER_TXN, 50]
        );
        assert_eq!(keys_of(&chunks[1])[0], "k100");

        let part = TXN_BYTES / 2;
        let large = vec![
            put("a", 1000),
            put("part0", part),
            put("part1", part),
            put("huge", 2 * TXN_BYTES),
            put("plan", 100),
        ];
        let chunks = transactions(large);
        let order: Vec<Vec<&str>> = chunks.iter().map(|c| keys_of(c)).collect();
        assert_eq!(
            order,
            [
                vec!["a", "part0"],
                vec!["part1"],
                vec!["huge"],
                vec!["plan"]
            ]
        );
    }

    #[test]
    fn a_publish_writes_the_plan_key_last_and_deletes_only_parts_older_than_the_plan_in_force() {
        let keys = KeyLayout::new("/kilowatt");
        let plan = crate::plan::published::test_plan(7, Vec::new(), Vec::new(), BTreeMap::new());
        let operations =
            publish_operations(&keys, &plan, &BTreeMap::new(), &BTreeMap::new()).expect("encodes");
        assert_eq!(
            operations.first(),
            Some(&KeyWrite::DeleteRange {
                from: keys.plan_parts_prefix(),
                to: keys.plan_parts_of(6),
            })
        );
        assert!(
            matches!(operations.last(), Some(KeyWrite::Put { key, .. }) if *key == keys.plan())
        );
    }
}
