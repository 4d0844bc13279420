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
use crate::plan::rollout::Machine;
use crate::plan::translate::{Cluster, NodeHold, Translation, translate};
use crate::signals::{self, ForecastBoard, ProgramBoard, openadr};

/// Read handles on the caches.
#[derive(Clone)]
pub struct Caches {
    pub budgets: Store<PowerBudget>,
    pub profiles: Store<WorkloadProfile>,
    pub nodes: Store<Node>,
    pub pods: Store<Pod>,
    /// How long before a schedule window opens its cap is planned.
    pub window_lead: std::time::Duration,
    /// What the forecast poller knows of budgets' carbon forecasts.
    pub forecasts: ForecastBoard,
    /// What the VEN heard of budgets' OpenADR programs.
    pub programs: ProgramBoard,
}

impl Caches {
    /// The cluster as cached now, with the agents' GPU inventories and the budgets' carbon forecasts,
    /// translated at `now`.
    pub fn translate(
        &self,
        now: Timestamp,
        inventories: &BTreeMap<String, Inventory>,
        holds: &BTreeMap<String, NodeHold>,
    ) -> Translation {
        let (budgets, profiles, nodes, pods) = (
            self.budgets.state(),
            self.profiles.state(),
            self.nodes.state(),
            self.pods.state(),
        );
        let programs = self.programs.snapshot();
        // Known events' caps join the budgets' schedules before translation, where schedules apply.
        let scheduled = openadr::with_event_windows(&budgets, &programs);
        let mut translation = translate(
            Cluster {
                budgets: &scheduled,
                profiles: &profiles,
                nodes: &nodes,
                pods: &pods,
                inventories,
                holds,
                window_lead: self.window_lead,
            },
            now,
        );
        signals::apply(&mut translation, &budgets, &self.forecasts.snapshot(), now);
        openadr::apply(&mut translation, &budgets, &programs, now);
        translation
    }

    /// What the Node says about `node`'s machine: up unless the Node is gone or its Ready condition
    /// is Unknown (its kubelet stopped reporting); a kubelet reporting Ready=False runs on a machine
    /// whose GPUs keep whatever limits they were given.
    pub fn machine(&self, node: &str) -> Machine {
        self.nodes
            .get(&ObjectRef::new(node))
            .map_or_else(Machine::default, |node| machine_of(&node))
    }

    /// Waits until every cache has completed its first list.
    pub async fn wait_until_ready(&self) -> Result<(), reflector::store::WriterDropped> {
        self.budgets.wait_until_ready().await?;
        self.profiles.wait_until_ready().await?;
        self.nodes.wait_until_ready().await?;
        self.pods.wait_until_ready().await
    }
}

/// The machine of an existing Node: down only when the kubelet's Ready condition is Unknown.
pub fn machine_of(node: &Node) -> Machine {
    let status = node.status.as_ref();
    let unknown = status
        .and_then(|status| status.conditions.as_ref())
        .is_some_and(|conditions| {
            conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "Unknown")
        });
    Machine {
        up: !unknown,
        boot_id: status
            .and_then(|status| status.node_info.as_ref())
            .map(|info| info.boot_id.clone())
            .filter(|boot| !boot.is_empty()),
    }
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
    window_lead: std::time::Duration,
) -> Caches {
    // NB: only pods bound to a node can hold GPUs; the field selector keeps pending pods out of memory.
    let bound = watcher::Config::default().fields("spec.nodeName!=");
    Caches {
        window_lead,
        forecasts: ForecastBoard::default(),
        programs: ProgramBoard::default(),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn node_with(ready: Option<(&str, &str)>) -> Node {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n1"},
            "status": {
                "nodeInfo": {"bootID": "boot-7", "machineID": "", "systemUUID": "", "kernelVersion": "",
                             "osImage": "", "containerRuntimeVersion": "", "kubeletVersion": "",
                             "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": "amd64"},
                "conditions": ready.map(|(status, reason)| vec![serde_json::json!(
                    {"type": "Ready", "status": status, "reason": reason})]).unwrap_or_default(),
            }
        }))
        .expect("a Node")
    }

    #[test]
    fn only_an_unknown_ready_condition_means_the_machine_is_down() {
        let up = |ready| machine_of(&node_with(ready)).up;
        assert!(up(Some(("True", "KubeletReady"))));
        assert!(
            up(Some(("False", "ContainerRuntimeUnhealthy"))),
            "a kubelet that reports runs on a machine that is up"
        );
        assert!(up(None), "a Node not yet reporting Ready is counted as up");
        assert!(!up(Some(("Unknown", "NodeStatusUnknown"))));
        assert_eq!(
            machine_of(&node_with(None)).boot_id.as_deref(),
            Some("boot-7")
        );
    }
}
