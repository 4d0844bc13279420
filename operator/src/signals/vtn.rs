//! The operator as an OpenADR 3.1 VEN: while this replica leads, for every budget with
//! `spec.signals.openadr` it gets an OAuth token (client-credentials grant, credentials from a
//! Secret), reads its program's events every `pollSeconds`, keeps them on a board the pass reads,
//! and during an event posts the budget's measured power as a `USAGE` report every
//! `reportSeconds`. Does network and Kubernetes IO (the credentials Secret).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kilowatt_crds::PowerBudget;
use kilowatt_plumbing::errors::error_chain;
use kube::runtime::reflector::Store;
use kube::{Client, ResourceExt};
use openleadr_wire::Unit;
use openleadr_wire::event::Event;
use openleadr_wire::interval::{Interval, IntervalPeriod};
use openleadr_wire::program::Program;
use openleadr_wire::report::{
    ReadingType, ReportPayloadDescriptor, ReportRequest, ReportResource, ReportType, ResourceName,
};
use openleadr_wire::values_map::{Value, ValueType, ValuesMap};
use prometheus::IntCounterVec;
use tokio::sync::{Notify, watch};

use super::openadr::{ProgramPolicy, ProgramState, effects};
use super::{LeaderTicks, ProgramBoard, SecretError, http_client, read_secret, secret_key};

/// The most one request may take, connection included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Objects asked for per page (the OpenADR default limit is 50).
const PAGE: usize = 50;
/// The most pages of events read per poll.
const MAX_PAGES: usize = 20;

