//! Curves from measurement: the work windows node agents report, collected per workload and binned by
//! power limit ([`Learner`]); the curve the solver plans on, measured where enough windows agree and
//! the declared (or default) curve elsewhere, corrected one-sidedly ([`LearnedCurve::merged`]); and
//! the sweep that explores an opted-in workload's curve downward, one workload per root budget at a
//! time, never below its SLO floor and within a cost per hour ([`Explorer`]). Pure: reports, curves
//! and the current time in, curves and per-workload caps out.

use std::collections::{BTreeMap, BTreeSet};

use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kilowatt_crds::plan::{PowerReport, WorkWindow};
use kilowatt_crds::{MeasuredCurve, MeasuredPoint};
use kilowatt_solver::model::ProfilePoint;
use kube::ResourceExt;

use crate::plan::published::PublishedPlan;
use crate::plan::status::kube_time;
use crate::plan::translate::Translation;

/// `"true"`: the operator may sweep the workload's limit downward to measure its curve.
pub const EXPLORE_ANNOTATION: &str = "kilowatt.dev/explore";
/// The most throughput exploration may cost the workload, as a fraction of an hour at its planned
/// throughput, per hour (default [`DEFAULT_EXPLORE_MAX_COST`]).
pub const EXPLORE_MAX_COST_ANNOTATION: &str = "kilowatt.dev/explore-max-cost";
/// Default of [`EXPLORE_MAX_COST_ANNOTATION`]: 5 % of the workload's throughput per hour.
pub const DEFAULT_EXPLORE_MAX_COST: f64 = 0.05;

/// Windows whose limits fall within one bin are one point of the curve.
pub const BIN_WATTS: f64 = 5.0;
/// A bin becomes a point of the curve once this many saturated windows measured it.
pub const MIN_WINDOWS: u32 = 3;
/// Each exploration step lowers the workload's limit by this much (Zeus sweeps in 25 W steps).
pub const EXPLORE_STEP_WATTS: f64 = 25.0;
/// A step that gathers no windows in this long is given up (the workload stopped reporting).
pub const EXPLORE_STEP_TIMEOUT_SECONDS: f64 = 300.0;
/// The sweep stops this far above the SLO floor, as a fraction of best throughput, so that noise in
/// the merged curve cannot plan the workload under its floor.
const FLOOR_MARGIN: f64 = 0.02;

/// One bin of a workload's measured curve.
#[derive(Debug, Clone, PartialEq)]
pub struct LearnedPoint {
    /// Mean of the windows' limits.
    pub power_watts: f64,
    pub sm_clock_mhz: Option<u32>,
    /// Saturated windows (or windows of a workload without a waiting signal).
    pub windows: u32,
    /// Mean rate per GPU, in the work counter's unit per second.
    pub throughput: f64,
    /// Sample standard deviation of the windows' rates (0 with one window).
    pub spread: f64,
    /// Windows that were not saturated: they measured demand, so their rates are lower bounds only.
    pub lower_bound_windows: u32,
    /// The highest of those lower bounds.
    pub lower_bound: f64,
    pub last_measured: Timestamp,
    /// Running sums for the mean and spread (Welford).
    power_sum: f64,
    m2: f64,
}

impl LearnedPoint {
    /// Whether enough windows measured this bin for it to be a point of the planned curve.
    pub fn converged(&self) -> bool {
        self.windows >= MIN_WINDOWS
    }
}

/// What one [`Learner::record`] took from the reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recorded {
    /// Windows that are points of a curve.
    pub accepted: u64,
    /// Windows without waiting requests, kept as lower bounds.
    pub lower_bound: u64,
    /// Windows of pods in no managed workload.
    pub unmatched: u64,
    /// Windows the agents discarded, by reason.
    pub rejected: BTreeMap<String, u64>,
}

impl Recorded {
    fn add(&mut self, other: Recorded) {
        self.accepted += other.accepted;
        self.lower_bound += other.lower_bound;
        self.unmatched += other.unmatched;
        for (reason, count) in other.rejected {
            *self.rejected.entry(reason).or_default() += count;
        }
    }
}

/// A workload's measured curve.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LearnedCurve {
    /// By (bin, clock).
    points: BTreeMap<(i64, Option<u32>), LearnedPoint>,
    pub windows_accepted: u64,
    /// Lower-bound windows (not saturated).
    pub windows_lower_bound: u64,
}

