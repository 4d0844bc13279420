//! Unit tests of translation, and fixtures the other planning modules' tests share.

use super::*;
use crate::plan::gpu_models::{GPU_PRODUCT_LABEL, GPU_RESOURCE};
use crate::plan::reasons;
use kilowatt_solver::SolveOptions;
use serde_json::{Value, json};

pub(crate) fn at(text: &str) -> Timestamp {
    text.parse().expect("timestamp")
}

pub(crate) fn budget(name: &str, spec: Value) -> Arc<PowerBudget> {
    Arc::new(
        serde_json::from_value(
            json!({"apiVersion": "kilowatt.dev/v1alpha1", "kind": "PowerBudget",
            "metadata": {"name": name, "generation": 1}, "spec": spec}),
        )
        .expect("budget"),
    )
}

pub(crate) fn node(name: &str, labels: Value, gpus: &str) -> Arc<Node> {
    let mut labels = labels;
    labels[GPU_PRODUCT_LABEL] = json!("NVIDIA-H100-80GB-HBM3");
    Arc::new(
        serde_json::from_value(json!({"metadata": {"name": name, "labels": labels},
            "status": {"capacity": {GPU_RESOURCE: gpus}}}))
        .expect("node"),
    )
}

pub(crate) fn pod(name: &str, node: &str, gpus: u32, annotations: Value) -> Arc<Pod> {
    Arc::new(
        serde_json::from_value(
            json!({"metadata": {"name": name, "namespace": "ml", "uid": format!("uid-{name}"),
                "annotations": annotations, "labels": {"app": name}},
            "spec": {"nodeName": node, "containers": [{"name": "c",
                "resources": {"limits": {GPU_RESOURCE: gpus.to_string()}}}]},
            "status": {"phase": "Running"}}),
        )
        .expect("pod"),
    )
}

pub(crate) fn profile(name: &str, selector: Option<Value>) -> Arc<WorkloadProfile> {
    let mut spec = json!({"gpuModel": "H100-SXM", "throughputUnit": "tokens/s", "points": [
        {"powerWatts": 200.0, "throughput": 1.0}, {"powerWatts": 700.0, "throughput": 2.0}]});
    if let Some(selector) = selector {
        spec["selector"] = selector;
    }
    Arc::new(
        serde_json::from_value(
            json!({"apiVersion": "kilowatt.dev/v1alpha1", "kind": "WorkloadProfile",
            "metadata": {"name": name, "namespace": "ml"}, "spec": spec}),
        )
        .expect("profile"),
    )
}

/// Two 8-GPU H100 nodes selected by every budget with a selector: a training pod on one, an
/// inference pod on the other, both on default profiles.
pub(crate) fn two_node_fleet(budgets: &[Arc<PowerBudget>]) -> Translation {
    let nodes = [node("n1", json!({}), "8"), node("n2", json!({}), "8")];
    let pods = [
        pod("t0", "n1", 8, json!({WORKLOAD_ANNOTATION: "training"})),
        pod("s0", "n2", 8, json!({WORKLOAD_ANNOTATION: "inference"})),
    ];
    run(budgets, &[], &nodes, &pods)
}

pub(crate) fn run(
    budgets: &[Arc<PowerBudget>],
    profiles: &[Arc<WorkloadProfile>],
    nodes: &[Arc<Node>],
    pods: &[Arc<Pod>],
) -> Translation {
    translate(
        Cluster {
            budgets,
            profiles,
            nodes,
            pods,
            inventories: &BTreeMap::new(),
            holds: &BTreeMap::new(),
            window_lead: std::time::Duration::ZERO,
        },
        at("2026-11-28T12:00:00Z"),
    )
}

fn pod_facts<'a>(t: &'a Translation, name: &str) -> &'a PodFacts {
    t.pods.iter().find(|p| p.name == name).expect("pod facts")
}

