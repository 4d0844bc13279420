//! A budget's carbon forecast (`spec.signals.carbonForecast`) on a real control plane: the operator,
//! under the shipped RBAC, polls a WattTime-format forecast this test serves on 127.0.0.1 behind a
//! bearer token kept in a Secret, plans with the band's `maxSlowdown` and says so in status, a
//! condition, an event and metrics; when the source fails past `staleAfterSeconds` it falls back to
//! `spec.efficiency` and the condition turns False.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use kilowatt_crds::PowerBudgetStatus;
use kilowatt_tests::*;
use kube::Client;
use kube::api::Api;
use serde_json::json;

const TOKEN: &str = "forecast-token-1";
/// lbs CO2/MWh served: 1100 × 0.4536 ≈ 499 g/kWh, in the `above 450` band.
const SERVED_LBS_PER_MWH: f64 = 1100.0;
const BAND_SLOWDOWN: f64 = 0.12;
const SPEC_SLOWDOWN: f64 = 0.02;

/// What the forecast endpoint answers: a body with 200, or 503 when `None`; requests without the
/// token get 401.
#[derive(Clone, Default)]
struct Source {
    body: Arc<Mutex<Option<String>>>,
    served: Arc<AtomicU32>,
}

async fn forecast(State(source): State<Source>, headers: HeaderMap) -> (StatusCode, String) {
    let bearer = format!("Bearer {TOKEN}");
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(bearer.as_str()) {
        return (StatusCode::UNAUTHORIZED, "no token".to_owned());
    }
    let body = source
        .body
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    match body {
        Some(body) => {
            source.served.fetch_add(1, Ordering::Relaxed);
            (StatusCode::OK, body)
        }
        None => (StatusCode::SERVICE_UNAVAILABLE, "down".to_owned()),
    }
}

async fn serve(source: Source) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("forecast endpoint binds");
    let address = listener.local_addr().expect("address");
    let app = axum::Router::new()
        .route("/v3/forecast", axum::routing::get(forecast))
        .with_state(source);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    address
}

/// A WattTime v3 forecast generated a minute ago: an hour of 5-minute points at `lbs` lbs/MWh.
fn watttime_forecast(lbs: f64) -> String {
    let now = k8s_openapi::jiff::Timestamp::now().as_second();
    let time = |second: i64| {
        k8s_openapi::jiff::Timestamp::from_second(second)
            .expect("time")
            .to_string()
    };
    let data: Vec<_> = (0..12)
        .map(|i| json!({"point_time": time(now - 60 + 300 * i), "value": lbs, "version": "test"}))
        .collect();
    json!({
        "data": data,
        "meta": {"region": "TEST", "signal_type": "co2_moer", "units": "lbs_co2_per_mwh",
                 "data_point_period_seconds": 300, "generated_at": time(now - 60)}
    })
    .to_string()
}

async fn status_where(
    admin: &Client,
    what: &str,
    check: impl Fn(&PowerBudgetStatus) -> bool,
) -> PowerBudgetStatus {
    budget_status_where(admin, "facility", what, Duration::from_secs(20), check).await
}

fn signals_condition(status: &PowerBudgetStatus) -> (String, String) {
    condition_status(&status.conditions, "SignalsAvailable")
}

