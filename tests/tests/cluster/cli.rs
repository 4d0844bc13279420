//! The `kilowatt` binary as users run it: `kilowatt operator` as a process on the harness's control
//! plane, asked through `kilowatt whatif`, stopped with SIGTERM.

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Namespace;
use kilowatt_tests::*;
use kilowatt_tests::{ControlPlane, eventually, install_crds, within};
use kube::api::{Api, PostParams};
use serde_json::Value;

fn kilowatt(args: &[&str]) -> Output {
    Command::new(workspace_binary("kilowatt"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("kilowatt runs")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Runs `kilowatt operator` as a process on the harness's control plane, asks it a what-if question
/// through `kilowatt whatif`, and stops it with SIGTERM as Kubernetes would.
#[tokio::test]
async fn the_operator_process_answers_whatif_and_releases_its_lease_on_sigterm() {
    let plane = ControlPlane::start().await.expect("control plane");
    let admin = plane.client().await.expect("client");
    install_crds(&admin).await.expect("CRDs");
    let create = |value: Value| serde_json::from_value::<Namespace>(value).expect("namespace");
    within(
        "namespace",
        Api::<Namespace>::all(admin.clone()).create(
            &PostParams::default(),
            &create(serde_json::json!({"metadata": {"name": "kilowatt-system"}})),
        ),
    )
    .await
    .expect("namespace created");
    let budget: kilowatt_crds::PowerBudget = serde_json::from_value(serde_json::json!({
        "apiVersion": "kilowatt.dev/v1alpha1", "kind": "PowerBudget", "metadata": {"name": "hall"},
        "spec": {"capWatts": 5000.0}}))
    .expect("budget");
    within(
        "budget",
        Api::<kilowatt_crds::PowerBudget>::all(admin.clone())
            .create(&PostParams::default(), &budget),
    )
    .await
    .expect("budget created");

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let log = std::env::temp_dir().join(format!("kilowatt-operator-{port}.log"));
    let mut operator = Command::new(workspace_binary("kilowatt"))
        .args([
            "operator",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--lease-seconds",
            "3",
        ])
        .args([
            "--etcd-endpoints",
            &plane.etcd_endpoint,
            "--etcd-prefix",
            "/cli-test",
        ])
        .args([
            "--identity",
            "process-0",
            "--lease-namespace",
            "kilowatt-system",
        ])
        .env("KUBECONFIG", &plane.kubeconfig)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("operator starts");
    let base = format!("http://127.0.0.1:{port}");
    let answer = eventually(
        "the operator answers what-if",
        Duration::from_secs(60),
        || async {
            let output = kilowatt(&[
                "whatif",
                "--operator",
                &base,
                "--budget",
                "hall",
                "--cap-watts",
                "4000",
            ]);
            if output.status.success() {
                Ok(String::from_utf8_lossy(&output.stdout).into_owned())
            } else {
                Err(stderr(&output))
            }
        },
    )
    .await;
    assert!(
        answer.contains("budget hall: cap 5000 W -> 4000 W"),
        "{answer}"
    );
    let leases: Api<Lease> = Api::namespaced(admin.clone(), "kilowatt-system");
    let holder = || async {
        leases
            .get_opt("kilowatt-operator")
            .await
            .map_err(|e| e.to_string())
            .map(|l| l.and_then(|l| l.spec).and_then(|s| s.holder_identity))
    };
    eventually("the process leads", Duration::from_secs(30), || async {
        match holder().await? {
            Some(name) if name == "process-0" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;

    let signal = Command::new("kill")
        .args(["-TERM", &operator.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(signal.success());
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = operator.try_wait().expect("wait") {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no exit within 20 s of SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(status.success(), "exit {status}; log:\n{logged}");
    assert!(logged.contains("termination signal"), "{logged}");
    assert_eq!(
        holder().await.expect("lease read"),
        None,
        "the lease is released"
    );
    let _ = std::fs::remove_file(&log);
}
