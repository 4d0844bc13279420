//! The operator's HTTP endpoints (axum): `/metrics`, `/healthz`, `/readyz`, the plan in force
//! (`GET /api/v1/plan`, read-only), what-if questions (`POST /api/v1/whatif`, changes nothing), node
//! agents' etcd credentials (`POST /api/v1/agent-credentials`, for a ServiceAccount token bound to a
//! pod on a node) and the live page (`GET /`, [`crate::http::web`]). Does network IO; answers come from etcd,
//! the watch caches, the pure what-if, the API server's TokenReview and SubjectAccessReview and the
//! page's feed.

pub mod agent_credentials;
pub mod metrics;
pub mod web;
pub mod whatif;
pub mod whatif_auth;
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
use crate::http::agent_credentials::{
    CredentialIssuer, CredentialsError, ISSUE_QUEUE_WAIT, ISSUES_AT_ONCE, Issued, bearer_token,
};
use crate::http::metrics::Metrics;
use crate::http::web::Feed;
use crate::http::whatif::{WhatIfError, WhatIfRequest, what_if};
use crate::http::whatif_auth::{Denied, authorize};
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
    /// What-if questions, shared by every listener: one at a time, time-boxed.
    pub whatif: WhatIfGate,
    /// Whether this listener authorizes what-if callers (it reaches beyond localhost, or the operator
    /// was told to everywhere).
    pub whatif_authorized: bool,
}

/// The limits on what-if questions. Each runs two full solves: unbounded, a flood of them would take
/// the cores the reconcile loop and the lease renewals need.
#[derive(Clone)]
pub struct WhatIfGate {
    /// Holds one permit: a question arriving while another is answered gets 429.
    one_at_a_time: Arc<tokio::sync::Semaphore>,
    /// The most one question may take; each of its two solves gets [`SOLVE_SHARE`] of it.
    pub time_limit: Duration,
    /// Reviews callers' tokens and access.
    pub kube: kube::Client,
}

/// The share of a what-if's time limit each of its two solves may take; the rest is for reading the
/// views, translating, and the reviews.
pub const SOLVE_SHARE: f64 = 0.4;

impl WhatIfGate {
    pub fn new(kube: kube::Client, time_limit: Duration) -> WhatIfGate {
        WhatIfGate {
            one_at_a_time: Arc::new(tokio::sync::Semaphore::new(1)),
            time_limit,
            kube,
        }
    }

