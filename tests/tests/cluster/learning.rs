//! Exploration on the real control plane: `kilowatt operator` and two node agents as processes, a
//! serving pod whose work counter follows a true curve that its WorkloadProfile gets wrong, a
//! trainer beside it under one rack cap, and the cap sampler. The sweep lowers the serving pod's
//! limit step by step, its agent measures each level, the learned points land in the profile's
//! status, the watts the sweep frees go to the trainer, and no cap or SLO floor is ever broken. The
//! trainer, on the default curve with a work counter, gets a profile made for its job whose status
//! keeps its curve across an operator restart.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kilowatt_crds::WorkloadProfile;
use kilowatt_node_agent::gpu::settings_file::StoredSettings;
use kilowatt_tests::prometheus::PrometheusServer;
use kilowatt_tests::*;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

/// The rack's cap: the serving pod's 4 GPUs at their maximum, the trainer's at 450 W, both nodes'
/// overheads. Every watt the sweep frees is one the trainer can use.
const CAP_WATTS: f64 = 2.0 * OVERHEAD_WATTS + 4.0 * MAX_WATTS + 4.0 * 450.0;
const SLO_FLOOR: f64 = 0.8;

/// What the serving pod's GPUs really do, per GPU: (limit/700)^1.5 × 100 tokens/s.
fn true_rate(limit_watts: f64) -> f64 {
    100.0 * (limit_watts / MAX_WATTS).powf(1.5)
}

/// What its profile says: (limit/700)^2 × 100, steeper than the truth, so the sweep has to measure
/// to find that it may go lower.
fn declared_rate(limit_watts: f64) -> f64 {
    100.0 * (limit_watts / MAX_WATTS).powi(2)
}

/// The lowest limit at which the true curve still meets the SLO floor.
fn true_floor_watts() -> f64 {
    MAX_WATTS * SLO_FLOOR.powf(1.0 / 1.5)
}

/// Serves the pod's work counter on 127.0.0.1: it counts, every 50 ms, the true rate of each GPU at
/// the limit the simulated GPUs' settings file holds, and always has requests waiting.
async fn serve_work_counter(settings: std::path::PathBuf) -> u16 {
    let tokens = Arc::new(Mutex::new(0.0f64));
    {
        let tokens = tokens.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            let mut last = tokio::time::Instant::now();
            loop {
                tick.tick().await;
                let now = tokio::time::Instant::now();
                let seconds = now.duration_since(last).as_secs_f64();
                last = now;
                if let Ok(stored) = StoredSettings::read(&settings) {
                    let rate: f64 = stored
                        .gpus
                        .iter()
                        .map(|g| true_rate(g.power_limit_watts))
                        .sum();
                    *tokens.lock().expect("counter") += rate * seconds;
                }
            }
        });
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("work counter listens");
    let port = listener.local_addr().expect("address").port();
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let tokens = tokens.clone();
            async move {
                let total = *tokens.lock().expect("counter");
                format!(
                    "# TYPE test_tokens_total counter\ntest_tokens_total{{model=\"chat\"}} {total}\n\
                     # TYPE test_requests_waiting gauge\ntest_requests_waiting 3\n"
                )
            }
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    port
}

async fn profile_status(
    admin: &kube::Client,
) -> Result<kilowatt_crds::WorkloadProfileStatus, String> {
    let profiles: Api<WorkloadProfile> = Api::namespaced(admin.clone(), "ml");
    profiles
        .get("chat-curve")
        .await
        .map_err(|e| e.to_string())?
        .status
        .ok_or_else(|| "no status yet".to_owned())
}

fn condition(status: &kilowatt_crds::WorkloadProfileStatus, type_: &str) -> (String, String) {
    condition_status(&status.conditions, type_)
}

