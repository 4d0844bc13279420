//! The operator's HTTP endpoints (axum): `/metrics`, `/healthz`, `/readyz`, the plan in force
//! (`GET /api/v1/plan`, read-only), what-if questions (`POST /api/v1/whatif`, changes nothing), node
//! agents' etcd credentials (`POST /api/v1/agent-credentials`, for a ServiceAccount token bound to a
//! pod on a node) and the live page (`GET /`, [`crate::http::web`]). Does network IO; answers come from etcd,
//! the watch caches, the pure what-if, the API server's TokenReview and the page's feed.

pub mod agent_credentials;
pub mod metrics;
pub mod web;
pub mod whatif;
pub mod whatif_client;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use k8s_openapi::jiff::Timestamp;
use kilowatt_plumbing::errors::error_chain;
use kilowatt_solver::SolveOptions;
use serde_json::json;

use crate::controller::caches::Caches;
use crate::http::agent_credentials::{CredentialIssuer, CredentialsError, bearer_token};
use crate::http::metrics::Metrics;
use crate::http::web::Feed;
use crate::http::whatif::{WhatIfError, WhatIfRequest, what_if};
use crate::plan::pass::inventories;
use crate::store::PlanStore;
use crate::store::etcd::EtcdPlanStore;

/// What `/healthz` and `/readyz` report.
#[derive(Debug, Default)]
pub struct Health {
    /// Every watch cache has listed its objects once.
    pub caches_synced: AtomicBool,
    /// The last etcd operation succeeded.
    pub etcd_ok: AtomicBool,
    /// Unix seconds of the reconcile loop's last wake-up.
    pub heartbeat: AtomicI64,
}

impl Health {
    pub fn beat(&self) {
        self.heartbeat
            .store(Timestamp::now().as_second(), Ordering::Relaxed);
    }
}

/// Shared by every handler.
#[derive(Clone)]
pub struct AppState {
    pub metrics: Metrics,
    pub store: EtcdPlanStore,
    /// What the live page shows.
    pub feed: Arc<Feed>,
    pub caches: Caches,
    pub health: Arc<Health>,
    pub solve_options: SolveOptions,
    /// The loop wakes at least this often; a heartbeat older than twice this (plus a minute for a
    /// long solve) means it is stuck.
    pub resync: Duration,
    /// Issues agents' etcd credentials; `None` when the operator connects to etcd without a user.
    pub credentials: Option<CredentialIssuer>,
    /// On the plain listener of an operator that also serves HTTPS: the HTTPS address, where alone
    /// credentials are issued (a token and a password must not cross plain HTTP).
    pub credentials_only_at: Option<std::net::SocketAddr>,
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

async fn metrics(State(state): State<AppState>) -> Response {
    match state.metrics.render() {
        Ok(text) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn healthz(State(state): State<AppState>) -> Response {
    let age = Timestamp::now().as_second() - state.health.heartbeat.load(Ordering::Relaxed);
    let limit = i64::try_from(state.resync.as_secs()).unwrap_or(i64::MAX / 4) * 2 + 60;
    if age <= limit {
        "ok".into_response()
    } else {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the reconcile loop has not woken for {age} s (limit {limit} s)"),
        )
    }
}

async fn readyz(State(state): State<AppState>) -> Response {
    let synced = state.health.caches_synced.load(Ordering::Relaxed);
    let etcd = state.health.etcd_ok.load(Ordering::Relaxed);
    match (synced, etcd) {
        (true, true) => "ok".into_response(),
        (false, _) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "watch caches have not synced yet",
        ),
        (true, false) => error(StatusCode::SERVICE_UNAVAILABLE, "etcd is not reachable"),
    }
}

async fn plan<S: PlanStore>(State(store): State<S>) -> Response {
    match store.read_raw().await {
        Ok(Some(bytes)) => ([(header::CONTENT_TYPE, "application/json")], bytes).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, "no plan has been published yet"),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, error_chain(&e)),
    }
}

