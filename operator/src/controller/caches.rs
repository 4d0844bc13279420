//! Watch caches of the four kinds the operator plans from (PowerBudgets, WorkloadProfiles, Nodes, bound
//! Pods), kept current by kube-runtime reflectors that wake the reconcile loop on every change. Does
//! Kubernetes IO in the spawned watch tasks; reading a snapshot is in memory.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::jiff::Timestamp;
use kilowatt_crds::plan::Inventory;
use kilowatt_crds::{PowerBudget, WorkloadProfile};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use tokio::task::JoinSet;

use crate::http::metrics::Metrics;
use crate::plan::translate::{Cluster, Translation, translate};

/// Read handles on the caches.
#[derive(Clone)]
pub struct Caches {
    pub budgets: Store<PowerBudget>,
    pub profiles: Store<WorkloadProfile>,
    pub nodes: Store<Node>,
    pub pods: Store<Pod>,
}

impl Caches {
    /// The cluster as cached now, with the agents' GPU inventories, translated at `now`.
    pub fn translate(
        &self,
        now: Timestamp,
        inventories: &BTreeMap<String, Inventory>,
    ) -> Translation {
        let (budgets, profiles, nodes, pods) = (
            self.budgets.state(),
            self.profiles.state(),
            self.nodes.state(),
            self.pods.state(),
        );
        translate(
            Cluster {
                budgets: &budgets,
                profiles: &profiles,
                nodes: &nodes,
                pods: &pods,
                inventories,
            },
            now,
        )
    }

    /// Whether `node`'s kubelet last reported it Ready, i.e. its machine is up (its GPUs keep whatever
    /// limits they were given even when the agent is gone).
    pub fn machine_up(&self, node: &str) -> bool {
        self.nodes
            .get(&ObjectRef::new(node))
            .is_some_and(|node| reports_ready(&node))
    }

    /// Waits until every cache has completed its first list.
    pub async fn wait_until_ready(&self) -> Result<(), reflector::store::WriterDropped> {
        self.budgets.wait_until_ready().await?;
        self.profiles.wait_until_ready().await?;
        self.nodes.wait_until_ready().await?;
        self.pods.wait_until_ready().await
    }
}

fn reports_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|status| status.conditions.as_ref())
        .is_some_and(|conditions| {
            conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        })
}

fn watch<K>(
    api: Api<K>,
    config: watcher::Config,
    tasks: &mut JoinSet<()>,
    changed: Arc<Notify>,
    metrics: Metrics,
) -> Store<K>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    let (store, writer) = reflector::store();
    let stream = watcher(api, config).default_backoff().reflect(writer);
    tasks.spawn(drive(stream, changed, metrics));
    store
}

async fn drive<K, S>(stream: S, changed: Arc<Notify>, metrics: Metrics)
where
    S: Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send,
{
    let mut stream = std::pin::pin!(stream);
    while let Some(event) = stream.next().await {
        match event {
            Ok(_) => changed.notify_one(),
            Err(error) => {
                metrics.reconcile_errors.with_label_values(&["watch"]).inc();
                tracing::warn!(%error, "watch failed; retrying with backoff");
            }
        }
    }
}

/// Starts the watches on `tasks`; `changed` is notified after every applied event.
pub fn start(
    client: &Client,
    tasks: &mut JoinSet<()>,
    changed: Arc<Notify>,
    metrics: &Metrics,
) -> Caches {
    // NB: only pods bound to a node can hold GPUs; the field selector keeps pending pods out of memory.
    let bound = watcher::Config::default().fields("spec.nodeName!=");
    Caches {
        budgets: watch(
            Api::all(client.clone()),
            watcher::Config::default(),
            tasks,
            changed.clone(),
            metrics.clone(),
        ),
        profiles: watch(
            Api::all(client.clone()),
            watcher::Config::default(),
            tasks,
            changed.clone(),
            metrics.clone(),
        ),
        nodes: watch(
            Api::all(client.clone()),
            watcher::Config::default(),
            tasks,
            changed.clone(),
            metrics.clone(),
        ),
        pods: watch(
            Api::all(client.clone()),
            bound,
            tasks,
            changed,
            metrics.clone(),
        ),
    }
}
