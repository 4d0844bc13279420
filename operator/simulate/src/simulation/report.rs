//! What a run reports: its summary figures, the time series of the root budget, and the progress the
//! live page shows. No IO (the page's feed is memory).

use super::*;
/// What a run has accumulated.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RunSummary {
    pub name: &'static str,
    /// `auto`, `uniform` or `none`.
    pub method: String,
    /// Weighted GPU-time average of each workload's throughput over its best (1 = every workload at its
    /// best all the time).
    pub normalized_throughput: f64,
    /// GPU energy from the simulated GPUs' counters (node overheads not included).
    pub energy_joules: f64,
    /// CO₂ of that energy: each stretch between changes of the scenario's `carbonIntensity` at the
    /// intensity over it (to the tick); `None` without a carbon intensity.
    pub carbon_grams: Option<f64>,
    /// Ticks checked, and ticks at which some budget's enforced limits plus overheads exceeded its cap.
    pub cap_checks: u64,
    pub cap_violations: u64,
    pub worst_over_cap_watts: f64,
    /// Longest time from a cap cut until every budget's enforced limits fit under the new caps.
    pub worst_cut_enforced_seconds: f64,
    pub plan_revisions: u64,
    pub passes: u64,
    pub pass_errors: u64,
    pub median_solve_seconds: f64,
    /// The operator's whole planning pass (wall clock), against the in-memory store.
    pub median_pass_seconds: f64,
    /// Times an agent fenced its GPUs to their floors for lack of contact.
    pub fences: u64,
    /// GPU-seconds a GPU ran at a limit planned for another pod than the one holding it (the operator
    /// had the pods' GPUs wrong); sampled every second. A pod's GPUs before the first plan that knows
    /// the pod are not counted: that is the reaction time, not a mix-up.
    pub misplanned_gpu_seconds: f64,
    /// Each tick at which a budget's enforced limits plus overheads exceeded its cap (the first
    /// 1000), with the faults active then.
    pub over_cap_ticks: Vec<OverCapTick>,
    /// The largest relative error of any workload's learned curve against its true curve, at the
    /// points it measured; `None` for a run that learns nothing (or learned no point yet).
    pub learned_curve_error: Option<f64>,
    /// Each workload's learned curve against the truth; empty for a run that learns nothing.
    pub learned_curves: Vec<LearnedCurveSummary>,
}

/// How far one workload's learned curve is from its true curve.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LearnedCurveSummary {
    /// `namespace/job`.
    pub workload: String,
    /// Limits with enough windows to be planned on.
    pub points: usize,
    /// Largest and mean |learned − true| / true over them, at the end of the run.
    pub max_relative_error: Option<f64>,
    pub mean_relative_error: Option<f64>,
    /// The same largest error 30 simulated minutes after the workload started (`None`: it had no
    /// point then, or the run ended before).
    pub max_relative_error_at_30_minutes: Option<f64>,
    pub lowest_measured_watts: Option<f64>,
    pub windows_accepted: u64,
    /// Windows that measured demand, not capability (nothing was waiting).
    pub windows_lower_bound: u64,
    /// Exploration steps the sweep took.
    pub exploration_steps: u32,
}

/// A tick over a cap.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OverCapTick {
    pub at_seconds: f64,
    pub budget: String,
    pub over_watts: f64,
    /// `kind node` of every fault active at the time.
    pub active_faults: Vec<String>,
}

/// One point of the time series (watts of the scenario's first root budget).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SeriesPoint {
    pub seconds: f64,
    pub cap_watts: f64,
    pub kilowatt_allocated_watts: f64,
    /// Enforced limits plus overheads.
    pub kilowatt_limits_watts: f64,
    /// What the GPUs draw plus overheads.
    pub kilowatt_measured_watts: f64,
    pub uniform_measured_watts: f64,
    pub proportional_measured_watts: f64,
    pub uncapped_measured_watts: f64,
    pub kilowatt_throughput: f64,
    pub uniform_throughput: f64,
    pub proportional_throughput: f64,
    pub uncapped_throughput: f64,
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(0.0)
}

