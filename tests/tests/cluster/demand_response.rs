//! A budget in an OpenADR 3.1 program (`spec.signals.openadr`) on a real control plane with a real
//! VTN (`openleadr-vtn` on PostgreSQL): the operator, as the program's VEN under the shipped RBAC,
//! turns an `IMPORT_CAPACITY_LIMIT` event into a lower cap that an in-process agent enforces,
//! reports the budget's measured power as `USAGE`, drops an event the utility withdraws, and keeps
//! the lowered cap when the VTN stops answering.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kilowatt_crds::PowerBudgetStatus;
use kilowatt_tests::vtn::Vtn;
use kilowatt_tests::*;
use kube::Client;
use kube::api::Api;
use serde_json::json;

const CAP_WATTS: f64 = 6000.0;
/// The event's import capacity limit.
const LIMIT_KW: f64 = 4.0;
const PROGRAM: &str = "kilowatt-peak";

async fn status(admin: &Client) -> Option<PowerBudgetStatus> {
    status_of_budget(admin, "facility").await
}

async fn status_where(
    admin: &Client,
    what: &str,
    check: impl Fn(&PowerBudgetStatus) -> bool,
) -> PowerBudgetStatus {
    budget_status_where(admin, "facility", what, Duration::from_secs(30), check).await
}

fn connected(status: &PowerBudgetStatus) -> (String, String) {
    condition_status(&status.conditions, "DemandResponseConnected")
}

fn windows(status: &PowerBudgetStatus) -> Vec<String> {
    status
        .demand_response
        .iter()
        .flat_map(|d| d.events.iter().map(|e| e.window.clone()))
        .collect()
}

