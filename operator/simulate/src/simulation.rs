//! The engine of `kilowatt simulate`: a scenario run on simulated time, four ways side by side —
//! Kilowatt (the operator's planning pass and two-phase rollout against an in-memory plan store, and
//! one real agent protocol machine per node over simulated GPUs), uniform capping (the same operator and
//! agents with one limit for every GPU), proportional capping (each budget's room split by the GPUs'
//! maximum limits) and no capping (every GPU at its default limit). It checks
//! every budget's cap at every tick, independently of the operator, and accounts energy and throughput
//! from the simulated GPUs. No IO and no clock: time is the tick count; the caller paces it and
//! serves the page.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use kilowatt_agent_core::defaults::{self, POD_REFRESH};
use kilowatt_agent_core::driver::SteppedAgent;
use kilowatt_agent_core::gpu::simulated::{Curve, SimulatedGpu, SimulatedGpus};
use kilowatt_agent_core::gpu::{GpuBackend, GpuInfo};
use kilowatt_agent_core::protocol::{Event, Mode};
use kilowatt_agent_core::telemetry::Telemetry;
use kilowatt_crds::plan::{Acknowledgement, Inventory, NodePlan};
use kilowatt_plumbing::json_http::error_chain;
use kilowatt_solver::{MethodChoice, SolveOptions};
use serde::Serialize;

use crate::scenario::{Prepared, instant};
use kilowatt_operator::controller::timing::{self, LoopTimers, PassOutcome, Timing};
use kilowatt_operator::http::metrics::Metrics;
use kilowatt_operator::http::web::{Feed, PassRecord, RunView, SimulationView};
use kilowatt_operator::plan::pass::{self, PassInputs};
use kilowatt_operator::plan::published::{KeyLayout, PublishedPlan};
use kilowatt_operator::plan::status::measured_per_budget;
use kilowatt_operator::plan::translate::{Cluster, translate};
use kilowatt_operator::store::memory::MemoryPlanStore;
use kilowatt_operator::store::{Loaded, PlanStore};

/// Simulated seconds per tick: the resolution of the cap check and of the operator's timers.
pub const TICK_SECONDS: f64 = 0.1;

/// Simulated seconds as the reconcile loop's time, to the microsecond: ticks and scenario times are
/// far coarser, so the f64 noise of `ticks × 0.1` never moves a timer across a tick.
fn loop_time(seconds: f64) -> Duration {
    Duration::from_micros((seconds.max(0.0) * 1e6).round() as u64)
}
/// How long a lowered cap takes to come into force in the cap check: the debounce-free path of a
/// schedule boundary or an edit plus a rollout, which the cluster tests measure at 0.1–0.6 s. Until
/// then the previous cap is checked.
pub const CUT_GRACE_SECONDS: f64 = 2.0;

/// How a simulation runs.
#[derive(Debug, Clone)]
pub struct Settings {
    pub duration_seconds: f64,
    /// The Kilowatt run's solver options (the uniform run uses the same with `uniform`).
    pub solve: SolveOptions,
    /// The operator solves again at least this often.
    pub resync_seconds: f64,
    /// A point of the time series every this many simulated seconds.
    pub series_every_seconds: f64,
}

/// Why a simulation could not start.
#[derive(Debug, thiserror::Error)]
pub enum SimulateError {
    #[error("workload {workload}: its curve cannot drive a simulated GPU")]
    Curve {
        workload: String,
        source: kilowatt_agent_core::gpu::simulated::ProfileError,
    },
    #[error("node {node}: the simulated GPUs do not start")]
    Gpus {
        node: String,
        source: kilowatt_agent_core::gpu::GpuError,
    },
    #[error("registering metrics")]
    Metrics(#[from] prometheus::Error),
}

/// The ways the scenario is run, in the order of [`Simulation::summaries`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum RunKind {
    Kilowatt,
    Uniform,
    Proportional,
    Uncapped,
}

impl RunKind {
    pub const ALL: [RunKind; 4] = [
        RunKind::Kilowatt,
        RunKind::Uniform,
        RunKind::Proportional,
        RunKind::Uncapped,
    ];
}

impl RunKind {
    pub fn name(self) -> &'static str {
        match self {
            RunKind::Kilowatt => "kilowatt",
            RunKind::Uniform => "uniform",
            RunKind::Proportional => "proportional",
            RunKind::Uncapped => "uncapped",
        }
    }
}

