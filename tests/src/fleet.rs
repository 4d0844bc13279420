//! The fault suite's fleet: four simulated GPU nodes in two racks under a row, their agent processes,
//! `kilowatt operator` as a process, and waits for plans to be written and enforced. Process, etcd and
//! Kubernetes IO.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kilowatt_node_agent::gpu::settings_file::StoredSettings;
use kilowatt_operator::plan::published::{KeyLayout, NodePlan};
use kilowatt_operator::store::PlanStore;
use kilowatt_operator::store::etcd::EtcdPlanStore;
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::json;

use crate::{apiserver::*, cluster::*, netns::*, processes::*, waits::*};

pub const PREFIX: &str = "/kilowatt-faults";
pub const GPUS: u32 = 4;
pub const MIN_WATTS: f64 = 200.0;
pub const MAX_WATTS: f64 = 700.0;
pub const OVERHEAD_WATTS: f64 = 500.0;
/// Short, so that fences and lease expiries happen within a test: fence after 1 s, expiry after 2 s.
pub const LEASE_TTL_SECONDS: u64 = 2;
pub const SETTLE: Duration = Duration::from_secs(60);
/// Uncapped, each rack would take 2 × (500 + 4 × 700) = 6600 W and the row 13 200 W.
pub const RACK_CAP_WATTS: f64 = 6000.0;
pub const ROW_CAP_WATTS: f64 = 11_000.0;
/// One simulated GPU node: its agent process (when running) and the file holding its GPUs' settings.
pub struct NodeUnderTest {
    pub name: String,
    pub settings: PathBuf,
    pub log: PathBuf,
    pub etcd_endpoint: String,
    pub netns: Option<String>,
    /// Where the agent serves `/metrics` (inside its network namespace, if it has one).
    pub metrics_address: std::net::SocketAddr,
    /// More `kilowatt-agent` arguments.
    pub extra_args: Vec<String>,
    pub agent: Option<Child>,
}
impl NodeUnderTest {
    pub fn new(name: &str, dir: &Path, etcd_endpoint: &str, netns: Option<&Partitionable>) -> Self {
        NodeUnderTest {
            name: name.to_owned(),
            settings: dir.join(format!("{name}-gpus.json")),
            log: dir.join(format!("{name}-agent.log")),
            etcd_endpoint: netns.map_or_else(|| etcd_endpoint.to_owned(), |n| n.endpoint.clone()),
            netns: netns.map(|n| n.name.clone()),
            metrics_address: std::net::SocketAddr::from(([127, 0, 0, 1], free_port())),
            extra_args: Vec::new(),
            agent: None,
        }
    }

