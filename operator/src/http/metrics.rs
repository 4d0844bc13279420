//! The operator's Prometheus metrics: budgets (cap, allocation, headroom, throughput, and what an
//! efficiency policy saved and cost), plans (revision, gap), solve time, reconcile errors by
//! category, leadership, agent credentials issued (and the etcd auth writes they cost), what-if
//! requests by outcome, work windows, learned points and exploration. Holds values in memory; no IO.

use std::collections::BTreeMap;

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

use crate::plan::learning::{Learning, Recorded};
use crate::plan::published::PublishedPlan;

/// The `category` values of `kilowatt_reconcile_errors_total`.
const RECONCILE_ERROR_CATEGORIES: [&str; 7] = [
    "etcd", "fenced", "kube", "solve", "encode", "watch", "event",
];

/// The `outcome` values of `kilowatt_agent_credentials_issued_total`.
const CREDENTIAL_OUTCOMES: [&str; 8] = [
    "issued",
    "busy",
    "unauthenticated",
    "forbidden",
    "disabled",
    "kube",
    "etcd",
    "internal",
];

/// The `outcome` values of `kilowatt_whatif_requests_total`.
pub const WHATIF_OUTCOMES: [&str; 8] = [
    "answered",
    "invalid",
    "unauthenticated",
    "forbidden",
    "busy",
    "timeout",
    "unavailable",
    "failed",
];

/// The `outcome` values of `kilowatt_work_windows_total` that exist from the start; agents' discard
/// reasons are added as they come.
const WORK_WINDOW_OUTCOMES: [&str; 3] = ["accepted", "lowerBound", "unmatched"];

/// Every metric the operator exports.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub budget_cap_watts: GaugeVec,
    pub budget_effective_cap_watts: GaugeVec,
    pub budget_allocated_watts: GaugeVec,
    pub budget_headroom_watts: GaugeVec,
    pub budget_measured_watts: GaugeVec,
    pub budget_possible_watts: GaugeVec,
    pub budget_cap_enforced: GaugeVec,
    pub budget_normalized_throughput: GaugeVec,
    pub budget_gpus: GaugeVec,
    pub plan_revision: IntGauge,
    pub plan_gap: Gauge,
    pub plan_infeasible: IntGauge,
    pub plan_publishes: IntCounter,
    pub managed_pods: IntGauge,
    pub solve_duration_seconds: Histogram,
    pub reconciles: IntCounter,
    pub reconcile_errors: IntCounterVec,
    pub leader: IntGauge,
    pub agent_credentials: IntCounterVec,
    pub agent_credential_auth_writes: IntCounter,
    pub whatif_requests: IntCounterVec,
    pub work_windows: IntCounterVec,
    pub learned_points: GaugeVec,
    pub explore_steps: IntCounter,
    pub explore_cap_watts: GaugeVec,
    pub job_profiles_created: IntCounter,
    /// Budgets with `efficiency.maxSlowdown` only (see [`Metrics::observe_efficiency`]).
    pub budget_efficiency_saved_watts: GaugeVec,
    pub budget_efficiency_throughput_cost: GaugeVec,
    /// Budgets with a current carbon forecast only (see [`Metrics::observe_signals`]).
    pub signal_carbon_intensity: GaugeVec,
    /// Budgets with a carbon forecast fetched at least once.
    pub signal_forecast_age_seconds: GaugeVec,
    /// Budgets with `spec.signals.carbonForecast`: the `maxSlowdown` in force, 0 for none.
    pub signal_max_slowdown: GaugeVec,
    /// Forecast fetches by budget and outcome (`ok`, `unreachable`, `invalid`).
    pub signal_fetches: IntCounterVec,
    pub openadr_requests: IntCounterVec,
}