/// The operator of a planned run: its store, its fence and its timers, as the reconcile loop keeps them.
struct Operator {
    store: MemoryPlanStore,
    solve: SolveOptions,
    loaded: Option<Loaded>,
    in_force: Option<PublishedPlan>,
    /// When the next pass is due, by the reconcile loop's own timers.
    timers: LoopTimers,
    /// Each node's budgets and overhead in the last translation, for measured watts between passes.
    budgets_of: BTreeMap<String, Vec<String>>,
    overheads: BTreeMap<String, f64>,
    passes: u64,
    publishes: u64,
    errors: u64,
    solve_seconds: Vec<f64>,
    pass_seconds: Vec<f64>,
}

/// One node: its agent over simulated GPUs, and its contact with the plan store.
struct NodeState {
    agent: SteppedAgent<SimulatedGpus>,
    /// Mod revision of the node's plan key last delivered to the agent.
    plan_seen: i64,
    /// The node's plan key, formatted once.
    plan_key: String,
    last_renewal: f64,
    lease_expired: bool,
    was_partitioned: bool,
    /// Workload index on each GPU.
    gpu_workloads: Vec<Option<usize>>,
    /// The simulated kubelet's last answer to the agent: which pods hold each GPU, by UUID.
    pods_by_uuid: BTreeMap<String, Vec<String>>,
    /// The pod holding each GPU now, as `namespace/name`.
    gpu_holders: Vec<Option<String>>,
    /// The pod each GPU's limit was planned for, in the last plan the agent received.
    planned_pods: Vec<Option<String>>,
    telemetry: Option<Telemetry>,
}

impl NodeState {
    /// Hands the agent its plan key's value, noting which pod each GPU's limit was planned for.
    fn deliver_plan(&mut self, plan: Option<NodePlan>, now: Duration) -> Vec<Acknowledgement> {
        self.planned_pods.iter_mut().for_each(|p| *p = None);
        for gpu in plan.iter().flat_map(|p| &p.gpus) {
            if let Some(planned) = self.planned_pods.get_mut(gpu.index as usize) {
                planned.clone_from(&gpu.pod);
            }
        }
        self.agent.handle(Event::PlanChanged(plan), now)
    }
}

/// The UUID of simulated GPU `index` of `node`, as its agent registers it.
fn simulated_gpu_uuid(node: &str, index: u32) -> String {
    format!("SIM-{node}-{index}")
}

/// A budget's cap as the check applies it.
#[derive(Debug, Clone, Copy)]
struct CheckedCap {
    effective: f64,
    /// A higher cap still in force until `until` after a cut.
    held: Option<(f64, f64)>,
}

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
}

