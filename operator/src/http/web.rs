//! The live web page (`GET /`) and the data behind it (`GET /api/v1/overview`): the budget tree with
//! cap, allocated and measured watts, each workload's setting, the last solve, and recent plan changes
//! with their reasons. The operator and `kilowatt simulate` record every pass into a [`Feed`]; the page
//! only reads. Building the overview is pure; serving it is network IO.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use k8s_openapi::jiff::Timestamp;
use kilowatt_solver::model::WorkloadKind;
use serde::Serialize;

use crate::plan::published::PublishedPlan;

/// The page itself: one file of HTML, CSS and JS, nothing fetched from elsewhere.
const PAGE: &str = include_str!("web/index.html");

/// How many plan changes the page lists.
const CHANGES_KEPT: usize = 30;

/// Everything the page shows.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Overview {
    /// `operator` or `simulate`.
    pub source: &'static str,
    /// When this overview was last updated (simulated time in `kilowatt simulate`).
    pub generated_at: String,
    pub plan: Option<PlanFacts>,
    pub budgets: Vec<BudgetView>,
    pub workloads: Vec<WorkloadView>,
    /// Newest first.
    pub changes: Vec<Change>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub simulation: Option<SimulationView>,
}

/// The plan in force and how it was solved.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanFacts {
    pub revision: u64,
    pub status: String,
    pub method: String,
    pub gap: f64,
    pub objective: f64,
    pub upper_bound: f64,
    pub solved_at: String,
    /// Wall-clock time of the last solve by this process.
    pub solve_seconds: Option<f64>,
}

/// One budget's bar.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BudgetView {
    pub name: String,
    pub parent: Option<String>,
    /// The spec's `capWatts`.
    pub cap_watts: f64,
    /// The cap in force (schedule windows applied).
    pub effective_cap_watts: f64,
    pub allocated_watts: f64,
    /// What the agents under it last measured, plus overheads; `None` before any report.
    pub measured_watts: Option<f64>,
    pub headroom_watts: f64,
    pub nodes: u32,
    pub gpus: u32,
    pub normalized_throughput: f64,
    pub open_windows: Vec<String>,
}

/// One workload's row.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadView {
    pub name: String,
    pub kind: WorkloadKind,
    pub gpus: u32,
    pub power_limit_watts: f64,
    #[serde(rename = "smClockMHz")]
    pub sm_clock_mhz: Option<u32>,
    pub normalized_throughput: f64,
    /// GPUs × limit.
    pub planned_watts: f64,
    pub profile: String,
}

/// A new plan revision and why it came.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Change {
    pub at: String,
    pub revision: u64,
    pub reasons: Vec<String>,
}

/// Progress of `kilowatt simulate` and its runs so far.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SimulationView {
    pub simulated_seconds: f64,
    pub duration_seconds: f64,
    pub finished: bool,
    pub runs: Vec<RunView>,
}

/// One run of the scenario (Kilowatt, uniform capping, no capping) so far.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RunView {
    pub name: String,
    pub normalized_throughput: f64,
    pub energy_joules: f64,
    /// CO₂ of that energy, when the scenario gives a carbon intensity.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub carbon_grams: Option<f64>,
    pub samples_over_cap: u64,
}

fn kilowatts(watts: f64) -> String {
    format!("{:.1} kW", watts / 1000.0)
}

