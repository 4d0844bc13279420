//! The fault suite: the operator and node agents as separate processes (`kilowatt operator`,
//! `kilowatt-agent --gpu-backend simulated`) on a real control plane and a real plan etcd, each agent's
//! simulated GPU settings kept in a file as a real GPU keeps them in the device. A sampler thread reads
//! every file many times a second and checks every budget's cap against the sum of limits plus
//! overheads while agents are killed and restarted, cut off in a network namespace, etcd restarts, the
//! operator is killed mid-rollout, a node vanishes, caps are cut mid-rollout and changes flood in.
//!
//! Needs root for the network namespace (`ip netns`), like the machines these tests run on.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kilowatt_crds::PowerBudget;
use kilowatt_node_agent::gpu::settings_file::StoredSettings;
use kilowatt_operator::plan::published::{KeyLayout, NodePlan};
use kilowatt_operator::store::PlanStore;
use kilowatt_operator::store::etcd::EtcdPlanStore;
use kilowatt_tests::{ControlPlane, Etcd, eventually, within};
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::json;

use crate::operator::{budget, gpu_node, gpu_pod, http_get, patch_budget, prepared_cluster};

pub(crate) const PREFIX: &str = "/kilowatt-faults";
const GPUS: u32 = 4;
const MIN_WATTS: f64 = 200.0;
const MAX_WATTS: f64 = 700.0;
const OVERHEAD_WATTS: f64 = 500.0;
/// Short, so that fences and lease expiries happen within a test: fence after 1 s, expiry after 2 s.
const LEASE_TTL_SECONDS: u64 = 2;
const SETTLE: Duration = Duration::from_secs(60);
/// Uncapped, each rack would take 2 × (500 + 4 × 700) = 6600 W and the row 13 200 W.
const RACK_CAP_WATTS: f64 = 6000.0;
const ROW_CAP_WATTS: f64 = 11_000.0;

/// A binary of this workspace, built next to this test's executable (`cargo test --workspace` builds
/// every member's binaries).
pub(crate) fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target directory");
    let binary = dir.join(name);
    assert!(
        binary.exists(),
        "{} is missing; build it first (`cargo build --bins`; `cargo test --workspace` builds it)",
        binary.display()
    );
    binary
}

/// A port free on loopback now (a process started right after binds it).
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

fn kill(child: &Child, signal: &str) {
    let status = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill {signal} {}", child.id());
}

/// A network namespace with a veth link to the host, and a relay on the host side of the link to
/// the plan etcd on loopback; taking the link down cuts everything inside off, as a partition would.
pub(crate) struct Partitionable {
    name: String,
    host_link: String,
    /// `http://<host side>:<relay port>`, the etcd endpoint as seen from inside.
    endpoint: String,
    relay: tokio::task::JoinHandle<()>,
}