#[test]
fn a_gang_shares_one_workload_and_unannotated_pods_stay_out_of_the_problem() {
    let t = run(
        &[budget(
            "rack",
            json!({"capWatts": 20000.0, "nodeSelector": {}}),
        )],
        &[],
        &[node("n1", json!({}), "8"), node("n2", json!({}), "8")],
        &[
            pod(
                "t0",
                "n1",
                8,
                json!({WORKLOAD_ANNOTATION: "training", JOB_ANNOTATION: "llm"}),
            ),
            pod(
                "t1",
                "n2",
                4,
                json!({WORKLOAD_ANNOTATION: "training", JOB_ANNOTATION: "llm"}),
            ),
            pod("plain", "n2", 2, json!({})),
        ],
    );
    assert_eq!(t.problem.workloads.len(), 1);
    let gang = &t.problem.workloads[0];
    assert_eq!(gang.name, "ml/llm");
    assert_eq!(gang.gpus.len(), 12);
    assert_eq!(t.workload_pods["ml/llm"], ["ml/t0", "ml/t1"]);
    assert_eq!(pod_facts(&t, "plain").workload, None);
    assert!(pod_facts(&t, "plain").warnings.is_empty());
    let holders: Vec<Option<&str>> = t.nodes["n2"]
        .slots
        .iter()
        .map(|s| s.pod.as_deref())
        .collect();
    assert_eq!(
        holders[..7],
        [
            Some("ml/plain"),
            Some("ml/plain"),
            Some("ml/t1"),
            Some("ml/t1"),
            Some("ml/t1"),
            Some("ml/t1"),
            None
        ],
        "slots are handed out in pod-name order"
    );
    assert_eq!(
        pod_facts(&t, "t0").profile,
        Some(ProfileSource::Default("default-training-H100-SXM".into()))
    );
}

#[test]
fn each_malformed_annotation_leaves_its_pod_unmanaged_with_a_warning_naming_it() {
    let cases = [
        (WORKLOAD_ANNOTATION, json!({WORKLOAD_ANNOTATION: "batch"})),
        (
            WEIGHT_ANNOTATION,
            json!({WORKLOAD_ANNOTATION: "training", WEIGHT_ANNOTATION: "-1"}),
        ),
        (
            WEIGHT_ANNOTATION,
            json!({WORKLOAD_ANNOTATION: "training", WEIGHT_ANNOTATION: "NaN"}),
        ),
        (
            WEIGHT_ANNOTATION,
            json!({WORKLOAD_ANNOTATION: "training", WEIGHT_ANNOTATION: "1e-12"}),
        ),
        (
            MIN_FRACTION_ANNOTATION,
            json!({WORKLOAD_ANNOTATION: "inference", MIN_FRACTION_ANNOTATION: "1.5"}),
        ),
        (
            JOB_ANNOTATION,
            json!({WORKLOAD_ANNOTATION: "training", JOB_ANNOTATION: " "}),
        ),
        (
            PROFILE_ANNOTATION,
            json!({WORKLOAD_ANNOTATION: "training", PROFILE_ANNOTATION: "absent"}),
        ),
    ];
    for (annotation, annotations) in cases {
        let t = run(
            &[budget(
                "rack",
                json!({"capWatts": 9000.0, "nodeSelector": {}}),
            )],
            &[],
            &[node("n1", json!({}), "8")],
            &[pod("p", "n1", 8, annotations.clone())],
        );
        let facts = pod_facts(&t, "p");
        assert_eq!(facts.workload, None, "{annotations}");
        assert!(t.problem.workloads.is_empty());
        let warning = facts.warnings.first().expect("a warning");
        assert!(
            warning.message.contains(annotation),
            "{annotation}: {}",
            warning.message
        );
    }
}

