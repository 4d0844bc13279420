use super::*;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use proptest::prelude::*;

fn at(seconds: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + seconds).expect("in range")
}

fn window(pod: &str, limit: f64, rate: f64, saturated: Option<bool>) -> WorkWindow {
    WorkWindow {
        pod: pod.into(),
        power_limit_watts: limit,
        sm_clock_mhz: None,
        gpus: 8,
        gpu_watts: limit * 0.95,
        rate_per_gpu: rate,
        seconds: 20.0,
        saturated,
    }
}

fn report(windows: Vec<WorkWindow>, energy: f64) -> PowerReport {
    PowerReport {
        gpu_watts: 1000.0,
        gpu_energy_joules: energy,
        period_seconds: 10.0,
        work_windows: windows,
        work_windows_rejected: BTreeMap::from([("limitChanged".into(), 2)]),
    }
}

fn points(pairs: &[(f64, f64)]) -> Vec<ProfilePoint> {
    pairs
        .iter()
        .map(|&(power_watts, throughput)| ProfilePoint {
            power_watts,
            throughput,
            sm_clock_mhz: None,
        })
        .collect()
}

fn learner_with(windows: &[(f64, f64)], repeats: u32) -> Learner {
    let mut learner = Learner::default();
    let workloads = BTreeMap::from([("ml/chat-0", "ml/chat")]);
    for round in 0..repeats {
        let batch: Vec<WorkWindow> = windows
            .iter()
            .map(|&(limit, rate)| window("ml/chat-0", limit, rate, None))
            .collect();
        learner.record(
            [("n1", &report(batch, f64::from(round)))],
            &workloads,
            at(i64::from(round)),
        );
    }
    learner
}

/// The true throughput at `watts` of a curve that is neither concave nor monotone: a plateau, a dip
/// and a rise (as measured curves with power-state steps are).
fn bumpy(watts: f64) -> f64 {
    let x = (watts - 200.0) / 500.0;
    1000.0 * (0.35 + 0.5 * x + 0.08 * (9.0 * x).sin() + 0.1 * x * x)
}

#[test]
fn a_report_is_taken_once_and_windows_of_unmanaged_pods_are_counted_apart() {
    let mut learner = Learner::default();
    let workloads = BTreeMap::from([("ml/chat-0", "ml/chat")]);
    let seen = report(
        vec![
            window("ml/chat-0", 400.0, 90.0, Some(true)),
            window("ml/other-0", 400.0, 10.0, None),
        ],
        1.0,
    );
    learner.record([("n1", &seen)], &workloads, at(0));
    learner.record([("n1", &seen)], &workloads, at(5));
    let curve = learner.curve("ml/chat").expect("learned");
    assert_eq!(curve.windows_accepted, 1);
    assert_eq!(learner.windows_unmatched, 1);
    assert_eq!(learner.windows_rejected["limitChanged"], 2);
}

#[test]
fn a_window_without_requests_waiting_is_a_lower_bound_not_a_point() {
    let mut learner = Learner::default();
    let workloads = BTreeMap::from([("ml/chat-0", "ml/chat")]);
    for i in 0..5 {
        let idle = report(
            vec![window("ml/chat-0", 400.0, 40.0 + f64::from(i), Some(false))],
            f64::from(i),
        );
        learner.record([("n1", &idle)], &workloads, at(i64::from(i)));
    }
    let curve = learner.curve("ml/chat").expect("learned");
    assert!(curve.converged_points().is_empty());
    let point = curve.points().next().expect("a bin");
    assert_eq!((point.windows, point.lower_bound_windows), (0, 5));
    assert_eq!(point.lower_bound, 44.0);
    let declared = points(&[(200.0, 1.0), (700.0, 2.0)]);
    assert_eq!(curve.merged(&declared), declared);
}