    pub fn start_agent(&mut self) {
        assert!(self.agent.is_none(), "{}: agent already running", self.name);
        let binary = workspace_binary("kilowatt-agent");
        let mut command = match &self.netns {
            Some(netns) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", netns]).arg(binary);
                command
            }
            None => Command::new(binary),
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("agent log");
        let child = command
            .args(["--node", &self.name, "--gpu-backend", "simulated"])
            .args(["--simulated-gpus", &GPUS.to_string()])
            .args(["--simulated-min-watts", &MIN_WATTS.to_string()])
            .args(["--simulated-max-watts", &MAX_WATTS.to_string()])
            .arg("--simulated-settings-file")
            .arg(&self.settings)
            .args(["--etcd-endpoints", &self.etcd_endpoint])
            .args(["--etcd-prefix", PREFIX])
            .args(["--lease-ttl-seconds", &LEASE_TTL_SECONDS.to_string()])
            .args([
                "--drift-check-seconds",
                "1",
                "--sample-ms",
                "200",
                "--report-seconds",
                "1",
            ])
            .args(["--listen", &self.metrics_address.to_string()])
            .args(&self.extra_args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("agent starts");
        self.agent = Some(child);
    }

    pub fn agent(&self) -> &Child {
        self.agent.as_ref().expect("agent running")
    }

    /// SIGKILL: no shutdown path runs; the GPUs keep whatever the agent last set.
    pub fn kill_agent(&mut self) {
        let mut child = self.agent.take().expect("agent running");
        let _ = child.kill();
        let _ = child.wait();
    }

    pub fn limits(&self) -> Vec<f64> {
        StoredSettings::read(&self.settings)
            .map(|s| s.gpus.iter().map(|g| g.power_limit_watts).collect())
            .unwrap_or_default()
    }
}
impl Drop for NodeUnderTest {
    fn drop(&mut self) {
        if let Some(mut child) = self.agent.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
/// `kilowatt operator` as a process, on the admin kubeconfig.
pub struct OperatorProcess {
    pub child: Child,
    pub address: std::net::SocketAddr,
}
impl OperatorProcess {
    /// With a 3 s leader lease, so that a restarted operator leads again within seconds.
    pub fn start(plane: &ControlPlane, etcd_endpoint: &str, log: &Path) -> OperatorProcess {
        Self::start_with_lease(plane, etcd_endpoint, log, 3)
    }

    /// With more `kilowatt operator` arguments.
    pub fn start_with_args(
        plane: &ControlPlane,
        etcd_endpoint: &str,
        log: &Path,
        args: &[String],
    ) -> OperatorProcess {
        Self::spawn(
            &plane.kubeconfig,
            "fault-operator",
            etcd_endpoint,
            log,
            3,
            args,
        )
    }

    pub fn start_with_lease(
        plane: &ControlPlane,
        etcd_endpoint: &str,
        log: &Path,
        lease_seconds: u32,
    ) -> OperatorProcess {
        Self::start_replica(
            &plane.kubeconfig,
            "fault-operator",
            etcd_endpoint,
            log,
            lease_seconds,
        )
    }

    /// A replica named `identity` that reaches the API server through `kubeconfig`.
    pub fn start_replica(
        kubeconfig: &Path,
        identity: &str,
        etcd_endpoint: &str,
        log: &Path,
        lease_seconds: u32,
    ) -> OperatorProcess {
        Self::spawn(kubeconfig, identity, etcd_endpoint, log, lease_seconds, &[])
    }

    fn spawn(
        kubeconfig: &Path,
        identity: &str,
        etcd_endpoint: &str,
        log: &Path,
        lease_seconds: u32,
        args: &[String],
    ) -> OperatorProcess {
        let port = free_port();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("operator log");
        let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let child = Command::new(workspace_binary("kilowatt"))
            .args(["operator", "--listen", &address.to_string()])
            .args(["--etcd-endpoints", etcd_endpoint, "--etcd-prefix", PREFIX])
            .args([
                "--identity",
                identity,
                "--lease-namespace",
                "kilowatt-system",
            ])
            .args(["--lease-seconds", &lease_seconds.to_string()])
            .args(["--debounce-ms", "100", "--resync-seconds", "2"])
            .args(args)
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("operator starts");
        OperatorProcess { child, address }
    }

    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}
impl Drop for OperatorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
pub async fn set_ready(admin: &Client, node: &str, ready: bool) {
    if ready {
        set_ready_condition(admin, node, "True", "KubeletReady").await;
    } else {
        set_ready_condition(admin, node, "Unknown", "NodeStatusUnknown").await;
    }
}
/// Sets the Node's Ready condition as a kubelet (`True`, `False`) or the node lifecycle controller
/// (`Unknown`) would.
pub async fn set_ready_condition(admin: &Client, node: &str, status: &str, reason: &str) {
    let nodes: Api<Node> = Api::all(admin.clone());
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let patch = json!({"status": {"conditions": [{"type": "Ready", "status": status, "reason": reason,
        "message": "set by the fault suite", "lastHeartbeatTime": now, "lastTransitionTime": now}]}});
    within(
        "node Ready condition",
        nodes.patch_status(node, &PatchParams::default(), &Patch::Merge(&patch)),
    )
    .await
    .expect("node status patched");
}
/// Reports a boot ID in the Node's `status.nodeInfo`, as a kubelet does when it starts after a reboot.
pub async fn set_boot_id(admin: &Client, node: &str, boot_id: &str) {
    let nodes: Api<Node> = Api::all(admin.clone());
    let patch = json!({"status": {"nodeInfo": {"bootID": boot_id, "machineID": "", "systemUUID": "",
        "kernelVersion": "", "osImage": "", "containerRuntimeVersion": "", "kubeletVersion": "",
        "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": "amd64"}}});
    within(
        "node boot ID",
        nodes.patch_status(node, &PatchParams::default(), &Patch::Merge(&patch)),
    )
    .await
    .expect("node status patched");
}
pub async fn delete_pod(admin: &Client, name: &str) {
    let pods: Api<Pod> = Api::namespaced(admin.clone(), "ml");
    // NB: with no kubelet to confirm a graceful deletion, only a zero grace period removes the pod.
    within(
        "delete pod",
        pods.delete(name, &DeleteParams::default().grace_period(0)),
    )
    .await
    .expect("pod deleted");
}
pub async fn plan_store(endpoint: &str) -> EtcdPlanStore {
    within(
        "plan etcd",
        EtcdPlanStore::connect(
            &[endpoint.to_owned()],
            KeyLayout::new(PREFIX),
            Duration::from_secs(5),
        ),
    )
    .await
    .expect("plan etcd connects")
}
pub fn planned_limits(plan: &NodePlan) -> Vec<f64> {
    plan.gpus.iter().map(|g| g.power_limit_watts).collect()
}
pub const ALL: [&str; 4] = ["n1", "n2", "n3", "n4"];
/// Whether every listed node's agent acknowledged the plan written for it and its GPUs enforce it
/// (the final state matches the plan); the written plans if so.
pub async fn enforced_plans(
    store: &EtcdPlanStore,
    nodes: &[NodeUnderTest],
    only: &[&str],
) -> Result<BTreeMap<String, NodePlan>, String> {
    let views = store.read_views().await.map_err(|e| e.to_string())?;
    let mut plans = BTreeMap::new();
    for node in nodes.iter().filter(|n| only.contains(&n.name.as_str())) {
        let view = views
            .get(&node.name)
            .ok_or(format!("{}: nothing in etcd", node.name))?;
        let written = view
            .written
            .as_ref()
            .ok_or(format!("{}: no plan", node.name))?;
        let acked = view.ack.as_ref().map(|a| a.revision);
        if acked != Some(written.revision) {
            return Err(format!(
                "{}: revision {} written, {acked:?} acknowledged",
                node.name, written.revision
            ));
        }
        let enforced = node.limits();
        if enforced != planned_limits(written) {
            return Err(format!(
                "{}: enforces {enforced:?}, plan says {:?}",
                node.name,
                planned_limits(written)
            ));
        }
        plans.insert(node.name.clone(), written.clone());
    }
    Ok(plans)
}
/// Waits until [`enforced_plans`] holds and `accept` likes the plans; returns them.
pub async fn settled_where(
    store: &EtcdPlanStore,
    nodes: &[NodeUnderTest],
    only: &[&str],
    what: &str,
    accept: impl Fn(&BTreeMap<String, NodePlan>) -> Result<(), String>,
) -> BTreeMap<String, NodePlan> {
    eventually(what, SETTLE, || async {
        let plans = enforced_plans(store, nodes, only).await?;
        accept(&plans)?;
        Ok(plans)
    })
    .await
}
pub async fn settled(
    store: &EtcdPlanStore,
    nodes: &[NodeUnderTest],
    only: &[&str],
    what: &str,
) -> BTreeMap<String, NodePlan> {
    settled_where(store, nodes, only, what, |_| Ok(())).await
}
/// Accepts plans whose row total is within `cap`.
pub fn row_within(cap: f64) -> impl Fn(&BTreeMap<String, NodePlan>) -> Result<(), String> {
    move |plans| {
        let total = total_watts(plans, &ALL);
        if total <= cap {
            Ok(())
        } else {
            Err(format!("{total} W planned for the row"))
        }
    }
}
/// Waits until the plan written for `node` sets exactly `limits`.
pub async fn written_for(store: &EtcdPlanStore, node: &str, limits: &[f64], what: &str) {
    eventually(what, SETTLE, || async {
        let views = store.read_views().await.map_err(|e| e.to_string())?;
        match views.get(node).and_then(|v| v.written.as_ref()) {
            Some(plan) if planned_limits(plan) == limits => Ok(()),
            other => Err(format!("{:?}", other.map(planned_limits))),
        }
    })
    .await;
}
pub fn total_watts(plans: &BTreeMap<String, NodePlan>, nodes: &[&str]) -> f64 {
    nodes
        .iter()
        .filter_map(|n| plans.get(*n))
        .map(|p| OVERHEAD_WATTS + planned_limits(p).iter().sum::<f64>())
        .sum()
}
/// Four Ready GPU nodes in two racks under a row; n1 and n4 serve, n2 and n3 train one gang.
pub async fn fleet(admin: &Client) {
    for (node, rack) in [("n1", "a"), ("n2", "a"), ("n3", "b"), ("n4", "b")] {
        gpu_node(
            admin,
            node,
            json!({"rack": rack}),
            GPUS,
            "NVIDIA-H100-80GB-HBM3",
        )
        .await;
        set_ready(admin, node, true).await;
    }
    budget(
        admin,
        "row",
        json!({"capWatts": ROW_CAP_WATTS, "nodeOverheadWatts": OVERHEAD_WATTS}),
    )
    .await;
    for rack in ["a", "b"] {
        budget(
            admin,
            &format!("rack-{rack}"),
            json!({"capWatts": RACK_CAP_WATTS, "parent": "row", "nodeOverheadWatts": OVERHEAD_WATTS,
                   "nodeSelector": {"matchLabels": {"rack": rack}}}),
        )
        .await;
    }
    let serving = json!({"kilowatt.dev/workload": "inference"});
    let training = json!({"kilowatt.dev/workload": "training", "kilowatt.dev/job": "t"});
    gpu_pod(admin, "serve-1", "n1", GPUS, serving.clone()).await;
    gpu_pod(admin, "train-2", "n2", GPUS, training.clone()).await;
    gpu_pod(admin, "train-3", "n3", GPUS, training).await;
    gpu_pod(admin, "serve-4", "n4", GPUS, serving).await;
}
