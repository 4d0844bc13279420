//! The control loop at fleet scale: a real kube-apiserver and etcd, `KILOWATT_SCALE_NODES` Node objects
//! (default 20, the CI smoke size; the benchmark in BENCHMARKS.md uses 1000) with 8 GPUs and 3 managed
//! pods each, one in-process agent per node (simulated GPUs) on a separate plan etcd, and the operator
//! as its own process. Measures, for a 20 % cut of the facility cap and for the raise back, the time
//! from the PowerBudget update to each agent's acknowledgement of its new plan (p50, p99, max; from an
//! etcd watch), the API server writes and the plan etcd's requests per second at steady state, and the
//! operator's CPU and RSS. A second test runs two operator replicas on one prefix over 150 such nodes
//! and floods the facility cap with changes while the leader is killed, sampling what every agent's
//! GPUs enforce against every cap.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

use futures::{StreamExt, stream};
use kilowatt_agent_core::gpu::simulated::SimulatedGpus;
use kilowatt_agent_core::telemetry::Telemetry;
use kilowatt_node_agent::agent;
use kilowatt_operator::store::PlanStore;
use kilowatt_operator::store::etcd::EtcdPlanStore;
use kilowatt_tests::*;
use kilowatt_tests::{Etcd, eventually, within};
use serde_json::json;

const NODES_PER_RACK: usize = 20;
const GPUS: u32 = 8;
const OVERHEAD_WATTS: f64 = 500.0;

fn node_count() -> usize {
    std::env::var("KILOWATT_SCALE_NODES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
}

fn node_name(i: usize) -> String {
    format!("gpu-{i:04}")
}

/// Every acknowledgement written to the plan etcd while it runs, with the instant it arrived, from a
/// watch on the node keys: exact to the watch's delivery, however long reading the whole fleet's keys
/// takes.
struct AcknowledgementWatch {
    seen: std::sync::Arc<std::sync::Mutex<Vec<(String, u64, Instant)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl AcknowledgementWatch {
    async fn start(endpoint: &str) -> AcknowledgementWatch {
        let keys = kilowatt_crds::plan::KeyLayout::new(PREFIX);
        let prefix = keys.node_prefix();
        let mut client = within(
            "etcd client",
            etcd_client::Client::connect([endpoint], None),
        )
        .await
        .expect("etcd client");
        let mut stream = within(
            "watch",
            client.watch(
                prefix.as_str(),
                Some(etcd_client::WatchOptions::new().with_prefix()),
            ),
        )
        .await
        .expect("watch starts");
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let record = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok(Some(response)) = stream.message().await {
                let at = Instant::now();
                for event in response.events() {
                    let Some(kv) = event.kv() else { continue };
                    let Some(node) = kv
                        .key_str()
                        .ok()
                        .and_then(|k| k.strip_prefix(&prefix))
                        .and_then(|rest| rest.strip_suffix("/ack"))
                    else {
                        continue;
                    };
                    if let Ok(ack) =
                        serde_json::from_slice::<kilowatt_crds::plan::Acknowledgement>(kv.value())
                    {
                        record.lock().expect("acknowledgements").push((
                            node.to_owned(),
                            ack.revision,
                            at,
                        ));
                    }
                }
            }
        });
        AcknowledgementWatch { seen, task }
    }

    /// How long after `since` each node's agent acknowledged the revision `acknowledged` names for it.
    fn times(&self, acknowledged: &BTreeMap<String, u64>, since: Instant) -> Vec<Duration> {
        let seen = self.seen.lock().expect("acknowledgements");
        let mut times: Vec<Duration> = acknowledged
            .iter()
            .map(|(node, revision)| {
                seen.iter()
                    .find(|(n, r, _)| n == node && r == revision)
                    .map(|(_, _, at)| at.saturating_duration_since(since))
                    .unwrap_or_else(|| {
                        panic!("the watch missed {node}'s acknowledgement of {revision}")
                    })
            })
            .collect();
        times.sort();
        times
    }
}