#[test]
fn a_named_profile_beats_a_selector_which_beats_the_default() {
    let profiles = [
        profile("by-name", None),
        profile("by-selector", Some(json!({"matchLabels": {"app": "sel"}}))),
    ];
    let t = run(
        &[budget(
            "rack",
            json!({"capWatts": 20000.0, "nodeSelector": {}}),
        )],
        &profiles,
        &[node("n1", json!({}), "8")],
        &[
            pod(
                "named",
                "n1",
                2,
                json!({WORKLOAD_ANNOTATION: "inference", PROFILE_ANNOTATION: "by-name"}),
            ),
            pod("sel", "n1", 2, json!({WORKLOAD_ANNOTATION: "inference"})),
            pod("other", "n1", 2, json!({WORKLOAD_ANNOTATION: "inference"})),
        ],
    );
    assert_eq!(
        pod_facts(&t, "named").profile,
        Some(ProfileSource::Named("by-name".into()))
    );
    assert_eq!(
        pod_facts(&t, "sel").profile,
        Some(ProfileSource::Selected("by-selector".into()))
    );
    assert_eq!(
        pod_facts(&t, "other").profile,
        Some(ProfileSource::Default("default-inference-H100-SXM".into()))
    );
    assert_eq!(t.profile_pods[&("ml".to_owned(), "by-name".to_owned())], 1);
    assert_eq!(
        t.profile_pods[&("ml".to_owned(), "by-selector".to_owned())],
        1
    );
}

#[test]
fn a_node_goes_to_its_innermost_budget_and_counts_up_the_chain() {
    let t = run(
        &[
            budget(
                "facility",
                json!({"capWatts": 50000.0, "nodeSelector": {}, "nodeOverheadWatts": 800.0}),
            ),
            budget(
                "rack",
                json!({"capWatts": 9000.0, "parent": "facility",
                "nodeSelector": {"matchExpressions": [{"key": "rack", "operator": "In", "values": ["a"]}]}}),
            ),
        ],
        &[],
        &[
            node("n1", json!({"rack": "a"}), "8"),
            node("n2", json!({"rack": "b"}), "8"),
        ],
        &[],
    );
    assert_eq!(t.nodes["n1"].budget, "rack");
    assert_eq!(t.nodes["n2"].budget, "facility");
    assert_eq!(
        t.nodes["n1"].overhead_watts, 800.0,
        "inherited from the nearest budget setting it"
    );
    assert!(!t.nodes["n1"].pinned);
    assert_eq!(
        (t.budgets["facility"].nodes, t.budgets["facility"].gpus),
        (2, 16)
    );
    assert_eq!((t.budgets["rack"].nodes, t.budgets["rack"].gpus), (1, 8));
    assert!(t.budgets.values().all(|b| b.conflicts.is_empty()));
}

#[test]
fn a_node_in_two_unrelated_budgets_is_pinned_at_its_floor_and_counted_in_both() {
    let t = run(
        &[
            budget(
                "a",
                json!({"capWatts": 9000.0, "nodeSelector": {"matchLabels": {"x": "1"}}}),
            ),
            budget(
                "b",
                json!({"capWatts": 9000.0, "nodeSelector": {"matchLabels": {"y": "1"}}}),
            ),
        ],
        &[],
        &[node("n1", json!({"x": "1", "y": "1"}), "4")],
        &[pod("p", "n1", 4, json!({WORKLOAD_ANNOTATION: "training"}))],
    );
    assert!(t.nodes["n1"].pinned);
    assert!(
        t.problem.nodes.is_empty(),
        "a pinned node is outside the optimisation"
    );
    for name in ["a", "b"] {
        assert_eq!(t.budgets[name].pinned_watts, 800.0);
        assert_eq!(t.budgets[name].conflicts.len(), 1);
        let cap = t
            .problem
            .budgets
            .iter()
            .find(|b| b.name == name)
            .expect("budget")
            .cap_watts;
        assert_eq!(cap, 8200.0, "the pinned floor is taken off the cap");
    }
    assert_eq!(
        pod_facts(&t, "p").warnings[0].reason,
        "NodeInConflictingBudgets"
    );
}

