//! The agent's scrapes of the pods' work counters against real HTTP servers on 127.0.0.1 serving the
//! Prometheus text format as vLLM does (metric names with colons), with simulated GPUs holding the
//! limits: the same rounds the agent's loop starts at every sample and takes back, with the samples'
//! time passed in so that a 30 s window takes milliseconds. Does network IO.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use kilowatt_agent_core::gpu::GpuBackend;
use kilowatt_agent_core::gpu::simulated::SimulatedGpus;
use kilowatt_agent_core::telemetry::Telemetry;
use kilowatt_agent_core::work::{WARM_UP, WINDOW, WindowTiming, WorkCounterError};
use kilowatt_crds::plan::WorkCounter;
use kilowatt_node_agent::scrape::{MAX_ANSWER_BYTES, SCRAPE_TIMEOUT, Scraper, WorkScrapes};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Bounds every await in these tests.
const LIMIT: Duration = Duration::from_secs(10);

/// What one pod's endpoint says.
#[derive(Debug, Clone, Copy)]
struct PodMetrics {
    tokens: f64,
    waiting: f64,
    /// Answers 500 instead.
    broken: bool,
}

type Pods = Arc<Mutex<BTreeMap<String, PodMetrics>>>;

/// A vLLM-like `/metrics` page: the counter in two series of the model, one of another model, the
/// waiting gauge and a histogram, as the pod `name` last set them.
async fn metrics(Path(name): Path<String>, State(pods): State<Pods>) -> Response {
    let pod = pods
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(&name)
        .copied();
    let Some(pod) = pod else {
        return (StatusCode::NOT_FOUND, "no such pod").into_response();
    };
    if pod.broken {
        return (StatusCode::INTERNAL_SERVER_ERROR, "engine dead").into_response();
    }
    let (first, second) = (pod.tokens * 0.75, pod.tokens * 0.25);
    let text = format!(
        "# HELP vllm:generation_tokens_total Number of generation tokens processed.
# TYPE vllm:generation_tokens_total counter
vllm:generation_tokens_total{{engine=\"0\",model_name=\"llama\"}} {first}
vllm:generation_tokens_total{{engine=\"1\",model_name=\"llama\"}} {second}
vllm:generation_tokens_total{{engine=\"0\",model_name=\"draft\"}} 12345.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{{engine=\"0\",model_name=\"llama\"}} {waiting}
# TYPE vllm:e2e_request_latency_seconds histogram
vllm:e2e_request_latency_seconds_bucket{{le=\"1.0\",model_name=\"llama\"}} 2
vllm:e2e_request_latency_seconds_bucket{{le=\"+Inf\",model_name=\"llama\"}} 3
vllm:e2e_request_latency_seconds_sum{{model_name=\"llama\"}} 4.5
vllm:e2e_request_latency_seconds_count{{model_name=\"llama\"}} 3
",
        waiting = pod.waiting
    );
    ([("content-type", "text/plain; version=0.0.4")], text).into_response()
}

/// Pods' endpoints at `http://ADDR/pods/NAME/metrics`, and a few that misbehave, served until
/// stopped.
struct Endpoints {
    pods: Pods,
    base: String,
    stop: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Endpoints {
    async fn start() -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        let pods = Pods::default();
        let app = Router::new()
            .route("/pods/{name}/metrics", get(metrics))
            .route(
                "/huge",
                get(|| async { "# ".repeat(MAX_ANSWER_BYTES / 2 + 1) }),
            )
            .route(
                "/huge-chunked",
                get(|| async {
                    // No Content-Length: the limit must hold while reading.
                    let chunk = axum::body::Bytes::from(vec![b'#'; 1 << 20]);
                    let chunks = (0..5).map(move |_| Ok::<_, std::io::Error>(chunk.clone()));
                    axum::body::Body::from_stream(futures::stream::iter(chunks))
                }),
            )
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    "too late"
                }),
            )
            .with_state(pods.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await
        });
        Ok(Self {
            pods,
            base,
            stop,
            task,
        })
    }

    fn url(&self, pod: &str) -> String {
        format!("{}/pods/{pod}/metrics", self.base)
    }

    fn set(&self, pod: &str, metrics: PodMetrics) {
        self.pods
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(pod.to_owned(), metrics);
    }

    /// Stops serving and closes every connection: from then on the port refuses.
    async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        tokio::time::timeout(LIMIT, self.task)
            .await
            .context("the endpoints did not shut down")???;
        Ok(())
    }
}

fn counter(pod: &str, url: String, gpus: Vec<u32>) -> WorkCounter {
    WorkCounter {
        pod: pod.to_owned(),
        uid: Some(format!("uid-{pod}")),
        url,
        metric: "vllm:generation_tokens_total".into(),
        labels: BTreeMap::from([("model_name".into(), "llama".into())]),
        waiting_metric: Some("vllm:num_requests_waiting".into()),
        gpus,
    }
}

/// One sample at `seconds`, as the agent's loop takes it: the GPUs advanced and read, a round of
/// scrapes started with the readings, and the round taken back once it finished. Returns each
/// scrape's outcome.
async fn sample(
    work: &mut WorkScrapes,
    gpus: &mut SimulatedGpus,
    seconds: u64,
) -> anyhow::Result<Vec<&'static str>> {
    let now = Duration::from_secs(seconds);
    gpus.advance(now);
    let readings = (0..4).map(|i| gpus.read(i)).collect();
    work.start(now, readings);
    let round = tokio::time::timeout(LIMIT, work.finished())
        .await
        .context("the round of scrapes did not finish")?
        .context("the rounds' channel closed")?;
    Ok(work.observe(round))
}

fn node() -> anyhow::Result<SimulatedGpus> {
    let mut gpus = SimulatedGpus::uniform("n1", 4, "H100-SXM", 200.0, 700.0, None);
    for (index, watts) in [(0, 400.0), (1, 400.0), (2, 550.0), (3, 300.0)] {
        gpus.set_power_limit_watts(index, watts)?;
    }
    Ok(gpus)
}

#[tokio::test]
async fn a_counter_scraped_every_sample_makes_windows_of_its_rate_per_gpu_at_the_held_limit()
-> anyhow::Result<()> {
    let endpoints = Endpoints::start().await?;
    let mut gpus = node()?;
    let mut work = WorkScrapes::new(SCRAPE_TIMEOUT, WindowTiming::default());
    // A two-GPU pod at 55.5 tokens per second per GPU, requests always waiting, and a one-GPU pod
    // whose queue empties once mid-window.
    work.follow(vec![
        counter("ml/chat-0", endpoints.url("chat-0"), vec![0, 1]),
        counter("ml/chat-1", endpoints.url("chat-1"), vec![2]),
    ]);
    let end = (WARM_UP + WINDOW).as_secs();
    for s in 0..=end {
        let t = s as f64;
        endpoints.set(
            "chat-0",
            PodMetrics {
                tokens: 1000.0 + 2.0 * 55.5 * t,
                waiting: 3.0,
                broken: false,
            },
        );
        endpoints.set(
            "chat-1",
            PodMetrics {
                tokens: 20.0 * t,
                waiting: if s == 25 { 0.0 } else { 1.0 },
                broken: false,
            },
        );
        sample(&mut work, &mut gpus, s).await?;
    }
    let (windows, rejected) = work.take();
    assert!(rejected.is_empty(), "{rejected:?}");
    assert_eq!(windows.len(), 2, "{windows:?}");
    let chat0 = windows
        .iter()
        .find(|w| w.pod == "ml/chat-0")
        .context("a window of ml/chat-0")?;
    assert!((chat0.rate_per_gpu - 55.5).abs() < 1e-6, "{chat0:?}");
    assert_eq!(chat0.power_limit_watts, 400.0);
    assert_eq!(chat0.gpus, 2);
    assert_eq!(chat0.seconds, WINDOW.as_secs_f64());
    assert_eq!(chat0.saturated, Some(true));
    let draw = gpus.draw_watts(0)?;
    assert!(
        (chat0.gpu_watts - draw).abs() < 1e-6,
        "{chat0:?} draws {draw}"
    );
    let chat1 = windows
        .iter()
        .find(|w| w.pod == "ml/chat-1")
        .context("a window of ml/chat-1")?;
    assert!((chat1.rate_per_gpu - 20.0).abs() < 1e-6, "{chat1:?}");
    assert_eq!(chat1.power_limit_watts, 550.0);
    assert_eq!(chat1.saturated, Some(false));
    endpoints.stop().await
}

#[tokio::test]
async fn an_endpoint_that_fails_or_closes_and_a_counter_that_goes_back_discard_their_windows()
-> anyhow::Result<()> {
    let endpoints = Endpoints::start().await?;
    let closing = Endpoints::start().await?;
    let mut gpus = node()?;
    let mut work = WorkScrapes::new(SCRAPE_TIMEOUT, WindowTiming::default());
    work.follow(vec![
        counter("ml/chat-0", endpoints.url("chat-0"), vec![0, 1]),
        counter("ml/chat-1", closing.url("chat-1"), vec![2]),
        counter("ml/chat-2", endpoints.url("chat-2"), vec![3]),
    ]);
    let metrics = |tokens| PodMetrics {
        tokens,
        waiting: 1.0,
        broken: false,
    };
    let telemetry = Telemetry::new()?;
    // Every window is open (past the warm-up) when things go wrong at 21 s.
    for s in 0..=20 {
        let t = s as f64;
        endpoints.set("chat-0", metrics(100.0 * t));
        closing.set("chat-1", metrics(100.0 * t));
        endpoints.set("chat-2", metrics(5000.0 + 100.0 * t));
        telemetry.observe_work_scrapes(&sample(&mut work, &mut gpus, s).await?);
    }
    endpoints.set(
        "chat-0",
        PodMetrics {
            broken: true,
            ..metrics(2100.0)
        },
    );
    closing.stop().await?;
    // The engine restarted in the same pod: its counter starts again.
    endpoints.set("chat-2", metrics(7.0));
    for s in 21..=25 {
        telemetry.observe_work_scrapes(&sample(&mut work, &mut gpus, s).await?);
    }
    let (windows, rejected) = work.take();
    assert!(windows.is_empty(), "{windows:?}");
    assert_eq!(
        rejected,
        BTreeMap::from([("counterReset".into(), 1), ("scrapeFailed".into(), 2)])
    );
    // The agent's metrics count each scrape and window by outcome.
    telemetry.observe_work_windows(&windows, &rejected);
    let text = telemetry.render()?;
    let value = |series: &str| {
        text.lines()
            .find(|l| l.starts_with(series))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .with_context(|| format!("{series} in {text}"))
    };
    // 3 pods × 21 good samples, then only the restarted engine's 5.
    assert_eq!(
        value("kilowatt_agent_work_scrapes_total{outcome=\"ok\"}")?,
        68.0
    );
    // The failing endpoint answers 500 and the closed one does not answer: both are `scrape`.
    assert_eq!(
        value("kilowatt_agent_work_scrapes_total{outcome=\"scrape\"}")?,
        10.0
    );
    assert_eq!(
        value("kilowatt_agent_work_windows_total{outcome=\"scrapeFailed\"}")?,
        2.0
    );
    assert_eq!(
        value("kilowatt_agent_work_windows_total{outcome=\"reported\"}")?,
        0.0
    );
    endpoints.stop().await
}

#[tokio::test]
async fn a_pod_the_plan_stops_naming_is_forgotten_and_warms_up_again_when_it_comes_back()
-> anyhow::Result<()> {
    let endpoints = Endpoints::start().await?;
    let mut gpus = node()?;
    let mut work = WorkScrapes::new(SCRAPE_TIMEOUT, WindowTiming::default());
    let chat0 = counter("ml/chat-0", endpoints.url("chat-0"), vec![0, 1]);
    work.follow(vec![chat0.clone()]);
    let end = (WARM_UP + WINDOW).as_secs();
    for s in 0..=end {
        endpoints.set(
            "chat-0",
            PodMetrics {
                tokens: 10.0 * s as f64,
                waiting: 1.0,
                broken: false,
            },
        );
        if s == 20 {
            // A plan without the pod, then one with it again: the open window is not resumed.
            work.follow(Vec::new());
            work.follow(vec![chat0.clone()]);
        }
        sample(&mut work, &mut gpus, s).await?;
    }
    let (windows, rejected) = work.take();
    assert!(windows.is_empty(), "{windows:?}");
    assert!(rejected.is_empty(), "{rejected:?}");
    endpoints.stop().await
}

#[tokio::test]
async fn only_plain_http_is_scraped_and_an_answer_too_large_or_too_late_is_refused()
-> anyhow::Result<()> {
    let endpoints = Endpoints::start().await?;
    let scraper = Scraper::new(Duration::from_millis(300));
    let refused = |answer: Result<String, WorkCounterError>, says: &str| match answer {
        Err(WorkCounterError::Scrape { message, .. }) if message.contains(says) => Ok(()),
        other => Err(anyhow::anyhow!(
            "expected a refusal saying {says:?}: {other:?}"
        )),
    };
    refused(
        scraper.get("https://10.0.0.7:8000/metrics").await,
        "only http://",
    )?;
    refused(scraper.get("/metrics").await, "only http://")?;
    refused(scraper.get("http://bad host/metrics").await, "not a URL")?;
    let base = &endpoints.base;
    refused(scraper.get(&format!("{base}/huge")).await, "larger than")?;
    refused(
        scraper.get(&format!("{base}/huge-chunked")).await,
        "larger than",
    )?;
    refused(scraper.get(&format!("{base}/slow")).await, "within 0.3 s")?;
    refused(scraper.get(&endpoints.url("nobody")).await, "404")?;
    endpoints.set(
        "chat-0",
        PodMetrics {
            tokens: 8.0,
            waiting: 0.0,
            broken: false,
        },
    );
    let page = scraper.get(&endpoints.url("chat-0")).await?;
    assert!(page.contains("vllm:num_requests_waiting{"), "{page}");
    endpoints.stop().await
}
