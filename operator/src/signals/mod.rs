//! Signals from outside that steer a budget's efficiency policy over time: carbon-intensity
//! forecasts in the WattTime v3 and Electricity Maps v3 formats ([`forecast`], pure), the band
//! policy and its fallback ([`policy`], pure, time passed in) and the poller that fetches them
//! ([`poller`], network IO); OpenADR 3.1 programs, whose events become cap windows and slowdowns
//! ([`openadr`], pure) and which the operator follows as a VEN ([`vtn`], network IO). A forecast only
//! ever raises the `maxSlowdown` a budget is planned with, which lowers GPU power; an OpenADR event
//! can lower a cap, and only the VTN ending it raises it again, never losing contact. This file holds
//! what the two background tasks share: the board the pass reads, their HTTP client and the reading
//! of their Secrets (Kubernetes IO).

pub mod forecast;
pub mod openadr;
pub mod policy;
pub mod poller;
pub mod vtn;

pub use forecast::{Forecast, ForecastError};
pub use policy::{Availability, ForecastPolicy, SignalReading, SourceState, apply};
pub use poller::Poller;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kilowatt_crds::{BudgetSignals, PowerBudget};
use kube::{Api, Client, ResourceExt};
use tokio::sync::watch;

/// What a signal's background task knows of each budget's source, by budget name; the pass reads a
/// snapshot.
#[derive(Debug)]
pub struct Board<S>(Arc<Mutex<BTreeMap<String, S>>>);

/// The carbon forecasts the poller fetched.
pub type ForecastBoard = Board<SourceState>;
/// The OpenADR programs the VEN heard.
pub type ProgramBoard = Board<openadr::ProgramState>;

impl<S> Default for Board<S> {
    fn default() -> Self {
        Board(Arc::default())
    }
}

impl<S> Clone for Board<S> {
    fn clone(&self) -> Self {
        Board(self.0.clone())
    }
}

impl<S: Clone> Board<S> {
    /// A copy of every source's state now.
    pub fn snapshot(&self) -> BTreeMap<String, S> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn update<T>(&self, change: impl FnOnce(&mut BTreeMap<String, S>) -> T) -> T {
        change(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// The budgets that have the signal `kind` picks from their `spec.signals`, by name, with it.
fn with_signal<'a, T: 'a>(
    budgets: &'a [Arc<PowerBudget>],
    kind: impl Fn(&'a BudgetSignals) -> Option<&'a T>,
) -> impl Iterator<Item = (String, &'a T)> {
    budgets.iter().filter_map(move |budget| {
        let signal = kind(budget.spec.signals.as_ref()?)?;
        Some((budget.name_any(), signal))
    })
}

/// How often the background tasks look for polls and reports that are due.
const TICK: Duration = Duration::from_millis(500);

/// The rounds of a background task: every [`TICK`], skipping those at which this replica does not
/// lead (a follower must not poll a source or report to a VTN on the leader's behalf).
pub(crate) struct LeaderTicks {
    tick: tokio::time::Interval,
    leader: watch::Receiver<bool>,
}

impl LeaderTicks {
    pub(crate) fn new(leader: watch::Receiver<bool>) -> Self {
        let mut tick = tokio::time::interval(TICK);
        // A round that overran (fetches wait up to their timeout) is not made up for by a burst.
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        LeaderTicks { tick, leader }
    }

    /// Waits for the next tick at which this replica leads.
    pub(crate) async fn next(&mut self) {
        loop {
            self.tick.tick().await;
            if *self.leader.borrow() {
                return;
            }
        }
    }
}

/// Why no HTTP client for a signal's source could be made.
#[derive(Debug, thiserror::Error)]
pub enum HttpClientError {
    #[error("the TLS configuration")]
    Tls(#[source] crate::measure::PromqlError),
    #[error("the HTTP client")]
    Client(#[source] reqwest::Error),
}

/// The HTTP client of signals' sources: the system's CA roots over rustls with ring (as the
/// Prometheus client), no proxies, `timeout` for each request, connection included.
pub fn http_client(timeout: Duration) -> Result<reqwest::Client, HttpClientError> {
    let tls = crate::measure::promql::tls_config(None).map_err(HttpClientError::Tls)?;
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .timeout(timeout)
        .connect_timeout(timeout)
        .no_proxy()
        .build()
        .map_err(HttpClientError::Client)
}

/// Why a key of a Secret could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("reading the Secret {namespace}/{name}")]
    Get {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("the Secret {namespace}/{name} has no key {key:?}")]
    Key {
        namespace: String,
        name: String,
        key: String,
    },
}

/// The Secret `namespace/name`.
pub async fn read_secret(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<Secret, SecretError> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    secrets.get(name).await.map_err(|source| SecretError::Get {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        source,
    })
}

/// The value of `key` in `secret`, trimmed.
pub fn secret_key(secret: &Secret, key: &str) -> Result<String, SecretError> {
    secret
        .data
        .as_ref()
        .and_then(|data| data.get(key))
        .map(|bytes| String::from_utf8_lossy(&bytes.0).trim().to_owned())
        .ok_or_else(|| SecretError::Key {
            namespace: secret.metadata.namespace.clone().unwrap_or_default(),
            name: secret.metadata.name.clone().unwrap_or_default(),
            key: key.to_owned(),
        })
}