/// Why `next` differs from `previous`, in words: caps (with the schedule windows that moved them),
/// budgets, workloads and nodes that came or went, feasibility. A revision that changes none of these is
/// either a rollout step (same targets, raises written now that acknowledgements made room) or a
/// re-plan for inputs the plan does not show (profiles, annotations, agents' inventories).
pub fn changes(previous: Option<&PublishedPlan>, next: &PublishedPlan) -> Vec<String> {
    let Some(previous) = previous else {
        return vec![format!(
            "first plan seen by this process ({} budgets, {} workloads, {} nodes)",
            next.budgets.len(),
            next.workloads.len(),
            next.nodes.len()
        )];
    };
    let mut reasons = Vec::new();
    // NB: optimal ↔ feasible only says whether the solver proved optimality; not a reason.
    match (previous.status.as_str(), next.status.as_str()) {
        (old, "infeasible") if old != "infeasible" => reasons.push(format!(
            "infeasible: the floors exceed the cap of {}; every GPU at its minimum",
            next.infeasible_budgets.join(", ")
        )),
        ("infeasible", new) if new != "infeasible" => reasons.push("feasible again".to_owned()),
        _ => {}
    }
    let before: BTreeMap<&str, _> = previous
        .budgets
        .iter()
        .map(|b| (b.name.as_str(), b))
        .collect();
    let after: BTreeSet<&str> = next.budgets.iter().map(|b| b.name.as_str()).collect();
    for budget in &next.budgets {
        let Some(old) = before.get(budget.name.as_str()) else {
            reasons.push(format!(
                "budget {} added ({})",
                budget.name,
                kilowatts(budget.effective_cap_watts)
            ));
            continue;
        };
        if old.effective_cap_watts == budget.effective_cap_watts {
            continue;
        }
        let opened: Vec<&str> = budget
            .open_windows
            .iter()
            .filter(|w| !old.open_windows.contains(w))
            .map(String::as_str)
            .collect();
        let closed: Vec<&str> = old
            .open_windows
            .iter()
            .filter(|w| !budget.open_windows.contains(w))
            .map(String::as_str)
            .collect();
        let why = match (opened.is_empty(), closed.is_empty()) {
            (true, true) => "capWatts edited".to_owned(),
            (false, true) => format!("window {} opened", opened.join(", ")),
            (true, false) => format!("window {} closed", closed.join(", ")),
            (false, false) => format!(
                "window {} opened, {} closed",
                opened.join(", "),
                closed.join(", ")
            ),
        };
        reasons.push(format!(
            "cap of {} {} → {} ({why})",
            budget.name,
            kilowatts(old.effective_cap_watts),
            kilowatts(budget.effective_cap_watts)
        ));
    }
    for name in before.keys().filter(|name| !after.contains(*name)) {
        reasons.push(format!("budget {name} removed"));
    }
    let old_workloads: BTreeMap<&str, u32> = previous
        .workloads
        .iter()
        .map(|w| (w.name.as_str(), w.gpus))
        .collect();
    let new_workloads: BTreeMap<&str, u32> = next
        .workloads
        .iter()
        .map(|w| (w.name.as_str(), w.gpus))
        .collect();
    for workload in &next.workloads {
        match old_workloads.get(workload.name.as_str()) {
            None => reasons.push(format!(
                "workload {} arrived ({} GPUs, {})",
                workload.name,
                workload.gpus,
                match workload.kind {
                    WorkloadKind::Training => "training",
                    WorkloadKind::Inference => "inference",
                }
            )),
            Some(&gpus) if gpus != workload.gpus => reasons.push(format!(
                "workload {} now on {} GPUs (was {gpus})",
                workload.name, workload.gpus
            )),
            Some(_) => {}
        }
    }
    for name in old_workloads
        .keys()
        .filter(|name| !new_workloads.contains_key(*name))
    {
        reasons.push(format!("workload {name} left; its GPUs go to their floors"));
    }
    let joined: Vec<&str> = next
        .nodes
        .keys()
        .filter(|n| !previous.nodes.contains_key(*n))
        .map(String::as_str)
        .collect();
    if !joined.is_empty() {
        reasons.push(format!("nodes joined the plan: {}", joined.join(", ")));
    }
    let left: Vec<&str> = previous
        .nodes
        .keys()
        .filter(|n| !next.nodes.contains_key(*n))
        .map(String::as_str)
        .collect();
    if !left.is_empty() {
        reasons.push(format!("nodes left the plan: {}", left.join(", ")));
    }
    if reasons.is_empty() {
        reasons.push(if previous.same_content(next) {
            "rollout step: raises written now that acknowledgements made room".to_owned()
        } else {
            "re-planned: profiles, annotations or agents' inventories changed".to_owned()
        });
    }
    reasons
}

/// What the page shows, kept current by whoever plans.
#[derive(Debug)]
pub struct Feed {
    state: Mutex<FeedState>,
}

#[derive(Debug)]
struct FeedState {
    overview: Overview,
    /// The plan of the last recorded change, to explain the next one.
    last_plan: Option<PublishedPlan>,
    changes: VecDeque<Change>,
}

/// One pass's results, as the feed records them.
#[derive(Debug, Clone, Copy)]
pub struct PassRecord<'a> {
    pub plan: &'a PublishedPlan,
    /// Each budget's spec `capWatts`.
    pub spec_caps: &'a BTreeMap<String, f64>,
    pub measured: &'a BTreeMap<String, f64>,
    pub solve_seconds: f64,
    pub now: Timestamp,
}

