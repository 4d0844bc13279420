//! Kilowatt's power-allocation solver: GPU power limits and locked clocks for a set of workloads under
//! a tree of power caps, with a proven bound on how far the plan is from optimal. Pure: no IO, no clock,
//! no async; the caller measures time and reads files.
//!
//! Entry point: [`solve`]. The problem format is [`model::Problem`]; the answer is [`plan::Plan`].

mod baseline;
mod curve;
mod efficiency;
mod greedy;
mod instance;
mod milp;
pub mod model;
pub mod plan;
#[cfg(test)]
mod proptests;
pub mod whole_number;

use std::fmt;
use std::str::FromStr;

pub use instance::{
    InvalidProblem, MAX_CAP_WATTS, MAX_DEVICE_WATTS, MAX_MAGNITUDE, MIN_DEVICE_WATTS, MIN_MAGNITUDE,
};
pub use milp::{MilpError, MilpLimits};
pub use model::Problem;
pub use plan::{Method, Plan, Status};

use efficiency::Policy;
use greedy::{greedy_limits, headroom_at_floors, objective, rise_into_room, upper_bound};
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
    /// Input within the documented ranges keeps every figure finite; this is the backstop.
    #[error("internal error: the plan's objective or upper bound is not a finite number")]
    NotFinite,
}

/// Solves `problem`. An infeasible problem is a result (status `infeasible`, the safe plan), not an error.
pub fn solve(problem: &Problem, options: &SolveOptions) -> Result<Plan, SolveError> {
    let plan = solve_unchecked(problem, options)?;
    if plan.objective.is_finite() && plan.upper_bound.is_finite() {
        Ok(plan)
    } else {
        Err(SolveError::NotFinite)
    }
}

fn solve_unchecked(problem: &Problem, options: &SolveOptions) -> Result<Plan, SolveError> {
    let instance = Instance::new(problem)?;
    let headroom = headroom_at_floors(&instance);
    let shortfalls = plan::shortfalls(&instance, &headroom);
    if !shortfalls.is_empty() {
        return Ok(plan::safe_plan(&instance, shortfalls));
    }
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
            let (limits, method, bound) = max_throughput(&instance, &headroom, bound, options)?;
            match Policy::new(&instance, &limits) {
                None => Ok(assemble(
                    &instance,
                    &limits,
                    Enforcement::Chosen,
                    method,
                    bound,
                )),
                Some(policy) => least_power(&instance, &headroom, &policy, method, bound, options),
            }
        }
    }
}

/// The max-throughput plan of the optimising methods: each workload's limit, the method that chose
/// it and the proven bound.
fn max_throughput(
    instance: &Instance,
    headroom: &[i64],
    bound: f64,
    options: &SolveOptions,
) -> Result<(Vec<i64>, Method, f64), SolveError> {
    let checked = |limits: Vec<i64>, method: &'static str| {
        if fits(instance, &limits) {
            Ok(limits)
        } else {
            Err(SolveError::PlanOverCap { method })
        }
    };
    let greedy = checked(greedy_limits(instance, headroom), "greedy")?;
    let greedy_objective = objective(instance, &greedy);
    // With no workload there is nothing to choose: the greedy (empty) plan is the optimum.
    let wants_milp = !instance.workloads.is_empty()
        && match options.method {
            MethodChoice::Milp => true,
            MethodChoice::Auto => {
                relative_gap(greedy_objective, bound) > options.target_gap
                    && milp::binary_count(instance) <= options.auto_milp_max_binaries
            }
            _ => false,
        };
    if !wants_milp {
        return Ok((greedy, Method::Greedy, bound));
    }
    let warm_start = options.milp_warm_start.then_some(greedy.as_slice());
    let outcome = match milp::solve_milp(instance, headroom, warm_start, options.milp) {
        Ok(outcome) => outcome,
        Err(e) if options.method == MethodChoice::Milp => return Err(e.into()),
        // Auto keeps the greedy plan, whose quality is still proven by its bound.
        Err(_) => return Ok((greedy, Method::Greedy, bound)),
    };
    let bound = bound.min(outcome.upper_bound);
    // HiGHS's levels are rounded down to whole milliwatts; give the crumbs back.
    let mut exact = outcome.limits_mw;
    rise_into_room(instance, headroom, &mut exact, 0..instance.workloads.len());
    let exact = checked(exact, "milp")?;
    // A cold MILP (benchmarks) reports its own plan even when the greedy one is better.
    if objective(instance, &exact) >= greedy_objective || !options.milp_warm_start {
        Ok((exact, Method::Milp, bound))
    } else {
        Ok((greedy, Method::Greedy, bound))
    }
}

