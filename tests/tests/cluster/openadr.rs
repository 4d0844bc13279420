//! A real OpenADR 3.1 VTN (`openleadr-vtn` on PostgreSQL, from `kilowatt_tests::vtn`): the test as the
//! utility's business logic makes a program and an import-capacity-limit event; as the VEN it takes a
//! token by the client-credentials grant, lists the program's events and reads the limit, and posts a
//! usage report that the business logic then reads back.

use http::{Method, StatusCode};
use k8s_openapi::jiff::Timestamp;
use kilowatt_tests::vtn::Vtn;
use kilowatt_tests::{test_dir, within};
use serde_json::{Value, json};

/// The event's import limit (kW) and the usage the VEN reports (kW).
const LIMIT_KW: f64 = 450.0;
const USAGE_KW: f64 = 412.5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_vtn_serves_a_programs_events_to_its_ven_and_takes_its_reports() {
    let dir = test_dir("openadr");
    let vtn = within("the VTN starts", Vtn::start(&dir)).await;
    let start = Timestamp::from_second(Timestamp::now().as_second())
        .expect("now")
        .to_string();

    // The utility (BL): a program and, in it, one hour of an import capacity limit for our VEN.
    let program = within("program", vtn.create_program("kilowatt-capacity")).await;
    let mut event = vtn.capacity_limit_event("evening-peak", &start, "PT1H", LIMIT_KW);
    event["reportDescriptors"] =
        json!([{"payloadType": "USAGE", "readingType": "DIRECT_READ", "units": "KW"}]);
    let event = within("event", vtn.create_event(&program, event)).await;

    // The VEN: a token by the client-credentials grant (credentials in the form, as RFC 6749 allows).
    let form = format!(
        "grant_type=client_credentials&client_id={}&client_secret={}",
        vtn.ven.client_id, vtn.ven.client_secret
    );
    let answer = within(
        "VEN token",
        vtn.http()
            .post(&vtn.token_url)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(form)
            .send(),
    )
    .await
    .expect("token request");
    assert_eq!(answer.status(), StatusCode::OK, "token endpoint");
    let token: Value = within("token body", answer.json())
        .await
        .expect("token JSON");
    assert_eq!(token["token_type"], "Bearer");
    let ven_token = token["access_token"].as_str().expect("access_token");

    // The VEN lists its program's events and reads the limit; BL-only writes are refused.
    let events_path = format!("events?programID={program}");
    let ven_events = |what| {
        within(
            what,
            vtn.request(Method::GET, &events_path, ven_token, None),
        )
    };
    let (status, events) = ven_events("events").await;
    assert_eq!(status, StatusCode::OK, "{events}");
    let events = events.as_array().expect("event list");
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["id"], json!(event));
    assert_eq!(events[0]["programID"], json!(program));
    assert_eq!(events[0]["targets"], json!([vtn.ven_name]));
    // The VTN writes durations back in full ISO 8601 form.
    assert_eq!(events[0]["intervalPeriod"]["duration"], "P0Y0M0DT1H0M0S");
    let payload = &events[0]["intervals"][0]["payloads"][0];
    assert_eq!(payload["type"], "IMPORT_CAPACITY_LIMIT");
    assert_eq!(payload["values"][0].as_f64(), Some(LIMIT_KW));
    assert_eq!(
        events[0]["payloadDescriptors"][0]["units"], "KW",
        "{events:?}"
    );
    let (status, _) = within(
        "VEN may not write events",
        vtn.request(
            Method::POST,
            "events",
            ven_token,
            Some(&json!({"objectType": "EVENT", "programID": program, "intervals": []})),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // The VEN reports its usage over the event's interval.
    let report = json!({
        "objectType": "REPORT",
        "eventID": event,
        "clientName": vtn.ven_name,
        "reportName": "evening-peak-usage",
        "payloadDescriptors": [{"objectType": "REPORT_PAYLOAD_DESCRIPTOR", "payloadType": "USAGE",
                                "readingType": "DIRECT_READ", "units": "KW"}],
        "resources": [{
            "resourceName": "AGGREGATED_REPORT",
            "intervalPeriod": {"start": start, "duration": "PT1H"},
            "intervals": [{"id": 0, "payloads": [{"type": "USAGE", "values": [USAGE_KW]}]}],
        }],
    });
    let (status, posted) = within(
        "report",
        vtn.request(Method::POST, "reports", ven_token, Some(&report)),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{posted}\n{}", vtn.log_tail());

    // The utility reads it back, stored under the VEN's client id.
    let reports = within("reports", vtn.reports()).await;
    assert_eq!(reports.len(), 1, "{reports:?}");
    let read = &reports[0];
    assert_eq!(read["id"], posted["id"]);
    assert_eq!(read["eventID"], json!(event));
    assert_eq!(read["clientID"], json!(vtn.ven.client_id));
    assert_eq!(read["clientName"], json!(vtn.ven_name));
    assert_eq!(read["payloadDescriptors"][0]["payloadType"], "USAGE");
    let usage = &read["resources"][0]["intervals"][0]["payloads"][0];
    assert_eq!(usage["type"], "USAGE");
    assert_eq!(usage["values"][0].as_f64(), Some(USAGE_KW));

    // An event without reports can be withdrawn; the VEN then no longer sees it.
    let second = within(
        "second event",
        vtn.create_event(
            &program,
            json!({"intervals": [{"id": 0, "intervalPeriod": {"start": start, "duration": "PT15M"},
                                  "payloads": [{"type": "IMPORT_CAPACITY_LIMIT", "values": [300.0]}]}]}),
        ),
    )
    .await;
    within("delete event", vtn.delete_event(&second)).await;
    let (status, events) = ven_events("events after delete").await;
    assert_eq!(status, StatusCode::OK);
    let ids: Vec<&Value> = events
        .as_array()
        .expect("event list")
        .iter()
        .map(|e| &e["id"])
        .collect();
    assert_eq!(ids, [&json!(event)]);

    drop(vtn);
    let _ = std::fs::remove_dir_all(&dir);
}