impl Feed {
    pub fn new(source: &'static str) -> Arc<Feed> {
        Arc::new(Feed {
            state: Mutex::new(FeedState {
                overview: Overview {
                    source,
                    generated_at: Timestamp::UNIX_EPOCH.to_string(),
                    plan: None,
                    budgets: Vec::new(),
                    workloads: Vec::new(),
                    changes: Vec::new(),
                    simulation: None,
                },
                last_plan: None,
                changes: VecDeque::new(),
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FeedState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records the plan in force after a pass; a new revision is listed as a change with its reasons.
    pub fn record(&self, pass: PassRecord<'_>) {
        let mut state = self.lock();
        let plan = pass.plan;
        let now = pass.now.to_string();
        if state.last_plan.as_ref().map(|p| p.revision) != Some(plan.revision) {
            let reasons = changes(state.last_plan.as_ref(), plan);
            state.changes.push_front(Change {
                at: now.clone(),
                revision: plan.revision,
                reasons,
            });
            state.changes.truncate(CHANGES_KEPT);
            state.last_plan = Some(plan.clone());
        }
        let changes: Vec<Change> = state.changes.iter().cloned().collect();
        let overview = &mut state.overview;
        overview.changes = changes;
        overview.generated_at = now;
        overview.plan = Some(PlanFacts {
            revision: plan.revision,
            status: plan.status.clone(),
            method: plan.method.clone(),
            gap: plan.gap,
            objective: plan.objective,
            upper_bound: plan.upper_bound,
            solved_at: plan.solved_at.clone(),
            solve_seconds: Some(pass.solve_seconds),
        });
        overview.budgets = plan
            .budgets
            .iter()
            .map(|b| BudgetView {
                name: b.name.clone(),
                parent: b.parent.clone(),
                cap_watts: pass
                    .spec_caps
                    .get(&b.name)
                    .copied()
                    .unwrap_or(b.effective_cap_watts),
                effective_cap_watts: b.effective_cap_watts,
                allocated_watts: b.allocated_watts,
                measured_watts: pass.measured.get(&b.name).copied(),
                headroom_watts: b.headroom_watts,
                nodes: b.nodes,
                gpus: b.gpus,
                normalized_throughput: b.normalized_throughput,
                open_windows: b.open_windows.clone(),
            })
            .collect();
        overview.workloads = plan
            .workloads
            .iter()
            .map(|w| WorkloadView {
                name: w.name.clone(),
                kind: w.kind,
                gpus: w.gpus,
                power_limit_watts: w.power_limit_watts,
                sm_clock_mhz: w.sm_clock_mhz,
                normalized_throughput: w.normalized_throughput,
                planned_watts: f64::from(w.gpus) * w.power_limit_watts,
                profile: w.profile.clone(),
            })
            .collect();
    }

    /// Sets the simulation's progress (only `kilowatt simulate` calls this).
    pub fn set_simulation(&self, simulation: SimulationView, now: Timestamp) {
        let mut state = self.lock();
        state.overview.simulation = Some(simulation);
        state.overview.generated_at = now.to_string();
    }

    pub fn overview(&self) -> Overview {
        self.lock().overview.clone()
    }
}

async fn page() -> Html<&'static str> {
    Html(PAGE)
}

async fn overview(State(feed): State<Arc<Feed>>) -> Response {
    (
        [(header::CACHE_CONTROL, "no-store")],
        axum::Json(feed.overview()),
    )
        .into_response()
}

/// `GET /` (the page) and `GET /api/v1/overview` (its data).
pub fn router(feed: Arc<Feed>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/api/v1/overview", get(overview))
        .with_state(feed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::published::{BudgetSummary, WorkloadSummary};
    use kilowatt_crds::plan::NodePlan;

    fn budget(name: &str, cap: f64, windows: &[&str]) -> BudgetSummary {
        BudgetSummary {
            name: name.into(),
            parent: None,
            effective_cap_watts: cap,
            planning_cap_watts: cap,
            allocated_watts: cap,
            headroom_watts: 0.0,
            nodes: 1,
            gpus: 8,
            normalized_throughput: 1.0,
            open_windows: windows.iter().map(|w| (*w).to_owned()).collect(),
            efficiency: None,
        }
    }

    fn workload(name: &str, gpus: u32) -> WorkloadSummary {
        WorkloadSummary {
            name: name.into(),
            kind: WorkloadKind::Training,
            pods: vec![name.into()],
            gpus,
            power_limit_watts: 500.0,
            sm_clock_mhz: None,
            normalized_throughput: 0.9,
            profile: "p".into(),
        }
    }

    fn plan(
        revision: u64,
        budgets: Vec<BudgetSummary>,
        workloads: Vec<WorkloadSummary>,
    ) -> PublishedPlan {
        let nodes = BTreeMap::from([(
            "n1".to_owned(),
            NodePlan::with_limits("n1", revision, &[500.0], 200.0),
        )]);
        crate::plan::published::test_plan(revision, budgets, workloads, nodes)
    }

    #[test]
    fn a_window_that_cuts_a_cap_is_named_with_both_caps() {
        let before = plan(
            1,
            vec![budget("facility", 150_000.0, &[])],
            vec![workload("ml/a", 8)],
        );
        let after = plan(
            2,
            vec![budget("facility", 90_000.0, &["dr"])],
            vec![workload("ml/a", 8)],
        );
        assert_eq!(
            changes(Some(&before), &after),
            vec!["cap of facility 150.0 kW → 90.0 kW (window dr opened)"]
        );
        let back = plan(
            3,
            vec![budget("facility", 150_000.0, &[])],
            vec![workload("ml/a", 8)],
        );
        assert_eq!(
            changes(Some(&after), &back),
            vec!["cap of facility 90.0 kW → 150.0 kW (window dr closed)"]
        );
        let edited = plan(
            4,
            vec![budget("facility", 120_000.0, &[])],
            vec![workload("ml/a", 8)],
        );
        assert_eq!(
            changes(Some(&back), &edited),
            vec!["cap of facility 150.0 kW → 120.0 kW (capWatts edited)"]
        );
    }

    #[test]
    fn workloads_that_come_go_or_resize_are_named() {
        let before = plan(
            1,
            vec![budget("f", 1.0, &[])],
            vec![workload("ml/a", 8), workload("ml/b", 8)],
        );
        let after = plan(
            2,
            vec![budget("f", 1.0, &[])],
            vec![workload("ml/a", 16), workload("ml/c", 4)],
        );
        assert_eq!(
            changes(Some(&before), &after),
            vec![
                "workload ml/a now on 16 GPUs (was 8)",
                "workload ml/c arrived (4 GPUs, training)",
                "workload ml/b left; its GPUs go to their floors",
            ]
        );
    }

    #[test]
    fn a_revision_with_the_same_targets_is_a_rollout_step_and_infeasibility_is_named() {
        let before = plan(1, vec![budget("f", 1.0, &[])], vec![workload("ml/a", 8)]);
        let step = PublishedPlan {
            revision: 2,
            ..before.clone()
        };
        assert_eq!(
            changes(Some(&before), &step),
            vec!["rollout step: raises written now that acknowledgements made room"]
        );
        let mut infeasible = before.clone();
        infeasible.revision = 3;
        infeasible.status = "infeasible".into();
        infeasible.infeasible_budgets = vec!["f".into()];
        assert_eq!(
            changes(Some(&before), &infeasible),
            vec!["infeasible: the floors exceed the cap of f; every GPU at its minimum"]
        );
        assert!(changes(None, &before)[0].starts_with("first plan seen by this process"));
    }

    #[test]
    fn the_feed_lists_each_revision_once_newest_first() {
        let feed = Feed::new("operator");
        let caps = BTreeMap::from([("f".to_owned(), 2.0)]);
        let measured = BTreeMap::from([("f".to_owned(), 0.5)]);
        let now: Timestamp = "2026-12-01T12:00:00Z".parse().expect("time");
        let first = plan(1, vec![budget("f", 1.0, &[])], vec![workload("ml/a", 8)]);
        let second = plan(2, vec![budget("f", 1.0, &[])], vec![]);
        for plan in [&first, &first, &second] {
            feed.record(PassRecord {
                plan,
                spec_caps: &caps,
                measured: &measured,
                solve_seconds: 0.001,
                now,
            });
        }
        let overview = feed.overview();
        let revisions: Vec<u64> = overview.changes.iter().map(|c| c.revision).collect();
        assert_eq!(revisions, vec![2, 1]);
        assert_eq!(overview.budgets[0].cap_watts, 2.0);
        assert_eq!(overview.budgets[0].measured_watts, Some(0.5));
        assert!(overview.workloads.is_empty());
        let json = serde_json::to_value(&overview).expect("encodes");
        assert_eq!(json["plan"]["solveSeconds"], 0.001);
        assert!(json.get("simulation").is_none());
    }
}