impl Metrics {
    /// Creates and registers every metric. Fails only on a programming error (duplicate names).
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let budget = |name: &str, help: &str| -> Result<GaugeVec, prometheus::Error> {
            let gauge = GaugeVec::new(Opts::new(name, help), &["budget"])?;
            registry.register(Box::new(gauge.clone()))?;
            Ok(gauge)
        };
        let metrics = Metrics {
            budget_cap_watts: budget(
                "kilowatt_budget_cap_watts",
                "Configured cap of a PowerBudget",
            )?,
            budget_effective_cap_watts: budget(
                "kilowatt_budget_effective_cap_watts",
                "Lowest active cap of a PowerBudget (schedule windows applied)",
            )?,
            budget_allocated_watts: budget(
                "kilowatt_budget_allocated_watts",
                "Planned GPU limits plus node overheads under a PowerBudget",
            )?,
            budget_measured_watts: budget(
                "kilowatt_budget_measured_watts",
                "GPU power the agents under a PowerBudget measured over their last report, plus those nodes' overheads",
            )?,
            budget_possible_watts: budget(
                "kilowatt_budget_possible_watts",
                "The most the GPU limits and node overheads under a PowerBudget may enforce now (acknowledged, written since, unseen GPUs and nodes that do not lower counted at what they hold)",
            )?,
            budget_cap_enforced: budget(
                "kilowatt_budget_cap_enforced",
                "Whether a PowerBudget's cap can be enforced with nodes that do not lower counted at what they hold and every other GPU at its floor (1) or not (0)",
            )?,
            budget_headroom_watts: budget(
                "kilowatt_budget_headroom_watts",
                "Effective cap minus allocated watts of a PowerBudget",
            )?,
            budget_normalized_throughput: budget(
                "kilowatt_budget_normalized_throughput",
                "Weighted planned throughput under a PowerBudget over its best (0..1)",
            )?,
            budget_gpus: budget("kilowatt_budget_gpus", "GPUs under a PowerBudget")?,
            plan_revision: IntGauge::new(
                "kilowatt_plan_revision",
                "Revision of the plan in force",
            )?,
            plan_gap: Gauge::new(
                "kilowatt_plan_gap_ratio",
                "Proven relative gap between the plan's objective and its upper bound",
            )?,
            plan_infeasible: IntGauge::new(
                "kilowatt_plan_infeasible",
                "Whether the safe plan is in force because some budget cannot hold its floors (1) or not (0)",
            )?,
            plan_publishes: IntCounter::new(
                "kilowatt_plan_publishes_total",
                "Plans written to etcd",
            )?,
            managed_pods: IntGauge::new(
                "kilowatt_managed_pods",
                "GPU pods planned as part of a workload",
            )?,
            solve_duration_seconds: Histogram::with_opts(
                HistogramOpts::new("kilowatt_solve_duration_seconds", "Time to solve one plan")
                    .buckets(vec![0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 20.0]),
            )?,
            reconciles: IntCounter::new(
                "kilowatt_reconciles_total",
                "Passes of the reconcile loop (translate, solve, publish, status)",
            )?,
            reconcile_errors: IntCounterVec::new(
                Opts::new(
                    "kilowatt_reconcile_errors_total",
                    "Reconcile errors by category (etcd, fenced, kube, solve, encode, watch, event)",
                ),
                &["category"],
            )?,
            leader: IntGauge::new(
                "kilowatt_leader",
                "Whether this replica acts as leader (1) or stands by (0)",
            )?,
            agent_credentials: IntCounterVec::new(
                Opts::new(
                    "kilowatt_agent_credentials_issued_total",
                    "Requests for agent etcd credentials by outcome (issued, unauthenticated, \
                     busy, forbidden, disabled, kube, etcd, internal)",
                ),
                &["outcome"],
            )?,
            agent_credential_auth_writes: IntCounter::new(
                "kilowatt_agent_credential_auth_writes_total",
                "Changes to etcd users and roles made to issue agent credentials (only what differs \
                 is written: 7 for a node's first issue, 1 for a repeat)",
            )?,
            whatif_requests: IntCounterVec::new(
                Opts::new(
                    "kilowatt_whatif_requests_total",
                    "What-if requests by outcome (answered, invalid, unauthenticated, forbidden, \
                     busy, timeout, unavailable, failed)",
                ),
                &["outcome"],
            )?,
            work_windows: IntCounterVec::new(
                Opts::new(
                    "kilowatt_work_windows_total",
                    "Work-counter windows the agents reported, by outcome: accepted (a point of a \
                     curve), lowerBound (no requests waiting), unmatched (a pod in no managed \
                     workload), or the agent's reason for discarding it (limitChanged, mixedLimits, \
                     podRestarted, counterReset, scrapeFailed)",
                ),
                &["outcome"],
            )?,
            learned_points: GaugeVec::new(
                Opts::new(
                    "kilowatt_learned_points",
                    "Measured points of a workload's curve that the plan uses (bins of 5 W with at \
                     least 3 windows)",
                ),
                &["workload"],
            )?,
            explore_steps: IntCounter::new(
                "kilowatt_explore_steps_total",
                "Exploration steps taken: each lowers one opted-in workload's cap by 25 W",
            )?,
            explore_cap_watts: GaugeVec::new(
                Opts::new(
                    "kilowatt_explore_cap_watts",
                    "The cap an exploration sweep holds a workload's GPUs at or under",
                ),
                &["workload"],
            )?,
            job_profiles_created: IntCounter::new(
                "kilowatt_job_profiles_created_total",
                "WorkloadProfiles the operator created to keep the learned curves of jobs that had none",
            )?,
            budget_efficiency_saved_watts: budget(
                "kilowatt_budget_efficiency_saved_watts",
                "GPU limits under a PowerBudget with efficiency.maxSlowdown in the max-throughput plan minus in the plan in force",
            )?,
            budget_efficiency_throughput_cost: budget(
                "kilowatt_budget_efficiency_throughput_cost",
                "Share of the max-throughput plan's weighted normalized throughput under a PowerBudget with efficiency.maxSlowdown that the plan in force gives up (0..maxSlowdown)",
            )?,
            signal_carbon_intensity: budget(
                "kilowatt_signal_carbon_intensity_grams_per_kwh",
                "Carbon intensity now in the current forecast of a PowerBudget's signals.carbonForecast (gCO2eq/kWh)",
            )?,
            signal_forecast_age_seconds: budget(
                "kilowatt_signal_forecast_age_seconds",
                "Seconds since a PowerBudget's last good carbon forecast was fetched",
            )?,
            signal_max_slowdown: budget(
                "kilowatt_signal_max_slowdown",
                "The maxSlowdown in force for a PowerBudget with signals.carbonForecast: the larger of its band's and spec.efficiency's, 0 for none",
            )?,
            signal_fetches: IntCounterVec::new(
                Opts::new(
                    "kilowatt_signal_fetches_total",
                    "Carbon forecast fetches by budget and outcome (ok, unreachable, invalid)",
                ),
                &["budget", "outcome"],
            )?,
            openadr_requests: IntCounterVec::new(
                Opts::new(
                    "kilowatt_openadr_requests_total",
                    "Requests to a PowerBudget's OpenADR VTN by budget, request (poll, report) and outcome (ok, failed)",
                ),
                &["budget", "request", "outcome"],
            )?,
            registry,
        };
        for collector in [
            Box::new(metrics.plan_revision.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(metrics.plan_gap.clone()),
            Box::new(metrics.plan_infeasible.clone()),
            Box::new(metrics.plan_publishes.clone()),
            Box::new(metrics.managed_pods.clone()),
            Box::new(metrics.solve_duration_seconds.clone()),
            Box::new(metrics.reconciles.clone()),
            Box::new(metrics.reconcile_errors.clone()),
            Box::new(metrics.leader.clone()),
            Box::new(metrics.agent_credentials.clone()),
            Box::new(metrics.agent_credential_auth_writes.clone()),
            Box::new(metrics.whatif_requests.clone()),
            Box::new(metrics.work_windows.clone()),
            Box::new(metrics.learned_points.clone()),
            Box::new(metrics.explore_steps.clone()),
            Box::new(metrics.explore_cap_watts.clone()),
            Box::new(metrics.job_profiles_created.clone()),
            Box::new(metrics.signal_fetches.clone()),
            Box::new(metrics.openadr_requests.clone()),
            Box::new(prometheus::process_collector::ProcessCollector::for_self()),
        ] {
            metrics.registry.register(collector)?;
        }
        // Every known label value starts at 0, so that a series exists (and rate() works) before the
        // first error, and dashboards find the metric on a healthy operator.
        for category in RECONCILE_ERROR_CATEGORIES {
            metrics.reconcile_errors.with_label_values(&[category]);
        }
        for outcome in CREDENTIAL_OUTCOMES {
            metrics.agent_credentials.with_label_values(&[outcome]);
        }
        for outcome in WHATIF_OUTCOMES {
            metrics.whatif_requests.with_label_values(&[outcome]);
        }
        for outcome in WORK_WINDOW_OUTCOMES {
            metrics.work_windows.with_label_values(&[outcome]);
        }
        Ok(metrics)
    }