impl LearnedCurve {
    fn add(&mut self, window: &WorkWindow, at: Timestamp) {
        let bin = (window.power_limit_watts / BIN_WATTS).round() as i64;
        let point = self
            .points
            .entry((bin, window.sm_clock_mhz))
            .or_insert_with(|| LearnedPoint {
                power_watts: window.power_limit_watts,
                sm_clock_mhz: window.sm_clock_mhz,
                windows: 0,
                throughput: 0.0,
                spread: 0.0,
                lower_bound_windows: 0,
                lower_bound: 0.0,
                last_measured: at,
                power_sum: 0.0,
                m2: 0.0,
            });
        point.last_measured = at;
        if window.saturated == Some(false) {
            point.lower_bound_windows += 1;
            point.lower_bound = point.lower_bound.max(window.rate_per_gpu);
            self.windows_lower_bound += 1;
            return;
        }
        self.windows_accepted += 1;
        point.windows += 1;
        let n = f64::from(point.windows);
        let delta = window.rate_per_gpu - point.throughput;
        point.throughput += delta / n;
        point.m2 += delta * (window.rate_per_gpu - point.throughput);
        point.spread = if point.windows > 1 {
            (point.m2 / (n - 1.0)).sqrt()
        } else {
            0.0
        };
        point.power_sum += window.power_limit_watts;
        point.power_watts = point.power_sum / n;
    }

    /// The curve as a WorkloadProfile's status keeps it.
    pub fn to_status(&self, workload: &str) -> MeasuredCurve {
        MeasuredCurve {
            workload: workload.to_owned(),
            windows_accepted: self.windows_accepted,
            windows_lower_bound: self.windows_lower_bound,
            points: self
                .points
                .values()
                .map(|p| MeasuredPoint {
                    power_watts: round_to(p.power_watts, 1e-3),
                    sm_clock_mhz: p.sm_clock_mhz,
                    throughput: round_to(p.throughput, 1e-6),
                    windows: p.windows,
                    spread: round_to(p.spread, 1e-6),
                    lower_bound: (p.lower_bound_windows > 0).then(|| round_to(p.lower_bound, 1e-6)),
                    last_measured: kube_time(p.last_measured),
                })
                .collect(),
        }
    }

    /// The curve a status kept. Its lower-bound windows come back as one each per point with a
    /// lower bound: the status keeps only the highest.
    fn from_status(measured: &MeasuredCurve) -> LearnedCurve {
        let points = measured
            .points
            .iter()
            .map(|p| {
                let n = f64::from(p.windows);
                let point = LearnedPoint {
                    power_watts: p.power_watts,
                    sm_clock_mhz: p.sm_clock_mhz,
                    windows: p.windows,
                    throughput: p.throughput,
                    spread: p.spread,
                    lower_bound_windows: u32::from(p.lower_bound.is_some()),
                    lower_bound: p.lower_bound.unwrap_or(0.0),
                    last_measured: p.last_measured.0,
                    power_sum: p.power_watts * n,
                    m2: p.spread * p.spread * (n - 1.0).max(0.0),
                };
                (
                    ((p.power_watts / BIN_WATTS).round() as i64, p.sm_clock_mhz),
                    point,
                )
            })
            .collect();
        LearnedCurve {
            points,
            windows_accepted: measured.windows_accepted,
            windows_lower_bound: measured.windows_lower_bound,
        }
    }

    /// Every bin, by power then clock.
    pub fn points(&self) -> impl Iterator<Item = &LearnedPoint> {
        self.points.values()
    }

    /// Bins with at least [`MIN_WINDOWS`] saturated windows, by power.
    pub fn converged_points(&self) -> Vec<&LearnedPoint> {
        self.points.values().filter(|p| p.converged()).collect()
    }

    /// Windows measured at limits within a bin of `watts` since `since`.
    fn measured_near(&self, watts: f64, since: Timestamp) -> bool {
        let bin = (watts / BIN_WATTS).round() as i64;
        self.points
            .iter()
            .any(|((b, _), p)| *b == bin && p.last_measured >= since && p.converged())
    }

