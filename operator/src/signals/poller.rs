//! The forecast poller: a background task that, while this replica leads, fetches each budget's
//! `spec.signals.carbonForecast` every `pollSeconds` over HTTP (reqwest over rustls with ring, the
//! client `measure::promql` uses), keeps the last good forecast on a shared board the pass reads,
//! counts fetches, and wakes the reconcile loop when what it knows changes. Does network and
//! Kubernetes IO (the token Secret).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kilowatt_crds::{ForecastFormat, PowerBudget, SecretKeyRef};
use kilowatt_plumbing::errors::error_chain;
use kube::runtime::reflector::Store;
use kube::{Client, ResourceExt};
use prometheus::IntCounterVec;
use tokio::sync::{Notify, watch};

use super::forecast::{self, ForecastError};
use super::policy::{FetchFailure, ForecastPolicy, SourceState};
use super::{ForecastBoard, LeaderTicks, SecretError, http_client, read_secret, secret_key};

/// The most one fetch may take, connection included.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest forecast body read.
const MAX_BODY_BYTES: usize = 4 << 20;

/// Why a fetch gave no forecast.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("the token Secret")]
    Token(#[source] SecretError),
    #[error("fetching {url}")]
    Request {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url} answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("{url} answered more than {MAX_BODY_BYTES} bytes")]
    TooLarge { url: String },
    #[error("the forecast from {url}")]
    Parse {
        url: String,
        #[source]
        source: ForecastError,
    },
}

impl FetchError {
    /// Which `SignalsAvailable` reason it leads to.
    pub fn failure(&self) -> FetchFailure {
        match self {
            FetchError::Parse { .. } | FetchError::TooLarge { .. } => FetchFailure::Invalid,
            _ => FetchFailure::Unreachable,
        }
    }

    /// A fixed label for `kilowatt_signal_fetches_total{outcome}`.
    pub fn category(&self) -> &'static str {
        match self.failure() {
            FetchFailure::Invalid => "invalid",
            FetchFailure::Unreachable => "unreachable",
        }
    }
}

/// Fetches and parses one forecast, sending `token` as `format`'s source expects it.
pub async fn fetch(
    http: &reqwest::Client,
    url: &str,
    format: ForecastFormat,
    token: Option<&str>,
) -> Result<forecast::Forecast, FetchError> {
    let mut request = http
        .get(url)
        .header(http::header::ACCEPT, "application/json");
    if let Some(token) = token {
        request = match format {
            ForecastFormat::WattTime => request.bearer_auth(token),
            ForecastFormat::ElectricityMaps => request.header("auth-token", token),
        };
    }
    let request_error = |source| FetchError::Request {
        url: url.to_owned(),
        source,
    };
    let response = request.send().await.map_err(request_error)?;
    let status = response.status();
    if !status.is_success() {
        return Err(FetchError::Status {
            url: url.to_owned(),
            status: status.as_u16(),
        });
    }
    let too_large = || FetchError::TooLarge {
        url: url.to_owned(),
    };
    if response
        .content_length()
        .is_some_and(|length| length > MAX_BODY_BYTES as u64)
    {
        return Err(too_large());
    }
    // NB: a body without a length is read whole within FETCH_TIMEOUT, then refused if too large.
    let body = response.bytes().await.map_err(request_error)?;
    if body.len() > MAX_BODY_BYTES {
        return Err(too_large());
    }
    forecast::parse(format, &body).map_err(|source| FetchError::Parse {
        url: url.to_owned(),
        source,
    })
}

/// The token a Secret key holds, trimmed.
async fn token(
    client: &Client,
    namespace: &str,
    reference: &SecretKeyRef,
) -> Result<String, FetchError> {
    let secret = read_secret(client, namespace, &reference.name)
        .await
        .map_err(FetchError::Token)?;
    secret_key(&secret, &reference.key).map_err(FetchError::Token)
}

/// The `outcome` values of `kilowatt_signal_fetches_total`.
pub const FETCH_OUTCOMES: [&str; 3] = ["ok", "unreachable", "invalid"];

/// The poller's inputs.
pub struct Poller {
    pub client: Client,
    /// Where token Secrets are read: the operator's namespace.
    pub namespace: String,
    pub budgets: Store<PowerBudget>,
    pub board: ForecastBoard,
    /// Notified after every round that fetched something, so the loop plans with it.
    pub changed: Arc<Notify>,
    pub fetches: IntCounterVec,
}

