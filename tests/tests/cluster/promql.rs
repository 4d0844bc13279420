//! The operator's PromQL work source (`kilowatt_operator::measure`) against a real Prometheus
//! (Debian's `prometheus`) scraping, every second, an endpoint this test serves: a work counter that
//! grows at a known rate and a waiting gauge. Its counter's value, its growth between two reads, the
//! gauge, and the typed errors of a broken query, one with no series, one with two and a negative one.

use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use kilowatt_operator::measure::{PromqlError, PromqlSource, WorkQueries};
use kilowatt_tests::prometheus::PrometheusServer;
use kilowatt_tests::{eventually, test_dir, within};

/// Tokens per second of the served pod `ml/chat-0` (`ml/chat-1` does half).
const RATE: f64 = 200.0;
const WAITING: f64 = 3.0;

/// Serves `/metrics` with the counters of two pods at `RATE × seconds since start` and the waiting
/// gauge of the first.
async fn serve_work(started: Instant) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("metrics endpoint binds");
    let address = listener.local_addr().expect("address");
    let metrics = move || async move {
        let tokens = RATE * started.elapsed().as_secs_f64();
        format!(
            "# TYPE work_tokens_total counter\n\
             work_tokens_total{{pod=\"chat-0\"}} {tokens}\n\
             work_tokens_total{{pod=\"chat-1\"}} {half}\n\
             # TYPE work_requests_waiting gauge\n\
             work_requests_waiting{{pod=\"chat-0\"}} {WAITING}\n",
            half = tokens / 2.0
        )
    };
    let app = axum::Router::new().route("/metrics", axum::routing::get(metrics));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    address
}

fn queries(counter: &str, waiting: Option<&str>) -> WorkQueries {
    WorkQueries {
        counter: counter.to_owned(),
        waiting: waiting.map(str::to_owned),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pods_work_query_reads_its_counter_and_waiting_gauge_from_a_real_prometheus() {
    let dir = test_dir("promql");
    let started = Instant::now();
    let endpoint = serve_work(started).await;
    let prometheus = PrometheusServer::start(
        &dir,
        &format!("  - job_name: work\n    static_configs:\n      - targets: ['{endpoint}']\n"),
    );
    let source = PromqlSource::new(&prometheus.url(), None).expect("source");
    let chat = queries(
        "sum(work_tokens_total{pod=\"chat-0\"})",
        Some("sum(work_requests_waiting{pod=\"chat-0\"})"),
    );
    // Two scrapes in, so that the value read is a recent one.
    eventually(
        "Prometheus scraped the endpoint twice",
        Duration::from_secs(20),
        || async {
            let scrapes = source
                .value("count_over_time(up{job=\"work\"}[1m])")
                .await
                .map_err(|e| format!("{e:?} (log {})", prometheus.log.display()))?;
            (scrapes >= 2.0)
                .then_some(())
                .ok_or(format!("{scrapes} scrapes"))
        },
    )
    .await;

    let first = within("first sample", source.sample(&chat))
        .await
        .expect("first sample");
    let first_at = started.elapsed().as_secs_f64();
    // The value is the last scrape's: at most a scrape interval (and the scrape's own time) old.
    assert!(
        first.counter <= RATE * first_at && first.counter >= RATE * (first_at - 2.5),
        "counter {} at {first_at:.2} s at {RATE}/s",
        first.counter
    );
    assert_eq!(first.waiting, Some(WAITING));
    tokio::time::sleep(Duration::from_secs(4)).await;
    let second = within("second sample", source.sample(&chat))
        .await
        .expect("second sample");
    let elapsed = started.elapsed().as_secs_f64() - first_at;
    let grown = second.counter - first.counter;
    assert!(
        (grown - RATE * elapsed).abs() <= RATE * 1.5,
        "grew {grown} in {elapsed:.2} s at {RATE}/s"
    );

    // Both pods at once, in order; a waiting query with no series means no gauge, not an error.
    let half = queries(
        "sum(work_tokens_total{pod=\"chat-1\"})",
        Some("sum(work_requests_waiting{pod=\"chat-1\"})"),
    );
    let samples = within(
        "both samples",
        source.samples(&[("ml/chat-0", &chat), ("ml/chat-1", &half)]),
    )
    .await;
    let pods: Vec<&str> = samples.iter().map(|(pod, _)| pod.as_str()).collect();
    assert_eq!(pods, ["ml/chat-0", "ml/chat-1"]);
    let (chat_0, chat_1) = match (&samples[0].1, &samples[1].1) {
        (Ok(a), Ok(b)) => (a, b),
        other => panic!("{other:?}"),
    };
    assert!((chat_1.counter - chat_0.counter / 2.0).abs() < 1e-6 * chat_0.counter);
    // NB: `sum()` of nothing is an empty vector, so the gauge is absent rather than zero.
    assert_eq!(chat_1.waiting, None);

    let syntax = within("broken query", source.value("sum(work_tokens_total"))
        .await
        .expect_err("a syntax error");
    match &syntax {
        PromqlError::Query {
            error_type,
            message,
            ..
        } => {
            assert_eq!(error_type, "bad_data", "{syntax}");
            assert!(message.contains("parse error"), "{syntax}");
        }
        other => panic!("not a query error: {other:?}"),
    }
    let nobody = within(
        "query with no series",
        source.value("work_tokens_total{pod=\"nobody\"}"),
    )
    .await
    .expect_err("no series");
    assert!(matches!(nobody, PromqlError::NoSeries { .. }), "{nobody:?}");
    let both = within("query with two series", source.value("work_tokens_total"))
        .await
        .expect_err("two series");
    assert!(
        matches!(both, PromqlError::ManySeries { series: 2, .. }),
        "{both:?}"
    );
    for query in ["-sum(work_tokens_total)", "0/0"] {
        let bad = within("negative or NaN query", source.value(query))
            .await
            .expect_err("not a counter");
        assert!(matches!(bad, PromqlError::BadValue { .. }), "{bad:?}");
    }
    let broken_sample = within(
        "sample with a broken waiting query",
        source.sample(&queries(&chat.counter, Some("rate(work_requests_waiting"))),
    )
    .await;
    assert!(
        matches!(broken_sample, Err(PromqlError::Query { .. })),
        "{broken_sample:?}"
    );

    drop(prometheus);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = writeln!(
        std::io::stderr(),
        "promql: Prometheus started, scraped and queried in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
