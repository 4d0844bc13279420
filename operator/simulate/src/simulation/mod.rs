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
use kilowatt_plumbing::errors::error_chain;
use kilowatt_solver::{MethodChoice, SolveOptions};
use serde::Serialize;

use crate::faults::Fault;
use crate::scenario::{Prepared, Told, instant, simulated_boot_id};
use kilowatt_operator::controller::timing::{
    self, DEFAULT_ACK_TIMEOUT, LoopTimers, PassOutcome, Timing,
};
use kilowatt_operator::http::metrics::Metrics;
use kilowatt_operator::http::web::{self, Feed, PassRecord, RunView, SimulationView};
use kilowatt_operator::plan::pass::{self, PassInputs};
use kilowatt_operator::plan::published::{KeyLayout, PublishedPlan};
use kilowatt_operator::plan::schedule::DEFAULT_WINDOW_LEAD;
use kilowatt_operator::plan::status::measured_per_budget;
use kilowatt_operator::plan::translate::{Cluster, NodeHold, translate};
use kilowatt_operator::store::memory::MemoryPlanStore;
use kilowatt_operator::store::{Loaded, PlanStore};

mod accounting;
mod cap_check;
#[cfg(test)]
mod learning_bench;
mod metrics;
mod nodes;
mod operator;
mod report;
mod work;

pub use cap_check::CUT_GRACE_SECONDS;
use cap_check::{CheckedCap, budget_watts, effective_caps};
use nodes::{NodeState, simulated_gpu_uuid};
use operator::{Learning, Operator};
pub use report::{LearnedCurveSummary, OverCapTick, RunSummary, SeriesPoint};

/// Simulated seconds per tick: the resolution of the cap check and of the operator's timers.
pub const TICK_SECONDS: f64 = 0.1;

/// Simulated seconds as the reconcile loop's time, to the microsecond: ticks and scenario times are
/// far coarser, so the f64 noise of `ticks × 0.1` never moves a timer across a tick.
fn loop_time(seconds: f64) -> Duration {
    Duration::from_micros((seconds.max(0.0) * 1e6).round() as u64)
}

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
    /// Whether the Kilowatt run learns curves from the pods' work counters (and explores the
    /// workloads that opt in).
    pub learning: bool,
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
    /// Kilowatt told every workload's true profile from the start, learning nothing.
    Oracle,
}

impl RunKind {
    pub const ALL: [RunKind; 5] = [
        RunKind::Kilowatt,
        RunKind::Uniform,
        RunKind::Proportional,
        RunKind::Uncapped,
        RunKind::Oracle,
    ];
}

impl RunKind {
    pub fn name(self) -> &'static str {
        match self {
            RunKind::Kilowatt => "kilowatt",
            RunKind::Uniform => "uniform",
            RunKind::Proportional => "proportional",
            RunKind::Uncapped => "uncapped",
            RunKind::Oracle => "oracle",
        }
    }
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
    /// CO₂ of the GPU energy up to the last carbon-intensity change, and that energy.
    carbon_grams: f64,
    energy_at_intensity_change_joules: f64,
    summary: RunSummary,
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
    /// Instants at which the carbon intensity changes, after 0.
    intensity_changes: Vec<f64>,
    /// The effective caps since the last boundary passed, by budget position.
    caps_now: Vec<f64>,
    /// Each node's budgets, as positions.
    chains: Vec<Vec<usize>>,
    /// The cluster objects since the last change (a workload came or went, a cap was edited), as
    /// Kilowatt and the baselines are told them, and as the oracle is.
    objects: Objects,
    objects_truth: Objects,
    /// How each pod's work counter reads, by `namespace/name`.
    pod_work: BTreeMap<String, work::PodWork>,
    /// The first instant the cap check counts: one tick, plus the longest `slowApply` delay.
    check_from_seconds: f64,
}

/// The Kubernetes objects the operator plans from, as they stand.
struct Objects {
    budgets: Vec<Arc<kilowatt_crds::PowerBudget>>,
    profiles: Vec<Arc<kilowatt_crds::WorkloadProfile>>,
    nodes: Vec<Arc<k8s_openapi::api::core::v1::Node>>,
    pods: Vec<Arc<k8s_openapi::api::core::v1::Pod>>,
}