/// Where the serving pod's work counter is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CounterSource {
    /// Its node's agent scrapes the pod (`kilowatt.dev/work-metric`).
    Agent,
    /// The operator queries a real Prometheus that scrapes the pod (`kilowatt.dev/work-query`).
    Prometheus,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn exploration_measures_the_curve_within_the_cap_and_above_the_slo_floor() {
    explore_and_check(CounterSource::Agent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn exploration_measures_the_curve_from_prometheus_queries() {
    explore_and_check(CounterSource::Prometheus).await;
}

async fn explore_and_check(source: CounterSource) {
    let (plane, admin) = prepared_cluster().await;
    let etcd = Etcd::start().await.expect("plan etcd starts");
    let dir = test_dir(match source {
        CounterSource::Agent => "learning",
        CounterSource::Prometheus => "learning-promql",
    });
    for node in ["n1", "n2"] {
        gpu_node(
            &admin,
            node,
            json!({"rack": "a"}),
            GPUS,
            "NVIDIA-H100-80GB-HBM3",
        )
        .await;
        set_ready(&admin, node, true).await;
    }
    budget(
        &admin,
        "rack-a",
        json!({"capWatts": CAP_WATTS, "nodeOverheadWatts": OVERHEAD_WATTS,
               "nodeSelector": {"matchLabels": {"rack": "a"}}}),
    )
    .await;
    let points: Vec<_> = (0..=10)
        .map(|i| {
            let watts = 200.0 + 50.0 * f64::from(i);
            json!({"powerWatts": watts, "throughput": declared_rate(watts)})
        })
        .collect();
    let profiles: Api<WorkloadProfile> = Api::namespaced(admin.clone(), "ml");
    create(
        &profiles,
        json!({"apiVersion": "kilowatt.dev/v1alpha1", "kind": "WorkloadProfile",
               "metadata": {"name": "chat-curve", "namespace": "ml"},
               "spec": {"gpuModel": "H100-SXM", "throughputUnit": "tokens/s", "points": points}}),
    )
    .await;

    let mut nodes: Vec<NodeUnderTest> = ["n1", "n2"]
        .iter()
        .map(|n| NodeUnderTest::new(n, &dir, &etcd.endpoint, None))
        .collect();
    let port = serve_work_counter(nodes[0].settings.clone()).await;
    let mut annotations = json!({"kilowatt.dev/workload": "inference",
        "kilowatt.dev/profile": "chat-curve", "kilowatt.dev/weight": "4",
        "kilowatt.dev/min-throughput-fraction": SLO_FLOOR.to_string(), "kilowatt.dev/explore": "true"});
    let mut operator_args: Vec<String> = Vec::new();
    let prometheus = match source {
        CounterSource::Agent => {
            annotations["kilowatt.dev/work-metric"] = json!("test_tokens_total");
            annotations["kilowatt.dev/work-waiting-metric"] = json!("test_requests_waiting");
            annotations["kilowatt.dev/work-port"] = json!(port.to_string());
            None
        }
        CounterSource::Prometheus => {
            annotations["kilowatt.dev/work-query"] = json!("sum(test_tokens_total)");
            annotations["kilowatt.dev/work-waiting-query"] = json!("sum(test_requests_waiting)");
            let server = PrometheusServer::start(
                &dir,
                &format!(
                    "  - job_name: chat\n    static_configs: [{{targets: ['127.0.0.1:{port}']}}]\n"
                ),
            );
            // NB: Prometheus scrapes every second, so a 15 s window's ends are each up to 1 s
            // stale; consecutive windows share their ends, so a point's mean is within about 2 %.
            operator_args = [
                "--prometheus-url",
                &server.url(),
                "--prometheus-sample-seconds",
                "1",
                "--prometheus-warm-up-seconds",
                "3",
                "--prometheus-window-seconds",
                "15",
            ]
            .map(String::from)
            .to_vec();
            Some(server)
        }
    };
    gpu_pod(&admin, "chat", "n1", GPUS, annotations).await;
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(admin.clone(), "ml");
    within(
        "pod IP",
        pods.patch_status(
            "chat",
            &PatchParams::default(),
            &Patch::Merge(
                &json!({"status": {"podIP": "127.0.0.1", "podIPs": [{"ip": "127.0.0.1"}]}}),
            ),
        ),
    )
    .await
    .expect("pod status patched");
    // The trainer runs on the default curve and its agent scrapes its counter: the operator makes
    // it a profile to keep what it learns.
    let train_port = serve_work_counter(nodes[1].settings.clone()).await;
    gpu_pod(
        &admin,
        "train",
        "n2",
        GPUS,
        json!({"kilowatt.dev/workload": "training", "kilowatt.dev/work-metric": "test_tokens_total",
               "kilowatt.dev/work-port": train_port.to_string()}),
    )
    .await;
    within(
        "pod IP",
        pods.patch_status(
            "train",
            &PatchParams::default(),
            &Patch::Merge(
                &json!({"status": {"podIP": "127.0.0.1", "podIPs": [{"ip": "127.0.0.1"}]}}),
            ),
        ),
    )
    .await
    .expect("pod status patched");
    for node in &mut nodes {
        node.extra_args = ["--work-window-seconds", "5", "--work-warm-up-seconds", "2"]
            .map(String::from)
            .to_vec();
        node.start_agent();
    }
    let operator = OperatorProcess::start_with_args(
        &plane,
        &etcd.endpoint,
        &dir.join("operator.log"),
        &operator_args,
    );
    let store = plan_store(&etcd.endpoint).await;
    settled(&store, &nodes, &["n1", "n2"], "first plan enforced").await;
    // Its GPUs start at their floors; the SLO floor holds from the first raise on.
    eventually("the serving pod raised to its plan", SETTLE, || async {
        let limits = nodes[0].limits();
        if !limits.is_empty() && limits.iter().all(|w| *w >= true_floor_watts()) {
            Ok(())
        } else {
            Err(format!("{limits:?}"))
        }
    })
    .await;
    let sampler = Sampler::start(
        vec![CheckedBudget {
            name: "rack-a",
            cap_watts: CAP_WATTS,
            nodes: vec!["n1".into(), "n2".into()],
        }],
        &nodes,
    );

    // The sweep runs until the profile's curve has converged: measured points and no sweep left.
    let (mut chat_lowest, mut chat_highest) = (f64::INFINITY, 0.0f64);
    let mut train_highest = 0.0f64;
    let seen_exploring = Arc::new(AtomicBool::new(false));
    let status = eventually(
        "the sweep measured the curve and stopped",
        Duration::from_secs(420),
        || {
            let chat = nodes[0].limits();
            chat_lowest = chat.iter().copied().fold(chat_lowest, f64::min);
            chat_highest = chat.iter().copied().fold(chat_highest, f64::max);
            train_highest = train_highest.max(nodes[1].limits().iter().sum());
            let admin = admin.clone();
            let seen = seen_exploring.clone();
            async move {
                let status = profile_status(&admin).await?;
                if condition(&status, "Converged").1 == "Exploring" {
                    seen.store(true, Ordering::Relaxed);
                }
                let converged = status
                    .measured
                    .iter()
                    .flat_map(|c| &c.points)
                    .filter(|p| p.windows >= 3)
                    .count();
                if seen.load(Ordering::Relaxed)
                    && converged >= 2
                    && condition(&status, "Converged").0 == "True"
                {
                    Ok(status)
                } else {
                    Err(format!(
                        "{converged} points converged; {:?}",
                        status.conditions
                    ))
                }
            }
        },
    )
    .await;
    sampler.stretch("exploring the serving pod's curve").await;

    assert_eq!(
        condition(&status, "Learning"),
        ("True".into(), "Measuring".into())
    );
    let [curve] = status.measured.as_slice() else {
        panic!("one measured workload: {:?}", status.measured);
    };
    for point in curve.points.iter().filter(|p| p.windows >= 3) {
        let truth = true_rate(point.power_watts);
        assert!(
            (point.throughput - truth).abs() <= 0.05 * truth,
            "learned {point:?}, true {truth}"
        );
    }
    let measured: Vec<f64> = curve
        .points
        .iter()
        .filter(|p| p.windows >= 3)
        .map(|p| p.power_watts)
        .collect();
    let errors: Vec<String> = curve
        .points
        .iter()
        .filter(|p| p.windows >= 3)
        .map(|p| {
            let truth = true_rate(p.power_watts);
            format!("{:+.2} %", 100.0 * (p.throughput - truth) / truth)
        })
        .collect();
    let _ = writeln!(
        std::io::stderr(),
        "learning ({source:?}): measured {measured:?} W, off the truth by {errors:?}; the serving pod \
         held {chat_lowest}–{chat_highest} W, the trainer up to {train_highest} W"
    );
    let (lowest, highest) = measured
        .iter()
        .fold((f64::INFINITY, 0.0f64), |(lo, hi), w| {
            (lo.min(*w), hi.max(*w))
        });
    assert!(
        lowest <= highest - 25.0 + 2.5,
        "the sweep measured a step below where it began: {measured:?}"
    );
    assert!(
        chat_lowest >= true_floor_watts(),
        "the serving pod was held at {chat_lowest} W, under its true SLO floor at {:.0} W",
        true_floor_watts()
    );
    // With the serving pod at its highest, the trainer has what the cap leaves.
    let train_with_chat_highest = CAP_WATTS - 2.0 * OVERHEAD_WATTS - f64::from(GPUS) * chat_highest;
    assert!(
        train_highest > train_with_chat_highest + 1.0,
        "the trainer never got the freed watts: at most {train_highest} W, \
         {train_with_chat_highest} W beside the serving pod at its highest"
    );
    let (code, metrics) = http_get(operator.address, "/metrics").await;
    assert_eq!(code, 200);
    let value = |name: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("{name} in {metrics}"))
    };
    assert!(value("kilowatt_explore_steps_total") >= 2.0);
    assert!(value("kilowatt_learned_points{") >= 2.0);
    assert!(value("kilowatt_work_windows_total{outcome=\"accepted\"}") >= 6.0);
    assert_eq!(value("kilowatt_job_profiles_created_total"), 1.0);

    // The trainer's profile, made for its job and owned by its pod, keeps its learned curve; a new
    // operator goes on from it rather than from nothing.
    let train_uid = within("trainer pod", pods.get("train"))
        .await
        .expect("trainer pod")
        .metadata
        .uid
        .expect("uid");
    let before = eventually("the trainer's profile has its curve", SETTLE, || {
        let profiles = profiles.clone();
        let train_uid = train_uid.clone();
        async move {
            let made = profiles
                .get("train-learned")
                .await
                .map_err(|e| e.to_string())?;
            assert_eq!(made.spec.job.as_deref(), Some("train"));
            assert_eq!(made.spec.gpu_model, "H100-SXM");
            let owners = made.metadata.owner_references.clone().unwrap_or_default();
            assert_eq!(
                owners
                    .iter()
                    .map(|o| (o.kind.as_str(), o.uid.as_str()))
                    .collect::<Vec<_>>(),
                [("Pod", train_uid.as_str())]
            );
            let status = made.status.ok_or("no status yet")?;
            match status.measured.as_slice() {
                [curve] if curve.workload == "ml/train" && curve.windows_accepted > 0 => {
                    Ok((status.pods, curve.windows_accepted))
                }
                other => Err(format!("measured: {other:?}")),
            }
        }
    })
    .await;
    assert_eq!(before.0, Some(1));
    operator.kill();
    let operator = OperatorProcess::start_with_args(
        &plane,
        &etcd.endpoint,
        &dir.join("operator-2.log"),
        &operator_args,
    );
    eventually(
        "a new operator restores the trainer's curve",
        SETTLE,
        || {
            let profiles = profiles.clone();
            async move {
                let made = profiles
                    .get("train-learned")
                    .await
                    .map_err(|e| e.to_string())?;
                let accepted = made
                    .status
                    .iter()
                    .flat_map(|s| &s.measured)
                    .map(|c| c.windows_accepted)
                    .sum::<u64>();
                if accepted > before.1 {
                    Ok(())
                } else {
                    Err(format!(
                        "{accepted} windows, {} before the restart",
                        before.1
                    ))
                }
            }
        },
    )
    .await;

    drop(sampler);
    operator.kill();
    drop(prometheus);
    drop(nodes);
    drop(etcd);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = plane;
}
