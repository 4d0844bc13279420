//! Who may do what, on a real control plane and a real etcd with authentication: the operator reviews
//! an agent's pod-bound ServiceAccount token and issues etcd credentials that may write only the keys
//! of the node that pod runs on; the agent runs with them and keeps them across etcd sessions; other
//! callers are refused. What-if questions beyond localhost need a user the API server allows
//! `create` on `powerbudgets/whatif`, are answered one at a time, and a flood of them (with every agent
//! reconnecting after an etcd restart) does not delay a cap cut.

use std::time::Duration;

use etcd_client::{Client, ConnectOptions};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kilowatt_agent_core::gpu::simulated::SimulatedGpus;
use kilowatt_agent_core::telemetry::Telemetry;
use kilowatt_crds::plan::{AgentCredentials, KeyLayout};
use kilowatt_node_agent::agent::{self, AgentOptions};
use kilowatt_node_agent::credentials::{self, CredentialsError, CredentialsSource};
use kilowatt_operator::controller::{HttpsListener, WhatIfAuth};
use kilowatt_operator::store::PlanStore;
use kilowatt_operator::store::etcd::{EtcdCredentials, EtcdPlanStore};
use kilowatt_tests::*;
use kilowatt_tests::{ControlPlane, Etcd, TestPki, create_from_yaml, eventually, within};
use kube::Client as KubeClient;
use kube::api::{Api, PostParams};
use serde_json::json;

const PREFIX: &str = "/kilowatt-test";
const AGENTS: &str = "kilowatt-system";
const AGENT_ACCOUNT: &str = "kilowatt-agent";
const WAIT: Duration = Duration::from_secs(45);

/// A pod on `node` running as `account`, as the scheduler would leave it.
async fn pod_on(admin: &KubeClient, namespace: &str, name: &str, node: &str, account: &str) {
    let pods: Api<Pod> = Api::namespaced(admin.clone(), namespace);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"nodeName": node, "serviceAccountName": account,
                 "containers": [{"name": "main", "image": "registry.invalid/agent:1"}]}
    }))
    .expect("pod");
    within("create pod", pods.create(&PostParams::default(), &pod))
        .await
        .expect("pod created");
}

/// `POST /api/v1/agent-credentials` with `token` as bearer token, if any: (status, body).
async fn ask(address: std::net::SocketAddr, token: Option<&str>) -> (u16, String) {
    let authorization = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    http_exchange(
        address,
        &format!(
            "POST /api/v1/agent-credentials HTTP/1.1\r\nHost: test\r\n{authorization}\
             Content-Length: 0\r\nConnection: close\r\n\r\n"
        ),
    )
    .await
}

async fn etcd_as(etcd: &Etcd, user: &str, password: &str) -> Client {
    let options = ConnectOptions::new()
        .with_user(user, password)
        .with_timeout(Duration::from_secs(10));
    within(
        "etcd client",
        Client::connect([etcd.endpoint.as_str()], Some(options)),
    )
    .await
    .expect("etcd accepts the user")
}

/// Whether a put of `key` as `client` succeeds; panics on any failure other than etcd's refusal.
async fn may_put(client: &mut Client, key: String) -> bool {
    match within("put", client.put(key.as_str(), b"{}".to_vec(), None)).await {
        Ok(_) => true,
        Err(etcd_client::Error::GRpcStatus(status))
            if status.code() == tonic::Code::PermissionDenied =>
        {
            false
        }
        Err(error) => panic!("put {key}: {error}"),
    }
}

fn write_token(name: &str, token: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("kilowatt-{name}-{}", std::process::id()));
    std::fs::write(&path, token).expect("token file");
    path
}

/// An agent for `node` with 4 simulated GPUs, getting its credentials from `url` with `token_file`;
/// with `pki`, over TLS to etcd (with its client certificate) and to the operator (trusting its CA).
fn start_agent(
    etcd: &Etcd,
    node: &str,
    url: &str,
    token_file: &std::path::Path,
    pki: Option<&TestPki>,
) -> (
    Telemetry,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let options = AgentOptions {
        credentials: Some(CredentialsSource {
            url: url.to_owned(),
            token_file: token_file.to_owned(),
            ca_file: pki.map(|p| p.ca.clone()),
        }),
        etcd_tls: pki.map(|p| p.etcd_client_tls().expect("etcd client TLS")),
        ..agent_options(node, &etcd.endpoint, PREFIX, Duration::from_secs(4))
    };
    let telemetry = Telemetry::new().expect("telemetry");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let backend = Box::new(SimulatedGpus::uniform(
        node, 4, "H100-SXM", 200.0, 700.0, None,
    ));
    let reporting = telemetry.clone();
    let task = tokio::spawn(async move {
        agent::run(backend, options, reporting, async {
            let _ = stopped.await;
        })
        .await
        .expect("agent runs");
    });
    (telemetry, stop, task)
}