/// Waits until every node's agent has acknowledged the plan written for it, of revision `revision` or
/// later; returns the revision each acknowledged.
async fn all_acknowledged(
    store: &EtcdPlanStore,
    nodes: usize,
    revision: u64,
    limit: Duration,
) -> BTreeMap<String, u64> {
    let started = Instant::now();
    let mut acknowledged: BTreeMap<String, u64> = BTreeMap::new();
    while acknowledged.len() < nodes && started.elapsed() < limit {
        let views = store.read_views().await.expect("views");
        acknowledged = views
            .into_iter()
            .filter_map(|(node, view)| match (&view.written, &view.ack) {
                (Some(w), Some(a)) if a.revision == w.revision && w.revision >= revision => {
                    Some((node, a.revision))
                }
                _ => None,
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        acknowledged.len(),
        nodes,
        "only {} of {nodes} agents acknowledged within {limit:?}",
        acknowledged.len()
    );
    acknowledged
}

impl Drop for AcknowledgementWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index]
}

/// Mutating requests (POST, PUT, PATCH, APPLY, DELETE) the API server has served so far, by resource
/// and subresource, from its own metrics.
async fn apiserver_writes(client: &kube::Client) -> BTreeMap<String, f64> {
    let request = http::Request::get("/metrics")
        .body(Vec::new())
        .expect("request");
    let text = client
        .request_text(request)
        .await
        .expect("apiserver metrics");
    let label = |line: &str, name: &str| -> String {
        line.split(&format!("{name}=\""))
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap_or("")
            .to_owned()
    };
    let mut writes: BTreeMap<String, f64> = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
    {
        if !["POST", "PUT", "PATCH", "APPLY", "DELETE"].contains(&label(line, "verb").as_str()) {
            continue;
        }
        let subresource = label(line, "subresource");
        let key = if subresource.is_empty() {
            label(line, "resource")
        } else {
            format!("{}/{subresource}", label(line, "resource"))
        };
        let count: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        *writes.entry(key).or_default() += count;
    }
    writes
}

