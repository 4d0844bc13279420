//! The pods' work counters, scraped: the counters of the plan the agent follows, one HTTP/1.1 GET of
//! each pod's metrics endpoint per sample (concurrently, in a task of its own, bounded in time and
//! size), and the answers handed with the same sample's GPU readings to the core's
//! [`WorkMeter`], whose windows go into the next power report. Does network IO.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use kilowatt_agent_core::gpu::{GpuError, GpuReading};
use kilowatt_agent_core::work::{WindowTiming, WorkCounterError, WorkMeter, read_sample};
use kilowatt_crds::plan::{WorkCounter, WorkWindow};
use kilowatt_plumbing::errors::error_chain;
use tokio::sync::mpsc;

/// How long one round of scrapes may take at most (less when the sample period is shorter): a
/// pod's endpoint answers from the cluster network in milliseconds, and one that takes seconds is
/// better missed than let hold the next sample.
pub const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);

/// The largest answer read from a pod's endpoint. A vLLM or SGLang endpoint answers some hundred
/// KiB; more than this is not a metrics page, and reading it every second would cost the node.
pub const MAX_ANSWER_BYTES: usize = 4 << 20;

/// One HTTP/1.1 client for every pod's endpoint; its connections are kept between scrapes, so a
/// pod scraped every second is not dialled every second.
#[derive(Debug, Clone)]
pub struct Scraper {
    client: Client<HttpConnector, Empty<Bytes>>,
    timeout: Duration,
}

impl Scraper {
    /// A scraper that waits at most `timeout` for a whole answer.
    pub fn new(timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeout));
        Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
            timeout,
        }
    }

    /// The text `url` answers with, refused when it is no `http://` URL, the status is not a
    /// success, the answer is larger than [`MAX_ANSWER_BYTES`] or not UTF-8, or it does not come
    /// whole within the timeout.
    pub async fn get(&self, url: &str) -> Result<String, WorkCounterError> {
        let failed = |message: String| WorkCounterError::Scrape {
            url: url.to_owned(),
            message,
        };
        let uri: hyper::Uri = url.parse().map_err(|e| failed(format!("not a URL: {e}")))?;
        if uri.scheme_str() != Some("http") {
            return Err(failed(
                "only http:// URLs are scraped (a pod's own metrics port, inside the cluster network)"
                    .to_owned(),
            ));
        }
        let request = hyper::Request::get(uri)
            // NB: exporters that negotiate (Python's prometheus_client, the Go client) answer
            // OpenMetrics or protobuf when asked; the classic text format is what is parsed.
            .header(hyper::header::ACCEPT, "text/plain;version=0.0.4")
            .body(Empty::new())
            .map_err(|e| failed(e.to_string()))?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| failed(error_chain(&e)))?;
            let status = response.status();
            if !status.is_success() {
                return Err(failed(format!("the endpoint answered {status}")));
            }
            let too_large = || {
                failed(format!(
                    "the answer is larger than {MAX_ANSWER_BYTES} bytes"
                ))
            };
            let announced = response
                .headers()
                .get(hyper::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            if announced.is_some_and(|length| length > MAX_ANSWER_BYTES as u64) {
                return Err(too_large());
            }
            let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        too_large()
                    } else {
                        failed(format!("reading the answer: {e}"))
                    }
                })?
                .to_bytes();
            String::from_utf8(body.to_vec()).map_err(|_| failed("the answer is not UTF-8".into()))
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| {
                failed(format!(
                    "no whole answer within {} s",
                    self.timeout.as_secs_f64()
                ))
            })?
    }
}

/// One round of scrapes: the counters scraped, each one's answer, and the sample they go with.
#[derive(Debug)]
pub struct Scraped {
    now: Duration,
    readings: Vec<Result<GpuReading, GpuError>>,
    counters: Arc<[WorkCounter]>,
    answers: Vec<Result<String, WorkCounterError>>,
    /// What is wrong with each answer, if anything: the scrape's error, or why its text gives no
    /// sample.
    problems: Vec<Option<WorkCounterError>>,
}

/// The node's work counters and their windows between two power reports.
pub struct WorkScrapes {
    scraper: Scraper,
    counters: Arc<[WorkCounter]>,
    meter: WorkMeter,
    /// What each failing pod's counter last failed with, by pod: logged when it starts or changes.
    failing: BTreeMap<String, &'static str>,
    /// Whether a round is out; NB: rounds never overlap, or answers would reach the meter out of
    /// order and a counter seem to go back.
    in_flight: bool,
    done: mpsc::Sender<Scraped>,
    finished: mpsc::Receiver<Scraped>,
}