impl Objects {
    fn at(prepared: &Prepared, t: f64, told: Told) -> Objects {
        Objects {
            budgets: prepared.budgets(t),
            profiles: prepared.profiles(told),
            nodes: prepared.node_objects(t),
            pods: prepared.pod_objects(t, told),
        }
    }
}

fn seconds(t: f64) -> Duration {
    Duration::from_secs_f64(t.max(0.0))
}

impl Simulation {
    /// Sets up the three runs at time 0: GPUs at their default (maximum) limits, agents registered.
    pub fn new(
        prepared: Prepared,
        settings: Settings,
        feed: Arc<Feed>,
    ) -> Result<Simulation, SimulateError> {
        // The live chart then spans the whole run, however often the run records.
        feed.space_history(settings.duration_seconds / web::HISTORY_KEPT as f64);
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
                RunKind::Kilowatt | RunKind::Oracle => Some(settings.solve.method),
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
                        sweep_recheck: kilowatt_operator::plan::learning::EXPLORE_CHECK,
                    }),
                    budgets_of: BTreeMap::new(),
                    overheads: BTreeMap::new(),
                    passes: 0,
                    publishes: 0,
                    errors: 0,
                    solve_seconds: Vec::new(),
                    pass_seconds: Vec::new(),
                    learning: (kind == RunKind::Kilowatt && settings.learning)
                        .then(Learning::default),
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
                let faults: Vec<Fault> = prepared
                    .scenario
                    .faults
                    .iter()
                    .filter(|f| f.hits(&node.name))
                    .cloned()
                    .collect();
                let mut gpus = SimulatedGpus::new(gpus);
                for fault in &faults {
                    if let Fault::SlowApply { delay_seconds, .. } = fault {
                        gpus.set_apply_delay(Duration::from_secs_f64(*delay_seconds));
                    }
                }
                let agent = SteppedAgent::start(
                    gpus,
                    defaults::fence_after(defaults::LEASE_TTL, defaults::FENCE_FRACTION),
                    Duration::ZERO,
                )
                .map_err(|source| SimulateError::Gpus {
                    node: node.name.clone(),
                    source,
                })?
                .with_boot_id(Some(simulated_boot_id(&node.name, 0)));
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
                    faults,
                    agent_running: true,
                    agent_stopped_at: None,
                    powered: true,
                    inventory_corrupted: false,
                    last_limit_check: 0.0,
                    work_counters: Vec::new(),
                    pod_counters: Default::default(),
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
                    .zip(&prepared.scenario.budgets)
                    .map(|(&cap, budget)| CheckedCap {
                        effective: cap,
                        spec: budget.cap_watts,
                        held: None,
                    })
                    .collect(),
                cut_pending_since: None,
                throughput_weighted: 0.0,
                throughput_weight: 0.0,
                instant_throughput: 0.0,
                carbon_grams: 0.0,
                energy_at_intensity_change_joules: 0.0,
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
        let intensity_changes = prepared
            .scenario
            .carbon_intensity
            .iter()
            .map(|p| p.at_seconds)
            .filter(|&at| at > 0.0)
            .collect();
        let objects = Objects::at(&prepared, 0.0, Told::Declared);
        let objects_truth = Objects::at(&prepared, 0.0, Told::Truth);
        let pod_work = prepared
            .pods
            .iter()
            .map(|pod| {
                let workload = &prepared.workloads[pod.workload].entry;
                (
                    format!("{}/{}", prepared.scenario.namespace, pod.name),
                    work::PodWork {
                        noise: workload.measurement_noise,
                        serves: workload.kind == kilowatt_solver::model::WorkloadKind::Inference,
                    },
                )
            })
            .collect();
        let slowest_apply = prepared
            .scenario
            .faults
            .iter()
            .filter_map(|f| match f {
                Fault::SlowApply { delay_seconds, .. } => Some(*delay_seconds),
                _ => None,
            })
            .fold(0.0, f64::max);
        let check_from_seconds = TICK_SECONDS * (1.0 + (slowest_apply / TICK_SECONDS).ceil());
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
            intensity_changes,
            caps_now,
            chains,
            objects,
            objects_truth,
            pod_work,
            check_from_seconds,
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

    /// Advances one tick.
    pub async fn step(&mut self) {
        let before = self.now_seconds();
        self.ticks += 1;
        let t = self.now_seconds();
        let changed = self.change_times.iter().any(|c| before < *c && *c <= t);
        let intensity_changed = self
            .intensity_changes
            .iter()
            .any(|c| before < *c && *c <= t);
        if self.cap_boundaries.iter().any(|c| before < *c && *c <= t) {
            self.caps_now = effective_caps(&self.prepared, t);
        }
        if changed {
            self.objects = Objects::at(&self.prepared, t, Told::Declared);
            self.objects_truth = Objects::at(&self.prepared, t, Told::Truth);
        }
        for index in 0..self.runs.len() {
            if changed {
                self.apply_changes(index, t);
            }
            if self.pass_due(index, t) {
                self.plan(index, t).await;
            }
            self.step_agents(index, before, t);
            self.check_caps(index, t);
            self.account_throughput(index);
            if intensity_changed {
                self.account_carbon(index, before);
            }
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

    /// The Kilowatt run's plan store, for `GET /api/v1/plan`.
    pub fn kilowatt_store(&self) -> MemoryPlanStore {
        self.runs[0]
            .operator
            .as_ref()
            .map(|o| o.store.clone())
            .unwrap_or_else(|| MemoryPlanStore::new(KeyLayout::new("/kilowatt")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::Scenario;

    fn small_scenario(tail: &str) -> Prepared {
        Scenario::parse(&small_scenario_text(tail), "test")
            .expect("parses")
            .prepare("test")
            .expect("valid")
    }

    fn small_scenario_text(tail: &str) -> String {
        format!(
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
        )
    }

    fn settings(duration_seconds: f64) -> Settings {
        Settings {
            duration_seconds,
            solve: SolveOptions::default(),
            resync_seconds: 60.0,
            series_every_seconds: 10.0,
            learning: true,
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
        // The dip is a window, known ahead: its cap is enforced the instant it opens (the check
        // gives windows no grace).
        assert_eq!(kilowatt.worst_cut_enforced_seconds, 0.0);
        assert!(
            kilowatt.over_cap_ticks.is_empty(),
            "{:?}",
            kilowatt.over_cap_ticks
        );
        assert!(kilowatt.plan_revisions >= 3, "{kilowatt:?}");
        assert_eq!(simulation.series().len(), 12);
    }

    #[tokio::test]
    async fn a_max_slowdown_on_the_root_saves_energy_within_its_throughput_allowance() {
        let plain = run_to_end(small_scenario(""), 120.0).await.summaries();
        let mut scenario = Scenario::parse(&small_scenario_text(""), "test").expect("parses");
        scenario.set_root_max_slowdown(0.05);
        let policy = run_to_end(scenario.prepare("test").expect("valid"), 120.0)
            .await
            .summaries();
        let (before, after) = (&plain[0], &policy[0]);
        assert_eq!(after.cap_violations, 0, "{after:?}");
        assert!(
            after.energy_joules < 0.97 * before.energy_joules,
            "energy {} -> {}",
            before.energy_joules,
            after.energy_joules
        );
        assert!(
            after.normalized_throughput >= 0.95 * before.normalized_throughput - 1e-3,
            "throughput {} -> {}",
            before.normalized_throughput,
            after.normalized_throughput
        );
        assert!(after.normalized_throughput < before.normalized_throughput);
        // Uniform capping ignores the policy.
        assert_eq!(policy[1].energy_joules, plain[1].energy_joules);
        assert_eq!(after.carbon_grams, None, "no carbon intensity, no carbon");
    }

    #[tokio::test]
    async fn carbon_is_each_stretch_of_energy_at_the_intensity_over_it() {
        let prepared = small_scenario(
            "carbonIntensity: [{atSeconds: 0, gramsPerKWh: 250}, {atSeconds: 60, gramsPerKWh: 520}]\n",
        );
        let mut simulation = Simulation::new(prepared, settings(120.0), Feed::new("simulate"))
            .expect("simulation starts");
        let mut energy_at_change = None;
        while !simulation.finished() {
            simulation.step().await;
            if energy_at_change.is_none() && simulation.now_seconds() >= 60.0 - 1e-9 {
                energy_at_change = Some(
                    simulation
                        .summaries()
                        .iter()
                        .map(|s| s.energy_joules)
                        .collect::<Vec<_>>(),
                );
            }
        }
        let energy_at_change = energy_at_change.expect("the run passed 60 s");
        for (run, first) in simulation.summaries().iter().zip(energy_at_change) {
            let expected = (first * 250.0 + (run.energy_joules - first) * 520.0) / 3.6e6;
            let carbon = run.carbon_grams.expect("a carbon intensity, so carbon");
            assert!(first > 0.0 && run.energy_joules > first, "{run:?}");
            assert!(
                (carbon - expected).abs() <= 1e-9 * expected,
                "{}: {carbon} g, expected {expected} g",
                run.name
            );
        }
        let overview = simulation.feed.overview();
        let runs = overview.simulation.expect("simulation progress").runs;
        assert!(runs.iter().all(|r| r.carbon_grams.is_some()), "{runs:?}");
    }

    #[tokio::test]
    async fn every_fault_of_the_format_runs_and_no_cap_is_exceeded() {
        // The faults keep away from the dip (40-80 s), which leaves no room to absorb anything.
        let prepared = small_scenario(
            r#"capChanges:
  - {atSeconds: 15, budget: rack-1, capWatts: 4500}
  - {atSeconds: 88, budget: rack-2, capWatts: 5000}
faults:
  - {kind: agentCrash, node: r1-0, atSeconds: 10, restartSeconds: 20}
  - {kind: reboot, node: r1-1, atSeconds: 85, downSeconds: 10}
  - {kind: gpuStuck, node: r2-0, gpu: 1, atSeconds: 82, endSeconds: 100}
  - {kind: slowApply, node: "*", delaySeconds: 0.107}
  - {kind: badInventory, node: r2-1, atSeconds: 25, minLimitWatts: 0}
  - {kind: nodeNotReady, node: r1-0, atSeconds: 100, endSeconds: 110}
"#,
        );
        let mut simulation = Simulation::new(prepared, settings(120.0), Feed::new("simulate"))
            .expect("simulation starts");
        let (mut r1_0_held_while_dead, mut r1_1_dark, mut r2_1_floors) = (false, false, false);
        while !simulation.finished() {
            simulation.step().await;
            let t = simulation.now_seconds();
            let run = &simulation.runs[0];
            let limits = |n: usize| -> Vec<f64> {
                (0..4)
                    .map(|i| {
                        run.nodes[n]
                            .agent
                            .backend()
                            .power_limit_watts(i)
                            .unwrap_or(0.0)
                    })
                    .collect()
            };
            if (16.0..30.0).contains(&t) {
                r1_0_held_while_dead |= limits(0).iter().all(|w| *w > 200.0);
            }
            r1_1_dark |= !run.nodes[1].powered;
            if (30.0..40.0).contains(&t) {
                r2_1_floors |= limits(3).iter().all(|w| *w == 200.0);
            }
        }
        let kilowatt = &simulation.summaries()[0];
        assert!(
            r1_0_held_while_dead,
            "the dead agent's GPUs kept their limits"
        );
        assert!(r1_1_dark, "the rebooting machine went dark");
        assert!(
            r2_1_floors,
            "the node with the bad inventory was held at its floors"
        );
        let first: Vec<_> = kilowatt.over_cap_ticks.iter().take(6).collect();
        assert_eq!(kilowatt.cap_violations, 0, "{first:?}");
        assert_eq!(kilowatt.pass_errors, 0);
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
        let caps: Vec<f64> = overview
            .history
            .iter()
            .map(|s| {
                assert_eq!(s.budgets.len(), 1, "the root only: {s:?}");
                s.budgets[0].cap_watts
            })
            .collect();
        assert!(
            caps.contains(&9000.0) && caps.contains(&6000.0),
            "the history holds the dip: {caps:?}"
        );
        assert!(
            overview
                .history
                .iter()
                .any(|s| s.budgets[0].measured_watts.is_some()),
            "and measured watts"
        );
        assert!(
            overview
                .workloads
                .iter()
                .all(|w| w.curve.as_ref().is_some_and(|c| !c.declared.is_empty())),
            "every row has its declared curve: {:?}",
            overview.workloads
        );
        let simulation_view = overview.simulation.expect("simulation progress");
        assert!(simulation_view.finished);
        assert_eq!(simulation_view.runs.len(), 5);
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