    /// `options` with each solve limited to its share of the time limit.
    pub fn solve_options(&self, options: &SolveOptions) -> SolveOptions {
        let mut limited = options.clone();
        let share = self.time_limit.as_secs_f64() * SOLVE_SHARE;
        limited.milp.time_limit_seconds = limited.milp.time_limit_seconds.min(share);
        limited
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

/// An error answer that, for 401, says a bearer token is what is missing.
fn refusal(status: StatusCode, message: String) -> Response {
    let mut response = error(status, message);
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
    }
    response
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
    headers: HeaderMap,
    request: Result<Json<WhatIfRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let count = |outcome: &str| {
        state
            .metrics
            .whatif_requests
            .with_label_values(&[outcome])
            .inc();
    };
    let Json(request) = match request {
        Ok(request) => request,
        Err(rejection) => {
            count("invalid");
            return error(StatusCode::BAD_REQUEST, rejection.body_text());
        }
    };
    let gate = &state.whatif;
    // NB: taken before the reviews, so that a flood costs the API server at most one review at a
    // time as well.
    let Ok(permit) = gate.one_at_a_time.clone().try_acquire_owned() else {
        count("busy");
        let mut response = error(
            StatusCode::TOO_MANY_REQUESTS,
            "another what-if question is being answered; this operator answers one at a time",
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        return response;
    };
    let deadline = tokio::time::Instant::now() + gate.time_limit;
    let limit = gate.time_limit;
    let timed_out = || {
        count("timeout");
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the what-if question was not answered within its time limit of {limit:?}"),
        )
    };
    if state.whatif_authorized {
        let authorization = headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok());
        let reviewed = match bearer_token(authorization) {
            Ok(token) => {
                let review = authorize(&gate.kube, token, &request.budget);
                match tokio::time::timeout_at(deadline, review).await {
                    Ok(reviewed) => reviewed,
                    Err(_) => return timed_out(),
                }
            }
            Err(_) => Err(Denied::NoToken),
        };
        match reviewed {
            Ok(user) => tracing::debug!(%user, budget = %request.budget, "what-if authorized"),
            Err(denied) => {
                count(denied.category());
                let status = match &denied {
                    Denied::NoToken | Denied::Unauthenticated { .. } => StatusCode::UNAUTHORIZED,
                    Denied::Forbidden { .. } => StatusCode::FORBIDDEN,
                    Denied::Review(_) => StatusCode::SERVICE_UNAVAILABLE,
                };
                let message = error_chain(&denied);
                tracing::info!(error = %message, %status, "refused a what-if question");
                return refusal(status, message);
            }
        }
    }
    let views = match tokio::time::timeout_at(deadline, state.store.read_views()).await {
        Ok(Ok(views)) => views,
        Ok(Err(e)) => {
            count("unavailable");
            return error(StatusCode::SERVICE_UNAVAILABLE, error_chain(&e));
        }
        Err(_) => return timed_out(),
    };
    let inventories = inventories(&views);
    let caches = state.caches.clone();
    let options = gate.solve_options(&state.solve_options);
    let answering = tokio::task::spawn_blocking(move || {
        // NB: held until the solves end, even when the caller was answered "timed out" before: the
        // next question waits for the cores.
        let _permit = permit;
        let translation = caches.translate(Timestamp::now(), &inventories, &BTreeMap::new());
        what_if(&translation, &request, &options)
    });
    let answer = match tokio::time::timeout_at(deadline, answering).await {
        Ok(answer) => answer,
        Err(_) => return timed_out(),
    };
    let (outcome, response) = match answer {
        Ok(Ok(answer)) => ("answered", Json(answer).into_response()),
        Ok(Err(e @ WhatIfError::UnknownBudget(_))) => {
            ("invalid", error(StatusCode::NOT_FOUND, e.to_string()))
        }
        Ok(Err(
            e @ (WhatIfError::InvalidCap(_)
            | WhatIfError::InvalidSlowdown(_)
            | WhatIfError::NothingAsked),
        )) => ("invalid", error(StatusCode::BAD_REQUEST, e.to_string())),
        Ok(Err(e)) => (
            "failed",
            error(StatusCode::INTERNAL_SERVER_ERROR, error_chain(&e)),
        ),
        Err(e) => (
            "failed",
            error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        ),
    };
    count(outcome);
    response
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
        Ok(token) => {
            // NB: a few at a time: each costs etcd raft writes and a bcrypt hash, and a thousand
            // agents asking together would otherwise all wait past their timeouts and ask again.
            // One that gives up while queued costs nothing.
            // A turn that does not come soon is refused rather than waited for: the agent would
            // stop waiting first, and a queue of requests nobody waits for is served to no one.
            let turn = tokio::time::timeout(ISSUE_QUEUE_WAIT, issuer.in_flight().acquire_owned());
            let Ok(Ok(permit)) = turn.await else {
                count("busy");
                let mut response = error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "{ISSUES_AT_ONCE} credential requests are being served; ask again later"
                    ),
                );
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
                return response;
            };
            let (issuer, token) = (issuer.clone(), token.to_owned());
            let metrics = state.metrics.clone();
            // NB: a task of its own, so that an agent that stops waiting does not cut an issue short
            // half-way through its auth writes; it is counted even when nobody reads the answer.
            let issuing = tokio::spawn(async move {
                let _permit = permit;
                let issued = issuer.issue_for_token(&token).await;
                let outcome = issued.as_ref().map_or_else(|e| e.category(), |_| "issued");
                metrics
                    .agent_credentials
                    .with_label_values(&[outcome])
                    .inc();
                issued
            });
            match issuing.await {
                Ok(issued) => issued,
                Err(interrupted) => {
                    count("internal");
                    Err(CredentialsError::Interrupted(interrupted))
                }
            }
        }
        Err(rejection) => {
            count("unauthenticated");
            Err(CredentialsError::Rejected(rejection))
        }
    };
    match issued {
        Ok(Issued {
            credentials,
            auth_writes,
        }) => {
            tracing::info!(node = %credentials.node, user = %credentials.user, auth_writes, "issued agent etcd credentials");
            // NB: the answer holds a password: no cache may keep it.
            ([(header::CACHE_CONTROL, "no-store")], Json(credentials)).into_response()
        }
        Err(e) => {
            let status = match &e {
                CredentialsError::Rejected(r) if r.is_unauthenticated() => StatusCode::UNAUTHORIZED,
                CredentialsError::Rejected(_) => StatusCode::FORBIDDEN,
                CredentialsError::Review(_) | CredentialsError::Issue(_) => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
                CredentialsError::Interrupted(_) => StatusCode::INTERNAL_SERVER_ERROR,
            };
            let message = error_chain(&e);
            tracing::warn!(error = %message, %status, "refused agent etcd credentials");
            refusal(status, message)
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
