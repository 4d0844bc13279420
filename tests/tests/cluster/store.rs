//! The plan store on a real etcd at sizes a large fleet reaches: node keys that together are larger
//! than one etcd response may be, and a plan of 100,000 GPUs, far larger than one etcd request.

use std::collections::BTreeMap;

use etcd_client::{GetOptions, TxnOp};
use kilowatt_crds::plan::{Acknowledgement, Inventory, InventoryGpu, KeyLayout};
use kilowatt_operator::plan::published::{BudgetSummary, GpuTarget, NodePlan, PublishedPlan};
use kilowatt_operator::store::etcd::EtcdPlanStore;
use kilowatt_operator::store::{Loaded, PlanStore};
use kilowatt_tests::{Etcd, PREFIX, plan_store};

fn inventory(node: &str, gpus: u32) -> Inventory {
    Inventory {
        backend: "simulated".into(),
        gpus: (0..gpus)
            .map(|index| InventoryGpu {
                index,
                uuid: format!("GPU-{node}-{index:02}-0000-0000-0000-000000000000"),
                model: "NVIDIA H100 80GB HBM3".into(),
                min_limit_watts: 200.0,
                max_limit_watts: 700.0,
                pods: vec![format!("research/llm-pretrain-{node}-worker-{index}")],
            })
            .collect(),
        pods_reported: true,
    }
}

#[tokio::test]
async fn the_views_of_more_nodes_than_one_etcd_response_holds_are_read_whole() {
    let etcd = Etcd::start().await.expect("etcd starts");
    let keys = KeyLayout::new(PREFIX);
    let store = plan_store(&etcd.endpoint).await;
    // 2,400 nodes of 8 GPUs with an inventory and an acknowledgement each: about 4.8 MiB, above the
    // 4 MiB an etcd client takes in one message.
    let nodes: Vec<String> = (0..2400)
        .map(|n| format!("gpu-{n:05}.dc1.example.com"))
        .collect();
    let mut operations = Vec::new();
    let mut bytes = 0;
    for node in &nodes {
        let ack = Acknowledgement {
            revision: 3,
            power_limits_watts: vec![512.5; 8],
            boot_id: Some("7d1c9a60-2f4e-4c39-9d0e-3b5f1f6a2c11".into()),
        };
        for (key, value) in [
            (
                keys.node_inventory(node),
                serde_json::to_vec(&inventory(node, 8)),
            ),
            (keys.node_ack(node), serde_json::to_vec(&ack)),
        ] {
            let value = value.expect("encodes");
            bytes += key.len() + value.len();
            operations.push(TxnOp::put(key, value, None));
        }
    }
    let mut kv = store.etcd_client().kv_client();
    for chunk in operations.chunks(100) {
        kv.txn(etcd_client::Txn::new().and_then(chunk.to_vec()))
            .await
            .expect("written");
    }
    let views = store.read_views().await.expect("views read");
    eprintln!(
        "store: {} nodes, {} keys, {:.1} MiB of node keys, read in pages: {} views",
        nodes.len(),
        operations.len(),
        bytes as f64 / 1048576.0,
        views.len()
    );
    assert!(
        bytes > 4 * 1024 * 1024,
        "{bytes} bytes is no test of paging"
    );
    assert_eq!(views.len(), nodes.len());
    for node in &nodes {
        let view = &views[node];
        assert_eq!(view.inventory.as_ref(), Some(&inventory(node, 8)), "{node}");
        assert_eq!(view.ack.as_ref().map(|a| a.revision), Some(3), "{node}");
    }
}