    /// Sets the budget and plan gauges from the plan in force and the agents' measurements; budgets no
    /// longer in it (or no longer measured) are dropped.
    pub fn observe_plan(
        &self,
        plan: &PublishedPlan,
        spec_caps: &BTreeMap<String, f64>,
        measured: &BTreeMap<String, f64>,
        possible: &BTreeMap<String, f64>,
        cap_enforced: &BTreeMap<String, bool>,
    ) {
        for gauge in [
            &self.budget_cap_watts,
            &self.budget_effective_cap_watts,
            &self.budget_allocated_watts,
            &self.budget_headroom_watts,
            &self.budget_measured_watts,
            &self.budget_possible_watts,
            &self.budget_cap_enforced,
            &self.budget_normalized_throughput,
            &self.budget_gpus,
        ] {
            gauge.reset();
        }
        for (name, cap) in spec_caps {
            self.budget_cap_watts.with_label_values(&[name]).set(*cap);
        }
        for (name, watts) in measured {
            self.budget_measured_watts
                .with_label_values(&[name])
                .set(*watts);
        }
        for (name, watts) in possible {
            self.budget_possible_watts
                .with_label_values(&[name])
                .set(*watts);
        }
        for (name, enforced) in cap_enforced {
            self.budget_cap_enforced
                .with_label_values(&[name])
                .set(if *enforced { 1.0 } else { 0.0 });
        }
        for b in &plan.budgets {
            let label = [b.name.as_str()];
            self.budget_effective_cap_watts
                .with_label_values(&label)
                .set(b.effective_cap_watts);
            self.budget_allocated_watts
                .with_label_values(&label)
                .set(b.allocated_watts);
            self.budget_headroom_watts
                .with_label_values(&label)
                .set(b.headroom_watts);
            self.budget_normalized_throughput
                .with_label_values(&label)
                .set(b.normalized_throughput);
            self.budget_gpus
                .with_label_values(&label)
                .set(f64::from(b.gpus));
        }
        self.plan_revision
            .set(i64::try_from(plan.revision).unwrap_or(i64::MAX));
        self.plan_gap.set(plan.gap);
        self.plan_infeasible
            .set(i64::from(plan.status == "infeasible"));
        self.managed_pods
            .set(plan.workloads.iter().map(|w| w.pods.len() as i64).sum());
        self.observe_efficiency(plan);
    }