#[test]
fn measured_points_replace_the_declared_curve_where_they_are_and_only_lower_it_below() {
    // Declared (another unit): steep. Measured: flat between 450 and 700 W, and at 450 W better than
    // the scaled declared curve says.
    let declared = points(&[(200.0, 20.0), (300.0, 40.0), (450.0, 70.0), (700.0, 100.0)]);
    let learner = learner_with(&[(450.0, 950.0), (575.0, 980.0), (700.0, 1000.0)], 3);
    let merged = learner.curve("ml/chat").expect("learned").merged(&declared);
    let at_watts = |w: f64| {
        merged
            .iter()
            .find(|p| (p.power_watts - w).abs() < 1e-9)
            .map(|p| p.throughput)
    };
    assert_eq!(at_watts(450.0), Some(950.0));
    assert_eq!(at_watts(575.0), Some(980.0));
    assert_eq!(at_watts(700.0), Some(1000.0));
    // Below: the declared shape scaled to the counter's unit (×10), not raised towards 950/700.
    assert_eq!(at_watts(300.0), Some(400.0));
    assert_eq!(at_watts(200.0), Some(200.0));

    // Measured worse than declared at its lowest point: the declared curve below is lowered by it.
    let worse = learner_with(&[(450.0, 560.0), (700.0, 1000.0)], 3);
    let merged = worse.curve("ml/chat").expect("learned").merged(&declared);
    let lowered: Vec<f64> = merged.iter().map(|p| p.throughput).collect();
    assert_eq!(lowered, [160.0, 320.0, 560.0, 1000.0]);
}

#[test]
fn bins_with_fewer_windows_than_the_minimum_are_not_planned_on() {
    let declared = points(&[(200.0, 20.0), (700.0, 100.0)]);
    let learner = learner_with(&[(400.0, 500.0)], MIN_WINDOWS - 1);
    let curve = learner.curve("ml/chat").expect("learned");
    assert!(curve.converged_points().is_empty());
    assert_eq!(curve.merged(&declared), declared);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// With 3 % noise per window and a few windows a bin, the learned curve of a non-concave,
    /// non-monotone true curve is within 5 % of it at every explored point, and the merged curve
    /// keeps the measured points exactly.
    #[test]
    fn noisy_windows_of_a_bumpy_curve_converge_to_it(
        noise in proptest::collection::vec(-1.0f64..1.0, 21 * 6),
        step in prop_oneof![Just(25.0), Just(50.0)],
    ) {
        let mut learner = Learner::default();
        let workloads = BTreeMap::from([("ml/chat-0", "ml/chat")]);
        let levels: Vec<f64> = (0..21).map(|i| 700.0 - step * f64::from(i)).filter(|w| *w >= 200.0).collect();
        for round in 0..6usize {
            let batch: Vec<WorkWindow> = levels
                .iter()
                .enumerate()
                .map(|(i, &limit)| {
                    // Uniform on ±√3·3 %: a relative standard deviation of 3 %.
                    let relative = 0.03 * 3f64.sqrt() * noise[round * 21 + i];
                    window("ml/chat-0", limit, bumpy(limit) * (1.0 + relative), None)
                })
                .collect();
            learner.record([("n1", &report(batch, round as f64))], &workloads, at(round as i64));
        }
        let curve = learner.curve("ml/chat").expect("learned");
        let converged = curve.converged_points();
        prop_assert_eq!(converged.len(), levels.len());
        for point in &converged {
            let truth = bumpy(point.power_watts);
            prop_assert!((point.throughput - truth).abs() <= 0.05 * truth, "{point:?} truth {truth}");
            prop_assert_eq!(point.windows, 6);
        }
        let declared = points(&[(200.0, 1.0), (700.0, 2.0)]);
        let merged = curve.merged(&declared);
        // Every level from 700 W down to 200 W was measured, so nothing of the declared curve is left.
        prop_assert_eq!(merged.len(), levels.len());
        for point in &converged {
            prop_assert!(merged.iter().any(|m| m.power_watts == point.power_watts && m.throughput == point.throughput));
        }
    }
}

fn candidate(workload: &str, root: &str, planned: f64, slo: Option<f64>) -> Candidate {
    Candidate {
        workload: workload.into(),
        root: root.into(),
        planned_watts: planned,
        min_watts: 200.0,
        curve: points(&[(200.0, 400.0), (450.0, 900.0), (700.0, 1000.0)]),
        min_throughput_fraction: slo,
        max_cost: 1.0,
    }
}

/// Runs the explorer every 10 s for `seconds`, the workloads planned at their caps, and the learner
/// measuring each capped workload's bin once per pass.
fn explore(
    explorer: &mut Explorer,
    candidates: &mut [Candidate],
    learner: &mut Learner,
    seconds: i64,
) -> Vec<BTreeMap<String, f64>> {
    let mut history = Vec::new();
    for t in (0..seconds).step_by(10) {
        let caps = explorer.step(candidates, learner, at(t));
        for candidate in candidates.iter_mut() {
            let held = caps.get(&candidate.workload).copied().unwrap_or(700.0);
            candidate.planned_watts = held;
            let pod = format!("{}-0", candidate.workload);
            let workloads = BTreeMap::from([(pod.as_str(), candidate.workload.as_str())]);
            let report = report(vec![window(&pod, held, held, None)], t as f64);
            learner.record([(candidate.workload.as_str(), &report)], &workloads, at(t));
        }
        history.push(caps);
    }
    history
}

