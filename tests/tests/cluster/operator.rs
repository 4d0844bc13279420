//! The operator on a real control plane, running as its own ServiceAccount under the shipped RBAC:
//! plans in etcd that fit every cap, status, conditions and events, reactions to cap, schedule and pod
//! changes, bad input held at the floor, restarts and leader election.

use kilowatt_tests::*;
use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event;
use kilowatt_crds::{PowerBudget, PowerBudgetStatus, WorkloadProfile};
use kilowatt_operator::controller::{self, RunningOperator, StartError};
use kilowatt_operator::http::whatif::WhatIfRequest;
use kilowatt_operator::http::whatif_client::{AskError, Credentials, ask};
use kilowatt_operator::plan::published::{NodePlan, PublishedPlan};
use kilowatt_operator::store::etcd::EtcdPlanStore;
use kilowatt_operator::store::{PlanStore, node_plans};
use kilowatt_tests::{ControlPlane, eventually, within};
use kube::Client;
use kube::api::{Api, DeleteParams};
use serde_json::json;

/// The invariant, checked on the per-node keys agents read: for every budget, the limits plus
/// overheads of the nodes under it fit its planning cap. Returns the watts counted per budget.
async fn assert_node_plans_fit(
    store: &EtcdPlanStore,
    plan: &PublishedPlan,
) -> BTreeMap<String, f64> {
    let node_plans: BTreeMap<String, NodePlan> = within("node plans", node_plans(store))
        .await
        .expect("node plans read")
        .into_iter()
        .collect();
    assert_eq!(
        node_plans.keys().collect::<Vec<_>>(),
        plan.nodes.keys().collect::<Vec<_>>(),
        "every planned node has its own key"
    );
    let parents: BTreeMap<&str, Option<&str>> = plan
        .budgets
        .iter()
        .map(|b| (b.name.as_str(), b.parent.as_deref()))
        .collect();
    let mut counted: BTreeMap<String, f64> = BTreeMap::new();
    for node in node_plans.values() {
        let watts =
            node.overhead_watts + node.gpus.iter().map(|g| g.power_limit_watts).sum::<f64>();
        for gpu in &node.gpus {
            assert!(
                gpu.power_limit_watts >= gpu.floor_watts - 1e-9,
                "{} below its floor",
                gpu.id
            );
        }
        let mut current = Some(node.budget.as_str());
        while let Some(name) = current {
            *counted.entry(name.to_owned()).or_default() += watts;
            current = parents.get(name).copied().flatten();
        }
    }
    if plan.status != "infeasible" {
        for b in &plan.budgets {
            let used = counted.get(&b.name).copied().unwrap_or(0.0);
            assert!(
                used <= b.planning_cap_watts + 1e-6,
                "budget {} carries {used} W over its planning cap {} W",
                b.name,
                b.planning_cap_watts
            );
        }
    }
    counted
}

/// An in-process agent with 8 simulated H100 GPUs on each of `nodes`.
fn start_agents(plane: &ControlPlane, nodes: &[&str]) -> Vec<InProcessAgent> {
    nodes
        .iter()
        .map(|node| InProcessAgent::start(&plane.etcd_endpoint, "/kilowatt-test", node, 8))
        .collect()
}

async fn stop_agents(agents: Vec<InProcessAgent>) {
    for agent in agents {
        agent.stop().await;
    }
}

async fn budget_status(admin: &Client, name: &str) -> Option<PowerBudgetStatus> {
    let budgets: Api<PowerBudget> = Api::all(admin.clone());
    within("get budget", budgets.get(name))
        .await
        .ok()
        .and_then(|b| b.status)
}

fn condition(status: &PowerBudgetStatus, type_: &str) -> (String, String) {
    condition_status(&status.conditions, type_)
}

/// Waits until `check` accepts budget `name`'s status.
async fn status_where(
    admin: &Client,
    name: &str,
    what: &str,
    check: impl Fn(&PowerBudgetStatus) -> bool,
) -> PowerBudgetStatus {
    eventually(what, WAIT, || async {
        match budget_status(admin, name).await {
            Some(status) if check(&status) => Ok(status),
            other => Err(format!("{other:?}")),
        }
    })
    .await
}