impl Simulation {
    pub(super) fn record_series(&mut self, t: f64) {
        let Some(root) = self.root else {
            return;
        };
        let cap_watts = self.caps_now[root];
        let watts: Vec<(f64, f64)> = self
            .runs
            .iter()
            .map(|run| budget_watts(&self.prepared, &self.chains, &run.nodes)[root])
            .collect();
        let root = &self.prepared.scenario.budgets[root].name;
        let allocated = self.runs[0]
            .operator
            .as_ref()
            .and_then(|o| o.in_force.as_ref())
            .and_then(|p| p.budgets.iter().find(|b| &b.name == root))
            .map_or(0.0, |b| b.allocated_watts);
        self.series.push(SeriesPoint {
            seconds: t,
            cap_watts,
            kilowatt_allocated_watts: allocated,
            kilowatt_limits_watts: watts[0].0,
            kilowatt_measured_watts: watts[0].1,
            uniform_measured_watts: watts[1].1,
            proportional_measured_watts: watts[2].1,
            uncapped_measured_watts: watts[3].1,
            kilowatt_throughput: self.runs[0].instant_throughput,
            uniform_throughput: self.runs[1].instant_throughput,
            proportional_throughput: self.runs[2].instant_throughput,
            uncapped_throughput: self.runs[3].instant_throughput,
        });
    }
    /// Refreshes the page: progress, the runs so far, and the Kilowatt run's measured watts.
    pub(super) async fn publish_progress(&mut self, t: f64) {
        let now = instant(self.prepared.start, t);
        if let Some(operator) = &self.runs[0].operator
            && let Some(plan) = &operator.in_force
            && let Ok(views) = operator.store.read_views().await
        {
            let measured = measured_per_budget(&views, &operator.budgets_of, |node| {
                operator.overheads.get(node).copied().unwrap_or(0.0)
            });
            let spec_caps = self.prepared.spec_caps(t);
            self.feed.record(PassRecord {
                plan,
                spec_caps: &spec_caps,
                measured: &measured,
                solve_seconds: operator.solve_seconds.last().copied().unwrap_or(0.0),
                now,
            });
        }
        let runs = self
            .summaries()
            .into_iter()
            .map(|s| RunView {
                name: s.name.to_owned(),
                normalized_throughput: s.normalized_throughput,
                energy_joules: s.energy_joules,
                carbon_grams: s.carbon_grams,
                samples_over_cap: s.cap_violations,
            })
            .collect();
        self.feed.set_simulation(
            SimulationView {
                simulated_seconds: t,
                duration_seconds: self.settings.duration_seconds,
                finished: self.finished(),
                runs,
            },
            now,
        );
    }
    /// Each run's figures so far.
    pub fn summaries(&self) -> Vec<RunSummary> {
        self.runs
            .iter()
            .map(|run| {
                let mut summary = run.summary.clone();
                summary.normalized_throughput = if run.throughput_weight > 0.0 {
                    run.throughput_weighted / run.throughput_weight
                } else {
                    0.0
                };
                summary.energy_joules = accounting::energy_joules(run);
                summary.carbon_grams = self.carbon_grams(run, summary.energy_joules);
                if let Some(operator) = &run.operator {
                    summary.plan_revisions = operator.publishes;
                    summary.passes = operator.passes;
                    summary.pass_errors = operator.errors;
                    summary.median_solve_seconds = median(&operator.solve_seconds);
                    summary.median_pass_seconds = median(&operator.pass_seconds);
                    if let Some(learning) = &operator.learning {
                        summary.learned_curves = self.learned_curves(learning);
                        summary.learned_curve_error = summary
                            .learned_curves
                            .iter()
                            .filter_map(|c| c.max_relative_error)
                            .reduce(f64::max);
                    }
                }
                summary
            })
            .collect()
    }
    fn learned_curves(&self, learning: &operator::Learning) -> Vec<LearnedCurveSummary> {
        self.prepared
            .workloads
            .iter()
            .enumerate()
            .map(|(w, workload)| {
                let name = format!(
                    "{}/{}",
                    self.prepared.scenario.namespace, workload.entry.name
                );
                let curve = learning.state.learner.curve(&name);
                let error = curve.and_then(|c| operator::learned_error(c, &self.curves[w]));
                LearnedCurveSummary {
                    points: error.map_or(0, |e| e.points),
                    max_relative_error: error.map(|e| e.max),
                    mean_relative_error: error.map(|e| e.mean),
                    max_relative_error_at_30_minutes: learning
                        .error_at_30_minutes
                        .get(&name)
                        .copied()
                        .flatten(),
                    lowest_measured_watts: error.map(|e| e.lowest_watts),
                    windows_accepted: curve.map_or(0, |c| c.windows_accepted),
                    windows_lower_bound: curve.map_or(0, |c| c.windows_lower_bound),
                    exploration_steps: learning.state.explorer.sweep(&name).map_or(0, |s| s.steps),
                    workload: name,
                }
            })
            .collect()
    }
    pub fn series(&self) -> &[SeriesPoint] {
        &self.series
    }
    /// The root budget the series follows.
    pub fn series_budget(&self) -> Option<&str> {
        self.root
            .map(|r| self.prepared.scenario.budgets[r].name.as_str())
    }
}