    /// The curve to plan on: the converged measured points where they are, and `declared` outside
    /// their range, scaled onto the counter's unit at the highest measured point. Below the lowest
    /// measured point the declared curve is only ever lowered — by the ratio of measured to declared
    /// there, when that is under one — so live data never makes the plan assume more throughput at
    /// low limits (less power for an SLO floor) than the declared curve does. A locked-clock curve,
    /// or one with no converged point, is planned as declared.
    pub fn merged(&self, declared: &[ProfilePoint]) -> Vec<ProfilePoint> {
        let measured: Vec<&LearnedPoint> = self
            .converged_points()
            .into_iter()
            .filter(|p| p.sm_clock_mhz.is_none())
            .collect();
        let clocked = declared.iter().any(|p| p.sm_clock_mhz.is_some());
        let (Some(lowest), Some(highest)) = (measured.first(), measured.last()) else {
            return declared.to_vec();
        };
        if clocked || declared.is_empty() {
            return declared.to_vec();
        }
        let declared_at_top = interpolate(declared, highest.power_watts);
        if declared_at_top <= 0.0 || highest.throughput <= 0.0 {
            return declared.to_vec();
        }
        let scale = highest.throughput / declared_at_top;
        let declared_at_low = scale * interpolate(declared, lowest.power_watts);
        let below = if declared_at_low > 0.0 {
            (lowest.throughput / declared_at_low).min(1.0)
        } else {
            1.0
        };
        let mut points: Vec<ProfilePoint> = declared
            .iter()
            .filter(|p| p.power_watts < lowest.power_watts - BIN_WATTS / 2.0)
            .map(|p| ProfilePoint {
                power_watts: p.power_watts,
                throughput: scale * p.throughput * below,
                sm_clock_mhz: None,
            })
            .collect();
        points.extend(measured.iter().map(|p| ProfilePoint {
            power_watts: p.power_watts,
            throughput: p.throughput,
            sm_clock_mhz: None,
        }));
        points.extend(
            declared
                .iter()
                .filter(|p| p.power_watts > highest.power_watts + BIN_WATTS / 2.0)
                .map(|p| ProfilePoint {
                    power_watts: p.power_watts,
                    throughput: scale * p.throughput,
                    sm_clock_mhz: None,
                }),
        );
        points
    }
}

/// `points` (sorted by power) at `watts`, linearly between points and flat beyond the ends.
pub(crate) fn interpolate(points: &[ProfilePoint], watts: f64) -> f64 {
    let Some(first) = points.first() else {
        return 0.0;
    };
    if watts <= first.power_watts {
        return first.throughput;
    }
    for pair in points.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        if watts <= b.power_watts {
            let span = b.power_watts - a.power_watts;
            if span <= 0.0 {
                return b.throughput;
            }
            return a.throughput + (b.throughput - a.throughput) * (watts - a.power_watts) / span;
        }
    }
    points.last().map_or(0.0, |p| p.throughput)
}

/// Every workload's measured curve, from the agents' power reports.
#[derive(Debug, Clone, Default)]
pub struct Learner {
    curves: BTreeMap<String, LearnedCurve>,
    /// The last report taken from each node: a pass sees a report until the next replaces it.
    last_report: BTreeMap<String, PowerReport>,
    /// Windows discarded by the agents, by reason.
    pub windows_rejected: BTreeMap<String, u64>,
    /// Windows of pods that belong to no managed workload.
    pub windows_unmatched: u64,
}