#[test]
fn a_sweep_steps_down_once_each_level_is_measured_one_workload_per_root_at_a_time() {
    let mut explorer = Explorer::default();
    let mut candidates = vec![
        candidate("ml/a", "facility", 700.0, None),
        candidate("ml/b", "facility", 700.0, None),
        candidate("ml/c", "other", 700.0, None),
    ];
    let mut learner = Learner::default();
    let history = explore(&mut explorer, &mut candidates, &mut learner, 3000);
    for caps in &history {
        let in_facility = caps.keys().filter(|w| *w != "ml/c").count();
        assert!(in_facility <= 1, "{caps:?}");
    }
    // The first pass caps a and c 25 W under their plan; each level needs MIN_WINDOWS passes.
    assert_eq!(history[0].get("ml/a"), Some(&675.0));
    assert_eq!(history[0].get("ml/c"), Some(&675.0));
    assert_eq!(history[0].get("ml/b"), None);
    let a_caps: Vec<f64> = history
        .iter()
        .filter_map(|c| c.get("ml/a").copied())
        .collect();
    assert!(a_caps.windows(2).all(|p| p[1] <= p[0]), "{a_caps:?}");
    assert_eq!(a_caps.iter().copied().fold(f64::MAX, f64::min), 200.0);
    for workload in ["ml/a", "ml/b", "ml/c"] {
        let sweep = explorer.sweep(workload).expect("swept");
        assert_eq!(
            sweep.state,
            SweepState::Done {
                lowest_watts: 200.0
            },
            "{workload}"
        );
        assert_eq!(sweep.steps, 20);
    }
    assert_eq!(explorer.steps_total, 60);
    assert!(history.last().expect("passes").is_empty());
}

#[test]
fn a_sweep_stops_above_the_slo_floor_and_pauses_when_its_hourly_cost_is_spent() {
    let mut explorer = Explorer::default();
    // 80 % of best (1000) is reached at 450 + 250 × (800 − 900)/100 … i.e. above 400 W on this curve.
    let mut candidates = vec![candidate("ml/chat", "facility", 700.0, Some(0.8))];
    let mut learner = Learner::default();
    let history = explore(&mut explorer, &mut candidates, &mut learner, 3000);
    let lowest = history
        .iter()
        .filter_map(|c| c.get("ml/chat").copied())
        .fold(f64::MAX, f64::min);
    let curve = points(&[(200.0, 400.0), (450.0, 900.0), (700.0, 1000.0)]);
    assert!(
        interpolate(&curve, lowest) >= 0.82 * 1000.0 - 1e-9,
        "lowest {lowest}"
    );
    assert!(interpolate(&curve, lowest - EXPLORE_STEP_WATTS) < 0.82 * 1000.0);
    assert!(matches!(
        explorer.sweep("ml/chat").expect("swept").state,
        SweepState::Done { .. }
    ));

    let mut explorer = Explorer::default();
    let mut thrifty = vec![Candidate {
        max_cost: 0.001,
        ..candidate("ml/train", "facility", 700.0, None)
    }];
    let mut learner = Learner::default();
    explore(&mut explorer, &mut thrifty, &mut learner, 600);
    assert!(
        matches!(
            explorer.sweep("ml/train").expect("swept").state,
            SweepState::Paused { .. }
        ),
        "{:?}",
        explorer.sweep("ml/train")
    );
}