impl WorkScrapes {
    /// No counters yet; a round of scrapes takes at most `timeout`; windows are cut by `timing`.
    pub fn new(timeout: Duration, timing: WindowTiming) -> Self {
        let (done, finished) = mpsc::channel(1);
        Self {
            scraper: Scraper::new(timeout),
            counters: Arc::from([]),
            meter: WorkMeter::new(timing),
            failing: BTreeMap::new(),
            in_flight: false,
            done,
            finished,
        }
    }

    /// Scrapes `counters` from now on (those of the plan the agent follows), forgetting the
    /// windows of pods no longer among them: a pod that comes back starts a window afresh.
    pub fn follow(&mut self, counters: Vec<WorkCounter>) {
        if *self.counters == *counters {
            return;
        }
        let pods: BTreeSet<&str> = counters.iter().map(|c| c.pod.as_str()).collect();
        self.meter.retain(&pods);
        self.failing.retain(|pod, _| pods.contains(pod.as_str()));
        tracing::info!(pods = ?pods, "the pods whose work counters are scraped changed");
        self.counters = counters.into();
    }

    /// Starts a round of scrapes of every counter in the background, to be taken with `readings`,
    /// read at `now`; the round comes back from [`WorkScrapes::finished`]. Does nothing without
    /// counters, or while the last round is still out (it takes at most the scrape timeout).
    pub fn start(&mut self, now: Duration, readings: Vec<Result<GpuReading, GpuError>>) {
        if self.counters.is_empty() || self.in_flight {
            return;
        }
        self.in_flight = true;
        let (scraper, counters, done) = (
            self.scraper.clone(),
            self.counters.clone(),
            self.done.clone(),
        );
        tokio::spawn(async move {
            let scrapes = counters.iter().map(|c| scraper.get(&c.url));
            let answers = futures::future::join_all(scrapes).await;
            // NB: the meter parses a good answer again; parsing it here too, off the agent's loop,
            // says what is wrong with a bad one (a misnamed metric is the likeliest), which the
            // meter only counts.
            let problems = counters
                .iter()
                .zip(&answers)
                .map(|(counter, answer)| match answer {
                    Ok(text) => read_sample(text, counter).err(),
                    Err(error) => Some(error.clone()),
                })
                .collect();
            // The receiver lives as long as the agent; once it is gone the round has no taker.
            let _ = done
                .send(Scraped {
                    now,
                    readings,
                    counters,
                    answers,
                    problems,
                })
                .await;
        });
    }

    /// The next round that finished; cancel-safe, for the agent's `select!`. `None` never comes,
    /// since `self` holds a sender.
    pub async fn finished(&mut self) -> Option<Scraped> {
        self.finished.recv().await
    }

    /// Takes a finished round into the windows, logging the pods whose counter starts to fail (or
    /// fails differently) and those whose counter reads again. Returns each scrape's outcome: `ok`,
    /// or the category of what went wrong ([`WorkCounterError::category`]).
    pub fn observe(&mut self, round: Scraped) -> Vec<&'static str> {
        self.in_flight = false;
        // A round of counters replaced since it started would bring back the windows of pods
        // `follow` just forgot.
        if !Arc::ptr_eq(&round.counters, &self.counters) {
            return Vec::new();
        }
        let outcomes = round
            .problems
            .iter()
            .map(|p| p.as_ref().map_or("ok", WorkCounterError::category))
            .collect();
        for (counter, problem) in round.counters.iter().zip(&round.problems) {
            match problem {
                None => {
                    if self.failing.remove(&counter.pod).is_some() {
                        tracing::info!(pod = %counter.pod, url = %counter.url, "the pod's work counter reads again");
                    }
                }
                Some(error) => {
                    let kind = error.category();
                    if self.failing.insert(counter.pod.clone(), kind) != Some(kind) {
                        tracing::warn!(pod = %counter.pod, url = %counter.url, metric = %counter.metric, %error, "cannot read the pod's work counter; its windows are discarded until it reads again (logged again only when the failure changes)");
                    }
                }
            }
        }
        let scrapes: Vec<(&WorkCounter, Result<String, WorkCounterError>)> =
            round.counters.iter().zip(round.answers).collect();
        self.meter
            .observe_scrapes(&scrapes, &round.readings, round.now);
        outcomes
    }

    /// The windows completed and discarded since the last call, for the power report.
    pub fn take(&mut self) -> (Vec<WorkWindow>, BTreeMap<String, u32>) {
        self.meter.take()
    }
}
