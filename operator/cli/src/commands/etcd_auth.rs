//! `kilowatt etcd-auth`: turns authentication on in one etcd (a root user holding the root role,
//! then `auth enable`), checks it again periodically and serves `GET /readyz` from the last check.
//! The sidecar of the chart's internal etcd, whose readiness it is. Does file (password, TLS files),
//! etcd and network IO.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use etcd_client::{Client, ConnectOptions, TlsOptions};
use kilowatt_plumbing::errors::error_chain;
use kilowatt_plumbing::{logging, signals, tls};
use serde_json::json;

use crate::args::EtcdAuthArgs;

pub fn run(args: &EtcdAuthArgs) -> ExitCode {
    super::exit_code(etcd_auth(args))
}

/// The etcd user this command manages: the one the operator connects as.
const ROOT: &str = "root";

/// How often to try again while authentication is not confirmed (etcd starting, a refused password).
const RETRY: Duration = Duration::from_secs(1);

/// Why one check could not confirm that authentication is on with root's password.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("connecting to etcd at {endpoint}")]
    Connect {
        endpoint: String,
        source: etcd_client::Error,
    },
    #[error("authenticating as root at {endpoint}")]
    Authenticate {
        endpoint: String,
        source: etcd_client::Error,
    },
    #[error("adding user root")]
    AddUser { source: etcd_client::Error },
    #[error("setting the password of the existing user root")]
    ChangePassword { source: etcd_client::Error },
    #[error("granting role root to user root")]
    GrantRole { source: etcd_client::Error },
    #[error("enabling authentication")]
    Enable { source: etcd_client::Error },
    #[error("the check took longer than {timeout:?}")]
    Timeout { timeout: Duration },
}

/// What a successful check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checked {
    /// Authentication was already on, and root's password works.
    AlreadyOn,
    /// Authentication was off; this check turned it on, and root's password works.
    Enabled,
}

/// Whether etcd refused an authentication because authentication is off. NB: etcd 3.4 (Debian's)
/// has no AuthStatus call; both 3.4 and 3.5 answer Authenticate with this when auth is off.
fn is_auth_not_enabled(error: &etcd_client::Error) -> bool {
    matches!(error, etcd_client::Error::GRpcStatus(status)
        if status.message().contains("authentication is not enabled"))
}

/// Whether etcd refused to add a user because it exists.
fn is_already_exists(error: &etcd_client::Error) -> bool {
    matches!(error, etcd_client::Error::GRpcStatus(status)
        if status.message().contains("already exists"))
}

/// Where etcd is and how to reach it.
struct Target {
    endpoint: String,
    tls: Option<TlsOptions>,
    password: String,
    timeout: Duration,
}

/// One check, bounded by the target's timeout: confirms root's password with authentication on,
/// turning authentication on first when etcd says it is off.
async fn check(target: &Target) -> Result<Checked, CheckError> {
    tokio::time::timeout(target.timeout, ensure_auth(target))
        .await
        .unwrap_or(Err(CheckError::Timeout {
            timeout: target.timeout,
        }))
}

async fn ensure_auth(target: &Target) -> Result<Checked, CheckError> {
    // Connected without a user: with auth off that is the only way in, and Authenticate needs none.
    let mut options = ConnectOptions::new()
        .with_connect_timeout(target.timeout)
        .with_timeout(target.timeout);
    if let Some(tls) = &target.tls {
        options = options.with_tls(tls.clone());
    }
    let mut client = Client::connect([target.endpoint.as_str()], Some(options))
        .await
        .map_err(|source| CheckError::Connect {
            endpoint: target.endpoint.clone(),
            source,
        })?;
    let first = client
        .auth_client()
        .authenticate(ROOT.to_owned(), target.password.clone())
        .await;
    match first {
        Ok(_) => return Ok(Checked::AlreadyOn),
        Err(e) if is_auth_not_enabled(&e) => {}
        Err(source) => {
            return Err(CheckError::Authenticate {
                endpoint: target.endpoint.clone(),
                source,
            });
        }
    }
    // Authentication is off, so anyone may manage users: the password in the Secret becomes root's.
    match client.user_add(ROOT, target.password.as_str(), None).await {
        Ok(_) => {}
        Err(e) if is_already_exists(&e) => {
            client
                .user_change_password(ROOT, target.password.as_str())
                .await
                .map_err(|source| CheckError::ChangePassword { source })?;
        }
        Err(source) => return Err(CheckError::AddUser { source }),
    }
    // NB: etcd has the root role built in; enabling auth requires a root user holding it.
    client
        .user_grant_role(ROOT, ROOT)
        .await
        .map_err(|source| CheckError::GrantRole { source })?;
    client
        .auth_enable()
        .await
        .map_err(|source| CheckError::Enable { source })?;
    client
        .auth_client()
        .authenticate(ROOT.to_owned(), target.password.clone())
        .await
        .map_err(|source| CheckError::Authenticate {
            endpoint: target.endpoint.clone(),
            source,
        })?;
    Ok(Checked::Enabled)
}

