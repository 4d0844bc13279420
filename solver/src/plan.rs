//! The solver's answer: per-GPU limits and clocks, per-workload throughput, per-budget allocation, and
//! the proof of quality (`upperBound`). Plain data built from workload limits; no IO.

use serde::Serialize;

use crate::curve::Milliwatts;
use crate::instance::Instance;
use crate::model::WorkloadKind;

/// How good the plan is known to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Status {
    /// Objective within 1e-6 (relative) of the proven upper bound.
    Optimal,
    /// Fits every budget; `upperBound` shows how far from optimal it may be.
    Feasible,
    /// Some budget cannot hold even the floors; the plan is the safe one (every GPU at minWatts).
    Infeasible,
}

/// The method that produced the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Method {
    Greedy,
    Milp,
    Uniform,
    Proportional,
    /// The safe plan of an infeasible problem.
    Safe,
}

/// One GPU's enforced setting.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GpuSetting {
    pub id: String,
    pub power_limit_watts: f64,
    #[serde(rename = "smClockMHz", skip_serializing_if = "Option::is_none")]
    pub sm_clock_mhz: Option<u32>,
}

/// One workload's setting and the throughput its profile predicts there.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadSetting {
    pub name: String,
    pub kind: WorkloadKind,
    pub power_limit_watts: f64,
    #[serde(rename = "smClockMHz", skip_serializing_if = "Option::is_none")]
    pub sm_clock_mhz: Option<u32>,
    pub throughput: f64,
    /// Throughput over the best measured throughput of the profile.
    pub normalized_throughput: f64,
}

/// Watts counted against one budget.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BudgetAllocation {
    pub name: String,
    pub cap_watts: f64,
    pub allocated_watts: f64,
}

/// A budget that cannot hold the floors under it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Shortfall {
    pub budget: String,
    pub cap_watts: f64,
    /// Overheads plus every GPU at the lowest limit its workload can run at.
    pub required_watts: f64,
    pub shortfall_watts: f64,
}

/// A complete plan.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    pub status: Status,
    pub method: Method,
    pub objective: f64,
    /// Proven upper bound on the optimal objective.
    pub upper_bound: f64,
    pub gpus: Vec<GpuSetting>,
    pub workloads: Vec<WorkloadSetting>,
    pub budgets: Vec<BudgetAllocation>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub shortfalls: Vec<Shortfall>,
    /// Present when some budget sets `maxSlowdown` (and the problem is feasible): the least-power
    /// stage against the max-throughput plan it started from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub efficiency: Option<Efficiency>,
}

impl Plan {
    /// Relative distance between objective and upper bound (0 when optimal). With `maxSlowdown` this
    /// includes the throughput given up on purpose; [`Efficiency::reference_gap`] is the reference's.
    pub fn gap(&self) -> f64 {
        relative_gap(self.objective, self.upper_bound)
    }
}

/// The efficiency policy's result: the plan's power against the max-throughput plan (the reference)
/// it was derived from, with a proven bound on each objective.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Efficiency {
    /// The method of the max-throughput reference (the plan's own `method` is the least-power stage's).
    pub reference_method: Method,
    /// Objective of the reference; `upperBound` is its proven bound.
    pub reference_objective: f64,
    /// Sum of every GPU's limit in this plan.
    pub gpu_watts: f64,
    /// Sum of every GPU's limit in the reference.
    pub reference_gpu_watts: f64,
    /// Proven: no plan that keeps every budget's `maxSlowdown` (workloads under no such budget at the
    /// reference's limits) sets less than this in total.
    pub gpu_watts_lower_bound: f64,
    /// `referenceGpuWatts − gpuWatts`.
    pub saved_watts: f64,
    /// One entry per budget that sets `maxSlowdown`, in input order.
    pub budgets: Vec<BudgetEfficiency>,
}

impl Efficiency {
    /// Relative distance of the reference from the proven throughput bound.
    pub fn reference_gap(&self, upper_bound: f64) -> f64 {
        relative_gap(self.reference_objective, upper_bound)
    }

    /// Relative distance of this plan's GPU power above its proven lower bound (0 when least).
    pub fn power_gap(&self) -> f64 {
        if self.gpu_watts > 0.0 {
            ((self.gpu_watts - self.gpu_watts_lower_bound) / self.gpu_watts).max(0.0)
        } else {
            0.0
        }
    }
}

/// One policy budget: the throughput of the GPUs under it (each GPU carrying its workload's weight ×
/// normalised throughput) and their power, here and in the reference.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BudgetEfficiency {
    pub name: String,
    pub max_slowdown: f64,
    pub throughput: f64,
    pub reference_throughput: f64,
    /// Proven bound on this budget's throughput in any plan that fits every cap.
    pub reference_upper_bound: f64,
    /// `(1 − maxSlowdown) × referenceThroughput`; `throughput` is at least this, to a relative 1e-9.
    pub required_throughput: f64,
    pub gpu_watts: f64,
    pub reference_gpu_watts: f64,
    pub saved_watts: f64,
}

pub(crate) fn relative_gap(objective: f64, upper_bound: f64) -> f64 {
    // NB: no absolute floor under the bound: weights and throughputs may be as small as 1e-9, and a
    // floor would call any small plan optimal. A bound of 0 has nothing to gain.
    if upper_bound > 0.0 {
        ((upper_bound - objective) / upper_bound).max(0.0)
    } else {
        0.0
    }
}