struct Run {
    kind: RunKind,
    operator: Option<Operator>,
    nodes: Vec<NodeState>,
    /// By budget position.
    caps: Vec<CheckedCap>,
    /// A cut not yet enforced: when it happened.
    cut_pending_since: Option<f64>,
    throughput_weighted: f64,
    throughput_weight: f64,
    /// Throughput at the last tick, for the series.
    instant_throughput: f64,
    summary: RunSummary,
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

/// A running simulation.
pub struct Simulation {
    prepared: Arc<Prepared>,
    settings: Settings,
    curves: Vec<Curve>,
    best_throughput: Vec<f64>,
    runs: Vec<Run>,
    ticks: u64,
    change_times: Vec<f64>,
    /// Position of the root budget the series follows.
    root: Option<usize>,
    series: Vec<SeriesPoint>,
    feed: Arc<Feed>,
    metrics: Metrics,
    /// Instants at which some budget's effective cap changes (windows, edits), ascending.
    cap_boundaries: Vec<f64>,
    /// The effective caps since the last boundary passed, by budget position.
    caps_now: Vec<f64>,
    /// Each node's budgets, as positions.
    chains: Vec<Vec<usize>>,
    /// The cluster objects since the last change (a workload came or went, a cap was edited).
    objects: Objects,
}

/// The Kubernetes objects the operator plans from, as they stand.
struct Objects {
    budgets: Vec<Arc<kilowatt_crds::PowerBudget>>,
    profiles: Vec<Arc<kilowatt_crds::WorkloadProfile>>,
    nodes: Vec<Arc<k8s_openapi::api::core::v1::Node>>,
    pods: Vec<Arc<k8s_openapi::api::core::v1::Pod>>,
}

impl Objects {
    fn at(prepared: &Prepared, t: f64) -> Objects {
        Objects {
            budgets: prepared.budgets(t),
            profiles: prepared.profiles(),
            nodes: prepared.node_objects(),
            pods: prepared.pod_objects(t),
        }
    }
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(0.0)
}

fn seconds(t: f64) -> Duration {
    Duration::from_secs_f64(t.max(0.0))
}

/// The effective cap of every budget at `t`, by position in the scenario, from the scenario alone: the
/// spec cap (with edits) lowered by open windows.
fn effective_caps(prepared: &Prepared, t: f64) -> Vec<f64> {
    let spec = prepared.spec_caps(t);
    prepared
        .scenario
        .budgets
        .iter()
        .map(|b| {
            b.windows
                .iter()
                .filter(|w| w.start_seconds <= t && t < w.end_seconds)
                .fold(spec[&b.name], |cap, w| cap.min(w.cap_watts))
        })
        .collect()
}

/// Per budget, by position in the scenario: enforced limits plus overheads, and what the GPUs draw plus
/// overheads. `chains` holds each node's budgets as positions.
fn budget_watts(
    prepared: &Prepared,
    chains: &[Vec<usize>],
    nodes: &[NodeState],
) -> Vec<(f64, f64)> {
    let mut watts = vec![(0.0, 0.0); prepared.scenario.budgets.len()];
    for ((node, chain), state) in prepared.nodes.iter().zip(chains).zip(nodes) {
        let backend = state.agent.backend();
        let mut limits = node.overhead_watts;
        let mut draw = node.overhead_watts;
        for gpu in 0..node.gpus {
            // NB: an unreadable limit counts as the GPU's maximum.
            limits += backend
                .power_limit_watts(gpu)
                .unwrap_or(node.model.max_watts);
            draw += backend.draw_watts(gpu).unwrap_or(node.model.max_watts);
        }
        for &budget in chain {
            watts[budget].0 += limits;
            watts[budget].1 += draw;
        }
    }
    watts
}

impl Simulation {
    /// Sets up the three runs at time 0: GPUs at their default (maximum) limits, agents registered.
    pub fn new(
        prepared: Prepared,
        settings: Settings,
        feed: Arc<Feed>,
    ) -> Result<Simulation, SimulateError> {
        let prepared = Arc::new(prepared);
        let curves: Vec<Curve> = prepared
            .workloads
            .iter()
            .map(|w| {
                Curve::from_spec(&w.curve).map_err(|source| SimulateError::Curve {
                    workload: w.entry.name.clone(),
                    source,
                })
            })
            .collect::<Result<_, _>>()?;
        let best_throughput = prepared
            .workloads
            .iter()
            .map(|w| {
                w.curve
                    .points
                    .iter()
                    .map(|p| p.throughput)
                    .fold(0.0, f64::max)
            })
            .collect();
        let mut clocks: Vec<u32> = prepared
            .workloads
            .iter()
            .flat_map(|w| w.curve.points.iter().filter_map(|p| p.sm_clock_mhz))
            .collect();
        clocks.sort_unstable();
        clocks.dedup();
        let root = prepared
            .scenario
            .budgets
            .iter()
            .position(|b| b.parent.is_none());
        let position = |name: &String| {
            prepared
                .scenario
                .budgets
                .iter()
                .position(|b| &b.name == name)
                .unwrap_or(0)
        };
        let chains: Vec<Vec<usize>> = prepared
            .nodes
            .iter()
            .map(|n| n.chain.iter().map(position).collect())
            .collect();
        let caps_now = effective_caps(&prepared, 0.0);
        let mut runs = Vec::new();
        for kind in RunKind::ALL {
            let method = match kind {
                RunKind::Kilowatt => Some(settings.solve.method),
                RunKind::Uniform => Some(MethodChoice::Uniform),
                RunKind::Proportional => Some(MethodChoice::Proportional),
                RunKind::Uncapped => None,
            };
            let operator = match method {
                None => None,
                Some(method) => Some(Operator {
                    store: MemoryPlanStore::new(KeyLayout::new("/kilowatt")),
                    solve: SolveOptions {
                        method,
                        ..settings.solve.clone()
                    },
                    loaded: None,
                    in_force: None,
                    timers: LoopTimers::new(Timing {
                        debounce: timing::DEFAULT_DEBOUNCE,
                        resync: Duration::from_secs_f64(settings.resync_seconds),
                        awaiting_report_recheck: pass::AWAITING_GPU_REPORT_RECHECK,
                    }),
                    budgets_of: BTreeMap::new(),
                    overheads: BTreeMap::new(),
                    passes: 0,
                    publishes: 0,
                    errors: 0,
                    solve_seconds: Vec::new(),
                    pass_seconds: Vec::new(),
                }),
            };
            let mut nodes = Vec::new();
            for (index, node) in prepared.nodes.iter().enumerate() {
                let gpu_workloads = prepared.gpu_workloads(index, 0.0);
                let gpus = (0..node.gpus)
                    .map(|i| SimulatedGpu {
                        info: GpuInfo {
                            index: i,
                            uuid: simulated_gpu_uuid(&node.name, i),
                            model: node.model.name.to_owned(),
                            min_limit_watts: node.model.min_watts,
                            max_limit_watts: node.model.max_watts,
                            default_limit_watts: node.model.max_watts,
                            supported_sm_clocks_mhz: clocks.clone(),
                        },
                        workload: gpu_workloads[i as usize].map(|w| curves[w].clone()),
                        idle_watts: 0.1 * node.model.max_watts,
                    })
                    .collect();
                let agent = SteppedAgent::start(
                    SimulatedGpus::new(gpus),
                    defaults::fence_after(defaults::LEASE_TTL, defaults::FENCE_FRACTION),
                    Duration::ZERO,
                )
                .map_err(|source| SimulateError::Gpus {
                    node: node.name.clone(),
                    source,
                })?;
                let telemetry = match kind {
                    RunKind::Kilowatt => Some(Telemetry::for_node(&node.name)?),
                    _ => None,
                };
                let pods_by_uuid =
                    prepared.pods_by_gpu_uuid(index, 0.0, |i| simulated_gpu_uuid(&node.name, i));
                if let Some(operator) = &operator {
                    operator
                        .store
                        .register(&node.name, &agent.inventory(Some(&pods_by_uuid)));
                }
                nodes.push(NodeState {
                    agent,
                    plan_seen: 0,
                    plan_key: KeyLayout::new("/kilowatt").node_plan(&node.name),
                    last_renewal: 0.0,
                    lease_expired: false,
                    was_partitioned: false,
                    gpu_workloads,
                    pods_by_uuid,
                    gpu_holders: prepared.gpu_holders(index, 0.0),
                    planned_pods: vec![None; node.gpus as usize],
                    telemetry,
                });
            }
            for node in &mut nodes {
                node.agent.handle(Event::LeaseRenewed, Duration::ZERO);
            }
            runs.push(Run {
                kind,
                summary: RunSummary {
                    name: kind.name(),
                    method: operator
                        .as_ref()
                        .map_or_else(|| "none".to_owned(), |o| o.solve.method.to_string()),
                    ..RunSummary::default()
                },
                operator,
                nodes,
                caps: caps_now
                    .iter()
                    .map(|&cap| CheckedCap {
                        effective: cap,
                        held: None,
                    })
                    .collect(),
                cut_pending_since: None,
                throughput_weighted: 0.0,
                throughput_weight: 0.0,
                instant_throughput: 0.0,
            });
        }
        let change_times = prepared.change_times();
        let mut cap_boundaries: Vec<f64> = prepared
            .scenario
            .budgets
            .iter()
            .flat_map(|b| {
                b.windows
                    .iter()
                    .flat_map(|w| [w.start_seconds, w.end_seconds])
            })
            .chain(prepared.scenario.cap_changes.iter().map(|c| c.at_seconds))
            .collect();
        cap_boundaries.sort_by(f64::total_cmp);
        cap_boundaries.dedup();
        let objects = Objects::at(&prepared, 0.0);
        Ok(Simulation {
            prepared,
            settings,
            curves,
            best_throughput,
            runs,
            ticks: 0,
            change_times,
            root,
            series: Vec::new(),
            feed,
            metrics: Metrics::new()?,
            cap_boundaries,
            caps_now,
            chains,
            objects,
        })
    }