/// The second objective, for problems where some budget sets `maxSlowdown`: from the max-throughput
/// plan (`policy`'s reference, by `reference_method`), the least GPU power that keeps every policy
/// budget's throughput. The greedy lowers limits; `milp`, and `auto` when the greedy is not proven
/// within `target_gap` of least power on a small enough instance, then solve the least-power MILP
/// from the greedy's plan. Every candidate is checked against every cap and policy row; the
/// reference itself keeps them all, so there is always one.
fn least_power(
    instance: &Instance,
    headroom: &[i64],
    policy: &Policy,
    reference_method: Method,
    bound: f64,
    options: &SolveOptions,
) -> Result<Plan, SolveError> {
    let reference = policy.reference();
    let reference_plan = assemble(
        instance,
        reference,
        Enforcement::Chosen,
        reference_method,
        bound,
    );
    let kept = |levels: &[i64]| fits(instance, levels) && policy.is_kept_by(instance, levels);
    let power = |levels: &[i64]| -> i64 {
        instance
            .gpus
            .iter()
            .map(|g| g.workload.map_or(g.min_mw, |w| levels[w]))
            .sum()
    };
    let lowered = efficiency::lower_greedily(instance, policy);
    let greedy_kept = policy.allows_slowdown() && kept(&lowered.levels);
    // NB: with every maxSlowdown at 0 the plan is the reference, unchanged: 0 promises the plan
    // without a policy, and a move that loses nothing is not worth breaking that promise for.
    let (mut levels, mut method) = if greedy_kept {
        (lowered.levels, Method::Greedy)
    } else {
        (reference.to_vec(), reference_method)
    };
    let mut lower_bound_mw =
        efficiency::power_lower_bound_mw(instance, policy, &lowered.multipliers);
    let governed = policy.governed();
    let power_gap = |levels: &[i64], lower_bound_mw: f64| {
        let planned = power(levels) as f64;
        if planned > 0.0 {
            ((planned - lower_bound_mw) / planned).max(0.0)
        } else {
            0.0
        }
    };
    let wants_milp = policy.allows_slowdown()
        && !governed.is_empty()
        && match options.method {
            MethodChoice::Milp => true,
            MethodChoice::Auto => {
                power_gap(&levels, lower_bound_mw) > options.target_gap
                    && governed
                        .iter()
                        .map(|&w| instance.workloads[w].curve.candidates().len())
                        .sum::<usize>()
                        <= options.auto_milp_max_binaries
            }
            _ => false,
        };
    if wants_milp {
        let start: Vec<i64> = governed.iter().map(|&w| levels[w]).collect();
        let outcome = milp::solve_least_power_milp(
            instance,
            &governed,
            &policy.room_mw(instance),
            &policy.milp_rows(instance),
            options.milp_warm_start.then_some(start.as_slice()),
            options.milp,
        );
        match outcome {
            Ok(outcome) => {
                lower_bound_mw = lower_bound_mw.max(
                    policy.floor_power_mw(instance) as f64 + outcome.lower_bound_above_floors_mw,
                );
                let mut exact = reference.to_vec();
                for (&w, &limit) in governed.iter().zip(&outcome.limits_mw) {
                    exact[w] = instance.workloads[w].curve.realise(limit).limit_mw;
                }
                // A cold MILP (benchmarks) reports its own plan even when the greedy one is better.
                if kept(&exact) && (power(&exact) <= power(&levels) || !options.milp_warm_start) {
                    levels = exact;
                    method = Method::Milp;
                }
            }
            Err(e) if options.method == MethodChoice::Milp => return Err(e.into()),
            // Auto keeps the greedy plan, whose distance from least power is still bounded.
            Err(_) => {}
        }
    }
    if !fits(instance, &levels) {
        return Err(SolveError::PlanOverCap {
            method: "least-power",
        });
    }
    let mut plan = assemble(instance, &levels, Enforcement::Chosen, method, bound);
    // The status is the reference's: how close the max-throughput plan is to its bound. The
    // least-power stage's own distance is in `efficiency` (power against its lower bound).
    plan.status = reference_plan.status;
    plan.upper_bound = reference_plan.upper_bound;
    plan.efficiency = Some(efficiency::report(
        instance,
        policy,
        &levels,
        efficiency::Report {
            reference_method,
            reference_objective: reference_plan.objective,
            upper_bound: reference_plan.upper_bound,
            headroom,
            lower_bound_mw,
        },
    ));
    Ok(plan)
}