/// Why a request to the VTN failed.
#[derive(Debug, thiserror::Error)]
pub enum VtnError {
    #[error("the VEN's credentials Secret")]
    Credentials(#[source] SecretError),
    #[error("{what} at {url}")]
    Request {
        what: &'static str,
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{what} at {url} answered HTTP {status}: {body}")]
    Status {
        what: &'static str,
        url: String,
        status: u16,
        body: String,
    },
    #[error("{what} at {url} answered something that is not OpenADR 3.1 JSON")]
    Decode {
        what: &'static str,
        url: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("the VTN has no program named {0:?} that this VEN may read")]
    NoProgram(String),
    #[error("the VTN gave the event id {0:?}, which is not a valid OpenADR id")]
    EventId(String),
}

/// The `request` and `outcome` values of `kilowatt_openadr_requests_total`.
pub const REQUESTS: [&str; 2] = ["poll", "report"];
pub const OUTCOMES: [&str; 2] = ["ok", "failed"];

/// The VEN's inputs.
pub struct Ven {
    pub client: Client,
    /// Where credentials Secrets are read: the operator's namespace.
    pub namespace: String,
    pub budgets: Store<PowerBudget>,
    pub board: ProgramBoard,
    /// Notified after every round of polls, so the loop plans with what was heard.
    pub changed: Arc<Notify>,
    pub requests: IntCounterVec,
}

/// One budget's work in a round.
struct Due {
    budget: String,
    policy: ProgramPolicy,
    poll: bool,
    /// The events to report the budget's measured watts on, with those watts.
    report: Option<(Vec<String>, f64)>,
}

impl Ven {
    /// Polls and reports while `leader` says this replica leads; runs until aborted.
    pub async fn run(self, leader: watch::Receiver<bool>) {
        let http = match http_client(REQUEST_TIMEOUT) {
            Ok(http) => http,
            Err(error) => {
                tracing::error!(error = %error_chain(&error), "no HTTP client for OpenADR; budgets' programs are not followed");
                return;
            }
        };
        let mut ticks = LeaderTicks::new(leader);
        loop {
            ticks.next().await;
            let due = self.due(Timestamp::now());
            if due.is_empty() {
                continue;
            }
            let polled = due.iter().any(|d| d.poll);
            let (this, http) = (&self, &http);
            futures::future::join_all(due.into_iter().map(|due| this.serve(http, due))).await;
            if polled {
                self.changed.notify_one();
            }
        }
    }

    /// The budgets with a poll or report due at `now`, marked as attempted; forgets budgets whose
    /// program is gone or changed.
    fn due(&self, now: Timestamp) -> Vec<Due> {
        let budgets: BTreeMap<String, (ProgramPolicy, Option<f64>)> = self
            .budgets
            .state()
            .iter()
            .filter_map(|budget| {
                let spec = budget.spec.signals.as_ref()?.openadr.as_ref()?;
                let measured = budget.status.as_ref().and_then(|s| s.measured_watts);
                Some((
                    budget.name_any(),
                    (ProgramPolicy::from_spec(spec).ok()?, measured),
                ))
            })
            .collect();
        self.board.update(|states| {
            states.retain(|name, state| budgets.get(name).is_some_and(|(p, _)| *p == state.policy));
            let mut due = Vec::new();
            for (name, (policy, measured)) in &budgets {
                let state = states
                    .entry(name.clone())
                    .or_insert_with(|| ProgramState::new(policy.clone()));
                let poll = state.poll_due(now);
                if poll {
                    state.last_attempt = Some(now);
                }
                let active: Vec<String> = state
                    .last_good
                    .as_ref()
                    .map(|(events, _)| effects(policy, events).0)
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|e| e.active(now))
                    .map(|e| e.event_id)
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .collect();
                let report = match measured {
                    Some(watts) if !active.is_empty() && state.report_due(now) => {
                        // Counted as done now, so that a failing VTN is not asked every tick.
                        state.last_report = Some(now);
                        Some((active, *watts))
                    }
                    _ => None,
                };
                if poll || report.is_some() {
                    due.push(Due {
                        budget: name.clone(),
                        policy: policy.clone(),
                        poll,
                        report,
                    });
                }
            }
            due
        })
    }

    async fn serve(&self, http: &reqwest::Client, due: Due) {
        let token = match self.token(http, &due.policy).await {
            Ok(token) => token,
            Err(error) => {
                if due.poll {
                    self.record_poll(&due.budget, &due.policy, Err(error));
                }
                return;
            }
        };
        if due.poll {
            let events = events(http, &due.policy, &token).await;
            self.record_poll(&due.budget, &due.policy, events);
        }
        if let Some((event_ids, watts)) = due.report {
            let period = due.policy.report_every;
            for event_id in event_ids {
                let sent = report(http, &due.policy, &token, &event_id, watts, period).await;
                let outcome = if sent.is_ok() { "ok" } else { "failed" };
                self.requests
                    .with_label_values(&[due.budget.as_str(), "report", outcome])
                    .inc();
                if let Err(error) = sent {
                    tracing::warn!(budget = due.budget, event = event_id, error = %error_chain(&error), "USAGE report refused or lost");
                }
            }
        }
    }

    async fn token(
        &self,
        http: &reqwest::Client,
        policy: &ProgramPolicy,
    ) -> Result<String, VtnError> {
        let (client_id, client_secret) = self.credentials(&policy.credentials_secret).await?;
        let url = &policy.token_url;
        let response = http
            .post(url)
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", client_id.as_str()),
                ("client_secret", client_secret.as_str()),
            ])
            .send()
            .await
            .map_err(|source| VtnError::Request {
                what: "the token request",
                url: url.clone(),
                source,
            })?;
        #[derive(serde::Deserialize)]
        struct Token {
            access_token: String,
        }
        let token: Token = decode("the token request", url, response).await?;
        Ok(token.access_token)
    }

    async fn credentials(&self, name: &str) -> Result<(String, String), VtnError> {
        let secret = read_secret(&self.client, &self.namespace, name)
            .await
            .map_err(VtnError::Credentials)?;
        let key = |key| secret_key(&secret, key).map_err(VtnError::Credentials);
        Ok((key("clientID")?, key("clientSecret")?))
    }

    /// Keeps a poll's outcome on the board, counts it, and logs a VTN that starts failing (or
    /// fails differently) and one that answers again.
    fn record_poll(
        &self,
        budget: &str,
        policy: &ProgramPolicy,
        polled: Result<Vec<Event>, VtnError>,
    ) {
        let outcome = if polled.is_ok() { "ok" } else { "failed" };
        self.requests
            .with_label_values(&[budget, "poll", outcome])
            .inc();
        let at = Timestamp::now();
        self.board.update(|states| {
            let Some(state) = states.get_mut(budget).filter(|s| s.policy == *policy) else {
                return;
            };
            match polled {
                Ok(events) => {
                    if state.failure.take().is_some() || state.last_good.is_none() {
                        tracing::info!(budget, program = policy.program_name, events = events.len(), "OpenADR program read");
                    }
                    state.last_good = Some((Arc::new(events), at));
                }
                Err(error) => {
                    let message = error_chain(&error);
                    if state.failure.as_ref() != Some(&message) {
                        tracing::warn!(budget, error = %message, "OpenADR poll fails; the events heard before stay in force until they end");
                    }
                    state.failure = Some(message);
                }
            }
        });
    }
}