#[test]
fn missing_parents_and_cycles_become_roots_with_an_issue() {
    let t = run(
        &[
            budget("orphan", json!({"capWatts": 1.0, "parent": "nowhere"})),
            budget("x", json!({"capWatts": 1.0, "parent": "y"})),
            budget("y", json!({"capWatts": 1.0, "parent": "x"})),
            budget("child", json!({"capWatts": 1.0, "parent": "x"})),
        ],
        &[],
        &[],
        &[],
    );
    assert_eq!(t.budgets["orphan"].parent, None);
    assert_eq!(t.budgets["orphan"].issues[0].reason, "ParentNotFound");
    for name in ["x", "y"] {
        assert_eq!(t.budgets[name].parent, None);
        assert_eq!(t.budgets[name].issues[0].reason, "ParentCycle");
    }
    assert_eq!(t.chains["child"], ["child", "x"]);
    assert!(t.budgets["child"].issues.is_empty());
}

#[test]
fn margin_and_open_windows_lower_the_planning_cap() {
    let t = run(
        &[budget(
            "rack",
            json!({"capWatts": 10000.0, "safetyMarginWatts": 500.0, "schedule": [
            {"name": "noon", "capWatts": 8000.0, "daily": {"start": "11:00", "end": "13:00"}},
            {"name": "night", "capWatts": 6000.0, "daily": {"start": "22:00", "end": "06:00"}}]}),
        )],
        &[],
        &[],
        &[],
    );
    let facts = &t.budgets["rack"];
    assert_eq!(facts.effective.cap_watts, 8000.0);
    assert_eq!(facts.planning_cap_watts, 7500.0);
    assert_eq!(t.problem.budgets[0].cap_watts, 7500.0);
    assert_eq!(t.next_transition, Some(at("2026-11-28T13:00:00Z")));
}

#[test]
fn node_overrides_unknown_models_and_overfull_nodes_are_reported() {
    let mut odd = (*node("n1", json!({}), "2")).clone();
    odd.metadata
        .labels
        .get_or_insert_default()
        .insert(GPU_PRODUCT_LABEL.into(), "Tesla-T4".into());
    odd.metadata.annotations = Some([(OVERHEAD_ANNOTATION.to_owned(), "lots".to_owned())].into());
    let mut tuned = (*node("n2", json!({}), "8")).clone();
    tuned.metadata.annotations = Some([(OVERHEAD_ANNOTATION.to_owned(), "1500".to_owned())].into());
    let t = run(
        &[budget(
            "rack",
            json!({"capWatts": 90000.0, "nodeSelector": {}, "nodeOverheadWatts": 700.0}),
        )],
        &[],
        &[Arc::new(odd), Arc::new(tuned)],
        &[
            pod("big", "n1", 2, json!({WORKLOAD_ANNOTATION: "training"})),
            pod("late", "n1", 1, json!({WORKLOAD_ANNOTATION: "training"})),
        ],
    );
    assert_eq!(t.nodes["n2"].overhead_watts, 1500.0);
    assert_eq!(
        t.nodes["n1"].overhead_watts, 700.0,
        "a malformed override falls back"
    );
    assert_eq!(t.nodes["n1"].slots[0].min_watts, 1000.0);
    let reasons: Vec<&str> = t.budgets["rack"].issues.iter().map(|i| i.reason).collect();
    assert!(
        reasons.contains(&"UnknownGpuModel") && reasons.contains(&"MalformedAnnotation"),
        "{reasons:?}"
    );
    assert_eq!(
        pod_facts(&t, "late").warnings[0].reason,
        "GpusNotInInventory"
    );
    assert_eq!(
        pod_facts(&t, "late").workload,
        None,
        "a pod with no GPU slot left plans nothing"
    );
}

