//! The agent's HTTP endpoints: `/metrics` (its telemetry in Prometheus' text format) and `/healthz`
//! (whether the main loop still goes round). Serving is network IO.

use std::time::{Duration, Instant};

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

/// How long the main loop may go without a round before `/healthz` fails, for a loop that samples
/// every `sample_period`. NB: at least 30 s, since one round may wait on etcd (an etcd session opens
/// in up to six 2 s steps after a 5 s credentials request) and on the GPUs' read-back (up to 1 s).
pub fn wedged_after(sample_period: Duration) -> Duration {
    (sample_period * 5).max(Duration::from_secs(30))
}

/// `/healthz`'s answer: 503 once the main loop's last round is more than `wedged_after` old (its GPUs
/// are no longer fenced or repaired); ok before the first round, while the agent starts.
fn health(
    last_round: Option<Instant>,
    now: Instant,
    wedged_after: Duration,
) -> (StatusCode, String) {
    match last_round.map(|at| now.saturating_duration_since(at)) {
        Some(silent) if silent > wedged_after => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the agent's main loop has not gone round for {:.1} s (more than {} s): it no longer fences or repairs the GPUs",
                silent.as_secs_f64(),
                wedged_after.as_secs()
            ),
        ),
        _ => (StatusCode::OK, "ok".to_owned()),
    }
}

/// `/metrics` and `/healthz`, which fails once the main loop has not gone round for `wedged_after`.
pub fn router(telemetry: Telemetry, wedged_after: Duration) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route(
            "/healthz",
            get(move |State(telemetry): State<Telemetry>| async move {
                health(telemetry.last_heartbeat(), Instant::now(), wedged_after)
            }),
        )
        .with_state(telemetry)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn healthz_fails_once_the_main_loop_has_not_gone_round_for_longer_than_allowed() {
        let allowed = wedged_after(Duration::from_secs(1));
        assert_eq!(allowed, Duration::from_secs(30));
        assert_eq!(
            wedged_after(Duration::from_secs(10)),
            Duration::from_secs(50)
        );
        let start = Instant::now();
        assert_eq!(health(None, start, allowed).0, StatusCode::OK, "starting");
        let later = start + Duration::from_secs(30);
        assert_eq!(health(Some(start), later, allowed).0, StatusCode::OK);
        let (status, message) = health(Some(start), later + Duration::from_millis(500), allowed);
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(message.contains("30.5 s"), "{message}");
    }
}
