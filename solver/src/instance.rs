//! Validation of a [`Problem`] into an indexed instance in integer milliwatts; pure, no IO.
//!
//! Every rule names the offending field by its path in the input file (`workloads[3].profile[0].powerWatts`),
//! because the people who read these messages are fixing a file another tool generated.

use std::collections::BTreeMap;

// NB: hash maps only for lookups by name; nothing is ever iterated from one, so plans never depend on
// hashing order.
use rustc_hash::FxHashMap;

use crate::curve::{Curve, CurveError, MeasuredPoint, Milliwatts};
use crate::model::{Problem, WorkloadKind};
use crate::whole_number::compact;

/// A problem that breaks a rule of the input format.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct InvalidProblem {
    /// Path of the offending field, e.g. `nodes[2].gpus[0].maxWatts`.
    pub path: String,
    pub message: String,
}

fn invalid(path: impl Into<String>, message: impl Into<String>) -> InvalidProblem {
    InvalidProblem {
        path: path.into(),
        message: message.into(),
    }
}

#[derive(Debug, Clone)]
pub(crate) struct BudgetEntry<'a> {
    pub name: &'a str,
    pub cap_mw: Milliwatts,
    /// This budget and its ancestors, innermost first.
    pub chain: Vec<usize>,
    /// The efficiency policy, validated to `[0, 1)`.
    pub max_slowdown: Option<f64>,
}

#[derive(Debug, Clone)]
pub(crate) struct NodeEntry {
    pub budget: usize,
    pub overhead_mw: Milliwatts,
}

#[derive(Debug, Clone)]
pub(crate) struct GpuEntry<'a> {
    pub id: &'a str,
    pub node: usize,
    pub min_mw: Milliwatts,
    pub max_mw: Milliwatts,
    pub workload: Option<usize>,
}

#[derive(Debug, Clone)]
pub(crate) struct WorkloadEntry<'a> {
    pub name: &'a str,
    pub kind: WorkloadKind,
    pub gpus: Vec<usize>,
    /// GPUs of this workload under each budget that holds any (ancestors included), by budget index.
    pub load: Vec<(usize, i64)>,
    /// GPUs of this workload per innermost budget of their nodes, by budget index.
    pub groups: Vec<(usize, i64)>,
    pub curve: Curve,
    /// The limits every GPU of the gang accepts (before the profile and the SLO floor narrow them).
    pub gpu_range_mw: (Milliwatts, Milliwatts),
    /// Objective weight of one unit of throughput: weight × GPUs / best measured throughput.
    pub value_per_throughput: f64,
}

impl WorkloadEntry<'_> {
    pub fn gpu_count(&self) -> i64 {
        self.gpus.len() as i64
    }
}

/// A validated problem in solver units, with the indices every method needs. Names borrow from the
/// problem: a 100,000-GPU fleet need not copy 100,000 ids to be solved.
#[derive(Debug, Clone)]
pub(crate) struct Instance<'a> {
    pub budgets: Vec<BudgetEntry<'a>>,
    pub nodes: Vec<NodeEntry>,
    pub gpus: Vec<GpuEntry<'a>>,
    pub workloads: Vec<WorkloadEntry<'a>>,
}

/// Watts to milliwatts, rounded up: used for demands, so they are never under-counted.
fn demand_mw(watts: f64) -> Milliwatts {
    (watts * 1000.0).ceil() as Milliwatts
}

/// Watts to milliwatts, rounded down: used for caps and ceilings, so they are never over-stated.
fn limit_mw(watts: f64) -> Milliwatts {
    (watts * 1000.0).floor() as Milliwatts
}

/// Largest cap, in watts, that the solver accepts (10 GW): above any campus, and small enough that
/// sums in milliwatts cannot overflow.
pub const MAX_CAP_WATTS: f64 = 1e10;
/// Largest per-node or per-GPU figure, in watts (10 MW), for the same reason.
pub const MAX_DEVICE_WATTS: f64 = 1e7;
/// Smallest power a GPU limit or a profile point may have, in watts: the solver counts milliwatts.
pub const MIN_DEVICE_WATTS: f64 = 1e-3;
/// Largest weight or throughput accepted, so that objective sums stay finite.
pub const MAX_MAGNITUDE: f64 = 1e15;
/// Smallest positive weight or throughput accepted: the objective divides by the best throughput,
/// and a tiny one (a subnormal, say) would make it infinite. Throughputs may also be 0.
pub const MIN_MAGNITUDE: f64 = 1e-9;

