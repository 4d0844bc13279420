//! The Helm chart (`helm/kilowatt`) with the pinned helm CLI (built from Go modules, `tests/helm/`):
//! `helm lint` with default and non-default values, and `helm template` of both applied to a real
//! kube-apiserver — CRDs and RBAC for real, everything else as a server-side dry run (so the API
//! server validates every object against its schema and admission without running anything).

use std::path::{Path, PathBuf};
use std::process::Command;

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
        let plural = format!("{}s", gvk.kind.to_ascii_lowercase());
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

fn args_of(objects: &[DynamicObject], kind_name: &str, name: &str) -> Vec<String> {
    let object = objects
        .iter()
        .find(|o| kind(o) == kind_name && o.metadata.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("no {kind_name} {name}"));
    object.data["spec"]["template"]["spec"]["containers"][0]["args"]
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
        "Job",
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
    apply(&admin, &objects, real).await;

    // Non-default: external etcd over TLS, the operator's certificate from a given Secret, simulated
    // agents, no dashboards.
    let objects = render(NON_DEFAULT);
    let kinds: Vec<&str> = objects.iter().map(kind).collect();
    assert!(
        !kinds.contains(&"StatefulSet") && !kinds.contains(&"Job") && !kinds.contains(&"Secret"),
        "{kinds:?}"
    );
    assert!(!kinds.contains(&"ConfigMap"), "{kinds:?}");
    let agent = args_of(&objects, "DaemonSet", "kilowatt-agent");
    let operator = args_of(&objects, "Deployment", "kilowatt-operator");
    assert!(
        agent
            .iter()
            .any(|a| a == "--etcd-endpoints=https://etcd-0.etcd:2379,https://etcd-1.etcd:2379"),
        "{agent:?}"
    );
    assert!(agent.iter().any(|a| a == "--simulated-gpus=4"), "{agent:?}");
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
