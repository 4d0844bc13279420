//! The node agent on a real etcd with simulated GPUs: it registers its inventory under a lease, applies
//! plans and acknowledges what it read back, re-applies after drift, lowers every GPU to its floor by
//! itself when etcd goes away and recovers when it returns, and never raises a limit on shutdown.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::Client;
use kilowatt_agent_core::gpu::simulated::{SimulatedGpus, parse_profile};
use kilowatt_agent_core::telemetry::Telemetry;
use kilowatt_crds::plan::{Acknowledgement, Inventory, KeyLayout, NodePlan};
use kilowatt_node_agent::agent::{self, AgentOptions};
use kilowatt_tests::*;
use kilowatt_tests::{Etcd, eventually, within};

const WAIT: Duration = Duration::from_secs(30);
const NODE: &str = "gpu-node-1";

fn node_plan(revision: u64, limits: [f64; 4]) -> NodePlan {
    NodePlan {
        budget: "rack".into(),
        overhead_watts: 1000.0,
        ..NodePlan::with_limits(NODE, revision, &limits, 200.0)
    }
}

async fn put_plan(client: &mut Client, keys: &KeyLayout, plan: &NodePlan) {
    within(
        "put plan",
        client.put(
            keys.node_plan(NODE),
            serde_json::to_vec(plan).expect("plan"),
            None,
        ),
    )
    .await
    .expect("plan written");
}

async fn read<T: serde::de::DeserializeOwned>(
    client: &mut Client,
    key: String,
) -> Result<T, String> {
    let response = client
        .get(key.as_str(), None)
        .await
        .map_err(|e| e.to_string())?;
    let value = response.kvs().first().ok_or("absent")?.value().to_vec();
    serde_json::from_slice(&value).map_err(|e| e.to_string())
}

async fn acknowledged(client: &mut Client, keys: &KeyLayout, revision: u64) -> Acknowledgement {
    eventually(
        &format!("acknowledgement of revision {revision}"),
        WAIT,
        || {
            let mut client = client.clone();
            let key = keys.node_ack(NODE);
            async move {
                let ack: Acknowledgement = read(&mut client, key).await?;
                if ack.revision == revision {
                    Ok(ack)
                } else {
                    Err(format!("{ack:?}"))
                }
            }
        },
    )
    .await
}

async fn limits_become(gpus: &SharedGpus, what: &str, expected: [f64; 4]) {
    eventually(what, WAIT, || async {
        let limits = gpus.limits();
        if limits == expected {
            Ok(())
        } else {
            Err(format!("{limits:?}"))
        }
    })
    .await;
}