    /// Simulated seconds so far.
    pub fn now_seconds(&self) -> f64 {
        self.ticks as f64 * TICK_SECONDS
    }

    pub fn finished(&self) -> bool {
        self.now_seconds() >= self.settings.duration_seconds - 1e-9
    }

    pub fn prepared(&self) -> &Prepared {
        &self.prepared
    }

    /// The operator metrics of the Kilowatt run and every node's agent metrics (labelled `node`).
    pub fn render_metrics(&self) -> Result<String, prometheus::Error> {
        let mut families = self.metrics.gather();
        for node in &self.runs[0].nodes {
            if let Some(telemetry) = &node.telemetry {
                families.extend(telemetry.gather());
            }
        }
        let mut merged: BTreeMap<String, prometheus::proto::MetricFamily> = BTreeMap::new();
        for mut family in families {
            match merged.get_mut(family.name()) {
                Some(existing) => existing.mut_metric().extend(family.take_metric()),
                None => {
                    merged.insert(family.name().to_owned(), family);
                }
            }
        }
        let families: Vec<_> = merged.into_values().collect();
        let mut buffer = Vec::new();
        prometheus::Encoder::encode(&prometheus::TextEncoder::new(), &families, &mut buffer)?;
        Ok(String::from_utf8_lossy(&buffer).into_owned())
    }