fn ip(args: &[&str]) {
    let output = Command::new("ip").args(args).output().expect("ip runs");
    assert!(
        output.status.success(),
        "ip {}: {} (the fault suite needs root and iproute2)",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `ip` for clean-up, where what is being removed may not exist.
fn quietly(args: &[&str]) {
    let _ = Command::new("ip")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

impl Partitionable {
    async fn create(etcd_endpoint: &str) -> Partitionable {
        let id = std::process::id() % 10_000;
        let (name, host_link, inner_link) =
            (format!("kwf{id}"), format!("kwh{id}"), format!("kwn{id}"));
        let subnet = std::process::id() % 250;
        let (host_ip, inner_ip) = (format!("10.231.{subnet}.1"), format!("10.231.{subnet}.2"));
        quietly(&["netns", "del", &name]);
        quietly(&["link", "del", &host_link]);
        ip(&["netns", "add", &name]);
        ip(&[
            "link",
            "add",
            &host_link,
            "type",
            "veth",
            "peer",
            "name",
            &inner_link,
        ]);
        ip(&["link", "set", &inner_link, "netns", &name]);
        ip(&["addr", "add", &format!("{host_ip}/30"), "dev", &host_link]);
        ip(&["link", "set", &host_link, "up"]);
        for args in [
            vec!["addr", "add", &format!("{inner_ip}/30"), "dev", &inner_link],
            vec!["link", "set", &inner_link, "up"],
            vec!["link", "set", "lo", "up"],
        ] {
            let mut full = vec!["netns", "exec", &name, "ip"];
            full.extend(args);
            ip(&full);
        }
        let listener = tokio::net::TcpListener::bind((host_ip.as_str(), 0))
            .await
            .expect("relay binds on the host side of the link");
        let port = listener.local_addr().expect("relay address").port();
        let target = etcd_endpoint.trim_start_matches("http://").to_owned();
        let relay = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                let target = target.clone();
                tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Partitionable {
            name,
            host_link,
            endpoint: format!("http://{host_ip}:{port}"),
            relay,
        }
    }

    fn cut(&self) {
        ip(&["link", "set", &self.host_link, "down"]);
    }

    fn heal(&self) {
        ip(&["link", "set", &self.host_link, "up"]);
    }
}

impl Drop for Partitionable {
    fn drop(&mut self) {
        self.relay.abort();
        quietly(&["link", "del", &self.host_link]);
        quietly(&["netns", "del", &self.name]);
    }
}

/// One simulated GPU node: its agent process (when running) and the file holding its GPUs' settings.
pub(crate) struct NodeUnderTest {
    pub(crate) name: String,
    settings: PathBuf,
    log: PathBuf,
    etcd_endpoint: String,
    netns: Option<String>,
    /// Where the agent serves `/metrics` (inside its network namespace, if it has one).
    pub(crate) metrics_address: std::net::SocketAddr,
    /// More `kilowatt-agent` arguments.
    pub(crate) extra_args: Vec<String>,
    agent: Option<Child>,
}

impl NodeUnderTest {
    pub(crate) fn new(
        name: &str,
        dir: &Path,
        etcd_endpoint: &str,
        netns: Option<&Partitionable>,
    ) -> Self {
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

    pub(crate) fn start_agent(&mut self) {
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

    fn agent(&self) -> &Child {
        self.agent.as_ref().expect("agent running")
    }

    /// SIGKILL: no shutdown path runs; the GPUs keep whatever the agent last set.
    fn kill_agent(&mut self) {
        let mut child = self.agent.take().expect("agent running");
        let _ = child.kill();
        let _ = child.wait();
    }

    fn limits(&self) -> Vec<f64> {
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

/// A budget as the sampler checks it: its cap in force and the nodes under it.
#[derive(Debug, Clone)]
struct CheckedBudget {
    name: &'static str,
    cap_watts: f64,
    nodes: Vec<String>,
}

/// What the sampler found over one stretch of the test.
#[derive(Debug, Default, Clone)]
struct Tally {
    samples: u64,
    /// Double reads that saw a change in between and were taken again.
    retries: u64,
    violations: Vec<String>,
    worst_margin_watts: f64,
}

/// The sampler: a thread that takes consistent snapshots of every powered node's settings file and
/// checks every budget.
struct Sampler {
    budgets: Arc<Mutex<Vec<CheckedBudget>>>,
    /// Nodes whose machines draw power, with their settings files.
    powered: Arc<Mutex<BTreeMap<String, PathBuf>>>,
    tally: Arc<Mutex<Tally>>,
    running: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Every file's sequence and total limit, read twice; `None` if anything changed in between (then
/// there was no single instant at which all the first reads held).
fn snapshot(files: &BTreeMap<String, PathBuf>) -> Option<BTreeMap<String, f64>> {
    let read = || -> Option<BTreeMap<String, (u64, f64)>> {
        files
            .iter()
            .map(|(node, path)| {
                let settings = StoredSettings::read(path).ok()?;
                Some((
                    node.clone(),
                    (settings.sequence, settings.total_limit_watts()),
                ))
            })
            .collect()
    };
    let first = read()?;
    let second = read()?;
    (first == second).then(|| first.into_iter().map(|(n, (_, w))| (n, w)).collect())
}

impl Sampler {
    fn start(budgets: Vec<CheckedBudget>, nodes: &[NodeUnderTest]) -> Sampler {
        let budgets = Arc::new(Mutex::new(budgets));
        let powered: Arc<Mutex<BTreeMap<String, PathBuf>>> = Arc::new(Mutex::new(
            nodes
                .iter()
                .map(|n| (n.name.clone(), n.settings.clone()))
                .collect(),
        ));
        let tally = Arc::new(Mutex::new(Tally {
            worst_margin_watts: f64::INFINITY,
            ..Tally::default()
        }));
        let running = Arc::new(AtomicBool::new(true));
        let thread = {
            let (budgets, powered, tally, running) = (
                budgets.clone(),
                powered.clone(),
                tally.clone(),
                running.clone(),
            );
            std::thread::spawn(move || {
                while running.load(Ordering::Relaxed) {
                    let files = powered.lock().expect("powered").clone();
                    let checked = budgets.lock().expect("budgets").clone();
                    let Some(totals) = snapshot(&files) else {
                        tally.lock().expect("tally").retries += 1;
                        continue;
                    };
                    let mut tally = tally.lock().expect("tally");
                    tally.samples += 1;
                    for budget in &checked {
                        let carried: f64 = budget
                            .nodes
                            .iter()
                            .filter_map(|n| totals.get(n))
                            .map(|gpus| gpus + OVERHEAD_WATTS)
                            .sum();
                        let margin = budget.cap_watts - carried;
                        tally.worst_margin_watts = tally.worst_margin_watts.min(margin);
                        if margin < -1e-6 {
                            tally.violations.push(format!(
                                "{}: {carried} W over its {} W cap ({totals:?})",
                                budget.name, budget.cap_watts
                            ));
                        }
                    }
                    drop(tally);
                    std::thread::sleep(Duration::from_millis(2));
                }
            })
        };
        Sampler {
            budgets,
            powered,
            tally,
            running,
            thread: Some(thread),
        }
    }

    fn set_cap(&self, budget: &str, watts: f64) {
        for b in self.budgets.lock().expect("budgets").iter_mut() {
            if b.name == budget {
                b.cap_watts = watts;
            }
        }
    }

    /// The machine is off: it draws nothing from now on.
    fn power_off(&self, node: &str) {
        self.powered.lock().expect("powered").remove(node);
    }

    /// Ends a stretch, at least half a second after the last change: prints and checks what was sampled
    /// since the last one.
    async fn stretch(&self, what: &str) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let tally = std::mem::replace(
            &mut *self.tally.lock().expect("tally"),
            Tally {
                worst_margin_watts: f64::INFINITY,
                ..Tally::default()
            },
        );
        // NB: written to stderr directly, not through the test harness's capture, so that every run's
        // output shows how much was checked.
        let _ = writeln!(
            std::io::stderr(),
            "fault suite, {what}: {} samples checked ({} re-read), {} violations, smallest headroom {:.1} W",
            tally.samples,
            tally.retries,
            tally.violations.len(),
            tally.worst_margin_watts
        );
        assert!(tally.samples > 50, "{what}: only {} samples", tally.samples);
        assert!(
            tally.violations.is_empty(),
            "{what}: {:?}",
            &tally.violations[..tally.violations.len().min(5)]
        );
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.running.store(false, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// `kilowatt operator` as a process, on the admin kubeconfig.
pub(crate) struct OperatorProcess {
    child: Child,
    pub(crate) address: std::net::SocketAddr,
}

impl OperatorProcess {
    /// With a 3 s leader lease, so that a restarted operator leads again within seconds.
    pub(crate) fn start(plane: &ControlPlane, etcd_endpoint: &str, log: &Path) -> OperatorProcess {
        Self::start_with_lease(plane, etcd_endpoint, log, 3)
    }

    pub(crate) fn start_with_lease(
        plane: &ControlPlane,
        etcd_endpoint: &str,
        log: &Path,
        lease_seconds: u32,
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
                "fault-operator",
                "--lease-namespace",
                "kilowatt-system",
            ])
            .args(["--lease-seconds", &lease_seconds.to_string()])
            .args(["--debounce-ms", "100", "--resync-seconds", "2"])
            .env("KUBECONFIG", &plane.kubeconfig)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("operator starts");
        OperatorProcess { child, address }
    }

    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn set_ready(admin: &Client, node: &str, ready: bool) {
    let nodes: Api<Node> = Api::all(admin.clone());
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let (status, reason) = if ready {
        ("True", "KubeletReady")
    } else {
        ("Unknown", "NodeStatusUnknown")
    };
    let patch = json!({"status": {"conditions": [{"type": "Ready", "status": status, "reason": reason,
        "message": "set by the fault suite", "lastHeartbeatTime": now, "lastTransitionTime": now}]}});
    within(
        "node Ready condition",
        nodes.patch_status(node, &PatchParams::default(), &Patch::Merge(&patch)),
    )
    .await
    .expect("node status patched");
}

async fn delete_pod(admin: &Client, name: &str) {
    let pods: Api<Pod> = Api::namespaced(admin.clone(), "ml");
    // NB: with no kubelet to confirm a graceful deletion, only a zero grace period removes the pod.
    within(
        "delete pod",
        pods.delete(name, &DeleteParams::default().grace_period(0)),
    )
    .await
    .expect("pod deleted");
}

pub(crate) async fn plan_store(endpoint: &str) -> EtcdPlanStore {
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

fn planned_limits(plan: &NodePlan) -> Vec<f64> {
    plan.gpus.iter().map(|g| g.power_limit_watts).collect()
}

pub(crate) const ALL: [&str; 4] = ["n1", "n2", "n3", "n4"];

/// Whether every listed node's agent acknowledged the plan written for it and its GPUs enforce it
/// (the final state matches the plan); the written plans if so.
async fn enforced_plans(
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
async fn settled_where(
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

pub(crate) async fn settled(
    store: &EtcdPlanStore,
    nodes: &[NodeUnderTest],
    only: &[&str],
    what: &str,
) -> BTreeMap<String, NodePlan> {
    settled_where(store, nodes, only, what, |_| Ok(())).await
}

/// Accepts plans whose row total is within `cap`.
fn row_within(cap: f64) -> impl Fn(&BTreeMap<String, NodePlan>) -> Result<(), String> {
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
async fn written_for(store: &EtcdPlanStore, node: &str, limits: &[f64], what: &str) {
    eventually(what, SETTLE, || async {
        let views = store.read_views().await.map_err(|e| e.to_string())?;
        match views.get(node).and_then(|v| v.written.as_ref()) {
            Some(plan) if planned_limits(plan) == limits => Ok(()),
            other => Err(format!("{:?}", other.map(planned_limits))),
        }
    })
    .await;
}

fn total_watts(plans: &BTreeMap<String, NodePlan>, nodes: &[&str]) -> f64 {
    nodes
        .iter()
        .filter_map(|n| plans.get(*n))
        .map(|p| OVERHEAD_WATTS + planned_limits(p).iter().sum::<f64>())
        .sum()
}

/// Four Ready GPU nodes in two racks under a row; n1 and n4 serve, n2 and n3 train one gang.
pub(crate) async fn fleet(admin: &Client) {
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

fn checked_budgets() -> Vec<CheckedBudget> {
    let names = |ns: &[&str]| ns.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>();
    vec![
        CheckedBudget {
            name: "row",
            cap_watts: ROW_CAP_WATTS,
            nodes: names(&["n1", "n2", "n3", "n4"]),
        },
        CheckedBudget {
            name: "rack-a",
            cap_watts: RACK_CAP_WATTS,
            nodes: names(&["n1", "n2"]),
        },
        CheckedBudget {
            name: "rack-b",
            cap_watts: RACK_CAP_WATTS,
            nodes: names(&["n3", "n4"]),
        },
    ]
}

/// A fresh directory for the settings files and the processes' logs; kept when the test fails.
pub(crate) fn test_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kilowatt-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("test directory");
    let _ = writeln!(
        std::io::stderr(),
        "{name}: agent, operator and other process logs in {}",
        dir.display()
    );
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn agents_killed_cut_off_and_vanished_and_an_etcd_restart_never_exceed_a_cap() {
    let (plane, admin) = prepared_cluster().await;
    let mut etcd = Etcd::start().await.expect("plan etcd starts");
    let netns = Partitionable::create(&etcd.endpoint).await;
    let dir = test_dir("faults-agents");
    fleet(&admin).await;
    let mut nodes: Vec<NodeUnderTest> = ["n1", "n2", "n3", "n4"]
        .iter()
        .map(|n| NodeUnderTest::new(n, &dir, &etcd.endpoint, (*n == "n4").then_some(&netns)))
        .collect();
    for node in &mut nodes {
        node.start_agent();
    }
    let operator = OperatorProcess::start(&plane, &etcd.endpoint, &dir.join("operator.log"));
    let store = plan_store(&etcd.endpoint).await;
    let first = settled(&store, &nodes, &ALL, "first plan enforced everywhere").await;
    assert!(total_watts(&first, &ALL) <= ROW_CAP_WATTS);
    let sampler = Sampler::start(checked_budgets(), &nodes);
    tokio::time::sleep(Duration::from_secs(1)).await;
    sampler.stretch("steady state").await;

    // 1. n1's agent is SIGKILLed, then n1's work ends: its GPUs should go to their floors and n2 may
    //    take the watts — but only once n1 has actually lowered, which a dead agent cannot do.
    let n1_before: f64 = nodes[0].limits().iter().sum();
    nodes[0].kill_agent();
    delete_pod(&admin, "serve-1").await;
    let floors = vec![MIN_WATTS; GPUS as usize];
    written_for(&store, "n1", &floors, "n1's floors written").await;
    // Well past the lease's expiry, n1 (Ready, so its machine is up) still counts at what it
    // acknowledged, and its GPUs still hold it.
    tokio::time::sleep(Duration::from_secs(3 * LEASE_TTL_SECONDS)).await;
    assert_eq!(nodes[0].limits().iter().sum::<f64>(), n1_before);
    let views = store.read_views().await.expect("views");
    assert!(views["n1"].inventory.is_none(), "n1's lease has expired");
    sampler
        .stretch("n1's agent killed, its work gone, n1 still up")
        .await;
    nodes[0].start_agent();
    let after_restart = settled(&store, &nodes, &ALL, "n1's agent restarted, plan enforced").await;
    assert_eq!(planned_limits(&after_restart["n1"]), floors);
    sampler.stretch("n1's agent restarted and reconciled").await;

    // 2. n4 is cut off in its network namespace; its kubelet is cut off too, so its Node goes
    //    Unknown. Its agent must fence to the floors by itself.
    netns.cut();
    set_ready(&admin, "n4", false).await;
    eventually(
        "n4 fenced to its floors",
        Duration::from_secs(10),
        || async {
            let limits = nodes[3].limits();
            if limits == floors {
                Ok(())
            } else {
                Err(format!("{limits:?}"))
            }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2 * LEASE_TTL_SECONDS)).await;
    sampler.stretch("n4 partitioned").await;
    netns.heal();
    set_ready(&admin, "n4", true).await;
    settled(&store, &nodes, &ALL, "n4 rejoined, plan enforced").await;
    sampler.stretch("n4 rejoined").await;

    // 3. The plan etcd restarts: every agent fences, then all reconcile.
    etcd.stop();
    eventually(
        "every agent fenced while etcd is down",
        Duration::from_secs(10),
        || async {
            let unfenced: Vec<&str> = nodes
                .iter()
                .filter(|n| n.limits() != floors)
                .map(|n| n.name.as_str())
                .collect();
            if unfenced.is_empty() {
                Ok(())
            } else {
                Err(format!("{unfenced:?}"))
            }
        },
    )
    .await;
    etcd.restart().await.expect("plan etcd restarts");
    settled(
        &store,
        &nodes,
        &ALL,
        "after the etcd restart, plan enforced",
    )
    .await;
    sampler.stretch("etcd restarted").await;

    // 4. n3 vanishes for good: its machine powers off with its agent, and its Node goes Unknown.
    sampler.power_off("n3");
    nodes[2].kill_agent();
    set_ready(&admin, "n3", false).await;
    // The taint manager evicts the pods of an unreachable node (after 5 minutes by default).
    delete_pod(&admin, "train-3").await;
    written_for(&store, "n3", &floors, "n3 planned at its floors").await;
    let survivors = ["n1", "n2", "n4"];
    let last = settled(
        &store,
        &nodes,
        &survivors,
        "n3 gone, plan enforced on the rest",
    )
    .await;
    sampler.stretch("n3 vanished").await;
    let n3_floors = OVERHEAD_WATTS + f64::from(GPUS) * MIN_WATTS;
    assert!(total_watts(&last, &survivors) + n3_floors <= ROW_CAP_WATTS);

    drop(sampler);
    operator.kill();
    drop(nodes);
    let _ = std::fs::remove_dir_all(&dir);
    drop(netns);
    let _ = plane;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn an_operator_killed_mid_rollout_a_cut_in_flight_and_a_flood_of_changes_never_exceed_a_cap()
{
    let (plane, admin) = prepared_cluster().await;
    let etcd = Etcd::start().await.expect("plan etcd starts");
    let dir = test_dir("faults-operator");
    fleet(&admin).await;
    let mut nodes: Vec<NodeUnderTest> = ["n1", "n2", "n3", "n4"]
        .iter()
        .map(|n| NodeUnderTest::new(n, &dir, &etcd.endpoint, None))
        .collect();
    for node in &mut nodes {
        node.start_agent();
    }
    let operator_log = dir.join("operator.log");
    let operator = OperatorProcess::start(&plane, &etcd.endpoint, &operator_log);
    let store = plan_store(&etcd.endpoint).await;
    settled(&store, &nodes, &ALL, "first plan enforced everywhere").await;
    let sampler = Sampler::start(checked_budgets(), &nodes);
    tokio::time::sleep(Duration::from_secs(1)).await;
    sampler.stretch("steady state").await;

    // The agents' measured power reaches PowerBudget status: 16 idle simulated GPUs at 70 W each
    // plus four 500 W node overheads.
    let budgets: Api<PowerBudget> = Api::all(admin.clone());
    eventually("measured power in the row's status", SETTLE, || async {
        let row = budgets.get("row").await.map_err(|e| e.to_string())?;
        let measured = row.status.and_then(|s| s.measured_watts);
        if measured == Some(3120.0) {
            Ok(())
        } else {
            Err(format!("measuredWatts {measured:?}"))
        }
    })
    .await;
    let (status, metrics) = http_get(operator.address, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains("kilowatt_budget_measured_watts{budget=\"row\"} 3120"),
        "{metrics}"
    );

    // 1. n1's agent is stopped (SIGSTOP) so the rollout that frees its watts sticks between its two
    //    phases; the operator is killed there, n1 resumes and lowers while no operator runs, and a new
    //    operator process finishes the rollout.
    kill(nodes[0].agent(), "-STOP");
    delete_pod(&admin, "serve-1").await;
    let floors = vec![MIN_WATTS; GPUS as usize];
    written_for(&store, "n1", &floors, "phase one written: n1 to its floors").await;
    operator.kill();
    kill(nodes[0].agent(), "-CONT");
    eventually("n1 lowered with no operator running", SETTLE, || async {
        let limits = nodes[0].limits();
        if limits == floors {
            Ok(())
        } else {
            Err(format!("{limits:?}"))
        }
    })
    .await;
    let operator = OperatorProcess::start(&plane, &etcd.endpoint, &operator_log);
    let finished = settled(
        &store,
        &nodes,
        &ALL,
        "the restarted operator finished the rollout",
    )
    .await;
    assert_eq!(planned_limits(&finished["n1"]), floors);
    sampler
        .stretch("operator killed mid-rollout and restarted")
        .await;

    // 2. A rollout is in flight (n1's work is back) when the row's cap is cut by 40 %. Until every
    //    agent has acknowledged the cut, the hardware answers to the old cap; then to the new one.
    let cut = ROW_CAP_WATTS * 0.6;
    gpu_pod(
        &admin,
        "serve-1",
        "n1",
        GPUS,
        json!({"kilowatt.dev/workload": "inference"}),
    )
    .await;
    patch_budget(&admin, "row", json!({"capWatts": cut})).await;
    let after_cut = settled_where(&store, &nodes, &ALL, "the cut enforced", row_within(cut)).await;
    sampler.set_cap("row", cut);
    tokio::time::sleep(Duration::from_secs(1)).await;
    sampler.stretch("40 % cut during a rollout").await;
    assert!(
        after_cut["n1"].gpus.iter().any(|g| g.pod.is_some()),
        "serve-1 is planned again"
    );

    // 3. A flood: the row's cap changes 40 times, 0-240 ms apart, between the cut and the full cap.
    //    While it lasts the hardware answers to the higher; once the last (the cut) is acknowledged,
    //    to it.
    sampler.set_cap("row", ROW_CAP_WATTS);
    let revision_before = store.load().await.expect("plan").version;
    for i in 0..40u64 {
        let cap = if i % 2 == 0 { ROW_CAP_WATTS } else { cut };
        patch_budget(&admin, "row", json!({"capWatts": cap})).await;
        // Gaps of 0 to 240 ms: some changes coalesce within the operator's debounce, some do not.
        tokio::time::sleep(Duration::from_millis(60 * (i % 5))).await;
    }
    settled_where(
        &store,
        &nodes,
        &ALL,
        "the flood's last cap enforced",
        row_within(cut),
    )
    .await;
    sampler.set_cap("row", cut);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let published = store.load().await.expect("plan").version - revision_before;
    let _ = writeln!(
        std::io::stderr(),
        "fault suite, flood: 40 cap changes gave {published} plan revisions"
    );
    sampler.stretch("a flood of 40 cap changes").await;

    drop(sampler);
    drop(operator);
    drop(nodes);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = plane;
}