    /// Sets the efficiency gauges of the budgets with a policy in `plan`; the others have none.
    fn observe_efficiency(&self, plan: &PublishedPlan) {
        self.budget_efficiency_saved_watts.reset();
        self.budget_efficiency_throughput_cost.reset();
        for b in &plan.budgets {
            let Some(efficiency) = &b.efficiency else {
                continue;
            };
            let label = [b.name.as_str()];
            self.budget_efficiency_saved_watts
                .with_label_values(&label)
                .set(efficiency.saved_watts);
            self.budget_efficiency_throughput_cost
                .with_label_values(&label)
                .set(efficiency.throughput_cost);
        }
    }

    /// Sets the signal gauges from each budget's forecast reading at `now`; budgets without one are
    /// dropped.
    pub fn observe_signals(
        &self,
        budgets: &BTreeMap<String, crate::plan::translate::BudgetFacts>,
        now: k8s_openapi::jiff::Timestamp,
    ) {
        self.signal_carbon_intensity.reset();
        self.signal_forecast_age_seconds.reset();
        self.signal_max_slowdown.reset();
        for (name, reading) in budgets
            .iter()
            .filter_map(|(name, f)| Some((name, f.signals.as_ref()?)))
        {
            let label = [name.as_str()];
            self.signal_max_slowdown
                .with_label_values(&label)
                .set(reading.max_slowdown.unwrap_or(0.0));
            if let Some(grams) = reading.grams_per_kwh {
                self.signal_carbon_intensity
                    .with_label_values(&label)
                    .set(grams);
            }
            if let Some(fetched) = reading.fetched_at {
                self.signal_forecast_age_seconds
                    .with_label_values(&label)
                    .set(now.duration_since(fetched).as_secs_f64().max(0.0));
            }
        }
    }