#[test]
fn a_profiles_status_shows_its_workloads_measured_curves_and_whether_they_converged() {
    use crate::plan::translate::tests::{budget, node, pod, profile, run};
    use crate::plan::translate::{PROFILE_ANNOTATION, WORKLOAD_ANNOTATION};
    use profile_status::{CONVERGED, LEARNING, profile_status};
    use serde_json::json;
    let profiles = [profile("chat-curve", None), profile("idle-curve", None)];
    let translation = run(
        &[budget(
            "rack",
            json!({"capWatts": 20000.0, "nodeSelector": {}}),
        )],
        &profiles,
        &[node("n1", json!({}), "8")],
        &[pod(
            "chat-0",
            "n1",
            8,
            json!({WORKLOAD_ANNOTATION: "inference", PROFILE_ANNOTATION: "chat-curve"}),
        )],
    );
    let workload = translation.pods[0].workload.clone().expect("managed");
    let now = Time(at(100));
    let condition = |status: &kilowatt_crds::WorkloadProfileStatus, type_: &str| {
        let c = status
            .conditions
            .iter()
            .find(|c| c.type_ == type_)
            .expect("condition");
        (c.status.clone(), c.reason.clone())
    };
    let mut learning = Learning::default();
    let before = profile_status(&profiles[0], &translation, &learning, &now);
    assert_eq!(before.pods, Some(1));
    assert!(before.measured.is_empty());
    assert_eq!(
        condition(&before, LEARNING),
        ("False".into(), "NoWindows".into())
    );
    assert_eq!(
        condition(&before, CONVERGED),
        ("False".into(), "NoWindows".into())
    );
    let unused = profile_status(&profiles[1], &translation, &learning, &now);
    assert_eq!(
        condition(&unused, LEARNING),
        ("False".into(), "NotInUse".into())
    );

    let workloads = workload_of_pods(&translation);
    let windows = |rates: &[f64]| {
        rates
            .iter()
            .map(|&rate| window("ml/chat-0", 650.0, rate, Some(true)))
            .collect::<Vec<_>>()
    };
    learning.learner.record(
        [("n1", &report(windows(&[98.0, 102.0]), 1.0))],
        &workloads,
        at(60),
    );
    let two = profile_status(&profiles[0], &translation, &learning, &now);
    assert_eq!(
        condition(&two, LEARNING),
        ("True".into(), "Measuring".into())
    );
    assert_eq!(
        condition(&two, CONVERGED),
        ("False".into(), "TooFewWindows".into())
    );

    learning.learner.record(
        [("n1", &report(windows(&[100.0]), 2.0))],
        &workloads,
        at(90),
    );
    let three = profile_status(&profiles[0], &translation, &learning, &now);
    assert_eq!(
        condition(&three, CONVERGED),
        ("True".into(), "Measured".into())
    );
    let [curve] = three.measured.as_slice() else {
        panic!("one measured curve: {:?}", three.measured);
    };
    assert_eq!(curve.workload, workload);
    assert_eq!(curve.windows_accepted, 3);
    let [point] = curve.points.as_slice() else {
        panic!("one point: {:?}", curve.points);
    };
    assert_eq!((point.power_watts, point.windows), (650.0, 3));
    assert!((point.throughput - 100.0).abs() < 1e-9, "{point:?}");
    assert!((point.spread - 2.0).abs() < 1e-6, "{point:?}");
    assert_eq!(point.last_measured, Time(at(90)));

    // A new leader restores the curve from the status and plans on it as the old one did.
    let mut restored = Learner::default();
    restored.restore(curve);
    let declared = points(&[(200.0, 1.0), (700.0, 2.0)]);
    assert_eq!(
        restored.curve(&workload).map(|c| c.merged(&declared)),
        learning
            .learner
            .curve(&workload)
            .map(|c| c.merged(&declared))
    );
    // A window arriving after the restore is averaged in as if the curve had never left.
    let more = BTreeMap::from([("ml/chat-0", workload.as_str())]);
    restored.record([("n1", &report(windows(&[104.0]), 3.0))], &more, at(120));
    let point = &restored.curve(&workload).expect("curve").converged_points()[0];
    assert_eq!(point.windows, 4);
    assert!((point.throughput - 101.0).abs() < 1e-9, "{point:?}");
    assert!(
        (point.spread - (20.0f64 / 3.0).sqrt()).abs() < 1e-6,
        "{point:?}"
    );
}