#[tokio::test]
async fn the_agent_enforces_acknowledges_fences_without_etcd_and_recovers() {
    let mut etcd = Etcd::start().await.expect("etcd starts");
    let curve = parse_profile(
        kilowatt_crds::profile_file::example_profile("llm-pretrain-h100").expect("example"),
    )
    .expect("profile");
    let gpus = SharedGpus(Arc::new(Mutex::new(SimulatedGpus::uniform(
        NODE,
        4,
        "H100-SXM",
        200.0,
        700.0,
        Some(curve),
    ))));
    let options = AgentOptions {
        drift_check: Duration::from_millis(500),
        ..agent_options(NODE, &etcd.endpoint, "/agent-test", Duration::from_secs(2))
    };
    let telemetry = Telemetry::new().expect("telemetry");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let agent = tokio::spawn(agent::run(
        Box::new(gpus.clone()),
        options,
        telemetry.clone(),
        async {
            let _ = stopped.await;
        },
    ));
    let keys = KeyLayout::new("/agent-test");
    let mut client = within(
        "etcd client",
        Client::connect([etcd.endpoint.as_str()], None),
    )
    .await
    .expect("etcd client");

    let inventory: Inventory = eventually("inventory registered", WAIT, || {
        let mut client = client.clone();
        let key = keys.node_inventory(NODE);
        async move { read(&mut client, key).await }
    })
    .await;
    assert_eq!(inventory.gpus.len(), 4);
    assert_eq!(inventory.gpus[0].uuid, format!("SIM-{NODE}-0"));

    put_plan(
        &mut client,
        &keys,
        &node_plan(1, [650.0, 300.0, 250.0, 700.0]),
    )
    .await;
    limits_become(&gpus, "plan 1 enforced", [650.0, 300.0, 250.0, 700.0]).await;
    let ack = acknowledged(&mut client, &keys, 1).await;
    assert_eq!(ack.power_limits_watts, [650.0, 300.0, 250.0, 700.0]);

    // Another tool raises a limit: the agent notices at its next read-back and restores the plan.
    gpus.0
        .lock()
        .expect("gpus")
        .force_limit(1, 700.0)
        .expect("forced");
    limits_become(&gpus, "drift repaired", [650.0, 300.0, 250.0, 700.0]).await;
    let metrics = telemetry.render().expect("metrics");
    assert!(
        metrics.lines().any(|l| l == "kilowatt_agent_drift_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("kilowatt_gpu_energy_joules_total{gpu=\"0\""),
        "{metrics}"
    );

    // etcd goes away: within half the lease TTL (plus a sample) every GPU is at its floor.
    etcd.stop();
    let cut = std::time::Instant::now();
    limits_become(&gpus, "fenced to the floor", [200.0; 4]).await;
    let fenced_after = cut.elapsed();
    assert!(
        fenced_after < Duration::from_secs(3),
        "fenced after {fenced_after:?}"
    );
    assert!(
        telemetry
            .render()
            .expect("metrics")
            .lines()
            .any(|l| l == "kilowatt_agent_fenced 1")
    );

    // etcd returns: the agent registers again and re-applies the plan it finds.
    etcd.restart().await.expect("etcd restarts");
    let mut client = within(
        "etcd client",
        Client::connect([etcd.endpoint.as_str()], None),
    )
    .await
    .expect("etcd client");
    put_plan(
        &mut client,
        &keys,
        &node_plan(2, [400.0, 400.0, 400.0, 400.0]),
    )
    .await;
    limits_become(&gpus, "plan 2 after recovery", [400.0; 4]).await;
    acknowledged(&mut client, &keys, 2).await;

    // SIGTERM: nothing is raised and every GPU ends at its floor.
    stop.send(()).expect("agent listening");
    within("agent stops", agent)
        .await
        .expect("agent task")
        .expect("agent ran");
    assert_eq!(gpus.limits(), [200.0; 4]);
    println!("fenced {fenced_after:?} after etcd stopped");
}

/// The CI size of the agent overhead benchmark (BENCHMARKS.md: `scripts/agent-overhead.sh`, 60 s): the
/// `kilowatt-agent` process with 8 simulated GPUs sampled at 1 Hz, registered with a real etcd, over
/// 10 s after a warm-up, against the targets of < 1 % of a core and < 30 MiB.
#[tokio::test]
async fn the_agent_process_at_1_hz_with_8_gpus_stays_under_1_percent_of_a_core_and_30_mib() {
    let etcd = Etcd::start().await.expect("etcd starts");
    let dir = test_dir("agent-overhead");
    let profile = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/profiles/llm-pretrain-h100.yaml");
    let mut agent = std::process::Command::new(workspace_binary("kilowatt-agent"))
        .args([
            "--node",
            "overhead-1",
            "--gpu-backend",
            "simulated",
            "--simulated-gpus",
            "8",
        ])
        .arg("--simulated-profile")
        .arg(&profile)
        .args(["--etcd-endpoints", &etcd.endpoint, "--sample-ms", "1000"])
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.join("agent.log")).expect("agent log"))
        .spawn()
        .expect("kilowatt-agent starts");
    let client = within(
        "etcd client",
        Client::connect([etcd.endpoint.as_str()], None),
    )
    .await
    .expect("etcd client");
    let keys = KeyLayout::new("/kilowatt");
    eventually("the agent registered", WAIT, || async {
        let response = client
            .clone()
            .get(keys.node_inventory("overhead-1"), None)
            .await
            .map_err(|e| e.to_string())?;
        (!response.kvs().is_empty())
            .then_some(())
            .ok_or_else(|| "no inventory yet".to_owned())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let window = Duration::from_secs(10);
    let (cpu_before, _) = cpu_and_rss(agent.id());
    tokio::time::sleep(window).await;
    let (cpu_after, rss_mib) = cpu_and_rss(agent.id());
    let _ = agent.kill();
    let _ = agent.wait();
    let share = (cpu_after - cpu_before) / window.as_secs_f64();
    let _ = writeln!(
        std::io::stderr(),
        "agent overhead: {:.2} % of a core over {window:?}, RSS {rss_mib:.1} MiB (8 simulated GPUs, 1 Hz)",
        share * 100.0
    );
    assert!(share < 0.01, "{:.2} % of a core", share * 100.0);
    assert!(rss_mib < 30.0, "RSS {rss_mib:.1} MiB");
    let _ = std::fs::remove_dir_all(&dir);
}
