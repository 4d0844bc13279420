//! Kilowatt's power-allocation solver: GPU power limits and locked clocks for a set of workloads under
//! a tree of power caps, with a proven bound on how far the plan is from optimal. Pure: no IO, no clock,
//! no async; the caller measures time and reads files.
//!
//! Entry point: [`solve`]. The problem format is [`model::Problem`]; the answer is [`plan::Plan`].

mod baseline;
pub mod curve;
mod greedy;
mod instance;
pub mod milp;
pub mod model;
pub mod plan;

use std::fmt;
use std::str::FromStr;

pub use instance::InvalidProblem;
pub use milp::{MilpError, MilpLimits};
pub use model::Problem;
pub use plan::{Method, Plan, Status};

use greedy::{greedy_limits, headroom_at_floors, objective, upper_bound};
use instance::Instance;
use plan::{Enforcement, assemble, fits, relative_gap};

/// Which method to use (`--method`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum MethodChoice {
    /// Greedy, then the MILP when the greedy plan is not proven within `target_gap`.
    #[default]
    Auto,
    Greedy,
    Milp,
    Uniform,
    Proportional,
}

impl MethodChoice {
    pub const ALL: [MethodChoice; 5] = [
        MethodChoice::Auto,
        MethodChoice::Greedy,
        MethodChoice::Milp,
        MethodChoice::Uniform,
        MethodChoice::Proportional,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MethodChoice::Auto => "auto",
            MethodChoice::Greedy => "greedy",
            MethodChoice::Milp => "milp",
            MethodChoice::Uniform => "uniform",
            MethodChoice::Proportional => "proportional",
        }
    }
}

impl fmt::Display for MethodChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for MethodChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        MethodChoice::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = MethodChoice::ALL.iter().map(|m| m.as_str()).collect();
                format!(
                    "unknown method {s:?} (expected one of: {})",
                    names.join(", ")
                )
            })
    }
}

/// How to solve.
#[derive(Debug, Clone, PartialEq)]
pub struct SolveOptions {
    pub method: MethodChoice,
    /// `auto` accepts the greedy plan when it is proven within this relative gap.
    pub target_gap: f64,
    pub milp: MilpLimits,
    /// `auto` runs the MILP only when it needs at most this many binaries; above that the greedy
    /// plan is returned with its gap, because HiGHS would not finish in time anyway.
    pub auto_milp_max_binaries: usize,
    /// Start HiGHS from the greedy plan. Off only to measure HiGHS alone, as a generic MILP.
    pub milp_warm_start: bool,
}

impl Default for SolveOptions {
    fn default() -> Self {
        SolveOptions {
            method: MethodChoice::Auto,
            target_gap: 0.005,
            milp: MilpLimits::default(),
            auto_milp_max_binaries: 20_000,
            milp_warm_start: true,
        }
    }
}