/// The agents' ServiceAccount, GPU nodes `nodes` in rack `a` under budget `rack-a`, an inference pod on
/// `n1` (so n1's plan raises its GPUs once its agent has acknowledged their floors) and the agent's
/// DaemonSet pod on `n1`; returns that pod's token for audience `kilowatt`.
async fn rack_with_agent_pod_on_n1(
    plane: &ControlPlane,
    admin: &KubeClient,
    nodes: &[&str],
) -> String {
    create_from_yaml(admin, "helm/kilowatt/rbac/agent.yaml")
        .await
        .expect("agent ServiceAccount applies");
    for node in nodes {
        gpu_node(
            admin,
            node,
            json!({"rack": "a"}),
            4,
            "NVIDIA-H100-80GB-HBM3",
        )
        .await;
    }
    budget(
        admin,
        "rack-a",
        json!({"capWatts": 20000.0, "nodeOverheadWatts": 500.0,
               "nodeSelector": {"matchLabels": {"rack": "a"}}}),
    )
    .await;
    gpu_pod(
        admin,
        "serve-0",
        "n1",
        4,
        json!({"kilowatt.dev/workload": "inference"}),
    )
    .await;
    pod_on(admin, AGENTS, "kilowatt-agent-n1", "n1", AGENT_ACCOUNT).await;
    plane
        .service_account_token(AGENTS, AGENT_ACCOUNT, "kilowatt", Some("kilowatt-agent-n1"))
        .await
        .expect("agent token")
}

/// Options of an operator replica on `etcd` as its root user, with a 2 s resync.
fn operator_as_root(
    plane: &ControlPlane,
    etcd: &Etcd,
    password: String,
) -> (
    EtcdCredentials,
    kilowatt_operator::controller::OperatorOptions,
) {
    let root = EtcdCredentials {
        user: "root".to_owned(),
        password,
    };
    let mut operator_options = options(plane, "replica-0", Duration::from_secs(2));
    operator_options.etcd_endpoints = vec![etcd.endpoint.clone()];
    operator_options.etcd_credentials = Some(root.clone());
    (root, operator_options)
}

/// Waits until `node`'s agent acknowledged a plan that raises every GPU above its floor, with the limits
/// read back equal to the plan's; returns the GPUs it registered and the planned limits.
async fn acknowledged_raised_plan(store: &EtcdPlanStore, node: &str) -> (usize, Vec<f64>) {
    eventually(
        &format!("{node} acknowledges its raised plan"),
        WAIT,
        || async {
            let views = store.read_views().await.map_err(|e| e.to_string())?;
            let view = views.get(node).ok_or("no keys for the node")?;
            let inventory = view.inventory.as_ref().ok_or("no inventory")?;
            let (Some(plan), Some(ack)) = (&view.written, &view.ack) else {
                return Err(format!("plan {:?} ack {:?}", view.written, view.ack));
            };
            let planned: Vec<f64> = plan.gpus.iter().map(|g| g.power_limit_watts).collect();
            let raised = plan
                .gpus
                .iter()
                .all(|g| g.power_limit_watts > g.floor_watts);
            if raised && ack.revision == plan.revision && ack.power_limits_watts == planned {
                Ok((inventory.gpus.len(), planned))
            } else {
                Err(format!("plan {} {planned:?}, ack {ack:?}", plan.revision))
            }
        },
    )
    .await
}