/// Checks that `value` is finite and within `[min, max]`; when `allow_zero`, 0 is accepted too.
/// `path` is only formatted when the check fails: valid input allocates no messages.
fn check_range(
    path: impl FnOnce() -> String,
    value: f64,
    allow_zero: bool,
    min: f64,
    max: f64,
) -> Result<(), InvalidProblem> {
    if (allow_zero && value == 0.0) || (min..=max).contains(&value) {
        return Ok(());
    }
    let (min, max) = (compact(min), compact(max));
    let range = if allow_zero && min != "0" {
        format!("0 or between {min} and {max}")
    } else {
        format!("between {min} and {max}")
    };
    let got = if value.is_finite() {
        compact(value)
    } else {
        value.to_string()
    };
    Err(invalid(path(), format!("must be {range} (got {got})")))
}

/// Watts: `allow_zero` for caps and overheads (0 to `max`), otherwise a device figure of at least a
/// milliwatt.
fn check_watts(
    path: impl FnOnce() -> String,
    watts: f64,
    allow_zero: bool,
    max: f64,
) -> Result<(), InvalidProblem> {
    let min = if allow_zero { 0.0 } else { MIN_DEVICE_WATTS };
    check_range(path, watts, false, min, max)
}

fn check_name(path: impl FnOnce() -> String, name: &str) -> Result<(), InvalidProblem> {
    if name.trim().is_empty() {
        return Err(invalid(path(), "must not be empty"));
    }
    Ok(())
}

