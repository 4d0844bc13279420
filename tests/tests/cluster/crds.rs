//! Kilowatt's CRDs on a real kube-apiserver + etcd: they install, the schema and CEL rules reject what
//! they should with messages a user can act on, status is a subresource, and `kubectl get` shows the
//! printer columns.

use kilowatt_crds::{PowerBudget, WorkloadProfile};
use kilowatt_tests::{ControlPlane, install_crds, within};
use kube::Resource;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

fn rejection(result: Result<impl std::fmt::Debug, kube::Error>) -> String {
    match result {
        Err(kube::Error::Api(status)) => status.message,
        other => panic!("expected the API server to reject the object, got {other:?}"),
    }
}

#[tokio::test]
async fn crds_install_validate_and_print_on_a_real_api_server() {
    let plane = ControlPlane::start().await.expect("control plane starts");
    let client = plane.client().await.expect("client");
    install_crds(&client).await.expect("CRDs install");

    let budgets: Api<PowerBudget> = Api::all(client.clone());
    let create = |value: Value| {
        let budgets = budgets.clone();
        async move {
            let budget: PowerBudget = serde_json::from_value(value).expect("typed budget");
            within(
                "create budget",
                budgets.create(&PostParams::default(), &budget),
            )
            .await
        }
    };
    let facility = json!({
        "apiVersion": "kilowatt.dev/v1alpha1", "kind": "PowerBudget", "metadata": {"name": "facility"},
        "spec": {"capWatts": 500000.0, "nodeOverheadWatts": 1200.0, "schedule": [
            {"name": "night", "capWatts": 400000.0, "daily": {"start": "22:00", "end": "06:00"}},
            {"name": "dr-event", "capWatts": 300000.0, "start": "2026-12-01T17:00:00Z", "end": "2026-12-01T19:00:00Z"}
        ]}
    });
    create(facility).await.expect("a valid budget is accepted");

    let message = rejection(
        create(json!({"apiVersion": "kilowatt.dev/v1alpha1", "kind": "PowerBudget", "metadata": {"name": "neg"},
            "spec": {"capWatts": -5.0}}))
        .await,
    );
    assert!(message.contains("spec.capWatts"), "{message}");
    let message = rejection(
        create(json!({"apiVersion": "kilowatt.dev/v1alpha1", "kind": "PowerBudget", "metadata": {"name": "half"},
            "spec": {"capWatts": 5.0, "schedule": [{"name": "x", "capWatts": 1.0, "start": "2026-12-01T17:00:00Z"}]}}))
        .await,
    );
    assert!(message.contains("start and end go together"), "{message}");
    let message = rejection(
        create(json!({"apiVersion": "kilowatt.dev/v1alpha1", "kind": "PowerBudget", "metadata": {"name": "late"},
            "spec": {"capWatts": 5.0, "schedule": [{"name": "x", "capWatts": 1.0, "daily": {"start": "25:00", "end": "06:00"}}]}}))
        .await,
    );
    assert!(message.contains("daily.start"), "{message}");

    // Status is a subresource: the operator writes it without touching spec.
    let status = json!({"status": {"effectiveCapWatts": 400000.0, "allocatedWatts": 390000.0, "headroomWatts": 10000.0,
        "conditions": [{"type": "Ready", "status": "True", "reason": "Planned", "message": "plan 1 enforced",
                        "lastTransitionTime": "2026-11-28T00:00:00Z"}]}});
    within(
        "patch status",
        budgets.patch_status("facility", &PatchParams::default(), &Patch::Merge(&status)),
    )
    .await
    .expect("status patch");
    let stored = within("get budget", budgets.get("facility"))
        .await
        .expect("get");
    assert_eq!(stored.spec.cap_watts, 500000.0);
    assert_eq!(stored.status.and_then(|s| s.headroom_watts), Some(10000.0));

    // What `kubectl get powerbudgets` shows: the server-side table with our printer columns.
    let url = format!("{}?limit=10", PowerBudget::url_path(&(), None));
    let request = http::Request::get(url)
        .header("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io")
        .body(Vec::new())
        .expect("request");
    let table: Value = within("table", client.request(request))
        .await
        .expect("table");
    let columns: Vec<&str> = table["columnDefinitions"]
        .as_array()
        .expect("columns")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(
        columns,
        [
            "Name",
            "Cap",
            "Effective",
            "Allocated",
            "Headroom",
            "Ready",
            "Age"
        ]
    );
    assert_eq!(table["rows"][0]["cells"][5], "True");

    let profiles: Api<WorkloadProfile> = Api::namespaced(client.clone(), "default");
    let profile = |points: Value| -> WorkloadProfile {
        serde_json::from_value(
            json!({"apiVersion": "kilowatt.dev/v1alpha1", "kind": "WorkloadProfile",
            "metadata": {"name": "llm", "namespace": "default"},
            "spec": {"gpuModel": "H100-SXM", "throughputUnit": "tokens/s", "points": points}}),
        )
        .expect("typed profile")
    };
    let unsorted = profile(
        json!([{"powerWatts": 300.0, "throughput": 2.0}, {"powerWatts": 200.0, "throughput": 1.0}]),
    );
    let message = rejection(
        within(
            "unsorted",
            profiles.create(&PostParams::default(), &unsorted),
        )
        .await,
    );
    assert!(
        message.contains("points must be sorted by powerWatts"),
        "{message}"
    );
    let mixed = profile(
        json!([{"powerWatts": 200.0, "throughput": 1.0}, {"powerWatts": 300.0, "smClockMHz": 1400, "throughput": 2.0}]),
    );
    let message = rejection(within("mixed", profiles.create(&PostParams::default(), &mixed)).await);
    assert!(
        message.contains("either every point has smClockMHz or none has"),
        "{message}"
    );
    let empty = profile(json!([]));
    let message = rejection(within("empty", profiles.create(&PostParams::default(), &empty)).await);
    assert!(message.contains("spec.points"), "{message}");
    let good = profile(
        json!([{"powerWatts": 200.0, "throughput": 1.0}, {"powerWatts": 300.0, "throughput": 2.0}]),
    );
    within(
        "good profile",
        profiles.create(&PostParams::default(), &good),
    )
    .await
    .expect("valid profile accepted");
}