/// `POST /api/v1/whatif` for `budget` at `cap_watts`, with `token` as bearer token if any: (status,
/// body).
async fn ask_whatif(
    address: std::net::SocketAddr,
    token: Option<&str>,
    budget: &str,
    cap_watts: f64,
) -> (u16, String) {
    let body = json!({"budget": budget, "capWatts": cap_watts}).to_string();
    let authorization = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    http_exchange(
        address,
        &format!(
            "POST /api/v1/whatif HTTP/1.1\r\nHost: test\r\n{authorization}Content-Type: \
             application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
    .await
}

/// ServiceAccount `kilowatt-system/name` bound to ClusterRole `role`, and a token of it for the API
/// server's audience (as `kubectl create token` makes one).
async fn whatif_user(plane: &ControlPlane, admin: &KubeClient, name: &str, role: &str) -> String {
    plane
        .create_service_account(AGENTS, name)
        .await
        .expect("service account");
    let bindings: Api<ClusterRoleBinding> = Api::all(admin.clone());
    create(
        &bindings,
        json!({"metadata": {"name": name},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
               "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": AGENTS}]}),
    )
    .await;
    plane
        .service_account_token(AGENTS, name, "https://kubernetes.default.svc", None)
        .await
        .expect("token")
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_the_agent_of_a_node_may_write_that_nodes_keys() {
    let (plane, admin) = prepared_cluster().await;
    let (etcd, root_password) = within("etcd with auth", Etcd::start_with_auth())
        .await
        .expect("etcd with auth starts");
    let agent_token = rack_with_agent_pod_on_n1(&plane, &admin, &["n1", "n2"]).await;
    plane
        .create_service_account("ml", "trainer")
        .await
        .expect("trainer account");
    pod_on(&admin, "ml", "trainer-0", "n1", "trainer").await;
    let trainer_token = plane
        .service_account_token("ml", "trainer", "kilowatt", Some("trainer-0"))
        .await
        .expect("trainer token");
    // The agent's account, but a token bound to no pod, so to no node.
    let unbound_token = plane
        .service_account_token(AGENTS, AGENT_ACCOUNT, "kilowatt", None)
        .await
        .expect("unbound token");
    // The agent's pod, but a token for the API server rather than for Kilowatt.
    let api_token = plane
        .service_account_token(
            AGENTS,
            AGENT_ACCOUNT,
            "https://kubernetes.default.svc",
            Some("kilowatt-agent-n1"),
        )
        .await
        .expect("API server token");

    let (root, operator_options) = operator_as_root(&plane, &etcd, root_password);
    let operator = start_operator_with(&plane, operator_options).await;
    let url = format!("http://{}/api/v1/agent-credentials", operator.address);
    let keys = KeyLayout::new(PREFIX);

    // No token, an unknown token, a token for another audience, another ServiceAccount's token, a
    // token bound to no node: refused, saying why.
    let (status, body) = ask(operator.address, None).await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = ask(operator.address, Some("not-a-token")).await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = ask(operator.address, Some(&api_token)).await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = ask(operator.address, Some(&trainer_token)).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("system:serviceaccount:ml:trainer"), "{body}");
    let (status, body) = ask(operator.address, Some(&unbound_token)).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("not bound to a pod on a node"), "{body}");

    // The agent's token earns credentials for n1, the node its pod runs on.
    let (status, body) = ask(operator.address, Some(&agent_token)).await;
    assert_eq!(status, 200, "{body}");
    let issued: AgentCredentials = serde_json::from_str(&body).expect("credentials");
    assert_eq!(issued.node, "n1");
    assert_eq!(issued.user, "kilowatt-agent-n1");

    // With them etcd lets n1's keys be written, and nothing else: not n2's, not the plans.
    let mut as_n1 = etcd_as(&etcd, &issued.user, &issued.password).await;
    assert!(may_put(&mut as_n1, keys.node_ack("n1")).await);
    assert!(!may_put(&mut as_n1, keys.node_ack("n2")).await);
    assert!(!may_put(&mut as_n1, keys.node_inventory("n2")).await);
    assert!(!may_put(&mut as_n1, keys.plan()).await);
    assert!(!may_put(&mut as_n1, keys.node_plan("n1")).await);
    within("read own plan", as_n1.get(keys.node_plan("n1"), None))
        .await
        .expect("n1's plan is readable");
    // Remove the test's write: n1's acknowledgement is its agent's to make.
    let mut as_root = etcd_as(&etcd, &root.user, &root.password).await;
    within("delete test ack", as_root.delete(keys.node_ack("n1"), None))
        .await
        .expect("deleted");

    // An agent that claims to be n2 with n1's token gets n1's credentials, sees that, and writes
    // nothing for n2.
    let token_file = write_token("agent-token", &agent_token);
    let claimed = credentials::fetch(
        &CredentialsSource {
            url: url.clone(),
            token_file: token_file.clone(),
            ca_file: None,
        },
        "n2",
        Duration::from_secs(10),
    )
    .await;
    assert!(
        matches!(&claimed, Err(CredentialsError::WrongNode { issued, node }) if issued == "n1" && node == "n2"),
        "{claimed:?}"
    );
    let (impostor, stop_impostor, impostor_task) =
        start_agent(&etcd, "n2", &url, &token_file, None);
    eventually("the impostor agent fails to register", WAIT, || async {
        let text = impostor.render().map_err(|e| e.to_string())?;
        if metric(&text, "kilowatt_agent_etcd_errors_total") >= 1.0 {
            Ok(())
        } else {
            Err("no failed session yet".to_owned())
        }
    })
    .await;
    stop_impostor.send(()).expect("impostor listening");
    within("impostor stops", impostor_task)
        .await
        .expect("impostor task");
    let n2_keys = within(
        "n2 keys",
        as_root.get(
            keys.node_prefix() + "n2/",
            Some(etcd_client::GetOptions::new().with_prefix()),
        ),
    )
    .await
    .expect("read n2's keys");
    let written: Vec<String> = n2_keys
        .kvs()
        .iter()
        .filter_map(|kv| kv.key_str().ok().map(str::to_owned))
        .filter(|key| *key != keys.node_plan("n2"))
        .collect();
    assert!(
        written.is_empty(),
        "written for n2 besides its plan: {written:?}"
    );

    // The real agent of n1 registers its inventory and, reading and watching its plan key, follows
    // the operator's rollout from the floors up to the raised plan, acknowledging each step.
    let (_telemetry, stop_agent, agent_task) = start_agent(&etcd, "n1", &url, &token_file, None);
    let store = within(
        "plan store",
        EtcdPlanStore::connect_as(
            std::slice::from_ref(&etcd.endpoint),
            keys.clone(),
            Duration::from_secs(5),
            Some(&root),
            None,
        ),
    )
    .await
    .expect("root connects");
    let acknowledged = acknowledged_raised_plan(&store, "n1").await;
    assert_eq!(acknowledged.0, 4);

    // Credentials issued again for n1 (a second agent pod on n1 asked) change its password: etcd
    // refuses the running agent's next report, and it registers again with credentials of its own.
    let inventory_lease = || {
        let mut root_client = as_root.clone();
        let key = keys.node_inventory("n1");
        async move {
            let response = root_client
                .get(key.as_str(), None)
                .await
                .map_err(|e| e.to_string())?;
            let entry = response.kvs().first().ok_or("no inventory")?;
            Ok::<i64, String>(entry.lease())
        }
    };
    let first_lease = within("inventory lease", inventory_lease())
        .await
        .expect("n1 registered");
    let (status, body) = ask(operator.address, Some(&agent_token)).await;
    assert_eq!(status, 200, "{body}");
    eventually("n1 registers again under a new lease", WAIT, || async {
        match inventory_lease().await {
            Ok(lease) if lease != first_lease => Ok(()),
            seen => Err(format!("{seen:?}")),
        }
    })
    .await;

    let (status, metrics) = http_get(operator.address, "/metrics").await;
    assert_eq!(status, 200, "{metrics}");
    let outcome = |o: &str| {
        metric(
            &metrics,
            &format!("kilowatt_agent_credentials_issued_total{{outcome=\"{o}\"}}"),
        )
    };
    // The test's two requests, the impostor's (refused by the agent itself, after issue) and the real
    // agent's two sessions.
    assert!(outcome("issued") >= 5.0, "{metrics}");
    assert_eq!(outcome("unauthenticated"), 3.0, "{metrics}");
    assert_eq!(outcome("forbidden"), 2.0, "{metrics}");
    // The first issue for n1 creates its role (1), grants its 4 keys (4), adds its user (1) and gives
    // it the role (1); every later one only sets a new password.
    let auth_writes = metric(&metrics, "kilowatt_agent_credential_auth_writes_total");
    assert_eq!(auth_writes, 7.0 + (outcome("issued") - 1.0), "{metrics}");

    stop_agent.send(()).expect("agent listening");
    within("agent stops", agent_task).await.expect("agent task");
    operator.shutdown().await;
    let _ = std::fs::remove_file(&token_file);
    println!("acknowledged limits on n1: {:?}", acknowledged.1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_tls_tokens_passwords_and_plans_cross_only_verified_connections() {
    let (plane, admin) = prepared_cluster().await;
    let dir = test_dir("tls");
    let (ours, theirs) = (dir.join("pki"), dir.join("other-pki"));
    std::fs::create_dir_all(&ours).expect("pki directory");
    std::fs::create_dir_all(&theirs).expect("pki directory");
    let pki = TestPki::create(&ours, "ours").expect("test PKI");
    let other = TestPki::create(&theirs, "theirs").expect("second test PKI");
    let (etcd, root_password) = within("etcd with TLS", Etcd::start_with_tls_and_auth(&pki))
        .await
        .expect("etcd with TLS and auth starts");
    assert!(etcd.endpoint.starts_with("https://"));
    let agent_token = rack_with_agent_pod_on_n1(&plane, &admin, &["n1"]).await;

    let (root, mut operator_options) = operator_as_root(&plane, &etcd, root_password);
    operator_options.etcd_tls = Some(pki.etcd_client_tls().expect("etcd client TLS"));
    operator_options.https = Some(HttpsListener {
        listen: "127.0.0.1:0".parse().expect("address"),
        config: std::sync::Arc::new(
            kilowatt_plumbing::tls::server_config(&pki.server_cert, &pki.server_key)
                .expect("server TLS"),
        ),
    });
    let operator = start_operator_with(&plane, operator_options).await;
    let https = operator.https_address.expect("an HTTPS listener");

    // The plain listener keeps serving the rest, but issues no credentials.
    let (status, body) = ask(operator.address, Some(&agent_token)).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("over HTTPS only"), "{body}");
    let (status, _) = http_get(operator.address, "/healthz").await;
    assert_eq!(status, 200);

    // Over HTTPS, trusting the operator's CA, the agent's token earns n1's credentials; trusting
    // another CA, the handshake fails before the token is sent.
    let token_file = write_token("tls-agent-token", &agent_token);
    let url = format!(
        "https://127.0.0.1:{}/api/v1/agent-credentials",
        https.port()
    );
    let source = |ca: &std::path::Path| CredentialsSource {
        url: url.clone(),
        token_file: token_file.clone(),
        ca_file: Some(ca.to_owned()),
    };
    let issued = credentials::fetch(&source(&pki.ca), "n1", Duration::from_secs(10))
        .await
        .expect("credentials over HTTPS");
    assert_eq!(issued.node, "n1");
    let refused = credentials::fetch(&source(&other.ca), "n1", Duration::from_secs(10)).await;
    match refused {
        Err(CredentialsError::Unreachable { message, .. }) => {
            assert!(message.contains("certificate"), "{message}")
        }
        other => panic!("expected a failed handshake, got {other:?}"),
    }

    // etcd takes neither a client without a certificate nor plain HTTP.
    let ca_only = etcd_client::TlsOptions::new().ca_certificate(
        etcd_client::Certificate::from_pem(std::fs::read(&pki.ca).expect("CA")),
    );
    let without_certificate = Client::connect(
        [etcd.endpoint.as_str()],
        Some(
            ConnectOptions::new()
                .with_tls(ca_only)
                .with_user("root", root.password.as_str())
                .with_timeout(Duration::from_secs(5)),
        ),
    )
    .await;
    assert!(
        without_certificate.is_err(),
        "etcd accepted a client without a certificate"
    );
    let plain = etcd.endpoint.replacen("https://", "http://", 1);
    let plain_get = async {
        let mut client = Client::connect(
            [plain.as_str()],
            Some(ConnectOptions::new().with_timeout(Duration::from_secs(3))),
        )
        .await?;
        client.get("/", None).await
    };
    assert!(plain_get.await.is_err(), "etcd answered plain HTTP");

    // End to end: the agent gets its credentials over HTTPS, reaches etcd over TLS, and acknowledges
    // a plan that raises its GPUs.
    let (_telemetry, stop_agent, agent_task) =
        start_agent(&etcd, "n1", &url, &token_file, Some(&pki));
    let store = within(
        "plan store over TLS",
        EtcdPlanStore::connect_as(
            std::slice::from_ref(&etcd.endpoint),
            KeyLayout::new(PREFIX),
            Duration::from_secs(5),
            Some(&root),
            Some(&pki.etcd_client_tls().expect("etcd client TLS")),
        ),
    )
    .await
    .expect("root connects over TLS");
    let (gpus, planned) = acknowledged_raised_plan(&store, "n1").await;
    assert_eq!(gpus, 4);
    println!("acknowledged over TLS on n1: {planned:?}");

    stop_agent.send(()).expect("agent listening");
    within("agent stops", agent_task).await.expect("agent task");
    operator.shutdown().await;
    let _ = std::fs::remove_file(&token_file);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn what_if_callers_need_a_token_of_a_user_allowed_the_budgets_whatif() {
    let (plane, admin) = prepared_cluster().await;
    create_from_yaml(&admin, "helm/kilowatt/rbac/whatif.yaml")
        .await
        .expect("the chart's what-if ClusterRole applies");
    let roles: Api<ClusterRole> = Api::all(admin.clone());
    create(
        &roles,
        json!({"metadata": {"name": "rack-a-whatif"},
               "rules": [{"apiGroups": ["kilowatt.dev"], "resources": ["powerbudgets/whatif"],
                          "resourceNames": ["rack-a"], "verbs": ["create"]}]}),
    )
    .await;
    gpu_node(
        &admin,
        "n1",
        json!({"rack": "a"}),
        4,
        "NVIDIA-H100-80GB-HBM3",
    )
    .await;
    gpu_node(
        &admin,
        "n2",
        json!({"rack": "b"}),
        4,
        "NVIDIA-H100-80GB-HBM3",
    )
    .await;
    for (name, rack) in [("rack-a", "a"), ("rack-b", "b")] {
        budget(
            &admin,
            name,
            json!({"capWatts": 3000.0, "nodeOverheadWatts": 500.0,
                   "nodeSelector": {"matchLabels": {"rack": rack}}}),
        )
        .await;
    }
    gpu_pod(
        &admin,
        "serve-0",
        "n1",
        4,
        json!({"kilowatt.dev/workload": "inference"}),
    )
    .await;
    let planner = whatif_user(&plane, &admin, "planner", "kilowatt-whatif").await;
    let rack_a_only = whatif_user(&plane, &admin, "rack-a-planner", "rack-a-whatif").await;
    plane
        .create_service_account(AGENTS, "intruder")
        .await
        .expect("service account");
    let intruder = plane
        .service_account_token(AGENTS, "intruder", "https://kubernetes.default.svc", None)
        .await
        .expect("token");

    // On 127.0.0.1 the operator would answer anyone on the machine; told to authorize everywhere, it
    // behaves as on the pod's address.
    let mut operator_options = options(&plane, "replica-0", Duration::from_secs(2));
    operator_options.whatif_auth = WhatIfAuth::Always;
    let operator = start_operator_with(&plane, operator_options).await;
    let at = operator.address;

    let (status, body) = ask_whatif(at, None, "rack-a", 2000.0).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("bearer token"), "{body}");
    let (status, body) = ask_whatif(at, Some("not-a-token"), "rack-a", 2000.0).await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = ask_whatif(at, Some(&intruder), "rack-a", 2000.0).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("system:serviceaccount:kilowatt-system:intruder")
            && body.contains("powerbudgets/whatif"),
        "{body}"
    );
    let (status, body) = ask_whatif(at, Some(&rack_a_only), "rack-b", 2000.0).await;
    assert_eq!(
        status, 403,
        "a user allowed rack-a only asked about rack-b: {body}"
    );

    let answer = |body: &str| -> kilowatt_operator::http::whatif::WhatIfAnswer {
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
    };
    let (status, body) = eventually("the planner is answered", WAIT, || async {
        // NB: the first answers may come before the caches hold the pod; the budget is there once
        // the operator started.
        match ask_whatif(at, Some(&planner), "rack-b", 2500.0).await {
            (200, body) => Ok((200, body)),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(status, 200);
    assert_eq!(answer(&body).what_if.cap_watts, 2500.0);
    let (status, body) = ask_whatif(at, Some(&rack_a_only), "rack-a", 2000.0).await;
    assert_eq!(status, 200, "{body}");
    let lowered = answer(&body);
    assert_eq!(lowered.budget, "rack-a");
    assert_eq!(lowered.what_if.cap_watts, 2000.0);

    let (_, metrics) = http_get(at, "/metrics").await;
    let outcome = |o: &str| {
        metric(
            &metrics,
            &format!("kilowatt_whatif_requests_total{{outcome=\"{o}\"}}"),
        )
    };
    assert_eq!(outcome("unauthenticated"), 2.0, "{metrics}");
    assert_eq!(outcome("forbidden"), 2.0, "{metrics}");
    assert!(outcome("answered") >= 2.0, "{metrics}");
    operator.shutdown().await;
    println!(
        "what-if: 2 unauthenticated (401), 2 forbidden (403), {} answered; rack-a at 2000 W loses {:.4} of its throughput",
        outcome("answered"),
        lowered.budget_throughput_lost_fraction
    );
}

/// How many agents reconnect at once in the flood test.
const FLOOD_AGENTS: usize = 200;
/// How many what-if questions arrive at once in it.
const FLOOD_WHATIFS: usize = 64;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cut_publishes_within_2_s_under_64_what_ifs_and_200_agents_reconnecting_after_an_etcd_restart()
 {
    let (plane, admin) = prepared_cluster().await;
    let (mut etcd, root_password) = within("etcd with auth", Etcd::start_with_auth())
        .await
        .expect("etcd with auth starts");
    create_from_yaml(&admin, "helm/kilowatt/rbac/agent.yaml")
        .await
        .expect("agent ServiceAccount applies");
    create_from_yaml(&admin, "helm/kilowatt/rbac/whatif.yaml")
        .await
        .expect("what-if ClusterRole applies");
    let planner = whatif_user(&plane, &admin, "planner", "kilowatt-whatif").await;
    let nodes: Vec<String> = (0..FLOOD_AGENTS).map(|i| format!("n{i:03}")).collect();
    // 200 nodes of 4 GPUs, each with an inference pod on every GPU and the agent's pod.
    let started = std::time::Instant::now();
    let tokens: Vec<String> = futures::stream::iter(nodes.iter())
        .map(|node| {
            let (admin, plane) = (admin.clone(), &plane);
            async move {
                gpu_node(
                    &admin,
                    node,
                    json!({"rack": "a"}),
                    4,
                    "NVIDIA-H100-80GB-HBM3",
                )
                .await;
                gpu_pod(
                    &admin,
                    &format!("serve-{node}"),
                    node,
                    4,
                    json!({"kilowatt.dev/workload": "inference"}),
                )
                .await;
                let pod = format!("kilowatt-agent-{node}");
                pod_on(&admin, AGENTS, &pod, node, AGENT_ACCOUNT).await;
                plane
                    .service_account_token(AGENTS, AGENT_ACCOUNT, "kilowatt", Some(&pod))
                    .await
                    .expect("agent token")
            }
        })
        .buffered(8)
        .collect()
        .await;
    println!(
        "{FLOOD_AGENTS} nodes, pods and tokens in {:?}",
        started.elapsed()
    );
    let cap = FLOOD_AGENTS as f64 * (500.0 + 4.0 * 600.0);
    budget(
        &admin,
        "rack-a",
        json!({"capWatts": cap, "nodeOverheadWatts": 500.0,
               "nodeSelector": {"matchLabels": {"rack": "a"}}}),
    )
    .await;

    let (root, mut operator_options) = operator_as_root(&plane, &etcd, root_password);
    operator_options.whatif_auth = WhatIfAuth::Always;
    let operator = start_operator_with(&plane, operator_options).await;
    let url = format!("http://{}/api/v1/agent-credentials", operator.address);
    let store = within(
        "plan store",
        EtcdPlanStore::connect_as(
            std::slice::from_ref(&etcd.endpoint),
            KeyLayout::new(PREFIX),
            Duration::from_secs(5),
            Some(&root),
            None,
        ),
    )
    .await
    .expect("root connects");
    let registering = std::time::Instant::now();
    let mut agents = Vec::new();
    let mut token_files = Vec::new();
    for (node, token) in nodes.iter().zip(&tokens) {
        let token_file = write_token(&format!("flood-{node}"), token);
        agents.push(start_agent(&etcd, node, &url, &token_file, None));
        token_files.push(token_file);
    }
    let everyone_acknowledged = |at_least: u64| {
        let store = store.clone();
        async move {
            let views = store.read_views().await.map_err(|e| e.to_string())?;
            let done = views
                .values()
                .filter(|v| {
                    matches!((&v.written, &v.ack), (Some(plan), Some(ack))
                        if plan.revision >= at_least && ack.revision == plan.revision)
                })
                .count();
            if done == FLOOD_AGENTS {
                Ok(())
            } else {
                Err(format!("{done} of {FLOOD_AGENTS} acknowledged"))
            }
        }
    };
    // NB: while agents' users and roles are being written, etcd may answer a read with "revision of
    // auth store is old" (the token predates the latest auth change; seen once in CI): the read is
    // retried, as the operator's next pass retries its own.
    let before = eventually("the plan reads", Duration::from_secs(10), || async {
        store.load().await.map_err(|e| e.to_string())
    })
    .await
    .plan
    .map_or(0, |p| p.revision);
    eventually(
        "every agent acknowledges a plan",
        Duration::from_secs(300),
        || everyone_acknowledged(before.max(1)),
    )
    .await;
    let metrics_now = || async { http_get(operator.address, "/metrics").await.1 };
    let issued = |text: &str| {
        metric(
            text,
            "kilowatt_agent_credentials_issued_total{outcome=\"issued\"}",
        )
    };
    let first = metrics_now().await;
    // 200 agents asking at once: some give up waiting (5 s) and ask again; each repeat costs one
    // write (the new password), each node's first issue seven.
    // An issue that failed half-way (etcd answered an error) leaves up to 7 writes uncounted as issues.
    let first_issues = issued(&first);
    let failed = metric(
        &first,
        "kilowatt_agent_credentials_issued_total{outcome=\"etcd\"}",
    );
    let writes = metric(&first, "kilowatt_agent_credential_auth_writes_total");
    let expected = 7.0 * FLOOD_AGENTS as f64 + (first_issues - FLOOD_AGENTS as f64);
    assert!(first_issues >= FLOOD_AGENTS as f64, "{first}");
    assert!(
        (expected..=expected + 7.0 * failed).contains(&writes),
        "{writes} auth writes for {first_issues} issues ({failed} failed): 7 for each node's first \
         issue, 1 for each repeat"
    );
    println!(
        "start: {FLOOD_AGENTS} agents registered and acknowledged after {:?}, with {first_issues} \
         credential issues ({failed} failed), {writes} etcd auth writes, {} requests answered busy",
        registering.elapsed(),
        metric(
            &first,
            "kilowatt_agent_credentials_issued_total{outcome=\"busy\"}"
        )
    );

    // etcd restarts: every agent's session breaks at once. As it answers again, 64 what-if
    // questions arrive together and the facility cap is cut by 40 %.
    within("etcd restarts", etcd.restart())
        .await
        .expect("etcd restarts");
    // The clock starts once etcd answers reads again (here, the test's own client): what is measured
    // is the operator under the flood, not etcd's start.
    let restarted = std::time::Instant::now();
    eventually("etcd answers again", Duration::from_secs(30), || async {
        store.load().await.map(|_| ()).map_err(|e| e.to_string())
    })
    .await;
    println!(
        "etcd answered again {:?} after it listened",
        restarted.elapsed()
    );
    let cut = (cap * 0.6).round();
    let flood_started = std::time::Instant::now();
    let whatifs: Vec<_> = (0..FLOOD_WHATIFS)
        .map(|i| {
            let token = planner.clone();
            let at = operator.address;
            tokio::spawn(async move {
                let asked = std::time::Instant::now();
                let (status, body) =
                    ask_whatif(at, Some(&token), "rack-a", 10_000.0 + i as f64).await;
                (status, body, asked.elapsed())
            })
        })
        .collect();
    patch_budget(&admin, "rack-a", json!({"capWatts": cut})).await;
    let patched = std::time::Instant::now();
    let revision = plan_revision_with_cap(&store, "rack-a", cut, Duration::from_secs(30)).await;
    let published = (revision, patched.elapsed());
    let mut answered = 0;
    let mut busy = 0;
    let mut unavailable = 0;
    let mut slowest = Duration::ZERO;
    for whatif in whatifs {
        let (status, body, took) = whatif.await.expect("what-if task");
        slowest = slowest.max(took);
        match status {
            200 => answered += 1,
            429 => busy += 1,
            // etcd is back but may not answer every read at once: the operator says so, or its
            // time limit cuts the question off.
            503 if body.contains("from etcd") || body.contains("time limit") => unavailable += 1,
            other => panic!("what-if answered {other}: {body}"),
        }
    }
    eventually(
        "every agent acknowledges the cut",
        Duration::from_secs(120),
        || everyone_acknowledged(published.0),
    )
    .await;
    let settled = flood_started.elapsed();
    let after = metrics_now().await;
    let reissued = issued(&after) - issued(&first);
    println!(
        "after the etcd restart: cut published {:?} after the patch (revision {}); what-ifs: {answered} \
         answered, {busy} refused busy, {unavailable} unavailable (etcd or the time limit), slowest {slowest:?}; all {FLOOD_AGENTS} agents acknowledged the \
         cut {settled:?} after the restart; credentials asked again: {reissued}",
        published.1, published.0
    );
    assert!(
        published.1 <= Duration::from_secs(2),
        "the cut was published {:?} after the patch",
        published.1
    );
    // Once the flood is over, questions are answered again.
    let (status, body) = ask_whatif(operator.address, Some(&planner), "rack-a", 9000.0).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(answered + busy + unavailable, FLOOD_WHATIFS);
    assert!(
        slowest <= Duration::from_secs(11),
        "a what-if took {slowest:?}, over its 10 s time limit"
    );
    assert_eq!(
        reissued, 0.0,
        "agents keep their credentials across an etcd restart"
    );

    for (_, stop, task) in agents {
        let _ = stop.send(());
        within("agent stops", task).await.expect("agent task");
    }
    operator.shutdown().await;
    for file in token_files {
        let _ = std::fs::remove_file(file);
    }
}
