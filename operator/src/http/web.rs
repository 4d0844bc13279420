//! The live web page (`GET /`) and the data behind it (`GET /api/v1/overview`): the budget tree with
//! cap, allocated and measured watts, a bounded history of them for the live chart, each workload's
//! setting with its declared and learned curves, the last solve, and recent plan changes with their
//! reasons. The operator and `kilowatt simulate` record every pass into a [`Feed`]; the page only
//! reads. Building the overview is pure; serving it is network IO.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use k8s_openapi::jiff::Timestamp;
use kilowatt_solver::model::{ProfilePoint, WorkloadKind};
use serde::Serialize;

use crate::plan::learning::{self, LearnedCurve, LearnedPoint, Learner};
use crate::plan::published::PublishedPlan;
use crate::plan::translate::Translation;

/// The page itself: one file of HTML, CSS and JS, nothing fetched from elsewhere.
const PAGE: &str = include_str!("web/index.html");

/// How many plan changes the page lists.
const CHANGES_KEPT: usize = 30;

/// How many samples the live chart keeps: an hour at one pass every 10 s.
pub const HISTORY_KEPT: usize = 360;

/// How many points of each curve, declared or learned, the page gets for one workload. Profiles have
/// tens of points; a learned curve has one per 5 W bin measured, so a full sweep stays under it.
pub const CURVE_POINTS_KEPT: usize = 80;

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
    /// The live chart's samples, oldest first, at most [`HISTORY_KEPT`].
    pub history: Vec<Sample>,
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
    /// Its declared and learned curves; `None` until a pass that planned it was recorded.
    pub curve: Option<CurveView>,
}

/// A workload's curves as the page draws them. Throughput is normalized as everywhere on the page, to
/// a fraction of the declared curve's best; learned rates (in the work counter's unit) are put on that
/// scale at the highest point measured, where the planner anchors the declared curve too.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CurveView {
    /// The profile's points the workload was planned on before anything was measured, by power; at
    /// most [`CURVE_POINTS_KEPT`], evenly picked.
    pub declared: Vec<CurvePoint>,
    /// Bins measured, by power; the [`CURVE_POINTS_KEPT`] measured last.
    pub learned: Vec<LearnedView>,
    /// Bins measured in all.
    pub learned_total: usize,
}

/// One declared point.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CurvePoint {
    pub power_watts: f64,
    #[serde(rename = "smClockMHz")]
    pub sm_clock_mhz: Option<u32>,
    pub normalized_throughput: f64,
}

/// One learned bin, with the fields of a WorkloadProfile's `status.measured` point.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LearnedView {
    pub power_watts: f64,
    #[serde(rename = "smClockMHz")]
    pub sm_clock_mhz: Option<u32>,
    /// Mean rate per GPU of the saturated windows, in the counter's unit; the highest lower bound when
    /// `lowerBound` is set.
    pub throughput: f64,
    /// `throughput` on the declared curve's scale; `None` when there is nothing to anchor it on (no
    /// declared curve, or a declared rate of zero there).
    pub normalized_throughput: Option<f64>,
    /// Saturated windows.
    pub windows: u32,
    pub spread: f64,
    /// No saturated window measured this bin: its windows measured demand, so its rate only bounds
    /// the curve from below.
    pub lower_bound: bool,
    /// Enough windows for the solver to plan on it.
    pub converged: bool,
    pub last_measured: String,
}

/// One sample of the live chart.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Sample {
    /// Seconds since the Unix epoch (simulated time in `kilowatt simulate`).
    pub seconds: f64,
    /// The root budgets (disjoint, so their sums are the fleet's).
    pub budgets: Vec<BudgetSample>,
    /// GPU-weighted mean of the workloads' normalized throughput.
    pub normalized_throughput: f64,
}