fn planned_slowdown(status: &PowerBudgetStatus) -> Option<f64> {
    status.efficiency.as_ref().map(|e| e.max_slowdown)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_carbon_forecast_sets_the_bands_slowdown_and_a_failing_source_falls_back_to_the_spec() {
    let started = Instant::now();
    let source = Source::default();
    *source.body.lock().expect("lock") = Some(watttime_forecast(SERVED_LBS_PER_MWH));
    let endpoint = serve(source.clone()).await;
    let (plane, admin) = prepared_cluster().await;
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), "kilowatt-system");
    create(
        &secrets,
        json!({"metadata": {"name": "watttime", "namespace": "kilowatt-system"},
               "stringData": {"token": format!("{TOKEN}\n")}}),
    )
    .await;
    gpu_node(&admin, "n1", json!({"rack": "a"}), 4, H100).await;
    gpu_pod(
        &admin,
        "train-0",
        "n1",
        4,
        json!({"kilowatt.dev/workload": "training"}),
    )
    .await;
    budget(
        &admin,
        "facility",
        json!({
            "capWatts": 100000.0,
            "nodeSelector": {"matchLabels": {"rack": "a"}},
            "efficiency": {"maxSlowdown": SPEC_SLOWDOWN},
            "signals": {"carbonForecast": {
                "url": format!("http://{endpoint}/v3/forecast?region=TEST&signal_type=co2_moer"),
                "format": "WattTime",
                "pollSeconds": 1,
                "staleAfterSeconds": 3,
                "tokenSecretRef": {"name": "watttime", "key": "token"},
                "bands": [{"aboveGramsPerKWh": 200, "maxSlowdown": 0.05},
                          {"aboveGramsPerKWh": 450, "maxSlowdown": BAND_SLOWDOWN}]
            }}
        }),
    )
    .await;
    let operator = start_operator(&plane, "signals-0", Duration::from_secs(60)).await;

    // The forecast's band is planned with and shown.
    let current = status_where(&admin, "the band's maxSlowdown planned", |s| {
        signals_condition(s).0 == "True" && planned_slowdown(s) == Some(BAND_SLOWDOWN)
    })
    .await;
    assert_eq!(
        signals_condition(&current),
        ("True".to_owned(), "ForecastCurrent".to_owned())
    );
    let signals = current.signals.clone().expect("status.signals");
    let grams = signals
        .carbon_intensity_grams_per_kwh
        .expect("intensity shown");
    assert!(
        (grams - SERVED_LBS_PER_MWH * 0.453_592_37).abs() < 0.01,
        "{grams} g/kWh"
    );
    assert_eq!(signals.band_max_slowdown, Some(BAND_SLOWDOWN));
    assert_eq!(signals.max_slowdown, Some(BAND_SLOWDOWN));
    assert!(source.served.load(Ordering::Relaxed) >= 1);
    let (code, metrics) = http_get(operator.address, "/metrics").await;
    assert_eq!(code, 200);
    assert!(
        metrics
            .contains("kilowatt_signal_carbon_intensity_grams_per_kwh{budget=\"facility\"} 498.9"),
        "{metrics}"
    );
    assert!(
        metrics.contains("kilowatt_signal_max_slowdown{budget=\"facility\"} 0.12"),
        "{metrics}"
    );

    // The source fails: the last good forecast is kept for staleAfterSeconds, then the budget falls
    // back to spec.efficiency and the condition says why.
    let failed_at = Instant::now();
    *source.body.lock().expect("lock") = None;
    let stale = status_where(&admin, "the fallback to spec.efficiency", |s| {
        signals_condition(s).0 == "False" && planned_slowdown(s) == Some(SPEC_SLOWDOWN)
    })
    .await;
    assert!(
        failed_at.elapsed() >= Duration::from_secs(1),
        "the last good forecast is kept a while, not dropped at the first failure"
    );
    assert_eq!(signals_condition(&stale).1, "ForecastStale");
    let message = &stale
        .conditions
        .iter()
        .find(|c| c.type_ == "SignalsAvailable")
        .expect("condition")
        .message;
    assert!(message.contains("503"), "{message}");
    let signals = stale.signals.expect("status.signals");
    assert_eq!(signals.carbon_intensity_grams_per_kwh, None);
    assert_eq!(signals.max_slowdown, Some(SPEC_SLOWDOWN));
    assert!(
        signals.forecast_fetched_at.is_some(),
        "the last good fetch stays shown"
    );
    let (_, metrics) = http_get(operator.address, "/metrics").await;
    assert!(
        metrics
            .contains("kilowatt_signal_fetches_total{budget=\"facility\",outcome=\"unreachable\"}"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("kilowatt_signal_carbon_intensity_grams_per_kwh{"),
        "no intensity without a current forecast"
    );
    let events: Api<Event> = Api::all(admin.clone());
    eventually(
        "events of the forecast turning current and stale",
        Duration::from_secs(10),
        || async {
            let reasons: Vec<String> = events
                .list(&Default::default())
                .await
                .map_err(|e| e.to_string())?
                .items
                .into_iter()
                .filter(|e| {
                    e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("facility")
                })
                .filter_map(|e| e.reason)
                .collect();
            ["ForecastCurrent", "ForecastStale", "SignalSlowdownChanged"]
                .iter()
                .all(|want| reasons.iter().any(|r| r == want))
                .then_some(())
                .ok_or(format!("{reasons:?}"))
        },
    )
    .await;

    // The source answers again: the band is back.
    *source.body.lock().expect("lock") = Some(watttime_forecast(SERVED_LBS_PER_MWH));
    status_where(&admin, "the band again once the source answers", |s| {
        signals_condition(s).0 == "True" && planned_slowdown(s) == Some(BAND_SLOWDOWN)
    })
    .await;
    operator.shutdown().await;
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
}