/// Why no plan was produced.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SolveError {
    #[error("invalid problem: {0}")]
    Invalid(#[from] InvalidProblem),
    #[error("milp method failed: {0}")]
    Milp(#[from] MilpError),
    /// A method produced a plan over some cap; it is withheld rather than published.
    #[error("internal error: the {method} plan exceeds a budget cap and was withheld")]
    PlanOverCap { method: &'static str },
}

impl SolveError {
    /// Fixed label for metrics and events.
    pub fn category(&self) -> &'static str {
        match self {
            SolveError::Invalid(_) => "invalid",
            SolveError::Milp(_) => "milp",
            SolveError::PlanOverCap { .. } => "over_cap",
        }
    }
}

/// Solves `problem`. An infeasible problem is a result (status `infeasible`, the safe plan), not an error.
pub fn solve(problem: &Problem, options: &SolveOptions) -> Result<Plan, SolveError> {
    let instance = Instance::new(problem)?;
    let shortfalls = plan::shortfalls(&instance);
    if !shortfalls.is_empty() {
        return Ok(plan::safe_plan(&instance, shortfalls));
    }
    let headroom = headroom_at_floors(&instance);
    let bound = upper_bound(&instance, &headroom);
    let checked = |limits: Vec<i64>, method: &'static str| {
        if fits(&instance, &limits) {
            Ok(limits)
        } else {
            Err(SolveError::PlanOverCap { method })
        }
    };
    match options.method {
        MethodChoice::Uniform | MethodChoice::Proportional => {
            let (gpu_limits, method) = if options.method == MethodChoice::Uniform {
                (baseline::uniform_gpu_limits(&instance), Method::Uniform)
            } else {
                (
                    baseline::proportional_gpu_limits(&instance),
                    Method::Proportional,
                )
            };
            let limits = checked(
                baseline::gang_limits(&instance, &gpu_limits),
                options.method.as_str(),
            )?;
            Ok(assemble(
                &instance,
                &limits,
                Enforcement::Imposed,
                method,
                bound,
            ))
        }
        MethodChoice::Greedy | MethodChoice::Auto | MethodChoice::Milp => {
            let greedy = checked(greedy_limits(&instance, &headroom), "greedy")?;
            let greedy_objective = objective(&instance, &greedy);
            let wants_milp = match options.method {
                MethodChoice::Milp => true,
                MethodChoice::Auto => {
                    relative_gap(greedy_objective, bound) > options.target_gap
                        && milp::binary_count(&instance) <= options.auto_milp_max_binaries
                }
                _ => false,
            };
            if !wants_milp {
                return Ok(assemble(
                    &instance,
                    &greedy,
                    Enforcement::Chosen,
                    Method::Greedy,
                    bound,
                ));
            }
            let warm_start = options.milp_warm_start.then_some(greedy.as_slice());
            let outcome = match milp::solve_milp(&instance, &headroom, warm_start, options.milp) {
                Ok(outcome) => outcome,
                Err(e) if options.method == MethodChoice::Milp => return Err(e.into()),
                // Auto keeps the greedy plan, whose quality is still proven by its bound.
                Err(_) => {
                    return Ok(assemble(
                        &instance,
                        &greedy,
                        Enforcement::Chosen,
                        Method::Greedy,
                        bound,
                    ));
                }
            };
            let bound = bound.min(outcome.upper_bound);
            let exact = checked(outcome.limits_mw, "milp")?;
            if objective(&instance, &exact) >= greedy_objective || !options.milp_warm_start {
                Ok(assemble(
                    &instance,
                    &exact,
                    Enforcement::Chosen,
                    Method::Milp,
                    bound,
                ))
            } else {
                Ok(assemble(
                    &instance,
                    &greedy,
                    Enforcement::Chosen,
                    Method::Greedy,
                    bound,
                ))
            }
        }
    }
}

/// The watts a budget must carry at least (overheads, every GPU at the lowest limit it can run at)
/// and at most (every GPU at the highest limit its gang accepts).
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetRange {
    pub name: String,
    pub floor_watts: f64,
    pub ceiling_watts: f64,
}

/// Floor and ceiling of every budget, in input order; for choosing caps, what-if questions and tests.
pub fn budget_ranges(problem: &Problem) -> Result<Vec<BudgetRange>, InvalidProblem> {
    let instance = Instance::new(problem)?;
    let floors = instance.budget_usage(|g| instance.floor_mw(g));
    let ceilings = instance.budget_usage(|g| {
        let gpu = &instance.gpus[g];
        gpu.workload
            .map_or(gpu.min_mw, |w| instance.workloads[w].curve.hi_mw())
    });
    Ok(instance
        .budgets
        .iter()
        .zip(floors.into_iter().zip(ceilings))
        .map(|(b, (floor, ceiling))| BudgetRange {
            name: b.name.clone(),
            floor_watts: floor as f64 / 1000.0,
            ceiling_watts: ceiling as f64 / 1000.0,
        })
        .collect())
}