async fn decode<T: serde::de::DeserializeOwned>(
    what: &'static str,
    url: &str,
    response: reqwest::Response,
) -> Result<T, VtnError> {
    let status = response.status();
    let body = response.bytes().await.map_err(|source| VtnError::Request {
        what,
        url: url.to_owned(),
        source,
    })?;
    if !status.is_success() {
        let text: String = String::from_utf8_lossy(&body).chars().take(200).collect();
        return Err(VtnError::Status {
            what,
            url: url.to_owned(),
            status: status.as_u16(),
            body: text,
        });
    }
    serde_json::from_slice(&body).map_err(|source| VtnError::Decode {
        what,
        url: url.to_owned(),
        source,
    })
}

async fn get<T: serde::de::DeserializeOwned>(
    http: &reqwest::Client,
    what: &'static str,
    url: String,
    token: &str,
    query: &[(&str, String)],
) -> Result<T, VtnError> {
    let response = http
        .get(&url)
        .bearer_auth(token)
        .query(query)
        .send()
        .await
        .map_err(|source| VtnError::Request {
            what,
            url: url.clone(),
            source,
        })?;
    decode(what, &url, response).await
}

/// Every event of `policy`'s program the VEN may read.
async fn events(
    http: &reqwest::Client,
    policy: &ProgramPolicy,
    token: &str,
) -> Result<Vec<Event>, VtnError> {
    let programs_url = format!("{}programs", policy.vtn_url);
    let program = paged::<Program>(http, "the program list", &programs_url, token, &[])
        .await?
        .into_iter()
        .find(|p| p.content.program_name == policy.program_name)
        .ok_or_else(|| VtnError::NoProgram(policy.program_name.clone()))?;
    let events_url = format!("{}events", policy.vtn_url);
    paged(
        http,
        "the event list",
        &events_url,
        token,
        &[("programID", program.id.as_str().to_owned())],
    )
    .await
}

async fn paged<T: serde::de::DeserializeOwned>(
    http: &reqwest::Client,
    what: &'static str,
    url: &str,
    token: &str,
    filter: &[(&str, String)],
) -> Result<Vec<T>, VtnError> {
    let mut all = Vec::new();
    for page in 0..MAX_PAGES {
        let mut query = filter.to_vec();
        query.push(("skip", (page * PAGE).to_string()));
        query.push(("limit", PAGE.to_string()));
        let items: Vec<T> = get(http, what, url.to_owned(), token, &query).await?;
        let full = items.len() == PAGE;
        all.extend(items);
        if !full {
            break;
        }
    }
    Ok(all)
}

/// Posts the budget's measured power over the last `period` as a `USAGE` report on `event_id`.
async fn report(
    http: &reqwest::Client,
    policy: &ProgramPolicy,
    token: &str,
    event_id: &str,
    watts: f64,
    period: k8s_openapi::jiff::SignedDuration,
) -> Result<(), VtnError> {
    let url = format!("{}reports", policy.vtn_url);
    let event_id = event_id
        .parse()
        .map_err(|_| VtnError::EventId(event_id.to_owned()))?;
    let end = chrono::Utc::now();
    let start = end - chrono::Duration::seconds(period.as_secs());
    let mut descriptor = ReportPayloadDescriptor::new(ReportType::Usage);
    descriptor.reading_type = ReadingType::Average;
    descriptor.units = Some(Unit::KW);
    let mut interval_period = IntervalPeriod::new(start);
    interval_period.duration = format!("PT{}S", period.as_secs()).parse().ok();
    let request = ReportRequest {
        event_id,
        client_name: policy.ven_name.clone(),
        report_name: Some("kilowatt-usage".to_owned()),
        payload_descriptors: Some(vec![descriptor]),
        resources: vec![ReportResource {
            resource_name: ResourceName::AggregatedReport,
            interval_period: Some(interval_period),
            intervals: vec![Interval::new(
                0,
                vec![ValuesMap {
                    value_type: ValueType("USAGE".to_owned()),
                    values: vec![Value::Number((watts).round() / 1000.0)],
                }],
            )],
        }],
    };
    let response = http
        .post(&url)
        .bearer_auth(token)
        .json(&request)
        .send()
        .await
        .map_err(|source| VtnError::Request {
            what: "the USAGE report",
            url: url.clone(),
            source,
        })?;
    decode::<serde_json::Value>("the USAGE report", &url, response)
        .await
        .map(drop)
}