/// Optimum of the envelope relaxation computed by a generic LP solver (HiGHS, interior point), for
/// comparison with the greedy; `None` objective for an infeasible problem.
pub fn generic_lp_objective(
    problem: &Problem,
    time_limit_seconds: f64,
) -> Result<Option<f64>, SolveError> {
    let instance = Instance::new(problem)?;
    let headroom = headroom_at_floors(&instance);
    if !plan::shortfalls(&instance, &headroom).is_empty() {
        return Ok(None);
    }
    Ok(Some(milp::solve_envelope_lp(
        &instance,
        &headroom,
        time_limit_seconds,
    )?))
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
            name: b.name.to_owned(),
            floor_watts: floor as f64 / 1000.0,
            ceiling_watts: ceiling as f64 / 1000.0,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Budget, Gpu, Node, ProfilePoint, Workload, WorkloadKind};

    fn gpu(id: &str) -> Gpu {
        Gpu {
            id: id.into(),
            min_watts: 100.0,
            max_watts: 300.0,
        }
    }

    fn workload(name: &str, gpus: &[&str], points: &[(f64, f64)]) -> Workload {
        Workload {
            name: name.into(),
            kind: WorkloadKind::Training,
            weight: 1.0,
            gpus: gpus.iter().map(|g| g.to_string()).collect(),
            min_throughput_fraction: None,
            profile: points
                .iter()
                .map(|&(power_watts, throughput)| ProfilePoint {
                    power_watts,
                    throughput,
                    sm_clock_mhz: None,
                })
                .collect(),
        }
    }

    /// Two racks under one facility, one GPU each: a steep workload and a flat one.
    fn two_racks(facility_cap: f64) -> Problem {
        Problem {
            budgets: vec![
                Budget {
                    name: "facility".into(),
                    cap_watts: facility_cap,
                    parent: None,
                    max_slowdown: None,
                },
                Budget {
                    name: "r1".into(),
                    cap_watts: 400.0,
                    parent: Some("facility".into()),
                    max_slowdown: None,
                },
                Budget {
                    name: "r2".into(),
                    cap_watts: 400.0,
                    parent: Some("facility".into()),
                    max_slowdown: None,
                },
            ],
            nodes: vec![
                Node {
                    name: "n1".into(),
                    budget: "r1".into(),
                    overhead_watts: 50.0,
                    gpus: vec![gpu("g1")],
                },
                Node {
                    name: "n2".into(),
                    budget: "r2".into(),
                    overhead_watts: 50.0,
                    gpus: vec![gpu("g2")],
                },
            ],
            workloads: vec![
                workload(
                    "steep",
                    &["g1"],
                    &[(100.0, 1.0), (200.0, 8.0), (300.0, 10.0)],
                ),
                workload(
                    "flat",
                    &["g2"],
                    &[(100.0, 9.0), (200.0, 9.8), (300.0, 10.0)],
                ),
            ],
            objective: Default::default(),
        }
    }

    #[test]
    fn watts_go_where_they_buy_the_most_throughput() {
        let plan = solve(&two_racks(500.0), &SolveOptions::default()).expect("solves");
        assert_eq!(plan.status, Status::Optimal);
        assert_eq!(plan.method, Method::Greedy);
        // 200 W of headroom above the floors: the steep curve gains 0.007 (normalised) per watt up to
        // 200 W and 0.002 above, the flat one 0.0008 at best, so the steep one takes all of it.
        assert_eq!(plan.workloads[0].power_limit_watts, 300.0);
        assert_eq!(plan.workloads[1].power_limit_watts, 100.0);
        assert!((plan.objective - 1.9).abs() < 1e-9);
        let uniform = solve(
            &two_racks(500.0),
            &SolveOptions {
                method: MethodChoice::Uniform,
                ..Default::default()
            },
        )
        .expect("solves");
        assert_eq!(uniform.workloads[0].power_limit_watts, 200.0);
        assert_eq!(uniform.workloads[1].power_limit_watts, 200.0);
        assert!((uniform.objective - 1.78).abs() < 1e-9);
        let tighter = solve(&two_racks(420.0), &SolveOptions::default()).expect("solves");
        assert_eq!(tighter.workloads[0].power_limit_watts, 220.0);
        assert_eq!(tighter.workloads[1].power_limit_watts, 100.0);
    }

    #[test]
    fn an_infeasible_cap_gives_the_safe_plan_and_names_the_shortfall() {
        let plan =
            solve(&two_racks(250.0), &SolveOptions::default()).expect("infeasible is a result");
        assert_eq!(plan.status, Status::Infeasible);
        assert_eq!(plan.method, Method::Safe);
        assert!(plan.gpus.iter().all(|g| g.power_limit_watts == 100.0));
        assert_eq!(plan.shortfalls.len(), 1);
        assert_eq!(plan.shortfalls[0].budget, "facility");
        assert_eq!(plan.shortfalls[0].required_watts, 300.0);
        assert_eq!(plan.shortfalls[0].shortfall_watts, 50.0);
    }

    #[test]
    fn a_gang_across_racks_is_limited_by_its_tightest_rack() {
        let mut problem = two_racks(10_000.0);
        problem.budgets[1].cap_watts = 200.0;
        problem.workloads = vec![workload(
            "gang",
            &["g1", "g2"],
            &[(100.0, 1.0), (300.0, 3.0)],
        )];
        let plan = solve(&problem, &SolveOptions::default()).expect("solves");
        assert_eq!(plan.workloads[0].power_limit_watts, 150.0);
        assert!(plan.gpus.iter().all(|g| g.power_limit_watts == 150.0));
        assert_eq!(plan.status, Status::Optimal);
    }

    /// `two_racks` with caps that do not bind and a policy on some budgets.
    fn uncapped_with_policy(slowdowns: &[(&str, f64)]) -> Problem {
        let mut problem = two_racks(10_000.0);
        for &(name, slowdown) in slowdowns {
            let budget = problem
                .budgets
                .iter_mut()
                .find(|b| b.name == name)
                .expect("a budget of two_racks");
            budget.max_slowdown = Some(slowdown);
        }
        problem
    }

    fn with_method(method: MethodChoice) -> SolveOptions {
        SolveOptions {
            method,
            ..Default::default()
        }
    }

    #[test]
    fn a_two_percent_slowdown_buys_the_watts_of_the_flattest_stretches() {
        let plan = solve(
            &uncapped_with_policy(&[("facility", 0.02)]),
            &SolveOptions::default(),
        )
        .expect("solves");
        // Both GPUs would run at 300 W (objective 2). The flat curve loses 0.002 per 10 W at the top
        // and 0.008 per 10 W below 200 W, the steep one 0.02: 0.04 buys the flat one's top 100 W and
        // then 25 W more.
        assert_eq!(plan.method, Method::Greedy);
        assert_eq!(plan.workloads[0].power_limit_watts, 300.0);
        assert_eq!(plan.workloads[1].power_limit_watts, 175.0);
        assert!((plan.objective - 1.96).abs() < 1e-9, "{}", plan.objective);
        let efficiency = plan.efficiency.as_ref().expect("a policy is reported");
        assert_eq!(efficiency.reference_method, Method::Greedy);
        assert!((efficiency.reference_objective - 2.0).abs() < 1e-12);
        assert_eq!(efficiency.reference_gpu_watts, 600.0);
        assert_eq!(efficiency.gpu_watts, 475.0);
        assert_eq!(efficiency.saved_watts, 125.0);
        assert!(efficiency.power_gap() < 1e-9, "{efficiency:?}");
        assert_eq!(efficiency.budgets.len(), 1);
        let facility = &efficiency.budgets[0];
        assert_eq!(facility.name, "facility");
        assert!((facility.required_throughput - 1.96).abs() < 1e-12);
        assert!(facility.throughput >= facility.required_throughput * (1.0 - 1e-9));
        assert!((facility.reference_upper_bound - 2.0).abs() < 1e-12);
        assert_eq!(facility.saved_watts, 125.0);
    }

    #[test]
    fn the_least_power_milp_finds_what_the_greedy_finds_on_concave_curves() {
        let problem = uncapped_with_policy(&[("facility", 0.02)]);
        let greedy = solve(&problem, &with_method(MethodChoice::Greedy)).expect("solves");
        let milp = solve(&problem, &with_method(MethodChoice::Milp)).expect("solves");
        let (g, m) = (
            greedy.efficiency.as_ref().expect("report"),
            milp.efficiency.as_ref().expect("report"),
        );
        assert!((g.gpu_watts - m.gpu_watts).abs() <= 0.002, "{g:?} vs {m:?}");
        assert!(m.gpu_watts_lower_bound <= m.gpu_watts);
        assert!(milp.objective >= 1.96 * (1.0 - 1e-9));
    }

    #[test]
    fn a_child_that_allows_no_slowdown_keeps_its_throughput_under_a_parent_that_does() {
        let plan = solve(
            &uncapped_with_policy(&[("facility", 0.02), ("r2", 0.0)]),
            &SolveOptions::default(),
        )
        .expect("solves");
        // The flat workload's rack keeps everything, so the steep one gives up 0.04: 20 W at 0.002
        // per watt.
        assert_eq!(plan.workloads[1].power_limit_watts, 300.0);
        assert_eq!(plan.workloads[0].power_limit_watts, 280.0);
        let efficiency = plan.efficiency.as_ref().expect("report");
        let names: Vec<&str> = efficiency.budgets.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(names, ["facility", "r2"]);
        assert_eq!(efficiency.budgets[1].saved_watts, 0.0);
        assert_eq!(
            efficiency.budgets[1].throughput,
            efficiency.budgets[1].reference_throughput
        );
        assert_eq!(efficiency.saved_watts, 20.0);
        assert!(efficiency.power_gap() < 1e-9, "{efficiency:?}");
    }

    #[test]
    fn workloads_under_no_policy_budget_keep_their_limits() {
        let plan = solve(
            &uncapped_with_policy(&[("r1", 0.5)]),
            &SolveOptions::default(),
        )
        .expect("solves");
        // Half of the steep workload's throughput (0.5) buys its top 100 W (0.2) and 43 W of the next
        // stretch (0.3 at 0.007 per watt): the flat one, under no policy, stays at 300 W.
        assert_eq!(plan.workloads[1].power_limit_watts, 300.0);
        assert_eq!(plan.workloads[0].power_limit_watts, 157.143);
        let r1 = &plan.efficiency.as_ref().expect("report").budgets[0];
        assert!(r1.throughput >= 0.5 * (1.0 - 1e-9), "{r1:?}");
    }

    #[test]
    fn a_slowdown_of_zero_gives_the_plan_without_a_policy() {
        let plain = solve(&two_racks(420.0), &SolveOptions::default()).expect("solves");
        let mut problem = two_racks(420.0);
        problem.budgets[0].max_slowdown = Some(0.0);
        let zero = solve(&problem, &SolveOptions::default()).expect("solves");
        assert_eq!(
            Plan {
                efficiency: None,
                ..zero.clone()
            },
            plain
        );
        assert_eq!(zero.efficiency.expect("report").saved_watts, 0.0);
    }

    #[test]
    fn baselines_and_infeasible_problems_report_no_efficiency() {
        let mut problem = two_racks(500.0);
        problem.budgets[0].max_slowdown = Some(0.1);
        let uniform = solve(&problem, &with_method(MethodChoice::Uniform)).expect("solves");
        assert!(uniform.efficiency.is_none());
        problem.budgets[0].cap_watts = 250.0;
        let safe = solve(&problem, &SolveOptions::default()).expect("infeasible is a result");
        assert_eq!(safe.status, Status::Infeasible);
        assert!(safe.efficiency.is_none());
    }

    #[test]
    fn unknown_method_names_are_listed_in_the_error() {
        let err = "fastest".parse::<MethodChoice>().expect_err("not a method");
        assert_eq!(
            err,
            "unknown method \"fastest\" (expected one of: auto, greedy, milp, uniform, proportional)"
        );
    }
}
