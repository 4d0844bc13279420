//! The Grafana dashboards (`dashboards/*.json`) against a real Prometheus (Debian's `prometheus`)
//! scraping a real operator process and four agent processes (simulated GPUs running a training curve,
//! GPUs mapped to pods by a fake kubelet's pod-resources API): every panel query and every template
//! variable query returns data, and every `kilowatt_*` metric a query names has series.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use kilowatt_node_agent::pod_resources::proto::pod_resources_lister_server::{
    PodResourcesLister, PodResourcesListerServer,
};
use kilowatt_node_agent::pod_resources::proto::{
    AllocatableResourcesRequest, AllocatableResourcesResponse, ContainerDevices,
    ContainerResources, GetPodResourcesRequest, GetPodResourcesResponse, ListPodResourcesRequest,
    ListPodResourcesResponse, PodResources,
};
use kilowatt_operator::store::PlanStore;
use kilowatt_tests::prometheus::PrometheusServer;
use kilowatt_tests::*;
use kilowatt_tests::{Etcd, eventually};
use serde_json::Value;
use tonic::{Request, Response, Status};

/// A kubelet whose `List` says which pod holds each simulated GPU (`SIM-<node>-<index>`).
struct FakeKubelet {
    list: ListPodResourcesResponse,
}

#[tonic::async_trait]
impl PodResourcesLister for FakeKubelet {
    async fn list(
        &self,
        _: Request<ListPodResourcesRequest>,
    ) -> Result<Response<ListPodResourcesResponse>, Status> {
        Ok(Response::new(self.list.clone()))
    }

    async fn get_allocatable_resources(
        &self,
        _: Request<AllocatableResourcesRequest>,
    ) -> Result<Response<AllocatableResourcesResponse>, Status> {
        Err(Status::unimplemented("not used by kilowatt-agent"))
    }

    async fn get(
        &self,
        _: Request<GetPodResourcesRequest>,
    ) -> Result<Response<GetPodResourcesResponse>, Status> {
        Err(Status::unimplemented("not used by kilowatt-agent"))
    }
}

/// The pods of the faults fleet, each holding its node's four GPUs.
fn pod_resources() -> ListPodResourcesResponse {
    let pods = [
        ("n1", "serve-1"),
        ("n2", "train-2"),
        ("n3", "train-3"),
        ("n4", "serve-4"),
    ];
    ListPodResourcesResponse {
        pod_resources: pods
            .iter()
            .map(|(node, pod)| PodResources {
                name: (*pod).to_owned(),
                namespace: "ml".to_owned(),
                containers: vec![ContainerResources {
                    name: "main".to_owned(),
                    devices: vec![ContainerDevices {
                        resource_name: "nvidia.com/gpu".to_owned(),
                        device_ids: (0..4).map(|i| format!("SIM-{node}-{i}")).collect(),
                        topology: None,
                    }],
                    ..ContainerResources::default()
                }],
            })
            .collect(),
    }
}

fn serve_kubelet(socket: &Path) -> tokio::task::JoinHandle<()> {
    let listener = tokio::net::UnixListener::bind(socket).expect("kubelet socket binds");
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(PodResourcesListerServer::new(FakeKubelet {
                list: pod_resources(),
            }))
            .serve_with_incoming(incoming)
            .await;
    })
}

/// Prometheus scraping the operator and every agent each second, with each agent's node as a label
/// (as the chart's relabelling does from the pod's node name).
struct Prometheus {
    server: PrometheusServer,
}

impl Prometheus {
    fn start(dir: &Path, operator: std::net::SocketAddr, nodes: &[NodeUnderTest]) -> Prometheus {
        let agents: String = nodes
            .iter()
            .map(|n| {
                format!(
                    "      - targets: ['{}']\n        labels: {{node: {}}}\n",
                    n.metrics_address, n.name
                )
            })
            .collect();
        let server = PrometheusServer::start(
            dir,
            &format!(
                "\x20 - job_name: kilowatt-operator\n\
                 \x20   static_configs:\n\
                 \x20     - targets: ['{operator}']\n\
                 \x20 - job_name: kilowatt-agent\n\
                 \x20   static_configs:\n{agents}"
            ),
        );
        Prometheus { server }
    }