#[test]
fn a_learned_job_without_a_profile_gets_one_owned_by_its_controller_or_else_its_pods() {
    use crate::plan::translate::tests::{budget, node, pod, profile, run};
    use crate::plan::translate::{JOB_ANNOTATION, WORKLOAD_ANNOTATION};
    use job_profiles::{MADE_FOR_JOB_LABEL, job_profiles, profile_name};
    use serde_json::json;
    let owned_by = |name: &str, controller: &str| {
        let mut p = (*pod(name, "n1", 2, json!({WORKLOAD_ANNOTATION: "inference"}))).clone();
        p.metadata.owner_references = Some(vec![
            k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                api_version: "apps/v1".into(),
                kind: "ReplicaSet".into(),
                name: controller.into(),
                uid: format!("uid-{controller}"),
                controller: Some(true),
                block_owner_deletion: Some(true),
            },
        ]);
        Arc::new(p)
    };
    let pods = [
        owned_by("chat-a", "chat"),
        owned_by("chat-b", "chat"),
        pod(
            "bare-0",
            "n1",
            2,
            json!({WORKLOAD_ANNOTATION: "training", JOB_ANNOTATION: "Bare Job"}),
        ),
        pod(
            "bare-1",
            "n1",
            2,
            json!({WORKLOAD_ANNOTATION: "training", JOB_ANNOTATION: "Bare Job"}),
        ),
    ];
    let budgets = [budget(
        "rack",
        json!({"capWatts": 20000.0, "nodeSelector": {}}),
    )];
    let nodes = [node("n1", json!({}), "8")];
    let translation = run(&budgets, &[], &nodes, &pods);
    let mut learning = Learning::default();
    // Nothing measured yet: nothing to keep.
    let found = job_profiles(&translation, &learning, &pods, &[]);
    assert!(found.create.is_empty() && found.name_taken.is_empty());
    let workloads = BTreeMap::from([("ml/chat-a", "ml/chat"), ("ml/bare-0", "ml/Bare Job")]);
    learning.learner.record(
        [(
            "n1",
            &report(
                vec![
                    window("ml/chat-a", 400.0, 90.0, Some(true)),
                    window("ml/bare-0", 400.0, 50.0, None),
                ],
                1.0,
            ),
        )],
        &workloads,
        at(0),
    );
    let found = job_profiles(&translation, &learning, &pods, &[]);
    assert!(found.name_taken.is_empty());
    let by_job: BTreeMap<&str, &kilowatt_crds::WorkloadProfile> = found
        .create
        .iter()
        .map(|p| (p.spec.job.as_deref().expect("job"), p))
        .collect();
    assert_eq!(by_job.len(), 2);
    let chat = by_job["chat"];
    assert_eq!(chat.metadata.name.as_deref(), Some("chat-learned"));
    assert_eq!(chat.metadata.namespace.as_deref(), Some("ml"));
    assert_eq!(chat.labels()[MADE_FOR_JOB_LABEL], "true");
    let owners = chat.owner_references();
    assert_eq!(owners.len(), 1);
    assert_eq!(
        (owners[0].kind.as_str(), owners[0].uid.as_str()),
        ("ReplicaSet", "uid-chat")
    );
    assert_eq!(owners[0].block_owner_deletion, None);
    assert_eq!(chat.spec.gpu_model, "H100-SXM");
    let (_, default_points) = crate::plan::gpu_models::default_profile(
        kilowatt_solver::model::WorkloadKind::Inference,
        &translation.unprofiled["ml/chat"].model,
    );
    assert_eq!(
        crate::plan::gpu_models::solver_points(&chat.spec.points),
        default_points
    );
    // Bare pods with a job annotation: every pod owns the profile, and the name is made valid.
    let bare = by_job["Bare Job"];
    let name = bare.metadata.name.as_deref().expect("name");
    assert!(
        name.starts_with("bare-job-") && name.ends_with("-learned"),
        "{name}"
    );
    let mut owner_uids: Vec<&str> = bare
        .owner_references()
        .iter()
        .map(|o| o.uid.as_str())
        .collect();
    owner_uids.sort_unstable();
    assert_eq!(owner_uids, ["uid-bare-0", "uid-bare-1"]);
    // A profile of another job already holding the name: nothing is created for that job.
    let squatter = profile("chat-learned", None);
    let found = job_profiles(&translation, &learning, &pods, &[squatter]);
    assert_eq!(
        found.name_taken,
        vec![("ml/chat".to_owned(), "chat-learned".to_owned())]
    );
    assert_eq!(found.create.len(), 1);
    // Made-up names stay valid object names whatever the job is called.
    for job in ["Bare Job", "x".repeat(300).as_str(), "---", "a.b", "UPPER"] {
        let name = profile_name(job);
        assert!(name.len() <= 253, "{name}");
        assert!(
            name.split('.').all(|l| !l.is_empty()
                && l.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !l.starts_with('-')
                && !l.ends_with('-')),
            "{name}"
        );
    }
    assert_ne!(profile_name("A b"), profile_name("a-b"));
}