impl Learner {
    /// Takes the windows of every node's report not taken before; `workload_of` maps a pod
    /// (`namespace/name`) to its workload.
    pub fn record<'a>(
        &mut self,
        reports: impl IntoIterator<Item = (&'a str, &'a PowerReport)>,
        workload_of: &BTreeMap<&str, &str>,
        at: Timestamp,
    ) -> Recorded {
        let mut recorded = Recorded::default();
        for (node, report) in reports {
            if self.last_report.get(node) == Some(report) {
                continue;
            }
            self.last_report.insert(node.to_owned(), report.clone());
            let taken = self.record_windows(
                &report.work_windows,
                &report.work_windows_rejected,
                workload_of,
                at,
            );
            recorded.add(taken);
        }
        recorded
    }

    /// Takes `windows` and the counts of windows discarded (by reason) from a source other than an
    /// agent's report: the operator's own Prometheus queries.
    pub fn record_windows(
        &mut self,
        windows: &[WorkWindow],
        rejected: &BTreeMap<String, u32>,
        workload_of: &BTreeMap<&str, &str>,
        at: Timestamp,
    ) -> Recorded {
        let mut recorded = Recorded::default();
        for (reason, count) in rejected {
            *self.windows_rejected.entry(reason.clone()).or_default() += u64::from(*count);
            *recorded.rejected.entry(reason.clone()).or_default() += u64::from(*count);
        }
        for window in windows {
            match workload_of.get(window.pod.as_str()) {
                Some(workload) => {
                    self.curves
                        .entry((*workload).to_owned())
                        .or_default()
                        .add(window, at);
                    if window.saturated == Some(false) {
                        recorded.lower_bound += 1;
                    } else {
                        recorded.accepted += 1;
                    }
                }
                None => {
                    self.windows_unmatched += 1;
                    recorded.unmatched += 1;
                }
            }
        }
        recorded
    }

    /// Restores a workload's curve from what a WorkloadProfile's status kept of it, unless it is
    /// already known: a new leader (or a restarted operator) goes on from what was measured.
    pub fn restore(&mut self, measured: &MeasuredCurve) {
        if self.curves.contains_key(&measured.workload) {
            return;
        }
        self.curves.insert(
            measured.workload.clone(),
            LearnedCurve::from_status(measured),
        );
    }

    pub fn curve(&self, workload: &str) -> Option<&LearnedCurve> {
        self.curves.get(workload)
    }

    pub fn curves(&self) -> &BTreeMap<String, LearnedCurve> {
        &self.curves
    }

    /// Forgets the curves of workloads that are gone.
    pub fn retain(&mut self, workloads: &BTreeSet<&str>) {
        self.curves.retain(|w, _| workloads.contains(w.as_str()));
    }
}

/// The pod → workload map of a translation, for [`Learner::record`].
pub fn workload_of_pods(translation: &Translation) -> BTreeMap<&str, &str> {
    translation
        .workload_pods
        .iter()
        .flat_map(|(workload, pods)| pods.iter().map(move |p| (p.as_str(), workload.as_str())))
        .collect()
}

/// Plans the translation's workloads on their merged curves, and holds each exploring workload's
/// GPUs at or under its exploration cap.
pub fn plan_on_learned(
    translation: &mut Translation,
    learner: &Learner,
    exploring: &BTreeMap<String, f64>,
) {
    let mut capped_gpus: BTreeMap<&str, f64> = BTreeMap::new();
    for workload in &mut translation.problem.workloads {
        if let Some(curve) = learner.curve(&workload.name) {
            let merged = curve.merged(&workload.profile);
            let declared = std::mem::replace(&mut workload.profile, merged);
            translation
                .declared_profiles
                .insert(workload.name.clone(), declared);
        }
        if let Some(cap) = exploring.get(&workload.name) {
            for gpu in &workload.gpus {
                capped_gpus.insert(gpu.as_str(), *cap);
            }
        }
    }
    for gpu in translation
        .problem
        .nodes
        .iter_mut()
        .flat_map(|n| &mut n.gpus)
    {
        if let Some(cap) = capped_gpus.get(gpu.id.as_str()) {
            gpu.max_watts = cap.clamp(gpu.min_watts, gpu.max_watts);
        }
    }
}

/// The workloads some pod of which opts in to exploration, each with its cost cap (the lowest any of
/// its pods names; a value that is not a fraction in [0, 1] counts as the default).
pub fn explore_opt_ins(pods: &[Arc<Pod>], translation: &Translation) -> BTreeMap<String, f64> {
    let workload_of: BTreeMap<(&str, &str), &str> = translation
        .pods
        .iter()
        .filter_map(|p| {
            let workload = p.workload.as_deref()?;
            Some(((p.namespace.as_str(), p.name.as_str()), workload))
        })
        .collect();
    let mut opt_ins: BTreeMap<String, f64> = BTreeMap::new();
    for pod in pods {
        let annotations = pod.annotations();
        if annotations.get(EXPLORE_ANNOTATION).map(|v| v.trim()) != Some("true") {
            continue;
        }
        let namespace = pod.namespace().unwrap_or_default();
        let name = pod.name_any();
        let Some(workload) = workload_of.get(&(namespace.as_str(), name.as_str())) else {
            continue;
        };
        let max_cost = annotations
            .get(EXPLORE_MAX_COST_ANNOTATION)
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|v| (0.0..=1.0).contains(v))
            .unwrap_or(DEFAULT_EXPLORE_MAX_COST);
        let entry = opt_ins.entry((*workload).to_owned()).or_insert(max_cost);
        *entry = entry.min(max_cost);
    }
    opt_ins
}

