//! An in-memory plan store for `kilowatt simulate`: the same [`PlanStore`] interface as etcd, over a
//! small key-value map with etcd's revision counters, holding the same keys and JSON documents
//! (docs/plan-protocol.md) — publishes are fenced on the plan key's mod revision and applied in
//! [`publish_operations`]' order, and views decode through the same code as etcd's. It also takes the
//! agents' side (inventory, acknowledgements, power reports, lease expiry). No IO.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard};

use kilowatt_crds::plan::{Acknowledgement, Inventory, NodePlan, PowerReport};

use crate::plan::published::{KeyLayout, PublishedPlan};
use crate::plan::rollout::AgentView;
use crate::store::{
    KeyWrite, Loaded, PlanJson, PlanStore, StoreError, decode_plan, join_plan_parts, plan_json,
    publish_operations, views_from_entries,
};

/// One key's value and etcd-style counters.
#[derive(Debug, Clone)]
struct Entry {
    value: Vec<u8>,
    mod_revision: i64,
    version: i64,
}

#[derive(Debug, Default)]
struct Keys {
    entries: BTreeMap<String, Entry>,
    /// The store's revision: increases by one with every write, as etcd's does.
    revision: i64,
}

impl Keys {
    fn put(&mut self, key: String, value: Vec<u8>) {
        self.revision += 1;
        let version = self.entries.get(&key).map_or(0, |e| e.version) + 1;
        self.entries.insert(
            key,
            Entry {
                value,
                mod_revision: self.revision,
                version,
            },
        );
    }

    fn delete(&mut self, key: &str) {
        if self.entries.remove(key).is_some() {
            self.revision += 1;
        }
    }

    fn delete_range(&mut self, from: &str, to: &str) {
        let doomed: Vec<String> = self
            .entries
            .range::<str, _>((Bound::Included(from), Bound::Excluded(to)))
            .map(|(key, _)| key.clone())
            .collect();
        for key in doomed {
            self.delete(&key);
        }
    }

    /// The plan key's JSON document, joined from its parts when it has them.
    fn plan_document(&self, keys: &KeyLayout) -> Option<Vec<u8>> {
        let entry = self.entries.get(&keys.plan())?;
        match plan_json(keys, &entry.value) {
            PlanJson::Whole(json) => Some(json),
            PlanJson::Unreadable => None,
            PlanJson::InParts { from, to, count } => {
                let parts: Vec<&[u8]> = self
                    .entries
                    .range::<str, _>((Bound::Included(from.as_str()), Bound::Excluded(to.as_str())))
                    .map(|(_, e)| e.value.as_slice())
                    .collect();
                join_plan_parts(keys, &parts, count)
            }
        }
    }
}

/// The plan store of a simulation, shared by its operator and its agents.
#[derive(Debug, Clone)]
pub struct MemoryPlanStore {
    keys: KeyLayout,
    state: Arc<Mutex<Keys>>,
}

impl MemoryPlanStore {
    pub fn new(keys: KeyLayout) -> MemoryPlanStore {
        MemoryPlanStore {
            keys,
            state: Arc::new(Mutex::new(Keys::default())),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Keys> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn put_json<T: serde::Serialize>(&self, key: String, value: &T) {
        // NB: the wire types always encode; an empty value would decode as absent, as in etcd.
        let encoded = serde_json::to_vec(value).unwrap_or_default();
        self.lock().put(key, encoded);
    }

    /// An agent registers its GPUs (under its lease, in etcd).
    pub fn register(&self, node: &str, inventory: &Inventory) {
        self.put_json(self.keys.node_inventory(node), inventory);
    }

    /// An agent's lease expired: its inventory and power report go, its acknowledgement stays.
    pub fn expire_lease(&self, node: &str) {
        let mut state = self.lock();
        state.delete(&self.keys.node_inventory(node));
        state.delete(&self.keys.node_power(node));
    }

    /// An agent acknowledges what it enforces.
    pub fn acknowledge(&self, node: &str, ack: &Acknowledgement) {
        self.put_json(self.keys.node_ack(node), ack);
    }

    /// An agent reports its measured power (under its lease, in etcd).
    pub fn report_power(&self, node: &str, report: &PowerReport) {
        self.put_json(self.keys.node_power(node), report);
    }

    /// What an agent's watch on its plan key delivers: the key's mod revision (0: absent) and the plan,
    /// `None` when absent or undecodable.
    pub fn node_plan(&self, node: &str) -> (i64, Option<NodePlan>) {
        let state = self.lock();
        match state.entries.get(&self.keys.node_plan(node)) {
            Some(entry) => (
                entry.mod_revision,
                serde_json::from_slice(&entry.value).ok(),
            ),
            None => (0, None),
        }
    }

    /// What [`MemoryPlanStore::node_plan`] gives for the node whose plan key is `key`, but only when the
    /// key's mod revision differs from `seen`: a watch delivers only changes (and the plan is decoded
    /// only then).
    pub fn node_plan_change(&self, key: &str, seen: i64) -> Option<(i64, Option<NodePlan>)> {
        let state = self.lock();
        let entry = state.entries.get(key);
        let revision = entry.map_or(0, |e| e.mod_revision);
        (revision != seen).then(|| {
            (
                revision,
                entry.and_then(|e| serde_json::from_slice(&e.value).ok()),
            )
        })
    }
}

impl PlanStore for MemoryPlanStore {
    async fn take_over(&self) -> Result<i64, StoreError> {
        let mut state = self.lock();
        state.put(self.keys.leader_epoch(), Vec::new());
        Ok(state.revision)
    }

    async fn load(&self) -> Result<Loaded, StoreError> {
        let key = self.keys.plan();
        let state = self.lock();
        Ok(match state.entries.get(&key) {
            Some(entry) => Loaded {
                plan: state
                    .plan_document(&self.keys)
                    .and_then(|json| decode_plan(&key, &json)),
                mod_revision: entry.mod_revision,
                version: entry.version,
                epoch: 0,
            },
            None => Loaded {
                plan: None,
                mod_revision: 0,
                version: 0,
                epoch: 0,
            },
        })
    }

    async fn read_raw(&self) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.lock().plan_document(&self.keys))
    }