/// The last check's outcome, as `/readyz` reports it.
#[derive(Debug)]
struct Readiness {
    /// When a check last confirmed authentication; `None` before the first.
    confirmed_at: Option<Instant>,
    /// The last check's error; `None` when it confirmed authentication.
    error: Option<String>,
    /// A confirmation older than this no longer counts (the checks stalled).
    fresh_for: Duration,
}

impl Readiness {
    /// `Ok` when the last check confirmed authentication recently enough, else why not.
    fn at(&self, now: Instant) -> Result<(), String> {
        if let Some(error) = &self.error {
            return Err(error.clone());
        }
        match self.confirmed_at {
            None => Err("authentication has not been checked yet".to_owned()),
            Some(at) if now.duration_since(at) > self.fresh_for => Err(format!(
                "authentication was last confirmed {} s ago",
                now.duration_since(at).as_secs()
            )),
            Some(_) => Ok(()),
        }
    }
}

type Shared = Arc<Mutex<Readiness>>;

async fn readyz(State(readiness): State<Shared>) -> Response {
    let now = Instant::now();
    let answer = match readiness.lock() {
        Ok(readiness) => readiness.at(now),
        Err(_) => Err("the readiness state is poisoned".to_owned()),
    };
    match answer {
        Ok(()) => "ok".into_response(),
        Err(error) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "error": error })),
        )
            .into_response(),
    }
}

/// Checks forever: every [`RETRY`] until confirmed, then every `period`; logs changes only.
async fn keep_checking(target: Target, readiness: Shared, period: Duration) {
    let mut was_ready = false;
    loop {
        let outcome = check(&target).await;
        let ready = outcome.is_ok();
        match &outcome {
            Ok(Checked::Enabled) => tracing::info!(
                endpoint = %target.endpoint,
                "etcd authentication enabled: user {ROOT} holds role {ROOT}"
            ),
            Ok(Checked::AlreadyOn) if !was_ready => tracing::info!(
                endpoint = %target.endpoint,
                "etcd authentication is on and {ROOT}'s password works"
            ),
            Ok(Checked::AlreadyOn) => {}
            Err(e) if was_ready => {
                tracing::warn!(error = %error_chain(e), "etcd authentication no longer confirmed");
            }
            Err(e) => {
                tracing::info!(error = %error_chain(e), "etcd authentication not confirmed yet")
            }
        }
        if let Ok(mut state) = readiness.lock() {
            match outcome {
                Ok(_) => {
                    state.confirmed_at = Some(Instant::now());
                    state.error = None;
                }
                Err(e) => state.error = Some(error_chain(&e)),
            }
        }
        was_ready = ready;
        tokio::time::sleep(if ready { period } else { RETRY }).await;
    }
}

fn etcd_auth(args: &EtcdAuthArgs) -> anyhow::Result<()> {
    logging::init(&args.log_format, "info");
    let password_file: PathBuf = args.etcd_password_file.clone();
    let timeout = Duration::from_secs(args.timeout_seconds);
    let period = Duration::from_secs(args.check_seconds);
    let target = Target {
        tls: tls::etcd_tls(std::slice::from_ref(&args.etcd_endpoint), &args.etcd_tls)?,
        endpoint: args.etcd_endpoint.clone(),
        password: super::read_etcd_password(&password_file)?,
        timeout,
    };
    let readiness: Shared = Arc::new(Mutex::new(Readiness {
        confirmed_at: None,
        error: None,
        // Two missed periods, each check up to its timeout.
        fresh_for: 2 * (period + timeout),
    }));
    super::runtime()?.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        tracing::info!(listen = %args.listen, endpoint = %target.endpoint, "serving GET /readyz");
        let app = axum::Router::new()
            .route("/readyz", axum::routing::get(readyz))
            .with_state(readiness.clone());
        let checking = tokio::spawn(keep_checking(target, readiness, period));
        let served = tokio::select! {
            served = axum::serve(listener, app) => served.context("serving /readyz"),
            () = signals::termination() => {
                tracing::info!("termination signal: stopping");
                Ok(())
            }
        };
        checking.abort();
        served
    })
}
