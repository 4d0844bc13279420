//! The simulated operator of a planned run: its plan store, fence and the reconcile loop's own timers
//! (`kilowatt_operator::controller::timing`), and the planning pass it runs when they say so. No IO.

use super::*;
use kilowatt_operator::controller::caches::machine_of;
use kilowatt_operator::plan::learning;
use kilowatt_operator::plan::rollout::Machine;
use kube::ResourceExt;
/// The operator of a planned run: its store, its fence and its timers, as the reconcile loop keeps them.
pub(super) struct Operator {
    pub(super) store: MemoryPlanStore,
    pub(super) solve: SolveOptions,
    pub(super) loaded: Option<Loaded>,
    pub(super) in_force: Option<PublishedPlan>,
    /// When the next pass is due, by the reconcile loop's own timers.
    pub(super) timers: LoopTimers,
    /// Each node's budgets and overhead in the last translation, for measured watts between passes.
    pub(super) budgets_of: BTreeMap<String, Vec<String>>,
    pub(super) overheads: BTreeMap<String, f64>,
    pub(super) passes: u64,
    pub(super) publishes: u64,
    pub(super) errors: u64,
    pub(super) solve_seconds: Vec<f64>,
    pub(super) pass_seconds: Vec<f64>,
    /// What the run learns from the pods' work counters; `None`: it plans on what it is told.
    pub(super) learning: Option<Learning>,
}

/// A learning run's measured curves and exploration sweeps, as the operator keeps them.
#[derive(Debug, Default)]
pub(super) struct Learning {
    pub(super) state: learning::Learning,
    /// Each workload's learned-curve error at 30 simulated minutes after it started.
    pub(super) error_at_30_minutes: BTreeMap<String, Option<f64>>,
}
/// When the learned curve is compared with the truth, after a workload starts.
pub(super) const LEARNING_DEADLINE_SECONDS: f64 = 1800.0;

