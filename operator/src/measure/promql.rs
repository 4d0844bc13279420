//! Work samples from a Prometheus server: each pod's [`WorkQueries`] evaluated as instant queries
//! through the HTTP API (`/api/v1/query`, by `prometheus-http-query` over rustls with ring), each a
//! [`WorkSample`] or a typed error saying what went wrong. Does network IO.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use kilowatt_agent_core::work::WorkSample;
use prometheus_http_query::response::Data;
use rustls_platform_verifier::BuilderVerifierExt;

use super::WorkQueries;

/// The most one query may take, connection included; also sent as Prometheus' own evaluation
/// timeout, so the server gives up when the client does.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(5);
/// Queries in flight at once in [`PromqlSource::samples`].
const CONCURRENT_QUERIES: usize = 8;

/// Why a query gave no value.
#[derive(Debug, thiserror::Error)]
pub enum PromqlError {
    #[error("prometheus url {url:?} is not an http:// or https:// URL")]
    Url { url: String },
    #[error("the TLS configuration for prometheus")]
    Tls(#[source] kilowatt_plumbing::tls::TlsError),
    #[error("the TLS client for prometheus")]
    Client(#[source] reqwest::Error),
    #[error("prometheus at {url} for {query:?}")]
    Unreachable {
        url: String,
        query: String,
        #[source]
        source: prometheus_http_query::Error,
    },
    #[error("prometheus refused {query:?}: {error_type}: {message}")]
    Query {
        query: String,
        error_type: String,
        message: String,
    },
    #[error("{query:?} matched no series")]
    NoSeries { query: String },
    #[error("{query:?} gave {series} series, not one (aggregate it, e.g. with sum())")]
    ManySeries { query: String, series: usize },
    #[error("{query:?} gave a range vector, not an instant value")]
    RangeVector { query: String },
    #[error("{query:?} is {value}, not a finite number at least 0")]
    BadValue { query: String, value: f64 },
}

impl PromqlError {
    /// A fixed label for metrics and event reasons.
    pub fn category(&self) -> &'static str {
        match self {
            PromqlError::Url { .. } | PromqlError::Tls(_) | PromqlError::Client(_) => "config",
            PromqlError::Unreachable { .. } => "unreachable",
            PromqlError::Query { .. } => "query",
            PromqlError::NoSeries { .. } => "noSeries",
            PromqlError::ManySeries { .. } | PromqlError::RangeVector { .. } => "notOneValue",
            PromqlError::BadValue { .. } => "badValue",
        }
    }
}

/// A Prometheus server that pods' work queries are evaluated on.
#[derive(Clone)]
pub struct PromqlSource {
    url: String,
    client: prometheus_http_query::Client,
}

impl std::fmt::Debug for PromqlSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PromqlSource")
            .field("url", &self.url)
            .finish()
    }
}

/// rustls with ring for `https://` servers: the CAs in `ca` only, or the system's roots without one.
pub(crate) fn tls_config(ca: Option<&Path>) -> Result<rustls::ClientConfig, PromqlError> {
    if let Some(ca) = ca {
        return kilowatt_plumbing::tls::client_config(ca).map_err(PromqlError::Tls);
    }
    let config_error = |e: rustls::Error| {
        PromqlError::Tls(kilowatt_plumbing::tls::TlsError::Config {
            what: "the system's CA roots",
            message: e.to_string(),
        })
    };
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(config_error)?
    .with_platform_verifier()
    .map_err(config_error)?
    .with_no_client_auth())
}