impl<'a> Instance<'a> {
    /// Checks every rule of the input format and builds the indexed instance.
    pub fn new(problem: &'a Problem) -> Result<Instance<'a>, InvalidProblem> {
        let budgets = validate_budgets(problem)?;
        let budget_index: FxHashMap<&str, usize> = problem
            .budgets
            .iter()
            .enumerate()
            .map(|(i, b)| (b.name.as_str(), i))
            .collect();

        let mut nodes = Vec::with_capacity(problem.nodes.len());
        let mut gpus = Vec::new();
        let gpu_count: usize = problem.nodes.iter().map(|n| n.gpus.len()).sum();
        let mut node_names: FxHashMap<&str, usize> =
            FxHashMap::with_capacity_and_hasher(problem.nodes.len(), Default::default());
        let mut gpu_position: FxHashMap<&str, usize> =
            FxHashMap::with_capacity_and_hasher(gpu_count, Default::default());
        let mut gpu_paths: Vec<(usize, usize)> = Vec::new();
        for (n, node) in problem.nodes.iter().enumerate() {
            check_name(|| format!("nodes[{n}].name"), &node.name)?;
            if let Some(first) = node_names.insert(&node.name, n) {
                return Err(invalid(
                    format!("nodes[{n}].name"),
                    format!("duplicate node name {:?} (also nodes[{first}])", node.name),
                ));
            }
            let budget = *budget_index.get(node.budget.as_str()).ok_or_else(|| {
                invalid(
                    format!("nodes[{n}].budget"),
                    format!("unknown budget {:?}", node.budget),
                )
            })?;
            check_watts(
                || format!("nodes[{n}].overheadWatts"),
                node.overhead_watts,
                true,
                MAX_DEVICE_WATTS,
            )?;
            nodes.push(NodeEntry {
                budget,
                overhead_mw: demand_mw(node.overhead_watts),
            });
            for (g, gpu) in node.gpus.iter().enumerate() {
                let path = || format!("nodes[{n}].gpus[{g}]");
                check_name(|| format!("{}.id", path()), &gpu.id)?;
                if let Some(first) = gpu_position.insert(&gpu.id, gpus.len()) {
                    let (fn_, fg) = gpu_paths[first];
                    return Err(invalid(
                        format!("{}.id", path()),
                        format!(
                            "duplicate GPU id {:?} (also nodes[{fn_}].gpus[{fg}])",
                            gpu.id
                        ),
                    ));
                }
                check_watts(
                    || format!("{}.minWatts", path()),
                    gpu.min_watts,
                    false,
                    MAX_DEVICE_WATTS,
                )?;
                check_watts(
                    || format!("{}.maxWatts", path()),
                    gpu.max_watts,
                    false,
                    MAX_DEVICE_WATTS,
                )?;
                let (min_mw, max_mw) = (demand_mw(gpu.min_watts), limit_mw(gpu.max_watts));
                if min_mw > max_mw {
                    return Err(invalid(
                        format!("{}.minWatts", path()),
                        format!(
                            "must be <= maxWatts ({} > {})",
                            compact(gpu.min_watts),
                            compact(gpu.max_watts)
                        ),
                    ));
                }
                gpu_paths.push((n, g));
                gpus.push(GpuEntry {
                    id: &gpu.id,
                    node: n,
                    min_mw,
                    max_mw,
                    workload: None,
                });
            }
        }

        let mut workloads = Vec::with_capacity(problem.workloads.len());
        let mut workload_names: FxHashMap<&str, usize> =
            FxHashMap::with_capacity_and_hasher(problem.workloads.len(), Default::default());
        for (w, workload) in problem.workloads.iter().enumerate() {
            let path = || format!("workloads[{w}]");
            check_name(|| format!("{}.name", path()), &workload.name)?;
            if let Some(first) = workload_names.insert(&workload.name, w) {
                return Err(invalid(
                    format!("{}.name", path()),
                    format!(
                        "duplicate workload name {:?} (also workloads[{first}])",
                        workload.name
                    ),
                ));
            }
            check_range(
                || format!("{}.weight", path()),
                workload.weight,
                false,
                MIN_MAGNITUDE,
                MAX_MAGNITUDE,
            )?;
            if workload.gpus.is_empty() {
                return Err(invalid(
                    format!("{}.gpus", path()),
                    "must name at least one GPU",
                ));
            }
            let mut members = Vec::with_capacity(workload.gpus.len());
            for (k, id) in workload.gpus.iter().enumerate() {
                let &g = gpu_position.get(id.as_str()).ok_or_else(|| {
                    invalid(
                        format!("{}.gpus[{k}]", path()),
                        format!("unknown GPU {id:?}"),
                    )
                })?;
                if let Some(other) = gpus[g].workload {
                    return Err(invalid(
                        format!("{}.gpus[{k}]", path()),
                        format!(
                            "GPU {id:?} is already in workload {:?}",
                            problem.workloads[other].name
                        ),
                    ));
                }
                gpus[g].workload = Some(w);
                members.push(g);
            }
            let (curve, gpu_range_mw) = build_curve(problem, w, &members, &gpus)?;
            let groups = count_by_budget(members.iter().map(|&g| (nodes[gpus[g].node].budget, 1)));
            let load = count_by_budget(groups.iter().flat_map(|&(budget, count)| {
                budgets[budget].chain.iter().map(move |&b| (b, count))
            }));
            let value_per_throughput =
                workload.weight * members.len() as f64 / curve.best_throughput();
            workloads.push(WorkloadEntry {
                name: &workload.name,
                kind: workload.kind,
                gpus: members,
                load,
                groups,
                curve,
                gpu_range_mw,
                value_per_throughput,
            });
        }
        Ok(Instance {
            budgets,
            nodes,
            gpus,
            workloads,
        })
    }

    /// The limit each GPU needs at least: its minimum, or its workload's lowest feasible level.
    pub fn floor_mw(&self, gpu: usize) -> Milliwatts {
        let entry = &self.gpus[gpu];
        entry
            .workload
            .map_or(entry.min_mw, |w| self.workloads[w].curve.lo_mw())
    }

    /// Watts each budget must carry when every GPU sits at `limit_mw(gpu)`, overheads included.
    pub fn budget_usage(&self, limit_mw: impl Fn(usize) -> Milliwatts) -> Vec<Milliwatts> {
        let mut usage = vec![0; self.budgets.len()];
        for node in &self.nodes {
            for &b in &self.budgets[node.budget].chain {
                usage[b] += node.overhead_mw;
            }
        }
        for (g, gpu) in self.gpus.iter().enumerate() {
            let watts = limit_mw(g);
            for &b in &self.budgets[self.nodes[gpu.node].budget].chain {
                usage[b] += watts;
            }
        }
        usage
    }
}

/// Sums counts per budget index, sorted by index (a gang touches a handful of budgets, so a sorted
/// vector beats a map).
fn count_by_budget(items: impl IntoIterator<Item = (usize, i64)>) -> Vec<(usize, i64)> {
    let mut counts: Vec<(usize, i64)> = Vec::new();
    for (budget, count) in items {
        match counts.iter_mut().find(|(b, _)| *b == budget) {
            Some((_, total)) => *total += count,
            None => counts.push((budget, count)),
        }
    }
    counts.sort_unstable();
    counts
}

fn validate_budgets(problem: &Problem) -> Result<Vec<BudgetEntry<'_>>, InvalidProblem> {
    let mut index: FxHashMap<&str, usize> = FxHashMap::default();
    for (i, budget) in problem.budgets.iter().enumerate() {
        check_name(|| format!("budgets[{i}].name"), &budget.name)?;
        if let Some(first) = index.insert(&budget.name, i) {
            return Err(invalid(
                format!("budgets[{i}].name"),
                format!(
                    "duplicate budget name {:?} (also budgets[{first}])",
                    budget.name
                ),
            ));
        }
        check_watts(
            || format!("budgets[{i}].capWatts"),
            budget.cap_watts,
            true,
            MAX_CAP_WATTS,
        )?;
        if let Some(slowdown) = budget.max_slowdown
            && !(0.0..1.0).contains(&slowdown)
        {
            // NB: `contains` is false for NaN, so NaN lands here too.
            return Err(invalid(
                format!("budgets[{i}].maxSlowdown"),
                format!(
                    "must be at least 0 and less than 1 (got {})",
                    if slowdown.is_finite() {
                        compact(slowdown)
                    } else {
                        slowdown.to_string()
                    }
                ),
            ));
        }
    }
    let mut parents = Vec::with_capacity(problem.budgets.len());
    for (i, budget) in problem.budgets.iter().enumerate() {
        let parent = match &budget.parent {
            None => None,
            Some(name) => Some(*index.get(name.as_str()).ok_or_else(|| {
                invalid(
                    format!("budgets[{i}].parent"),
                    format!("unknown budget {name:?}"),
                )
            })?),
        };
        parents.push(parent);
    }
    let mut entries = Vec::with_capacity(parents.len());
    for (i, budget) in problem.budgets.iter().enumerate() {
        let mut chain = vec![i];
        let mut at = i;
        while let Some(parent) = parents[at] {
            if chain.contains(&parent) {
                let mut names: Vec<&str> = chain
                    .iter()
                    .map(|&b| problem.budgets[b].name.as_str())
                    .collect();
                names.push(&problem.budgets[parent].name);
                return Err(invalid(
                    format!("budgets[{i}].parent"),
                    format!("budgets form a cycle: {}", names.join(" -> ")),
                ));
            }
            chain.push(parent);
            at = parent;
        }
        entries.push(BudgetEntry {
            name: &budget.name,
            cap_mw: limit_mw(budget.cap_watts),
            chain,
            max_slowdown: budget.max_slowdown,
        });
    }
    Ok(entries)
}

