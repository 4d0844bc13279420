//! The fault suite: the operator and node agents as separate processes (`kilowatt operator`,
//! `kilowatt-agent --gpu-backend simulated`) on a real control plane and a real plan etcd, each agent's
//! simulated GPU settings kept in a file as a real GPU keeps them in the device. A sampler thread reads
//! every file many times a second and checks every budget's cap against the sum of limits plus
//! overheads while agents are killed and restarted, cut off in a network namespace, etcd restarts, the
//! operator is killed mid-rollout, a node vanishes, caps are cut mid-rollout and changes flood in.
//!
//! Needs root for the network namespace (`ip netns`), like the machines these tests run on.

use std::io::Write;
use std::time::Duration;

use kilowatt_crds::PowerBudget;
use kilowatt_operator::store::PlanStore;
use kilowatt_tests::*;
use kilowatt_tests::{Etcd, eventually};
use kube::api::Api;
use serde_json::json;

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