/// Waits for an Event with `reason` about object `name` in `namespace` and returns its note.
async fn event(admin: &Client, namespace: &str, name: &str, reason: &str) -> String {
    let events: Api<Event> = Api::namespaced(admin.clone(), namespace);
    eventually(&format!("event {reason} on {name}"), WAIT, || async {
        let list = events
            .list(&Default::default())
            .await
            .map_err(|e| e.to_string())?;
        list.items
            .iter()
            .find(|e| {
                e.reason.as_deref() == Some(reason)
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
            })
            .map(|e| e.note.clone().unwrap_or_default())
            .ok_or_else(|| {
                format!(
                    "events: {:?}",
                    list.items
                        .iter()
                        .map(|e| (
                            e.regarding.as_ref().and_then(|r| r.name.clone()),
                            e.reason.clone()
                        ))
                        .collect::<Vec<_>>()
                )
            })
    })
    .await
}

fn workload<'a>(
    plan: &'a PublishedPlan,
    name: &str,
) -> Option<&'a kilowatt_operator::plan::published::WorkloadSummary> {
    plan.workloads.iter().find(|w| w.name == name)
}

fn node_limits(plan: &PublishedPlan, node: &str) -> Vec<f64> {
    plan.nodes[node]
        .gpus
        .iter()
        .map(|g| g.power_limit_watts)
        .collect()
}