    /// Advances one tick.
    pub async fn step(&mut self) {
        let before = self.now_seconds();
        self.ticks += 1;
        let t = self.now_seconds();
        let changed = self.change_times.iter().any(|c| before < *c && *c <= t);
        if self.cap_boundaries.iter().any(|c| before < *c && *c <= t) {
            self.caps_now = effective_caps(&self.prepared, t);
        }
        if changed {
            self.objects = Objects::at(&self.prepared, t);
        }
        for index in 0..self.runs.len() {
            if changed {
                self.apply_changes(index, t);
            }
            if self.pass_due(index, t) {
                self.plan(index, t).await;
            }
            self.step_agents(index, before, t);
            self.account(index, t);
        }
        let every = self.settings.series_every_seconds.max(TICK_SECONDS);
        if (t / every).floor() > (before / every).floor() || self.finished() {
            self.record_series(t);
            self.publish_progress(t).await;
        }
    }

    /// Workloads that started or stopped take or free their GPUs; the operator hears of it.
    fn apply_changes(&mut self, index: usize, t: f64) {
        let prepared = self.prepared.clone();
        let run = &mut self.runs[index];
        if let Some(operator) = &mut run.operator {
            operator.timers.changed(loop_time(t));
        }
        for (n, node) in run.nodes.iter_mut().enumerate() {
            let now = prepared.gpu_workloads(n, t);
            for (gpu, workload) in now.iter().enumerate() {
                if node.gpu_workloads[gpu] != *workload {
                    // NB: the index comes from the node's own inventory, so this cannot fail.
                    let _ = node
                        .agent
                        .backend_mut()
                        .set_workload(gpu as u32, workload.map(|w| self.curves[w].clone()));
                }
            }
            node.gpu_workloads = now;
            node.gpu_holders = prepared.gpu_holders(n, t);
        }
    }

    fn pass_due(&self, index: usize, t: f64) -> bool {
        self.runs[index]
            .operator
            .as_ref()
            .is_some_and(|operator| operator.timers.due(loop_time(t)))
    }