fn build_curve(
    problem: &Problem,
    w: usize,
    members: &[usize],
    gpus: &[GpuEntry],
) -> Result<(Curve, (Milliwatts, Milliwatts)), InvalidProblem> {
    let workload = &problem.workloads[w];
    let path = || format!("workloads[{w}]");
    if workload.profile.is_empty() {
        return Err(invalid(
            format!("{}.profile", path()),
            "must have at least one point",
        ));
    }
    let locked_clock = workload.profile[0].sm_clock_mhz.is_some();
    let mut points = Vec::with_capacity(workload.profile.len());
    let mut clocks: BTreeMap<u32, usize> = BTreeMap::new();
    for (k, point) in workload.profile.iter().enumerate() {
        let at = || format!("{}.profile[{k}]", path());
        check_watts(
            || format!("{}.powerWatts", at()),
            point.power_watts,
            false,
            MAX_DEVICE_WATTS,
        )?;
        check_range(
            || format!("{}.throughput", at()),
            point.throughput,
            true,
            MIN_MAGNITUDE,
            MAX_MAGNITUDE,
        )?;
        if point.sm_clock_mhz.is_some() != locked_clock {
            return Err(invalid(
                format!("{}.smClockMHz", at()),
                "either every point of a profile has a clock or none has",
            ));
        }
        if let Some(clock) = point.sm_clock_mhz {
            if clock == 0 {
                return Err(invalid(format!("{}.smClockMHz", at()), "must be > 0"));
            }
            if let Some(first) = clocks.insert(clock, k) {
                return Err(invalid(
                    format!("{}.smClockMHz", at()),
                    format!("duplicate clock {clock} MHz (also profile[{first}])"),
                ));
            }
        }
        let power_mw = (point.power_watts * 1000.0).round() as Milliwatts;
        // NB: compared in milliwatts, the solver's unit: two points that round to the same milliwatt
        // would make a power-limit curve divide by a zero-length step.
        if let Some(previous) = points.last().map(|p: &MeasuredPoint| p.power_mw) {
            let unsorted = if locked_clock {
                power_mw < previous
            } else {
                power_mw <= previous
            };
            if unsorted {
                let order = if locked_clock {
                    "non-decreasing"
                } else {
                    "strictly increasing"
                };
                return Err(invalid(
                    format!("{}.powerWatts", at()),
                    format!(
                        "points must be sorted by powerWatts, {order} to the milliwatt ({} after {})",
                        compact(point.power_watts),
                        compact(workload.profile[k - 1].power_watts)
                    ),
                ));
            }
        }
        points.push(MeasuredPoint {
            power_mw,
            throughput: point.throughput,
            clock_mhz: point.sm_clock_mhz,
        });
    }
    let best = points.iter().map(|p| p.throughput).fold(0.0, f64::max);
    if best <= 0.0 {
        return Err(invalid(
            format!("{}.profile", path()),
            "at least one point must have throughput > 0",
        ));
    }
    let fraction = workload.min_throughput_fraction.unwrap_or(0.0);
    if !fraction.is_finite() || !(0.0..=1.0).contains(&fraction) {
        return Err(invalid(
            format!("{}.minThroughputFraction", path()),
            format!("must be between 0 and 1 (got {})", compact(fraction)),
        ));
    }
    // The gang shares one limit, so it must suit the most demanding minimum and the lowest maximum.
    let lo_gpu = members
        .iter()
        .copied()
        .max_by_key(|&g| gpus[g].min_mw)
        .unwrap_or(members[0]);
    let hi_gpu = members
        .iter()
        .copied()
        .min_by_key(|&g| gpus[g].max_mw)
        .unwrap_or(members[0]);
    let (lo_mw, hi_mw) = (gpus[lo_gpu].min_mw, gpus[hi_gpu].max_mw);
    if lo_mw > hi_mw {
        return Err(invalid(
            format!("{}.gpus", path()),
            format!(
                "the GPUs accept no common power limit: GPU {:?} needs at least {} W, GPU {:?} allows at most {} W",
                gpus[lo_gpu].id,
                lo_mw as f64 / 1000.0,
                gpus[hi_gpu].id,
                hi_mw as f64 / 1000.0
            ),
        ));
    }
    let curve = Curve::new(points, locked_clock, lo_mw, hi_mw, fraction * best).map_err(|e| match e {
        CurveError::StartsAboveRange { lowest_mw, hi_mw } => invalid(
            format!("{}.profile[0].powerWatts", path()),
            format!(
                "the profile starts at {} W, above maxWatts {} W of GPU {:?}",
                lowest_mw as f64 / 1000.0,
                hi_mw as f64 / 1000.0,
                gpus[hi_gpu].id
            ),
        ),
        CurveError::FloorUnreachable { required, best_reachable } => invalid(
            format!("{}.minThroughputFraction", path()),
            format!(
                "throughput {required} is out of reach within the GPUs' power range (best reachable {best_reachable})"
            ),
        ),
    })?;
    Ok((curve, (lo_mw, hi_mw)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Budget, Gpu, Node, ProfilePoint, Workload};

    fn base() -> Problem {
        Problem {
            budgets: vec![
                Budget {
                    name: "facility".into(),
                    cap_watts: 2000.0,
                    parent: None,
                    max_slowdown: None,
                },
                Budget {
                    name: "rack".into(),
                    cap_watts: 1500.0,
                    parent: Some("facility".into()),
                    max_slowdown: None,
                },
            ],
            nodes: vec![Node {
                name: "n1".into(),
                budget: "rack".into(),
                overhead_watts: 100.0,
                gpus: vec![
                    Gpu {
                        id: "g1".into(),
                        min_watts: 100.0,
                        max_watts: 300.0,
                    },
                    Gpu {
                        id: "g2".into(),
                        min_watts: 100.0,
                        max_watts: 300.0,
                    },
                ],
            }],
            workloads: vec![Workload {
                name: "w".into(),
                kind: WorkloadKind::Training,
                weight: 1.0,
                gpus: vec!["g1".into()],
                min_throughput_fraction: None,
                profile: vec![
                    ProfilePoint {
                        power_watts: 150.0,
                        throughput: 1.0,
                        sm_clock_mhz: None,
                    },
                    ProfilePoint {
                        power_watts: 250.0,
                        throughput: 2.0,
                        sm_clock_mhz: None,
                    },
                ],
            }],
            objective: Default::default(),
        }
    }

    /// A change to the base problem and the start of the message it must produce.
    type Case = (Box<dyn FnOnce(&mut Problem)>, &'static str);

    fn rejected(mutate: impl FnOnce(&mut Problem)) -> String {
        let mut problem = base();
        mutate(&mut problem);
        Instance::new(&problem)
            .expect_err("the mutation breaks a rule")
            .to_string()
    }

    #[test]
    fn the_base_problem_is_valid() {
        assert!(Instance::new(&base()).is_ok());
    }

    #[test]
    fn each_broken_rule_names_its_field() {
        let cases: Vec<Case> = vec![
            (
                Box::new(|p| p.budgets[1].parent = Some("nowhere".into())),
                "budgets[1].parent: unknown budget \"nowhere\"",
            ),
            (
                Box::new(|p| p.budgets[0].parent = Some("rack".into())),
                "budgets[0].parent: budgets form a cycle: facility -> rack -> facility",
            ),
            (
                Box::new(|p| p.budgets[1].name = "facility".into()),
                "budgets[1].name: duplicate budget name",
            ),
            (
                Box::new(|p| p.budgets[0].cap_watts = f64::NAN),
                "budgets[0].capWatts: must be between 0 and 1e10 (got NaN)",
            ),
            (
                Box::new(|p| p.budgets[0].cap_watts = -1.0),
                "budgets[0].capWatts: must be between 0 and 1e10 (got -1)",
            ),
            (
                Box::new(|p| p.budgets[1].max_slowdown = Some(1.0)),
                "budgets[1].maxSlowdown: must be at least 0 and less than 1 (got 1)",
            ),
            (
                Box::new(|p| p.budgets[0].max_slowdown = Some(-0.01)),
                "budgets[0].maxSlowdown: must be at least 0 and less than 1 (got -0.01)",
            ),
            (
                Box::new(|p| p.budgets[0].max_slowdown = Some(f64::NAN)),
                "budgets[0].maxSlowdown: must be at least 0 and less than 1 (got NaN)",
            ),
            (
                Box::new(|p| p.nodes[0].budget = "row".into()),
                "nodes[0].budget: unknown budget \"row\"",
            ),
            (
                Box::new(|p| p.nodes[0].overhead_watts = -5.0),
                "nodes[0].overheadWatts: must be between 0 and 10000000 (got -5)",
            ),
            (
                Box::new(|p| p.nodes[0].gpus[1].id = "g1".into()),
                "nodes[0].gpus[1].id: duplicate GPU id \"g1\"",
            ),
            (
                Box::new(|p| p.nodes[0].gpus[0].min_watts = 400.0),
                "nodes[0].gpus[0].minWatts: must be <= maxWatts (400 > 300)",
            ),
            (
                Box::new(|p| p.nodes[0].gpus[0].max_watts = f64::INFINITY),
                "nodes[0].gpus[0].maxWatts: must be between 0.001 and 10000000 (got inf)",
            ),
            (
                Box::new(|p| p.workloads[0].gpus = vec!["g9".into()]),
                "workloads[0].gpus[0]: unknown GPU \"g9\"",
            ),
            (
                Box::new(|p| p.workloads[0].gpus = vec![]),
                "workloads[0].gpus: must name at least one GPU",
            ),
            (
                Box::new(|p| {
                    let mut second = p.workloads[0].clone();
                    second.name = "w2".into();
                    p.workloads.push(second);
                }),
                "workloads[1].gpus[0]: GPU \"g1\" is already in workload \"w\"",
            ),
            (
                Box::new(|p| p.workloads[0].weight = 0.0),
                "workloads[0].weight: must be between 1e-9 and 1e15 (got 0)",
            ),
            (
                Box::new(|p| p.workloads[0].profile.clear()),
                "workloads[0].profile: must have at least one point",
            ),
            (
                Box::new(|p| p.workloads[0].profile[0].power_watts = 0.0),
                "workloads[0].profile[0].powerWatts: must be between 0.001 and 10000000 (got 0)",
            ),
            (
                Box::new(|p| p.workloads[0].profile[1].power_watts = 100.0),
                "workloads[0].profile[1].powerWatts: points must be sorted",
            ),
            (
                Box::new(|p| p.workloads[0].profile[1].throughput = f64::NAN),
                "workloads[0].profile[1].throughput: must be 0 or between 1e-9 and 1e15 (got NaN)",
            ),
            (
                Box::new(|p| p.workloads[0].profile[1].sm_clock_mhz = Some(900)),
                "workloads[0].profile[1].smClockMHz: either every point",
            ),
            (
                Box::new(|p| {
                    p.workloads[0].profile[0].power_watts = 350.0;
                    p.workloads[0].profile[1].power_watts = 400.0;
                }),
                "workloads[0].profile[0].powerWatts: the profile starts at 350 W, above maxWatts 300 W of GPU \"g1\"",
            ),
            (
                Box::new(|p| p.workloads[0].min_throughput_fraction = Some(1.5)),
                "workloads[0].minThroughputFraction: must be between 0 and 1",
            ),
            (
                // 0.9 × 2.0 needs 230 W; the GPU allows 200 W.
                Box::new(|p| {
                    p.nodes[0].gpus[0].max_watts = 200.0;
                    p.workloads[0].min_throughput_fraction = Some(0.9);
                }),
                "workloads[0].minThroughputFraction: throughput 1.8 is out of reach",
            ),
            (
                Box::new(|p| {
                    p.workloads[0]
                        .profile
                        .iter_mut()
                        .for_each(|q| q.throughput = 0.0)
                }),
                "workloads[0].profile: at least one point must have throughput > 0",
            ),
        ];
        for (i, (mutate, expected)) in cases.into_iter().enumerate() {
            let message = rejected(mutate);
            assert!(
                message.starts_with(expected),
                "case {i}: {message:?} should start with {expected:?}"
            );
        }
    }

    #[test]
    fn numbers_out_of_range_are_refused_naming_the_bound_in_few_digits() {
        let cases: Vec<Case> = vec![
            (
                Box::new(|p| p.workloads[0].profile[1].throughput = 1e-310),
                "workloads[0].profile[1].throughput: must be 0 or between 1e-9 and 1e15 (got 1e-310)",
            ),
            (
                Box::new(|p| p.workloads[0].profile[1].throughput = 1e308),
                "workloads[0].profile[1].throughput: must be 0 or between 1e-9 and 1e15 (got 1e308)",
            ),
            (
                Box::new(|p| p.workloads[0].weight = 1e-310),
                "workloads[0].weight: must be between 1e-9 and 1e15 (got 1e-310)",
            ),
            (
                Box::new(|p| p.budgets[0].cap_watts = 1e308),
                "budgets[0].capWatts: must be between 0 and 1e10 (got 1e308)",
            ),
            (
                Box::new(|p| p.nodes[0].gpus[0].max_watts = 1e-310),
                "nodes[0].gpus[0].maxWatts: must be between 0.001 and 10000000 (got 1e-310)",
            ),
            (
                Box::new(|p| p.workloads[0].min_throughput_fraction = Some(1e308)),
                "workloads[0].minThroughputFraction: must be between 0 and 1 (got 1e308)",
            ),
        ];
        for (i, (mutate, expected)) in cases.into_iter().enumerate() {
            assert_eq!(rejected(mutate), expected, "case {i}");
        }
    }

    #[test]
    fn profile_points_within_one_milliwatt_are_refused() {
        let message = rejected(|p| {
            p.workloads[0].profile[0].power_watts = 150.0001;
            p.workloads[0].profile[1].power_watts = 150.0004;
        });
        assert_eq!(
            message,
            "workloads[0].profile[1].powerWatts: points must be sorted by powerWatts, strictly \
             increasing to the milliwatt (150.0004 after 150.0001)"
        );
    }

    /// Sets one number field of a problem.
    type Setter = fn(&mut Problem, f64);

    /// Every number field of the base problem, by its name.
    fn number_fields() -> Vec<(&'static str, Setter)> {
        vec![
            ("capWatts", |p, x| p.budgets[0].cap_watts = x),
            ("maxSlowdown", |p, x| p.budgets[0].max_slowdown = Some(x)),
            ("overheadWatts", |p, x| p.nodes[0].overhead_watts = x),
            ("minWatts", |p, x| p.nodes[0].gpus[0].min_watts = x),
            ("maxWatts", |p, x| p.nodes[0].gpus[0].max_watts = x),
            ("weight", |p, x| p.workloads[0].weight = x),
            ("minThroughputFraction", |p, x| {
                p.workloads[0].min_throughput_fraction = Some(x)
            }),
            ("powerWatts", |p, x| {
                p.workloads[0].profile[0].power_watts = x
            }),
            ("throughput", |p, x| {
                p.workloads[0].profile[1].throughput = x
            }),
        ]
    }

    #[test]
    fn any_number_anywhere_gives_a_finite_plan_or_a_short_message() {
        let extremes = [
            0.0,
            -0.0,
            5e-324,
            1e-310,
            -1e-310,
            f64::MIN_POSITIVE,
            1e-9,
            1e-3,
            1.0,
            1e7,
            1e10,
            1e15,
            1e308,
            f64::MAX,
            -f64::MAX,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NAN,
        ];
        for (field, set) in number_fields() {
            for x in extremes {
                let mut problem = base();
                set(&mut problem, x);
                for method in crate::MethodChoice::ALL {
                    let options = crate::SolveOptions {
                        method,
                        ..Default::default()
                    };
                    match crate::solve(&problem, &options) {
                        Ok(plan) => {
                            let numbers = [plan.objective, plan.upper_bound]
                                .into_iter()
                                .chain(plan.gpus.iter().map(|g| g.power_limit_watts))
                                .chain(plan.workloads.iter().flat_map(|w| {
                                    [w.power_limit_watts, w.throughput, w.normalized_throughput]
                                }))
                                .chain(plan.budgets.iter().map(|b| b.allocated_watts));
                            for number in numbers {
                                assert!(number.is_finite(), "{field} = {x:e}, {method}: {plan:?}");
                            }
                        }
                        Err(e) => {
                            assert!(
                                matches!(e, crate::SolveError::Invalid(_)),
                                "{field} = {x:e}, {method}: {e}"
                            );
                            let message = e.to_string();
                            let longest_digits = message
                                .split(|c: char| !c.is_ascii_digit())
                                .map(str::len)
                                .max()
                                .unwrap_or(0);
                            assert!(
                                message.len() < 160 && longest_digits <= 17,
                                "{field} = {x:e}, {method}: {message}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn a_gang_takes_the_common_range_of_its_gpus() {
        let mut problem = base();
        problem.nodes[0].gpus[1].min_watts = 160.0;
        problem.nodes[0].gpus[0].max_watts = 280.0;
        problem.workloads[0].gpus = vec!["g1".into(), "g2".into()];
        let instance = Instance::new(&problem).expect("valid");
        assert_eq!(instance.workloads[0].gpu_range_mw, (160_000, 280_000));
        assert_eq!(instance.workloads[0].curve.lo_mw(), 160_000);
    }

    #[test]
    fn disjoint_gpu_ranges_in_one_gang_are_rejected() {
        let message = rejected(|p| {
            p.nodes[0].gpus[1].min_watts = 290.0;
            p.nodes[0].gpus[0].max_watts = 280.0;
            p.workloads[0].gpus = vec!["g1".into(), "g2".into()];
        });
        assert!(
            message.starts_with("workloads[0].gpus: the GPUs accept no common power limit"),
            "{message}"
        );
    }
}