#[tokio::test]
async fn operator_plans_a_budget_tree_and_follows_caps_schedules_and_pods() {
    let (plane, admin) = prepared_cluster().await;
    for (name, rack) in [("a1", "a"), ("a2", "a"), ("b1", "b"), ("b2", "b")] {
        gpu_node(&admin, name, json!({"rack": rack}), 8, H100).await;
    }
    budget(
        &admin,
        "facility",
        json!({"capWatts": 22000.0, "nodeOverheadWatts": 1000.0}),
    )
    .await;
    budget(
        &admin,
        "rack-a",
        json!({"capWatts": 10000.0, "parent": "facility",
        "nodeSelector": {"matchLabels": {"rack": "a"}}}),
    )
    .await;
    budget(
        &admin,
        "rack-b",
        json!({"capWatts": 10000.0, "parent": "facility",
        "nodeSelector": {"matchLabels": {"rack": "b"}}}),
    )
    .await;
    let profiles: Api<WorkloadProfile> = Api::namespaced(admin.clone(), "ml");
    create(&profiles, json!({"apiVersion": "kilowatt.dev/v1alpha1", "kind": "WorkloadProfile",
        "metadata": {"name": "serve", "namespace": "ml"},
        "spec": {"gpuModel": "H100-SXM", "throughputUnit": "tokens/s", "points": [
            {"powerWatts": 200.0, "throughput": 2520.0}, {"powerWatts": 300.0, "throughput": 3115.0},
            {"powerWatts": 400.0, "throughput": 3360.0}, {"powerWatts": 700.0, "throughput": 3500.0}]}})).await;
    let training = json!({"kilowatt.dev/workload": "training", "kilowatt.dev/job": "llm"});
    gpu_pod(&admin, "train-0", "a1", 8, training.clone()).await;
    gpu_pod(&admin, "train-1", "a2", 8, training).await;
    gpu_pod(
        &admin,
        "serve-0",
        "b1",
        8,
        json!({"kilowatt.dev/workload": "inference", "kilowatt.dev/profile": "serve"}),
    )
    .await;
    gpu_pod(&admin, "plain-0", "b2", 4, json!({})).await;
    gpu_pod(
        &admin,
        "bad-0",
        "b2",
        4,
        json!({"kilowatt.dev/workload": "training", "kilowatt.dev/weight": "heavy"}),
    )
    .await;

    let agents = start_agents(&plane, &["a1", "a2", "b1", "b2"]);
    // Only the schedule timer (not a resync) can notice a window closing in this test.
    let operator = start_operator(&plane, "replica-0", Duration::from_secs(300)).await;
    let store = store(&plane).await;
    let plan = settled_plan_where(&store, "first plan", |p| p.workloads.len() == 2).await;
    assert_ne!(plan.status, "infeasible");
    let llm = workload(&plan, "ml/llm").expect("training gang planned");
    assert_eq!(llm.pods, ["ml/train-0", "ml/train-1"]);
    assert_eq!(llm.gpus, 16);
    assert_eq!(llm.profile, "default-training-H100-SXM");
    assert_eq!(
        workload(&plan, "ml/serve-0").expect("inference").profile,
        "serve"
    );
    assert_eq!(
        node_limits(&plan, "b2"),
        vec![200.0; 8],
        "unmanaged and malformed pods sit at the floor"
    );
    let counted = assert_node_plans_fit(&store, &plan).await;
    assert!(
        counted["rack-a"] > 9000.0,
        "the binding rack uses its cap: {counted:?}"
    );

    let rack_a = status_where(&admin, "rack-a", "rack-a ready", |s| {
        condition(s, "Ready").0 == "True" && s.last_plan_revision == Some(plan.revision as i64)
    })
    .await;
    assert_eq!((rack_a.nodes, rack_a.gpus), (Some(2), Some(16)));
    assert!(rack_a.allocated_watts.expect("allocated") <= 10000.0);
    assert_eq!(rack_a.effective_cap_watts, Some(10000.0));
    assert_eq!(condition(&rack_a, "Infeasible").0, "False");
    assert_eq!(condition(&rack_a, "Conflict").0, "False");
    // Statuses are written one budget after another: rack-a's may land before facility's.
    let facility = status_where(&admin, "facility", "facility status of this plan", |s| {
        s.last_plan_revision == Some(plan.revision as i64)
    })
    .await;
    assert_eq!((facility.nodes, facility.gpus), (Some(4), Some(32)));
    eventually("profile status counts its pod", WAIT, || async {
        let serve = profiles.get("serve").await.map_err(|e| e.to_string())?;
        match serve.status.and_then(|s| s.pods) {
            Some(1) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let note = event(&admin, "ml", "bad-0", "MalformedAnnotation").await;
    assert!(note.contains("kilowatt.dev/weight"), "{note}");
    let note = event(&admin, "ml", "train-0", "DefaultProfile").await;
    assert!(note.contains("default-training-H100-SXM"), "{note}");
    event(&admin, "default", "rack-a", "Planned").await;

    let (code, body) = http_get(operator.address, "/api/v1/plan").await;
    assert_eq!(code, 200, "{body}");
    let served: PublishedPlan = serde_json::from_str(&body).expect("plan JSON");
    assert_eq!(served.revision, plan.revision);
    let (code, metrics) = http_get(operator.address, "/metrics").await;
    assert_eq!(code, 200);
    assert!(
        metrics.contains("kilowatt_budget_allocated_watts{budget=\"rack-a\"}"),
        "{metrics}"
    );
    assert!(
        metrics.lines().any(|l| l == "kilowatt_leader 1"),
        "{metrics}"
    );
    assert_eq!(http_get(operator.address, "/healthz").await.0, 200);
    assert_eq!(http_get(operator.address, "/readyz").await.0, 200);

    let base = format!("http://{}", operator.address);
    let answer = ask(
        &base,
        &WhatIfRequest {
            budget: "rack-a".into(),
            cap_watts: Some(6000.0),
            max_slowdown: None,
        },
        &Credentials::default(),
    )
    .await
    .expect("what-if answered");
    assert!(
        answer.what_if.budget_allocated_watts <= 6000.0 + 1e-6,
        "{answer:?}"
    );
    assert!(answer.throughput_lost_fraction > 0.0, "{answer:?}");
    assert_eq!(answer.current.cap_watts, 10000.0);
    match ask(
        &base,
        &WhatIfRequest {
            budget: "nowhere".into(),
            cap_watts: Some(1.0),
            max_slowdown: None,
        },
        &Credentials::default(),
    )
    .await
    {
        Err(AskError::Rejected {
            status: 404,
            message,
        }) => assert!(message.contains("nowhere")),
        other => panic!("an unknown budget is a rejected question, got {other:?}"),
    }
    let unchanged = store.load().await.expect("load").plan.expect("plan");
    assert_eq!(unchanged.revision, plan.revision, "what-if changes nothing");

    // A lower cap is planned and announced.
    patch_budget(&admin, "rack-a", json!({"capWatts": 7000.0})).await;
    let lowered = settled_plan_where(&store, "rack-a at 7000 W", |p| {
        p.budgets
            .iter()
            .any(|b| b.name == "rack-a" && b.effective_cap_watts == 7000.0)
    })
    .await;
    assert!(lowered.revision > plan.revision);
    let counted = assert_node_plans_fit(&store, &lowered).await;
    assert!(counted["rack-a"] <= 7000.0);
    let note = event(&admin, "default", "rack-a", "EffectiveCapChanged").await;
    assert!(note.contains("10000 W → 7000 W"), "{note}");

    // A demand-response window lowers the facility while open; its end alone re-plans.
    let now = k8s_openapi::jiff::Timestamp::now();
    let start = now - k8s_openapi::jiff::SignedDuration::from_secs(60);
    let end = now + k8s_openapi::jiff::SignedDuration::from_secs(20);
    patch_budget(&admin, "facility", json!({"schedule": [
        {"name": "dr-event", "capWatts": 12000.0, "start": start.to_string(), "end": end.to_string()}]})).await;
    let during = settled_plan_where(&store, "facility in the window", |p| {
        p.budgets
            .iter()
            .any(|b| b.name == "facility" && b.effective_cap_watts == 12000.0)
    })
    .await;
    assert_eq!(
        during
            .budgets
            .iter()
            .find(|b| b.name == "facility")
            .map(|b| b.open_windows.clone()),
        Some(vec!["dr-event".to_owned()])
    );
    assert!(assert_node_plans_fit(&store, &during).await["facility"] <= 12000.0);
    let after = settled_plan_where(&store, "facility after the window", |p| {
        p.budgets
            .iter()
            .any(|b| b.name == "facility" && b.effective_cap_watts == 22000.0)
    })
    .await;
    assert!(after.revision > during.revision);

    // A deleted pod's GPUs drop to the floor and its watts leave the budget.
    let pods: Api<Pod> = Api::namespaced(admin.clone(), "ml");
    within(
        "delete pod",
        pods.delete("serve-0", &DeleteParams::default().grace_period(0)),
    )
    .await
    .expect("pod deleted");
    let rack_b_before = after
        .budgets
        .iter()
        .find(|b| b.name == "rack-b")
        .expect("rack-b")
        .allocated_watts;
    let freed = settled_plan_where(&store, "serve-0 gone", |p| {
        workload(p, "ml/serve-0").is_none()
    })
    .await;
    assert_eq!(node_limits(&freed, "b1"), vec![200.0; 8]);
    let rack_b_after = freed
        .budgets
        .iter()
        .find(|b| b.name == "rack-b")
        .expect("rack-b")
        .allocated_watts;
    assert!(
        rack_b_after < rack_b_before,
        "{rack_b_before} W → {rack_b_after} W"
    );
    assert_node_plans_fit(&store, &freed).await;
    operator.shutdown().await;
    stop_agents(agents).await;
}

#[tokio::test]
async fn operator_holds_gpus_at_the_floor_for_conflicts_infeasible_caps_and_bad_input() {
    let plane = ControlPlane::start().await.expect("control plane starts");
    let client = plane.client().await.expect("client");
    match controller::start(client, options(&plane, "early", Duration::from_secs(2))).await {
        Err(e @ StartError::CrdsMissing { .. }) => {
            assert!(e.to_string().contains("kubectl apply -f crds/"), "{e}")
        }
        Err(other) => panic!("expected the missing-CRD hint, got {other}"),
        Ok(_) => panic!("the operator must not start without its CRDs"),
    }
    drop(plane);

    let (plane, admin) = prepared_cluster().await;
    gpu_node(
        &admin,
        "c1",
        json!({"zone": "x", "special": "yes"}),
        8,
        H100,
    )
    .await;
    gpu_node(&admin, "c2", json!({"zone": "x"}), 2, "Tesla-T4").await;
    budget(
        &admin,
        "room",
        json!({"capWatts": 20000.0, "nodeSelector": {"matchLabels": {"zone": "x"}}}),
    )
    .await;
    budget(
        &admin,
        "stray",
        json!({"capWatts": 20000.0, "nodeSelector": {"matchLabels": {"special": "yes"}}}),
    )
    .await;
    budget(
        &admin,
        "orphan",
        json!({"capWatts": 1000.0, "parent": "nowhere"}),
    )
    .await;
    budget(
        &admin,
        "loop-a",
        json!({"capWatts": 1000.0, "parent": "loop-b"}),
    )
    .await;
    budget(
        &admin,
        "loop-b",
        json!({"capWatts": 1000.0, "parent": "loop-a"}),
    )
    .await;
    gpu_pod(
        &admin,
        "pinned-0",
        "c1",
        8,
        json!({"kilowatt.dev/workload": "training"}),
    )
    .await;
    gpu_pod(
        &admin,
        "lost-0",
        "c2",
        2,
        json!({"kilowatt.dev/workload": "inference", "kilowatt.dev/profile": "missing"}),
    )
    .await;

    // c1 has an agent; c2 (an unknown GPU model) has none and counts at its maximum.
    let agents = start_agents(&plane, &["c1"]);
    let operator = start_operator(&plane, "replica-0", Duration::from_secs(2)).await;
    let store = store(&plane).await;
    let plan = settled_plan_where(&store, "first plan", |p| p.nodes.len() == 2).await;
    assert!(plan.workloads.is_empty(), "{:?}", plan.workloads);
    assert_eq!(
        node_limits(&plan, "c1"),
        vec![200.0; 8],
        "a conflicting node sits at its floor"
    );
    assert_eq!(
        node_limits(&plan, "c2"),
        vec![1000.0; 2],
        "an unknown GPU counts at a fixed 1000 W"
    );
    for name in ["room", "stray"] {
        let status = status_where(&admin, name, "conflict reported", |s| {
            condition(s, "Conflict").0 == "True"
        })
        .await;
        assert_eq!(
            condition(&status, "Ready"),
            ("False".into(), "Conflict".into())
        );
    }
    event(&admin, "default", "stray", "Conflict").await;
    let room = budget_status(&admin, "room").await.expect("room");
    assert_eq!(
        condition(&room, "Degraded"),
        ("True".into(), "UnknownGpuModel".into())
    );
    let orphan = status_where(&admin, "orphan", "orphan degraded", |s| {
        condition(s, "Degraded").0 == "True"
    })
    .await;
    assert_eq!(condition(&orphan, "Degraded").1, "ParentNotFound");
    let looped = status_where(&admin, "loop-a", "cycle degraded", |s| {
        condition(s, "Degraded").0 == "True"
    })
    .await;
    assert_eq!(condition(&looped, "Degraded").1, "ParentCycle");
    let note = event(&admin, "ml", "pinned-0", "NodeInConflictingBudgets").await;
    assert!(note.contains("minimum power limit"), "{note}");
    let note = event(&admin, "ml", "lost-0", "ProfileNotFound").await;
    assert!(note.contains("kilowatt.dev/profile"), "{note}");

    // Below its floors a budget is infeasible: its subtree at its floors (the rest of the fleet is
    // still planned), a condition and a warning.
    patch_budget(&admin, "room", json!({"capWatts": 1000.0})).await;
    let safe = settled_plan_where(&store, "room at its floors", |p| {
        !p.infeasible_budgets.is_empty()
    })
    .await;
    assert_eq!(safe.infeasible_budgets, vec!["room".to_owned()]);
    assert_eq!(node_limits(&safe, "c1"), vec![200.0; 8]);
    let room = status_where(&admin, "room", "room infeasible", |s| {
        condition(s, "Infeasible").0 == "True"
    })
    .await;
    assert_eq!(
        condition(&room, "Ready"),
        ("False".into(), "Infeasible".into())
    );
    let note = event(&admin, "default", "room", "Infeasible").await;
    assert!(note.contains("1000 W"), "{note}");

    // Fixing both brings the budget back, announced once.
    patch_budget(&admin, "room", json!({"capWatts": 20000.0})).await;
    let budgets: Api<PowerBudget> = Api::all(admin.clone());
    within(
        "delete stray",
        budgets.delete("stray", &DeleteParams::default()),
    )
    .await
    .expect("stray deleted");
    let room = status_where(&admin, "room", "room recovered", |s| {
        condition(s, "Infeasible").0 == "False" && condition(s, "Conflict").0 == "False"
    })
    .await;
    assert_eq!(condition(&room, "Degraded").1, "UnknownGpuModel");
    event(&admin, "default", "room", "Feasible").await;
    event(&admin, "default", "room", "ConflictResolved").await;
    let recovered =
        settled_plan_where(&store, "c1 planned again", |p| !p.workloads.is_empty()).await;
    assert!(
        node_limits(&recovered, "c1").iter().all(|w| *w > 200.0),
        "{:?}",
        node_limits(&recovered, "c1")
    );
    assert_node_plans_fit(&store, &recovered).await;
    operator.shutdown().await;
    stop_agents(agents).await;
}

async fn leader_metric(operator: &RunningOperator) -> bool {
    http_get(operator.address, "/metrics")
        .await
        .1
        .contains("kilowatt_leader 1")
}

#[tokio::test]
async fn one_replica_leads_and_a_successor_continues_the_plan_in_etcd() {
    let (plane, admin) = prepared_cluster().await;
    gpu_node(&admin, "d1", json!({"row": "1"}), 8, H100).await;
    budget(
        &admin,
        "row-1",
        json!({"capWatts": 4000.0, "nodeSelector": {"matchLabels": {"row": "1"}}}),
    )
    .await;
    gpu_pod(
        &admin,
        "train-0",
        "d1",
        8,
        json!({"kilowatt.dev/workload": "training"}),
    )
    .await;

    let agents = start_agents(&plane, &["d1"]);
    let first = start_operator(&plane, "replica-a", Duration::from_secs(1)).await;
    let second = start_operator(&plane, "replica-b", Duration::from_secs(1)).await;
    let store = store(&plane).await;
    let plan = settled_plan_where(&store, "first plan", |p| !p.workloads.is_empty()).await;
    let leader_name = eventually("one leader", WAIT, || async {
        match (leader_metric(&first).await, leader_metric(&second).await) {
            (true, false) => Ok("replica-a"),
            (false, true) => Ok("replica-b"),
            other => Err(format!("leader metrics {other:?}")),
        }
    })
    .await;
    assert_eq!(lease_holder(&admin).await.as_deref(), Some(leader_name));
    let (leader, follower) = if leader_name == "replica-a" {
        (first, second)
    } else {
        (second, first)
    };
    // The follower serves the plan from etcd too.
    let (code, body) = http_get(follower.address, "/api/v1/plan").await;
    assert_eq!(code, 200, "{body}");

    // The leader crashes: the follower takes over once the lease expires, reads the plan in etcd and
    // publishes nothing new while nothing changed.
    leader.abort();
    eventually("follower takes over", WAIT, || async {
        if leader_metric(&follower).await {
            Ok(())
        } else {
            Err("not leader yet".to_owned())
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let same = store.load().await.expect("load").plan.expect("plan");
    assert_eq!(
        same.revision, plan.revision,
        "a new leader does not republish an unchanged plan"
    );

    patch_budget(&admin, "row-1", json!({"capWatts": 3500.0})).await;
    let next = settled_plan_where(&store, "plan after the cap change", |p| {
        p.revision > plan.revision
    })
    .await;
    assert_eq!(
        next.revision,
        plan.revision + 1,
        "revisions continue from etcd"
    );
    assert_node_plans_fit(&store, &next).await;

    // A graceful stop releases the lease; a fresh replica continues the same numbering.
    follower.shutdown().await;
    let restarted = start_operator(&plane, "replica-c", Duration::from_secs(1)).await;
    eventually("restarted replica leads", WAIT, || async {
        if leader_metric(&restarted).await {
            Ok(())
        } else {
            Err("not leader yet".to_owned())
        }
    })
    .await;
    patch_budget(&admin, "row-1", json!({"capWatts": 3000.0})).await;
    let last =
        settled_plan_where(&store, "plan after restart", |p| p.revision > next.revision).await;
    assert_eq!(last.revision, next.revision + 1);
    assert!(assert_node_plans_fit(&store, &last).await["row-1"] <= 3000.0);
    restarted.shutdown().await;
    stop_agents(agents).await;
}