#[test]
fn an_agents_inventory_replaces_the_model_table_and_gpus_it_cannot_see_count_at_their_maximum() {
    let mut unknown = (*node("n1", json!({}), "8")).clone();
    unknown
        .metadata
        .labels
        .get_or_insert_default()
        .insert(GPU_PRODUCT_LABEL.into(), "Tesla-T4".into());
    let inventory = Inventory {
        backend: "nvml".into(),
        gpus: (0..2)
            .map(|index| kilowatt_crds::plan::InventoryGpu {
                index,
                uuid: format!("GPU-{index}"),
                model: "Tesla T4".into(),
                min_limit_watts: 60.0,
                max_limit_watts: 70.0,
                pods: Vec::new(),
            })
            .collect(),
        pods_reported: false,
    };
    let budgets = [budget(
        "rack",
        json!({"capWatts": 9000.0, "nodeSelector": {}}),
    )];
    let t = translate(
        Cluster {
            budgets: &budgets,
            profiles: &[],
            nodes: &[Arc::new(unknown)],
            pods: &[],
            inventories: &BTreeMap::from([("n1".to_owned(), inventory)]),
            holds: &BTreeMap::new(),
            window_lead: std::time::Duration::ZERO,
        },
        at("2026-11-28T12:00:00Z"),
    );
    let slots = &t.nodes["n1"].slots;
    assert_eq!(slots.len(), 2, "only the GPUs the agent sees are planned");
    assert_eq!((slots[1].min_watts, slots[1].max_watts), (60.0, 70.0));
    let rack = &t.budgets["rack"];
    assert_eq!(
        rack.issues.iter().map(|i| i.reason).collect::<Vec<_>>(),
        [reasons::UNSEEN_GPUS],
        "a reported GPU is not unknown; the 6 unseen ones are named"
    );
    let unseen = 6.0 * t.nodes["n1"].model.max_watts;
    assert_eq!(t.nodes["n1"].unseen_watts, unseen);
    assert_eq!(
        rack.pinned_watts, unseen,
        "counted outside the optimisation"
    );
    assert_eq!(rack.floor_watts, 2.0 * 60.0 + unseen);
    assert_eq!(t.problem.budgets[0].cap_watts, 9000.0 - unseen);
}

#[test]
fn an_impossible_inventory_holds_its_node_at_the_model_tables_floors_and_the_rest_is_planned() {
    let budgets = [budget(
        "rack",
        json!({"capWatts": 9000.0, "nodeSelector": {}}),
    )];
    let nodes = [node("n1", json!({}), "2"), node("n2", json!({}), "2")];
    let good = reported_inventory("|");
    let corrupt = |change: &dyn Fn(&mut Inventory)| {
        let mut inventory = reported_inventory("|");
        change(&mut inventory);
        inventory
    };
    let cases: [(&str, Inventory); 4] = [
        ("min 0", corrupt(&|i| i.gpus[0].min_limit_watts = 0.0)),
        (
            "NaN max",
            corrupt(&|i| i.gpus[1].max_limit_watts = f64::NAN),
        ),
        (
            "min above max",
            corrupt(&|i| i.gpus[1].min_limit_watts = 900.0),
        ),
        ("more GPUs than the Node", reported_inventory("|||")),
    ];
    for (case, inventory) in cases {
        let inventories = BTreeMap::from([
            ("n1".to_owned(), inventory),
            ("n2".to_owned(), good.clone()),
        ]);
        let t = translate(
            Cluster {
                budgets: &budgets,
                profiles: &[],
                nodes: &nodes,
                pods: &[],
                inventories: &inventories,
                holds: &BTreeMap::new(),
                window_lead: std::time::Duration::ZERO,
            },
            at("2026-11-28T12:00:00Z"),
        );
        let n1 = &t.nodes["n1"];
        assert!(n1.pinned, "{case}: n1 is held");
        assert_eq!(n1.slots.len(), 2, "{case}: the Node's capacity");
        let table = (n1.model.min_watts, n1.model.max_watts);
        assert_eq!(
            (n1.slots[0].min_watts, n1.slots[0].max_watts),
            table,
            "{case}"
        );
        assert_eq!(
            t.budgets["rack"]
                .issues
                .iter()
                .map(|i| i.reason)
                .collect::<Vec<_>>(),
            [reasons::INVALID_INVENTORY],
            "{case}"
        );
        assert_eq!(
            t.problem
                .nodes
                .iter()
                .map(|n| n.name.as_str())
                .collect::<Vec<_>>(),
            ["n2"],
            "{case}: the other node is still planned"
        );
        assert!(
            kilowatt_solver::solve(&t.problem, &SolveOptions::default()).is_ok(),
            "{case}: the problem solves"
        );
    }
}