/// Unary gRPC requests the plan etcd has answered so far, by method (`Range`, `Txn`, `Put`, …), and
/// `sentBytes`, the bytes it sent to its clients, from its own metrics.
async fn etcd_counters(endpoint: &str) -> BTreeMap<String, f64> {
    let address: std::net::SocketAddr = endpoint
        .trim_start_matches("http://")
        .parse()
        .expect("etcd address");
    let (status, text) = http_exchange(
        address,
        "GET /metrics HTTP/1.1\r\nHost: etcd\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "etcd metrics");
    let value = |line: &str| -> f64 {
        line.rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    let mut counters: BTreeMap<String, f64> = BTreeMap::new();
    for line in text.lines() {
        if line.starts_with("grpc_server_handled_total{") && line.contains("grpc_type=\"unary\"") {
            let method = line
                .split("grpc_method=\"")
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .unwrap_or("")
                .to_owned();
            *counters.entry(method).or_default() += value(line);
        } else if line.starts_with("etcd_network_client_grpc_sent_bytes_total ") {
            counters.insert("sentBytes".to_owned(), value(line));
        }
    }
    counters
}

/// The fleet of `nodes` nodes in racks of [`NODES_PER_RACK`] under the budget `facility`, capped at
/// `full_cap` (each rack at 6000 W a node): per node, a 4-GPU member of a training gang spanning the
/// rack's nodes, and two 2-GPU inference services.
async fn create_fleet(admin: &kube::Client, nodes: usize, full_cap: f64) {
    let racks = nodes.div_ceil(NODES_PER_RACK);
    budget(
        admin,
        "facility",
        json!({"capWatts": full_cap, "nodeOverheadWatts": OVERHEAD_WATTS}),
    )
    .await;
    for rack in 0..racks {
        budget(
            admin,
            &format!("rack-{rack}"),
            json!({"capWatts": NODES_PER_RACK as f64 * 6000.0, "parent": "facility",
                   "nodeOverheadWatts": OVERHEAD_WATTS,
                   "nodeSelector": {"matchLabels": {"rack": rack.to_string()}}}),
        )
        .await;
    }
    stream::iter(0..nodes)
        .for_each_concurrent(16, |i| {
            let admin = admin.clone();
            async move {
                let node = node_name(i);
                let rack = (i / NODES_PER_RACK).to_string();
                gpu_node(&admin, &node, json!({"rack": rack}), GPUS, "NVIDIA-H100-80GB-HBM3").await;
                gpu_pod(&admin, &format!("train-{i}"), &node, 4,
                    json!({"kilowatt.dev/workload": "training", "kilowatt.dev/job": format!("gang-{rack}")})).await;
                for s in 0..2 {
                    gpu_pod(&admin, &format!("serve-{i}-{s}"), &node, 2,
                        json!({"kilowatt.dev/workload": "inference"})).await;
                }
            }
        })
        .await;
}

/// One in-process agent per node on the plan etcd at `endpoint`, until `stopped` flips; returns each
/// node's GPUs (for the test to read) and the agents' tasks.
fn start_agents(
    nodes: usize,
    endpoint: &str,
    stopped: &tokio::sync::watch::Receiver<bool>,
) -> (Vec<SharedGpus>, Vec<tokio::task::JoinHandle<()>>) {
    let mut gpus = Vec::new();
    let mut agents = Vec::new();
    for i in 0..nodes {
        let node = node_name(i);
        let options = agent::AgentOptions {
            sample_period: Duration::from_secs(1),
            drift_check: Duration::from_secs(10),
            report_period: Duration::from_secs(10),
            ..agent_options(&node, endpoint, PREFIX, Duration::from_secs(10))
        };
        let shared = SharedGpus(std::sync::Arc::new(std::sync::Mutex::new(
            SimulatedGpus::uniform(&node, GPUS, "H100-SXM", 200.0, 700.0, None),
        )));
        gpus.push(shared.clone());
        let mut stopped = stopped.clone();
        agents.push(tokio::spawn(async move {
            let telemetry = Telemetry::new().expect("telemetry");
            agent::run(Box::new(shared), options, telemetry, async move {
                let _ = stopped.changed().await;
            })
            .await
            .expect("agent runs");
        }));
    }
    (gpus, agents)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cap_cut_and_raise_reach_every_agent_of_the_fleet() {
    let nodes = node_count();
    let (plane, admin) = prepared_cluster().await;
    let etcd = Etcd::start().await.expect("plan etcd starts");
    let dir = test_dir("scale");
    // Uncapped: 500 + 8 × 700 = 6100 W per node.
    let full_cap = nodes as f64 * 5000.0;
    let created = Instant::now();
    create_fleet(&admin, nodes, full_cap).await;
    let setup = created.elapsed();

    let (stop, stopped) = tokio::sync::watch::channel(false);
    let (_, agents) = start_agents(nodes, &etcd.endpoint, &stopped);
    // The default 15 s leader lease: the steady-state writes are then what a real deployment causes.
    let operator =
        OperatorProcess::start_with_lease(&plane, &etcd.endpoint, &dir.join("operator.log"), 15);
    let store = plan_store(&etcd.endpoint).await;
    let first =
        plan_revision_with_cap(&store, "facility", full_cap, Duration::from_secs(120)).await;
    let start = Instant::now();
    all_acknowledged(&store, nodes, first, Duration::from_secs(300)).await;
    let settled = start.elapsed();

    // Steady state: every agent has reported its power once (so budget statuses hold measured power)
    // and a resync pass has written them; then what the operator causes with nothing changing.
    eventually(
        "every agent reported its power",
        Duration::from_secs(120),
        || async {
            let views = store.read_views().await.map_err(|e| e.to_string())?;
            let reported = views.values().filter(|v| v.power.is_some()).count();
            if reported == nodes {
                Ok(())
            } else {
                Err(format!("{reported} of {nodes}"))
            }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let window = Duration::from_secs(30);
    let (writes_before, etcd_before, (cpu_before, _)) = (
        apiserver_writes(&admin).await,
        etcd_counters(&etcd.endpoint).await,
        cpu_and_rss(operator.pid()),
    );
    tokio::time::sleep(window).await;
    let (writes_after, etcd_after, (cpu_after, rss)) = (
        apiserver_writes(&admin).await,
        etcd_counters(&etcd.endpoint).await,
        cpu_and_rss(operator.pid()),
    );
    let etcd_rate = |counter: &str| {
        (etcd_after.get(counter).copied().unwrap_or(0.0)
            - etcd_before.get(counter).copied().unwrap_or(0.0))
            / window.as_secs_f64()
    };
    let (ranges, txns, puts, sent) = (
        etcd_rate("Range"),
        etcd_rate("Txn"),
        etcd_rate("Put"),
        etcd_rate("sentBytes"),
    );
    // With nothing changing, the operator publishes nothing and reads the node keys once per pass
    // (a 2 s resync here); the agents write one power report per node per 10 s.
    assert_eq!(txns, 0.0, "the operator published at steady state");
    assert!(ranges <= 1.0, "{ranges:.2} etcd reads/s at steady state");
    assert!(
        puts <= nodes as f64 / 10.0 * 1.5,
        "{puts:.2} etcd writes/s from {nodes} agents reporting every 10 s"
    );
    let by_resource: BTreeMap<String, f64> = writes_after
        .iter()
        .map(|(r, after)| {
            (
                r.clone(),
                after - writes_before.get(r).copied().unwrap_or(0.0),
            )
        })
        .filter(|(_, n)| *n > 0.0)
        .collect();
    let writes_per_second = by_resource.values().sum::<f64>() / window.as_secs_f64();
    let operator_cpu = (cpu_after - cpu_before) / window.as_secs_f64();
    // No API write per telemetry tick: with every agent reporting every 10 s, per-report status writes
    // would be nodes / 10 per second; what remains is the leader's Lease renewals.
    assert!(
        writes_per_second < 1.0,
        "{writes_per_second:.2} API-server writes/s at steady state: {by_resource:?}"
    );

    let mut report = vec![format!(
        "scale: {nodes} nodes, {} GPUs, {} pods; objects created in {setup:?}; every agent acknowledged the first plan {settled:?} after it was written (polled)",
        nodes * GPUS as usize,
        nodes * 3
    )];
    report.push(format!(
        "scale: steady state over {window:?}: {writes_per_second:.2} API-server writes/s {by_resource:?} (all clients; only the operator runs), operator CPU {:.1} % of a core, RSS {rss:.0} MiB",
        operator_cpu * 100.0
    ));
    report.push(format!(
        "scale: plan etcd at steady state (resync 2 s): Range {ranges:.2}/s and Txn {txns:.2}/s (the operator), Put {puts:.2}/s (the agents' power reports), {:.1} KiB/s sent to clients",
        sent / 1024.0
    ));
    for (what, cap) in [("20 % cut", full_cap * 0.8), ("raise back", full_cap)] {
        let watch = AcknowledgementWatch::start(&etcd.endpoint).await;
        let start = Instant::now();
        patch_budget(&admin, "facility", json!({"capWatts": cap})).await;
        let revision =
            plan_revision_with_cap(&store, "facility", cap, Duration::from_secs(120)).await;
        let acknowledged =
            all_acknowledged(&store, nodes, revision, Duration::from_secs(120)).await;
        let times = watch.times(&acknowledged, start);
        report.push(format!(
            "scale: {what}: PowerBudget update to each agent's acknowledgement p50 {:?}, p99 {:?}, max {:?}",
            percentile(&times, 0.5),
            percentile(&times, 0.99),
            times.last().copied().unwrap_or_default()
        ));
    }
    for line in &report {
        let _ = writeln!(std::io::stderr(), "{line}");
    }

    let _ = stop.send(true);
    for agent in agents {
        let _ = tokio::time::timeout(Duration::from_secs(30), agent).await;
    }
    drop(operator);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = plane;
}

/// Samples, every 20 ms, what every in-process agent's GPUs enforce plus overheads, per rack (each
/// rack's cap never changes) and for the facility (against the cap the test sets).
struct CapSampler {
    facility_cap: std::sync::Arc<std::sync::Mutex<f64>>,
    /// (samples, violations as text)
    tally: std::sync::Arc<std::sync::Mutex<(usize, Vec<String>)>>,
    task: tokio::task::JoinHandle<()>,
}

impl CapSampler {
    fn start(gpus: Vec<SharedGpus>, facility_cap: f64) -> CapSampler {
        let cap = std::sync::Arc::new(std::sync::Mutex::new(facility_cap));
        let tally = std::sync::Arc::new(std::sync::Mutex::new((0, Vec::new())));
        let (checked_cap, record) = (cap.clone(), tally.clone());
        let task = tokio::spawn(async move {
            let rack_cap = NODES_PER_RACK as f64 * 6000.0;
            loop {
                let node_watts: Vec<f64> = gpus
                    .iter()
                    .map(|g| OVERHEAD_WATTS + g.limits().iter().sum::<f64>())
                    .collect();
                let facility = *checked_cap.lock().expect("cap");
                let mut found = Vec::new();
                for (rack, watts) in node_watts.chunks(NODES_PER_RACK).enumerate() {
                    let total: f64 = watts.iter().sum();
                    if total > rack_cap + 1e-6 {
                        found.push(format!("rack-{rack} {total} W > {rack_cap} W"));
                    }
                }
                let total: f64 = node_watts.iter().sum();
                if total > facility + 1e-6 {
                    found.push(format!("facility {total} W > {facility} W"));
                }
                {
                    let mut tally = record.lock().expect("tally");
                    tally.0 += 1;
                    tally.1.extend(found);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        CapSampler {
            facility_cap: cap,
            tally,
            task,
        }
    }

    fn set_facility_cap(&self, watts: f64) {
        *self.facility_cap.lock().expect("cap") = watts;
    }

    /// Prints and checks what was sampled since the last stretch.
    fn stretch(&self, what: &str) {
        let (samples, violations) = std::mem::take(&mut *self.tally.lock().expect("tally"));
        let _ = writeln!(
            std::io::stderr(),
            "scale, two replicas, {what}: {samples} samples checked, {} violations",
            violations.len()
        );
        assert!(samples > 50, "{what}: only {samples} samples");
        assert!(
            violations.is_empty(),
            "{what}: {:?}",
            &violations[..violations.len().min(5)]
        );
    }
}

impl Drop for CapSampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Two operator replicas on one prefix, 150 nodes with in-process agents, and a flood of 40 facility
/// cap changes during which the leader is killed and restarted: no rack or facility cap is exceeded
/// by what the GPUs enforce, and the flood's last cap is reached.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_on_one_prefix_under_a_flood_of_cap_changes_keep_every_cap() {
    const NODES: usize = 150;
    let (plane, admin) = prepared_cluster().await;
    let etcd = Etcd::start().await.expect("plan etcd starts");
    let dir = test_dir("scale-replicas");
    let full_cap = NODES as f64 * 5000.0;
    let cut = full_cap * 0.8;
    create_fleet(&admin, NODES, full_cap).await;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let (gpus, agents) = start_agents(NODES, &etcd.endpoint, &stopped);
    let replica = |identity: &str| {
        OperatorProcess::start_replica(
            &plane.kubeconfig,
            identity,
            &etcd.endpoint,
            &dir.join(format!("{identity}.log")),
            3,
        )
    };
    let mut replicas = vec![
        ("replica-a", replica("replica-a")),
        ("replica-b", replica("replica-b")),
    ];
    let store = plan_store(&etcd.endpoint).await;
    let first =
        plan_revision_with_cap(&store, "facility", full_cap, Duration::from_secs(120)).await;
    all_acknowledged(&store, NODES, first, Duration::from_secs(300)).await;
    let sampler = CapSampler::start(gpus, full_cap);
    tokio::time::sleep(Duration::from_secs(2)).await;
    sampler.stretch("steady state");

    let flood_started = Instant::now();
    for i in 0..40u64 {
        let cap = if i % 2 == 0 { full_cap } else { cut };
        patch_budget(&admin, "facility", json!({"capWatts": cap})).await;
        if i == 20 {
            let leader = lease_holder(&admin).await.expect("a leader");
            let index = replicas
                .iter()
                .position(|(name, _)| *name == leader)
                .expect("the leader is a replica");
            let (name, process) = replicas.remove(index);
            process.kill();
            replicas.push((name, replica(name)));
        }
        tokio::time::sleep(Duration::from_millis(60 * (i % 5))).await;
    }
    let revision = plan_revision_with_cap(&store, "facility", cut, Duration::from_secs(120)).await;
    all_acknowledged(&store, NODES, revision, Duration::from_secs(120)).await;
    let flood_settled = flood_started.elapsed();
    sampler.stretch("a flood of 40 cap changes, the leader killed at the 21st");
    sampler.set_facility_cap(cut);
    tokio::time::sleep(Duration::from_secs(3)).await;
    sampler.stretch("after the flood's last cap (the cut) was acknowledged");
    let _ = writeln!(
        std::io::stderr(),
        "scale, two replicas: {NODES} nodes; the flood's last cap acknowledged by every agent {:.1} s \
         after the first change, plan revision {revision}",
        flood_settled.as_secs_f64()
    );

    drop(sampler);
    let _ = stop.send(true);
    for agent in agents {
        let _ = tokio::time::timeout(Duration::from_secs(30), agent).await;
    }
    drop(replicas);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = plane;
}