impl Poller {
    /// Polls while `leader` says this replica leads; runs until aborted. The fetches due at one
    /// tick run concurrently, and the next tick waits for them (at most [`FETCH_TIMEOUT`]).
    pub async fn run(self, leader: watch::Receiver<bool>) {
        let http = match http_client(FETCH_TIMEOUT) {
            Ok(http) => http,
            Err(error) => {
                tracing::error!(error = %error_chain(&error), "no HTTP client for carbon forecasts; budgets' signals are not polled");
                return;
            }
        };
        let mut ticks = LeaderTicks::new(leader);
        loop {
            ticks.next().await;
            let now = Timestamp::now();
            let due = self.due(now);
            if due.is_empty() {
                continue;
            }
            let (this, http) = (&self, &http);
            let results =
                futures::future::join_all(due.into_iter().map(|(name, policy)| async move {
                    let fetched = this.fetch_for(http, &policy).await;
                    (name, policy, fetched, Timestamp::now())
                }))
                .await;
            for (name, policy, fetched, at) in results {
                self.record(&name, &policy, fetched, at);
            }
            self.changed.notify_one();
        }
    }

    /// The budgets whose fetch is due at `now`, marked as attempted; forgets budgets whose policy
    /// is gone or changed.
    fn due(&self, now: Timestamp) -> Vec<(String, ForecastPolicy)> {
        let policies: BTreeMap<String, ForecastPolicy> = self
            .budgets
            .state()
            .iter()
            .filter_map(|budget| {
                let spec = budget.spec.signals.as_ref()?.carbon_forecast.as_ref()?;
                Some((budget.name_any(), ForecastPolicy::from_spec(spec).ok()?))
            })
            .collect();
        let (due, forgotten) = self.board.update(|states| {
            let forgotten: Vec<String> = states
                .keys()
                .filter(|name| !policies.contains_key(*name))
                .cloned()
                .collect();
            states.retain(|name, state| policies.get(name) == Some(&state.policy));
            for (name, policy) in &policies {
                states
                    .entry(name.clone())
                    .or_insert_with(|| SourceState::new(policy.clone()));
            }
            let due = states
                .iter_mut()
                .filter(|(_, state)| state.due(now))
                .map(|(name, state)| {
                    state.last_attempt = Some(now);
                    (name.clone(), state.policy.clone())
                })
                .collect::<Vec<_>>();
            (due, forgotten)
        });
        for name in forgotten {
            for outcome in FETCH_OUTCOMES {
                let _ = self.fetches.remove_label_values(&[name.as_str(), outcome]);
            }
        }
        due
    }

    async fn fetch_for(
        &self,
        http: &reqwest::Client,
        policy: &ForecastPolicy,
    ) -> Result<forecast::Forecast, FetchError> {
        let token = match &policy.token {
            Some(reference) => Some(token(&self.client, &self.namespace, reference).await?),
            None => None,
        };
        fetch(http, &policy.url, policy.format, token.as_deref()).await
    }

    /// Keeps a fetch's outcome on the board, counts it, and logs a source that starts failing (or
    /// fails differently) and one that answers again.
    fn record(
        &self,
        name: &str,
        policy: &ForecastPolicy,
        fetched: Result<forecast::Forecast, FetchError>,
        at: Timestamp,
    ) {
        let outcome = match &fetched {
            Ok(_) => "ok",
            Err(error) => error.category(),
        };
        self.fetches.with_label_values(&[name, outcome]).inc();
        self.board.update(|states| {
            // The budget's policy changed while fetching: this answer is not its source's.
            let Some(state) = states.get_mut(name).filter(|s| s.policy == *policy) else {
                return;
            };
            match fetched {
                Ok(forecast) => {
                    if state.failure.take().is_some() || state.last_good.is_none() {
                        tracing::info!(budget = name, url = %policy.url, points = forecast.points.len(), generated_at = %forecast.generated_at, "carbon forecast fetched");
                    }
                    state.last_good = Some((Arc::new(forecast), at));
                }
                Err(error) => {
                    let message = error_chain(&error);
                    let category = error.failure();
                    if state.failure.as_ref().map(|(c, _)| *c) != Some(category) {
                        tracing::warn!(budget = name, error = %message, "carbon forecast fetch fails; the last good forecast is kept until staleAfterSeconds");
                    }
                    state.failure = Some((category, message));
                }
            }
        });
    }
}