/// One root budget in a [`Sample`].
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BudgetSample {
    pub name: String,
    /// The cap in force.
    pub cap_watts: f64,
    pub allocated_watts: f64,
    pub measured_watts: Option<f64>,
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

/// Each planned workload's declared and learned curves, from a pass's translation and what was
/// learned so far (`None`: a run that does not learn).
pub fn curve_views(
    translation: &Translation,
    learner: Option<&Learner>,
) -> BTreeMap<String, CurveView> {
    translation
        .problem
        .workloads
        .iter()
        .map(|w| {
            let learned = learner.and_then(|l| l.curve(&w.name));
            (
                w.name.clone(),
                curve_view(translation.declared_profile(w), learned),
            )
        })
        .collect()
}

/// What a learned bin says the workload does there: the mean of its saturated windows, else the
/// highest lower bound.
fn rate(point: &LearnedPoint) -> f64 {
    if point.windows > 0 {
        point.throughput
    } else {
        point.lower_bound
    }
}

fn curve_view(declared: &[ProfilePoint], learned: Option<&LearnedCurve>) -> CurveView {
    let mut declared = declared.to_vec();
    declared.sort_by(|a, b| a.power_watts.total_cmp(&b.power_watts));
    let best = declared.iter().map(|p| p.throughput).fold(0.0, f64::max);
    let normalize = |throughput: f64| {
        if best > 0.0 { throughput / best } else { 0.0 }
    };
    let mut points: Vec<&LearnedPoint> = learned.map(|c| c.points().collect()).unwrap_or_default();
    let learned_total = points.len();
    // The converged power-limit point `merged` anchors the declared curve on; before any converges,
    // the highest bin with a rate, so that early measurements show where they fall too.
    let anchor = points
        .iter()
        .rev()
        .find(|p| p.converged() && p.sm_clock_mhz.is_none())
        .or_else(|| points.iter().rev().find(|p| rate(p) > 0.0))
        .copied();
    let to_declared = anchor.and_then(|p| {
        let at = learning::interpolate(&declared, p.power_watts);
        (at > 0.0 && rate(p) > 0.0).then(|| at / rate(p))
    });
    if points.len() > CURVE_POINTS_KEPT {
        points.sort_by_key(|p| std::cmp::Reverse(p.last_measured));
        points.truncate(CURVE_POINTS_KEPT);
        points.sort_by(|a, b| a.power_watts.total_cmp(&b.power_watts));
    }
    CurveView {
        declared: evenly(&declared, CURVE_POINTS_KEPT)
            .map(|p| CurvePoint {
                power_watts: p.power_watts,
                sm_clock_mhz: p.sm_clock_mhz,
                normalized_throughput: normalize(p.throughput),
            })
            .collect(),
        learned: points
            .iter()
            .map(|p| LearnedView {
                power_watts: p.power_watts,
                sm_clock_mhz: p.sm_clock_mhz,
                throughput: rate(p),
                normalized_throughput: to_declared.map(|k| normalize(k * rate(p))),
                windows: p.windows,
                spread: p.spread,
                lower_bound: p.windows == 0,
                converged: p.converged(),
                last_measured: p.last_measured.to_string(),
            })
            .collect(),
        learned_total,
    }
}

/// At most `kept` of `items`, evenly spaced, the first and the last among them.
fn evenly<T>(items: &[T], kept: usize) -> impl Iterator<Item = &T> {
    let n = items.len();
    let picks = n.min(kept);
    (0..picks).map(move |i| {
        let index = if picks > 1 {
            i * (n - 1) / (picks - 1)
        } else {
            0
        };
        &items[index]
    })
}

/// The live chart's sample of a plan: its root budgets and the fleet's throughput.
fn sample(plan: &PublishedPlan, measured: &BTreeMap<String, f64>, now: Timestamp) -> Sample {
    let names: BTreeSet<&str> = plan.budgets.iter().map(|b| b.name.as_str()).collect();
    let budgets = plan
        .budgets
        .iter()
        .filter(|b| b.parent.as_deref().is_none_or(|p| !names.contains(p)))
        .map(|b| BudgetSample {
            name: b.name.clone(),
            cap_watts: b.effective_cap_watts,
            allocated_watts: b.allocated_watts,
            measured_watts: measured.get(&b.name).copied(),
        })
        .collect();
    let gpus: f64 = plan.workloads.iter().map(|w| f64::from(w.gpus)).sum();
    let weighted: f64 = plan
        .workloads
        .iter()
        .map(|w| f64::from(w.gpus) * w.normalized_throughput)
        .sum();
    Sample {
        seconds: now.as_millisecond() as f64 / 1000.0,
        budgets,
        normalized_throughput: if gpus > 0.0 { weighted / gpus } else { 0.0 },
    }
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
    history: VecDeque<Sample>,
    /// The least time between two kept samples; the newest is always kept, and replaced by the next
    /// unless it came that long after the sample before it.
    history_spacing_seconds: f64,
    /// By workload, from the last pass.
    curves: BTreeMap<String, CurveView>,
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
                    history: Vec::new(),
                    changes: Vec::new(),
                    simulation: None,
                },
                last_plan: None,
                changes: VecDeque::new(),
                history: VecDeque::new(),
                history_spacing_seconds: 0.0,
                curves: BTreeMap::new(),
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
        let sample = sample(plan, pass.measured, pass.now);
        // NB: simulate records a pass and its progress at the same instant; one sample per instant.
        let same_instant = state
            .history
            .back()
            .is_some_and(|last| last.seconds == sample.seconds);
        // The newest sample stays only if it came far enough after the one kept before it.
        let len = state.history.len();
        let too_close = len >= 2
            && state.history[len - 1].seconds - state.history[len - 2].seconds
                < state.history_spacing_seconds;
        if same_instant || too_close {
            state.history.pop_back();
        }
        state.history.push_back(sample);
        while state.history.len() > HISTORY_KEPT {
            state.history.pop_front();
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
                curve: None,
            })
            .collect();
    }

    /// Sets the simulation's progress (only `kilowatt simulate` calls this).
    pub fn set_simulation(&self, simulation: SimulationView, now: Timestamp) {
        let mut state = self.lock();
        state.overview.simulation = Some(simulation);
        state.overview.generated_at = now.to_string();
    }

    /// Keeps samples of the live chart at least `seconds` apart (`kilowatt simulate` spreads its
    /// [`HISTORY_KEPT`] over the run; the operator keeps one per pass).
    pub fn space_history(&self, seconds: f64) {
        self.lock().history_spacing_seconds = seconds;
    }

    /// Keeps each workload's curves from a pass, for the rows of the next overview.
    pub fn set_curves(&self, curves: BTreeMap<String, CurveView>) {
        self.lock().curves = curves;
    }

    pub fn overview(&self) -> Overview {
        let state = self.lock();
        let mut overview = state.overview.clone();
        overview.history = state.history.iter().cloned().collect();
        for workload in &mut overview.workloads {
            workload.curve = state.curves.get(&workload.name).cloned();
        }
        overview
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
    use crate::plan::translate;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use kilowatt_crds::plan::NodePlan;
    use kilowatt_crds::{MeasuredCurve, MeasuredPoint};

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

    fn measured(
        power_watts: f64,
        windows: u32,
        throughput: f64,
        lower_bound: Option<f64>,
    ) -> MeasuredPoint {
        MeasuredPoint {
            power_watts,
            sm_clock_mhz: None,
            throughput,
            windows,
            spread: 0.0,
            lower_bound,
            last_measured: Time("2026-12-01T12:00:00Z".parse().expect("time")),
        }
    }

    fn learner_of(workload: &str, points: Vec<MeasuredPoint>) -> Learner {
        let mut learner = Learner::default();
        learner.restore(&MeasuredCurve {
            workload: workload.to_owned(),
            windows_accepted: 0,
            windows_lower_bound: 0,
            points,
        });
        learner
    }

    #[test]
    fn each_workload_carries_its_declared_curve_and_learned_points_with_lower_bounds_flagged() {
        let budgets = [translate::tests::budget(
            "rack",
            serde_json::json!({"capWatts": 20000.0, "nodeSelector": {}}),
        )];
        let mut translation = translate::tests::two_node_fleet(&budgets);
        let learning = translation.problem.workloads[0].name.clone();
        let told = translation.problem.workloads[1].name.clone();
        let declared = translation.problem.workloads[0].profile.clone();
        let learner = learner_of(
            &learning,
            vec![
                measured(300.0, 0, 0.0, Some(500.0)),
                measured(450.0, 3, 900.0, None),
                measured(500.0, 3, 1000.0, Some(700.0)),
            ],
        );
        learning::plan_on_learned(&mut translation, &learner, &BTreeMap::new());
        assert_ne!(
            translation.problem.workloads[0].profile, declared,
            "planned on the merged curve"
        );
        let curves = curve_views(&translation, Some(&learner));

        let curve = &curves[&learning];
        let powers: Vec<f64> = curve.declared.iter().map(|p| p.power_watts).collect();
        let declared_powers: Vec<f64> = declared.iter().map(|p| p.power_watts).collect();
        assert_eq!(
            powers, declared_powers,
            "the declared curve, not the merged one"
        );
        let best = curve
            .declared
            .iter()
            .map(|p| p.normalized_throughput)
            .fold(0.0, f64::max);
        assert!((best - 1.0).abs() < 1e-12, "normalized to its best: {best}");
        let flags: Vec<(f64, bool, bool)> = curve
            .learned
            .iter()
            .map(|p| (p.power_watts, p.lower_bound, p.converged))
            .collect();
        assert_eq!(
            flags,
            vec![
                (300.0, true, false),
                (450.0, false, true),
                (500.0, false, true)
            ]
        );
        assert_eq!(curve.learned[0].throughput, 500.0, "a lower bound's rate");
        assert_eq!(curve.learned_total, 3);
        // The anchor sits on the declared curve; the others where their rates put them.
        let declared_at = |watts: f64| {
            learning::interpolate(&declared, watts)
                / declared.iter().map(|p| p.throughput).fold(0.0, f64::max)
        };
        let anchored = curve.learned[2].normalized_throughput.expect("anchored");
        assert!((anchored - declared_at(500.0)).abs() < 1e-9, "{anchored}");
        let lower = curve.learned[0].normalized_throughput.expect("anchored");
        assert!((lower - 0.5 * declared_at(500.0)).abs() < 1e-9, "{lower}");

        let other = &curves[&told];
        assert!(
            other.learned.is_empty() && !other.declared.is_empty(),
            "{other:?}"
        );
        assert!(
            curve_views(&translation, None)[&learning]
                .learned
                .is_empty()
        );

        let json = serde_json::to_value(&curve.learned[0]).expect("encodes");
        assert_eq!(json["lowerBound"], true);
        assert_eq!(json["powerWatts"], 300.0);
    }

    #[test]
    fn a_long_sweep_keeps_the_bins_measured_last() {
        let declared = vec![
            ProfilePoint {
                power_watts: 100.0,
                throughput: 0.2,
                sm_clock_mhz: None,
            },
            ProfilePoint {
                power_watts: 1100.0,
                throughput: 1.0,
                sm_clock_mhz: None,
            },
        ];
        let points = (0..200)
            .map(|i| {
                let mut point = measured(100.0 + 5.0 * f64::from(i), 3, 1.0, None);
                point.last_measured =
                    Time(Timestamp::from_second(1_800_000_000 + i64::from(i)).expect("time"));
                point
            })
            .collect();
        let learner = learner_of("ml/a", points);
        let curve = curve_view(&declared, learner.curve("ml/a"));
        assert_eq!(curve.learned.len(), CURVE_POINTS_KEPT);
        assert_eq!(curve.learned_total, 200);
        assert_eq!(
            curve.learned[0].power_watts,
            100.0 + 5.0 * (200 - CURVE_POINTS_KEPT) as f64
        );
        assert!(
            curve
                .learned
                .windows(2)
                .all(|w| w[0].power_watts < w[1].power_watts)
        );
    }

    #[test]
    fn the_history_keeps_the_last_samples_of_the_root_budgets_one_per_instant() {
        let feed = Feed::new("simulate");
        let caps = BTreeMap::new();
        let measured = BTreeMap::from([("f".to_owned(), 700.0)]);
        let mut child = budget("r", 500.0, &[]);
        child.parent = Some("f".into());
        let mut small = workload("ml/b", 24);
        small.normalized_throughput = 0.5;
        let plan = plan(
            1,
            vec![budget("f", 1000.0, &[]), child],
            vec![workload("ml/a", 8), small],
        );
        let start = 1_800_000_000;
        for i in 0..HISTORY_KEPT as i64 + 5 {
            let now = Timestamp::from_second(start + i).expect("time");
            feed.record(PassRecord {
                plan: &plan,
                spec_caps: &caps,
                measured: &measured,
                solve_seconds: 0.0,
                now,
            });
            if i == 100 {
                feed.record(PassRecord {
                    plan: &plan,
                    spec_caps: &caps,
                    measured: &BTreeMap::new(),
                    solve_seconds: 0.0,
                    now,
                });
            }
        }
        let history = feed.overview().history;
        assert_eq!(history.len(), HISTORY_KEPT);
        assert_eq!(history[0].seconds, (start + 5) as f64);
        assert!(history.windows(2).all(|w| w[0].seconds < w[1].seconds));
        let last = history.last().expect("a sample");
        assert_eq!(
            last.budgets,
            vec![BudgetSample {
                name: "f".into(),
                cap_watts: 1000.0,
                allocated_watts: 1000.0,
                measured_watts: Some(700.0),
            }]
        );
        assert!((last.normalized_throughput - (8.0 * 0.9 + 24.0 * 0.5) / 32.0).abs() < 1e-12);
        let replaced = history
            .iter()
            .find(|s| s.seconds == (start + 100) as f64)
            .expect("the instant recorded twice");
        assert_eq!(
            replaced.budgets[0].measured_watts, None,
            "the later record wins"
        );
        let json = serde_json::to_value(feed.overview()).expect("encodes");
        assert_eq!(json["history"][0]["budgets"][0]["capWatts"], 1000.0);

        let spaced = Feed::new("simulate");
        spaced.space_history(10.0);
        for i in 0..=100 {
            spaced.record(PassRecord {
                plan: &plan,
                spec_caps: &caps,
                measured: &measured,
                solve_seconds: 0.0,
                now: Timestamp::from_second(start + 3 * i).expect("time"),
            });
        }
        let seconds: Vec<f64> = spaced
            .overview()
            .history
            .iter()
            .map(|s| s.seconds - start as f64)
            .collect();
        assert!(
            seconds[..seconds.len() - 1]
                .windows(2)
                .all(|w| w[1] - w[0] >= 10.0),
            "{seconds:?}"
        );
        assert_eq!(seconds.first(), Some(&0.0));
        assert_eq!(seconds.last(), Some(&300.0), "the newest is always there");
        assert!(seconds.len() >= 25, "{seconds:?}");
        assert_eq!(json["workloads"][0]["curve"], serde_json::Value::Null);
    }
}