/// The explorer's view of the opted-in workloads: their root budget, planned limit (in `plan`),
/// floor and curve (in the translation, merged).
pub fn candidates(
    translation: &Translation,
    plan: &PublishedPlan,
    opt_ins: &BTreeMap<String, f64>,
) -> Vec<Candidate> {
    let gpu_floors: BTreeMap<&str, (f64, &str)> = translation
        .problem
        .nodes
        .iter()
        .flat_map(|n| {
            n.gpus
                .iter()
                .map(move |g| (g.id.as_str(), (g.min_watts, n.budget.as_str())))
        })
        .collect();
    translation
        .problem
        .workloads
        .iter()
        // NB: locked-clock curves are planned as declared, so there is nothing to sweep for.
        .filter(|workload| workload.profile.iter().all(|p| p.sm_clock_mhz.is_none()))
        .filter_map(|workload| {
            let max_cost = *opt_ins.get(&workload.name)?;
            let planned = plan.workloads.iter().find(|w| w.name == workload.name)?;
            let (min_watts, budget) = workload
                .gpus
                .iter()
                .filter_map(|g| gpu_floors.get(g.as_str()))
                .fold((0.0, None), |(floor, budget), (min, b)| {
                    (f64::max(floor, *min), budget.or(Some(*b)))
                });
            let root = translation.chains.get(budget?)?.last()?.clone();
            Some(Candidate {
                workload: workload.name.clone(),
                root,
                planned_watts: planned.power_limit_watts,
                min_watts,
                curve: workload.profile.clone(),
                min_throughput_fraction: workload.min_throughput_fraction,
                max_cost,
            })
        })
        .collect()
}

/// An opted-in workload, as the explorer sees it at a pass.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub workload: String,
    /// The root budget it is under: one workload explores per root at a time.
    pub root: String,
    /// The limit its GPUs are planned at now.
    pub planned_watts: f64,
    /// Its GPUs' lowest limit.
    pub min_watts: f64,
    /// The curve it is planned on (merged).
    pub curve: Vec<ProfilePoint>,
    pub min_throughput_fraction: Option<f64>,
    /// Per hour, as a fraction of an hour at the throughput of `planned_watts`.
    pub max_cost: f64,
}

/// Where one workload's sweep stands.
#[derive(Debug, Clone, PartialEq)]
pub enum SweepState {
    /// Held at or under `cap_watts` since `since`, until its windows there converge.
    Holding {
        cap_watts: f64,
        since: Timestamp,
        /// Its limit before the sweep: the reference for the cost.
        reference_watts: f64,
    },
    /// Out of the hour's cost budget until `until`.
    Paused { until: Timestamp, next_watts: f64 },
    /// Explored down to `lowest_watts`.
    Done { lowest_watts: f64 },
}

/// One workload's sweep.
#[derive(Debug, Clone, PartialEq)]
pub struct Sweep {
    pub state: SweepState,
    pub steps: u32,
    /// Cost spent in the hour that began at `hour_started`.
    cost_spent: f64,
    hour_started: Timestamp,
    last_pass: Timestamp,
}

/// The exploration sweeps of every opted-in workload.
#[derive(Debug, Clone, Default)]
pub struct Explorer {
    sweeps: BTreeMap<String, Sweep>,
    /// Steps taken, over all sweeps.
    pub steps_total: u64,
}

