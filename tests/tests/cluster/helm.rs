//! The Helm chart (`helm/kilowatt`) with the pinned helm CLI (built from Go modules, `tests/helm/`):
//! `helm lint` with default and non-default values, and `helm template` of both applied to a real
//! kube-apiserver — CRDs and RBAC for real, everything else as a server-side dry run (so the API
//! server validates every object against its schema and admission without running anything).

use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use kilowatt_tests::*;
use kilowatt_tests::{KUBERNETES_VERSION, helm_binary, within};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use serde_json::Value;

fn chart() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../helm/kilowatt")
}

/// Values that change every switch the chart has, except the ServiceMonitor (its CRD belongs to the
/// Prometheus operator, which the test's API server does not have).
const NON_DEFAULT: &[&str] = &[
    "etcd.mode=external",
    "etcd.endpoints={https://etcd-0.etcd:2379,https://etcd-1.etcd:2379}",
    "etcd.tls.secretName=etcd-client-tls",
    "etcd.auth.rootPasswordSecret=etcd-root",
    "operator.tls.secretName=kilowatt-operator-cert",
    "etcd.prefix=/kw",
    "agent.gpuBackend=simulated",
    "agent.simulated.gpus=4",
    "agent.simulated.devicePlugin=true",
    "agent.simulated.settingsDir=/var/lib/kilowatt-simulated",
    "agent.simulated.profile=llm-pretrain-h100",
    "agent.runtimeClassName=",
    "operator.replicas=3",
    "operator.method=greedy",
    "dashboards.enabled=false",
    "image.tag=test",
];