#[test]
fn the_crds_bounds_are_the_solvers_bounds() {
    use kube::CustomResourceExt;
    let crd = serde_json::to_value(PowerBudget::crd()).expect("the CRD serialises");
    let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"];
    let maximum = |path: &Value| path["maximum"].as_f64();
    assert_eq!(
        maximum(&spec["capWatts"]),
        Some(kilowatt_solver::MAX_CAP_WATTS)
    );
    assert_eq!(
        maximum(&spec["safetyMarginWatts"]),
        Some(kilowatt_solver::MAX_CAP_WATTS)
    );
    assert_eq!(
        maximum(&spec["schedule"]["items"]["properties"]["capWatts"]),
        Some(kilowatt_solver::MAX_CAP_WATTS)
    );
    assert_eq!(
        maximum(&spec["nodeOverheadWatts"]),
        Some(kilowatt_solver::MAX_DEVICE_WATTS)
    );
}

#[test]
fn efficiency_max_slowdown_becomes_the_solvers_budget_policy_and_its_schema_bounds_it() {
    let budgets = [
        budget(
            "facility",
            json!({"capWatts": 30000.0, "efficiency": {"maxSlowdown": 0.02}}),
        ),
        budget(
            "rack",
            json!({"capWatts": 20000.0, "parent": "facility", "nodeSelector": {}}),
        ),
    ];
    let t = two_node_fleet(&budgets);
    let policy = |name: &str| {
        t.problem
            .budgets
            .iter()
            .find(|b| b.name == name)
            .expect("budget")
            .max_slowdown
    };
    assert_eq!(policy("facility"), Some(0.02));
    assert_eq!(policy("rack"), None);
    assert!(t.budgets["facility"].issues.is_empty());
    let plan = kilowatt_solver::solve(&t.problem, &SolveOptions::default()).expect("solves");
    let efficiency = plan.efficiency.expect("the policy is reported");
    assert_eq!(efficiency.budgets[0].name, "facility");
    assert!(efficiency.saved_watts > 0.0, "{efficiency:?}");

    use kube::CustomResourceExt;
    let crd = serde_json::to_value(PowerBudget::crd()).expect("the CRD serialises");
    let field = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
        ["efficiency"]["properties"]["maxSlowdown"];
    assert_eq!(field["minimum"].as_f64(), Some(0.0));
    assert_eq!(field["x-kubernetes-validations"][0]["rule"], "self < 1.0");
}

#[test]
fn a_max_slowdown_outside_zero_to_one_is_planned_without_the_policy_and_named() {
    for bad in [1.0, -0.1, 7.0] {
        let budgets = [budget(
            "rack",
            json!({"capWatts": 20000.0, "nodeSelector": {}, "efficiency": {"maxSlowdown": bad}}),
        )];
        let t = two_node_fleet(&budgets);
        let rack = &t.budgets["rack"];
        assert_eq!(rack.max_slowdown, None, "{bad}");
        assert_eq!(rack.issues[0].reason, reasons::INVALID_EFFICIENCY);
        assert!(rack.issues[0].message.contains("maxSlowdown"), "{bad}");
        assert_eq!(t.problem.budgets[0].max_slowdown, None);
        assert!(kilowatt_solver::solve(&t.problem, &SolveOptions::default()).is_ok());
    }
}

#[test]
fn a_cap_above_the_solvers_range_is_planned_at_its_maximum_and_named() {
    let budgets = [budget(
        "rack",
        json!({"capWatts": 1e300, "nodeSelector": {}}),
    )];
    let t = run(&budgets, &[], &[node("n1", json!({}), "2")], &[]);
    let rack = &t.budgets["rack"];
    assert_eq!(rack.issues[0].reason, reasons::CAP_OUT_OF_RANGE);
    assert_eq!(rack.planning_cap_watts, kilowatt_solver::MAX_CAP_WATTS);
    assert!(kilowatt_solver::solve(&t.problem, &SolveOptions::default()).is_ok());
}