    /// Counts the windows one pass took from the agents' reports, and the exploration steps it took.
    pub fn observe_windows(&self, recorded: &Recorded, steps: u64) {
        for (outcome, count) in [
            ("accepted", recorded.accepted),
            ("lowerBound", recorded.lower_bound),
            ("unmatched", recorded.unmatched),
        ] {
            self.work_windows
                .with_label_values(&[outcome])
                .inc_by(count);
        }
        for (reason, count) in &recorded.rejected {
            self.work_windows
                .with_label_values(&[reason])
                .inc_by(*count);
        }
        self.explore_steps.inc_by(steps);
    }

    /// Sets each workload's learned points and exploration cap; workloads gone are dropped.
    pub fn observe_learning(&self, learning: &Learning, exploring: &BTreeMap<String, f64>) {
        self.learned_points.reset();
        for (workload, curve) in learning.learner.curves() {
            self.learned_points
                .with_label_values(&[workload])
                .set(curve.converged_points().len() as f64);
        }
        self.explore_cap_watts.reset();
        for (workload, cap) in exploring {
            self.explore_cap_watts
                .with_label_values(&[workload])
                .set(*cap);
        }
    }

    /// Every metric family, for merging with others (`kilowatt simulate`).
    pub fn gather(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.registry.gather()
    }

    /// The text exposition format.
    pub fn render(&self) -> Result<String, prometheus::Error> {
        let mut buffer = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buffer)?;
        Ok(String::from_utf8_lossy(&buffer).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::published::{BudgetSummary, EfficiencyStatus, test_plan};

    fn summary(name: &str, efficiency: Option<EfficiencyStatus>) -> BudgetSummary {
        BudgetSummary {
            name: name.into(),
            parent: None,
            effective_cap_watts: 10000.0,
            planning_cap_watts: 10000.0,
            allocated_watts: 8000.0,
            headroom_watts: 2000.0,
            nodes: 1,
            gpus: 8,
            normalized_throughput: 0.98,
            open_windows: Vec::new(),
            efficiency,
        }
    }

    #[test]
    fn only_budgets_with_a_policy_export_what_it_saved_and_cost() {
        let metrics = Metrics::new().expect("metrics register");
        let efficiency = EfficiencyStatus {
            max_slowdown: 0.02,
            saved_watts: 1500.0,
            throughput_cost: 0.0195,
        };
        let plan = test_plan(
            3,
            vec![summary("facility", Some(efficiency)), summary("rack", None)],
            Vec::new(),
            Default::default(),
        );
        let none = BTreeMap::new();
        let bools = BTreeMap::new();
        metrics.observe_plan(&plan, &none, &none, &none, &bools);
        let text = metrics.render().expect("renders");
        assert!(
            text.contains("kilowatt_budget_efficiency_saved_watts{budget=\"facility\"} 1500"),
            "{text}"
        );
        assert!(
            text.contains("kilowatt_budget_efficiency_throughput_cost{budget=\"facility\"} 0.0195"),
            "{text}"
        );
        assert!(
            !text.contains("efficiency_saved_watts{budget=\"rack\"}"),
            "{text}"
        );

        let without = test_plan(
            4,
            vec![summary("facility", None)],
            Vec::new(),
            Default::default(),
        );
        metrics.observe_plan(&without, &none, &none, &none, &bools);
        let text = metrics.render().expect("renders");
        assert!(
            !text.contains("efficiency_saved_watts{"),
            "a removed policy drops its series"
        );
    }
}