/// A plan for 12,500 nodes of 8 GPUs under 782 racks, every node's limits different.
fn plan_of_100000_gpus(revision: u64) -> PublishedPlan {
    let nodes: BTreeMap<String, NodePlan> = (0..12_500usize)
        .map(|n| {
            let name = format!("gpu-{n:06}.dc1.example.com");
            let plan = NodePlan {
                revision,
                budget: format!("rack-{:04}", n / 16),
                overhead_watts: 1200.0,
                gpus: (0..8u32)
                    .map(|index| GpuTarget {
                        id: format!("{name}/gpu{index}"),
                        index,
                        power_limit_watts: 200.0
                            + ((n * 8 + index as usize) * 37 % 4000) as f64 / 8.0,
                        sm_clock_mhz: None,
                        floor_watts: 200.0,
                        pod: Some(format!("ml/job-{:05}-worker-{index}", n / 4)),
                    })
                    .collect(),
                unacknowledged: Vec::new(),
                written_at: Some(format!("2026-12-02T07:{:02}:{:02}.{n:06}Z", n % 60, n % 59)),
                work_counters: Vec::new(),
            };
            (name, plan)
        })
        .collect();
    let budgets = (0..782)
        .map(|rack| BudgetSummary {
            name: format!("rack-{rack:04}"),
            parent: Some("facility".into()),
            effective_cap_watts: 80_000.0,
            planning_cap_watts: 79_000.0,
            allocated_watts: 70_000.0 + f64::from(rack),
            headroom_watts: 9_000.0 - f64::from(rack),
            nodes: 16,
            gpus: 128,
            normalized_throughput: 0.95,
            open_windows: Vec::new(),
            efficiency: None,
        })
        .collect();
    PublishedPlan {
        revision,
        solved_at: "2026-12-02T07:00:00Z".into(),
        status: "optimal".into(),
        method: "greedy".into(),
        objective: 0.93,
        upper_bound: 0.94,
        gap: 0.01,
        infeasible_budgets: Vec::new(),
        budgets,
        workloads: Vec::new(),
        nodes,
    }
}

async fn keys_under(store: &EtcdPlanStore, prefix: &str) -> usize {
    let response = store
        .etcd_client()
        .kv_client()
        .get(
            prefix,
            Some(GetOptions::new().with_prefix().with_keys_only()),
        )
        .await
        .expect("read");
    response.kvs().len()
}

#[tokio::test]
async fn a_plan_of_100000_gpus_is_published_to_and_read_from_a_real_etcd() {
    let etcd = Etcd::start().await.expect("etcd starts");
    let keys = KeyLayout::new(PREFIX);
    let store = plan_store(&etcd.endpoint).await;
    let first = plan_of_100000_gpus(1);
    let json_bytes = serde_json::to_vec(&first).expect("encodes").len();
    let epoch = store.take_over().await.expect("takes over");
    let empty = Loaded {
        plan: None,
        mod_revision: 0,
        version: 0,
        epoch,
    };
    let started = std::time::Instant::now();
    let after_first = store
        .publish(&first, &first.nodes, &BTreeMap::new(), &empty)
        .await
        .expect("a plan of 100,000 GPUs publishes");
    let publish_seconds = started.elapsed().as_secs_f64();
    let parts = keys_under(&store, &keys.plan_parts_prefix()).await;
    let loaded = store.load().await.expect("loads");
    let raw = store.read_raw().await.expect("reads").expect("a plan");
    eprintln!(
        "store: a plan of 100,000 GPUs, {:.1} MiB of JSON, published in {publish_seconds:.1} s as \
         {} node keys and {parts} plan parts, and read back",
        json_bytes as f64 / 1048576.0,
        first.nodes.len()
    );
    assert!(parts > 0, "a plan this large is stored in parts");
    assert_eq!(loaded.plan.as_ref(), Some(&first));
    assert_eq!(loaded.version, 1);
    assert_eq!(
        serde_json::from_slice::<PublishedPlan>(&raw).expect("the served plan is JSON"),
        first
    );
    let views = store.read_views().await.expect("views");
    assert_eq!(views.len(), first.nodes.len());

    // Two more publishes: the parts of the plan in force stay until the next one replaces it, older
    // ones go.
    let second = PublishedPlan {
        revision: 2,
        ..first.clone()
    };
    let after_second = store
        .publish(&second, &BTreeMap::new(), &first.nodes, &after_first)
        .await
        .expect("publishes");
    let third = PublishedPlan {
        revision: 3,
        ..first.clone()
    };
    store
        .publish(&third, &BTreeMap::new(), &first.nodes, &after_second)
        .await
        .expect("publishes");
    assert_eq!(keys_under(&store, &keys.plan_parts_of(1)).await, 0);
    assert_eq!(keys_under(&store, &keys.plan_parts_of(2)).await, parts);
    assert_eq!(keys_under(&store, &keys.plan_parts_of(3)).await, parts);
    assert_eq!(store.load().await.expect("loads").plan, Some(third));
}