/// An H100 inventory with one GPU per `|`-separated entry of `holders`, each held by the pods (of
/// namespace `ml`) its entry lists, separated by `+`: `"b|b||a+c"` is four GPUs, the third free.
fn reported_inventory(holders: &str) -> Inventory {
    Inventory {
        backend: "nvml".into(),
        gpus: holders
            .split('|')
            .zip(0..)
            .map(|(pods, index)| kilowatt_crds::plan::InventoryGpu {
                index,
                uuid: format!("GPU-{index}"),
                model: "NVIDIA H100 80GB HBM3".into(),
                min_limit_watts: 200.0,
                max_limit_watts: 700.0,
                pods: pods
                    .split('+')
                    .filter(|p| !p.is_empty())
                    .map(|p| format!("ml/{p}"))
                    .collect(),
            })
            .collect(),
        pods_reported: true,
    }
}

fn slot_pods(t: &Translation, node: &str) -> Vec<Option<String>> {
    t.nodes[node].slots.iter().map(|s| s.pod.clone()).collect()
}

#[test]
fn pods_take_the_gpus_their_agent_reports_and_unlisted_pods_only_unheld_ones() {
    let budgets = [budget(
        "rack",
        json!({"capWatts": 9000.0, "nodeSelector": {}}),
    )];
    let training = json!({WORKLOAD_ANNOTATION: "training"});
    let pods = [
        pod("a", "n1", 2, training.clone()),
        pod("b", "n1", 2, json!({WORKLOAD_ANNOTATION: "inference"})),
        pod("c", "n1", 1, training.clone()),
    ];
    let nodes = [node("n1", json!({}), "6")];
    let translate_with = |inventory: Inventory| {
        translate(
            Cluster {
                budgets: &budgets,
                profiles: &[],
                nodes: &nodes,
                pods: &pods,
                inventories: &BTreeMap::from([("n1".to_owned(), inventory)]),
                holds: &BTreeMap::new(),
                window_lead: std::time::Duration::ZERO,
            },
            at("2026-11-28T12:00:00Z"),
        )
    };
    let held = |p: &str| Some(format!("ml/{p}"));

    // The kubelet gave `b` (started first) GPUs 0 and 1, `a` GPUs 3 and 4; `c` is not listed yet,
    // and GPU 2 still shows `gone`, a pod that has left.
    let t = translate_with(reported_inventory("b|b|gone|a|a|"));
    assert_eq!(
        slot_pods(&t, "n1"),
        [held("b"), held("b"), None, held("a"), held("a"), held("c")],
        "a and b on their reported GPUs; c on the GPU nobody holds before the stale one"
    );
    assert_eq!(t.awaiting_gpu_report, ["ml/c"]);
    let workload_gpus = |name: &str| -> Vec<String> {
        t.problem
            .workloads
            .iter()
            .find(|w| w.name == name)
            .map(|w| w.gpus.clone())
            .unwrap_or_default()
    };
    assert_eq!(workload_gpus("ml/a"), ["n1/gpu3", "n1/gpu4"]);
    assert_eq!(workload_gpus("ml/b"), ["n1/gpu0", "n1/gpu1"]);

    // With no unheld GPU left, an unlisted pod takes the one of a pod that has left.
    let t = translate_with(reported_inventory("b|b|gone|a|a|a"));
    assert_eq!(slot_pods(&t, "n1")[2], held("c"));
    assert_eq!(
        slot_pods(&t, "n1")[5],
        None,
        "a takes only the two it asks for"
    );

    // A GPU time-sliced between a and c goes to a, the first by name; c is told.
    let t = translate_with(reported_inventory("b|b||a|a+c|"));
    assert_eq!(slot_pods(&t, "n1")[4], held("a"));
    assert!(t.awaiting_gpu_report.is_empty(), "c is listed");
    assert_eq!(
        pod_facts(&t, "c").warnings[0].reason,
        "GpusNotInInventory",
        "{:?}",
        pod_facts(&t, "c").warnings
    );
    assert!(pod_facts(&t, "c").workload.is_none(), "c plans nothing");

    // Without a report the pods take the slots in name order, as before.
    let mut unreported = reported_inventory("|||||");
    unreported.pods_reported = false;
    let t = translate_with(unreported);
    assert_eq!(
        slot_pods(&t, "n1"),
        [held("a"), held("a"), held("b"), held("b"), held("c"), None]
    );
    assert!(t.awaiting_gpu_report.is_empty());
}