    /// The result vector of an instant query, or why there is none.
    async fn query(&self, promql: &str) -> Result<Vec<Value>, String> {
        let (status, body) = http_exchange(
            self.server.address,
            &format!(
                // NB: HTTP/1.0, so that the answer is not chunked.
                "GET /api/v1/query?query={} HTTP/1.0\r\nHost: test\r\n\r\n",
                percent_encoded(promql)
            ),
        )
        .await;
        let answer: Value =
            serde_json::from_str(&body).map_err(|e| format!("{status}: {e}: {body}"))?;
        if answer["status"] != "success" {
            return Err(format!("{status}: {}", answer["error"]));
        }
        Ok(answer["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }
}

fn percent_encoded(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A dashboard query with every template variable matching everything.
fn with_variables_open(expr: &str) -> String {
    ["$budget", "$node", "$gpu", "$namespace"]
        .iter()
        .fold(expr.to_owned(), |e, var| e.replace(var, ".*"))
}

/// `label_values(SELECTOR, LABEL)` (Grafana's variable query) as PromQL: `count by (LABEL) (SELECTOR)`.
fn label_values_as_promql(query: &str) -> Option<String> {
    let inner = query.strip_prefix("label_values(")?.strip_suffix(')')?;
    let (selector, label) = inner.rsplit_once(',')?;
    Some(format!("count by ({}) ({selector})", label.trim()))
}

/// Every `kilowatt_*` metric name in `expr`, histogram suffixes removed.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(start) = rest.find("kilowatt_") {
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        names.insert(name.trim_end_matches("_bucket").to_owned());
        rest = &tail[end..];
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn every_dashboard_query_returns_data_from_a_real_prometheus() {
    let (plane, admin) = prepared_cluster().await;
    let etcd = Etcd::start().await.expect("plan etcd starts");
    let dir = test_dir("dashboards");
    let socket = dir.join("kubelet.sock");
    let kubelet = serve_kubelet(&socket);
    fleet(&admin).await;
    // One budget with an efficiency policy, so that its panel's series exist.
    patch_budget(
        &admin,
        "rack-b",
        serde_json::json!({"efficiency": {"maxSlowdown": 0.02}}),
    )
    .await;
    let profile = |name: &str| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples/profiles")
            .join(name)
            .display()
            .to_string()
    };
    let mut nodes: Vec<NodeUnderTest> = ALL
        .iter()
        .map(|n| {
            let mut node = NodeUnderTest::new(n, &dir, &etcd.endpoint, None);
            // n1 runs a locked-clock curve, so that SM clocks are reported; the rest a power-limit one.
            let curve = if *n == "n1" {
                "llm-finetune-h100-clocks.yaml"
            } else {
                "llm-pretrain-h100.yaml"
            };
            node.extra_args = vec![
                "--simulated-profile".into(),
                profile(curve),
                "--pod-resources-socket".into(),
                socket.display().to_string(),
            ];
            node
        })
        .collect();
    for node in &mut nodes {
        node.start_agent();
    }
    let operator = OperatorProcess::start(&plane, &etcd.endpoint, &dir.join("operator.log"));
    let store = plan_store(&etcd.endpoint).await;
    settled(&store, &nodes, &ALL, "first plan enforced everywhere").await;
    // Each agent registers which pod the kubelet gave its GPUs, and the plan puts each pod's limit on
    // those GPUs.
    eventually(
        "every agent's inventory names the pod on its GPUs, and so does its plan",
        Duration::from_secs(60),
        || async {
            let views = store.read_views().await.map_err(|e| e.to_string())?;
            for (node, pod) in [
                ("n1", "serve-1"),
                ("n2", "train-2"),
                ("n3", "train-3"),
                ("n4", "serve-4"),
            ] {
                let view = views.get(node).ok_or(format!("no view of {node}"))?;
                let inventory = view
                    .inventory
                    .as_ref()
                    .ok_or(format!("{node}: no inventory"))?;
                let holder = format!("ml/{pod}");
                let registered = inventory.pods_reported
                    && inventory.gpus.iter().all(|g| g.pods == [holder.as_str()]);
                let planned = view.written.as_ref().is_some_and(|plan| {
                    plan.gpus.len() == 4
                        && plan.gpus.iter().all(|g| g.pod.as_deref() == Some(&holder))
                });
                if !(registered && planned) {
                    return Err(format!("{node}: {inventory:?} {:?}", view.written));
                }
            }
            Ok(())
        },
    )
    .await;
    // The operator serves the live page too, fed by its own passes.
    let (status, page) = http_exchange(
        operator.address,
        "GET / HTTP/1.1\r\nHost: operator\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200);
    assert!(page.contains("<title>Kilowatt</title>"), "{page}");
    let overview = eventually(
        "the page's data shows every budget with its measured watts",
        Duration::from_secs(30),
        || async {
            let (status, body) = http_exchange(
                operator.address,
                "GET /api/v1/overview HTTP/1.1\r\nHost: operator\r\nConnection: close\r\n\r\n",
            )
            .await;
            let overview: Value =
                serde_json::from_str(&body).map_err(|e| format!("{status}: {e}"))?;
            let budgets = overview["budgets"].as_array().cloned().unwrap_or_default();
            let measured = budgets.iter().all(|b| b["measuredWatts"].is_number());
            (budgets.len() == 3 && measured)
                .then_some(overview.clone())
                .ok_or(format!("{overview}"))
        },
    )
    .await;
    assert_eq!(overview["source"], "operator");
    assert!(
        overview["plan"]["revision"]
            .as_u64()
            .is_some_and(|r| r >= 1)
    );
    assert!(
        overview["changes"][0]["reasons"][0].is_string(),
        "{overview}"
    );
    let prometheus = Prometheus::start(&dir, operator.address, &nodes);
    eventually("Prometheus listens", Duration::from_secs(60), || async {
        tokio::net::TcpStream::connect(prometheus.server.address)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    })
    .await;
    eventually(
        "Prometheus scraped all five targets",
        Duration::from_secs(60),
        || async {
            let up = prometheus.query("sum(up)").await?;
            match up.first().and_then(|s| s["value"][1].as_str()) {
                Some("5") => Ok(()),
                other => Err(format!("sum(up) = {other:?}")),
            }
        },
    )
    .await;
    // Enough scrapes for rate() and increase() to have two samples, and for a resync to bring the
    // agents' measured power into the budgets.
    tokio::time::sleep(Duration::from_secs(6)).await;

    let mut queries = Vec::new();
    let mut files: Vec<_> =
        std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("../dashboards"))
            .expect("dashboards directory")
            .map(|entry| entry.expect("entry").path())
            .filter(|path| path.extension().is_some_and(|e| e == "json"))
            .collect();
    files.sort();
    assert_eq!(files.len(), 5, "{files:?}");
    for file in &files {
        let dashboard: Value =
            serde_json::from_str(&std::fs::read_to_string(file).expect("read")).expect("JSON");
        let name = file
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("?")
            .to_owned();
        for variable in dashboard["templating"]["list"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if variable["type"] == "query" {
                let query = variable["query"]["query"].as_str().expect("variable query");
                let promql = label_values_as_promql(&with_variables_open(query))
                    .unwrap_or_else(|| panic!("{name}: unsupported variable query {query}"));
                queries.push((format!("{name} variable {}", variable["name"]), promql));
            }
        }
        for panel in dashboard["panels"].as_array().into_iter().flatten() {
            for target in panel["targets"].as_array().into_iter().flatten() {
                let expr = target["expr"].as_str().expect("expr");
                queries.push((
                    format!("{name} panel {:?}", panel["title"].as_str().unwrap_or("?")),
                    with_variables_open(expr),
                ));
            }
        }
    }
    let names: BTreeSet<String> = queries.iter().flat_map(|(_, q)| metric_names(q)).collect();
    for metric in &names {
        queries.push((
            format!("metric {metric}"),
            format!("count({{__name__=~\"{metric}(_bucket)?\"}})"),
        ));
    }

    let mut empty = Vec::new();
    for (what, promql) in &queries {
        match prometheus.query(promql).await {
            Ok(result) if !result.is_empty() => {}
            Ok(_) => empty.push(format!("{what}: no data for {promql}")),
            Err(error) => empty.push(format!("{what}: {error} for {promql}")),
        }
    }
    let _ = writeln!(
        std::io::stderr(),
        "dashboards: {} queries from {} dashboards ({} metric names) run against Prometheus, {} without data",
        queries.len(),
        files.len(),
        names.len(),
        empty.len()
    );
    assert!(empty.is_empty(), "{empty:#?}");

    drop(prometheus);
    drop(operator);
    drop(nodes);
    kubelet.abort();
    let _ = std::fs::remove_dir_all(&dir);
    let _ = plane;
}