impl Explorer {
    /// Advances every sweep at `now` and returns each exploring workload's cap.
    pub fn step(
        &mut self,
        candidates: &[Candidate],
        learner: &Learner,
        now: Timestamp,
    ) -> BTreeMap<String, f64> {
        let present: BTreeSet<&str> = candidates.iter().map(|c| c.workload.as_str()).collect();
        self.sweeps.retain(|w, _| present.contains(w.as_str()));
        let mut busy_roots: BTreeSet<&str> = BTreeSet::new();
        for candidate in candidates {
            let Some(sweep) = self.sweeps.get(&candidate.workload) else {
                continue;
            };
            if matches!(sweep.state, SweepState::Holding { .. }) {
                busy_roots.insert(candidate.root.as_str());
            }
        }
        let mut caps = BTreeMap::new();
        for candidate in candidates {
            let sweep = self.sweeps.get(&candidate.workload).cloned();
            let next = match sweep {
                None => {
                    if busy_roots.contains(candidate.root.as_str()) {
                        continue;
                    }
                    let first = candidate.planned_watts - EXPLORE_STEP_WATTS;
                    self.start_step(candidate, first, candidate.planned_watts, None, now)
                }
                Some(mut sweep) => {
                    match sweep.state.clone() {
                        SweepState::Done { .. } => {}
                        SweepState::Paused { until, next_watts } => {
                            if now >= until
                                && !busy_roots.contains(candidate.root.as_str())
                                && let Some(resumed) = self.start_step(
                                    candidate,
                                    next_watts,
                                    candidate.planned_watts,
                                    Some(sweep.clone()),
                                    now,
                                )
                            {
                                sweep = resumed;
                            }
                        }
                        SweepState::Holding {
                            cap_watts,
                            since,
                            reference_watts,
                        } => {
                            sweep = self.hold(
                                candidate,
                                learner,
                                sweep,
                                (cap_watts, since, reference_watts),
                                now,
                            );
                        }
                    }
                    Some(sweep)
                }
            };
            if let Some(sweep) = next {
                if let SweepState::Holding { cap_watts, .. } = sweep.state {
                    busy_roots.insert(candidate.root.as_str());
                    caps.insert(candidate.workload.clone(), cap_watts);
                }
                self.sweeps.insert(candidate.workload.clone(), sweep);
            }
        }
        caps
    }

    /// A sweep holding `cap_watts`: charges its cost, and steps down once its windows there
    /// converged (or the step timed out).
    fn hold(
        &mut self,
        candidate: &Candidate,
        learner: &Learner,
        mut sweep: Sweep,
        (cap_watts, since, reference_watts): (f64, Timestamp, f64),
        now: Timestamp,
    ) -> Sweep {
        let elapsed = seconds_between(sweep.last_pass, now);
        sweep.last_pass = now;
        let best_at_reference = interpolate(&candidate.curve, reference_watts);
        if best_at_reference > 0.0 {
            let at_cap = interpolate(&candidate.curve, cap_watts.min(reference_watts));
            let lost = (1.0 - at_cap / best_at_reference).max(0.0);
            sweep.cost_spent += lost * elapsed / 3600.0;
        }
        if seconds_between(sweep.hour_started, now) >= 3600.0 {
            sweep.hour_started = now;
            sweep.cost_spent = 0.0;
        }
        let measured = learner
            .curve(&candidate.workload)
            .is_some_and(|c| c.measured_near(cap_watts.min(candidate.planned_watts), since));
        let timed_out = seconds_between(since, now) >= EXPLORE_STEP_TIMEOUT_SECONDS;
        if !measured && !timed_out {
            return sweep;
        }
        let next = cap_watts.min(candidate.planned_watts) - EXPLORE_STEP_WATTS;
        self.start_step(candidate, next, reference_watts, Some(sweep.clone()), now)
            .unwrap_or(sweep)
    }

    /// Holds the workload at `cap_watts` next, unless that is under its floor or its SLO floor (the
    /// sweep is done) or the hour's cost is spent (paused).
    fn start_step(
        &mut self,
        candidate: &Candidate,
        cap_watts: f64,
        reference_watts: f64,
        sweep: Option<Sweep>,
        now: Timestamp,
    ) -> Option<Sweep> {
        let mut sweep = sweep.unwrap_or(Sweep {
            state: SweepState::Done {
                lowest_watts: candidate.planned_watts,
            },
            steps: 0,
            cost_spent: 0.0,
            hour_started: now,
            last_pass: now,
        });
        let lowest_so_far = match &sweep.state {
            SweepState::Holding { cap_watts, .. } => *cap_watts,
            _ => candidate.planned_watts,
        };
        let best = candidate
            .curve
            .iter()
            .map(|p| p.throughput)
            .fold(0.0, f64::max);
        let floor = candidate.min_throughput_fraction.unwrap_or(0.0) + FLOOR_MARGIN;
        let under_slo = candidate.min_throughput_fraction.is_some()
            && best > 0.0
            && interpolate(&candidate.curve, cap_watts) < floor * best;
        if cap_watts < candidate.min_watts - 1e-9 || under_slo {
            sweep.state = SweepState::Done {
                lowest_watts: lowest_so_far,
            };
            return Some(sweep);
        }
        if sweep.cost_spent >= candidate.max_cost {
            let resumes = now
                .checked_add(k8s_openapi::jiff::SignedDuration::from_secs_f64(
                    (3600.0 - seconds_between(sweep.hour_started, now)).max(0.0),
                ))
                .unwrap_or(now);
            sweep.state = SweepState::Paused {
                until: resumes,
                next_watts: cap_watts,
            };
            return Some(sweep);
        }
        sweep.state = SweepState::Holding {
            cap_watts,
            since: now,
            reference_watts,
        };
        sweep.steps += 1;
        sweep.last_pass = now;
        self.steps_total += 1;
        Some(sweep)
    }