async fn whatif(
    State(state): State<AppState>,
    request: Result<Json<WhatIfRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Json(request) = match request {
        Ok(request) => request,
        Err(rejection) => return error(StatusCode::BAD_REQUEST, rejection.body_text()),
    };
    let views = match state.store.read_views().await {
        Ok(views) => views,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, error_chain(&e)),
    };
    let inventories = inventories(&views);
    let caches = state.caches.clone();
    let options = state.solve_options.clone();
    let answer = tokio::task::spawn_blocking(move || {
        let translation = caches.translate(Timestamp::now(), &inventories, &BTreeMap::new());
        what_if(&translation, &request, &options)
    })
    .await;
    match answer {
        Ok(Ok(answer)) => Json(answer).into_response(),
        Ok(Err(e @ WhatIfError::UnknownBudget(_))) => error(StatusCode::NOT_FOUND, e.to_string()),
        Ok(Err(e @ WhatIfError::InvalidCap(_))) => error(StatusCode::BAD_REQUEST, e.to_string()),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, error_chain(&e)),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn agent_credentials(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let count = |outcome: &str| {
        state
            .metrics
            .agent_credentials
            .with_label_values(&[outcome])
            .inc();
    };
    if let Some(https) = state.credentials_only_at {
        count("forbidden");
        return error(
            StatusCode::FORBIDDEN,
            format!(
                "agent credentials are issued over HTTPS only, on port {} of this operator",
                https.port()
            ),
        );
    }
    let Some(issuer) = &state.credentials else {
        count("disabled");
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "this operator connects to etcd without a user (--etcd-user), so etcd enforces no \
             per-node access and no agent credentials are issued",
        );
    };
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok());
    let issued = match bearer_token(authorization) {
        Ok(token) => issuer.issue_for_token(token).await,
        Err(rejection) => Err(CredentialsError::Rejected(rejection)),
    };
    match issued {
        Ok(credentials) => {
            count("issued");
            tracing::info!(node = %credentials.node, user = %credentials.user, "issued agent etcd credentials");
            // NB: the answer holds a password: no cache may keep it.
            ([(header::CACHE_CONTROL, "no-store")], Json(credentials)).into_response()
        }
        Err(e) => {
            count(e.category());
            let status = match &e {
                CredentialsError::Rejected(r) if r.is_unauthenticated() => StatusCode::UNAUTHORIZED,
                CredentialsError::Rejected(_) => StatusCode::FORBIDDEN,
                CredentialsError::Review(_) | CredentialsError::Issue(_) => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
            };
            let message = error_chain(&e);
            tracing::warn!(error = %message, %status, "refused agent etcd credentials");
            let mut response = error(status, message);
            if status == StatusCode::UNAUTHORIZED {
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    header::HeaderValue::from_static("Bearer"),
                );
            }
            response
        }
    }
}

/// Serves `app` over TLS on `listener` until the task is aborted; a failed handshake costs only its
/// connection.
pub async fn serve_https(
    listener: tokio::net::TcpListener,
    config: Arc<rustls::ServerConfig>,
    app: Router,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "HTTPS accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let stream =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(error)) => {
                        tracing::debug!(%peer, %error, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                };
            let service = hyper_util::service::TowerToHyperService::new(app);
            let served =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            if let Err(error) = served {
                tracing::debug!(%peer, %error, "HTTPS connection ended with an error");
            }
        });
    }
}

/// `GET /api/v1/plan`: the plan in `store`, as stored.
pub fn plan_router<S: PlanStore>(store: S) -> Router {
    Router::new()
        .route("/api/v1/plan", get(plan::<S>))
        .with_state(store)
}

/// The router with every endpoint.
pub fn router(state: AppState) -> Router {
    let plan = plan_router(state.store.clone());
    let page = web::router(state.feed.clone());
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/api/v1/whatif", post(whatif))
        .route("/api/v1/agent-credentials", post(agent_credentials))
        .with_state(state)
        .merge(plan)
        .merge(page)
}