/// Runs helm: (success, stdout, stdout and stderr together for messages).
fn helm(args: &[&str]) -> (bool, String, String) {
    let binary = helm_binary().expect("helm builds");
    let output = Command::new(binary).args(args).output().expect("helm runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let all = format!("{stdout}{}", String::from_utf8_lossy(&output.stderr));
    (output.status.success(), stdout, all)
}

fn with_values(base: &[&str], values: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = base.iter().map(|s| (*s).to_owned()).collect();
    for value in values {
        args.push("--set".to_owned());
        args.push((*value).to_owned());
    }
    args
}

fn render(values: &[&str]) -> Vec<DynamicObject> {
    let chart = chart().display().to_string();
    let args = with_values(
        &[
            "template",
            "kilowatt",
            &chart,
            "--namespace",
            "kilowatt-system",
            "--include-crds",
            "--kube-version",
            KUBERNETES_VERSION,
        ],
        values,
    );
    let (ok, text, all) = helm(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(ok, "helm template failed:\n{all}");
    serde_saphyr::from_multiple::<DynamicObject>(&text)
        .expect("rendered YAML parses")
        .into_iter()
        .filter(|o| o.types.is_some())
        .collect()
}

/// Completes a TLS handshake and one HTTP request with the chart's generated certificate: the operator's
/// HTTPS listener (`serve_https`) serving it, and a client trusting only the generated `ca.crt` and
/// checking the name agents use. Returns the response's status line.
async fn handshake_with(secret: &DynamicObject, server_name: &str) -> String {
    use base64::Engine;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = std::env::temp_dir().join(format!("kilowatt-helm-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("directory");
    for key in ["tls.crt", "tls.key", "ca.crt"] {
        let encoded = secret.data["data"][key].as_str().expect(key);
        let pem = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .expect("base64");
        std::fs::write(dir.join(key), pem).expect("write");
    }
    let server = kilowatt_plumbing::tls::server_config(&dir.join("tls.crt"), &dir.join("tls.key"))
        .expect("the operator loads the generated certificate and key");
    let client = kilowatt_plumbing::tls::client_config(&dir.join("ca.crt"))
        .expect("an agent loads the generated CA");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    let app = axum::Router::new().route("/healthz", axum::routing::get(|| async { "ok" }));
    let serving = tokio::spawn(kilowatt_operator::http::serve_https(
        listener,
        std::sync::Arc::new(server),
        app,
    ));
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(client));
    let name = rustls_pki_types::ServerName::try_from(server_name.to_owned()).expect("name");
    let response = within("TLS handshake and request", async {
        let tcp = tokio::net::TcpStream::connect(address)
            .await
            .expect("connect");
        let mut tls = connector.connect(name, tcp).await.expect("handshake");
        tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: operator\r\nConnection: close\r\n\r\n")
            .await
            .expect("request");
        let mut response = Vec::new();
        let _ = tls.read_to_end(&mut response).await;
        String::from_utf8_lossy(&response).into_owned()
    })
    .await;
    serving.abort();
    let _ = std::fs::remove_dir_all(&dir);
    response.lines().next().unwrap_or_default().to_owned()
}

/// `helm template` with `values`, which must fail; returns what helm said.
fn refused(values: &[&str]) -> String {
    let chart = chart().display().to_string();
    let args = with_values(
        &[
            "template",
            "kilowatt",
            &chart,
            "--kube-version",
            KUBERNETES_VERSION,
        ],
        values,
    );
    let (ok, _, all) = helm(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!ok, "helm template accepted {values:?}");
    all
}

fn kind(object: &DynamicObject) -> &str {
    object.types.as_ref().map_or("", |t| t.kind.as_str())
}

/// Server-side applies every object: for real when `real(kind)`, else as a dry run.
async fn apply(client: &kube::Client, objects: &[DynamicObject], real: impl Fn(&str) -> bool) {
    for object in objects {
        let types = object.types.clone().expect("types");
        let gvk = GroupVersionKind::try_from(&types).expect("apiVersion/kind");
        let lower = gvk.kind.to_ascii_lowercase();
        // NB: NetworkPolicy → networkpolicies.
        let plural = match lower.strip_suffix('y') {
            Some(stem) => format!("{stem}ies"),
            None => format!("{lower}s"),
        };
        let resource = ApiResource::from_gvk_with_plural(&gvk, &plural);
        let api: Api<DynamicObject> = match &object.metadata.namespace {
            Some(namespace) => Api::namespaced_with(client.clone(), namespace, &resource),
            None => Api::all_with(client.clone(), &resource),
        };
        let mut params = PatchParams::apply("kilowatt-chart-test").force();
        if !real(&gvk.kind) {
            params = params.dry_run();
        }
        let name = object.metadata.name.clone().expect("name");
        within("apply", api.patch(&name, &params, &Patch::Apply(object)))
            .await
            .unwrap_or_else(|e| panic!("{} {name}: {e}", gvk.kind));
    }
}

fn named<'a>(objects: &'a [DynamicObject], kind_name: &str, name: &str) -> &'a DynamicObject {
    objects
        .iter()
        .find(|o| kind(o) == kind_name && o.metadata.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("no {kind_name} {name}"))
}

fn args_of(objects: &[DynamicObject], kind_name: &str, name: &str) -> Vec<String> {
    container_field(named(objects, kind_name, name), 0, "args")
}

/// A list of strings of a workload's `index`th container (`args`, `command`).
fn container_field(workload: &DynamicObject, index: usize, field: &str) -> Vec<String> {
    workload.data["spec"]["template"]["spec"]["containers"][index][field]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chart_lints_renders_and_applies_to_a_real_api_server() {
    let chart_dir = chart().display().to_string();
    for values in [&[][..], NON_DEFAULT] {
        let args = with_values(&["lint", "--strict", &chart_dir], values);
        let (ok, text, all) = helm(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(ok && text.contains("0 chart(s) failed"), "{all}");
    }
    let text = refused(&["etcd.mode=external"]);
    assert!(text.contains("etcd.endpoints must list"), "{text}");

    let (plane, admin) = prepared_cluster().await;
    let real = |kind: &str| {
        matches!(
            kind,
            "CustomResourceDefinition"
                | "ServiceAccount"
                | "ClusterRole"
                | "ClusterRoleBinding"
                | "Role"
                | "RoleBinding"
        )
    };

    // Defaults: internal etcd with authentication, NVML agents, dashboards.
    let objects = render(&[]);
    let kinds: Vec<&str> = objects.iter().map(kind).collect();
    for expected in [
        "CustomResourceDefinition",
        "ServiceAccount",
        "ClusterRole",
        "Deployment",
        "DaemonSet",
        "StatefulSet",
        "NetworkPolicy",
        "Secret",
        "Service",
        "ConfigMap",
    ] {
        assert!(
            kinds.contains(&expected),
            "{expected} missing from {kinds:?}"
        );
    }
    let dashboards = objects
        .iter()
        .filter(|o| {
            kind(o) == "ConfigMap"
                && o.metadata
                    .name
                    .as_deref()
                    .is_some_and(|n| n.starts_with("kilowatt-dashboard-"))
        })
        .count();
    assert_eq!(dashboards, 5, "one ConfigMap per dashboard");
    let agent = args_of(&objects, "DaemonSet", "kilowatt-agent");
    assert!(agent.iter().any(|a| a == "--gpu-backend=nvml"), "{agent:?}");
    assert!(
        !agent.iter().any(|a| a.starts_with("--device-plugin")),
        "the device plugin is off by default: {agent:?}"
    );
    assert!(
        agent.iter().any(|a| a
            == "--credentials-url=https://kilowatt-operator.kilowatt-system.svc:8443/api/v1/agent-credentials"),
        "{agent:?}"
    );
    assert!(
        agent
            .iter()
            .any(|a| a == "--credentials-ca-file=/etc/kilowatt/operator-ca/ca.crt"),
        "{agent:?}"
    );
    let agent_set = objects
        .iter()
        .find(|o| kind(o) == "DaemonSet")
        .expect("agent DaemonSet");
    let ca_volume = agent_set.data["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["name"] == "operator-ca")
        .expect("the operator's CA is mounted into the agents");
    assert_eq!(
        ca_volume["secret"]["items"],
        serde_json::json!([{"key": "ca.crt", "path": "ca.crt"}]),
        "agents get the CA and nothing else of the operator's Secret"
    );
    let generated = objects
        .iter()
        .find(|o| {
            kind(o) == "Secret" && o.metadata.name.as_deref() == Some("kilowatt-operator-tls")
        })
        .expect("a generated certificate for the operator");
    assert_eq!(
        handshake_with(generated, "kilowatt-operator.kilowatt-system.svc").await,
        "HTTP/1.1 200 OK"
    );
    let operator = args_of(&objects, "Deployment", "kilowatt-operator");
    assert!(
        operator.iter().any(|a| a == "--tls-listen=0.0.0.0:8443"),
        "{operator:?}"
    );
    assert!(
        operator.iter().any(|a| a == "--etcd-user=root"),
        "{operator:?}"
    );
    assert!(
        operator
            .iter()
            .any(|a| a == "--agent-service-account=kilowatt-system/kilowatt-agent"),
        "{operator:?}"
    );
    // The internal etcd: HTTPS only, authentication turned on by its sidecar (no Job), clients given
    // https:// endpoints and the CA.
    assert!(!kinds.contains(&"Job"), "no post-install Job: {kinds:?}");
    let etcd = named(&objects, "StatefulSet", "kilowatt-etcd");
    let command = container_field(etcd, 0, "command");
    let listen: Vec<&String> = command
        .iter()
        .filter(|a| a.starts_with("--listen-client-urls="))
        .collect();
    assert_eq!(
        listen,
        ["--listen-client-urls=https://0.0.0.0:2379"],
        "{command:?}"
    );
    for flag in [
        "--cert-file=/etc/etcd/tls/tls.crt",
        "--key-file=/etc/etcd/tls/tls.key",
    ] {
        assert!(command.iter().any(|a| a == flag), "{flag}: {command:?}");
    }
    let sidecar = &etcd.data["spec"]["template"]["spec"]["containers"][1];
    assert_eq!(
        container_field(etcd, 1, "command"),
        ["/usr/local/bin/kilowatt", "etcd-auth"]
    );
    assert_eq!(sidecar["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(sidecar["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(
        sidecar["securityContext"]["capabilities"]["drop"],
        serde_json::json!(["ALL"])
    );
    assert_eq!(
        etcd.data["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"],
        true
    );
    for args in [&agent, &operator] {
        for flag in [
            "--etcd-endpoints=https://kilowatt-etcd.kilowatt-system.svc:2379",
            "--etcd-ca-file=/etc/kilowatt/etcd-tls/ca.crt",
        ] {
            assert!(
                args.iter().any(|a| a == flag),
                "{flag} missing from {args:?}"
            );
        }
        assert!(
            !args.iter().any(|a| a.starts_with("--etcd-cert-file")),
            "{args:?}"
        );
    }
    let policies: Vec<&str> = objects
        .iter()
        .filter(|o| kind(o) == "NetworkPolicy")
        .filter_map(|o| o.metadata.name.as_deref())
        .collect();
    assert_eq!(policies, ["kilowatt-etcd", "kilowatt-operator"]);
    let etcd_policy = named(&objects, "NetworkPolicy", "kilowatt-etcd");
    let ingress = &etcd_policy.data["spec"]["ingress"];
    assert_eq!(
        ingress[0]["ports"],
        serde_json::json!([{"protocol": "TCP", "port": 2379}])
    );
    let from: Vec<&Value> = ingress[0]["from"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|peer| &peer["podSelector"]["matchLabels"]["app.kubernetes.io/name"])
        .collect();
    assert_eq!(from, ["kilowatt-operator", "kilowatt-agent"], "{ingress}");
    assert_eq!(
        ingress[1],
        serde_json::json!({"ports": [{"protocol": "TCP", "port": 8081}]}),
        "the readiness port, for the kubelet"
    );
    apply(&admin, &objects, real).await;
    let objects = render(&["networkPolicy.enabled=false"]);
    assert!(
        !objects.iter().any(|o| kind(o) == "NetworkPolicy"),
        "networkPolicy.enabled=false renders no policy"
    );

    // Non-default: external etcd over TLS, the operator's certificate from a given Secret, simulated
    // agents, no dashboards.
    let objects = render(NON_DEFAULT);
    let kinds: Vec<&str> = objects.iter().map(kind).collect();
    assert!(
        !kinds.contains(&"StatefulSet") && !kinds.contains(&"Job") && !kinds.contains(&"Secret"),
        "{kinds:?}"
    );
    // No dashboards: the one ConfigMap is the simulated GPUs' profile.
    let config_maps: Vec<_> = objects
        .iter()
        .filter(|o| kind(o) == "ConfigMap")
        .filter_map(|o| o.metadata.name.as_deref())
        .collect();
    assert_eq!(config_maps, ["kilowatt-simulated-profile"], "{kinds:?}");
    let policies: Vec<&str> = objects
        .iter()
        .filter(|o| kind(o) == "NetworkPolicy")
        .filter_map(|o| o.metadata.name.as_deref())
        .collect();
    assert_eq!(
        policies,
        ["kilowatt-operator"],
        "no etcd policy with external etcd"
    );
    let agent = args_of(&objects, "DaemonSet", "kilowatt-agent");
    let operator = args_of(&objects, "Deployment", "kilowatt-operator");
    assert!(
        agent
            .iter()
            .any(|a| a == "--etcd-endpoints=https://etcd-0.etcd:2379,https://etcd-1.etcd:2379"),
        "{agent:?}"
    );
    assert!(agent.iter().any(|a| a == "--simulated-gpus=4"), "{agent:?}");
    // The simulated GPUs' device plugin: the flag, the kubelet's directory mounted writable, and
    // root (without capabilities) to serve and register in it.
    for flag in [
        "--device-plugin",
        "--device-plugin-dir=/var/lib/kubelet/device-plugins",
    ] {
        assert!(agent.iter().any(|a| a == flag), "{flag} missing: {agent:?}");
    }
    let agent_pod =
        &named(&objects, "DaemonSet", "kilowatt-agent").data["spec"]["template"]["spec"];
    let device_plugins = agent_pod["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["name"] == "device-plugins")
        .expect("device-plugins volume");
    assert_eq!(
        device_plugins["hostPath"]["path"], "/var/lib/kubelet/device-plugins",
        "{device_plugins}"
    );
    let agent_container = &agent_pod["containers"][0];
    assert!(
        agent_container["volumeMounts"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|m| m["name"] == "device-plugins" && m["readOnly"] != true),
        "{agent_container}"
    );
    assert_eq!(agent_container["securityContext"]["runAsUser"], 0);
    assert_eq!(
        agent_container["securityContext"]["capabilities"],
        serde_json::json!({"drop": ["ALL"]})
    );
    // The simulated GPUs' settings on the host, so that they outlive the agent's pod.
    assert!(
        agent
            .iter()
            .any(|a| a == "--simulated-settings-file=/var/lib/kilowatt-simulated/gpus.json"),
        "{agent:?}"
    );
    let settings = agent_pod["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["name"] == "simulated-settings")
        .expect("simulated-settings volume");
    assert_eq!(
        settings["hostPath"],
        serde_json::json!({"path": "/var/lib/kilowatt-simulated", "type": "DirectoryOrCreate"})
    );
    // The simulated GPUs' workload: an example profile, shipped in a ConfigMap.
    assert!(
        agent
            .iter()
            .any(|a| a == "--simulated-profile=/etc/kilowatt/simulated-profile/profile.yaml"),
        "{agent:?}"
    );
    let profile = named(&objects, "ConfigMap", "kilowatt-simulated-profile");
    assert!(
        profile.data["data"]["profile.yaml"]
            .as_str()
            .is_some_and(|text| text.contains("llm-pretrain-h100")),
        "{:?}",
        profile.data
    );
    let refusal = refused(&[
        "agent.gpuBackend=simulated",
        "agent.simulated.profile=no-such-profile",
    ]);
    assert!(refusal.contains("no-such-profile"), "{refusal}");
    let refusal = refused(&["agent.simulated.devicePlugin=true"]);
    assert!(
        refusal.contains("agent.simulated.devicePlugin")
            && refusal.contains("gpuBackend=simulated"),
        "{refusal}"
    );
    for args in [&agent, &operator] {
        for flag in [
            "--etcd-ca-file=/etc/kilowatt/etcd-tls/ca.crt",
            "--etcd-cert-file=/etc/kilowatt/etcd-tls/tls.crt",
            "--etcd-key-file=/etc/kilowatt/etcd-tls/tls.key",
        ] {
            assert!(
                args.iter().any(|a| a == flag),
                "{flag} missing from {args:?}"
            );
        }
    }
    let secrets: Vec<String> = objects
        .iter()
        .filter(|o| matches!(kind(o), "Deployment" | "DaemonSet"))
        .flat_map(|o| {
            o.data["spec"]["template"]["spec"]["volumes"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|v| v["secret"]["secretName"].as_str().map(str::to_owned))
        .collect();
    for secret in ["etcd-client-tls", "kilowatt-operator-cert", "etcd-root"] {
        assert!(
            secrets.iter().any(|s| s == secret),
            "{secret} not mounted: {secrets:?}"
        );
    }
    apply(&admin, &objects, real).await;

    // Without the HTTPS listener the agents ask over plain HTTP, and TLS files with a plain etcd
    // endpoint are refused at render time.
    let objects = render(&["operator.tls.enabled=false"]);
    let agent = args_of(&objects, "DaemonSet", "kilowatt-agent");
    assert!(
        agent.iter().any(|a| a
            == "--credentials-url=http://kilowatt-operator.kilowatt-system.svc:8080/api/v1/agent-credentials"),
        "{agent:?}"
    );
    assert!(
        !agent.iter().any(|a| a.starts_with("--credentials-ca-file")),
        "{agent:?}"
    );
    let (ok, _, text) = helm(&[
        "template",
        "kilowatt",
        &chart_dir,
        "--kube-version",
        KUBERNETES_VERSION,
        "--set",
        "etcd.mode=external",
        "--set",
        "etcd.endpoints={http://etcd-0.etcd:2379}",
        "--set",
        "etcd.tls.secretName=etcd-client-tls",
        "--set",
        "etcd.auth.rootPasswordSecret=etcd-root",
    ]);
    assert!(
        !ok && text.contains("every etcd endpoint must be https://"),
        "{text}"
    );

    // The ServiceMonitor renders (its CRD is not in this API server, so it is only rendered).
    let objects = render(&["serviceMonitor.enabled=true"]);
    let monitor = objects
        .iter()
        .find(|o| kind(o) == "ServiceMonitor")
        .expect("ServiceMonitor rendered");
    assert_eq!(monitor.data["spec"]["endpoints"][1]["port"], "metrics");
    let _ = plane;
}

/// The base64-decoded `key` of a rendered Secret.
fn secret_data(secret: &DynamicObject, key: &str) -> Vec<u8> {
    use base64::Engine;
    let encoded = secret.data["data"][key].as_str().expect(key);
    base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .expect("base64")
}

/// `GET /readyz` on `address`: (status, body), or `None` while nothing listens there.
async fn readyz(address: std::net::SocketAddr) -> Option<(u16, String)> {
    if tokio::net::TcpStream::connect(address).await.is_err() {
        return None;
    }
    Some(http_get(address, "/readyz").await)
}

/// An etcd client trusting only `ca`, checking `server_name` in etcd's certificate; as `user` when
/// given.
async fn etcd_client_of(
    endpoint: &str,
    ca: &Path,
    server_name: Option<&str>,
    user: Option<(&str, &str)>,
) -> Result<etcd_client::Client, etcd_client::Error> {
    let mut options = etcd_client::ConnectOptions::new()
        .with_connect_timeout(std::time::Duration::from_secs(5))
        .with_timeout(std::time::Duration::from_secs(5));
    if endpoint.starts_with("https://") {
        let pem = std::fs::read(ca).expect("CA file");
        let mut tls =
            etcd_client::TlsOptions::new().ca_certificate(etcd_client::Certificate::from_pem(pem));
        if let Some(name) = server_name {
            tls = tls.domain_name(name);
        }
        options = options.with_tls(tls);
    }
    if let Some((name, password)) = user {
        options = options.with_user(name, password);
    }
    etcd_client::Client::connect([endpoint], Some(options)).await
}

fn spawn_etcd_auth(dir: &Path, etcd: &Etcd, listen: std::net::SocketAddr, log: &str) -> Child {
    let mut command = Command::new(workspace_binary("kilowatt"));
    command.args([
        "etcd-auth",
        "--etcd-endpoint",
        &etcd.endpoint,
        "--etcd-ca-file",
        &dir.join("ca.crt").display().to_string(),
        "--etcd-password-file",
        &dir.join("password").display().to_string(),
        "--listen",
        &listen.to_string(),
        "--check-seconds",
        "2",
    ]);
    spawn_logged(&mut command, &dir.join(log)).expect("kilowatt etcd-auth starts")
}

fn stop(mut child: Child) {
    kill(&child, "-TERM");
    let _ = child.wait();
}

/// The chart's internal etcd for real, minus Kubernetes: etcd serving the chart's generated
/// certificate over HTTPS only, and `kilowatt etcd-auth` as its sidecar would run it, with the chart's
/// generated root password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_auth_sidecar_turns_on_authentication_before_it_reports_ready() {
    use std::time::{Duration, Instant};
    let dir = test_dir("helm-etcd-auth");
    let objects = render(&[]);
    let tls = named(&objects, "Secret", "kilowatt-etcd-tls");
    for key in ["tls.crt", "tls.key", "ca.crt"] {
        std::fs::write(dir.join(key), secret_data(tls, key)).expect("write");
    }
    let root = named(&objects, "Secret", "kilowatt-etcd-root");
    let password = String::from_utf8(secret_data(root, "password")).expect("utf-8 password");
    std::fs::write(dir.join("password"), &password).expect("write");

    let mut etcd = Etcd::start_with_server_tls(ServerTls {
        cert: dir.join("tls.crt"),
        key: dir.join("tls.key"),
    })
    .await
    .expect("etcd serves the chart's certificate");
    // The sidecar may start before etcd listens: stopped, it must answer 503.
    etcd.stop();
    let listen = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let sidecar = spawn_etcd_auth(&dir, &etcd, listen, "etcd-auth.log");
    let (code, body) = eventually("readyz answers", Duration::from_secs(20), || async {
        readyz(listen)
            .await
            .ok_or_else(|| "not listening".to_owned())
    })
    .await;
    assert_eq!(code, 503, "{body}");
    let error: Value = serde_json::from_str(&body).expect("a JSON error");
    assert!(
        error["error"]
            .as_str()
            .is_some_and(|e| e.contains(&etcd.endpoint) && e.contains("connect")),
        "{body}"
    );

    etcd.restart().await.expect("etcd starts again");
    let started = Instant::now();
    let refusals = std::sync::atomic::AtomicUsize::new(0);
    eventually("readyz answers 200", Duration::from_secs(30), || async {
        match readyz(listen).await {
            Some((200, _)) => Ok(()),
            Some((code, body)) => {
                assert_eq!(code, 503, "{body}");
                refusals.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Err(body)
            }
            None => Err("not listening".to_owned()),
        }
    })
    .await;
    let refusals = refusals.into_inner();
    let to_ready = started.elapsed();

    // Ready means authentication is on: a client trusting only the chart's CA, checking the
    // Service's name or the loopback's, gets nothing done without a user and everything as root.
    let ca = dir.join("ca.crt");
    for name in [Some("kilowatt-etcd.kilowatt-system.svc"), None] {
        let mut anonymous = within("connect", etcd_client_of(&etcd.endpoint, &ca, name, None))
            .await
            .expect("TLS to etcd with the chart's CA");
        let refused = within("anonymous put", anonymous.put("/kilowatt/probe", "x", None)).await;
        assert!(
            refused.is_err(),
            "a put without a user is refused once auth is on"
        );
        let mut admin = within(
            "connect as root",
            etcd_client_of(&etcd.endpoint, &ca, name, Some(("root", &password))),
        )
        .await
        .expect("root logs in with the chart's password");
        within("root put", admin.put("/kilowatt/probe", "x", None))
            .await
            .expect("root may write");
    }
    let plain = etcd.endpoint.replacen("https://", "http://", 1);
    let plain_put = within("plain connection", async {
        let mut client = etcd_client_of(&plain, &ca, None, None).await?;
        client.put("/kilowatt/probe", "x", None).await
    })
    .await;
    assert!(plain_put.is_err(), "etcd answers no plain http://");
    stop(sidecar);
    let first_log = log_tail_of(&dir, "etcd-auth.log");
    assert!(first_log.contains("authentication enabled"), "{first_log}");

    // Started again against the etcd it configured: ready, without enabling anything again.
    let listen = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let restarted_at = Instant::now();
    let sidecar = spawn_etcd_auth(&dir, &etcd, listen, "etcd-auth-again.log");
    eventually(
        "readyz answers 200 again",
        Duration::from_secs(30),
        || async {
            match readyz(listen).await {
                Some((200, _)) => Ok(()),
                Some((_, body)) => Err(body),
                None => Err("not listening".to_owned()),
            }
        },
    )
    .await;
    let to_ready_again = restarted_at.elapsed();
    stop(sidecar);
    let second_log = log_tail_of(&dir, "etcd-auth-again.log");
    assert!(
        second_log.contains("authentication is on") && !second_log.contains("enabled"),
        "{second_log}"
    );
    println!(
        "etcd-auth: ready {:.0} ms after etcd started ({refusals} × 503 on the way), {:.0} ms after a \
         restart against the configured etcd",
        to_ready.as_secs_f64() * 1e3,
        to_ready_again.as_secs_f64() * 1e3,
    );
    let _ = std::fs::remove_dir_all(&dir);
}