fn second(t: Timestamp) -> String {
    Timestamp::from_second(t.as_second())
        .expect("time")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_openadr_capacity_limit_lowers_the_cap_and_a_silent_vtn_never_raises_it() {
    let started = Instant::now();
    let dir = test_dir("demand-response");
    let vtn = within("the VTN starts", Vtn::start(&dir)).await;
    let program = within("program", vtn.create_program(PROGRAM)).await;
    let (plane, admin) = prepared_cluster().await;
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), "kilowatt-system");
    create(
        &secrets,
        json!({"metadata": {"name": "vtn-ven", "namespace": "kilowatt-system"},
               "stringData": {"clientID": vtn.ven.client_id, "clientSecret": vtn.ven.client_secret}}),
    )
    .await;
    gpu_node(&admin, "n1", json!({"rack": "a"}), 8, H100).await;
    gpu_pod(
        &admin,
        "train-0",
        "n1",
        8,
        json!({"kilowatt.dev/workload": "training"}),
    )
    .await;
    let agent = InProcessAgent::start(&plane.etcd_endpoint, "/kilowatt-test", "n1", 8);
    budget(
        &admin,
        "facility",
        json!({
            "capWatts": CAP_WATTS,
            "nodeSelector": {"matchLabels": {"rack": "a"}},
            "signals": {"openadr": {
                "vtnUrl": vtn.url,
                "programName": PROGRAM,
                "venName": vtn.ven_name,
                "credentialsSecret": "vtn-ven",
                "pollSeconds": 1,
                "reportSeconds": 1,
            }}
        }),
    )
    .await;
    let operator = start_operator(&plane, "openadr-0", Duration::from_secs(2)).await;

    let quiet = status_where(&admin, "the VTN answers, no event yet", |s| {
        connected(s).0 == "True" && s.effective_cap_watts == Some(CAP_WATTS)
    })
    .await;
    assert_eq!(connected(&quiet).1, "VtnAnswering");

    // The utility: an hour of a 4 kW import limit from now, and a 3 kW one in an hour.
    let now = Timestamp::now();
    let event = within(
        "event",
        vtn.create_event(
            &program,
            vtn.capacity_limit_event(
                "evening-peak",
                &second(now - SignedDuration::from_secs(5)),
                "PT1H",
                LIMIT_KW,
            ),
        ),
    )
    .await;
    let later = within(
        "later event",
        vtn.create_event(
            &program,
            json!({
                "eventName": "night",
                "targets": [vtn.ven_name],
                "intervalPeriod": {"start": second(now + SignedDuration::from_hours(1)), "duration": "PT1H"},
                "intervals": [{"id": 0,
                               "payloads": [{"type": "IMPORT_CAPACITY_LIMIT", "values": [3.0]}]}],
            }),
        ),
    )
    .await;
    let capped = status_where(&admin, "the event's cap in force", |s| {
        s.effective_cap_watts == Some(LIMIT_KW * 1000.0) && windows(s).len() == 2
    })
    .await;
    assert_eq!(
        windows(&capped),
        ["openadr/evening-peak/0", "openadr/night/0"]
    );
    let dr = capped
        .demand_response
        .clone()
        .expect("status.demandResponse");
    assert_eq!(dr.events[0].cap_watts, Some(LIMIT_KW * 1000.0));
    assert_eq!(dr.events[0].payload_type, "IMPORT_CAPACITY_LIMIT");
    assert!(dr.last_poll_time.is_some());
    // The agent enforces it: the GPUs' limits fit under the event's cap.
    eventually(
        "the GPUs under the event's cap",
        Duration::from_secs(20),
        || async {
            let limits: f64 = agent.gpus.limits().iter().sum();
            (limits <= LIMIT_KW * 1000.0)
                .then_some(())
                .ok_or(format!("GPU limits sum to {limits} W"))
        },
    )
    .await;

    // The measured power goes back as USAGE reports on the active event (not on the later one):
    // once the agent measures under the cap, so do the reports.
    let measured = status_where(&admin, "the measured power under the event's cap", |s| {
        s.measured_watts
            .is_some_and(|w| w > 0.0 && w <= LIMIT_KW * 1000.0)
    })
    .await
    .measured_watts
    .expect("measured watts");
    let usage_kw = |report: &serde_json::Value| {
        let usage = &report["resources"][0]["intervals"][0]["payloads"][0];
        (usage["type"] == json!("USAGE"))
            .then(|| usage["values"][0].as_f64())
            .flatten()
    };
    let report = eventually(
        "a USAGE report under the cap",
        Duration::from_secs(20),
        || async {
            vtn.reports()
                .await
                .into_iter()
                .find(|r| {
                    r["eventID"] == json!(event)
                        && usage_kw(r).is_some_and(|kw| kw > 0.0 && kw <= LIMIT_KW)
                })
                .ok_or("no such report yet".to_owned())
        },
    )
    .await;
    assert_eq!(report["clientName"], json!(vtn.ven_name), "{report}");
    assert_eq!(
        report["payloadDescriptors"][0]["units"],
        json!("KW"),
        "{report}"
    );
    eprintln!(
        "demand response: measured {measured} W under a {LIMIT_KW} kW event; reported {:?} kW",
        usage_kw(&report)
    );
    assert!(
        vtn.reports()
            .await
            .iter()
            .all(|r| r["eventID"] != json!(later)),
        "no report on an event not yet active"
    );

    // The utility withdraws the later event: it leaves the budget's windows.
    within("withdraw", vtn.delete_event(&later)).await;
    status_where(&admin, "the withdrawn event gone", |s| {
        windows(s) == ["openadr/evening-peak/0"]
    })
    .await;

    // The VTN stops answering: the event heard stays in force.
    drop(vtn);
    let silent = status_where(&admin, "the VTN seen unreachable", |s| {
        connected(s).0 == "False"
    })
    .await;
    assert_eq!(connected(&silent).1, "VtnUnreachable");
    assert_eq!(silent.effective_cap_watts, Some(LIMIT_KW * 1000.0));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let still = status(&admin).await.expect("status");
    assert_eq!(
        still.effective_cap_watts,
        Some(LIMIT_KW * 1000.0),
        "losing the VTN never raises the cap"
    );
    assert_eq!(windows(&still), ["openadr/evening-peak/0"]);
    let limits: f64 = agent.gpus.limits().iter().sum();
    assert!(limits <= LIMIT_KW * 1000.0, "GPU limits sum to {limits} W");
    let (_, metrics) = http_get(operator.address, "/metrics").await;
    for series in [
        "kilowatt_openadr_requests_total{budget=\"facility\",outcome=\"ok\",request=\"poll\"}",
        "kilowatt_openadr_requests_total{budget=\"facility\",outcome=\"ok\",request=\"report\"}",
        "kilowatt_openadr_requests_total{budget=\"facility\",outcome=\"failed\",request=\"poll\"}",
    ] {
        assert!(metrics.contains(series), "{series} in {metrics}");
    }
    operator.shutdown().await;
    agent.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(90),
        "took {:?}",
        started.elapsed()
    );
}
