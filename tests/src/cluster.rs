//! Cluster objects and the operator in-process: a prepared control plane, GPU nodes, pods and budgets,
//! operator options, the plan store, and raw HTTP to the operator. Kubernetes, etcd and network IO.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kilowatt_crds::{PowerBudget, PowerBudgetStatus};
use kilowatt_operator::controller::{self, OperatorOptions, RunningOperator};
use kilowatt_operator::plan::published::{KeyLayout, NodePlan, PublishedPlan};
use kilowatt_operator::store::PlanStore;
use kilowatt_operator::store::etcd::EtcdPlanStore;
use kilowatt_solver::SolveOptions;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{apiserver::*, waits::*};

pub const OPERATOR_USER: &str = "system:serviceaccount:kilowatt-system:kilowatt-operator";
pub const H100: &str = "NVIDIA-H100-80GB-HBM3";
pub const WAIT: Duration = Duration::from_secs(45);
/// A control plane with the CRDs, the operator's RBAC and the `ml` namespace.
pub async fn prepared_cluster() -> (ControlPlane, Client) {
    let plane = ControlPlane::start().await.expect("control plane starts");
    let admin = plane.client().await.expect("admin client");
    install_crds(&admin).await.expect("CRDs install");
    let namespaces: Api<Namespace> = Api::all(admin.clone());
    for name in ["kilowatt-system", "ml"] {
        let namespace: Namespace =
            serde_json::from_value(json!({"metadata": {"name": name}})).expect("namespace");
        within(
            "namespace",
            namespaces.create(&PostParams::default(), &namespace),
        )
        .await
        .expect("namespace created");
    }
    create_from_yaml(&admin, "helm/kilowatt/rbac/operator.yaml")
        .await
        .expect("operator RBAC applies");
    (plane, admin)
}
pub fn options(plane: &ControlPlane, identity: &str, resync: Duration) -> OperatorOptions {
    OperatorOptions {
        etcd_endpoints: vec![plane.etcd_endpoint.clone()],
        etcd_prefix: "/kilowatt-test".to_owned(),
        etcd_credentials: None,
        etcd_tls: None,
        agent_service_account: "kilowatt-system/kilowatt-agent"
            .parse()
            .expect("service account"),
        listen: "127.0.0.1:0".parse().expect("address"),
        https: None,
        identity: identity.to_owned(),
        lease_namespace: "kilowatt-system".to_owned(),
        lease_name: "kilowatt-operator".to_owned(),
        lease_duration: Duration::from_secs(3),
        debounce: Duration::from_millis(100),
        ack_timeout: kilowatt_operator::controller::timing::DEFAULT_ACK_TIMEOUT,
        window_lead: kilowatt_operator::plan::schedule::DEFAULT_WINDOW_LEAD,
        resync,
        solve: SolveOptions::default(),
        whatif_time_limit: Duration::from_secs(10),
        whatif_auth: kilowatt_operator::controller::WhatIfAuth::BeyondLoopback,
        prometheus: None,
    }
}
/// The status and reason of the condition `type_` among `conditions`; empty strings without it.
pub fn condition_status(
    conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    type_: &str,
) -> (String, String) {
    conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone()))
        .unwrap_or_default()
}
/// Starts an operator replica in this process, authorised as the operator's ServiceAccount.
pub async fn start_operator(
    plane: &ControlPlane,
    identity: &str,
    resync: Duration,
) -> RunningOperator {
    start_operator_with(plane, options(plane, identity, resync)).await
}
/// Starts an operator replica with `options`, authorised as the operator's ServiceAccount.
pub async fn start_operator_with(
    plane: &ControlPlane,
    options: OperatorOptions,
) -> RunningOperator {
    let client = plane.client_as(OPERATOR_USER).await.expect("client");
    within("operator start", controller::start(client, options))
        .await
        .expect("operator starts")
}
pub async fn create<K>(api: &Api<K>, value: Value) -> K
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let object: K = serde_json::from_value(value).expect("typed object");
    within("create", api.create(&PostParams::default(), &object))
        .await
        .expect("created")
}
/// A GPU node as the kubelet and GPU feature discovery would register it.
pub async fn gpu_node(admin: &Client, name: &str, labels: Value, gpus: u32, product: &str) {
    let nodes: Api<Node> = Api::all(admin.clone());
    let mut labels = labels;
    labels["nvidia.com/gpu.product"] = json!(product);
    labels["kubernetes.io/hostname"] = json!(name);
    create(
        &nodes,
        json!({"metadata": {"name": name, "labels": labels}}),
    )
    .await;
    let status = json!({"status": {"capacity": {"nvidia.com/gpu": gpus.to_string(), "cpu": "64", "pods": "110"}}});
    within(
        "node status",
        nodes.patch_status(name, &PatchParams::default(), &Patch::Merge(&status)),
    )
    .await
    .expect("node status patched");
}
/// A pod holding `gpus` GPUs on `node`, Running, as the scheduler and kubelet would leave it.
pub async fn gpu_pod(admin: &Client, name: &str, node: &str, gpus: u32, annotations: Value) {
    let pods: Api<Pod> = Api::namespaced(admin.clone(), "ml");
    create(
        &pods,
        json!({"metadata": {"name": name, "namespace": "ml", "annotations": annotations},
               "spec": {"nodeName": node, "containers": [{"name": "main", "image": "registry.invalid/job:1",
                        "resources": {"limits": {"nvidia.com/gpu": gpus.to_string()}}}]}}),
    )
    .await;
    within(
        "pod status",
        pods.patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": {"phase": "Running"}})),
        ),
    )
    .await
    .expect("pod status patched");
}
pub async fn budget(admin: &Client, name: &str, spec: Value) {
    let budgets: Api<PowerBudget> = Api::all(admin.clone());
    create(
        &budgets,
        json!({"apiVersion": "kilowatt.dev/v1alpha1", "kind": "PowerBudget", "metadata": {"name": name}, "spec": spec}),
    )
    .await;
}
pub async fn patch_budget(admin: &Client, name: &str, spec: Value) {
    let budgets: Api<PowerBudget> = Api::all(admin.clone());
    within(
        "patch budget",
        budgets.patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": spec})),
        ),
    )
    .await
    .expect("budget patched");
}
pub async fn store(plane: &ControlPlane) -> EtcdPlanStore {
    within(
        "etcd",
        EtcdPlanStore::connect(
            std::slice::from_ref(&plane.etcd_endpoint),
            KeyLayout::new("/kilowatt-test"),
            Duration::from_secs(5),
        ),
    )
    .await
    .expect("etcd connects")
}
/// The plan in etcd if `accept` holds for it; otherwise what was seen, for a wait's message.
async fn accepted_plan(
    store: &EtcdPlanStore,
    accept: &impl Fn(&PublishedPlan) -> bool,
) -> Result<PublishedPlan, String> {
    let loaded = store.load().await.map_err(|e| e.to_string())?;
    match loaded.plan {
        Some(plan) if accept(&plan) => Ok(plan),
        Some(plan) => Err(format!(
            "revision {} status {} budgets {:?}",
            plan.revision,
            plan.status,
            plan.budgets
                .iter()
                .map(|b| (b.name.as_str(), b.effective_cap_watts, b.allocated_watts))
                .collect::<Vec<_>>()
        )),
        None => Err("no plan".to_owned()),
    }
}
/// The plan in etcd once `accept` holds for it.
pub async fn plan_where(
    store: &EtcdPlanStore,
    what: &str,
    accept: impl Fn(&PublishedPlan) -> bool,
) -> PublishedPlan {
    eventually(what, WAIT, || accepted_plan(store, &accept)).await
}
/// The plan in etcd once `accept` holds for it and it is rolled out: every node with a live agent has
/// its target written and acknowledged (nodes without one are not waited for).
pub async fn settled_plan_where(
    store: &EtcdPlanStore,
    what: &str,
    accept: impl Fn(&PublishedPlan) -> bool,
) -> PublishedPlan {
    eventually(what, WAIT, || async {
        let plan = accepted_plan(store, &accept).await?;
        let views = store.read_views().await.map_err(|e| e.to_string())?;
        for (node, target) in &plan.nodes {
            let Some(view) = views.get(node).filter(|v| v.inventory.is_some()) else {
                continue;
            };
            let written = view
                .written
                .as_ref()
                .ok_or(format!("{node}: nothing written"))?;
            let limits = |p: &NodePlan| {
                p.gpus
                    .iter()
                    .map(|g| g.power_limit_watts)
                    .collect::<Vec<_>>()
            };
            if limits(written) != limits(target) {
                return Err(format!(
                    "{node}: {:?} written, {:?} planned",
                    limits(written),
                    limits(target)
                ));
            }
            if view
                .ack
                .as_ref()
                .is_none_or(|ack| ack.revision < written.revision)
            {
                return Err(format!(
                    "{node}: revision {} not acknowledged",
                    written.revision
                ));
            }
        }
        Ok(plan)
    })
    .await
}
/// The revision of the first plan in etcd in which budget `budget` has the effective cap `cap`.
pub async fn plan_revision_with_cap(
    store: &EtcdPlanStore,
    budget: &str,
    cap: f64,
    limit: Duration,
) -> u64 {
    eventually("plan with the new cap", limit, || async {
        let loaded = store.load().await.map_err(|e| e.to_string())?;
        match loaded.plan {
            Some(plan)
                if plan
                    .budgets
                    .iter()
                    .any(|b| b.name == budget && b.effective_cap_watts == cap) =>
            {
                Ok(plan.revision)
            }
            other => Err(format!("{:?}", other.map(|p| p.revision))),
        }
    })
    .await
}
/// `GET path` on a local HTTP server: (status, body).
pub async fn http_get(address: std::net::SocketAddr, path: &str) -> (u16, String) {
    http_exchange(
        address,
        &format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"),
    )
    .await
}
/// Sends a raw HTTP/1.1 `request` (which must ask to close the connection) and reads the answer:
/// (status, body).
pub async fn http_exchange(address: std::net::SocketAddr, request: &str) -> (u16, String) {
    within("http exchange", async {
        let mut stream = tokio::net::TcpStream::connect(address)
            .await
            .expect("connect");
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut response = String::new();
        stream.read_to_string(&mut response).await.expect("read");
        let code = response
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = response
            .split_once("\r\n\r\n")
            .map_or(String::new(), |(_, b)| b.to_owned());
        (code, body)
    })
    .await
}

/// Who holds the operators' Lease `kilowatt-system/kilowatt-operator` now (`None`: nobody, or the
/// API did not answer).
pub async fn lease_holder(admin: &Client) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(admin.clone(), "kilowatt-system");
    within("lease", leases.get_opt("kilowatt-operator"))
        .await
        .ok()
        .flatten()
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
}

/// Budget `name`'s status now; `None` when it has none or cannot be read.
pub async fn status_of_budget(admin: &Client, name: &str) -> Option<PowerBudgetStatus> {
    let budgets: Api<PowerBudget> = Api::all(admin.clone());
    budgets.get(name).await.ok()?.status
}

/// Waits up to `timeout` until `check` accepts budget `name`'s status, and returns it.
pub async fn budget_status_where(
    admin: &Client,
    name: &str,
    what: &str,
    timeout: Duration,
    check: impl Fn(&PowerBudgetStatus) -> bool,
) -> PowerBudgetStatus {
    eventually(what, timeout, || async {
        match status_of_budget(admin, name).await {
            Some(status) if check(&status) => Ok(status),
            other => Err(format!("{other:?}")),
        }
    })
    .await
}