    /// One operator pass of run `index` at `t`, as the reconcile loop runs it.
    async fn plan(&mut self, index: usize, t: f64) {
        let prepared = self.prepared.clone();
        let now = instant(prepared.start, t);
        let Objects {
            budgets,
            profiles,
            nodes,
            pods,
        } = &self.objects;
        let is_kilowatt = self.runs[index].kind == RunKind::Kilowatt;
        let Some(operator) = self.runs[index].operator.as_mut() else {
            return;
        };
        operator.passes += 1;
        operator.timers.pass_started(loop_time(t));
        let translate_at = |inventories: &BTreeMap<String, Inventory>| {
            translate(
                Cluster {
                    budgets,
                    profiles,
                    nodes,
                    pods,
                    inventories,
                },
                now,
            )
        };
        let solve = operator.solve.clone();
        let outcome = pass::run(
            &operator.store,
            PassInputs {
                now,
                translate: translate_at,
                // The scenario's machines stay up; only agents are cut off.
                machine_up: |_: &str| true,
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
        operator.timers.pass_finished(
            loop_time(t),
            PassOutcome {
                raises_held_back: !outcome.held_back.is_empty(),
                awaiting_gpu_report: !outcome.translation.awaiting_gpu_report.is_empty(),
                next_transition,
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
            self.metrics
                .observe_plan(&outcome.in_force, &spec_caps, &outcome.measured);
            self.feed.record(PassRecord {
                plan: &outcome.in_force,
                spec_caps: &spec_caps,
                measured: &outcome.measured,
                solve_seconds: outcome.solve_seconds,
                now,
            });
        }
    }

    /// Every agent of run `index` over (before, t]: lease renewals, plan changes, samples and ticks,
    /// partitions.
    fn step_agents(&mut self, index: usize, before: f64, t: f64) {
        let prepared = self.prepared.clone();
        let run = &mut self.runs[index];
        let now = seconds(t);
        // The agents run with `kilowatt-agent`'s defaults.
        let sample_seconds = defaults::SAMPLE_PERIOD.as_secs_f64();
        let lease_ttl_seconds = defaults::LEASE_TTL.as_secs_f64();
        let sampled = (t / sample_seconds).floor() > (before / sample_seconds).floor();
        let ask_every = POD_REFRESH.as_secs_f64();
        let kubelet_asked = (t / ask_every).floor() > (before / ask_every).floor();
        for (n, node) in run.nodes.iter_mut().enumerate() {
            let name = &prepared.nodes[n].name;
            let Some(operator) = &run.operator else {
                if sampled {
                    node.agent.sample(now, defaults::REPORT_PERIOD);
                }
                continue;
            };
            let store = &operator.store;
            let partitioned = prepared.partitioned(name, t);
            let mut acknowledgements = Vec::new();
            // As the agent process: the kubelet is local, so it is asked even when etcd is out of
            // reach, and a changed answer is registered again once it can be.
            let mut pods_changed = false;
            if kubelet_asked {
                let answer = prepared.pods_by_gpu_uuid(n, t, |i| simulated_gpu_uuid(name, i));
                pods_changed = answer != node.pods_by_uuid;
                node.pods_by_uuid = answer;
            }
            if partitioned {
                if !node.lease_expired && t - node.last_renewal >= lease_ttl_seconds {
                    store.expire_lease(name);
                    node.lease_expired = true;
                }
            } else {
                if node.was_partitioned {
                    // Back in contact: a new session registers again and reads the plan.
                    store.register(name, &node.agent.inventory(Some(&node.pods_by_uuid)));
                    node.lease_expired = false;
                    node.last_renewal = t;
                    acknowledgements.extend(node.agent.handle(Event::LeaseRenewed, now));
                    let (revision, plan) = store.node_plan(name);
                    node.plan_seen = revision;
                    acknowledgements.extend(node.deliver_plan(plan, now));
                } else if t - node.last_renewal >= lease_ttl_seconds / 3.0 {
                    node.last_renewal = t;
                    acknowledgements.extend(node.agent.handle(Event::LeaseRenewed, now));
                }
                if pods_changed && !node.was_partitioned {
                    store.register(name, &node.agent.inventory(Some(&node.pods_by_uuid)));
                }
                if let Some((revision, plan)) =
                    store.node_plan_change(&node.plan_key, node.plan_seen)
                {
                    node.plan_seen = revision;
                    acknowledgements.extend(node.deliver_plan(plan, now));
                }
            }
            node.was_partitioned = partitioned;
            if sampled {
                let misplanned = node
                    .gpu_holders
                    .iter()
                    .zip(&node.planned_pods)
                    .filter(|(holder, planned)| {
                        holder.is_some() && planned.is_some() && holder != planned
                    })
                    .count();
                run.summary.misplanned_gpu_seconds += misplanned as f64 * sample_seconds;
                let (readings, report) = node.agent.sample(now, defaults::REPORT_PERIOD);
                if let Some(telemetry) = &node.telemetry {
                    telemetry.observe_gpus(node.agent.gpus(), &readings, &node.pods_by_uuid);
                }
                if let Some(report) = report.filter(|_| !partitioned) {
                    store.report_power(name, &report);
                }
                let fenced_before = node.agent.protocol().mode() == Mode::Fenced;
                acknowledgements.extend(node.agent.handle(Event::Tick, now));
                if !fenced_before && node.agent.protocol().mode() == Mode::Fenced {
                    run.summary.fences += 1;
                }
            }
            if !partitioned {
                for ack in &acknowledgements {
                    store.acknowledge(name, ack);
                    if let Some(telemetry) = &node.telemetry {
                        telemetry.revision(ack.revision);
                    }
                }
            }
            if let Some(telemetry) = &node.telemetry {
                telemetry.observe_agent(node.agent.protocol());
            }
        }
    }

    /// The cap check and throughput accounting of run `index` at `t`.
    fn account(&mut self, index: usize, t: f64) {
        let watts = budget_watts(&self.prepared, &self.chains, &self.runs[index].nodes);
        let run = &mut self.runs[index];
        let mut cut = false;
        for (entry, &cap) in run.caps.iter_mut().zip(&self.caps_now) {
            if cap < entry.effective {
                let held_cap = entry
                    .held
                    .filter(|(_, until)| t < *until)
                    .map_or(entry.effective, |(held, _)| held.max(entry.effective));
                entry.held = Some((held_cap, t + CUT_GRACE_SECONDS));
                cut = true;
            }
            entry.effective = cap;
        }
        if cut && run.cut_pending_since.is_none() {
            run.cut_pending_since = Some(t);
        }
        let mut over = 0.0_f64;
        let mut fits_new_caps = true;
        for (checked, &(limits, _)) in run.caps.iter().zip(&watts) {
            let in_force = match checked.held {
                Some((held, until)) if t < until => held.max(checked.effective),
                _ => checked.effective,
            };
            over = over.max(limits - in_force);
            fits_new_caps &= limits <= checked.effective + 1e-6;
        }
        run.summary.cap_checks += 1;
        if over > 1e-6 {
            run.summary.cap_violations += 1;
            run.summary.worst_over_cap_watts = run.summary.worst_over_cap_watts.max(over);
        }
        if let Some(since) = run.cut_pending_since
            && fits_new_caps
        {
            run.summary.worst_cut_enforced_seconds =
                run.summary.worst_cut_enforced_seconds.max(t - since);
            run.cut_pending_since = None;
        }
        let (mut weighted, mut weight) = (0.0, 0.0);
        for node in &run.nodes {
            let backend = node.agent.backend();
            for (gpu, workload) in node.gpu_workloads.iter().enumerate() {
                let Some(w) = *workload else { continue };
                let best = self.best_throughput[w];
                if best <= 0.0 {
                    continue;
                }
                let throughput = backend.throughput(gpu as u32).unwrap_or(0.0);
                let workload_weight = self.prepared.workloads[w].weight;
                weighted += workload_weight * throughput / best;
                weight += workload_weight;
            }
        }
        run.throughput_weighted += weighted * TICK_SECONDS;
        run.throughput_weight += weight * TICK_SECONDS;
        run.instant_throughput = if weight > 0.0 { weighted / weight } else { 0.0 };
    }

    fn record_series(&mut self, t: f64) {
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
    async fn publish_progress(&mut self, t: f64) {
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
                summary.energy_joules = run
                    .nodes
                    .iter()
                    .map(|node| {
                        let backend = node.agent.backend();
                        (0..node.agent.gpus().len() as u32)
                            .filter_map(|i| backend.read(i).ok().and_then(|r| r.energy_joules))
                            .sum::<f64>()
                    })
                    .sum();
                if let Some(operator) = &run.operator {
                    summary.plan_revisions = operator.publishes;
                    summary.passes = operator.passes;
                    summary.pass_errors = operator.errors;
                    summary.median_solve_seconds = median(&operator.solve_seconds);
                    summary.median_pass_seconds = median(&operator.pass_seconds);
                }
                summary
            })
            .collect()
    }

    pub fn series(&self) -> &[SeriesPoint] {
        &self.series
    }

    /// The Kilowatt run's plan store, for `GET /api/v1/plan`.
    pub fn kilowatt_store(&self) -> MemoryPlanStore {
        self.runs[0]
            .operator
            .as_ref()
            .map(|o| o.store.clone())
            .unwrap_or_else(|| MemoryPlanStore::new(KeyLayout::new("/kilowatt")))
    }

    /// The root budget the series follows.
    pub fn series_budget(&self) -> Option<&str> {
        self.root
            .map(|r| self.prepared.scenario.budgets[r].name.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::Scenario;

    fn small_scenario(tail: &str) -> Prepared {
        let text = format!(
            r#"
name: small
start: "2026-12-01T00:00:00Z"
durationSeconds: 120
budgets:
  - name: row
    capWatts: 9000
    nodeOverheadWatts: 500
    windows: [{{name: dip, capWatts: 6000, startSeconds: 40, endSeconds: 80}}]
  - {{name: rack-1, parent: row, capWatts: 6000, nodeLabels: {{rack: "1"}}}}
  - {{name: rack-2, parent: row, capWatts: 6000, nodeLabels: {{rack: "2"}}}}
nodeGroups:
  - {{prefix: r1-, count: 2, labels: {{rack: "1"}}, gpus: 4, gpuProduct: NVIDIA-H100-80GB-HBM3}}
  - {{prefix: r2-, count: 2, labels: {{rack: "2"}}, gpus: 4, gpuProduct: NVIDIA-H100-80GB-HBM3}}
workloads:
  - {{name: train, kind: training, profile: llm-pretrain-h100, pods: 2, gpusPerPod: 4, nodeLabels: {{rack: "1"}}}}
  - {{name: serve, kind: inference, profile: llm-serve-h100, pods: 4, gpusPerPod: 2, nodeLabels: {{rack: "2"}}}}
{tail}"#
        );
        Scenario::parse(&text, "test")
            .expect("parses")
            .prepare("test")
            .expect("valid")
    }

    fn settings(duration_seconds: f64) -> Settings {
        Settings {
            duration_seconds,
            solve: SolveOptions::default(),
            resync_seconds: 60.0,
            series_every_seconds: 10.0,
        }
    }

    async fn run_to_end(prepared: Prepared, duration_seconds: f64) -> Simulation {
        let mut simulation =
            Simulation::new(prepared, settings(duration_seconds), Feed::new("simulate"))
                .expect("simulation starts");
        while !simulation.finished() {
            simulation.step().await;
        }
        simulation
    }

    #[tokio::test]
    async fn kilowatt_keeps_every_cap_through_a_dip_and_beats_uniform_capping() {
        let simulation = run_to_end(small_scenario(""), 120.0).await;
        let runs = simulation.summaries();
        let (kilowatt, uniform, proportional, uncapped) = (&runs[0], &runs[1], &runs[2], &runs[3]);
        assert_eq!(proportional.cap_violations, 0, "{proportional:?}");
        assert!(kilowatt.normalized_throughput >= proportional.normalized_throughput);
        assert_eq!(kilowatt.cap_checks, 1200);
        assert_eq!(kilowatt.cap_violations, 0, "{kilowatt:?}");
        assert_eq!(uniform.cap_violations, 0, "{uniform:?}");
        // Uncapped GPUs at 700 W (3300 W per node) break the 6000 W racks all the time.
        assert!(uncapped.cap_violations > 1000, "{uncapped:?}");
        assert!(
            kilowatt.normalized_throughput > uniform.normalized_throughput,
            "kilowatt {} uniform {}",
            kilowatt.normalized_throughput,
            uniform.normalized_throughput
        );
        assert!(kilowatt.energy_joules < uncapped.energy_joules);
        // The dip is a cut the agents enforced within the grace.
        assert!(kilowatt.worst_cut_enforced_seconds > 0.0);
        assert!(kilowatt.worst_cut_enforced_seconds <= CUT_GRACE_SECONDS);
        assert!(kilowatt.plan_revisions >= 3, "{kilowatt:?}");
        assert_eq!(simulation.series().len(), 12);
    }

    #[tokio::test]
    async fn a_cut_off_agent_fences_to_its_floors_and_rejoins() {
        let prepared =
            small_scenario("partitions: [{node: r1-0, startSeconds: 10, endSeconds: 30}]\n");
        let mut simulation = Simulation::new(prepared, settings(60.0), Feed::new("simulate"))
            .expect("simulation starts");
        let mut floors_seen = false;
        while !simulation.finished() {
            simulation.step().await;
            let t = simulation.now_seconds();
            let node = &simulation.runs[0].nodes[0];
            let limits: Vec<f64> = (0..4)
                .map(|i| node.agent.backend().power_limit_watts(i).unwrap_or(0.0))
                .collect();
            if (20.0..30.0).contains(&t) {
                floors_seen |= limits.iter().all(|l| *l == 200.0);
            }
        }
        assert!(floors_seen, "the cut-off agent fenced to 200 W");
        let kilowatt = &simulation.summaries()[0];
        assert_eq!(kilowatt.fences, 1);
        assert_eq!(kilowatt.cap_violations, 0);
        let node = &simulation.runs[0].nodes[0];
        assert_eq!(node.agent.protocol().mode(), Mode::Following);
    }

    #[tokio::test]
    async fn a_pod_arriving_next_to_a_running_one_is_planned_on_the_gpus_it_really_holds() {
        // `a-train-0` sorts before `serve-0`, but starts later: the device plugin gives it GPUs 2
        // and 3, not the 0 and 1 that pod-name order would.
        let text = r#"
name: mixed
start: "2026-12-01T00:00:00Z"
durationSeconds: 120
budgets: [{name: rack, capWatts: 2600, nodeOverheadWatts: 400, nodeLabels: {rack: r}}]
nodeGroups: [{prefix: n, count: 1, labels: {rack: r}, gpus: 4, gpuProduct: NVIDIA-H100-80GB-HBM3}]
workloads:
  - {name: serve, kind: inference, profile: llm-serve-h100, pods: 1, gpusPerPod: 2}
  - {name: a-train, kind: training, profile: llm-pretrain-h100, pods: 1, gpusPerPod: 2, startSeconds: 30}
"#;
        let prepared = Scenario::parse(text, "test")
            .expect("parses")
            .prepare("test")
            .expect("valid");
        let simulation = run_to_end(prepared, 120.0).await;
        let node = &simulation.runs[0].nodes[0];
        let held = |p: &str| Some(format!("{}/{p}", simulation.prepared.scenario.namespace));
        assert_eq!(
            node.gpu_holders,
            [
                held("serve-0"),
                held("serve-0"),
                held("a-train-0"),
                held("a-train-0")
            ]
        );
        assert_eq!(node.planned_pods, node.gpu_holders);
        let kilowatt = &simulation.summaries()[0];
        assert_eq!(kilowatt.misplanned_gpu_seconds, 0.0, "{kilowatt:?}");
        assert_eq!(kilowatt.cap_violations, 0);
    }

    #[tokio::test]
    async fn the_page_feed_names_the_window_that_cut_the_cap() {
        let feed = Feed::new("simulate");
        let mut simulation = Simulation::new(small_scenario(""), settings(60.0), feed.clone())
            .expect("simulation starts");
        while !simulation.finished() {
            simulation.step().await;
        }
        let overview = feed.overview();
        let reasons: Vec<&String> = overview.changes.iter().flat_map(|c| &c.reasons).collect();
        assert!(
            reasons.iter().any(|r| r.contains("window dip opened")),
            "{reasons:?}"
        );
        let simulation_view = overview.simulation.expect("simulation progress");
        assert!(simulation_view.finished);
        assert_eq!(simulation_view.runs.len(), 4);
        let metrics = simulation.render_metrics().expect("metrics");
        assert!(metrics.contains("kilowatt_budget_allocated_watts{budget=\"row\"}"));
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("kilowatt_gpu_power_watts{")
                    && l.contains("node=\"r1-0\"")
                    && l.contains("gpu=\"0\"")),
            "{metrics}"
        );
    }
}
