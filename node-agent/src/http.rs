//! The agent's HTTP endpoints: `/metrics` (its telemetry in Prometheus' text format) and `/healthz`.
//! Serving is network IO.

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use kilowatt_agent_core::telemetry::Telemetry;

async fn metrics(State(telemetry): State<Telemetry>) -> Response {
    match telemetry.render() {
        Ok(text) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// `/metrics` and `/healthz`.
pub fn router(telemetry: Telemetry) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(telemetry)
}