#[test]
fn finished_and_unbound_pods_hold_no_gpus() {
    let mut done = (*pod("done", "n1", 8, json!({WORKLOAD_ANNOTATION: "training"}))).clone();
    done.status.get_or_insert_default().phase = Some("Succeeded".into());
    let mut pending = (*pod("pending", "n1", 8, json!({WORKLOAD_ANNOTATION: "training"}))).clone();
    pending.spec.get_or_insert_default().node_name = None;
    let t = run(
        &[budget(
            "rack",
            json!({"capWatts": 9000.0, "nodeSelector": {}}),
        )],
        &[],
        &[node("n1", json!({}), "8")],
        &[Arc::new(done), Arc::new(pending)],
    );
    assert!(t.pods.is_empty());
    assert!(t.nodes["n1"].slots.iter().all(|s| s.pod.is_none()));
}

#[test]
fn an_invalid_selector_operator_selects_nothing_and_says_why() {
    let t = run(
        &[budget(
            "rack",
            json!({"capWatts": 9000.0,
            "nodeSelector": {"matchExpressions": [{"key": "rack", "operator": "Near"}]}}),
        )],
        &[],
        &[node("n1", json!({"rack": "a"}), "8")],
        &[],
    );
    assert!(t.nodes.is_empty());
    assert_eq!(t.budgets["rack"].issues[0].reason, "InvalidNodeSelector");
    assert!(t.budgets["rack"].issues[0].message.contains("Near"));
}

#[test]
fn a_profile_made_for_a_job_comes_after_selectors_and_before_the_default() {
    let for_job = |name: &str, job: &str, selector: Option<Value>| {
        let mut profile = (*profile(name, selector)).clone();
        profile.spec.job = Some(job.to_owned());
        Arc::new(profile)
    };
    let profiles = [
        for_job("chat-learned", "chat", None),
        profile("by-selector", Some(json!({"matchLabels": {"app": "sel"}}))),
        for_job("sel-learned", "sel", None),
    ];
    let t = run(
        &[budget(
            "rack",
            json!({"capWatts": 20000.0, "nodeSelector": {}}),
        )],
        &profiles,
        &[node("n1", json!({}), "8")],
        &[
            pod(
                "chat-0",
                "n1",
                2,
                json!({WORKLOAD_ANNOTATION: "inference", JOB_ANNOTATION: "chat"}),
            ),
            pod("sel", "n1", 2, json!({WORKLOAD_ANNOTATION: "inference"})),
            pod("other", "n1", 2, json!({WORKLOAD_ANNOTATION: "training"})),
        ],
    );
    assert_eq!(
        pod_facts(&t, "chat-0").profile,
        Some(ProfileSource::ForJob("chat-learned".into()))
    );
    assert_eq!(
        pod_facts(&t, "sel").profile,
        Some(ProfileSource::Selected("by-selector".into()))
    );
    assert_eq!(
        t.profile_pods[&("ml".to_owned(), "chat-learned".to_owned())],
        1
    );
    // Only the job on a default curve is one the operator may make a profile for.
    assert_eq!(
        t.unprofiled.keys().collect::<Vec<_>>(),
        vec![&"ml/other".to_owned()]
    );
    let other = &t.unprofiled["ml/other"];
    assert_eq!(
        (
            other.namespace.as_str(),
            other.job.as_str(),
            other.model.name
        ),
        ("ml", "other", "H100-SXM")
    );
    assert_eq!(other.kind, model::WorkloadKind::Training);
}