    async fn read_views(&self) -> Result<BTreeMap<String, AgentView>, StoreError> {
        let prefix = self.keys.node_prefix();
        let state = self.lock();
        Ok(views_from_entries(
            &self.keys,
            state
                .entries
                .range(prefix.clone()..)
                .take_while(|(key, _)| key.starts_with(&prefix))
                .map(|(key, entry)| (key.as_str(), entry.value.as_slice())),
        ))
    }

    async fn publish(
        &self,
        plan: &PublishedPlan,
        writes: &BTreeMap<String, NodePlan>,
        written: &BTreeMap<String, NodePlan>,
        loaded: &Loaded,
    ) -> Result<Loaded, StoreError> {
        let operations = publish_operations(&self.keys, plan, writes, written)?;
        let plan_key = self.keys.plan();
        let mut state = self.lock();
        let mod_revision = |key: &str| state.entries.get(key).map_or(0, |e| e.mod_revision);
        if mod_revision(&plan_key) != loaded.mod_revision
            || mod_revision(&self.keys.leader_epoch()) != loaded.epoch
        {
            return Err(StoreError::Fenced);
        }
        for operation in operations {
            match operation {
                KeyWrite::Put { key, value } => state.put(key, value),
                KeyWrite::Delete { key } => state.delete(&key),
                KeyWrite::DeleteRange { from, to } => state.delete_range(&from, &to),
            }
        }
        Ok(Loaded {
            plan: Some(plan.clone()),
            mod_revision: state.revision,
            version: loaded.version + 1,
            epoch: loaded.epoch,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(revision: u64, nodes: &[(&str, f64)]) -> PublishedPlan {
        let nodes = nodes
            .iter()
            .map(|(n, w)| {
                (
                    (*n).to_owned(),
                    NodePlan::with_limits(n, revision, &[*w], 100.0),
                )
            })
            .collect();
        crate::plan::published::test_plan(revision, Vec::new(), Vec::new(), nodes)
    }

    fn block_on<F: std::future::Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(future)
    }

    #[test]
    fn a_publish_over_a_stale_fence_is_refused_like_etcds() {
        let store = MemoryPlanStore::new(KeyLayout::new("/kilowatt"));
        block_on(async {
            let empty = store.load().await.expect("load");
            assert_eq!((empty.mod_revision, empty.version), (0, 0));
            let first = plan(1, &[("n1", 300.0)]);
            let writes = first.nodes.clone();
            let after = store
                .publish(&first, &writes, &BTreeMap::new(), &empty)
                .await
                .expect("first publish");
            assert_eq!(after.version, 1);
            assert_eq!(store.load().await.expect("load"), after);
            // A replica still holding the empty fence cannot overwrite the plan.
            let stale = store
                .publish(
                    &plan(2, &[("n1", 700.0)]),
                    &writes,
                    &BTreeMap::new(),
                    &empty,
                )
                .await;
            assert!(matches!(stale, Err(StoreError::Fenced)));
            assert_eq!(store.node_plan("n1").1, Some(writes["n1"].clone()));
        });
    }

    #[test]
    fn agents_keys_come_back_as_views_and_the_ack_outlives_the_lease() {
        let store = MemoryPlanStore::new(KeyLayout::new("/kilowatt"));
        let inventory = Inventory {
            backend: "simulated".into(),
            gpus: Vec::new(),
            pods_reported: false,
        };
        store.register("n1", &inventory);
        store.acknowledge(
            "n1",
            &Acknowledgement {
                revision: 3,
                power_limits_watts: vec![250.0],
                boot_id: None,
            },
        );
        block_on(async {
            let views = store.read_views().await.expect("views");
            assert_eq!(views["n1"].inventory, Some(inventory.clone()));
            assert_eq!(views["n1"].ack.as_ref().map(|a| a.revision), Some(3));
            store.expire_lease("n1");
            let views = store.read_views().await.expect("views");
            assert_eq!(views["n1"].inventory, None);
            assert_eq!(views["n1"].ack.as_ref().map(|a| a.revision), Some(3));
        });
    }

    #[test]
    fn a_node_that_left_the_plan_loses_its_key() {
        let store = MemoryPlanStore::new(KeyLayout::new("/kilowatt"));
        block_on(async {
            let first = plan(1, &[("n1", 300.0), ("n2", 300.0)]);
            let loaded = store
                .publish(
                    &first,
                    &first.nodes,
                    &BTreeMap::new(),
                    &Loaded {
                        plan: None,
                        mod_revision: 0,
                        version: 0,
                        epoch: 0,
                    },
                )
                .await
                .expect("publish");
            let second = plan(2, &[("n1", 300.0)]);
            store
                .publish(&second, &BTreeMap::new(), &first.nodes, &loaded)
                .await
                .expect("publish");
            assert_eq!(store.node_plan("n2"), (0, None));
            assert!(store.node_plan("n1").1.is_some());
        });
    }
}