    pub fn sweep(&self, workload: &str) -> Option<&Sweep> {
        self.sweeps.get(workload)
    }
}

/// How often a pass runs while a sweep holds a workload, to step it on as windows arrive (agents
/// report every few seconds; a level converges after [`MIN_WINDOWS`] 30 s windows).
pub const EXPLORE_CHECK: std::time::Duration = std::time::Duration::from_secs(10);

/// What a planning loop keeps between passes to learn curves: the learner, the sweeps, and what the
/// last pass said about pods and opted-in workloads.
#[derive(Debug, Default)]
pub struct Learning {
    pub learner: Learner,
    pub explorer: Explorer,
    /// Pod → workload, from the last pass.
    workload_of: BTreeMap<String, String>,
    /// The opted-in workloads as the last pass saw them.
    candidates: Vec<Candidate>,
}

impl Learning {
    /// Before a pass: takes the windows of the agents' reports and advances the sweeps. Returns what
    /// was taken and each exploring workload's cap, for [`plan_on_learned`].
    pub fn before_pass<'a>(
        &mut self,
        reports: impl IntoIterator<Item = (&'a str, &'a PowerReport)>,
        now: Timestamp,
    ) -> (Recorded, BTreeMap<String, f64>) {
        let workload_of: BTreeMap<&str, &str> = self
            .workload_of
            .iter()
            .map(|(p, w)| (p.as_str(), w.as_str()))
            .collect();
        let recorded = self.learner.record(reports, &workload_of, now);
        let exploring = self.explorer.step(&self.candidates, &self.learner, now);
        (recorded, exploring)
    }

    /// Takes the windows the operator cut from its own Prometheus queries (see
    /// [`crate::measure::QueryMeter`]), for the pods of the last pass.
    pub fn record_queried(
        &mut self,
        windows: &[WorkWindow],
        rejected: &BTreeMap<String, u32>,
        now: Timestamp,
    ) -> Recorded {
        let workload_of: BTreeMap<&str, &str> = self
            .workload_of
            .iter()
            .map(|(p, w)| (p.as_str(), w.as_str()))
            .collect();
        self.learner
            .record_windows(windows, rejected, &workload_of, now)
    }

    /// After a pass: remembers its pods and opted-in workloads.
    pub fn after_pass(
        &mut self,
        translation: &Translation,
        in_force: &PublishedPlan,
        pods: &[Arc<Pod>],
    ) {
        self.workload_of = workload_of_pods(translation)
            .into_iter()
            .map(|(p, w)| (p.to_owned(), w.to_owned()))
            .collect();
        let opt_ins = explore_opt_ins(pods, translation);
        self.candidates = candidates(translation, in_force, &opt_ins);
    }

    /// Forgets the curves of workloads the translation no longer plans (their profiles' statuses
    /// keep what was measured).
    pub fn forget_gone(&mut self, translation: &Translation) {
        let workloads: BTreeSet<&str> = translation
            .problem
            .workloads
            .iter()
            .map(|w| w.name.as_str())
            .collect();
        self.learner.retain(&workloads);
    }

    /// Whether some opted-in workload's sweep is not done, so passes should come every
    /// [`EXPLORE_CHECK`].
    pub fn sweeping(&self) -> bool {
        self.candidates
            .iter()
            .any(|c| self.sweep_in_progress(&c.workload))
    }

    /// Whether `workload` is opted in to exploration and its sweep is not done.
    pub fn sweep_in_progress(&self, workload: &str) -> bool {
        self.candidates.iter().any(|c| c.workload == workload)
            && !matches!(
                self.explorer.sweep(workload).map(|s| &s.state),
                Some(SweepState::Done { .. })
            )
    }
}

/// `value` rounded to a multiple of `step`, so statuses do not change with float noise.
fn round_to(value: f64, step: f64) -> f64 {
    (value / step).round() * step
}

fn seconds_between(from: Timestamp, to: Timestamp) -> f64 {
    to.duration_since(from).as_secs_f64().max(0.0)
}

pub mod job_profiles;
pub mod profile_status;

#[cfg(test)]
mod tests;