pub(crate) fn watts(mw: Milliwatts) -> f64 {
    mw as f64 / 1000.0
}

/// How each workload's limit turns into a clock and a throughput.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Enforcement {
    /// The optimiser chose the level: realise it on the curve (locked clock where the profile has one).
    Chosen,
    /// A baseline imposed the limit and left clocks alone.
    Imposed,
}

/// Builds the plan from each workload's limit; idle GPUs sit at their minimum.
pub(crate) fn assemble(
    instance: &Instance,
    limits_mw: &[Milliwatts],
    enforcement: Enforcement,
    method: Method,
    upper_bound: f64,
) -> Plan {
    let settings: Vec<(Milliwatts, Option<u32>, f64)> = instance
        .workloads
        .iter()
        .zip(limits_mw)
        .map(|(w, &limit)| match enforcement {
            Enforcement::Chosen => {
                let r = w.curve.realise(limit);
                (r.limit_mw, r.clock_mhz, r.throughput)
            }
            Enforcement::Imposed => (limit, None, w.curve.throughput_at_imposed_limit(limit)),
        })
        .collect();
    let gpu_limit = |g: usize| {
        let gpu = &instance.gpus[g];
        gpu.workload
            .map_or((gpu.min_mw, None), |w| (settings[w].0, settings[w].1))
    };
    let objective: f64 = instance
        .workloads
        .iter()
        .zip(&settings)
        .map(|(w, s)| w.value_per_throughput * s.2)
        .sum();
    let status = if relative_gap(objective, upper_bound) <= 1e-6 {
        Status::Optimal
    } else {
        Status::Feasible
    };
    let usage = instance.budget_usage(|g| gpu_limit(g).0);
    Plan {
        status,
        method,
        objective,
        upper_bound: upper_bound.max(objective),
        gpus: (0..instance.gpus.len())
            .map(|g| {
                let (limit, clock) = gpu_limit(g);
                GpuSetting {
                    id: instance.gpus[g].id.to_owned(),
                    power_limit_watts: watts(limit),
                    sm_clock_mhz: clock,
                }
            })
            .collect(),
        workloads: instance
            .workloads
            .iter()
            .zip(&settings)
            .map(|(w, &(limit, clock, throughput))| WorkloadSetting {
                name: w.name.to_owned(),
                kind: w.kind,
                power_limit_watts: watts(limit),
                sm_clock_mhz: clock,
                throughput,
                normalized_throughput: throughput / w.curve.best_throughput(),
            })
            .collect(),
        budgets: budget_allocations(instance, &usage),
        shortfalls: Vec::new(),
        efficiency: None,
    }
}

fn budget_allocations(instance: &Instance, usage: &[Milliwatts]) -> Vec<BudgetAllocation> {
    instance
        .budgets
        .iter()
        .zip(usage)
        .map(|(b, &used)| BudgetAllocation {
            name: b.name.to_owned(),
            cap_watts: watts(b.cap_mw),
            allocated_watts: watts(used),
        })
        .collect()
}

/// Budgets that cannot hold their floors (negative headroom), with how many watts they lack.
pub(crate) fn shortfalls(instance: &Instance, headroom: &[Milliwatts]) -> Vec<Shortfall> {
    instance
        .budgets
        .iter()
        .zip(headroom)
        .filter(|(_, room)| **room < 0)
        .map(|(b, &room)| Shortfall {
            budget: b.name.to_owned(),
            cap_watts: watts(b.cap_mw),
            required_watts: watts(b.cap_mw - room),
            shortfall_watts: watts(-room),
        })
        .collect()
}

/// The plan for an infeasible problem: every GPU at its own minimum, whatever the workloads want.
/// No feasible plan exists, so `upperBound` is reported equal to the safe plan's objective.
pub(crate) fn safe_plan(instance: &Instance, shortfalls: Vec<Shortfall>) -> Plan {
    let gpu_limits: Vec<Milliwatts> = instance.gpus.iter().map(|g| g.min_mw).collect();
    let mut plan = assemble(
        instance,
        &crate::baseline::gang_limits(instance, &gpu_limits),
        Enforcement::Imposed,
        Method::Safe,
        0.0,
    );
    for (setting, &limit) in plan.gpus.iter_mut().zip(&gpu_limits) {
        setting.power_limit_watts = watts(limit);
        setting.sm_clock_mhz = None;
    }
    plan.budgets = budget_allocations(instance, &instance.budget_usage(|g| gpu_limits[g]));
    plan.status = Status::Infeasible;
    plan.shortfalls = shortfalls;
    plan
}

/// Every budget's allocation fits its cap (milliwatt-exact); the last line of defence before a plan
/// leaves the solver.
pub(crate) fn fits(instance: &Instance, limits_mw: &[Milliwatts]) -> bool {
    let usage = instance.budget_usage(|g| {
        instance.gpus[g]
            .workload
            .map_or(instance.gpus[g].min_mw, |w| limits_mw[w])
    });
    instance
        .budgets
        .iter()
        .zip(usage)
        .all(|(b, used)| used <= b.cap_mw)
}