impl PromqlSource {
    /// A source for the server at `url` (`http://prometheus.monitoring:9090`, or with a path prefix);
    /// `ca` is the CA bundle of an `https://` server, the system's roots without one. Connects to
    /// nothing yet. NB: proxies from the environment are not used, as kube's and etcd's clients do
    /// not use them: Prometheus is usually a Service in the same cluster.
    pub fn new(url: &str, ca: Option<&Path>) -> Result<PromqlSource, PromqlError> {
        let url = url.trim_end_matches('/');
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(PromqlError::Url {
                url: url.to_owned(),
            });
        }
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls_config(ca)?)
            .timeout(QUERY_TIMEOUT)
            .connect_timeout(QUERY_TIMEOUT)
            .no_proxy()
            .build()
            .map_err(PromqlError::Client)?;
        let client =
            prometheus_http_query::Client::from(http, url).map_err(|_| PromqlError::Url {
                url: url.to_owned(),
            })?;
        Ok(PromqlSource {
            url: url.to_owned(),
            client,
        })
    }

    /// The instant value of `query` now: its one series' value, or a scalar's. `Ok(None)` when it
    /// matches no series (the caller decides whether that is an error).
    async fn instant(&self, query: &str) -> Result<Option<f64>, PromqlError> {
        let timeout_ms = i64::try_from(QUERY_TIMEOUT.as_millis()).unwrap_or(i64::MAX);
        let answer = self
            .client
            .query(query)
            .timeout(timeout_ms)
            .get()
            .await
            .map_err(|source| match source {
                prometheus_http_query::Error::Prometheus(e) => PromqlError::Query {
                    query: query.to_owned(),
                    error_type: e.error_type().to_string(),
                    message: e.message().to_owned(),
                },
                source => PromqlError::Unreachable {
                    url: self.url.clone(),
                    query: query.to_owned(),
                    source,
                },
            })?;
        let value = match answer.data() {
            Data::Scalar(sample) => sample.value(),
            Data::Vector(series) => match series.as_slice() {
                [] => return Ok(None),
                [one] => one.sample().value(),
                many => {
                    return Err(PromqlError::ManySeries {
                        query: query.to_owned(),
                        series: many.len(),
                    });
                }
            },
            Data::Matrix(_) => {
                return Err(PromqlError::RangeVector {
                    query: query.to_owned(),
                });
            }
        };
        if !value.is_finite() || value < 0.0 {
            return Err(PromqlError::BadValue {
                query: query.to_owned(),
                value,
            });
        }
        Ok(Some(value))
    }

    /// The instant value of `query`; no series is an error.
    pub async fn value(&self, query: &str) -> Result<f64, PromqlError> {
        self.instant(query)
            .await?
            .ok_or_else(|| PromqlError::NoSeries {
                query: query.to_owned(),
            })
    }

    /// One pod's sample: its counter query (which must give one value) and its waiting query (no
    /// series: no gauge, as a missing metric on the pod's own endpoint reads).
    pub async fn sample(&self, queries: &WorkQueries) -> Result<WorkSample, PromqlError> {
        let waiting = async {
            match &queries.waiting {
                Some(query) => self.instant(query).await,
                None => Ok(None),
            }
        };
        let (counter, waiting) = futures::join!(self.value(&queries.counter), waiting);
        Ok(WorkSample {
            counter: counter?,
            waiting: waiting?,
        })
    }

    /// Every pod's sample, a few queries at a time, in the order given.
    // NB: batches of joined futures rather than a buffered stream of closures: the stream's future
    // is not provably `Send` for borrowed items, and the operator samples in a spawned task.
    pub async fn samples(
        &self,
        pods: &[(&str, &WorkQueries)],
    ) -> Vec<(String, Result<WorkSample, PromqlError>)> {
        let mut samples = Vec::with_capacity(pods.len());
        for batch in pods.chunks(CONCURRENT_QUERIES) {
            let answers =
                futures::future::join_all(batch.iter().map(|(_, queries)| self.sample(queries)))
                    .await;
            samples.extend(batch.iter().map(|(pod, _)| (*pod).to_owned()).zip(answers));
        }
        samples
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_that_is_not_http_or_a_ca_file_that_is_missing_is_refused_up_front() {
        assert!(matches!(
            PromqlSource::new("prometheus:9090", None),
            Err(PromqlError::Url { .. })
        ));
        let missing = Path::new("/nonexistent/kilowatt-ca.pem");
        let error =
            PromqlSource::new("https://prometheus:9090", Some(missing)).expect_err("no CA file");
        assert!(matches!(error, PromqlError::Tls(_)), "{error:?}");
        assert_eq!(error.category(), "config");
        assert!(PromqlSource::new("https://prometheus.example:9090/", None).is_ok());
    }

    #[tokio::test]
    async fn a_server_that_does_not_listen_is_unreachable_within_the_timeout() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binds");
        let address = listener.local_addr().expect("address");
        drop(listener);
        let source = PromqlSource::new(&format!("http://{address}"), None).expect("source");
        let error = tokio::time::timeout(QUERY_TIMEOUT * 2, source.value("up"))
            .await
            .expect("answers within the timeout")
            .expect_err("nothing listens");
        assert_eq!(error.category(), "unreachable", "{error:?}");
        assert!(error.to_string().contains(&address.to_string()), "{error}");
    }
}