impl Simulation {
    pub(super) fn pass_due(&self, index: usize, t: f64) -> bool {
        self.runs[index]
            .operator
            .as_ref()
            .is_some_and(|operator| operator.timers.due(loop_time(t)))
    }
    /// One operator pass of run `index` at `t`, as the reconcile loop runs it.
    pub(super) async fn plan(&mut self, index: usize, t: f64) {
        let prepared = self.prepared.clone();
        let now = instant(prepared.start, t);
        let kind = self.runs[index].kind;
        let Objects {
            budgets,
            profiles,
            nodes,
            pods,
        } = if kind == RunKind::Oracle {
            &self.objects_truth
        } else {
            &self.objects
        };
        let is_kilowatt = kind == RunKind::Kilowatt;
        let Some(operator) = self.runs[index].operator.as_mut() else {
            return;
        };
        operator.passes += 1;
        operator.timers.pass_started(loop_time(t));
        let mut exploring = BTreeMap::new();
        if let Some(learning) = &mut operator.learning {
            let views = operator.store.read_views().await.unwrap_or_default();
            let reports = views
                .iter()
                .filter_map(|(node, view)| Some((node.as_str(), view.power.as_ref()?)));
            exploring = learning.state.before_pass(reports, now).1;
            for (w, workload) in prepared.workloads.iter().enumerate() {
                let name = format!("{}/{}", prepared.scenario.namespace, workload.entry.name);
                if t >= workload.entry.start_seconds + LEARNING_DEADLINE_SECONDS
                    && !learning.error_at_30_minutes.contains_key(&name)
                {
                    let error = learning
                        .state
                        .learner
                        .curve(&name)
                        .and_then(|c| learned_error(c, &self.curves[w]).map(|e| e.max));
                    learning.error_at_30_minutes.insert(name, error);
                }
            }
        }
        let learning = operator.learning.as_ref();
        let translate_at = |inventories: &BTreeMap<String, Inventory>,
                            holds: &BTreeMap<String, NodeHold>| {
            let mut translation = translate(
                Cluster {
                    budgets,
                    profiles,
                    nodes,
                    pods,
                    inventories,
                    holds,
                    window_lead: DEFAULT_WINDOW_LEAD,
                },
                now,
            );
            if let Some(learning) = learning {
                learning::plan_on_learned(&mut translation, &learning.state.learner, &exploring);
            }
            translation
        };
        let solve = operator.solve.clone();
        let outcome = pass::run(
            &operator.store,
            PassInputs {
                now,
                translate: translate_at,
                ack_timeout: DEFAULT_ACK_TIMEOUT,
                // What the scenario's Nodes say: Unknown while a reboot has the machine down.
                machine: |node: &str| {
                    nodes
                        .iter()
                        .find(|n| n.name_any() == node)
                        .map_or_else(Machine::default, |n| machine_of(n))
                },
                may_publish: || true,
                loaded: operator.loaded.take(),
                solve: &solve,
            },
        )
        .await;
        let outcome = match outcome {
            Ok(outcome) => outcome,
            Err(error) => {
                operator.errors += 1;
                operator.timers.pass_failed(loop_time(t));
                tracing::warn!(
                    run = self.runs[index].kind.name(),
                    error = %error_chain(&error),
                    "simulated pass failed"
                );
                return;
            }
        };
        operator.solve_seconds.push(outcome.solve_seconds);
        operator.pass_seconds.push(outcome.pass_seconds);
        let next_transition = outcome.translation.next_transition.map(|at| {
            let millis = at.as_millisecond() - prepared.start.as_millisecond();
            Duration::from_millis(u64::try_from(millis).unwrap_or(0))
        });
        if let Some(learning) = &mut operator.learning {
            learning
                .state
                .after_pass(&outcome.translation, &outcome.in_force, pods);
        }
        operator.timers.pass_finished(
            loop_time(t),
            PassOutcome {
                raises_held_back: !outcome.held_back.is_empty()
                    || !outcome.awaiting_acknowledgement.is_empty(),
                awaiting_gpu_report: !outcome.translation.awaiting_gpu_report.is_empty(),
                next_transition,
                sweeping: operator
                    .learning
                    .as_ref()
                    .is_some_and(|l| l.state.sweeping()),
            },
        );
        if outcome.published.is_some() {
            operator.publishes += 1;
        }
        operator.budgets_of = pass::node_budgets(&outcome.translation);
        operator.overheads = outcome
            .translation
            .nodes
            .iter()
            .map(|(n, f)| (n.clone(), f.overhead_watts))
            .collect();
        operator.loaded = Some(outcome.loaded.clone());
        operator.in_force = Some(outcome.in_force.clone());

        if is_kilowatt {
            let spec_caps = outcome.translation.spec_caps();
            self.metrics.reconciles.inc();
            self.metrics
                .solve_duration_seconds
                .observe(outcome.solve_seconds);
            if outcome.published.is_some() {
                self.metrics.plan_publishes.inc();
            }
            self.metrics.observe_plan(
                &outcome.in_force,
                &spec_caps,
                &outcome.measured,
                &outcome.possible,
                &outcome.translation.cap_enforced(),
            );
            self.feed.record(PassRecord {
                plan: &outcome.in_force,
                spec_caps: &spec_caps,
                measured: &outcome.measured,
                solve_seconds: outcome.solve_seconds,
                now,
            });
            self.feed.set_curves(web::curve_views(
                &outcome.translation,
                operator.learning.as_ref().map(|l| &l.state.learner),
            ));
        }
    }
}

/// How far a learned curve is from the truth at the points it measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct LearnedError {
    pub(super) points: usize,
    /// Largest and mean |learned − true| / true over the converged points.
    pub(super) max: f64,
    pub(super) mean: f64,
    pub(super) lowest_watts: f64,
}

/// The error of `curve`'s converged points against the true curve; `None` without any.
pub(super) fn learned_error(
    curve: &learning::LearnedCurve,
    truth: &kilowatt_agent_core::gpu::simulated::Curve,
) -> Option<LearnedError> {
    let errors: Vec<(f64, f64)> = curve
        .converged_points()
        .into_iter()
        .filter_map(|p| {
            let true_rate = truth.throughput_under_limit(p.power_watts);
            (true_rate > 0.0).then(|| ((p.throughput - true_rate).abs() / true_rate, p.power_watts))
        })
        .collect();
    if errors.is_empty() {
        return None;
    }
    Some(LearnedError {
        points: errors.len(),
        max: errors.iter().map(|e| e.0).fold(0.0, f64::max),
        mean: errors.iter().map(|e| e.0).sum::<f64>() / errors.len() as f64,
        lowest_watts: errors.iter().map(|e| e.1).fold(f64::INFINITY, f64::min),
    })
}
